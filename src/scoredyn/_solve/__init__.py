from .corrector import sample_pc as sample_pc
from .dpm_solver import dpm_solver as dpm_solver, sample_dpm_solver as sample_dpm_solver
from .flow_map import decode as decode, encode as encode
from .ode import sample_ode as sample_ode
from .sde import sample_sde as sample_sde, simulate_sde as simulate_sde
