"""One home for validation: the checks every public entry point shares.

Two tiers, as the style guide asks:

1. static facts (types, shapes, Python ints, concrete parameter values) raise at trace time:
   `TypeError` when the argument is of the wrong kind (not an int, not callable, complex, not a
   schedule), `ValueError` when it is of the right kind with a wrong value (an int < 1, a
   negative variance, t outside [0, T]);
2. facts about traced values are checked at run time with `equinox.error_if`.

Every message names the argument (in backticks) and what was received. Modules check their
own invariants in `__check_init__` with these helpers, comparing concrete values only.
"""

import math

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike


def default_float() -> jnp.dtype:
    """float64 when `jax_enable_x64` is on, float32 otherwise."""
    return jnp.result_type(float)


def is_concrete(*xs) -> bool:
    """True when none of `xs` is a tracer, so values may be inspected in Python."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def concrete_value(x) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known at trace time (not a tracer), else None.

    Uses NumPy, not `jnp`: inside `jax.jit`, `jnp.asarray(0.5)` is itself a tracer.
    """
    if not is_concrete(x):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - exotic array-likes
        return None


def as_float(x: ArrayLike, name: str = "x") -> Array:
    """Convert to a floating array, keeping float64/float32 as given.

    Python scalars and integer arrays become the default float; complex input is refused.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real floating point, got dtype {x.dtype}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(default_float())
    return x


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """A Python int >= `minimum` (it sets a shape or a loop length, so it must be static).

    `TypeError` for anything that is not an int (a float, a bool, an array), `ValueError` for an
    int below `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_positive(value, name: str, *, strict: bool = True) -> None:
    """Raise `ValueError` when a concrete scalar parameter is not (strictly) positive and finite
    (`TypeError` when it is complex)."""
    if not is_concrete(value):
        return
    if isinstance(value, complex) or (
        hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.complexfloating)
    ):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    v = float(value)  # not jnp.asarray: under jit that would be a tracer
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        want = "> 0" if strict else ">= 0"
        raise ValueError(f"`{name}` must be {want} and finite, got {v}.")


def check_callable(fn, name: str, what: str = "(t, x) -> array") -> None:
    """`TypeError` unless `fn` is callable."""
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable {what}, got {fn!r}.")


def check_float_dtype(dtype, name: str = "dtype"):
    """`None` (the default float) or a floating dtype; `TypeError` otherwise."""
    if dtype is None:
        return default_float()
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"`{name}` must be a floating dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating dtype, got {dtype}.")
    return dtype
