"""Exact oracles: Gaussian mixtures whose diffused marginals stay Gaussian mixtures."""

from ._discrete import (
    DiscreteMixtureEps as DiscreteMixtureEps,
    DiscreteMixtureEps2 as DiscreteMixtureEps2,
    discrete_eps2_fn as discrete_eps2_fn,
    discrete_eps_fn as discrete_eps_fn,
)
from ._mixture import GaussianMixture as GaussianMixture, MixtureScore as MixtureScore
