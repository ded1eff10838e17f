from .base import AbstractLinearSDE as AbstractLinearSDE, AbstractSDE as AbstractSDE
from .general import SDE as SDE
from .linear import (
    CosineVPSDE as CosineVPSDE,
    SubVPSDE as SubVPSDE,
    VESDE as VESDE,
    VPSDE as VPSDE,
)
from .perturb import perturb as perturb
from .reverse import (
    ProbabilityFlow as ProbabilityFlow,
    probability_flow as probability_flow,
    reverse_sde as reverse_sde,
    ReverseSDE as ReverseSDE,
)
