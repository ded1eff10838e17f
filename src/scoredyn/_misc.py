"""Small shared numerics and input checks."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def default_float() -> jnp.dtype:
    """float64 when `jax_enable_x64` is on, float32 otherwise."""
    return jnp.result_type(float)


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


def log1mexp(x: ArrayLike) -> Array:
    r"""Stable $\log(1 - e^{x})$ for $x \le 0$ (Mächler 2012)."""
    x = jnp.asarray(x)
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def is_concrete(*xs) -> bool:
    """True when none of `xs` is a tracer, so values may be inspected in Python."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def check_positive(value, name: str, *, strict: bool = True) -> None:
    """Raise `ValueError` when a concrete scalar parameter is not (strictly) positive or is NaN."""
    if not is_concrete(value):
        return
    v = float(value)  # not jnp.asarray: under jit that would be a tracer
    if math.isnan(v) or (v <= 0 if strict else v < 0):
        want = "> 0" if strict else ">= 0"
        raise ValueError(f"`{name}` must be {want} and finite, got {v}.")


def check_time(t: ArrayLike, T: float, name: str = "t") -> Array:
    """Check `0 <= t <= T`: at trace time for concrete values, with `eqx.error_if` otherwise."""
    t = as_float(t, name)
    if jnp.ndim(t) != 0:
        raise ValueError(f"`{name}` must be a scalar time, got shape {jnp.shape(t)}; use jax.vmap.")
    if is_concrete(t):
        v = float(t)
        if not (0.0 <= v <= T):
            raise ValueError(f"`{name}` must lie in [0, T] = [0, {T}], got {v}.")
        return t
    return eqx.error_if(t, (t < 0) | (t > T) | jnp.isnan(t), f"`{name}` must lie in [0, T={T}].")


def check_vector_field(fn, name: str, t: ArrayLike, x: Array) -> None:
    """Trace `fn(t, x)` abstractly and check that it returns an array shaped and typed like `x`."""
    try:
        out = jax.eval_shape(fn, jnp.asarray(t, x.dtype), x)
    except Exception as e:  # surface the user's error with context
        raise TypeError(f"calling `{name}(t, x)` with x of shape {x.shape} failed: {e}") from e
    if not hasattr(out, "shape"):
        raise TypeError(f"`{name}(t, x)` must return an array, got {type(out).__name__}.")
    if out.shape != x.shape:
        raise ValueError(
            f"`{name}(t, x)` must return an array shaped like x {x.shape}, got shape {out.shape}."
        )
    if out.dtype != x.dtype:
        raise TypeError(
            f"`{name}(t, x)` must return dtype {x.dtype} like x, got {out.dtype} "
            "(silent up- or down-casting is refused)."
        )
