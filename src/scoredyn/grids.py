"""Grids as values: the times (continuous processes) or step indices (discrete schedules) that
a sampler visits. See [Grids](../derivations/grids.md)."""

from ._solve.grids import (
    even as even,
    karras as karras,
    leading as leading,
    linspace as linspace,
    log_snr as log_snr,
    optimal as optimal,
    quadratic as quadratic,
    quadratic_trajectory as quadratic_trajectory,
    trailing as trailing,
    uniform as uniform,
    uniform_trajectory as uniform_trajectory,
)
