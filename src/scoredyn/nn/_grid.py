"""A noise-prediction head for data on a grid (quantised images): a factorised Bayes denoiser."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import real_float
from .._misc import as_float
from .._sde import AbstractLinearSDE


class GridEps(eqx.Module):
    r"""Noise prediction for data whose entries lie on a grid of `levels` points, built from
    per-entry level logits.

    Quantised data (the $L = 17$ grey levels of the 8x8 digits, the 256 of 8-bit images) put
    every entry $x_{0,i}$ on a grid $g_0 < \dots < g_{L-1}$. At small noise the exact denoiser
    "rounds to the grid", a saw-tooth in $x$ that a small network learns slowly. This head gives
    the network that structure: the network returns logits $\ell_{ik}(t, x)$, read as a
    per-entry prior over the levels, and the head combines them with the exact Gaussian
    likelihood of the noisy entry, $x_i = \alpha g_k + \sigma\varepsilon$:

    $$\pi_{ik} = \operatorname{softmax}_k\Big(\ell_{ik}
        - \frac{(x_i - \alpha g_k)^2}{2\sigma^2}\Big),\qquad
      \hat x_{0,i} = \sum_k \pi_{ik}\,g_k,\qquad
      \hat\varepsilon = \frac{x - \alpha\,\hat x_0}{\sigma},$$

    with $(\alpha, \sigma)$ = `sde.marginal(t)`. If the entries were independent with
    prior $\operatorname{softmax}(\ell_i)$ given the others, $\hat x_0$ would be the exact
    posterior mean; in general the network's logits carry what the other entries say about
    entry $i$ (the dependence between pixels). With zero logits (an untrained network with a
    zero output layer) it is the exact denoiser of independent, uniform levels. The output is
    a plain `eps_fn(t, x)`: samplers, bounds and likelihoods use it unchanged. For a discrete
    schedule built with `DiscreteSchedule.from_sde(sde, N)` the marginals at $t_n$ agree with
    the schedule's.

    Args:
        net: $(t, x)\mapsto$ logits of shape `(d * levels,)` (entry-major: the `levels` logits
            of entry 0 first), e.g. [`MLP`][scoredyn.nn.MLP] with `out_size=d * levels`.
        sde: the linear SDE that gives $\alpha(t), \sigma(t)$.
        levels: $L \ge 2$.
        low: the first grid point $g_0$; the grid is
            $g_k = \mathrm{low} + k(\mathrm{high} - \mathrm{low})/(L - 1)$.
        high: the last grid point $g_{L-1}$ (the default grid is $[-1, 1]$).

    Example:
        ```python
        sde = sd.VPSDE()
        logits = sd.nn.MLP(64, out_size=64 * 17, key=key)
        eps_fn = sd.nn.GridEps(logits, sde, levels=17)
        eps_fn(0.01, x).shape     # (64,)
        ```
    """

    net: Callable
    sde: AbstractLinearSDE
    levels: int = eqx.field(static=True)
    low: float = eqx.field(static=True, default=-1.0)
    high: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"`levels` must be an int >= 2, got {self.levels!r}.")
        if not real_float(self.low, "low") < real_float(self.high, "high"):
            raise ValueError(f"need low < high, got low={self.low}, high={self.high}.")
        if not isinstance(self.sde, AbstractLinearSDE):
            raise TypeError(f"`sde` must be a linear SDE, got {type(self.sde).__name__}.")

    def posterior(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, "d L"]:
        r"""The level probabilities $\pi_{ik}$, shape `(d, levels)`."""
        if jnp.ndim(x) != 1:
            raise ValueError(
                f"`x` must be one flat example of shape (d,), got {jnp.shape(x)}; use vmap."
            )
        x = as_float(x, "x")
        d, L = x.shape[0], self.levels
        logits = jnp.asarray(self.net(t, x))
        if logits.shape != (d * L,):
            raise ValueError(
                f"`net(t, x)` must return d * levels = {d * L} logits, got shape {logits.shape}."
            )
        alpha, sigma = self.sde.marginal(t)
        dtype = jnp.result_type(x)
        alpha, sigma = alpha.astype(dtype), sigma.astype(dtype)
        grid = jnp.linspace(self.low, self.high, L, dtype=dtype)
        loglik = -0.5 * jnp.square((x[:, None] - alpha * grid[None, :]) / sigma)
        return jax.nn.softmax(logits.reshape(d, L).astype(dtype) + loglik, axis=-1)

    def x0(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""The denoised estimate $\hat x_0 = \sum_k \pi_{ik} g_k$."""
        p = self.posterior(t, x)
        grid = jnp.linspace(self.low, self.high, self.levels, dtype=p.dtype)
        return p @ grid

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        x = as_float(x, "x")
        alpha, sigma = self.sde.marginal(t)
        dtype = jnp.result_type(x)
        alpha, sigma = alpha.astype(dtype), sigma.astype(dtype)
        return ((x - alpha * self.x0(t, x)) / sigma).astype(dtype)
