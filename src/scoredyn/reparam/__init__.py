"""Reparameterised discrete distributions by perturb-and-argmax.

`PerturbMax(mu, noise)` is the distribution of $\\arg\\max_j(\\mu_j + \\varepsilon_j)$ for i.i.d.
noise from a family: `Gumbel` (softmax), `Gaussian`, `Logistic`, `Laplace`, `Uniform`, or
your own subclass of `AbstractNoise`.
"""

from ._noise import (
    AbstractNoise as AbstractNoise,
    Gaussian as Gaussian,
    Gumbel as Gumbel,
    Laplace as Laplace,
    Logistic as Logistic,
    Uniform as Uniform,
)
from ._perturb_max import PerturbMax as PerturbMax
