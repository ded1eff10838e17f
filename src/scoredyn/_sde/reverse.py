"""The reverse-time SDE and the probability-flow ODE of any SDE, given a score."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._custom_types import ScoreFn, Time
from .base import AbstractSDE


def _g2_divergence(sde: AbstractSDE, t, x):
    r"""$\big(\nabla\cdot (g g^\top)\big)_i = \partial_{x_i} g_i(t, x)^2$ for diagonal $g$
    (zero if $g$ ignores $x$)."""
    if not sde.state_dependent_diffusion:
        return jnp.zeros_like(x)
    g2 = lambda y: jnp.broadcast_to(sde.diffusion(t, y) ** 2, y.shape)
    flat = x.reshape(-1)
    jac = jax.jacfwd(lambda y: g2(y.reshape(x.shape)).reshape(-1))(flat)
    return jnp.diagonal(jac).reshape(x.shape)


class ReverseSDE(AbstractSDE):
    r"""The reverse-time SDE of Anderson (1982), written in forward time $t$.

    Integrated from $t = T$ down to $t = 0$ it has the same marginals $p_t$ as the forward SDE:

    $$\mathrm{d}x = \big[f(t, x) - \nabla\cdot(g g^\top)
      - g g^\top\nabla_x\log p_t(x)\big]\,\mathrm{d}t + g(t, x)\,\mathrm{d}\bar W.$$

    `drift` returns the bracket; time runs backwards, so a sampler steps with $\mathrm{d}t < 0$.
    See [the reverse-time SDE](../derivations/reverse-sde.md).
    """

    sde: AbstractSDE
    score: ScoreFn

    # explicit, because pyright would otherwise count the base's `T: AbstractVar` as a field
    def __init__(self, sde: AbstractSDE, score: ScoreFn):
        self.sde = sde
        self.score = score

    @property
    def T(self) -> float:  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.sde.T

    @property
    def state_dependent_diffusion(self) -> bool:
        return self.sde.state_dependent_diffusion

    def drift(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        g = self.sde.diffusion(t, x)
        s = self.score(jnp.asarray(t, x.dtype), x)
        return self.sde.drift(t, x) - _g2_divergence(self.sde, t, x) - g**2 * s

    def diffusion(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "..."]:
        return self.sde.diffusion(t, x)


def reverse_sde(sde: AbstractSDE, score: ScoreFn) -> ReverseSDE:
    r"""Build the reverse-time SDE of `sde` from a score function `score(t, x)`.

    Args:
        sde: any [`AbstractSDE`][scoredyn.AbstractSDE].
        score: $(t, x) \mapsto \nabla_x \log p_t(x)$.

    Returns:
        A [`ReverseSDE`][scoredyn.ReverseSDE] (an `AbstractSDE` to be integrated from $T$ to 0).
    """
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be a scoredyn AbstractSDE, got {type(sde).__name__}.")
    if not callable(score):
        raise TypeError(f"`score` must be callable (t, x) -> array, got {score!r}.")
    return ReverseSDE(sde, score)


class ProbabilityFlow(eqx.Module):
    r"""The probability-flow ODE vector field $(t, x) \mapsto \mathrm{d}x/\mathrm{d}t$.

    $$\frac{\mathrm{d}x}{\mathrm{d}t} = f(t, x) - \tfrac12\nabla\cdot(g g^\top)
      - \tfrac12\, g g^\top\,\nabla_x\log p_t(x).$$

    Its flow carries $p_0$ to $p_t$ for every $t$, deterministically.
    See [the probability-flow ODE](../derivations/probability-flow.md).
    """

    sde: AbstractSDE
    score: ScoreFn

    def __call__(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        g = self.sde.diffusion(t, x)
        corr = _g2_divergence(self.sde, t, x)
        s = self.score(jnp.asarray(t, x.dtype), x)
        return self.sde.drift(t, x) - 0.5 * corr - 0.5 * g**2 * s


def probability_flow(sde: AbstractSDE, score: ScoreFn) -> ProbabilityFlow:
    r"""Build the probability-flow ODE vector field of `sde` from `score(t, x)`.

    Args:
        sde: any [`AbstractSDE`][scoredyn.AbstractSDE].
        score: $(t, x) \mapsto \nabla_x \log p_t(x)$.

    Returns:
        A [`ProbabilityFlow`][scoredyn.ProbabilityFlow] module, callable as `vf(t, x)`.
    """
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be a scoredyn AbstractSDE, got {type(sde).__name__}.")
    if not callable(score):
        raise TypeError(f"`score` must be callable (t, x) -> array, got {score!r}.")
    return ProbabilityFlow(sde, score)
