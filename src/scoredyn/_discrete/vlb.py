r"""The variational bound (negative ELBO) of a discrete diffusion along any trajectory.

For a forward process $q_\lambda$ of the DDIM family and reverse Gaussians
$p(x_m\mid x_n) = \mathcal N(c_0\hat x_0 + c_n x_n, v)$, with $n = \tau_k$, $m = \tau_{k-1}$,

$$-\log p(x_0) \le
  \underbrace{\mathrm{KL}\big(q(x_N\mid x_0)\,\|\,\mathcal N(0, I)\big)}_{\text{prior}}
  + \sum_{k=2}^{K}\mathbb E_q\,
  \underbrace{\mathrm{KL}\big(q_\lambda(x_m\mid x_n, x_0)\,\|\,p(x_m\mid x_n)\big)}_{\text{KL}_k}
  - \underbrace{\mathbb E_q\log p(x_0\mid x_{\tau_1})}_{\text{decoder}}.$$

See [the variational bound](../derivations/variational-bound.md).
"""

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Float, Real

from .._custom_types import Scalar
from .._misc import as_float, log1mexp

_DECODERS = ("discretized", "gaussian")


class VariationalBound(NamedTuple):
    r"""Terms of the variational bound, in nats, for one example.

    Attributes:
        total: prior + kl + decoder (nats), an upper bound on $-\log p(x_0)$ (a discrete
            probability for the discretised decoder, a density for the Gaussian one).
        bits_per_dim: total $/(d\log 2)$ with $d$ the number of entries of $x_0$.
        prior: $\mathrm{KL}(q(x_N\mid x_0)\,\|\,\mathcal N(0, I))$ (closed form).
        kl: the sum of the Gaussian KL terms, steps $k = 2..K$.
        decoder: $-\log p(x_0\mid x_{\tau_1})$.
        terms: shape `(K,)`, aligned with the variance arrays: `terms[0]` is the decoder
            NLL and `terms[k-1]` the KL of step $\tau_k \to \tau_{k-1}$.
    """

    total: Scalar
    bits_per_dim: Scalar
    prior: Scalar
    kl: Scalar
    decoder: Scalar
    terms: Float[Array, " K"]


def _kl_terms(diff2, var_q, var_p):
    """Elementwise KL(N(mu_q, var_q) || N(mu_p, var_p)) from (mu_q - mu_p)^2."""
    return 0.5 * (jnp.log(var_p) - jnp.log(var_q) + (var_q + diff2) / var_p - 1.0)


def gaussian_kl(
    mean_q: Real[ArrayLike, "..."],
    var_q: Real[ArrayLike, "..."],
    mean_p: Real[ArrayLike, "..."],
    var_p: Real[ArrayLike, "..."],
) -> Scalar:
    r"""KL divergence of two diagonal Gaussians, summed over entries.

    $$\mathrm{KL}\big(\mathcal N(\mu_q, v_q)\,\|\,\mathcal N(\mu_p, v_p)\big)
      = \frac12\sum_i\Big(\log\frac{v_{p,i}}{v_{q,i}}
      + \frac{v_{q,i} + (\mu_{q,i} - \mu_{p,i})^2}{v_{p,i}} - 1\Big).$$

    The arguments broadcast against each other (a scalar variance is isotropic); the sum
    runs over the broadcast shape. $v_q = 0$ gives $+\infty$.
    """
    mean_q, var_q, mean_p, var_p = (
        as_float(a, nm)
        for a, nm in ((mean_q, "mean_q"), (var_q, "var_q"), (mean_p, "mean_p"), (var_p, "var_p"))
    )
    shape = jnp.broadcast_shapes(mean_q.shape, var_q.shape, mean_p.shape, var_p.shape)
    terms = _kl_terms((mean_q - mean_p) ** 2, var_q, var_p)
    return jnp.sum(jnp.broadcast_to(terms, shape))


def _log_diff_ndtr(hi, lo):
    r"""$\log(\Phi(hi) - \Phi(lo))$ for $hi > lo$, stable in both tails (gradient-safe)."""
    right = lo > 0  # both in the right tail: use Phi(-lo) - Phi(-hi)
    lo_r, hi_r = jnp.where(right, lo, 1.0), jnp.where(right, hi, 2.0)
    lo_l, hi_l = jnp.where(right, -2.0, lo), jnp.where(right, -1.0, hi)
    a = log_ndtr(-lo_r)
    val_r = a + log1mexp(log_ndtr(-hi_r) - a)
    b = log_ndtr(hi_l)
    val_l = b + log1mexp(log_ndtr(lo_l) - b)
    return jnp.where(right, val_r, val_l)


def _check_levels(levels) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(
            f"`levels` must be a Python int >= 2 (256 for 8-bit data), got {levels!r}."
        )
    return levels


def discretized_gaussian_log_likelihood(
    x: Float[ArrayLike, "*shape"],
    mean: Float[ArrayLike, "*shape"],
    var: Float[ArrayLike, "..."],
    levels: int = 256,
) -> Scalar:
    r"""$\log P(x)$ of data on a grid in $[-1, 1]$ under a discretised Gaussian, summed.

    The grid is $x \in \{-1 + 2j/(L - 1)\}_{j=0}^{L-1}$ and each point owns the bin
    $[x - h, x + h]$, $h = 1/(L - 1)$, except the edge bins, which extend to $\mp\infty$
    (Ho et al. 2020, eq. 13):

    $$P(x_i) = \Phi\Big(\frac{x_i + h - \mu_i}{s_i}\Big)
      - \Phi\Big(\frac{x_i - h - \mu_i}{s_i}\Big),
      \qquad s_i = \sqrt{v_i},$$

    with $\Phi(+\infty) = 1$ at $x_i = 1$ and $\Phi(-\infty) = 0$ at $x_i = -1$. The difference
    is evaluated in log space in the tail where it is accurate (`log_ndtr`), so it stays
    finite and exact for tiny $s$ and far-off means.

    Args:
        x: data on the grid (entries within half a bin of a grid point).
        mean: $\mu$, shaped like `x`.
        var: $v > 0$, scalar or broadcastable to `x`.
        levels: $L \ge 2$ (256 for 8-bit images).

    Returns:
        $\sum_i \log P(x_i)$ (nats).
    """
    levels = _check_levels(levels)
    x, mean, var = as_float(x, "x"), as_float(mean, "mean"), as_float(var, "var")
    h = 1.0 / (levels - 1)
    s = jnp.sqrt(var)
    hi = (x + h - mean) / s
    lo = (x - h - mean) / s
    left = x < -1.0 + h
    right = x > 1.0 - h
    mid = _log_diff_ndtr(hi, jnp.where(hi > lo, lo, hi - 1.0))
    val = jnp.where(left, log_ndtr(hi), jnp.where(right, log_ndtr(-lo), mid))
    shape = jnp.broadcast_shapes(x.shape, mean.shape, jnp.shape(var))
    return jnp.sum(jnp.broadcast_to(val, shape))


def _gaussian_nll(diff2, var):
    return 0.5 * (jnp.log(2.0 * math.pi * var) + diff2 / var)
