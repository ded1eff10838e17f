r"""Guidance as model transforms: classifier-free guidance and classifier guidance.

Both are models wrapping models, so every solver runs them unchanged. Conditioning travels as
the extra model arguments `cond` (`net(t, x, *cond)`); the library only passes it on.

Classifier-free guidance with scale $w$ mixes the conditional and the unconditional predictions
with weights summing to one,

$$\hat\varepsilon_w = (1 - w)\,\hat\varepsilon(x) + w\,\hat\varepsilon(x \mid c)
  = \hat\varepsilon(x) + w\big(\hat\varepsilon(x\mid c) - \hat\varepsilon(x)\big),$$

so $w = 1$ is the conditional model, $w = 0$ the unconditional one; the same mix holds for
$\hat x_0$, $\hat v$ and the score, because each is affine in $\hat\varepsilon$ with the same
offset. Classifier guidance adds $w\nabla_x\log p(c\mid x_t)$ to the score. See
[guidance](../derivations/guidance.md).
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._checks import concrete_value, is_concrete
from .._convert import (
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    score_from_eps,
    v_from_eps,
    x0_from_eps,
)
from .._custom_types import ScalarLike
from .base import AbstractModel, EpsModel, ScoreModel, VModel, X0Model, check_model

# Internal dispatch between the four predictions: the method of an AbstractModel that gives
# each one, and the conversions to and from eps.
_METHOD = {"eps": "eps_at", "x0": "x0_at", "score": "score_at", "v": "v_at"}
_TO_EPS = {
    "eps": lambda a, s, x, p: p,
    "x0": eps_from_x0,
    "score": eps_from_score,
    "v": eps_from_v,
}
_FROM_EPS = {
    "eps": lambda a, s, x, e: e,
    "x0": x0_from_eps,
    "score": score_from_eps,
    "v": v_from_eps,
}
# The parameterisation in which CFG-rescale measures the standard deviation, named by the
# model class that predicts it.
_RESCALE_KIND = {EpsModel: "eps", ScoreModel: "score", X0Model: "x0", VModel: "v"}


def _predict(model: AbstractModel, kind: str, alpha, sigma, t, x, cond: tuple):
    return getattr(model, _METHOD[kind])(alpha, sigma, t, x, *cond)


def _convert(src: str, dst: str, alpha, sigma, x, pred):
    if src == dst:
        return pred
    return _FROM_EPS[dst](alpha, sigma, x, _TO_EPS[src](alpha, sigma, x, pred))


def _check_scalar(value, name: str, *, lo: float = -math.inf, hi: float = math.inf) -> None:
    """A real scalar in [lo, hi] when concrete (traced values pass: they may be swept in jit)."""
    if not is_concrete(value):
        return
    if isinstance(value, complex) or (
        hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.complexfloating)
    ):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if jnp.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(value)}.")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"`{name}` must be finite and in [{lo}, {hi}], got {v}.")


def _check_interval(interval, name: str):
    if interval is None:
        return None
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise TypeError(f"`{name}` must be a pair (lo, hi) or None, got {interval!r}.")
    lo, hi = interval
    if is_concrete(lo, hi):
        flo, fhi = float(lo), float(hi)
        if math.isnan(flo) or math.isnan(fhi) or not flo < fhi:
            raise ValueError(f"`{name}` must have lo < hi, got {interval!r}.")
    return (lo, hi)


class ClassifierFreeGuidance(AbstractModel):
    r"""Classifier-free guidance (Ho & Salimans 2022) of a conditional model, with the guidance
    interval (Kynkäänniemi et al. 2024) and CFG-rescale (Lin et al. 2024).

    With $\hat\varepsilon_c = \hat\varepsilon(x \mid c)$ the conditional prediction (`model`
    called with the sample's `cond`) and $\hat\varepsilon_u$ the unconditional one (`model`
    called with `null`, or the separate model `uncond` called with no condition),

    $$\hat\varepsilon_w = (1 - w)\,\hat\varepsilon_u + w\,\hat\varepsilon_c
      = \hat\varepsilon_u + w(\hat\varepsilon_c - \hat\varepsilon_u),\qquad
      \nabla\log p_w = (1 - w)\nabla\log p_t(x) + w\nabla\log p_t(x\mid c).$$

    $w = 1$ returns the conditional model and $w = 0$ the unconditional one, exactly
    ($0\cdot u + c = c$: bit for bit eagerly; compiled, XLA may round differently by an ulp);
    $w > 1$ extrapolates away from the unconditional model. (Some papers write
    $\hat\varepsilon_c + w'(\hat\varepsilon_c - \hat\varepsilon_u)$; then $w = 1 + w'$.) The
    weights sum to one, so the mix is the same in every parameterisation ($\hat x_0$, $\hat v$,
    score). It is the exact score of the tilted target $p^{1-w}p(\cdot\mid c)^w$ diffused when
    both are Gaussians with one covariance, and not in general
    ([derivation](../derivations/guidance.md#classifier-free-guidance)).

    **Guidance interval.** With `interval=(t_lo, t_hi)` guidance is applied only for network
    times $t_{lo} < t \le t_{hi}$; with `noise_interval=(s_lo, s_hi)` only for noise levels
    $s_{lo} < \sigma/\alpha \le s_{hi}$ (EDM's $\sigma$; the paper's $(\sigma_{lo},
    \sigma_{hi}]$, so its published values can be used on any process). Outside, the output
    is the conditional model's prediction (as in the paper: $w = 1$ there). Where the predicate
    does not depend on a vmapped value the unconditional model is not evaluated outside the
    interval (`lax.cond`).

    **CFG-rescale.** With `rescale` $= \phi > 0$, in the parameterisation `rescale_in`
    (default $\hat v$, the output of the v-prediction network of Lin et al.),

    $$\hat y_{cfg} = (1-w)\hat y_u + w\hat y_c,\qquad
      \hat y = \Big(\phi\frac{\operatorname{std}(\hat y_c)}{\operatorname{std}(\hat y_{cfg})}
      + 1 - \phi\Big)\hat y_{cfg},$$

    with std over all elements of ONE example (per example, as the paper's std over the
    non-batch axes; the normalisation $n$ or $n-1$ cancels in the ratio). $\phi = 0$ is plain
    CFG, $\phi = 1$ gives $\hat y$ the conditional prediction's std. If
    $\operatorname{std}(\hat y_{cfg}) = 0$ (e.g. a 1-element example) the factor is 1.

    Args:
        model: the conditional [`AbstractModel`][scoredyn.AbstractModel], called with the
            sample's `cond` (`net(t, x, *cond)`).
        scale: the guidance scale $w$ (a float, or a traced scalar for sweeps under `jit`).
        null: the null condition: the unconditional prediction is `model` called with `null`
            in place of `cond` (a tuple like `cond`; a single value means `(null,)`). This is
            the usual label-dropout model.
        uncond: a separate unconditional model, called with no condition. Give exactly one of
            `null` and `uncond`.
        interval: optional `(t_lo, t_hi)` in network time: guidance for $t_{lo} < t \le t_{hi}$.
        noise_interval: optional `(s_lo, s_hi)` in noise level $s = \sigma/\alpha$: guidance
            for $s_{lo} < s \le s_{hi}$. At most one of `interval` and `noise_interval`.
        rescale: CFG-rescale $\phi \in [0, 1]$ (default 0: off). Lin et al. use 0.7.
        rescale_in: the parameterisation whose std is matched, named by its model class:
            `sd.VModel` (default), `sd.X0Model`, `sd.EpsModel` (`sd.ScoreModel` is the same as
            `sd.EpsModel`: the factor is scale-free).

    Raises:
        ValueError: for neither or both of `null` / `uncond`, both intervals, an interval with
            lo >= hi, `rescale` outside [0, 1], a non-finite `scale`.
        TypeError: for models that are not `AbstractModel`s, or a `rescale_in` that is not one
            of the four model classes.

    Example:
        ```python
        net = lambda t, x, label: ...              # label == 10: the dropped label
        cfg = sd.ClassifierFreeGuidance(sd.EpsModel(net), 3.0, null=10,
                                        noise_interval=(0.28, 5.42))
        res = sd.sample(None, sde, cfg, sd.DPMSolver(3), grid, x_T, cond=(label,))
        ```

    References:
        Ho & Salimans, *Classifier-Free Diffusion Guidance*, arXiv:2207.12598.
        Kynkäänniemi et al., *Applying Guidance in a Limited Interval Improves Sample and
        Distribution Quality in Diffusion Models*, arXiv:2404.07724.
        Lin et al., *Common Diffusion Noise Schedules and Sample Steps are Flawed*,
        arXiv:2305.08891 (Section 3.4).
    """

    model: AbstractModel
    scale: ScalarLike
    null: tuple | None
    uncond: AbstractModel | None
    interval: tuple | None
    noise_interval: tuple | None
    rescale: ScalarLike
    rescale_in: type = eqx.field(static=True)

    def __init__(
        self,
        model: AbstractModel,
        scale: ScalarLike,
        *,
        null=None,
        uncond: AbstractModel | None = None,
        interval: tuple | None = None,
        noise_interval: tuple | None = None,
        rescale: ScalarLike = 0.0,
        rescale_in: type = VModel,
    ):
        self.model = check_model(model, "model")
        if (null is None) == (uncond is None):
            raise ValueError(
                "give exactly one of `null` (the null condition of `model`) and `uncond` (a "
                f"separate unconditional model), got null={null!r}, uncond={uncond!r}."
            )
        self.null = None if null is None else (null if isinstance(null, tuple) else (null,))
        self.uncond = None if uncond is None else check_model(uncond, "uncond")
        _check_scalar(scale, "scale")
        self.scale = scale
        if interval is not None and noise_interval is not None:
            raise ValueError("give at most one of `interval` and `noise_interval`.")
        self.interval = _check_interval(interval, "interval")
        self.noise_interval = _check_interval(noise_interval, "noise_interval")
        _check_scalar(rescale, "rescale", lo=0.0, hi=1.0)
        self.rescale = rescale
        if rescale_in not in _RESCALE_KIND:
            raise TypeError(
                "`rescale_in` must be one of sd.VModel, sd.X0Model, sd.EpsModel, sd.ScoreModel "
                f"(the parameterisation whose std CFG-rescale matches), got {rescale_in!r}."
            )
        self.rescale_in = rescale_in

    # ------------------------------------------------------------------ internals
    def _uncond(self, kind, alpha, sigma, t, x):
        if self.uncond is not None:
            return _predict(self.uncond, kind, alpha, sigma, t, x, ())
        assert self.null is not None
        return _predict(self.model, kind, alpha, sigma, t, x, self.null)

    def _rescale_off(self) -> bool:
        phi = concrete_value(self.rescale)
        return phi is not None and float(phi) == 0.0

    def _guided(self, kind, alpha, sigma, t, x, cond):
        w = jnp.asarray(self.scale, x.dtype)
        if self._rescale_off():
            c = _predict(self.model, kind, alpha, sigma, t, x, cond)
            u = self._uncond(kind, alpha, sigma, t, x)
            return (1 - w) * u + w * c
        rk = _RESCALE_KIND[self.rescale_in]
        c = _predict(self.model, rk, alpha, sigma, t, x, cond)
        u = self._uncond(rk, alpha, sigma, t, x)
        cfg = (1 - w) * u + w * c
        phi = jnp.asarray(self.rescale, x.dtype)
        std_c, std_cfg = jnp.std(c), jnp.std(cfg)
        positive = std_cfg > 0
        ratio = jnp.where(positive, std_c / jnp.where(positive, std_cfg, 1), 1)
        out = (phi * ratio + (1 - phi)) * cfg
        return _convert(rk, kind, alpha, sigma, x, out)

    def _inside(self, alpha, sigma, t, x):
        if self.interval is not None:
            lo, hi = (jnp.asarray(b, x.dtype) for b in self.interval)
            s = jnp.asarray(t, x.dtype)
        elif self.noise_interval is not None:
            lo, hi = (jnp.asarray(b, x.dtype) for b in self.noise_interval)
            s = jnp.asarray(sigma, x.dtype) / jnp.asarray(alpha, x.dtype)  # inf at alpha = 0
        else:
            return None
        return (s > lo) & (s <= hi)

    def _at(self, kind, alpha, sigma, t, x, cond):
        inside = self._inside(alpha, sigma, t, x)
        if inside is None:
            return self._guided(kind, alpha, sigma, t, x, cond)
        return lax.cond(
            inside,
            lambda: self._guided(kind, alpha, sigma, t, x, cond),
            lambda: _predict(self.model, kind, alpha, sigma, t, x, cond),
        )

    # ------------------------------------------------------------------ predictions
    def eps_at(self, alpha, sigma, t, x, *cond):
        return self._at("eps", alpha, sigma, t, x, cond)

    def x0_at(self, alpha, sigma, t, x, *cond):
        return self._at("x0", alpha, sigma, t, x, cond)

    def score_at(self, alpha, sigma, t, x, *cond):
        return self._at("score", alpha, sigma, t, x, cond)

    def v_at(self, alpha, sigma, t, x, *cond):
        return self._at("v", alpha, sigma, t, x, cond)


class ClassifierGuidance(AbstractModel):
    r"""Classifier guidance (Dhariwal & Nichol 2021): the score plus $w$ times the gradient of
    a differentiable $\log p(c \mid x_t, t)$,

    $$\nabla\log p_w(x) = \nabla\log p_t(x) + w\,\nabla_x\log p(c\mid x, t),\qquad
      \hat\varepsilon_w = \hat\varepsilon - w\,\sigma\,\nabla_x\log p(c\mid x, t).$$

    Since $\nabla\log p(c\mid x) = \nabla\log p(x\mid c) - \nabla\log p(x)$ (Bayes), guiding the
    unconditional model with the exact classifier equals
    [`ClassifierFreeGuidance`][scoredyn.ClassifierFreeGuidance] with the same $w$
    ([derivation](../derivations/guidance.md#classifier-guidance)).

    Args:
        model: the [`AbstractModel`][scoredyn.AbstractModel] to guide.
        log_prob: `log_prob(t, x, *cond) -> scalar` $= \log p(c\mid x_t = x)$ at network time
            `t` for ONE example (the same calling convention as a network); differentiated in
            `x` with `jax.grad`.
        scale: the guidance scale $w$ (Dhariwal & Nichol's $s$); $w = 0$ returns `model`.
        conditional_model: whether `model` also receives `cond` (a conditional model guided by
            a classifier); by default only `log_prob` does.

    Raises:
        TypeError: for a `model` that is not an `AbstractModel`, a `log_prob` that is not
            callable or does not return a scalar.
        ValueError: for a non-finite `scale`.

    Example:
        ```python
        guided = sd.ClassifierGuidance(sd.EpsModel(net), log_prob, 2.0)
        res = sd.sample(None, sde, guided, sd.DPMSolver(3), grid, x_T, cond=(label,))
        ```

    References:
        Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, arXiv:2105.05233.
    """

    model: AbstractModel
    log_prob: Callable[..., Array]
    scale: ScalarLike = 1.0
    conditional_model: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_model(self.model, "model")
        if not callable(self.log_prob):
            raise TypeError(
                f"`log_prob` must be callable (t, x, *cond) -> scalar, got {self.log_prob!r}."
            )
        _check_scalar(self.scale, "scale")

    def _grad(self, t, x, cond):
        def lp(x):
            out = self.log_prob(t, x, *cond)
            if jnp.shape(out) != ():
                raise TypeError(
                    "`log_prob(t, x, *cond)` must return a scalar log p(c | x) for ONE example, "
                    f"got shape {jnp.shape(out)}."
                )
            return out

        return jax.grad(lp)(x).astype(x.dtype)

    def _model_cond(self, cond):
        return cond if self.conditional_model else ()

    def score_at(self, alpha, sigma, t, x, *cond):
        base = self.model.score_at(alpha, sigma, t, x, *self._model_cond(cond))
        return base + jnp.asarray(self.scale, x.dtype) * self._grad(t, x, cond)

    def eps_at(self, alpha, sigma, t, x, *cond):
        base = self.model.eps_at(alpha, sigma, t, x, *self._model_cond(cond))
        w = jnp.asarray(self.scale, x.dtype)
        return base - w * jnp.asarray(sigma, x.dtype) * self._grad(t, x, cond)
