from .base import AbstractSolver as AbstractSolver, AbstractState as AbstractState, Sample as Sample
from .bound import variational_bound as variational_bound
from .corrector import sample_pc as sample_pc
from .ddim import DDIM as DDIM
from .ddpm import DDPM as DDPM
from .diffrax_sde import DiffraxSDE as DiffraxSDE
from .discrete import (
    AbstractDiscreteSolver as AbstractDiscreteSolver,
    Chain as Chain,
    DiscreteInfo as DiscreteInfo,
    DiscreteState as DiscreteState,
    make_chain as make_chain,
)
from .dpm_solver import (
    DPMSolver as DPMSolver,
    dpm_solver as dpm_solver,
    sample_dpm_solver as sample_dpm_solver,
)
from .dpm_solver_adaptive import DPMSolverAdaptive as DPMSolverAdaptive
from .dpm_solver_fast import DPMSolverFast as DPMSolverFast
from .dpm_solver_multistep import (
    DPMSolverInfo as DPMSolverInfo,
    DPMSolverMultistep as DPMSolverMultistep,
)
from .dpm_solver_pp import DPMSolverPP as DPMSolverPP, DPMSolverPPInfo as DPMSolverPPInfo
from .edm import EDMHeun as EDMHeun
from .euler_maruyama import EulerMaruyama as EulerMaruyama
from .flow_map import decode as decode, encode as encode
from .ode import sample_ode as sample_ode
from .ode_solver import ODE as ODE
from .predictor_corrector import PredictorCorrector as PredictorCorrector
from .sde import sample_sde as sample_sde, simulate_sde as simulate_sde
from .unipc import UniPC as UniPC, UniPCVariant as UniPCVariant
from .verbs import sample as sample, sample_batch as sample_batch
