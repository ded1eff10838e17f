"""scoredyn: the mathematics of score-based diffusion models and perturb-and-argmax
distributions, as pure JAX functions."""

import importlib.metadata

from . import toy as toy
from ._convert import (
    convert as convert,
    eps_to_score as eps_to_score,
    score_to_eps as score_to_eps,
    v_to_eps as v_to_eps,
    x0_to_eps as x0_to_eps,
)
from ._sde import (
    AbstractLinearSDE as AbstractLinearSDE,
    AbstractSDE as AbstractSDE,
    CosineVPSDE as CosineVPSDE,
    perturb as perturb,
    probability_flow as probability_flow,
    ProbabilityFlow as ProbabilityFlow,
    reverse_sde as reverse_sde,
    ReverseSDE as ReverseSDE,
    SDE as SDE,
    SubVPSDE as SubVPSDE,
    VESDE as VESDE,
    VPSDE as VPSDE,
)

# -- solve / likelihood (foundation) --
# -- discrete (DDPM / DDIM) --
# -- namespaces: analytic, reparam, nn --

try:
    __version__ = importlib.metadata.version("scoredyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
