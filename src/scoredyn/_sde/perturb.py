"""Sampling the forward marginal q(x_t | x_0)."""

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, Float, Real

from .._custom_types import Key, Time
from .._misc import as_float, check_time
from .base import AbstractLinearSDE


def perturb(
    key: Key, sde: AbstractLinearSDE, x0: Real[ArrayLike, "*shape"], t: Time
) -> Float[Array, "*shape"]:
    r"""Draw $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ with
    $\varepsilon \sim \mathcal N(0, I)$.

    Args:
        key: PRNG key.
        sde: a linear SDE.
        x0: clean data, one example (any shape; integer data are promoted to the default
            float).
        t: scalar time in $[0, T]$.

    Returns:
        $x_t$, shaped like `x0`, of its (floating) dtype.

    Raises:
        ValueError: if `t` lies outside $[0, T]$ (at trace time when concrete).
    """
    if not isinstance(sde, AbstractLinearSDE):
        raise TypeError(f"`sde` must be a linear SDE, got {type(sde).__name__}.")
    x0 = as_float(x0, "x0")
    t_arr = check_time(t, sde.T)
    # a Python number stays static (a compile-time constant, as under the caller's jit)
    return _perturb(key, sde, x0, t if isinstance(t, (int, float)) else t_arr)


@eqx.filter_jit
def _perturb(key, sde, x0, t):
    # compiled whole, so an eager call and a call under the user's jit run the same program and
    # draw bit-identical samples (XLA may fuse `a * x + b * e` into an FMA only when compiled)
    alpha, sigma = sde.marginal(t)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return alpha.astype(x0.dtype) * x0 + sigma.astype(x0.dtype) * eps
