r"""The forward posterior $q(x_m \mid x_n, x_0)$ of the DDIM family, for any pair $m < n$.

For a schedule $\bar a$ and any extra variance $0 \le \lambda^2 \le 1 - \bar a_m$,

$$q_\lambda(x_m\mid x_n, x_0) = \mathcal N\Big(\alpha_m x_0 + \sqrt{\sigma_m^2 - \lambda^2}\,
  \frac{x_n - \alpha_n x_0}{\sigma_n},\ \lambda^2 I\Big)$$

keeps every marginal $q(x_n\mid x_0) = \mathcal N(\alpha_n x_0, \sigma_n^2 I)$. DDPM is
$\lambda^2 = \tilde\beta_{m|n} = \sigma_m^2\beta_{n|m}/\sigma_n^2$ with
$\beta_{n|m} = 1 - \bar a_n/\bar a_m$; DDIM is $\lambda^2 = 0$.
See [the DDIM family](../derivations/ddim.md#the-ddim-family).
"""

from typing import Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import real_float, runtime_check
from .._custom_types import Scalar
from .._misc import as_float
from .respace import check_tau
from .schedule import DiscreteSchedule, check_index, concrete_value

VarianceKind = Literal["ddim", "ddpm", "ddpm_beta", "eta"]
_VAR_KINDS = ("ddim", "ddpm", "ddpm_beta", "eta")


def check_schedule(sched) -> DiscreteSchedule:
    if not isinstance(sched, DiscreteSchedule):
        raise TypeError(f"`sched` must be a DiscreteSchedule, got {type(sched).__name__}.")
    return sched


def _safe_div(a, b):
    """a / b where b > 0, else 0 (gradient-safe double where)."""
    ok = b > 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


class PairTerms(NamedTuple):
    """Schedule quantities of a pair (n, m), m < n (arrays of the pair's shape)."""

    alpha_n: Array
    sigma_n: Array
    alpha_m: Array
    sigma2_m: Array
    beta_nm: Array  # 1 - abar_n / abar_m
    beta_tilde: Array  # sigma_m^2 beta_nm / sigma_n^2
    half_dlam: Array  # (lambda_m - lambda_n) / 2 >= 0 (inf for m = 0)
    soa_n: Array  # sigma_n / alpha_n = exp(-lambda_n / 2)


def pair_terms(sched: DiscreteSchedule, n, m) -> PairTerms:
    la, om = sched.log_alpha_bar, sched.one_minus_alpha_bar
    la_n, la_m = la[n], la[m]
    om_n, om_m = om[n], om[m]
    beta_nm = -jnp.expm1(la_n - la_m)
    log_om_n = jnp.log(om_n)
    log_om_m = jnp.log(jnp.where(om_m > 0, om_m, 1.0))
    lam_n = la_n - log_om_n
    half_dlam = jnp.where(om_m > 0, 0.5 * ((la_m - log_om_m) - lam_n), jnp.inf)
    return PairTerms(
        alpha_n=jnp.exp(0.5 * la_n),
        sigma_n=jnp.sqrt(om_n),
        alpha_m=jnp.exp(0.5 * la_m),
        sigma2_m=om_m,
        beta_nm=beta_nm,
        beta_tilde=beta_nm * om_m / om_n,
        half_dlam=half_dlam,
        soa_n=jnp.exp(-0.5 * lam_n),
    )


def _check_pair(sched: DiscreteSchedule, n, m):
    N = sched.num_steps
    nv, mv = concrete_value(n), concrete_value(m)
    n = check_index(n, N, "n")
    m = check_index(m, N, "m")
    if nv is not None and mv is not None:
        if not bool(np.all(mv < nv)):
            raise ValueError(f"`m` must satisfy m < n (a reverse step n -> m), got n={nv}, m={mv}.")
        return n, m
    m = eqx.error_if(
        m, jnp.asarray(m) >= jnp.asarray(n), "`m` must satisfy m < n (a reverse step n -> m)."
    )
    return n, m


def check_lam2(lam2, sigma2_m, name: str = "lam2"):
    r"""$0 \le \lambda^2 \le \sigma_m^2$ (with a relative slack of 1e-6 for rounding)."""
    lv, sv = concrete_value(lam2), concrete_value(sigma2_m)
    lam2 = as_float(lam2, name)
    if lv is not None and sv is not None:
        lv = lv.astype(np.float64)
        if np.any(np.isnan(lv) | (lv < 0) | (lv > sv * (1 + 1e-6) + 1e-300)):
            hint = (
                " Reverse variances larger than that go in `variances`/`var`; the mean then uses "
                "`lam2`."
                if name == "lam2"
                else ""
            )
            raise ValueError(
                f"`{name}` must lie in [0, 1 - alpha_bar[m]] (the DDIM family keeps the marginals "
                f"only then), got {lam2} with 1 - alpha_bar[m] = {sigma2_m}.{hint}"
            )
        return lam2
    slack = 1e-6 * sigma2_m + jnp.finfo(sigma2_m.dtype).tiny
    bad = jnp.isnan(lam2) | (lam2 < 0) | (lam2 > sigma2_m + slack)
    return eqx.error_if(lam2, bad, f"`{name}` must lie in [0, 1 - alpha_bar[m]].")


class PosteriorCoeffs(NamedTuple):
    r"""$(c_0, c_n, \lambda^2)$ in $q_\lambda = \mathcal N(c_0 x_0 + c_n x_n, \lambda^2)$."""

    coef_x0: Array
    coef_xn: Array
    var: Array


def posterior_coefficients(t: PairTerms, lam2) -> PosteriorCoeffs:
    r"""Stable $c_0, c_n$ from $r = \lambda^2/\sigma_m^2$, $\Delta\lambda = \lambda_m - \lambda_n$.

    $c_n = \sqrt{1 - r}\,\sigma_m/\sigma_n$ and
    $c_0 = \alpha_m - c_n\alpha_n
    = -\alpha_m\operatorname{expm1}(\tfrac12\log(1 - r) - \tfrac12\Delta\lambda)$.
    """
    r = jnp.clip(_safe_div(lam2, t.sigma2_m), 0.0, 1.0)
    half_log1mr = 0.5 * jnp.log1p(-r)
    coef_x0 = -t.alpha_m * jnp.expm1(half_log1mr - t.half_dlam)
    coef_xn = jnp.exp(half_log1mr) * jnp.sqrt(t.sigma2_m) / t.sigma_n
    return PosteriorCoeffs(coef_x0, coef_xn, jnp.broadcast_to(lam2, coef_x0.shape))


def forward_posterior(
    sched: DiscreteSchedule,
    n: Int[ArrayLike, "..."],
    m: Int[ArrayLike, "..."],
    lam2: Float[ArrayLike, "..."] | None = None,
) -> PosteriorCoeffs:
    r"""The forward posterior $q_\lambda(x_m\mid x_n, x_0)$ of the DDIM family, for any $m < n$.

    $$q_\lambda(x_m\mid x_n, x_0) = \mathcal N(c_0 x_0 + c_n x_n,\ \lambda^2 I),$$

    $$c_n = \frac{\sqrt{\sigma_m^2 - \lambda^2}}{\sigma_n},\qquad c_0 = \alpha_m - c_n\alpha_n,$$

    with $\alpha_k = \sqrt{\bar a_k}$, $\sigma_k = \sqrt{1 - \bar a_k}$. `lam2=None` is
    DDPM's posterior, $\lambda^2 = \tilde\beta_{m|n} = \sigma_m^2\beta_{n|m}/\sigma_n^2$, for
    which $c_0 = \alpha_m\beta_{n|m}/\sigma_n^2$ and
    $c_n = \sqrt{1 - \beta_{n|m}}\,\sigma_m^2/\sigma_n^2$ (Ho et al. eq. 7 for $m = n - 1$).
    $c_0$ is evaluated as $-\alpha_m\operatorname{expm1}\big(\tfrac12\log(1 - \lambda^2/\sigma_m^2)
    - \tfrac12(\lambda_m - \lambda_n)\big)$ with the log-SNR $\lambda_k$, so there is no
    cancellation for short steps. At $m = 0$: $c_0 = 1$, $c_n = 0$, $\lambda^2 = 0$.

    Works elementwise for arrays `n`, `m` of one shape.

    Args:
        sched: the schedule.
        n: integer step index of the noisier state, $1 \le n \le N$.
        m: integer step index of the target, $0 \le m < n$.
        lam2: $\lambda^2 \in [0, 1 - \bar a_m]$, or `None` for $\tilde\beta_{m|n}$.

    Returns:
        `(coef_x0, coef_xn, var)` = $(c_0, c_n, \lambda^2)$.

    Raises:
        ValueError: for indices outside $0..N$, $m \ge n$, or $\lambda^2$ outside
            $[0, 1 - \bar a_m]$.
    """
    sched = check_schedule(sched)
    n, m = _check_pair(sched, n, m)
    t = pair_terms(sched, n, m)
    lam2 = t.beta_tilde if lam2 is None else check_lam2(lam2, t.sigma2_m)
    return posterior_coefficients(t, jnp.asarray(lam2, t.sigma2_m.dtype))


def posterior_variance(sched: DiscreteSchedule, n, m) -> Array:
    r"""DDPM's posterior variance.

    $$\tilde\beta_{m|n} = \frac{1 - \bar a_m}{1 - \bar a_n}
      \Big(1 - \frac{\bar a_n}{\bar a_m}\Big).$$
    """
    sched = check_schedule(sched)
    n, m = _check_pair(sched, n, m)
    return pair_terms(sched, n, m).beta_tilde


def reverse_variances(
    sched: DiscreteSchedule,
    tau: Int[ArrayLike, " num_points"],
    kind: VarianceKind = "ddpm",
    eta: float | Scalar = 0.0,
) -> Float[Array, " K"]:
    r"""Per-step variances, shape `(K,)`; entry $k - 1$ is for step $\tau_k \to \tau_{k-1}$.

    With $n = \tau_k$, $m = \tau_{k-1}$:

    - `"ddim"`: $0$.
    - `"ddpm"`: $\tilde\beta_{m|n} = \frac{1 - \bar a_m}{1 - \bar a_n}\beta_{n|m}$ (the
      posterior variance; optimal for data concentrated on one point).
    - `"ddpm_beta"`: $\beta_{n|m} = 1 - \bar a_n/\bar a_m$ (optimal for
      $x_0 \sim \mathcal N(0, I)$). It exceeds $1 - \bar a_m$ on long steps, so use it as a
      reverse variance, not as `lam2`.
    - `"eta"`: $\eta^2\tilde\beta_{m|n}$ (the DDIM paper's $\sigma_\tau(\eta)^2$).

    Args:
        sched: the schedule.
        tau: a trajectory (see [`respace`][scoredyn.respace]).
        kind: one of `"ddim"`, `"ddpm"`, `"ddpm_beta"`, `"eta"`.
        eta: $\eta \ge 0$, used with `kind="eta"`.

    Returns:
        Array of shape `(K,)` in the schedule's dtype.
    """
    sched = check_schedule(sched)
    if kind not in _VAR_KINDS:
        raise ValueError(f"`kind` must be one of {_VAR_KINDS}, got {kind!r}.")
    tau = check_tau(tau, sched.num_steps)
    t = pair_terms(sched, tau[1:], tau[:-1])
    if kind == "ddim":
        return jnp.zeros_like(t.beta_tilde)
    if kind == "ddpm":
        return t.beta_tilde
    if kind == "ddpm_beta":
        return t.beta_nm
    eta = check_eta(eta)
    return jnp.asarray(eta, t.beta_tilde.dtype) ** 2 * t.beta_tilde


def check_eta(eta, name: str = "eta"):
    r"""$\eta \ge 0$, finite: `ValueError` at once when concrete (`TypeError` when complex),
    checked when the program runs when traced."""
    if concrete_value(eta) is not None:
        v = real_float(eta, name)
        if not (v >= 0 and v < float("inf")):
            raise ValueError(f"`{name}` must be >= 0 and finite, got {v}.")
        return eta
    e = as_float(eta, name)
    return runtime_check(
        e, ~jnp.all((e >= 0) & jnp.isfinite(e)), f"`{name}` must be >= 0 and finite."
    )
