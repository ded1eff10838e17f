r"""The probability-flow ODE as a solver value: any diffrax ODE solver and step-size controller.

$$\frac{\mathrm{d}x}{\mathrm{d}t} = f(t)\,x - \tfrac12 g(t)^2\,s(t, x),\qquad
  s(t, x) = \texttt{model.score(process, t, x, *cond)},$$

integrated from `grid[0]` to `grid[-1]` in ONE `diffrax.diffeqsolve` (the grid's interior
points are only where the trajectory is saved). [`encode`][scoredyn.encode] runs it on the
flipped grid, from data at $t_\epsilon$ up to $T$. See
[the probability-flow ODE](../derivations/probability-flow.md#the-probability-flow-ode).
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._custom_types import Key
from .._sde import AbstractLinearSDE, probability_flow
from ._continuous import ModelScore, check_grid, check_linear_process, solution_ys
from ._utils import (
    check_controller,
    check_progress_meter,
    check_score,
    check_solver,
    evals_per_step,
    solution_stats,
)
from .base import AbstractSolver, AbstractState, Sample


class _TimeCast(eqx.Module):
    """Adapt `fn(t, x)` to diffrax's `(t, y, args)`, casting `t` to the state's dtype."""

    fn: Callable[..., Array]

    def __call__(self, t, y, args):
        return self.fn(jnp.asarray(t, y.dtype), y)


def integrate_flow(
    flow,
    x: Array,
    t0,
    t1,
    *,
    solver,
    stepsize_controller,
    dt0,
    max_steps,
    throw,
    saveat,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
):
    """One `diffrax.diffeqsolve` of `dx/dt = flow(t, x)` from `t0` to `t1` (no checks): the
    kernel shared by `solve_flow` and [`ODE`][scoredyn.ODE]. `t0`, `t1` and `dt0` are cast to
    x's dtype; `dt0` is used as given (its sign must match the direction). `progress_meter`
    is diffrax's (its default, `NoProgressMeter()`, is diffrax's default too)."""
    dtype = x.dtype
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_TimeCast(flow)),
        solver,
        jnp.asarray(t0, dtype),
        jnp.asarray(t1, dtype),
        None if dt0 is None else jnp.asarray(dt0, dtype),
        x,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=throw,
        progress_meter=progress_meter,
    )


_STAT_NAMES = ("num_steps", "num_accepted_steps", "num_rejected_steps")


class ODEState(AbstractState):
    """State of [`ODE`][scoredyn.ODE]: `x` at `grid[i]`, the grid, the score and the diffrax
    step counts summed over the steps taken so far."""

    x: Array
    i: Array
    grid: Array
    sde: AbstractLinearSDE
    score: ModelScore
    stats: dict[str, Array]


class ODE(AbstractSolver):
    r"""Sample (or encode) by integrating the probability-flow ODE with diffrax.

    The whole solve is one `diffrax.diffeqsolve` from `grid[0]` to `grid[-1]`; the interior
    grid points are save points only (`save_trajectory=True`: `SaveAt(ts=grid)`, dense
    interpolation), so a two-point grid `[T, t_eps]` is the usual choice. Repeated grid points
    are allowed (a zero-length step does nothing). An increasing grid integrates forwards in
    time, which is what [`encode`][scoredyn.encode] does. `Sample.x` is the state at
    `grid[-1]` whether or not the trajectory is saved.

    The step API integrates one grid interval per `step` with its own `diffeqsolve` (adaptive
    controllers restart their step size at each grid point), so a `lax.scan` of `step` agrees
    with the one-solve result to the solver's tolerance, not bit for bit.

    `Sample.stats` holds diffrax's `num_steps`, `num_accepted_steps`, `num_rejected_steps`
    and, for explicit Runge–Kutta solvers and Euler, `nfe` (score evaluations: stages per step,
    FSAL counted once).

    **Bits.** XLA folds arithmetic on constants (here the step times) differently from the same
    arithmetic on run-time values. A grid that is a constant of the compiled program (a NumPy
    array, or one built from Python numbers inside the jitted function) reproduces scoredyn
    0.1's `sample_ode` bit for bit; a grid passed in as a run-time array can differ in the last
    bits with `ConstantStepSize` (at most 1.1e-16 measured; the default adaptive solve gives
    the same bits either way).

    Args:
        solver: any diffrax ODE solver.
        stepsize_controller: a diffrax step-size controller (adaptive PID by default).
        dt0: initial step size, $|dt_0|$ (its sign follows the direction of the grid);
            `None` lets an adaptive controller choose; required with `ConstantStepSize`.
        max_steps: diffrax's step budget.
        throw: raise when the solver fails (diffrax's `throw`).
        progress_meter: diffrax's progress meter for the whole solve (`sd.sample`, `encode`,
            `decode`; the step API runs without one): `diffrax.TextProgressMeter()` prints
            percentages to stdout, `diffrax.TqdmProgressMeter()` draws a bar (needs tqdm).
            Under `jax.vmap` diffrax shows ONE meter for the batch, following its slowest
            element. The default `diffrax.NoProgressMeter()` adds nothing, and a meter does
            not change the result. See
            [progress on long work](sampling.md#progress-on-long-work).
        shared_steps: in [`sample_batch`][scoredyn.sample_batch], solve the whole batch as ONE
            `diffeqsolve` of the stacked state: one step size for the batch, accepted by the
            controller's error norm over the whole batch (diffrax's RMS over every element
            by default), instead of one adaptive solve per example. One loop, so no masked
            work while the slowest example finishes (measured 0.3-0.45x the per-example wall
            time at batch 512-4096); the batch's hard regions set every example's steps. But
            no example's own error is controlled, only the batch's average, and an example's
            result depends on its batch. `Sample.stats` then counts the one solve.
            [`sample`][scoredyn.sample] (one example) is unaffected. See
            [batching](../performance.md#batches-which-path).

    Raises:
        TypeError: at construction, for a non-diffrax `solver`, `stepsize_controller` or
            `progress_meter`; in [`sample`][scoredyn.sample], for a `process` that is not a
            linear SDE or a model whose output is not shaped like x.
        ValueError: at construction, for `dt0=None` with a constant step size or a `dt0`
            that is zero or not finite; for a grid that is not monotone or leaves $[0, T]$.

    Example:
        ```python
        sde = sd.VPSDE()
        x_T = sde.prior_sample(key, (2,))
        res = sd.sample(None, sde, sd.ScoreModel(score), sd.ODE(), jnp.array([1.0, 1e-3]), x_T)
        res.x, res.stats["nfe"]
        ```

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-5, atol=1e-5
    )
    dt0: float | None = None
    max_steps: int | None = eqx.field(static=True, default=4096)
    throw: bool = eqx.field(static=True, default=True)
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter()
    shared_steps: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.shared_steps, bool):
            raise TypeError(f"`shared_steps` must be a bool, got {self.shared_steps!r}.")
        check_solver(self.solver)
        check_controller(self.stepsize_controller)
        check_progress_meter(self.progress_meter)
        if self.dt0 is None and isinstance(self.stepsize_controller, diffrax.ConstantStepSize):
            raise ValueError(
                "`dt0` must be given (e.g. dt0=0.01) with a constant step size; got dt0=None "
                "with stepsize_controller=ConstantStepSize()."
            )
        if isinstance(self.dt0, int | float) and not (0 < abs(self.dt0) < float("inf")):
            raise ValueError(
                f"`dt0` must be nonzero and finite, got dt0={self.dt0}: its size |dt0| is the "
                "step, and its sign follows the grid (either sign solves from grid[0] to "
                "grid[-1], so the diffrax habit of a positive dt0 is fine)."
            )

    # -- the protocol ------------------------------------------------------------------------
    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float, increasing=True, ties=True)
        return False

    def can_encode(self) -> bool:
        return True

    def nfe(self, num_steps: int) -> int:
        """Not static: the number of score evaluations depends on the adaptive steps taken.
        Read `Sample.stats["nfe"]` instead."""
        raise NotImplementedError(
            "ODE's number of score evaluations is known only after the solve: read "
            "Sample.stats['nfe']."
        )

    def _setup(self, process, model, grid, x_T, cond):
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, increasing=True, ties=True, x=x_T)
        score = ModelScore(model, sde, tuple(cond))
        check_score(score, "model.score", grid[0], x_T)
        return sde, grid, score, x_T

    def _integrate(self, sde, score, x, t0, t1, saveat, *, split: bool = False, meter=None):
        dt0 = None
        if self.dt0 is not None:
            dt0 = jnp.where(t1 >= t0, 1.0, -1.0).astype(x.dtype) * jnp.abs(
                jnp.asarray(self.dt0, x.dtype)
            )
            if split and isinstance(self.stepsize_controller, diffrax.ConstantStepSize):
                # round(|t1 - t0| / |dt0|) equal steps (at least one): an interval a few ulps
                # longer than dt0 takes one step, not a second one of a few ulps. One step is
                # asked for with dt0 = 2 (t1 - t0), which diffrax clips to t1 exactly (with
                # dt0 = t1 - t0 it may land an ulp short and add a step of zero length).
                n = jnp.maximum(jnp.round((t1 - t0) / dt0), 1.0)
                dt0 = jnp.where(n == 1.0, 2.0 * (t1 - t0), (t1 - t0) / n)
        return integrate_flow(
            probability_flow(sde, score),
            x,
            t0,
            t1,
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            dt0=dt0,
            max_steps=self.max_steps,
            throw=self.throw,
            saveat=saveat,
            progress_meter=diffrax.NoProgressMeter() if meter is None else meter,
        )

    def _stats(self, sol) -> dict[str, Any]:
        return solution_stats(sol, self.solver)

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> ODEState:
        sde, grid, score, x_T = self._setup(process, model, grid, x_T, cond)
        zero = jnp.zeros((), jnp.int32)
        stats = {name: zero for name in _STAT_NAMES}
        if evals_per_step(self.solver) is not None:
            stats["nfe"] = zero
        return ODEState(x_T, zero, grid, sde, score, stats)

    def step(self, key: Key | None, state: AbstractState) -> tuple[ODEState, dict[str, Array]]:
        r"""Integrate over one grid interval `[grid[i], grid[i + 1]]` (one `diffeqsolve`);
        `key` is unused. With `ConstantStepSize` the interval is cut into
        $\max(1, \operatorname{round}(|t_{i+1} - t_i| / |dt_0|))$ equal steps. The info is that
        interval's diffrax statistics."""
        assert isinstance(state, ODEState)
        i = state.i
        t0, t1 = state.grid[i], state.grid[i + 1]
        saveat = diffrax.SaveAt(t1=True)
        sol = self._integrate(state.sde, state.score, state.x, t0, t1, saveat, split=True)
        info = {k: jnp.asarray(v, jnp.int32) for k, v in self._stats(sol).items()}
        stats = {k: state.stats[k] + info[k] for k in state.stats}
        new = eqx.tree_at(lambda s: (s.x, s.i, s.stats), state, (solution_ys(sol)[0], i + 1, stats))
        return new, info

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""One `diffeqsolve` from `grid[0]` to `grid[-1]`; with `save_trajectory`, the state
        at every grid point (dense interpolation inside the steps; the ends are the exact
        initial and final states)."""
        sde, grid, score, x_T = self._setup(process, model, grid, x_T, cond)
        if save_trajectory:
            saveat = diffrax.SaveAt(ts=grid, t1=True)
        else:
            saveat = diffrax.SaveAt(t1=True)
        sol = self._integrate(sde, score, x_T, grid[0], grid[-1], saveat, meter=self.progress_meter)
        ys = solution_ys(sol)
        x = ys[-1]
        traj = None
        if save_trajectory:
            traj = ys[:-1]
            traj = traj.at[0].set(x_T).at[-1].set(x)
        return Sample(x, traj, self._stats(sol))

    def solve_batch(
        self, key, process, model, grid, x_T, cond, save_trajectory, axis_name=None
    ) -> Sample:
        r"""Per-example adaptive solves under `jax.vmap` (the default), or with `shared_steps`
        one `diffeqsolve` of the whole batch `x_T` of shape `(B, *shape)`, the score vmapped
        over the examples inside the one vector field."""
        if not self.shared_steps:
            return super().solve_batch(
                key, process, model, grid, x_T, cond, save_trajectory, axis_name
            )
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, increasing=True, ties=True, x=x_T)
        score = _BatchScore(model, sde, tuple(cond))
        if save_trajectory:
            saveat = diffrax.SaveAt(ts=grid, t1=True)
        else:
            saveat = diffrax.SaveAt(t1=True)
        sol = self._integrate(sde, score, x_T, grid[0], grid[-1], saveat, meter=self.progress_meter)
        ys = solution_ys(sol)
        x = ys[-1]
        traj = None
        if save_trajectory:
            traj = jnp.moveaxis(ys[:-1].at[0].set(x_T).at[-1].set(x), 0, 1)
        return Sample(x, traj, self._stats(sol))


class _BatchScore(eqx.Module):
    """The score of every example of a batch `(B, *shape)` at one time: `model.score` vmapped
    over the examples and their `cond` (the vector field of a shared-step solve)."""

    model: Any
    process: AbstractLinearSDE
    cond: tuple

    def __call__(self, t, x):
        one = lambda x, c: self.model.score(self.process, t, x, *c)
        return jax.vmap(one)(x, self.cond)
