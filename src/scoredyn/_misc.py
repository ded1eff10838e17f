"""Small shared numerics and input checks."""

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

# the shared checks live in _checks; re-exported here for the modules that import them from _misc
from ._checks import (
    as_float as as_float,
    check_positive as check_positive,
    default_float as default_float,
    is_concrete as is_concrete,
)


def log1mexp(x: ArrayLike) -> Array:
    r"""Stable $\log(1 - e^{x})$ for $x \le 0$ (Mächler 2012)."""
    x = jnp.asarray(x)
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def safe_sqrt(x: ArrayLike) -> Array:
    r"""$\sqrt{x}$ for $x \ge 0$ whose derivative at $x = 0$ is 0 instead of $+\infty$.

    For a noise scale $\sqrt{v}$ multiplied by zero noise (or a zero mask) the product rule would
    otherwise give $0\cdot\infty = $ NaN in the gradient.
    """
    x = jnp.asarray(x)
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def time_slack(T, dtype) -> float:
    """Rounding allowance at the ends of $[0, T]$: a few ulps of `dtype` (relative to `T`), so that
    `T` stored in float32 (or `N * (T / N)`) still counts as inside the interval."""
    T = float(T) if is_concrete(T) else 1.0
    return 8.0 * float(jnp.finfo(dtype).eps) * max(1.0, abs(T))


def check_times(t: ArrayLike, T, name: str = "t") -> Array:
    r"""Check `0 <= t <= T` elementwise (any shape; NaN refused), up to `time_slack`.

    Concrete values raise `ValueError` at trace time, naming the first bad value; traced values
    are checked at run time with `eqx.error_if`. Returns `t` as a floating array.
    """
    t_ = as_float(t, name)
    slack = time_slack(T, t_.dtype)
    if is_concrete(t_, T):
        v = np.asarray(t_, dtype=np.float64)
        Tv = float(T)
        bad = np.isnan(v) | (v < -slack) | (v > Tv + slack)
        if bad.any():
            first = v.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
            raise ValueError(f"`{name}` must lie in [0, T] = [0, {Tv}], got {first}.")
    else:
        bad = jnp.isnan(t_) | (t_ < -slack) | (t_ > jnp.asarray(T, t_.dtype) + slack)
        t_ = eqx.error_if(t_, bad, f"`{name}` must lie in [0, T] (the SDE's time interval).")
    # move a time within the slack onto the interval (t = -1e-300 would otherwise give
    # sigma^2 < 0); `where`, not `clip`, keeps d/dt = 1 at the end points themselves
    T_ = jnp.asarray(T, t_.dtype)
    return jnp.where(t_ < 0, jnp.zeros_like(t_), jnp.where(t_ > T_, T_, t_))


def check_time(t: ArrayLike, T: float, name: str = "t") -> Array:
    """A scalar time in `[0, T]` (see `check_times`)."""
    t = as_float(t, name)
    if jnp.ndim(t) != 0:
        raise ValueError(f"`{name}` must be a scalar time, got shape {jnp.shape(t)}; use jax.vmap.")
    return check_times(t, T, name)


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
