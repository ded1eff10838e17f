r"""Shared pieces of the continuous-time solvers: the process and grid checks, and the score
of a model as a plain `(t, x)` callable.

A continuous grid is a 1-D float array of times inside $[0, T]$, strictly decreasing from
`grid[0]` (usually $T$) to `grid[-1]` (usually $t_\epsilon$). [`encode`][scoredyn.encode]
hands a solver the flipped, increasing grid; only solvers that can run backwards accept it.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._misc import check_vector_field, is_concrete, time_slack
from .._model import AbstractModel
from .._sde import AbstractLinearSDE
from .base import AbstractState


class ModelScore(eqx.Module):
    r"""`model.score(process, t, x, *cond)` as a score function `(t, x) -> array like x`."""

    model: AbstractModel
    process: AbstractLinearSDE
    cond: tuple

    def __call__(self, t, x):
        return self.model.score(self.process, t, x, *self.cond)


def check_linear_process(process, solver) -> AbstractLinearSDE:
    """A continuous-time solver needs a linear SDE (its drift and diffusion coefficients)."""
    if not isinstance(process, AbstractLinearSDE):
        hint = ""
        if type(process).__name__ == "DiscreteSchedule":
            hint = (
                " A DiscreteSchedule is sampled by the discrete solvers (sd.DDPM(), sd.DDIM()) "
                "on an integer trajectory."
            )
        raise TypeError(
            f"`process` must be a linear SDE (sd.VPSDE(), sd.VESDE(), ...) for "
            f"{type(solver).__name__}, got {type(process).__name__}.{hint}"
        )
    return process


def check_grid(
    grid,
    process: AbstractLinearSDE,
    dtype,
    *,
    increasing: bool = False,
    ties: bool = False,
    x: Any = None,
) -> tuple[Array, Any]:
    r"""A continuous grid in `dtype`: times in $[0, T]$, monotone.

    Strictly decreasing by default; with `increasing`, a strictly increasing grid is also
    accepted (a solver run backwards by `encode`); with `ties`, equal neighbours are allowed
    (but not `grid[0] == grid[-1]`). A concrete grid raises `ValueError` naming `grid`.

    A traced grid is checked at run time with `eqx.error_if` on `x` (the state), which is
    returned as `(grid, x)`: the grid itself is left untouched so that XLA can still fold a
    grid built from constants into the program (scoredyn 0.1's kernels had their times as
    compile-time constants, and fixed-step diffrax solves only give the same bits then).
    """
    grid = jnp.asarray(grid)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"`grid` must be a 1-D array of at least 2 times (see sd.grids), got shape "
            f"{grid.shape}."
        )
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        raise TypeError(
            f"`grid` of a continuous-time solver must hold float times, got dtype {grid.dtype} "
            "(integer trajectories are for a DiscreteSchedule)."
        )
    # the rounding allowance of the coarser of the given and the working dtype: a float32 grid
    # checked in float64 holds T rounded to float32 (0.999 rounds up, to 0.99900001)
    coarse = max(grid.dtype, jnp.dtype(dtype), key=lambda d: jnp.finfo(d).eps)
    grid = grid.astype(dtype)
    T = process.T
    slack = time_slack(T, coarse)
    order = "strictly decreasing" + (" or strictly increasing" if increasing else "")
    if ties:
        order = order.replace("strictly ", "") + " (ties allowed, but grid[0] != grid[-1])"
    if is_concrete(grid, T):
        v = np.asarray(grid, np.float64)
        Tv = float(T)
        if not np.all(np.isfinite(v)) or np.any((v < -slack) | (v > Tv + slack)):
            raise ValueError(f"`grid` must hold times in [0, T] = [0, {Tv}], got {v}.")
        d = np.diff(v)
        down = np.all(d <= 0) if ties else np.all(d < 0)
        up = np.all(d >= 0) if ties else np.all(d > 0)
        if not ((down or (increasing and up)) and v[0] != v[-1]):
            raise ValueError(f"`grid` must be {order} (from T towards t_eps), got {v}.")
        return grid, x
    d = jnp.diff(grid)
    down = jnp.all(d <= 0) if ties else jnp.all(d < 0)
    up = jnp.all(d >= 0) if ties else jnp.all(d > 0)
    ok = (down | up) if increasing else down
    ok = ok & (grid[0] != grid[-1])
    ok = ok & jnp.all((grid >= -slack) & (grid <= jnp.asarray(T, grid.dtype) + slack))
    if x is not None:
        x = eqx.error_if(x, ~ok, f"`grid` must be {order}, with times in [0, T].")
    return grid, x


class GridState(AbstractState):
    """State of a fixed-grid continuous solver: `x` at `grid[i]`, the grid (in x's dtype), the
    SDE and the model's score."""

    x: Array
    i: Array
    grid: Array
    sde: AbstractLinearSDE
    score: ModelScore


def init_grid_state(solver, process, model, grid, x_T, cond) -> GridState:
    """Checks (a linear SDE, a strictly decreasing grid in $[0, T]$, a model shaped like x),
    then the state at `grid[0]`."""
    sde = check_linear_process(process, solver)
    grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
    score = ModelScore(model, sde, tuple(cond))
    check_vector_field(score, "model.score", grid[0], x_T)
    return GridState(x_T, jnp.zeros((), jnp.int32), grid, sde, score)


def scan_states(fn, state, xs, save: bool):
    r"""`lax.scan` of `state = fn(state, x)` over `xs`, carrying only the state's arrays (a state
    holds the model, whose network may be a plain function, which a scan cannot carry). Returns
    the final state and, with `save`, the stacked `state.x` after each step."""
    dyn, static = eqx.partition(state, eqx.is_array)

    def body(dyn, inp):
        st = fn(eqx.combine(dyn, static), inp)
        return eqx.partition(st, eqx.is_array)[0], (st.x if save else None)

    dyn, xs_out = lax.scan(body, dyn, xs)
    return eqx.combine(dyn, static), xs_out


def solution_ys(sol) -> Array:
    """`sol.ys` of a diffrax solution (always saved here)."""
    ys = sol.ys
    assert ys is not None
    return ys


def with_start(x_T: Array, xs) -> Array:
    """The trajectory `[x_T, *xs]` of a scanned solve."""
    assert xs is not None
    return jnp.concatenate([x_T[None], xs], axis=0)
