r"""Shared pieces of the analytic layer: schedule checks and step coefficients.

For a step $n \to m$ ($n > m$) of a discrete schedule with cumulative $\bar a$ (the code's
`alpha_bar`), the DDIM-family forward posterior with extra variance $\lambda^2$ is

$$q(x_m\mid x_n, x_0) = \mathcal N\big(\gamma\,x_0 + c_n x_n,\ \lambda^2 I\big),\qquad
  c_n = \frac{\sqrt{1 - \bar a_m - \lambda^2}}{\sqrt{1 - \bar a_n}},\qquad
  \gamma = \sqrt{\bar a_m} - c_n\sqrt{\bar a_n}.$$

$\gamma$ carries the uncertainty about $x_0$ into $x_m$; it is the Analytic-DPM paper's
$\sqrt{\bar\alpha^{\mathrm{H}}_{n-1}} - \sqrt{\bar\beta_{n-1} - \lambda_n^2}
\sqrt{\bar\alpha^{\mathrm{H}}_n/\bar\beta_n}$ and
Su's $\gamma_t$. Both $\lambda^2$ and $\gamma$ come from the discrete layer
([`forward_posterior`][scoredyn.forward_posterior]), which evaluates them without cancellation.
"""

import math
from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import real_float
from .._discrete import DiscreteSchedule, forward_posterior, posterior_variance
from .._discrete.posterior import check_schedule as check_schedule
from .._discrete.respace import check_tau
from .._misc import is_concrete

Forward = Literal["ddpm", "ddim"]

__all__ = ["check_tau"]


def snr_inv(sched: DiscreteSchedule, n) -> Array:
    r"""$(1 - \bar a_n)/\bar a_n = e^{-\lambda_n}$ (no cancellation near $n = 0$)."""
    return sched.one_minus_alpha_bar[n] / sched.alpha_bar[n]


def pair_lam2_gamma(sched: DiscreteSchedule, n, m, forward: Forward, eta) -> tuple[Array, Array]:
    r"""$(\lambda^2, \gamma)$ of the step(s) $n\to m$, elementwise for arrays `n`, `m`.

    $\lambda^2 = \tilde\beta_{m|n}$ (DDPM) or $\eta^2\tilde\beta_{m|n}$ (DDIM family), and $\gamma$
    is the $x_0$-coefficient of [`forward_posterior`][scoredyn.forward_posterior].
    """
    lam2 = posterior_variance(sched, n, m)
    if forward == "ddim":
        lam2 = jnp.asarray(eta, lam2.dtype) ** 2 * lam2
    return lam2, forward_posterior(sched, n, m, lam2).coef_x0


def check_forward(forward: str, eta) -> None:
    if forward not in ("ddpm", "ddim"):
        raise ValueError(f"`forward` must be 'ddpm' or 'ddim', got {forward!r}.")
    if is_concrete(eta):
        e = real_float(eta, "eta")  # a Python number or a concrete array
        if not (0.0 <= e <= 1.0):
            raise ValueError(f"`eta` must lie in [0, 1], got {e}.")


def check_data_range(data_range) -> None:
    if data_range is None:
        return
    try:
        lo, hi = data_range
    except (TypeError, ValueError):
        raise ValueError(
            f"`data_range` must be None or a pair (a, b), got {data_range!r}."
        ) from None
    if is_concrete(lo, hi) and not (
        math.isfinite(real_float(lo, "data_range"))
        and real_float(lo, "data_range") < real_float(hi, "data_range")
    ):
        raise ValueError(f"`data_range` must be (a, b) with finite a < b, got {data_range!r}.")


def range_sq(data_range, dtype) -> Array:
    r"""$((b - a)/2)^2$, the largest variance of a variable in $[a, b]$."""
    lo, hi = data_range
    return jnp.asarray(((hi - lo) / 2.0) ** 2, dtype)


def x0_cov_cap(ratio: Float[Array, "..."], data_range) -> Array:
    r"""$\min\big(\frac{1 - \bar a_n}{\bar a_n},\ ((b - a)/2)^2\big)$, given the first term.

    The largest admissible average variance of $x_0$ given $x_n$; the second term only when a
    data range $(a, b)$ is given.
    """
    if data_range is None:
        return ratio
    return jnp.minimum(ratio, range_sq(data_range, ratio.dtype))
