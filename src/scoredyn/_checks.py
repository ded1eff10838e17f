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
from typing import TypeVar, cast

import equinox as eqx
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
    if isinstance(x, complex):
        raise TypeError(f"`{name}` must be real floating point, got complex {x!r}.")
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a real number or array, got {type(x).__name__} {x!r:.80}."
        ) from None
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real floating point, got dtype {x.dtype}.")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)) and (
        x.dtype != jnp.bool_
    ):
        raise TypeError(f"`{name}` must be a real number or array, got dtype {x.dtype}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(default_float())
    return x


def real_float(value, name: str) -> float:
    """A concrete real scalar as a Python float, for a trace-time check.

    `TypeError` naming the argument for a complex number, a string or anything else that is
    not a real number (instead of Python's bare "float() argument must be ..."), and
    `ValueError` for an array with more than one entry.
    """
    if isinstance(value, complex) or (
        hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.complexfloating)
    ):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    try:
        arr = np.asarray(value)
    except Exception:  # pragma: no cover - exotic objects
        raise TypeError(f"`{name}` must be a real number, got {value!r}.") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if arr.size != 1:
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}.")
    return float(arr.reshape(()))


_T = TypeVar("_T")


def runtime_check(x: _T, bad, msg: str) -> _T:
    """`equinox.error_if(x, bad, msg)`: the run-time tier of a check on a traced value.

    Returns `x` tied to the check; the caller must use the returned value, or the check is
    dropped with it.
    """
    return cast(_T, eqx.error_if(x, bad, msg))


def check_positive_param(value, name: str, *, strict: bool = True):
    """Both tiers of `value > 0` (or `>= 0`) and finite, for a scalar parameter.

    A concrete value raises `ValueError` at once (`check_positive`); a traced one is returned
    wrapped in `equinox.error_if`, so a traced `-1` raises when the program runs instead of
    silently changing the answer. Returns the value (wrapped when traced).
    """
    if is_concrete(value):
        check_positive(value, name, strict=strict)
        return value
    v = jnp.asarray(value)
    ok = (v > 0 if strict else v >= 0) & jnp.isfinite(v)
    want = "> 0" if strict else ">= 0"
    return runtime_check(v, ~jnp.all(ok), f"`{name}` must be {want} and finite.")


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
    v = real_float(value, name)  # not jnp.asarray: under jit that would be a tracer
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


def check_data_rows(data, name: str = "data"):
    """A data set (examples on the leading axis) with no NaN or infinite entry.

    The data-set-level boundary of the NaN policy: one bad row would silently turn every
    statistic computed from the set into NaN. A concrete array raises `ValueError` naming the
    argument and the first bad row (checked in NumPy, so also for a constant inside `jax.jit`);
    a traced one is returned wrapped in `equinox.error_if`.
    """
    v = concrete_value(data)
    if v is not None:
        if v.dtype.kind in "fc":
            finite = np.isfinite(v).reshape(v.shape[0], -1).all(axis=1) if v.ndim else None
            if finite is None:
                finite = np.isfinite(v).reshape(1)
            if not finite.all():
                row = int(np.argmax(~finite))
                what = "NaN" if np.isnan(v[row] if v.ndim else v).any() else "an infinite value"
                raise ValueError(
                    f"`{name}` must be finite, got {what} in row {row} ({int((~finite).sum())} "
                    f"bad row(s) of {finite.size}); drop or impute them."
                )
        return data
    data = jnp.asarray(data)
    if not jnp.issubdtype(data.dtype, jnp.inexact):
        return data
    return runtime_check(
        data, ~jnp.all(jnp.isfinite(data)), f"`{name}` must be finite (no NaN or inf rows)."
    )


def check_finite_data(x, name: str = "x"):
    """One data example with no NaN or infinite entry: `ValueError` naming the argument when
    concrete (checked in NumPy), `equinox.error_if` when traced (returns `x`, wrapped then)."""
    v = concrete_value(x)
    if v is not None:
        if v.dtype.kind in "fc":
            flat = v.reshape(-1)
            bad = ~np.isfinite(flat)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"`{name}` must be finite, got {flat[i]} at flat index {i}.")
        return x
    x = jnp.asarray(x)
    return runtime_check(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` must be finite (no NaN/inf).")
