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
import numpy as np
from jax.scipy.special import log_ndtr
from jaxtyping import Array, ArrayLike, Float, Real

from .._checks import concrete_value
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
    r"""Elementwise KL(N(mu_q, var_q) || N(mu_p, var_p)) from (mu_q - mu_p)^2, with its limits.

    A zero variance is a point mass: $v_q = 0 < v_p$ gives $+\infty$ (a point has no density
    ratio), and $v_p = 0$ gives $+\infty$ too unless $q$ is the same point mass ($v_q = 0$ and
    $\mu_q = \mu_p$), where the divergence is 0. The formula itself would give
    $-\infty + \infty = $ NaN there. NaN input still gives NaN. Gradient-safe: the formula is
    evaluated with placeholder variances where a limit is taken.
    """
    zq, zp = var_q == 0, var_p == 0
    vq = jnp.where(zq, jnp.ones_like(var_q), var_q)
    vp = jnp.where(zp, jnp.ones_like(var_p), var_p)
    val = 0.5 * (jnp.log(vp) - jnp.log(vq) + (var_q + diff2) / vp - 1.0)
    inf = jnp.full_like(val, jnp.inf)
    same_point = zq & (diff2 == 0)
    at_zero_p = jnp.where(same_point, jnp.zeros_like(val), inf)
    # NaN in either mean or variance propagates (a NaN compares unequal to 0)
    nan = jnp.isnan(diff2) | jnp.isnan(var_q) | jnp.isnan(var_p)
    out = jnp.where(zp, at_zero_p, jnp.where(zq, inf, val))
    return jnp.where(nan, jnp.full_like(val, jnp.nan), out)


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
    runs over the broadcast shape. A zero variance is a point mass: $v_q = 0$ or $v_p = 0$
    gives $+\infty$, except for two equal point masses ($v_q = v_p = 0$, $\mu_q = \mu_p$),
    whose divergence is 0. NaN input gives NaN (no error; see
    [the NaN policy](../reliability.md#nan-policy)).

    Raises:
        ValueError: for a concrete negative variance.
    """
    for a, nm in ((var_q, "var_q"), (var_p, "var_p")):
        v = concrete_value(a)
        if v is not None and v.dtype.kind in "biuf" and bool(np.any(v < 0)):
            raise ValueError(f"`{nm}` must be >= 0 (a variance), got {v}.")
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
        var: $v \ge 0$, scalar or broadcastable to `x`. $v = 0$ is a point mass at the mean:
            $\log P(x_i) = 0$ when $\mu_i$ lies in the bin of $x_i$, $-\infty$ otherwise.
        levels: $L \ge 2$ (256 for 8-bit images).

    Returns:
        $\sum_i \log P(x_i)$ (nats).
    """
    levels = _check_levels(levels)
    x, mean, var = as_float(x, "x"), as_float(mean, "mean"), as_float(var, "var")
    h = 1.0 / (levels - 1)
    zero = var == 0  # a point mass at the mean: log P = 0 in its bin, -inf elsewhere
    s = jnp.sqrt(jnp.where(zero, jnp.ones_like(var), var))
    d_hi, d_lo = x + h - mean, x - h - mean
    hi = d_hi / s
    lo = d_lo / s
    left = x < -1.0 + h
    right = x > 1.0 - h
    mid = _log_diff_ndtr(hi, jnp.where(hi > lo, lo, hi - 1.0))
    val = jnp.where(left, log_ndtr(hi), jnp.where(right, log_ndtr(-lo), mid))
    inside = jnp.where(left, d_hi >= 0, jnp.where(right, d_lo < 0, (d_lo < 0) & (d_hi >= 0)))
    point = jnp.where(inside, 0.0, -jnp.inf)
    nan = jnp.isnan(d_hi) | jnp.isnan(var)
    val = jnp.where(zero & ~nan, point, val)
    shape = jnp.broadcast_shapes(x.shape, mean.shape, jnp.shape(var))
    return jnp.sum(jnp.broadcast_to(val, shape))


def _gaussian_nll(diff2, var):
    r"""$-\log\mathcal N(x; \mu, v)$ from $(x - \mu)^2$, with its limit at $v = 0$.

    A zero variance is a point mass at $\mu$: $+\infty$ when $x \ne \mu$ (zero density) and
    $-\infty$ at $x = \mu$ (a point mass has infinite density). The formula would give
    $-\infty + \infty = $ NaN. NaN input gives NaN.
    """
    zero = var == 0
    v = jnp.where(zero, jnp.ones_like(var), var)
    val = 0.5 * (jnp.log(2.0 * math.pi * v) + diff2 / v)
    limit = jnp.where(diff2 == 0, -jnp.inf, jnp.inf)
    nan = jnp.isnan(diff2) | jnp.isnan(var)
    return jnp.where(nan, jnp.nan, jnp.where(zero, limit, val))
