from .base import AbstractLinearSDE as AbstractLinearSDE, AbstractSDE as AbstractSDE
from .general import SDE as SDE
from .linear import (
    VESDE as VESDE,
    VPSDE as VPSDE,
    CosineVPSDE as CosineVPSDE,
    SubVPSDE as SubVPSDE,
)
from .perturb import perturb as perturb
from .reverse import (
    ProbabilityFlow as ProbabilityFlow,
    ReverseSDE as ReverseSDE,
    probability_flow as probability_flow,
    reverse_sde as reverse_sde,
)
