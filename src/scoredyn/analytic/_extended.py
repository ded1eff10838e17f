r"""Extended-Analytic-DPM: diagonal, state-dependent reverse covariances from a second head.

SN-DPM learns $h(x_n)\approx\mathbb E[\varepsilon^2\mid x_n]$ (elementwise square), NPR-DPM learns
$g(x_n)\approx\mathbb E[(\varepsilon - \hat\varepsilon(x_n))^2\mid x_n]$. Each gives a diagonal
covariance of $x_0$ given $x_n$, and through it the reverse variance of any step $n\to m$.
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._custom_types import Key, Scalar
from .._discrete import DiscreteSchedule
from .._discrete.schedule import check_index
from .._misc import as_float, check_positive
from ._common import (
    Forward,
    check_data_range,
    check_forward,
    check_schedule,
    pair_lam2_gamma,
    range_sq,
    snr_inv,
)


def _ratio(sched, n, dtype):
    sched = check_schedule(sched)
    n = check_index(n, sched.num_steps, "n")
    return snr_inv(sched, n).astype(dtype)


def _clip(cov, data_range, clip):
    if not clip:
        return cov
    hi = None if data_range is None else range_sq(data_range, cov.dtype)
    return jnp.clip(cov, 0.0, hi)


def sn_covariance(
    sched: DiscreteSchedule,
    n: Int[ArrayLike, ""],
    eps_hat: Float[Array, "*shape"],
    second_moment: Float[Array, "*shape"],
    *,
    data_range: tuple[float, float] | None = None,
    clip: bool = True,
) -> Float[Array, "*shape"]:
    r"""SN-DPM's diagonal covariance of $x_0$ given $x_n$.

    From $x_0 = (x_n - \sqrt{1 - \bar a_n}\,\varepsilon)/\sqrt{\bar a_n}$,
    $\mathrm{Var}[x_0\mid x_n] = \frac{1 - \bar a_n}{\bar a_n}\mathrm{Var}[\varepsilon\mid x_n]$
    elementwise, and with $h\approx\mathbb E[\varepsilon^2\mid x_n]$, $\hat\varepsilon\approx
    \mathbb E[\varepsilon\mid x_n]$:

    $$\widehat{\mathrm{Var}}[x_0\mid x_n]
      = \frac{1 - \bar a_n}{\bar a_n}\big(h(x_n) - \hat\varepsilon(x_n)^2\big).$$

    This is exact when both heads are exact (it then assumes a perfect mean). With `clip`, it is
    clipped below at 0 (it can be negative for an imperfect $\hat\varepsilon$) and above at
    $((b - a)/2)^2$ when `data_range` $= (a, b)$ is given.

    Args:
        sched: discrete schedule.
        n: step index, $1\le n\le N$.
        eps_hat: $\hat\varepsilon(x_n)$.
        second_moment: $h(x_n)$, same shape.
        data_range: `(a, b)` for bounded data, or `None`.
        clip: clip as above.

    References:
        Bao et al., *Estimating the Optimal Covariance with Imperfect Mean in Diffusion
        Probabilistic Models*, arXiv:2206.07309.
    """
    check_data_range(data_range)
    eps_hat = as_float(eps_hat, "eps_hat")
    second_moment = as_float(second_moment, "second_moment")
    if eps_hat.shape != second_moment.shape:
        raise ValueError(
            f"`second_moment` must have the shape of `eps_hat` {eps_hat.shape}, "
            f"got {second_moment.shape}."
        )
    cov = _ratio(sched, n, eps_hat.dtype) * (second_moment - eps_hat**2)
    return _clip(cov, data_range, clip)


def npr_covariance(
    sched: DiscreteSchedule,
    n: Int[ArrayLike, ""],
    residual_moment: Float[Array, "*shape"],
    *,
    data_range: tuple[float, float] | None = None,
    clip: bool = True,
) -> Float[Array, "*shape"]:
    r"""NPR-DPM's diagonal covariance of $x_0$ around the *model's* mean, given $x_n$.

    With $\hat x_0 = (x_n - \sqrt{1 - \bar a_n}\hat\varepsilon)/\sqrt{\bar a_n}$ fixed,
    the maximum-likelihood diagonal covariance of $x_0$ is
    $\mathbb E[(x_0 - \hat x_0)^2\mid x_n] = \frac{1 - \bar a_n}{\bar a_n}\mathbb E[(\varepsilon -
    \hat\varepsilon)^2\mid x_n]$, so with
    $g\approx\mathbb E[(\varepsilon - \hat\varepsilon)^2\mid x_n]$

    $$\widehat{\mathrm{Cov}} = \frac{1 - \bar a_n}{\bar a_n}\,g(x_n)
      = \frac{1 - \bar a_n}{\bar a_n}\Big(\mathrm{Var}[\varepsilon\mid x_n]
        + \big(\mathbb E[\varepsilon\mid x_n] - \hat\varepsilon\big)^2\Big),$$

    which corrects for an imperfect mean. Clipped into $[0, ((b - a)/2)^2]$ with `clip` (the upper
    limit only with `data_range`; note that with an imperfect mean the true value may exceed it).

    Args:
        sched: discrete schedule.
        n: step index.
        residual_moment: $g(x_n)$.
        data_range: `(a, b)` or `None`.
        clip: clip as above.
    """
    check_data_range(data_range)
    g = as_float(residual_moment, "residual_moment")
    return _clip(_ratio(sched, n, g.dtype) * g, data_range, clip)


def step_variance(
    sched: DiscreteSchedule,
    n: Int[ArrayLike, ""],
    m: Int[ArrayLike, ""],
    x0_cov: Float[ArrayLike, "*shape"],
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
) -> Float[Array, "*shape"]:
    r"""Reverse variance of a step $n\to m$ implied by a (diagonal) covariance of $x_0$ given $x_n$.

    Moment matching of $p(x_m\mid x_n)$ to $\int q(x_m\mid x_n, x_0)\,\mathcal N(x_0; \hat x_0,
    \mathrm{diag}(c))\,\mathrm{d}x_0$ gives, elementwise,

    $$v_{m|n} = \lambda^2 + \gamma^2\,c,\qquad
      \gamma = \sqrt{\bar a_m} - \sqrt{(1 - \bar a_m - \lambda^2)\tfrac{\bar a_n}{1 - \bar a_n}},$$

    with $\lambda^2 = \tilde\beta_{m|n}$ (DDPM) or $\eta^2\tilde\beta_{m|n}$ (DDIM). For the DDPM
    forward process $\gamma^2 = \bar a_m\beta_{n|m}^2/(1 - \bar a_n)^2$. `x0_cov` may be a
    scalar (Analytic-DPM) or an array (SN-DPM, NPR-DPM).
    """
    check_forward(forward, eta)
    c = as_float(x0_cov, "x0_cov")
    lam2, gam = pair_lam2_gamma(check_schedule(sched), n, m, forward, eta)
    dtype = jnp.result_type(c, lam2)
    return lam2.astype(dtype) + gam.astype(dtype) ** 2 * c.astype(dtype)


class DiagonalVariance(eqx.Module):
    r"""A state-dependent diagonal reverse variance $v_{m|n}(x_n)$, called `(n, m, x_n, eps_hat)`.

    Built by [`sn_variance_fn`][scoredyn.analytic.sn_variance_fn] or
    [`npr_variance_fn`][scoredyn.analytic.npr_variance_fn]; pass it as `variances=` to
    [`sd.sample_discrete`][scoredyn.sample_discrete] or
    [`sd.variational_bound`][scoredyn.variational_bound]. It calls `head_fn(t_n, x_n)` at the
    schedule's time $t_n = nT/N$ (one extra call per step; a network with a shared trunk can
    cache it).
    """

    sched: DiscreteSchedule
    head_fn: Callable
    kind: Literal["sn", "npr"] = eqx.field(static=True)
    forward: Forward = eqx.field(static=True)
    eta: float | Scalar = 0.0
    data_range: tuple[float, float] | None = eqx.field(static=True, default=None)

    def __call__(self, n, m, x_n, eps_hat):
        head = self.head_fn(self.sched.time(n).astype(x_n.dtype), x_n)
        if jnp.shape(head) != jnp.shape(x_n):
            raise ValueError(
                f"`head_fn(t, x)` must return an array shaped like x_n {jnp.shape(x_n)}, got "
                f"shape {jnp.shape(head)}."
            )
        if self.kind == "sn":
            cov = sn_covariance(self.sched, n, eps_hat, head, data_range=self.data_range)
        else:
            cov = npr_covariance(self.sched, n, head, data_range=self.data_range)
        return step_variance(self.sched, n, m, cov, forward=self.forward, eta=self.eta).astype(
            x_n.dtype
        )


def sn_variance_fn(
    sched: DiscreteSchedule,
    head_fn: Callable,
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
    data_range: tuple[float, float] | None = None,
) -> DiagonalVariance:
    r"""SN-DPM's variance $\lambda^2 + \gamma^2(1 - \bar a_n)(h - \hat\varepsilon^2)/\bar a_n$.

    Args:
        sched: discrete schedule.
        head_fn: $(t, x)\mapsto h\approx\mathbb E[\varepsilon^2\mid x_n]$, called at $t_n = nT/N$.
        forward: `"ddpm"` or `"ddim"`; eta: DDIM $\eta$.
        data_range: `(a, b)` for bounded data, or `None`.

    Returns:
        A [`DiagonalVariance`][scoredyn.analytic.DiagonalVariance] callable.
    """
    if not callable(head_fn):
        raise TypeError(f"`head_fn` must be callable (t, x) -> array like x, got {head_fn!r}.")
    check_forward(forward, eta)
    check_data_range(data_range)
    return DiagonalVariance(sched, head_fn, "sn", forward, eta, data_range)


def npr_variance_fn(
    sched: DiscreteSchedule,
    head_fn: Callable,
    *,
    forward: Forward = "ddpm",
    eta: float | Scalar = 0.0,
    data_range: tuple[float, float] | None = None,
) -> DiagonalVariance:
    r"""NPR-DPM reverse variance: $\lambda^2 + \gamma^2\,\frac{1 - \bar a_n}{\bar a_n}g(x_n)$.

    Args:
        sched: discrete schedule.
        head_fn: $(t, x)\mapsto g\approx\mathbb E[(\varepsilon - \hat\varepsilon)^2\mid x_n]$,
            called at $t_n = nT/N$.
        forward: `"ddpm"` or `"ddim"`; eta: DDIM $\eta$.
        data_range: `(a, b)` for bounded data, or `None`.

    Returns:
        A [`DiagonalVariance`][scoredyn.analytic.DiagonalVariance] callable.
    """
    if not callable(head_fn):
        raise TypeError(f"`head_fn` must be callable (t, x) -> array like x, got {head_fn!r}.")
    check_forward(forward, eta)
    check_data_range(data_range)
    return DiagonalVariance(sched, head_fn, "npr", forward, eta, data_range)


def _noised(key, sched, x0):
    sched = check_schedule(sched)
    N = sched.num_steps
    kn, ke = jax.random.split(key)
    n = jax.random.randint(kn, (), 1, N + 1)
    eps = jax.random.normal(ke, x0.shape, x0.dtype)
    alpha, sigma = sched.marginal(n)
    x_n = alpha.astype(x0.dtype) * x0 + sigma.astype(x0.dtype) * eps
    return sched.time(n).astype(x0.dtype), x_n, eps


def _two_heads(model_fn: Callable[..., Any], t, x_n):
    """`model_fn(t, x_n)` as a pair of arrays shaped like `x_n` (shapes checked at trace time)."""
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be callable (t, x) -> (eps_hat, head), got {model_fn!r}.")
    out = model_fn(t, x_n)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = (
            f"{type(out).__name__} of length {len(out)}"
            if isinstance(out, (tuple, list))
            else (f"{type(out).__name__} of shape {jnp.shape(out)}")
        )
        raise TypeError(
            "`model_fn(t, x)` must return a pair (eps_hat, head) of arrays shaped like x, got "
            f"{got}."
        )
    for what, a in zip(("eps_hat", "head"), out):
        if jnp.shape(a) != x_n.shape:
            raise ValueError(
                f"`model_fn(t, x)` must return (eps_hat, head) shaped like x {x_n.shape}, got "
                f"{what} of shape {jnp.shape(a)}."
            )
    return out


def _check_weights(ratio, mean_weight):
    check_positive(ratio, "ratio", strict=False)
    check_positive(mean_weight, "mean_weight", strict=False)


def sn_dpm_loss(
    key: Key,
    sched: DiscreteSchedule,
    model_fn: Callable,
    x0: Float[Array, "*shape"],
    *,
    ratio: float = 1.0,
    mean_weight: float = 1.0,
) -> Float[Array, ""]:
    r"""SN-DPM training loss for one example.

    With $n\sim\mathcal U\{1..N\}$, $\varepsilon\sim\mathcal N(0, I)$,
    $x_n = \sqrt{\bar a_n}x_0 + \sqrt{1 - \bar a_n}\varepsilon$ and
    `model_fn(t_n, x_n)` $= (\hat\varepsilon, h)$ ($t_n = nT/N$):

    $$\ell = w\,\|\varepsilon - \hat\varepsilon\|^2 + r\,\|\varepsilon^2 - h\|^2 .$$

    For each $x_n$ the second term is minimised in expectation by $h = \mathbb E[\varepsilon^2\mid
    x_n]$. Set $w$ = `mean_weight` $= 0$ for the second, head-only stage of two-stage training
    (frozen mean network).

    Args:
        key: PRNG key.
        sched: discrete schedule.
        model_fn: $(t, x)\mapsto(\hat\varepsilon, h)$, two arrays shaped like `x0`.
        x0: one data example.
        ratio: $r\ge 0$.
        mean_weight: $w\ge 0$.

    Returns:
        Scalar loss (sums over dimensions).
    """
    _check_weights(ratio, mean_weight)
    x0 = as_float(x0, "x0")
    t, x_n, eps = _noised(key, sched, x0)
    eps_hat, h = _two_heads(model_fn, t, x_n)
    return mean_weight * jnp.sum((eps - eps_hat) ** 2) + ratio * jnp.sum((eps**2 - h) ** 2)


def npr_dpm_loss(
    key: Key,
    sched: DiscreteSchedule,
    model_fn: Callable,
    x0: Float[Array, "*shape"],
    *,
    ratio: float = 1.0,
    mean_weight: float = 1.0,
) -> Float[Array, ""]:
    r"""NPR-DPM training loss for one example.

    With the same draws as [`sn_dpm_loss`][scoredyn.analytic.sn_dpm_loss] and `model_fn(t_n,
    x_n)` $= (\hat\varepsilon, g)$:

    $$\ell = w\,\|\varepsilon - \hat\varepsilon\|^2
      + r\,\big\|\mathrm{sg}[\varepsilon - \hat\varepsilon]^2 - g\big\|^2,$$

    where $\mathrm{sg}$ stops the gradient, so the second term trains only $g$. For each $x_n$ it
    is minimised in expectation by $g = \mathbb E[(\varepsilon - \hat\varepsilon(x_n))^2\mid x_n]$.

    Args:
        key: PRNG key.
        sched: discrete schedule.
        model_fn: $(t, x)\mapsto(\hat\varepsilon, g)$.
        x0: one data example.
        ratio: $r\ge 0$.
        mean_weight: $w\ge 0$.

    Returns:
        Scalar loss.
    """
    _check_weights(ratio, mean_weight)
    x0 = as_float(x0, "x0")
    t, x_n, eps = _noised(key, sched, x0)
    eps_hat, g = _two_heads(model_fn, t, x_n)
    resid2 = jax.lax.stop_gradient(eps - eps_hat) ** 2
    return mean_weight * jnp.sum((eps - eps_hat) ** 2) + ratio * jnp.sum((resid2 - g) ** 2)
