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
from ._sharding import batch_mesh as batch_mesh, sharded_vmap as sharded_vmap
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
from ._likelihood import (
    bits_per_dim as bits_per_dim,
    divergence as divergence,
    hutchinson_divergence as hutchinson_divergence,
    hutchinson_probes as hutchinson_probes,
    log_likelihood as log_likelihood,
)
from ._solve import (
    decode as decode,
    dpm_solver as dpm_solver,
    encode as encode,
    sample_dpm_solver as sample_dpm_solver,
    sample_ode as sample_ode,
    sample_pc as sample_pc,
    sample_sde as sample_sde,
    simulate_sde as simulate_sde,
)
# -- discrete (DDPM / DDIM) --
from ._discrete import (
    ddim_step as ddim_step,
    diffusion_loss as diffusion_loss,
    DiscreteSchedule as DiscreteSchedule,
    discretized_gaussian_log_likelihood as discretized_gaussian_log_likelihood,
    forward_posterior as forward_posterior,
    gaussian_kl as gaussian_kl,
    posterior_variance as posterior_variance,
    respace as respace,
    reverse_step as reverse_step,
    reverse_variances as reverse_variances,
    sample_discrete as sample_discrete,
    trajectory as trajectory,
    variational_bound as variational_bound,
    VariationalBound as VariationalBound,
)
# -- namespaces: analytic, reparam, nn --
from . import analytic as analytic
from . import nn as nn
from . import reparam as reparam

try:
    __version__ = importlib.metadata.version("scoredyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
