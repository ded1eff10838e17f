from .losses import diffusion_loss as diffusion_loss
from .posterior import (
    forward_posterior as forward_posterior,
    posterior_variance as posterior_variance,
    reverse_variances as reverse_variances,
)
from .respace import respace as respace, trajectory as trajectory
from .sampler import sample_discrete as sample_discrete
from .schedule import DiscreteSchedule as DiscreteSchedule
from .step import ddim_step as ddim_step, reverse_step as reverse_step
from .vlb import (
    VariationalBound as VariationalBound,
    discretized_gaussian_log_likelihood as discretized_gaussian_log_likelihood,
    gaussian_kl as gaussian_kl,
)
