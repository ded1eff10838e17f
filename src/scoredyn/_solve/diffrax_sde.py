r"""The reverse-time SDE through diffrax as a solver value: any diffrax SDE solver on a
`VirtualBrownianTree`.

$$\mathrm{d}x = \big[f(t)\,x - g(t)^2\,s(t, x)\big]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar W,
  \qquad s(t, x) = \texttt{model.score(process, t, x, *cond)},$$

integrated from `grid[0]` down to `grid[-1]` in running time $\varsigma = t_0 - t$, so that
diffrax runs forwards ([`simulate_sde`][scoredyn.simulate_sde]). With `diffrax.Euler()` and
fixed steps this is Euler–Maruyama, with its Brownian increments read off one Brownian tree
(the key names the whole path). See
[sampling the reverse SDE](../derivations/reverse-sde.md#sampling).
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array

from .._custom_types import Key
from .._misc import is_concrete
from .._sde import AbstractSDE, reverse_sde
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

_LEVY_AREAS = (diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea, diffrax.SpaceTimeTimeLevyArea)


def _levy_area(solver):
    """The cheapest Brownian object the solver accepts (plain increments for Euler/Heun)."""
    minimal = getattr(solver, "minimal_levy_area", diffrax.AbstractBrownianIncrement)
    for area in _LEVY_AREAS:
        if issubclass(area, minimal):
            return area
    raise TypeError(f"`solver` needs an unsupported Levy area {minimal}.")  # pragma: no cover


class _Drift(eqx.Module):
    """Drift in running time $s$: $\\varsigma\\, b(\\tau, y)$ with $\\tau = t_0 + \\varsigma s$."""

    sde: AbstractSDE
    t0: Array
    sign: float = eqx.field(static=True)

    def __call__(self, s, y, args):
        tau = self.t0 + self.sign * jnp.asarray(s, y.dtype)
        return self.sign * self.sde.drift(tau, y)


class _Diffusion(eqx.Module):
    """Diagonal diffusion $g(\\tau(s), y)$ as a lineax operator."""

    sde: AbstractSDE
    t0: Array
    sign: float = eqx.field(static=True)

    def __call__(self, s, y, args):
        tau = self.t0 + self.sign * jnp.asarray(s, y.dtype)
        g = jnp.broadcast_to(jnp.asarray(self.sde.diffusion(tau, y), y.dtype), y.shape)
        return lx.DiagonalLinearOperator(g)


def brownian_terms(
    key, sde: AbstractSDE, x: Array, t0: Array, span: Array, sign: float, solver, brownian_tol
):
    """Drift and diffusion of `sde` in running time $s = \varsigma (t - t_0)$, driven by a
    `VirtualBrownianTree` on $[0, span]$ named by `key`."""
    dtype = x.dtype
    bm = diffrax.VirtualBrownianTree(
        jnp.zeros((), dtype),
        span,
        tol=brownian_tol,
        shape=jax.ShapeDtypeStruct(x.shape, dtype),
        key=key,
        levy_area=_levy_area(solver),
    )
    return diffrax.MultiTerm(
        diffrax.ODETerm(_Drift(sde, t0, sign)),
        diffrax.ControlTerm(_Diffusion(sde, t0, sign), bm),
    )


def simulate(
    key,
    sde: AbstractSDE,
    x: Array,
    t0,
    t1,
    sign: float,
    *,
    solver,
    num_steps: int | None,
    stepsize_controller,
    brownian_tol,
    max_steps,
    throw,
    ts=None,
    save_t1: bool = False,
):
    """One `diffeqsolve` of `sde` from `t0` to `t1` (no checks): the kernel shared by
    `simulate_sde`, `sample_sde` and [`DiffraxSDE`][scoredyn.DiffraxSDE]. Returns the diffrax
    solution; its `ys` are the state at `t1` (`ts=None`), or at `ts` followed, with `save_t1`,
    by the state at `t1`."""
    dtype = x.dtype
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    span = jnp.abs(t1 - t0)
    dt0 = None if num_steps is None else span / num_steps
    if brownian_tol is None:
        assert dt0 is not None  # callers check: num_steps or brownian_tol is given
        brownian_tol = dt0 / 2
    if ts is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        saveat = diffrax.SaveAt(ts=sign * (ts - t0), t1=save_t1)
    terms = brownian_terms(key, sde, x, t0, span, sign, solver, brownian_tol)
    return diffrax.diffeqsolve(
        terms,
        solver,
        jnp.zeros((), dtype),
        span,
        dt0,
        x,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=throw,
    )


@eqx.filter_jit
def simulate_kernel(
    key,
    sde,
    x,
    t0,
    t1,
    sign,
    solver,
    num_steps,
    stepsize_controller,
    brownian_tol,
    max_steps,
    throw,
    ts,
    return_stats,
):
    """The simulation of `simulate_sde`, compiled whole: eager calls and calls under the user's
    `jax.jit` run the same program, so the same key gives bit-identical paths."""
    sol = simulate(
        key,
        sde,
        x,
        t0,
        t1,
        sign,
        solver=solver,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        brownian_tol=brownian_tol,
        max_steps=max_steps,
        throw=throw,
        ts=ts,
    )
    ys = solution_ys(sol)
    out = ys[0] if ts is None else ys
    if return_stats:
        return out, solution_stats(sol, solver)
    return out


class DiffraxSDEState(AbstractState):
    """State of [`DiffraxSDE`][scoredyn.DiffraxSDE]: `x` at `grid[i]`, the running times
    $s_k = |t_k - t_0|$ of the grid, the reverse-time SDE, the Brownian tree's span and
    tolerance, and diffrax's step counts so far."""

    x: Array
    i: Array
    s: Array
    t0: Array
    span: Array
    brownian_tol: Array
    sde: AbstractSDE
    stats: dict[str, Array]


_STAT_NAMES = ("num_steps", "num_accepted_steps", "num_rejected_steps")


class DiffraxSDE(AbstractSolver):
    r"""Sample by integrating the reverse-time SDE with a diffrax SDE solver.

    $$\mathrm{d}x = \big[f(t)\,x - g(t)^2\,s(t, x)\big]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar W$$

    from `grid[0]` down to `grid[-1]`, in ONE `diffrax.diffeqsolve` driven by a
    `diffrax.VirtualBrownianTree` whose key is the `key` of [`sample`][scoredyn.sample].
    The default `diffrax.Euler()` with fixed steps is Euler–Maruyama,
    $x_{t-h} = x_t - h\,[f x_t - g^2 s(t, x_t)] + g\,\Delta\bar W$.

    **The grid.** With fixed steps (`stepsize_controller=None`) the solve takes $K$ equal steps
    from `grid[0]` to `grid[-1]`, $K$ = `len(grid) - 1`, so the grid must be uniform
    (checked to a relative $10^{-3}$ of a step; use
    [`EulerMaruyama`][scoredyn.EulerMaruyama] for any other grid). With an adaptive
    controller the grid only gives the ends, the initial step $|t_1 - t_0|$ and the save points.
    The trajectory (`save_trajectory=True`) is the path at the grid points (diffrax's
    interpolation between steps; the ends are the exact initial and final states).

    **Keys.** The key names one Brownian path over the whole solve. The step API reads the
    increment of that path over its grid interval, so `step` is driven with the SAME key at
    every step ([`step_key`][scoredyn.DiffraxSDE.step_key] returns it unchanged); a `lax.scan`
    of `step` then agrees with the one-solve result to rounding of the step times.
    `sd.sample_sde(key, ...)` is `sd.sample(k_bm, ..., sd.DiffraxSDE(), grid, x_T)` with
    `k_prior, k_bm = jax.random.split(key)` and `x_T = sde.prior_sample(k_prior, shape)`.

    `Sample.stats` holds diffrax's `num_steps`, `num_accepted_steps`, `num_rejected_steps`
    and, for Euler and explicit Runge–Kutta solvers, `nfe`.

    **Bits.** XLA folds arithmetic on constants (the step times, the tree's span) differently
    from the same arithmetic on run-time values. A grid that is a constant of the compiled
    program (a NumPy array, or one built from Python numbers inside the jitted function)
    reproduces scoredyn 0.1's `sample_sde` bit for bit (checked for 12 to 1000 steps). The same
    grid passed as a run-time array gives the same path up to the rounding of the step times,
    which the Brownian tree amplifies where a step time falls on one of its dyadic nodes:
    differences up to about 1e-8 were measured (2e-15 with 50 steps). For identical bits, pass
    the grid the same way each time.

    Args:
        solver: a diffrax SDE solver (`Euler`, `Heun`, `ShARK`, ...); the Lévy area it needs
            is provided.
        stepsize_controller: `None` for fixed steps, or a diffrax controller (adaptive SDE
            stepping needs a solver with an error estimate and a small `brownian_tol`).
        brownian_tol: tolerance of the Brownian tree; default half a step,
            $|t_K - t_0| / (2K)$.
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        progress_meter: diffrax's progress meter for the whole solve (`sd.sample`; the step
            API runs without one): `diffrax.TextProgressMeter()` prints percentages to
            stdout, `diffrax.TqdmProgressMeter()` draws a bar (needs tqdm). Under `jax.vmap`
            diffrax shows ONE meter for the batch, following its slowest element. The default
            `diffrax.NoProgressMeter()` adds nothing, and a meter does not change the path.
            See [progress on long work](sampling.md#progress-on-long-work).

    Raises:
        TypeError: at construction, for a non-diffrax `solver`, `stepsize_controller` or
            `progress_meter`; in [`sample`][scoredyn.sample], for a `process` that is not a
            linear SDE.
        ValueError: for a grid that is not strictly decreasing inside $[0, T]$, or not uniform
            with fixed steps.

    Example:
        ```python
        grid = sd.grids.uniform(sde, 200)
        res = sd.sample(key, sde, sd.ScoreModel(score), sd.DiffraxSDE(), grid, x_T)
        ```

    References:
        Anderson, *Reverse-time diffusion equation models*, 1982; Song et al., arXiv:2011.13456.
    """

    solver: diffrax.AbstractSolver = diffrax.Euler()
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    brownian_tol: float | None = None
    max_steps: int | None = eqx.field(static=True, default=65_536)
    throw: bool = eqx.field(static=True, default=True)
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter()

    def __check_init__(self):
        check_solver(self.solver)
        check_progress_meter(self.progress_meter)
        if self.stepsize_controller is not None:
            check_controller(self.stepsize_controller)

    # -- the protocol ------------------------------------------------------------------------
    def is_stochastic(self, process, grid) -> bool:
        self._check_grid(grid, check_linear_process(process, self), float)
        return True

    def step_key(self, key: Key, i, num_steps: int) -> Key:
        """The same key at every step: it names the Brownian path of the whole solve."""
        return key

    def nfe(self, num_steps: int) -> int:
        """Score evaluations of a fixed-step solve with Euler or an explicit Runge–Kutta
        solver; otherwise known only after the solve (`Sample.stats["nfe"]`)."""
        per = evals_per_step(self.solver)
        if not self._fixed() or per is None:
            raise NotImplementedError(
                "DiffraxSDE's number of score evaluations is known only after this solve: read "
                "Sample.stats['nfe']."
            )
        return per[0] * num_steps + per[1]

    def _fixed(self) -> bool:
        c = self.stepsize_controller
        return c is None or isinstance(c, diffrax.ConstantStepSize)

    def controller(self) -> diffrax.AbstractStepSizeController:
        """The diffrax controller: `ConstantStepSize()` for fixed steps."""
        if self.stepsize_controller is None:
            return diffrax.ConstantStepSize()
        return self.stepsize_controller

    def _check_grid(self, grid, sde, dtype, x: Any = None) -> tuple[Array, Any]:
        grid, x = check_grid(grid, sde, dtype, x=x)
        if not self._fixed():
            return grid, x
        K = grid.shape[0] - 1
        if is_concrete(grid):
            v = np.asarray(grid, np.float64)
            h = (v[-1] - v[0]) / K
            dev = np.abs(np.diff(v) - h)
            if np.any(dev > 1e-3 * abs(h)):
                raise ValueError(
                    "`grid` must be uniform for DiffraxSDE with fixed steps (it takes K equal "
                    "steps from grid[0] to grid[-1]; use sd.EulerMaruyama() for other grids, "
                    f"or a stepsize_controller), got steps {np.diff(v)}."
                )
            return grid, x
        h = (grid[-1] - grid[0]) / K
        bad = jnp.any(jnp.abs(jnp.diff(grid) - h) > 1e-3 * jnp.abs(h))
        if x is not None:
            x = eqx.error_if(x, bad, "`grid` must be uniform for DiffraxSDE with fixed steps.")
        return grid, x

    def _setup(self, process, model, grid, x_T, cond):
        sde = check_linear_process(process, self)
        grid, x_T = self._check_grid(grid, sde, x_T.dtype, x_T)
        score = ModelScore(model, sde, tuple(cond))
        check_score(score, "model.score", grid[0], x_T)
        return reverse_sde(sde, score), grid, x_T

    def _stats(self, sol) -> dict[str, Any]:
        return solution_stats(sol, self.solver)

    def _times(self, grid):
        r"""Running times of the grid and the Brownian tolerance. With fixed steps
        $s_k = k h$, $h = |t_K - t_0|/K$ ($s_K = |t_K - t_0|$ exactly): the times of
        scoredyn 0.1's `sample_sde`, whose constant-folded program took exactly these steps.
        With a controller, $s_k = |t_k - t_0|$ (save points only)."""
        K = grid.shape[0] - 1
        t0 = grid[0]
        span = jnp.abs(grid[-1] - t0)
        h = span / K
        if self._fixed():
            s = (jnp.arange(K + 1, dtype=grid.dtype) * h).at[-1].set(span)
        else:
            s = jnp.abs(grid - t0).at[-1].set(span)
        tol = h / 2 if self.brownian_tol is None else jnp.asarray(self.brownian_tol, grid.dtype)
        return t0, span, h, s, tol

    def _solve_between(self, terms, s0, s1, dt0, x, saveat):
        if self._fixed():
            controller, dt0 = diffrax.StepTo(ts=jnp.stack([s0, s1])), None
        else:
            controller = self.controller()
        return diffrax.diffeqsolve(
            terms,
            self.solver,
            s0,
            s1,
            dt0,
            x,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=self.max_steps,
            throw=self.throw,
        )

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DiffraxSDEState:
        rev, grid, x_T = self._setup(process, model, grid, x_T, cond)
        t0, span, _, s, tol = self._times(grid)
        zero = jnp.zeros((), jnp.int32)
        stats = {name: zero for name in _STAT_NAMES}
        if evals_per_step(self.solver) is not None:
            stats["nfe"] = zero
        return DiffraxSDEState(x_T, zero, s, t0, span, tol, rev, stats)

    def step(self, key: Key | None, state: AbstractState) -> tuple[DiffraxSDEState, Any]:
        r"""Integrate over one grid interval with the increments of the Brownian path named by
        `key` (pass the same key at every step of one path). The info is the interval's
        diffrax statistics."""
        if key is None:
            raise ValueError("DiffraxSDE adds noise: `step` needs a key.")
        assert isinstance(state, DiffraxSDEState)
        i = state.i
        x = state.x
        s0, s1 = state.s[i], state.s[i + 1]
        terms = brownian_terms(
            key, state.sde, x, state.t0, state.span, -1.0, self.solver, state.brownian_tol
        )
        sol = self._solve_between(terms, s0, s1, s1 - s0, x, diffrax.SaveAt(t1=True))
        info = {k: jnp.asarray(v, jnp.int32) for k, v in self._stats(sol).items()}
        stats = {k: state.stats[k] + info[k] for k in state.stats}
        new = eqx.tree_at(
            lambda st: (st.x, st.i, st.stats), state, (solution_ys(sol)[0], i + 1, stats)
        )
        return new, info

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""One `diffeqsolve` from `grid[0]` to `grid[-1]` with $K$ equal steps (or the
        controller's), on the Brownian tree named by `key`."""
        rev, grid, x_T = self._setup(process, model, grid, x_T, cond)
        t0, span, h, s, tol = self._times(grid)
        terms = brownian_terms(key, rev, x_T, t0, span, -1.0, self.solver, tol)
        if self._fixed():
            controller, dt0 = diffrax.StepTo(ts=s), None
        else:
            controller, dt0 = self.controller(), h
        saveat = diffrax.SaveAt(ts=s, t1=True) if save_trajectory else diffrax.SaveAt(t1=True)
        sol = diffrax.diffeqsolve(
            terms,
            self.solver,
            jnp.zeros((), x_T.dtype),  # a literal zero, not s[0]: XLA folds it (0.1's bits)
            span,
            dt0,
            x_T,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=self.max_steps,
            throw=self.throw,
            progress_meter=self.progress_meter,
        )
        ys = solution_ys(sol)
        x = ys[-1]
        traj = None
        if save_trajectory:
            traj = ys[:-1].at[0].set(x_T).at[-1].set(x)
        return Sample(x, traj, self._stats(sol))
