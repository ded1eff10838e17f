"""The exact noise prediction of a Gaussian mixture on a discrete schedule."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._custom_types import Time
from .._discrete import DiscreteSchedule
from ._mixture import GaussianMixture


def _index(sched: DiscreteSchedule, t) -> Array:
    N = sched.num_steps
    return jnp.clip(jnp.round(jnp.asarray(t) * (N / sched.T)).astype(jnp.int32), 0, N)


class DiscreteMixtureEps(eqx.Module):
    r"""Exact $\mathbb E[\varepsilon\mid x_n = x]$ of a mixture on a discrete schedule, as $(t, x)$.

    Called at $t = t_n = nT/N$ (the samplers' convention) it recovers
    $n = \operatorname{round}(tN/T)$
    and returns `mixture.eps_at(sqrt(alpha_bar[n]), sqrt(1 - alpha_bar[n]), x)`.
    """

    mixture: GaussianMixture
    sched: DiscreteSchedule

    def __call__(self, t: Time, x: Float[Array, " d"]) -> Float[Array, " d"]:
        alpha, sigma = self.sched.marginal(_index(self.sched, t))
        return self.mixture.eps_at(alpha, sigma, x).astype(x.dtype)


class DiscreteMixtureEps2(eqx.Module):
    r"""Exact $\mathbb E[\varepsilon^2\mid x_n = x]$ (elementwise) of a mixture on a discrete
    schedule, as $(t, x)$: the head SN-DPM learns
    ([`eps_moments`][scoredyn.toy.GaussianMixture.eps_moments])."""

    mixture: GaussianMixture
    sched: DiscreteSchedule

    def __call__(self, t: Time, x: Float[Array, " d"]) -> Float[Array, " d"]:
        alpha, sigma = self.sched.marginal(_index(self.sched, t))
        return self.mixture.eps_moments(alpha, sigma, x)[1].astype(x.dtype)


def _check(mixture, sched) -> None:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"`mixture` must be a GaussianMixture, got {type(mixture).__name__}.")
    if not isinstance(sched, DiscreteSchedule):
        raise TypeError(f"`sched` must be a DiscreteSchedule, got {type(sched).__name__}.")


def discrete_eps2_fn(mixture: GaussianMixture, sched: DiscreteSchedule) -> DiscreteMixtureEps2:
    r"""Exact second-moment head $(t, x) \mapsto \mathbb E[\varepsilon^2 \mid x_n = x]$ of a
    mixture (for [`sd.analytic.SNDPM`][scoredyn.analytic.SNDPM] on an oracle)."""
    _check(mixture, sched)
    return DiscreteMixtureEps2(mixture, sched)


def discrete_eps_fn(mixture: GaussianMixture, sched: DiscreteSchedule) -> DiscreteMixtureEps:
    r"""Exact eps-prediction $(t, x) \mapsto \mathbb E[\varepsilon \mid x_n = x]$ of a mixture.

    Example:
        ```python
        sched = sd.DiscreteSchedule.linear(1000)
        eps_fn = sd.toy.discrete_eps_fn(gm, sched)
        x0 = sd.sample_discrete(key, sched, eps_fn, x_T, sd.respace(1000, 100))
        ```
    """
    _check(mixture, sched)
    return DiscreteMixtureEps(mixture, sched)
