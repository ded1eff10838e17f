"""Exact oracles: Gaussian mixtures whose diffused marginals stay Gaussian mixtures."""

from ._mixture import GaussianMixture as GaussianMixture, MixtureScore as MixtureScore
