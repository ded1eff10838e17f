r"""The start time of the PF-ODE likelihood for quantised data: blur matched to the bin."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import as_float, check_positive
from .._sde import AbstractLinearSDE

#: Halvings of $[0, T]$: the bracket ends at $T\,2^{-64}$, below float64 resolution.
_NUM_HALVINGS = 64


def dequantization_t_eps(sde: AbstractLinearSDE, bin_width: Float[ArrayLike, ""]) -> Array:
    r"""The time $t_\epsilon$ at which the noise of `sde` matches uniform dequantisation noise.

    For data on a grid of spacing $\Delta$ (= `bin_width`), the PF-ODE likelihood started at
    $t_\epsilon$ models $p_{t_\epsilon}$, the data blurred by $\sigma(t_\epsilon)$, and the
    dequantisation bound of [`bits_per_dim`][scoredyn.bits_per_dim] spreads each grid point
    uniformly over its bin, noise of standard deviation $\Delta/\sqrt{12}$. This returns the
    $t_\epsilon$ where the two match,

    $$\sigma(t_\epsilon) = \frac{\Delta}{\sqrt{12}}.$$

    $\sigma(t)$ alone does not fix the log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$ of a general
    linear SDE ($\alpha(t_\epsilon)$ is needed too), so rather than inverting $\lambda$ the time is
    found by bisection on $\sigma(t)$, which is increasing in $t$ for every built-in SDE: 64
    halvings of $[0, T]$ in a `lax.fori_loop` (bracket $T\,2^{-64}$, below float64
    resolution), so it runs under `jax.jit` and `jax.vmap`. If $\sigma(T) \le \Delta/\sqrt{12}$
    the result is $T$. For the variance-preserving SDEs, where $\alpha^2 = 1 - \sigma^2$, it
    equals `sde.time_at_log_snr(log((1 - s**2) / s**2))` with $s = \Delta/\sqrt{12}$. See
    [the derivation](../derivations/probability-flow.md#start-time-for-quantised-data).

    Args:
        sde: a linear SDE ([`VPSDE`][scoredyn.VPSDE], [`SubVPSDE`][scoredyn.SubVPSDE],
            [`VESDE`][scoredyn.VESDE], [`CosineVPSDE`][scoredyn.CosineVPSDE] or your own
            [`AbstractLinearSDE`][scoredyn.AbstractLinearSDE] with increasing $\sigma$).
        bin_width: the grid spacing $\Delta > 0$, a scalar ($2/(L - 1)$ for $L$ levels in
            $[-1, 1]$).

    Returns:
        The scalar $t_\epsilon \in (0, T]$, in the dtype of `bin_width` (the default float for a
        Python number).

    Raises:
        TypeError: if `sde` is not an `AbstractLinearSDE`.
        ValueError: if `bin_width` is not a scalar, or (concrete) not positive and finite.

    Example:
        ```python
        sde = sd.VPSDE()
        t_eps = sd.dequantization_t_eps(sde, 2.0 / 255)        # 256 levels in [-1, 1]
        bpd = sd.bits_per_dim(sde, score, x, key=key, levels=256, t_eps=t_eps)
        ```
    """
    if not isinstance(sde, AbstractLinearSDE):
        raise TypeError(
            f"`sde` must be an AbstractLinearSDE (VPSDE, SubVPSDE, VESDE, CosineVPSDE, ...), "
            f"got {type(sde).__name__}."
        )
    width = as_float(bin_width, "bin_width")
    if width.ndim != 0:
        raise ValueError(f"`bin_width` must be a scalar, got shape {width.shape}.")
    check_positive(bin_width, "bin_width")
    dtype = width.dtype
    target = width / math.sqrt(12.0)

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = sde.marginal(mid)[1] < target  # sigma(mid) too small: the root is after mid
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo = jnp.zeros((), dtype)
    hi = jnp.asarray(sde.T, dtype)
    lo, hi = jax.lax.fori_loop(0, _NUM_HALVINGS, halve, (lo, hi))
    return 0.5 * (lo + hi)
