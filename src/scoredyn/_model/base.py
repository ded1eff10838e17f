r"""Models carry their parameterisation: a network wrapped as what it predicts.

A network is any callable `net(t, x, *cond) -> array like x` for ONE example. Wrapping it says
what it predicts; every other parameterisation is then derived from the process's marginal
coefficients $(\alpha, \sigma)$ at the same point, through the six conversions of
`scoredyn._convert` (one set of formulas for every process):

$$\hat\varepsilon = -\sigma s = \frac{x - \alpha\hat x_0}{\sigma}
  = \frac{\sigma x + \alpha\hat v}{\alpha^2 + \sigma^2}.$$

See [models and conversions](../derivations/sampling-layer.md#models).
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._convert import (
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    score_from_eps,
    v_from_eps,
    x0_from_eps,
)
from .._process import AbstractProcess

Net = Callable[..., Array]


def _at(process: AbstractProcess, t, x: Array):
    """(alpha, sigma, network time) of `process` at coordinate `t`, in x's dtype."""
    alpha, sigma = process.marginal(t)
    tm = process.model_time(t)
    return (
        jnp.asarray(alpha).astype(x.dtype),
        jnp.asarray(sigma).astype(x.dtype),
        jnp.asarray(tm).astype(x.dtype),
    )


class AbstractModel(eqx.Module):
    r"""A denoiser in a known parameterisation.

    Subclasses implement [`eps_at`][scoredyn.AbstractModel.eps_at], the noise prediction given
    the marginal coefficients $(\alpha, \sigma)$ at the point and the network time `t`; the
    other predictions default to conversions of it, and a subclass overrides the one its network
    gives natively (so no round trip through $\hat\varepsilon$ is made). The process-level
    methods ([`eps`][scoredyn.AbstractModel.eps], `x0`, `score`, `v`) read $(\alpha, \sigma)$
    and the network time from any [`AbstractProcess`][scoredyn.AbstractProcess].

    A model transform (clipping of $\hat x_0$, guidance, preconditioning) is again an
    `AbstractModel` wrapping another one.
    """

    @abc.abstractmethod
    def eps_at(self, alpha, sigma, t, x: Float[Array, "*shape"], *cond) -> Float[Array, "*shape"]:
        r"""$\hat\varepsilon$ at $x = \alpha x_0 + \sigma\varepsilon$, network time `t`."""

    def x0_at(self, alpha, sigma, t, x: Float[Array, "*shape"], *cond) -> Float[Array, "*shape"]:
        r"""$\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha$."""
        return x0_from_eps(alpha, sigma, x, self.eps_at(alpha, sigma, t, x, *cond))

    def score_at(self, alpha, sigma, t, x: Float[Array, "*shape"], *cond) -> Float[Array, "*shape"]:
        r"""$\nabla_x\log p(x) = -\hat\varepsilon/\sigma$."""
        return score_from_eps(alpha, sigma, x, self.eps_at(alpha, sigma, t, x, *cond))

    def v_at(self, alpha, sigma, t, x: Float[Array, "*shape"], *cond) -> Float[Array, "*shape"]:
        r"""$\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
        return v_from_eps(alpha, sigma, x, self.eps_at(alpha, sigma, t, x, *cond))

    # -- the same at a point of a process ---------------------------------------------------
    def eps(self, process: AbstractProcess, t, x: Float[ArrayLike, "*shape"], *cond) -> Array:
        r"""$\hat\varepsilon$ at coordinate `t` of `process` (a time or an index)."""
        x = jnp.asarray(x)
        return self.eps_at(*_at(process, t, x), x, *cond)

    def x0(self, process: AbstractProcess, t, x: Float[ArrayLike, "*shape"], *cond) -> Array:
        r"""$\hat x_0$ at coordinate `t` of `process`."""
        x = jnp.asarray(x)
        return self.x0_at(*_at(process, t, x), x, *cond)

    def score(self, process: AbstractProcess, t, x: Float[ArrayLike, "*shape"], *cond) -> Array:
        r"""The score $\nabla_x\log p_t(x)$ at coordinate `t` of `process`."""
        x = jnp.asarray(x)
        return self.score_at(*_at(process, t, x), x, *cond)

    def v(self, process: AbstractProcess, t, x: Float[ArrayLike, "*shape"], *cond) -> Array:
        r"""The v-prediction $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
        x = jnp.asarray(x)
        return self.v_at(*_at(process, t, x), x, *cond)


class NetOutputShapeError(ValueError, TypeError):
    """A network returned an array not shaped like `x` (a `ValueError`; also a `TypeError`,
    which `check_model_output` raised for it before this check existed)."""


def _swap_hint(cls: str, t, x) -> str:
    return (
        f"scoredyn calls a {cls}'s network as net(t, x, *cond): ONE example, the scalar time t "
        f"(shape {jnp.shape(t)}) FIRST, then x (shape {jnp.shape(x)}). A network written as "
        "f(x, t) (score_sde's score_fn(x, t), k-diffusion's model(x, sigma)) must be wrapped: "
        f"sd.{cls}(lambda t, x: f(x, t)); a batched network is called on one example "
        "(jax.vmap the sampler)."
    )


def call_net(model, t, x, cond: tuple):
    """`model.net(t, x, *cond)`, checked at trace time (shapes only, no run-time cost): an
    output not shaped like `x` raises `NetOutputShapeError`, and an error inside the network
    gets a note on the argument order."""
    cls = type(model).__name__
    try:
        out = model.net(t, x, *cond)
    except Exception as e:
        if jnp.ndim(t) == 0 and jnp.ndim(x) > 0:
            e.add_note(f"(while calling the network of `model`) {_swap_hint(cls, t, x)}")
        raise
    shape = getattr(out, "shape", None)
    if shape is not None and tuple(shape) != tuple(jnp.shape(x)):
        likely = (
            "This is what a network written as f(x, t) returns when called with t first: the "
            "shape of its first argument, t. "
            if tuple(shape) == tuple(jnp.shape(t)) and jnp.ndim(x) > 0
            else ""
        )
        raise NetOutputShapeError(
            f"the network of `model` ({cls}) must return an array shaped like x "
            f"{tuple(jnp.shape(x))}, got shape {tuple(shape)}. {likely}{_swap_hint(cls, t, x)}"
        )
    return out


def _check_net(net, cls: str) -> None:
    if not callable(net):
        raise TypeError(f"`net` of {cls} must be callable (t, x, *cond) -> array, got {net!r}.")


class EpsModel(AbstractModel):
    r"""A network that predicts the noise: `net(t, x, *cond)` $= \hat\varepsilon$.

    Example:
        ```python
        model = sd.EpsModel(gm.eps_fn(sde))
        model.score(sde, 0.5, x)        # -eps / sigma(0.5)
        ```
    """

    net: Net

    def __check_init__(self):
        _check_net(self.net, "EpsModel")

    def eps_at(self, alpha, sigma, t, x, *cond):
        return call_net(self, t, x, cond)


class ScoreModel(AbstractModel):
    r"""A network that predicts the score: `net(t, x, *cond)` $= \nabla_x\log p_t(x)$;
    $\hat\varepsilon = -\sigma s$."""

    net: Net

    def __check_init__(self):
        _check_net(self.net, "ScoreModel")

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_score(alpha, sigma, x, call_net(self, t, x, cond))

    def score_at(self, alpha, sigma, t, x, *cond):
        return call_net(self, t, x, cond)


class X0Model(AbstractModel):
    r"""A network that predicts the clean data: `net(t, x, *cond)` $= \hat x_0$;
    $\hat\varepsilon = (x - \alpha\hat x_0)/\sigma$."""

    net: Net

    def __check_init__(self):
        _check_net(self.net, "X0Model")

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_x0(alpha, sigma, x, call_net(self, t, x, cond))

    def x0_at(self, alpha, sigma, t, x, *cond):
        return call_net(self, t, x, cond)


class VModel(AbstractModel):
    r"""A network that predicts diffusion's v: `net(t, x, *cond)` $= \hat v$ with
    $v = \alpha\varepsilon - \sigma x_0$ (Salimans & Ho 2022);
    $\hat\varepsilon = (\sigma x + \alpha\hat v)/(\alpha^2 + \sigma^2)$ for any $(\alpha, \sigma)$.

    References:
        Salimans & Ho, *Progressive Distillation for Fast Sampling of Diffusion Models*,
        arXiv:2202.00512.
    """

    net: Net

    def __check_init__(self):
        _check_net(self.net, "VModel")

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_v(alpha, sigma, x, call_net(self, t, x, cond))

    def x0_at(self, alpha, sigma, t, x, *cond):
        v = call_net(self, t, x, cond)
        return (alpha * x - sigma * v) / (alpha**2 + sigma**2)

    def v_at(self, alpha, sigma, t, x, *cond):
        return call_net(self, t, x, cond)


def check_model(model, name: str = "model") -> AbstractModel:
    """`model` must be an AbstractModel; a bare callable gets a hint."""
    if isinstance(model, AbstractModel):
        return model
    if callable(model):
        raise TypeError(
            f"`{name}` must be a model that knows what it predicts: wrap the callable, e.g. "
            f"sd.EpsModel(fn), sd.ScoreModel(fn), sd.X0Model(fn) or sd.VModel(fn); got {model!r}."
        )
    raise TypeError(f"`{name}` must be an sd.AbstractModel, got {type(model).__name__}.")


def check_model_output(model: AbstractModel, process, t, x: Array, cond: tuple = ()) -> None:
    """Trace `model.eps` once (no FLOPs): its output must be shaped and typed like `x`."""
    import jax

    out = jax.eval_shape(lambda x: model.eps(process, t, x, *cond), x)
    if out.shape != x.shape or out.dtype != x.dtype:
        raise TypeError(
            f"`model` must return an array shaped and typed like x {x.shape} {x.dtype} (its "
            f"network is called net(t, x, *cond) for ONE example), got {out.shape} {out.dtype}."
        )
