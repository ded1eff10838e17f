r"""Converters between score, eps-, x0- and v-prediction functions of a linear SDE.

For $x_t = \alpha x_0 + \sigma\varepsilon$ the four parameterisations are related pointwise by

$$\nabla\log p_t(x) = -\frac{\hat\varepsilon}{\sigma},\qquad
  \hat x_0 = \frac{x - \sigma\hat\varepsilon}{\alpha},\qquad
  \hat v = \alpha\hat\varepsilon - \sigma\hat x_0,$$

and back, $\hat\varepsilon = (\sigma x + \alpha\hat v)/(\alpha^2 + \sigma^2)$.
See [parameterisations](../derivations/linear-sde.md#parameterisations).
"""

from typing import Literal

import equinox as eqx
from jaxtyping import Array, Float

from ._custom_types import Time, VectorField
from ._sde import AbstractLinearSDE

Kind = Literal["score", "eps", "x0", "v"]
_KINDS = ("score", "eps", "x0", "v")


# ---- the conversions, once, over (alpha, sigma) --------------------------------------------
# Every model wrapper, converter and solver goes through these six functions, so a process of
# any kind (SDE, discrete schedule, flow) needs only its marginal coefficients.


def eps_from_score(alpha, sigma, x, score):
    r"""$\hat\varepsilon = -\sigma\,s$."""
    del alpha, x
    return -sigma * score


def eps_from_x0(alpha, sigma, x, x0):
    r"""$\hat\varepsilon = (x - \alpha\hat x_0)/\sigma$."""
    return (x - alpha * x0) / sigma


def eps_from_v(alpha, sigma, x, v):
    r"""$\hat\varepsilon = (\sigma x + \alpha\hat v)/(\alpha^2 + \sigma^2)$, with
    $v = \alpha\varepsilon - \sigma x_0$ (exact for any $(\alpha, \sigma)$, not only VP)."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def score_from_eps(alpha, sigma, x, eps):
    r"""$s = -\hat\varepsilon/\sigma$."""
    del alpha, x
    return -eps / sigma


def x0_from_eps(alpha, sigma, x, eps):
    r"""$\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha$."""
    return (x - sigma * eps) / alpha


def v_from_eps(alpha, sigma, x, eps):
    r"""$\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
    return alpha * eps - sigma * x0_from_eps(alpha, sigma, x, eps)


# ---- the flow velocity, over (alpha, sigma) and their time derivatives (dalpha, dsigma) -----
# u = dalpha x0 + dsigma eps (the time derivative of x_t along one path). Each conversion
# divides by the Wronskian D = alpha dsigma - dalpha sigma = -alpha sigma lambda'/2 > 0 or by
# one of alpha, sigma only, so eps and x0 stay finite at the ends (sigma = 0, alpha = 0).
# See [the velocity](../derivations/flow-matching.md#the-velocity).


def eps_from_velocity(alpha, sigma, dalpha, dsigma, x, u):
    r"""$\hat\varepsilon = (\alpha\hat u - \dot\alpha x)/(\alpha\dot\sigma - \dot\alpha\sigma)$."""
    return (alpha * u - dalpha * x) / (alpha * dsigma - dalpha * sigma)


def x0_from_velocity(alpha, sigma, dalpha, dsigma, x, u):
    r"""$\hat x_0 = (\dot\sigma x - \sigma\hat u)/(\alpha\dot\sigma - \dot\alpha\sigma)$."""
    return (dsigma * x - sigma * u) / (alpha * dsigma - dalpha * sigma)


def velocity_from_eps(alpha, sigma, dalpha, dsigma, x, eps):
    r"""$\hat u = \big(\dot\alpha x + (\alpha\dot\sigma - \dot\alpha\sigma)\hat\varepsilon\big)
    /\alpha$."""
    return (dalpha * x + (alpha * dsigma - dalpha * sigma) * eps) / alpha


def velocity_from_x0(alpha, sigma, dalpha, dsigma, x, x0):
    r"""$\hat u = \big(\dot\sigma x - (\alpha\dot\sigma - \dot\alpha\sigma)\hat x_0\big)
    /\sigma$."""
    return (dsigma * x - (alpha * dsigma - dalpha * sigma) * x0) / sigma


_TO_EPS = {"eps": lambda a, s, x, p: p, "score": eps_from_score, "x0": eps_from_x0, "v": eps_from_v}
_FROM_EPS = {
    "eps": lambda a, s, x, e: e,
    "score": score_from_eps,
    "x0": x0_from_eps,
    "v": v_from_eps,
}


def _coeffs(sde: AbstractLinearSDE, t, dtype):
    alpha, sigma = sde.marginal(t)
    return alpha.astype(dtype), sigma.astype(dtype)


def to_eps(kind: Kind, sde: AbstractLinearSDE, t: Time, x: Array, pred: Array) -> Array:
    r"""Convert a prediction `pred` of kind `kind` at $(t, x)$ into $\hat\varepsilon$."""
    if kind not in _TO_EPS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    alpha, sigma = _coeffs(sde, t, x.dtype)
    return _TO_EPS[kind](alpha, sigma, x, pred)


def from_eps(kind: Kind, sde: AbstractLinearSDE, t: Time, x: Array, eps: Array) -> Array:
    r"""Convert $\hat\varepsilon$ at $(t, x)$ into a prediction of kind `kind`."""
    if kind not in _FROM_EPS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    alpha, sigma = _coeffs(sde, t, x.dtype)
    return _FROM_EPS[kind](alpha, sigma, x, eps)


class Converted(eqx.Module):
    """A prediction function re-expressed in another parameterisation (see `convert`)."""

    sde: AbstractLinearSDE
    fn: VectorField
    source: str = eqx.field(static=True)
    target: str = eqx.field(static=True)

    def __call__(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        eps = to_eps(self.source, self.sde, t, x, self.fn(t, x))  # pyright: ignore
        return from_eps(self.target, self.sde, t, x, eps)  # pyright: ignore


def convert(sde: AbstractLinearSDE, fn: VectorField, source: Kind, target: Kind) -> Converted:
    r"""Re-express a prediction function `fn(t, x)` of kind `source` as one of kind `target`.

    Args:
        sde: the linear SDE that defines $\alpha(t)$ and $\sigma(t)$.
        fn: a callable $(t, x) \mapsto$ prediction of kind `source`.
        source: what `fn` predicts: one of `"score"`, `"eps"`, `"x0"`, `"v"`.
        target: what the returned function predicts (same choices).

    Returns:
        An `eqx.Module` callable as `(t, x)`; differentiable and jit-able.

    Example:
        ```python
        score = sd.convert(sde, eps_net, "eps", "score")
        ```
    """
    if not isinstance(sde, AbstractLinearSDE):
        raise TypeError(f"`sde` must be a linear SDE, got {type(sde).__name__}.")
    for name, k in (("source", source), ("target", target)):
        if k not in _KINDS:
            raise ValueError(f"`{name}` must be one of {_KINDS}, got {k!r}.")
    if not callable(fn):
        raise TypeError(f"`fn` must be callable (t, x) -> array, got {fn!r}.")
    return Converted(sde, fn, source, target)


def eps_to_score(sde: AbstractLinearSDE, eps_fn: VectorField) -> Converted:
    r"""Score $-\hat\varepsilon/\sigma(t)$ from an eps-prediction function."""
    return convert(sde, eps_fn, "eps", "score")


def score_to_eps(sde: AbstractLinearSDE, score_fn: VectorField) -> Converted:
    r"""Eps-prediction $-\sigma(t)\,s(t, x)$ from a score function."""
    return convert(sde, score_fn, "score", "eps")


def x0_to_eps(sde: AbstractLinearSDE, x0_fn: VectorField) -> Converted:
    r"""Eps-prediction $(x - \alpha\hat x_0)/\sigma$ from an x0-prediction function."""
    return convert(sde, x0_fn, "x0", "eps")


def v_to_eps(sde: AbstractLinearSDE, v_fn: VectorField) -> Converted:
    r"""Eps-prediction $(\sigma x + \alpha\hat v)/(\alpha^2 + \sigma^2)$ from a v-prediction
    function."""
    return convert(sde, v_fn, "v", "eps")
