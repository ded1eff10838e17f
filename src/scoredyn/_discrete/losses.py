r"""Training losses: denoising regression in the eps / x0 / v / score parameterisations.

For $x_t = \alpha x_0 + \sigma\varepsilon$ the four targets are $\varepsilon$, $x_0$,
$v = \alpha\varepsilon - \sigma x_0$ and $\nabla\log q(x_t\mid x_0) = -\varepsilon/\sigma$, and
the four squared errors are one error up to a factor:

$$\|\hat x_0 - x_0\|^2 = e^{-\lambda}\|\hat\varepsilon - \varepsilon\|^2,\quad
  \|\hat v - v\|^2 = \frac{(\alpha^2 + \sigma^2)^2}{\alpha^2}
  \|\hat\varepsilon - \varepsilon\|^2,\quad
  \|\hat s - s\|^2 = \frac{1}{\sigma^2}\|\hat\varepsilon - \varepsilon\|^2.$$

See [the variational bound](../derivations/variational-bound.md#training-losses).
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import ArrayLike, Float

from .._checks import real_float
from .._custom_types import Key, Scalar, VectorField
from .._misc import as_float, check_vector_field
from .._sde import AbstractLinearSDE
from .schedule import DiscreteSchedule, concrete_value
from .step import check_prediction

Weighting = Literal["uniform", "snr", "snr_trunc", "snr_plus_one", "min_snr", "likelihood"]
_WEIGHTINGS = ("uniform", "snr", "snr_trunc", "snr_plus_one", "min_snr", "likelihood")
_SAMPLING = ("uniform", "importance")


def _log_x0_to_native(prediction: str, lam, alpha, sigma):
    r"""$\log(\|\cdot\|^2_{x_0}/\|\cdot\|^2_{\text{native}})$: turns an x0-space weight native."""
    if prediction == "eps":
        return -lam
    if prediction == "x0":
        return jnp.zeros_like(lam)
    if prediction == "v":
        return 2.0 * jnp.log(sigma) - 2.0 * jnp.log(alpha**2 + sigma**2)
    return 4.0 * jnp.log(sigma) - 2.0 * jnp.log(alpha)  # score


def _likelihood_native(prediction: str, lam_dot_neg, lam, alpha, sigma):
    r"""Native weight equal to $g^2\|\hat s - s\|^2$ with $g^2/\sigma^2 = -\lambda'(t)$."""
    if prediction == "eps":
        return lam_dot_neg
    if prediction == "x0":
        return lam_dot_neg * jnp.exp(lam)
    if prediction == "v":
        return lam_dot_neg * alpha**2 / (alpha**2 + sigma**2) ** 2
    return lam_dot_neg * sigma**2  # score: g^2


def _target(prediction: str, x0, eps, alpha, sigma):
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    return -eps / sigma


def _neg_lambda_dot(sde: AbstractLinearSDE, t):
    r"""$-\lambda'(t) = g(t)^2/\sigma(t)^2$ for a linear SDE."""
    _, g = sde.coefficients(t)
    _, sigma = sde.marginal(t)
    return (g / sigma) ** 2


def _invert_log_snr(sde: AbstractLinearSDE, lam_target, lo, hi, iters: int = 64):
    """Bisection for lambda(t) = lam_target on [lo, hi] (lambda is decreasing)."""

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        above = sde.log_snr(mid) > lam_target
        return jnp.where(above, mid, a), jnp.where(above, b, mid)

    a, b = lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (a + b)


def diffusion_loss(
    key: Key,
    process: AbstractLinearSDE | DiscreteSchedule,
    model_fn: VectorField,
    x0: Float[ArrayLike, "*shape"],
    *,
    prediction: Literal["eps", "x0", "v", "score"] = "eps",
    weighting: Weighting | Callable = "uniform",
    time_sampling: Literal["uniform", "importance"] = "uniform",
    t_eps: float = 1e-5,
    snr_gamma: float = 5.0,
) -> Scalar:
    r"""Denoising loss of one example: $w(t)\,\|\hat f(t, x_t) - f\|^2 / (T'p(t))$, summed.

    Draws a time and $x_t = \alpha x_0 + \sigma\varepsilon$, calls `model_fn(t, x_t)` and
    compares it with the target $f$ of its `prediction` kind ($\varepsilon$, $x_0$,
    $v = \alpha\varepsilon - \sigma x_0$, or the score $-\varepsilon/\sigma$), squared error
    summed over entries (Su's advice: the sum, not the mean).

    Time: for an SDE, $t \sim \mathcal U[t_\epsilon, T]$ (`"uniform"`) or, with
    `"importance"`, $p(t) \propto -\lambda'(t) = g(t)^2/\sigma(t)^2$ (uniform in the log-SNR,
    found by bisection), the variance reduction of Song et al. (2021b). The loss is divided by
    $T'p(t)$, $T' = T - t_\epsilon$, so its mean is the same under both samplers: the average
    of $w(t)\|\hat f - f\|^2$ over uniform $t$. For a
    [`DiscreteSchedule`][scoredyn.DiscreteSchedule], $n \sim \mathcal U\{1..N\}$ and the
    network is called at $t_n = nT/N$.

    Weightings $w(t)$ (in the prediction's own space):

    | `weighting` | loss | note |
    |---|---|---|
    | `"uniform"` | $\|\hat f - f\|^2$ | `eps`: Ho et al.'s $L_{\text{simple}}$ |
    | `"snr"` | $e^{\lambda}\|\hat x_0 - x_0\|^2$ | $= \|\hat\varepsilon - \varepsilon\|^2$ |
    | `"snr_trunc"` | $\max(e^{\lambda}, 1)\|\hat x_0 - x_0\|^2$ | Salimans & Ho (2022) |
    | `"snr_plus_one"` | $(e^{\lambda} + 1)\|\hat x_0 - x_0\|^2$ | $= \|\hat v - v\|^2$ (VP) |
    | `"min_snr"` | $\min(e^{\lambda}, \gamma)\|\hat x_0 - x_0\|^2$ | Hang et al. (2023) |
    | `"likelihood"` | $g(t)^2\|\hat s - \nabla\log q(x_t\mid x_0)\|^2$ | Song et al. (2021b) |
    | callable `w(t)` | $w(t)\|\hat f - f\|^2$ | |

    The SNR-based rows are defined in $x_0$ space, as in the papers that introduced them, and
    converted exactly to the prediction's space ($\gamma$ = `snr_gamma`; `"likelihood"` is for
    SDEs only) (e.g. `"min_snr"` with `prediction="eps"`
    weighs $\|\hat\varepsilon - \varepsilon\|^2$ by $\min(1, \gamma e^{-\lambda})$).
    With `"likelihood"`, $\tfrac12 T'\,\mathbb E[\text{loss}]$ is the score-matching term
    $\tfrac12\int_{t_\epsilon}^{T}g^2\,\mathbb E\|\hat s - \nabla\log q\|^2\,\mathrm dt$ of the
    continuous-time bound on $-\log p(x_0)$; it is the limit of the Gaussian KL sum of
    [`variational_bound`][scoredyn.variational_bound] with DDPM variances as $N \to \infty$.

    Args:
        key: PRNG key.
        process: a linear SDE or a discrete schedule.
        model_fn: $(t, x) \mapsto$ prediction of kind `prediction`, shaped like `x0`.
        x0: one data example.
        prediction: `"eps"`, `"x0"`, `"v"` or `"score"`.
        weighting: a name from the table or a callable $t \mapsto w(t)$.
        time_sampling: `"uniform"` or `"importance"` (SDEs only).
        t_eps: smallest time for SDEs, $0 < t_\epsilon < T$.
        snr_gamma: $\gamma > 0$ for `"min_snr"`.

    Returns:
        Scalar loss; differentiable in the parameters of `model_fn`.

    References:
        Ho et al. arXiv:2006.11239; Song et al. arXiv:2101.09258 (likelihood weighting);
        Salimans & Ho arXiv:2202.00512; Hang et al. arXiv:2303.09556.
    """
    prediction = check_prediction(prediction)  # pyright: ignore[reportAssignmentType]
    if not (callable(weighting) or weighting in _WEIGHTINGS):
        raise ValueError(
            f"`weighting` must be one of {_WEIGHTINGS} or a callable t -> w, got {weighting!r}."
        )
    if time_sampling not in _SAMPLING:
        raise ValueError(f"`time_sampling` must be one of {_SAMPLING}, got {time_sampling!r}.")
    if concrete_value(snr_gamma) is not None and not real_float(snr_gamma, "snr_gamma") > 0:
        raise ValueError(f"`snr_gamma` must be > 0, got {snr_gamma}.")
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be callable (t, x) -> array, got {model_fn!r}.")
    x0 = as_float(x0, "x0")
    dtype = x0.dtype
    kt, ke = jax.random.split(key)

    if isinstance(process, DiscreteSchedule):
        if weighting == "likelihood" or time_sampling == "importance":
            raise ValueError(
                "`weighting='likelihood'` and `time_sampling='importance'` are for continuous "
                "SDEs; for a discrete schedule the likelihood bound is `sd.variational_bound`."
            )
        N = process.num_steps
        n = jax.random.randint(kt, (), 1, N + 1)
        alpha, sigma = process.marginal(n)
        lam = process.log_snr(n)
        t = process.time(n)
        iw = 1.0
        lam_dot_neg = None
    elif isinstance(process, AbstractLinearSDE):
        T = process.T
        if concrete_value(t_eps) is not None and not (0.0 < real_float(t_eps, "t_eps") < float(T)):
            raise ValueError(f"`t_eps` must lie in (0, T) = (0, {T}), got {t_eps}.")
        u = jax.random.uniform(kt, (), dtype)
        span = T - t_eps
        if time_sampling == "uniform":
            t = t_eps + span * u
            iw = 1.0
        else:
            lam_hi = process.log_snr(jnp.asarray(t_eps, dtype))
            lam_lo = process.log_snr(jnp.asarray(T, dtype))
            lam_star = lam_lo + u * (lam_hi - lam_lo)
            # bisection on [t_eps, T] rather than the closed-form `time_at_log_snr`: a fixed
            # loop compiles to the same program eagerly and under jit, so the same key gives
            # the same bits (the closed form fuses differently in the two)
            t = _invert_log_snr(process, lam_star, jnp.asarray(t_eps, dtype), jnp.asarray(T, dtype))
            t = jax.lax.stop_gradient(t)
            iw = (lam_hi - lam_lo) / (span * _neg_lambda_dot(process, t))
        alpha, sigma = process.marginal(t)
        lam = process.log_snr(t)
        lam_dot_neg = _neg_lambda_dot(process, t)
    else:
        raise TypeError(
            f"`process` must be a linear SDE or a DiscreteSchedule, got {type(process).__name__}."
        )

    t = jnp.asarray(t, dtype)
    check_vector_field(model_fn, "model_fn", t, x0)
    alpha, sigma, lam = (jnp.asarray(a, dtype) for a in (alpha, sigma, lam))
    eps = jax.random.normal(ke, x0.shape, dtype)
    x_t = alpha * x0 + sigma * eps
    err = jnp.sum((model_fn(t, x_t) - _target(prediction, x0, eps, alpha, sigma)) ** 2)

    if callable(weighting):
        w = jnp.asarray(weighting(t), dtype)
    elif weighting == "uniform":
        w = jnp.ones((), dtype)
    elif weighting == "likelihood":
        w = _likelihood_native(prediction, jnp.asarray(lam_dot_neg, dtype), lam, alpha, sigma)
    else:
        log_w_x0 = {
            "snr": lambda: lam,
            "snr_trunc": lambda: jnp.maximum(lam, 0.0),
            "snr_plus_one": lambda: jax.nn.softplus(lam),
            "min_snr": lambda: jnp.minimum(lam, jnp.log(jnp.asarray(snr_gamma, dtype))),
        }[weighting]()
        w = jnp.exp(log_w_x0 + _log_x0_to_native(prediction, lam, alpha, sigma))
    return (w * err * jnp.asarray(iw, dtype)).astype(dtype)
