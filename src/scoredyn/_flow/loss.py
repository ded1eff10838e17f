r"""The (conditional) flow-matching loss, with the time samplings of Esser et al. (2024).

For $x_t = \alpha x_0 + \sigma\varepsilon$ the regression target is the path's velocity
$u = \dot\alpha x_0 + \dot\sigma\varepsilon$; its minimiser is
$\mathbb E[u\mid x_t] = f x_t - \tfrac12 g^2\nabla\log p_t(x_t)$, the probability-flow drift.
A time density $\pi(t)$ on $[0, 1]$ is a weighting:
$\mathbb E_{t\sim\pi}\|\hat u - u\|^2 = \int_0^1\pi(t)\,\mathbb E\|\hat u - u\|^2\,\mathrm dt$.
See [the flow-matching loss](../derivations/flow-matching.md#the-flow-matching-loss).
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from .._checks import check_callable, check_positive, concrete_value
from .._custom_types import Key, Scalar, VectorField
from .._misc import as_float, check_vector_field
from .shift import velocity_frame

TimeSampling = Literal["uniform", "logit_normal", "mode"]
_SAMPLINGS = ("uniform", "logit_normal", "mode")
#: the largest mode scale for which t = f_mode(u) is monotone: 2 / (pi - 2)
MODE_SCALE_MAX = 2.0 / (math.pi - 2.0)


def mode_map(u, scale):
    r"""$f_{\text{mode}}(u; s) = 1 - u - s\,\big(\cos^2(\tfrac\pi2 u) - 1 + u\big)$, decreasing
    from 1 to 0 on $[0, 1]$ for $-1 \le s \le 2/(\pi - 2)$."""
    return 1.0 - u - scale * (jnp.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)


def draw_time(key: Key, time_sampling: str, logit_mean, logit_std, mode_scale, dtype):
    r"""One time $t \in [0, 1]$ from the named density (the loss's draw)."""
    if time_sampling == "logit_normal":
        z = jax.random.normal(key, (), dtype)
        return jax.nn.sigmoid(jnp.asarray(logit_mean, dtype) + jnp.asarray(logit_std, dtype) * z)
    u = jax.random.uniform(key, (), dtype)
    if time_sampling == "mode":
        return mode_map(u, jnp.asarray(mode_scale, dtype))
    return u


def _check_options(time_sampling, logit_std, mode_scale):
    if time_sampling not in _SAMPLINGS:
        raise ValueError(f"`time_sampling` must be one of {_SAMPLINGS}, got {time_sampling!r}.")
    check_positive(logit_std, "logit_std")
    if (v := concrete_value(mode_scale)) is not None and not (-1.0 <= float(v) <= MODE_SCALE_MAX):
        raise ValueError(
            f"`mode_scale` must lie in [-1, 2/(pi - 2)] = [-1, {MODE_SCALE_MAX:.4f}] (where "
            f"t = f_mode(u) is monotone), got {float(v)}."
        )


def flow_matching_loss(
    key: Key,
    process,
    model_fn: VectorField,
    x0: Float[ArrayLike, "*shape"],
    *,
    time_sampling: TimeSampling = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> Scalar:
    r"""Conditional flow-matching loss of one example: $\|\hat u(\tau, x_t) - u\|^2$, summed.

    Draws $t \sim \pi$ on $[0, 1]$ and $\varepsilon \sim \mathcal N(0, I)$, forms
    $x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$, calls `model_fn(tau, x_t)` at the network
    time $\tau$ = `process.model_time(t)` and compares it with the velocity
    $u = \dot\alpha(\tau)x_0 + \dot\sigma(\tau)\varepsilon$ of the path in $\tau$
    ($\varepsilon - x_0$ on the rectified flow). On a [`TimeShift`][scoredyn.TimeShift] the
    drawn $t$ is shifted, $\tau = \tau_s(t)$, and the target is the base path's velocity: SD3's
    resolution-dependent training times.

    Time samplings (Esser et al. 2024, Sec. 3.1):

    | `time_sampling` | draw | density $\pi(t)$ |
    |---|---|---|
    | `"uniform"` | $t = u$, $u\sim\mathcal U[0, 1]$ | $1$ |
    | `"logit_normal"` | $t = \operatorname{sigmoid}(m + sz)$, $z\sim\mathcal N(0,1)$ | $\pi_{ln}$ |
    | `"mode"` | $t = f_{\text{mode}}(u)$, $u\sim\mathcal U[0, 1]$ | $\pi_{\text{mode}}$ |

    $$\pi_{ln}(t) = \frac{1}{s\sqrt{2\pi}\,t(1 - t)}
      \exp\Big(-\frac{(\operatorname{logit}t - m)^2}{2s^2}\Big),\qquad
      f_{\text{mode}}(u) = 1 - u - c\big(\cos^2\tfrac{\pi u}{2} - 1 + u\big),\qquad
      \pi_{\text{mode}}(t) = \frac{1}{\lvert f_{\text{mode}}'(f_{\text{mode}}^{-1}(t))\rvert},$$

    with $m$ = `logit_mean`, $s$ = `logit_std`, $c$ = `mode_scale`
    ($-1 \le c \le 2/(\pi - 2)$; $c = 0$ is uniform). The density is the weighting: there is no
    importance correction, as in SD3. The minimiser over $\hat u$ is
    $\mathbb E[u\mid x_t]$, the probability-flow drift of the process
    (see [`VelocityModel`][scoredyn.VelocityModel]).

    Args:
        key: PRNG key.
        process: a flow: [`RectifiedFlow`][scoredyn.RectifiedFlow],
            [`Interpolant`][scoredyn.Interpolant] or a [`TimeShift`][scoredyn.TimeShift] of one.
        model_fn: $(\tau, x) \mapsto \hat u$, shaped like `x0`.
        x0: one data example.
        time_sampling: `"uniform"`, `"logit_normal"` or `"mode"`.
        logit_mean: $m$ of the logit-normal.
        logit_std: $s > 0$ of the logit-normal.
        mode_scale: $c$ of the mode sampling (SD3's default 1.29).

    Returns:
        Scalar loss; differentiable in the parameters of `model_fn`.

    Raises:
        TypeError: if `process` is not a flow or `model_fn` is not callable / returns the wrong
            shape or dtype.
        ValueError: for an unknown `time_sampling`, `logit_std <= 0` or `mode_scale` outside
            $[-1, 2/(\pi - 2)]$.

    Example:
        ```python
        rf = sd.RectifiedFlow()
        loss = lambda p, k, x0: sd.flow_matching_loss(k, rf, lambda t, x: net(p, t, x), x0,
                                                      time_sampling="logit_normal")
        batch_loss = jax.vmap(loss, (None, 0, 0))(params, keys, xs).mean()
        ```

    References:
        Lipman et al., *Flow Matching for Generative Modeling*, arXiv:2210.02747; Esser et al.,
        *Scaling Rectified Flow Transformers for High-Resolution Image Synthesis*,
        arXiv:2403.03206.
    """
    _check_options(time_sampling, logit_std, mode_scale)
    check_callable(model_fn, "model_fn")
    x0 = as_float(x0, "x0")
    dtype = x0.dtype
    kt, ke = jax.random.split(key)
    t = draw_time(kt, time_sampling, logit_mean, logit_std, mode_scale, dtype)
    alpha, sigma, dalpha, dsigma, tau = velocity_frame(process, t)
    alpha, sigma, dalpha, dsigma, tau = (
        jnp.asarray(a).astype(dtype) for a in (alpha, sigma, dalpha, dsigma, tau)
    )
    check_vector_field(model_fn, "model_fn", tau, x0)
    eps = jax.random.normal(ke, x0.shape, dtype)
    x_t = alpha * x0 + sigma * eps
    target = dalpha * x0 + dsigma * eps
    return jnp.sum((model_fn(tau, x_t) - target) ** 2).astype(dtype)
