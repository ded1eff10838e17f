r"""The optimal reverse variance of Analytic-DPM / Analytic-DDIM, its bounds, and clipping."""

import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._custom_types import Scalar
from .._discrete import DiscreteSchedule
from .._misc import as_float, check_positive
from ._common import (
    Forward,
    check_data_range,
    check_forward,
    check_schedule,
    check_tau,
    pair_lam2_gamma,
    snr_inv,
    x0_cov_cap,
)
from ._gamma import as_ms_eps


def x0_variance(
    sched: DiscreteSchedule,
    ms_eps,
    *,
    data_range: tuple[float, float] | None = None,
    clip: bool = True,
) -> Float[Array, " {sched.num_steps}+1"]:
    r"""Average posterior variance of the data, $\kappa_n = \mathbb E\,\mathrm{tr\,Cov}[x_0|x_n]/d$.

    By the law of total variance and the score identity (Analytic-DPM, Lemma 13 and 11),

    $$\kappa_n = \frac{1 - \bar a_n}{\bar a_n}\big(1 - \texttt{ms\_eps}_n\big),$$

    which lies in $[0,\ \frac{1 - \bar a_n}{\bar a_n}]$ and, for data in $[a, b]^d$, below
    $((b - a)/2)^2$. With `clip=True` the estimate is clipped into these limits.

    Args:
        sched: discrete schedule.
        ms_eps: a [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or its `ms_eps`,
            shape `(N+1,)`.
        data_range: `(a, b)` if the data are bounded, else `None`.
        clip: clip into the limits above.

    Returns:
        Shape `(N+1,)`; entry 0 is 0.
    """
    sched = check_schedule(sched)
    check_data_range(data_range)
    ms = as_ms_eps(ms_eps, sched.num_steps)
    ratio = snr_inv(sched, jnp.arange(sched.num_steps + 1))
    dtype = jnp.result_type(ratio, ms)
    ratio = ratio.astype(dtype)
    v = ratio * (1.0 - ms.astype(dtype))
    if clip:
        v = jnp.clip(v, 0.0, x0_cov_cap(ratio, data_range))
    return v.at[0].set(0.0)


def _last_step_cap(last_step_clip, dtype) -> Array:
    r"""$v \le c^2\pi/2$, so that $\mathbb E|\sqrt v z| = \sqrt{2v/\pi} \le c$."""
    return jnp.asarray(last_step_clip, dtype) ** 2 * (math.pi / 2.0)


def _pairs(sched, tau):
    sched = check_schedule(sched)
    tau = check_tau(tau, sched.num_steps)
    return sched, tau[1:], tau[:-1]


def variance_bounds(
    sched: DiscreteSchedule,
    tau: Int[ArrayLike, " num_indices"],
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
    data_range: tuple[float, float] | None = None,
) -> tuple[Float[Array, " num_indices-1"], Float[Array, " num_indices-1"]]:
    r"""Lower and upper bounds on the optimal reverse variance of every step of `tau`.

    For a step $n \to m$ (Analytic-DPM Theorem 2 and Corollary 1, in the code's symbols):

    $$\lambda^2 \le v^*_{m|n} \le \lambda^2 + \gamma^2\,
      \min\Big(\frac{1 - \bar a_n}{\bar a_n},\ \Big(\frac{b - a}{2}\Big)^2\Big),$$

    with $\lambda^2$ the forward variance (DDPM: $\tilde\beta_{m|n}$; DDIM:
    $\eta^2\tilde\beta_{m|n}$)
    and $\gamma = \sqrt{\bar a_m} - \sqrt{(1 - \bar a_m - \lambda^2)\bar a_n/(1 -
    \bar a_n)}$. The first upper bound ($\texttt{ms\_eps} = 0$) is the paper's Eq. 11, the second
    (data in $[a, b]^d$, only when `data_range` is given) its Eq. 12; the lower bound is
    $\texttt{ms\_eps} = 1$.

    Args:
        sched: discrete schedule.
        tau: trajectory, shape `(K+1,)`, `tau[0] = 0`, `tau[-1] = N`.
        forward: `"ddpm"` ($\lambda^2 = \tilde\beta$) or `"ddim"` ($\lambda^2 = \eta^2\tilde\beta$).
        eta: DDIM $\eta\in[0, 1]$ (ignored for `"ddpm"`).
        data_range: `(a, b)` for bounded data, or `None`.

    Returns:
        `(lower, upper)`, each of shape `(K,)`; entry `k-1` is for step `tau[k] -> tau[k-1]`.
    """
    check_forward(forward, eta)
    check_data_range(data_range)
    sched, n, m = _pairs(sched, tau)
    lam2, gam = pair_lam2_gamma(sched, n, m, forward, eta)
    return lam2, lam2 + gam**2 * x0_cov_cap(snr_inv(sched, n), data_range)


def optimal_variances(
    sched: DiscreteSchedule,
    tau: Int[ArrayLike, " num_indices"],
    ms_eps,
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
    data_range: tuple[float, float] | None = None,
    clip: bool = True,
    last_step_clip: float | None = None,
) -> Float[Array, " num_indices-1"]:
    r"""The Analytic-DPM (or Analytic-DDIM) optimal reverse variance of every step of `tau`.

    For a step $n \to m$ with forward variance $\lambda^2$ (see
    [`variance_bounds`][scoredyn.analytic.variance_bounds]) the KL-optimal isotropic reverse
    variance, given the optimal mean, is (Analytic-DPM Theorem 1 / Corollary 1)

    $$v^*_{m|n} = \lambda^2 + \gamma^2\,\kappa_n,\qquad
      \kappa_n = \frac{1 - \bar a_n}{\bar a_n}\big(1 - \texttt{ms\_eps}_n\big),\qquad
      \gamma = \sqrt{\bar a_m} - \sqrt{(1 - \bar a_m - \lambda^2)\tfrac{\bar a_n}{1 - \bar a_n}}.$$

    For the DDPM forward process this is $\tilde\beta_{m|n} + \frac{\bar a_m\beta_{n|m}^2}{(1 -
    \bar a_n)^2}\kappa_n$ with $\beta_{n|m} = 1 - \bar a_n/\bar a_m$; for the last
    step ($m = 0$) both families give $\kappa_n$.

    With `clip=True` (the paper's practice) $\kappa_n$ is clipped into
    $[0, \min(\frac{1 - \bar a_n}{\bar a_n}, ((b - a)/2)^2)]$, i.e. the variance into
    `variance_bounds`. Optionally (`last_step_clip = c`), the step landing on `tau[1]` has its
    variance capped so that the mean absolute noise it adds, $\sqrt{2v/\pi}$, is at most $c$:
    $v\le c^2\pi/2$. The paper uses $c = 2y/255$ for images in $[-1, 1]$ ($y = 1$, or
    $y = 2$ for Analytic-DDPM on CIFAR-10 (LS) and CelebA), i.e. $v \le 9.66\times 10^{-5}$
    or $3.87\times 10^{-4}$.

    The result plugs into [`sd.sample_discrete`][scoredyn.sample_discrete] and
    [`sd.variational_bound`][scoredyn.variational_bound] as `variances=`, with the same forward
    process for the mean: `lam2="ddpm"` for `forward="ddpm"`, `eta=eta` for `forward="ddim"`.
    See [the derivation](../derivations/analytic-dpm.md#the-optimal-variance).

    Args:
        sched: discrete schedule.
        tau: trajectory, shape `(K+1,)`.
        ms_eps: a [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or an array `(N+1,)` of
            $\frac1d\mathbb E\|\hat\varepsilon(x_n, n)\|^2$.
        forward: `"ddpm"` or `"ddim"` (with `eta`).
        eta: DDIM $\eta\in[0, 1]$.
        data_range: `(a, b)` for bounded data, or `None` (no Eq. 12 bound).
        clip: clip into the bounds.
        last_step_clip: optional cap $c$ on $\mathbb E|\sqrt v z|$ of the step into `tau[1]`.

    Returns:
        Shape `(K,)`; entry `k-1` is the variance of step `tau[k] -> tau[k-1]`.

    Raises:
        ValueError: bad `forward`, `eta`, `tau`, `data_range`, `ms_eps` shape or `last_step_clip`.

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503, Theorems 1-2, Corollaries 1-3, App. F.2.

    Example:
        ```python
        est = sd.analytic.estimate_gamma(key, sched, eps_fn, x_train)
        tau = sd.respace(1000, 10)
        var = sd.analytic.optimal_variances(sched, tau, est, data_range=(-1.0, 1.0))  # (10,)
        ```
    """
    check_forward(forward, eta)
    check_data_range(data_range)
    if last_step_clip is not None:
        check_positive(last_step_clip, "last_step_clip")
    sched, n, m = _pairs(sched, tau)
    ms = as_ms_eps(ms_eps, sched.num_steps)
    lam2, gam = pair_lam2_gamma(sched, n, m, forward, eta)
    dtype = jnp.result_type(lam2, ms)
    ratio = snr_inv(sched, n).astype(dtype)
    cov = ratio * (1.0 - ms.astype(dtype)[n])
    if clip:
        cov = jnp.clip(cov, 0.0, x0_cov_cap(ratio, data_range))
    var = lam2.astype(dtype) + gam.astype(dtype) ** 2 * cov
    if last_step_clip is not None and var.shape[0] >= 2:
        var = var.at[1].set(jnp.minimum(var[1], _last_step_cap(last_step_clip, dtype)))
    return var


def optimal_variance(
    sched: DiscreteSchedule,
    n: Int[ArrayLike, "*pairs"],
    m: Int[ArrayLike, "*pairs"],
    ms_eps_n: Float[ArrayLike, "*pairs"],
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
    data_range: tuple[float, float] | None = None,
    clip: bool = True,
) -> Float[Array, "*pairs"]:
    r"""The optimal reverse variance $v^*_{m|n}$ for pairs $n\to m$ (not a trajectory).

    Same formula as [`optimal_variances`][scoredyn.analytic.optimal_variances], with
    `ms_eps_n` $= \frac1d\mathbb E\|\hat\varepsilon(x_n, n)\|^2$ given at step $n$. `n`, `m` and
    `ms_eps_n` may be scalars or arrays of one shape (elementwise); `n` and `m` may be traced
    (checked with `eqx.error_if` then) and must satisfy $0\le m < n\le N$.

    Example:
        ```python
        v = sd.analytic.optimal_variance(sched, 500, 400, est.ms_eps[500])
        ```
    """
    check_forward(forward, eta)
    check_data_range(data_range)
    sched = check_schedule(sched)
    ms = as_float(ms_eps_n, "ms_eps_n")
    lam2, gam = pair_lam2_gamma(sched, n, m, forward, eta)
    dtype = jnp.result_type(lam2, ms)
    ratio = snr_inv(sched, n).astype(dtype)
    cov = ratio * (1.0 - ms.astype(dtype))
    if clip:
        cov = jnp.clip(cov, 0.0, x0_cov_cap(ratio, data_range))
    return lam2.astype(dtype) + gam.astype(dtype) ** 2 * cov
