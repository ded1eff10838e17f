from .divergence import (
    divergence as divergence,
    hutchinson_divergence as hutchinson_divergence,
    hutchinson_probes as hutchinson_probes,
)
from .likelihood import bits_per_dim as bits_per_dim, log_likelihood as log_likelihood
from .t_eps import dequantization_t_eps as dequantization_t_eps
