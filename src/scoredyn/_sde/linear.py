"""Concrete linear SDEs: VP, sub-VP, VE and cosine-VP."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import default_float, real_float, runtime_check
from .._custom_types import Scalar, Time
from .._misc import check_positive, check_times, is_concrete, log1mexp
from .base import AbstractLinearSDE


def _scalar_fn(math_fn, jnp_fn, x):
    """`math_fn(x)` for a Python number (exact, weakly typed), `jnp_fn(x)` for an array or tracer,
    so that SDE parameters may be traced (vmap over a sweep, grad for a learned schedule)."""
    return math_fn(x) if isinstance(x, (int, float)) else jnp_fn(x)


def _float(x) -> Array:
    """`x` as a floating array (integers promoted to the default float)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _check_range(lo, hi, lo_name: str, hi_name: str) -> None:
    check_positive(lo, lo_name)
    check_positive(hi, hi_name)
    if is_concrete(lo, hi) and not real_float(lo, lo_name) < real_float(hi, hi_name):
        raise ValueError(f"`{lo_name}` must be < `{hi_name}`, got {lo_name}={lo}, {hi_name}={hi}.")


def _range_params(lo, hi, lo_name: str, hi_name: str):
    r"""Both tiers of $0 < \text{lo} < \text{hi} < \infty$ for a pair of SDE parameters.

    Concrete values are checked at once (`ValueError`); a traced one is returned wrapped in
    `equinox.error_if`, so a traced $\beta_{\min} < 0$ (a sweep under `vmap`, a learned
    schedule under `grad`) raises when the program runs instead of giving NaN.
    """
    _check_range(lo, hi, lo_name, hi_name)
    if is_concrete(lo, hi):
        return lo, hi
    lo_a, hi_a = jnp.asarray(lo), jnp.asarray(hi)
    ok = (lo_a > 0) & (hi_a > lo_a) & jnp.isfinite(lo_a) & jnp.isfinite(hi_a)
    msg = f"`{lo_name}` and `{hi_name}` must satisfy 0 < {lo_name} < {hi_name} < inf."
    if not is_concrete(lo):
        lo = runtime_check(lo_a, ~jnp.all(ok), msg)
    if not is_concrete(hi):
        hi = runtime_check(hi_a, ~jnp.all(ok), msg)
    return lo, hi


def _positive_param(value, name: str):
    """Both tiers of `value > 0` and finite for one SDE parameter (see `_range_params`)."""
    check_positive(value, name)
    if is_concrete(value):
        return value
    v = jnp.asarray(value)
    return runtime_check(
        v, ~jnp.all((v > 0) & jnp.isfinite(v)), f"`{name}` must be > 0 and finite."
    )


class VPSDE(AbstractLinearSDE):
    r"""Variance-preserving SDE (Song et al. 2021), the continuous limit of DDPM.

    With $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$:

    $$\log\alpha(t) = -\tfrac14 t^2(\beta_{\max} - \beta_{\min}) - \tfrac12 t\beta_{\min},\qquad
      \sigma(t)^2 = 1 - \alpha(t)^2,$$
    $$f(t) = -\tfrac12\beta(t),\qquad g(t) = \sqrt{\beta(t)}.$$

    $\sigma^2$ is computed as `-expm1(2 log alpha)` so it stays accurate near $t = 0$.

    Args:
        beta_min: $\beta_{\min} > 0$.
        beta_max: $\beta_{\max} > \beta_{\min}$.
        T: final time.

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456.
    """

    beta_min: float | Scalar = 0.1
    beta_max: float | Scalar = 20.0
    T: float = 1.0

    def __init__(
        self, beta_min: float | Scalar = 0.1, beta_max: float | Scalar = 20.0, T: float = 1.0
    ):
        self.beta_min, self.beta_max = _range_params(beta_min, beta_max, "beta_min", "beta_max")
        self.T = T

    def __check_init__(self):
        _check_range(self.beta_min, self.beta_max, "beta_min", "beta_max")
        check_positive(self.T, "T")

    def beta(self, t: Time) -> Scalar:
        r"""The noise rate $\beta(t)$."""
        return self.beta_min + check_times(t, self.T) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> Scalar:
        r"""$\log\alpha(t)$."""
        t = check_times(t, self.T)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        la = self.log_alpha(t)
        return jnp.exp(la), jnp.sqrt(-jnp.expm1(2.0 * la))

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        b = self.beta(t)
        return -0.5 * b, jnp.sqrt(b)

    def log_snr(self, t: Time) -> Scalar:
        la2 = 2.0 * self.log_alpha(t)
        return la2 - log1mexp(la2)

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""Closed-form inverse of $\lambda(t)$.

        $\alpha^2 = \operatorname{sigmoid}(\lambda)$, so $u = 2\log\alpha =
        -\operatorname{softplus}(-\lambda)$ and $t$ solves
        $\tfrac12\Delta\beta\,t^2 + \beta_{\min}t + u = 0$, taken in the cancellation-free form
        $t = -2u/(\beta_{\min} + \sqrt{\beta_{\min}^2 - 2\Delta\beta\,u})$,
        $\Delta\beta = \beta_{\max} - \beta_{\min}$.
        """
        lam = _float(lam)
        u = -jax.nn.softplus(-lam)
        d = self.beta_max - self.beta_min
        return -2.0 * u / (self.beta_min + jnp.sqrt(self.beta_min**2 - 2.0 * d * u))


class SubVPSDE(AbstractLinearSDE):
    r"""Sub-variance-preserving SDE (Song et al. 2021).

    Same $\alpha(t)$ and drift as [`VPSDE`][scoredyn.VPSDE], with
    $\sigma(t) = 1 - \alpha(t)^2$ (no square root) and
    $g(t)^2 = \beta(t)\,(1 - \alpha(t)^4)$.

    Args:
        beta_min: $\beta_{\min} > 0$.
        beta_max: $\beta_{\max} > \beta_{\min}$.
        T: final time.
    """

    beta_min: float | Scalar = 0.1
    beta_max: float | Scalar = 20.0
    T: float = 1.0

    def __init__(
        self, beta_min: float | Scalar = 0.1, beta_max: float | Scalar = 20.0, T: float = 1.0
    ):
        self.beta_min, self.beta_max = _range_params(beta_min, beta_max, "beta_min", "beta_max")
        self.T = T

    def __check_init__(self):
        _check_range(self.beta_min, self.beta_max, "beta_min", "beta_max")
        check_positive(self.T, "T")

    def beta(self, t: Time) -> Scalar:
        r"""The noise rate $\beta(t)$."""
        return self.beta_min + check_times(t, self.T) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> Scalar:
        r"""$\log\alpha(t)$."""
        t = check_times(t, self.T)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        la = self.log_alpha(t)
        return jnp.exp(la), -jnp.expm1(2.0 * la)

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        b = self.beta(t)
        return -0.5 * b, jnp.sqrt(-b * jnp.expm1(4.0 * self.log_alpha(t)))

    def log_snr(self, t: Time) -> Scalar:
        la2 = 2.0 * self.log_alpha(t)
        return la2 - 2.0 * log1mexp(la2)


class VESDE(AbstractLinearSDE):
    r"""Variance-exploding SDE (Song et al. 2021; SMLD / NCSN in continuous time).

    $\alpha(t) = 1$ and the noise level grows geometrically, $s(t) =
    \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$, with $g(t)^2 = \mathrm{d}s^2/\mathrm{d}t =
    2 s(t)^2 \log(\sigma_{\max}/\sigma_{\min})$. The transition kernel started from clean data
    at $t = 0$ is exact:

    $$\sigma(t)^2 = s(t)^2 - \sigma_{\min}^2
      = \sigma_{\min}^2\,\operatorname{expm1}(2t\log(\sigma_{\max}/\sigma_{\min})).$$

    (Song et al.'s code uses $\sigma(t) = s(t)$, which differs by $\sigma_{\min}^2$ in variance;
    the exact form makes $\sigma(0) = 0$ like the other SDEs.)

    Args:
        sigma_min: $\sigma_{\min} > 0$.
        sigma_max: $\sigma_{\max} > \sigma_{\min}$.
        T: final time.
    """

    sigma_min: float | Scalar = 0.01
    sigma_max: float | Scalar = 50.0
    T: float = 1.0

    def __init__(
        self, sigma_min: float | Scalar = 0.01, sigma_max: float | Scalar = 50.0, T: float = 1.0
    ):
        self.sigma_min, self.sigma_max = _range_params(
            sigma_min, sigma_max, "sigma_min", "sigma_max"
        )
        self.T = T

    def __check_init__(self):
        _check_range(self.sigma_min, self.sigma_max, "sigma_min", "sigma_max")
        check_positive(self.T, "T")

    def _log_ratio(self):
        # log(sigma_max) - log(sigma_min), not log(sigma_max / sigma_min): the ratio may overflow
        return _scalar_fn(math.log, jnp.log, self.sigma_max) - self._log_sigma_min()

    def _log_sigma_min(self):
        return _scalar_fn(math.log, jnp.log, self.sigma_min)

    def _log_expm1(self, y):
        r"""$\log(e^y - 1)$ for $y \ge 0$: direct below 1, $y + \log(1 - e^{-y})$ above (no
        overflow of $e^y$), with both branches kept finite for the gradient."""
        small = y < 1.0
        direct = jnp.log(jnp.expm1(jnp.where(small, y, 0.5)))
        large = jnp.where(small, 1.0, y)
        return jnp.where(small, direct, large + log1mexp(-large))

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        t = check_times(t, self.T)
        y = 2.0 * t * self._log_ratio()
        small = y < 1.0
        # sigma_min^2 expm1(y) is exact near t = 0; for large y it is evaluated in log space,
        # so a tiny sigma_min and a huge sigma_max never give 0 * inf
        # (unselected branches get harmless placeholders: sqrt(0) there would make the
        # reverse-mode gradient 0 * inf = NaN)
        var_small = self.sigma_min**2 * jnp.expm1(jnp.where(small, y, 0.5))
        sigma_large = jnp.exp(
            self._log_sigma_min() + 0.5 * self._log_expm1(jnp.where(small, 1.0, y))
        )
        return jnp.ones_like(t), jnp.where(small, jnp.sqrt(var_small), sigma_large)

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        t = check_times(t, self.T)
        L = self._log_ratio()
        s = jnp.exp(self._log_sigma_min() + t * L)
        return jnp.zeros_like(t), s * _scalar_fn(math.sqrt, jnp.sqrt, 2.0 * L)

    def log_snr(self, t: Time) -> Scalar:
        t = check_times(t, self.T)
        return -2.0 * self._log_sigma_min() - self._log_expm1(2.0 * t * self._log_ratio())

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""Closed-form inverse of
        $\lambda(t) = -2\log\sigma_{\min} - \log\operatorname{expm1}(2tL)$,
        $L = \log(\sigma_{\max}/\sigma_{\min})$:
        $t = \operatorname{softplus}(-\lambda - 2\log\sigma_{\min})/(2L)$."""
        lam = _float(lam)
        return jax.nn.softplus(-lam - 2.0 * self._log_sigma_min()) / (2.0 * self._log_ratio())


class CosineVPSDE(AbstractLinearSDE):
    r"""Variance-preserving SDE with the cosine schedule of Nichol & Dhariwal (2021).

    $$\alpha(t) = \frac{\cos\big(\frac{\pi}{2}\frac{t + s}{1 + s}\big)}
      {\cos\big(\frac{\pi}{2}\frac{s}{1 + s}\big)},\qquad
      \sigma(t)^2 = 1 - \alpha(t)^2,$$
    $$f(t) = -\frac{\pi}{2(1+s)}\tan\Big(\frac{\pi}{2}\frac{t+s}{1+s}\Big),\qquad
      g(t)^2 = -2 f(t).$$

    At $t = 1$ the schedule has $\alpha = 0$ and an infinite drift, so the default end time is
    $T = 0.9946$ (as in DPM-Solver), where $\alpha \approx 8.4\times10^{-3}$ and
    $\lambda \approx -9.5$.

    Args:
        s: offset $s > 0$ (0.008 in the paper).
        T: final time, $0 < T < 1$.
    """

    s: float | Scalar = 0.008
    T: float = 0.9946

    def __init__(self, s: float | Scalar = 0.008, T: float = 0.9946):
        self.s = _positive_param(s, "s")
        self.T = T

    def __check_init__(self):
        check_positive(self.s, "s")
        check_positive(self.T, "T")
        if is_concrete(self.T):
            T = real_float(self.T, "T")
            # times may be float32 (the default float without x64, or data in float32 with x64
            # on): T must stay below 1 after rounding, or alpha(T) = 0 and marginal(T) is NaN
            dtypes = {np.dtype(default_float()).name, "float32"}
            rounded = {d: float(np.asarray(T, dtype=d)) for d in sorted(dtypes)}
            if not (T < 1.0 and all(v < 1.0 for v in rounded.values())):
                shown = ", ".join(f"{v!r} in {d}" for d, v in rounded.items())
                raise ValueError(
                    f"`T` must be < 1 for the cosine schedule (alpha(1) = 0), also after "
                    f"rounding to the working float, got {self.T} ({shown})."
                )

    def _angle(self, t):
        return 0.5 * math.pi * (check_times(t, self.T) + self.s) / (1.0 + self.s)

    def log_alpha(self, t: Time) -> Scalar:
        r"""$\log\alpha(t)$, written as $\log(1 - 2\sin^2(\delta/2) - \tan(a_0)\sin\delta)$.

        Here $a_0 = \frac{\pi}{2}\frac{s}{1+s}$ and $\delta = \frac{\pi}{2}\frac{t}{1+s}$, so that
        $\cos(a_0 + \delta)/\cos(a_0)$ is evaluated without cancellation near $t = 0$.
        """
        delta = 0.5 * math.pi * check_times(t, self.T) / (1.0 + self.s)
        tan_a0 = _scalar_fn(math.tan, jnp.tan, 0.5 * math.pi * self.s / (1.0 + self.s))
        la = jnp.log1p(-2.0 * jnp.sin(0.5 * delta) ** 2 - tan_a0 * jnp.sin(delta))
        return jnp.minimum(la, 0.0)

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        la = self.log_alpha(t)
        return jnp.exp(la), jnp.sqrt(-jnp.expm1(2.0 * la))

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        f = -0.5 * math.pi / (1.0 + self.s) * jnp.tan(self._angle(t))
        return f, jnp.sqrt(-2.0 * f)

    def log_snr(self, t: Time) -> Scalar:
        la2 = 2.0 * self.log_alpha(t)
        return la2 - log1mexp(la2)

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""Closed-form inverse of $\lambda(t)$.

        With $\alpha^2 = \operatorname{sigmoid}(\lambda)$, $1 - \alpha^2 =
        \operatorname{sigmoid}(-\lambda)$ and $a_0 = \frac{\pi}{2}\frac{s}{1+s}$, the angle
        $\delta = \frac{\pi}{2}\frac{t}{1+s}$ solves $\cos(a_0 + \delta) = \alpha\cos a_0$. It is
        taken as $\operatorname{atan2}(\sin\delta, \cos\delta)$ with
        $S = \sqrt{\sin^2 a_0 + (1 - \alpha^2)\cos^2 a_0}$,
        $\sin\delta = \cos a_0\,(1 - \alpha^2)/(S + \alpha\sin a_0)$ and
        $\cos\delta = \alpha\cos^2 a_0 + S\sin a_0$: no cancellation as $t \to 0$.
        """
        lam = _float(lam)
        alpha = jnp.exp(-0.5 * jax.nn.softplus(-lam))
        one_m_a2 = jax.nn.sigmoid(-lam)
        a0 = 0.5 * math.pi * self.s / (1.0 + self.s)
        c0, s0 = _scalar_fn(math.cos, jnp.cos, a0), _scalar_fn(math.sin, jnp.sin, a0)
        S = jnp.sqrt(s0**2 + one_m_a2 * c0**2)
        delta = jnp.arctan2(c0 * one_m_a2 / (S + alpha * s0), alpha * c0**2 + S * s0)
        return delta * (1.0 + self.s) / (0.5 * math.pi)
