"""Analytic-DPM and Extended-Analytic-DPM: optimal reverse variances, covariances and trajectories.

See the derivations [Optimal reverse variance](../derivations/analytic-dpm.md) and
[Imperfect mean](../derivations/extended-analytic-dpm.md).
"""

from ._extended import (
    DiagonalVariance as DiagonalVariance,
    npr_covariance as npr_covariance,
    npr_dpm_loss as npr_dpm_loss,
    npr_variance_fn as npr_variance_fn,
    sn_covariance as sn_covariance,
    sn_dpm_loss as sn_dpm_loss,
    sn_variance_fn as sn_variance_fn,
    step_variance as step_variance,
)
from ._gamma import GammaEstimate as GammaEstimate, estimate_gamma as estimate_gamma
from ._monotone import monotone_ms_eps as monotone_ms_eps
from ._solvers import (
    NPRDPM as NPRDPM,
    SNDPM as SNDPM,
    AnalyticDDIM as AnalyticDDIM,
    AnalyticDPM as AnalyticDPM,
)
from ._trajectory import (
    optimal_trajectories as optimal_trajectories,
    optimal_trajectory as optimal_trajectory,
    trajectory_cost as trajectory_cost,
    trajectory_costs as trajectory_costs,
)
from ._variance import (
    optimal_variance as optimal_variance,
    optimal_variances as optimal_variances,
    variance_bounds as variance_bounds,
    x0_variance as x0_variance,
)
