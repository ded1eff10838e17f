"""scoredyn: the mathematics of score-based diffusion models and perturb-and-argmax
distributions, as pure JAX functions."""

import importlib.metadata

# -- namespaces: analytic, reparam, nn --
from . import analytic as analytic, grids as grids, nn as nn, reparam as reparam, toy as toy
from ._convert import (
    convert as convert,
    eps_to_score as eps_to_score,
    score_to_eps as score_to_eps,
    v_to_eps as v_to_eps,
    x0_to_eps as x0_to_eps,
)

# -- discrete (DDPM / DDIM) --
from ._discrete import (
    DiscreteSchedule as DiscreteSchedule,
    VariationalBound as VariationalBound,
    ddim_step as ddim_step,
    diffusion_loss as diffusion_loss,
    discretized_gaussian_log_likelihood as discretized_gaussian_log_likelihood,
    forward_posterior as forward_posterior,
    gaussian_kl as gaussian_kl,
    posterior_variance as posterior_variance,
    respace as respace,
    reverse_step as reverse_step,
    reverse_variances as reverse_variances,
    sample_discrete as sample_discrete,
    trajectory as trajectory,
)
from ._discrete.diffusers_config import (
    DiffusersConfig as DiffusersConfig,
    from_diffusers_config as from_diffusers_config,
)

# -- flow matching: interpolants as processes --
from ._flow import (
    AbstractInterpolant as AbstractInterpolant,
    Interpolant as Interpolant,
    RectifiedFlow as RectifiedFlow,
    TimeShift as TimeShift,
    VelocityModel as VelocityModel,
    flow_matching_loss as flow_matching_loss,
)
from ._inverse import (  # inverse problems: inpainting, RePaint, DPS, DDIM inversion
    DPS as DPS,
    DPSGuidance as DPSGuidance,
    Inpaint as Inpaint,
    RePaint as RePaint,
    RePaintInfo as RePaintInfo,
    ddim_inversion as ddim_inversion,
)

# -- solve / likelihood (foundation) --
from ._likelihood import (
    bits_per_dim as bits_per_dim,
    dequantization_t_eps as dequantization_t_eps,
    divergence as divergence,
    hutchinson_divergence as hutchinson_divergence,
    hutchinson_probes as hutchinson_probes,
    log_likelihood as log_likelihood,
)
from ._model import (
    AbstractModel as AbstractModel,
    BatchedNet as BatchedNet,
    ClassifierFreeGuidance as ClassifierFreeGuidance,
    ClassifierGuidance as ClassifierGuidance,
    ClipX0 as ClipX0,
    DynamicThreshold as DynamicThreshold,
    EDMPrecond as EDMPrecond,
    EpsModel as EpsModel,
    ScoreModel as ScoreModel,
    VModel as VModel,
    X0Model as X0Model,
)
from ._process import AbstractProcess as AbstractProcess
from ._sde import (
    SDE as SDE,
    VESDE as VESDE,
    VPSDE as VPSDE,
    AbstractLinearSDE as AbstractLinearSDE,
    AbstractSDE as AbstractSDE,
    CosineVPSDE as CosineVPSDE,
    ProbabilityFlow as ProbabilityFlow,
    ReverseSDE as ReverseSDE,
    SubVPSDE as SubVPSDE,
    perturb as perturb,
    probability_flow as probability_flow,
    reverse_sde as reverse_sde,
)
from ._sharding import batch_mesh as batch_mesh, sharded_vmap as sharded_vmap
from ._solve import (
    DDIM as DDIM,
    DDPM as DDPM,
    ODE as ODE,
    AbstractDiscreteSolver as AbstractDiscreteSolver,
    AbstractSolver as AbstractSolver,
    AbstractState as AbstractState,
    Chain as Chain,
    DiffraxSDE as DiffraxSDE,
    DiscreteInfo as DiscreteInfo,
    DiscreteState as DiscreteState,
    DPMSolver as DPMSolver,
    DPMSolverAdaptive as DPMSolverAdaptive,
    DPMSolverFast as DPMSolverFast,
    DPMSolverInfo as DPMSolverInfo,
    DPMSolverMultistep as DPMSolverMultistep,
    DPMSolverPP as DPMSolverPP,
    DPMSolverPPInfo as DPMSolverPPInfo,
    EDMHeun as EDMHeun,
    EulerMaruyama as EulerMaruyama,
    PredictorCorrector as PredictorCorrector,
    Sample as Sample,
    UniPC as UniPC,
    UniPCVariant as UniPCVariant,
    decode as decode,
    dpm_solver as dpm_solver,
    encode as encode,
    make_chain as make_chain,
    sample as sample,
    sample_batch as sample_batch,
    sample_dpm_solver as sample_dpm_solver,
    sample_ode as sample_ode,
    sample_pc as sample_pc,
    sample_sde as sample_sde,
    simulate_sde as simulate_sde,
    variational_bound as variational_bound,
)

try:
    __version__ = importlib.metadata.version("scoredyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
