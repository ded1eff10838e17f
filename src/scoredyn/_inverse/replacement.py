r"""Inpainting by replacement: a solver wrapper that overwrites the measured entries.

After each step of any base solver, the entries where `mask` is true are replaced by a fresh
forward-noised copy of the measurement at the new point of the grid,

$$x \leftarrow \mathrm{mask}\odot(\alpha y + \sigma z) + (1 - \mathrm{mask})\odot x,
  \qquad z \sim \mathcal N(0, I),$$

with $(\alpha, \sigma)$ = `process.marginal` there. The shared pieces (checks of the mask and
the measurement, the grid in visiting order, the scan that carries a state holding a model)
live here and are used by [`RePaint`][scoredyn.RePaint] and [`DPS`][scoredyn.DPS] too. See
[inverse problems](../derivations/inverse-problems.md#replacement).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float

from .._checks import as_float, concrete_value
from .._process import AbstractProcess
from .._solve.base import AbstractSolver, AbstractState, Sample, SolverKey, map_key, normal_like

# ------------------------------------------------------------------------------ shared helpers


def check_solver(solver, name: str = "solver") -> AbstractSolver:
    """`solver` must be an sd.AbstractSolver (the one being wrapped)."""
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`{name}` must be an sd.AbstractSolver to wrap (e.g. sd.DDPM(), sd.DDIM(), "
            f"sd.DPMSolverPP()), got {type(solver).__name__}."
        )
    return solver


def check_mask(mask) -> Array:
    """A boolean mask (True = measured entry); a numeric mask must hold only 0 and 1."""
    try:
        arr = jnp.asarray(mask)
    except (TypeError, ValueError):
        raise TypeError(
            f"`mask` must be a boolean array (True where x is measured), got {type(mask).__name__}."
        ) from None
    if arr.dtype == jnp.bool_:
        return arr
    if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise TypeError(f"`mask` must be a boolean (or 0/1) array, got dtype {arr.dtype}.")
    v = concrete_value(arr)
    if v is not None and not np.all((v == 0) | (v == 1)):
        bad = v[(v != 0) & (v != 1)].reshape(-1)[0]
        raise ValueError(
            f"`mask` must hold only 0 and 1 (or booleans: True where x is measured), got {bad}."
        )
    return arr != 0


def check_mask_y(mask, y) -> tuple[Array, Array]:
    """The mask and the measurement of an inpainting wrapper, checked against each other."""
    mask = check_mask(mask)
    y = as_float(y, "y")
    try:
        np.broadcast_shapes(mask.shape, y.shape)
    except ValueError:
        raise ValueError(
            f"`mask` of shape {mask.shape} does not broadcast to the shape of `y` {y.shape} "
            "(y is shaped like x; mask like x or broadcastable to it)."
        ) from None
    if mask.ndim != y.ndim:
        raise ValueError(
            f"`mask` must have the rank of `y` ({y.ndim}, shaped like x), got shape {mask.shape}."
        )
    return mask, y


def check_against_x(mask: Array, y: Array, x: Array, cls: str) -> tuple[Array, Array]:
    """At `init`: `y` shaped like one example `x_T`, `mask` broadcast to it; both in x's dtype."""
    if y.shape != x.shape:
        raise ValueError(
            f"`y` of {cls} must be shaped like x_T {x.shape} (ONE example; jax.vmap for a "
            f"batch), got {y.shape}."
        )
    try:
        mask = jnp.broadcast_to(mask, x.shape)
    except ValueError:
        raise ValueError(
            f"`mask` of {cls} must be shaped like x_T {x.shape} or broadcast to it, got "
            f"{mask.shape}."
        ) from None
    return mask, y.astype(x.dtype)


def visit_coords(solver: AbstractSolver, grid, dtype) -> Array:
    r"""The grid in the order `solver` visits it: `coords[i]` is where the state is after `i`
    steps. A solver's `grid_order` maps visiting order to grid order; it is a reversal
    (discrete trajectories) or the identity (continuous grids), so it is its own inverse."""
    c = solver.grid_order(jnp.asarray(grid))
    if jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(dtype)
    return c


def coefficients(process: AbstractProcess, coord, dtype) -> tuple[Array, Array]:
    r"""$(\alpha, \sigma)$ of `process` at `coord`, in `dtype`."""
    alpha, sigma = process.marginal(coord)
    return jnp.asarray(alpha).astype(dtype), jnp.asarray(sigma).astype(dtype)


def replace_known(
    key: SolverKey, process: AbstractProcess, coord, x: Array, mask: Array, y: Array
) -> Array:
    r"""$\mathrm{mask}\odot(\alpha y + \sigma z) + (1 - \mathrm{mask})\odot x$ at `coord`."""
    alpha, sigma = coefficients(process, coord, x.dtype)
    known = alpha * y + sigma * normal_like(key, x)
    return jnp.where(mask, known, x)


def split_key(key: SolverKey) -> tuple[SolverKey, SolverKey]:
    """`jax.random.split(key)` as two keys (a batch key stays one: see `sd.sample_batch`)."""
    keys = map_key(jax.random.split, key)
    return map_key(lambda k: k[0], keys), map_key(lambda k: k[1], keys)


def fold_key(key: SolverKey, i) -> SolverKey:
    """`jax.random.fold_in(key, i)` (a batch key stays one)."""
    return map_key(lambda k: jax.random.fold_in(k, i), key)


def with_x(state: AbstractState, x: Array) -> Any:
    """`state` with its `x` replaced."""
    return eqx.tree_at(lambda s: s.x, state, x)


def scan_carry(fn, carry, xs):
    r"""`lax.scan(fn, carry, xs)` carrying only the carry's arrays: a solver state holds the
    model, whose network may be a plain function, which a scan cannot carry."""
    dyn, static = eqx.partition(carry, eqx.is_array)

    def body(dyn, inp):
        new, out = fn(eqx.combine(dyn, static), inp)
        return eqx.partition(new, eqx.is_array)[0], out

    dyn, out = lax.scan(body, dyn, xs)
    return eqx.combine(dyn, static), out


def base_nfe(solver: AbstractSolver, num_steps: int, final_base: AbstractState):
    """`solver.nfe(K)`, or, for a solver that knows it only after the solve (`sd.ODE`), the
    count its final state carries."""
    try:
        return solver.nfe(num_steps)
    except NotImplementedError:
        stats = getattr(final_base, "stats", None)
        if isinstance(stats, dict) and "nfe" in stats:
            return stats["nfe"]
        raise


def grid_trajectory(solver: AbstractSolver, x_T: Array, xs) -> Array:
    """`[x_T, *xs]` in grid order."""
    assert xs is not None
    return solver.grid_order(jnp.concatenate([x_T[None], xs], axis=0))


# ------------------------------------------------------------------------------ the wrapper


class InpaintState(AbstractState):
    r"""State of [`Inpaint`][scoredyn.Inpaint] and [`RePaint`][scoredyn.RePaint]: `x` at
    `coords[i]` (the grid in visiting order), the wrapped solver's state (holding the same
    `x`), the process, and the mask and measurement in x's shape and dtype."""

    x: Array
    i: Array
    base: AbstractState
    coords: Array
    process: AbstractProcess
    mask: Array
    y: Array


def init_inpaint(solver, mask, y, cls: str, process, model, grid, x_T, cond) -> InpaintState:
    """The wrapped solver's `init`, plus the mask and measurement checked against `x_T`."""
    base = solver.init(process, model, grid, x_T, cond)
    mask, y = check_against_x(mask, y, jnp.asarray(base.x), cls)
    coords = visit_coords(solver, grid, base.x.dtype)
    return InpaintState(base.x, jnp.zeros((), jnp.int32), base, coords, process, mask, y)


def inpaint_step(solver: AbstractSolver, key: SolverKey | None, state: InpaintState, cls: str):
    """One step of the wrapped solver, then the replacement at the new grid point."""
    if key is None:
        raise ValueError(
            f"{cls} draws the noise of the measured entries: `step` needs a key, got None."
        )
    kb, kr = split_key(key)
    base, info = solver.step(kb, state.base)
    i = state.i + 1
    x = replace_known(kr, state.process, state.coords[i], base.x, state.mask, state.y)
    new = eqx.tree_at(lambda s: (s.x, s.i, s.base), state, (x, i, with_x(base, x)))
    return new, info


class Inpaint(AbstractSolver):
    r"""Inpainting by replacement: any solver, with the measured entries overwritten after each
    step by a forward-noised copy of the measurement.

    With $(\alpha, \sigma)$ the process's coefficients at the point a step lands on, the state
    after the step is

    $$x \leftarrow \mathrm{mask}\odot(\alpha\,y + \sigma z) + (1 - \mathrm{mask})\odot x,
      \qquad z\sim\mathcal N(0, I),$$

    so the measured entries follow the forward marginal of $y$ and the unmeasured ones are
    denoised by the base solver looking at them (Song et al. 2021, Appendix I.2; Lugmayr et al.
    2022, Eq. 8). At a last grid point with $\sigma = 0$ (a discrete trajectory ends at index
    0) the measured entries are exactly $y$. The start `x_T` is used as given: where
    $\alpha(\text{grid}[0]) \approx 0$ a prior draw already has the law of the noised
    measurement. The sample is not the exact posterior $p(x_0\mid y)$: the noised copy is drawn
    independently of the unmeasured entries, which are never told how $y$ was reached
    ([why](../derivations/inverse-problems.md#why-replacement-is-approximate));
    [`RePaint`][scoredyn.RePaint] reduces the error by resampling.

    Works with any base solver on any process it accepts (DDPM, DDIM, DPM-Solver++, UniPC,
    EDM, the PF-ODE, ... on a schedule, a linear SDE or an interpolant such as
    [`RectifiedFlow`][scoredyn.RectifiedFlow]). It always draws noise, so
    [`sample`][scoredyn.sample] needs a key; each step's key is split between the base solver
    and the replacement.

    Args:
        solver: the [`AbstractSolver`][scoredyn.AbstractSolver] to wrap.
        mask: boolean, True where $x$ is measured; shaped like one example $x$, or
            broadcastable to it with the same rank (e.g. `(1, H, W)` for a mask shared by the
            channels). A 0/1 numeric array is accepted.
        y: the measurement, shaped like one example $x$ (its unmeasured entries are ignored).

    Raises:
        TypeError: for a `solver` that is not an `AbstractSolver`, or a `mask` that is not
            boolean or 0/1.
        ValueError: for a `mask` with entries other than 0 and 1 or that does not broadcast
            to `y`; in [`sample`][scoredyn.sample], for a `y` not shaped like `x_T`, or
            `key=None`.

    Example:
        ```python
        solver = sd.Inpaint(sd.DDPM(), mask, y)       # mask: True where y is measured
        res = sd.sample(key, sched, model, solver, sd.grids.even(1000, 100), x_T)
        ```

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456.
        Lugmayr et al., *RePaint: Inpainting using Denoising Diffusion Probabilistic Models*,
        arXiv:2201.09865.
    """

    solver: AbstractSolver
    mask: Bool[Array, "..."]
    y: Float[Array, "..."]

    def __init__(self, solver: AbstractSolver, mask: ArrayLike, y: Float[ArrayLike, "..."]):
        self.solver = check_solver(solver)
        self.mask, self.y = check_mask_y(mask, y)

    def num_steps(self, grid) -> int:
        return self.solver.num_steps(grid)

    def nfe(self, num_steps: int) -> int:
        return self.solver.nfe(num_steps)

    def is_stochastic(self, process, grid) -> bool:
        self.solver.is_stochastic(process, grid)  # the base solver's checks of process and grid
        return True

    def grid_order(self, trajectory):
        return self.solver.grid_order(trajectory)

    def batch_noise(self) -> bool:
        return self.solver.batch_noise()

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> InpaintState:
        r"""The base solver's state at the first grid point, with the mask and the measurement
        checked against `x_T`."""
        return init_inpaint(
            self.solver, self.mask, self.y, "Inpaint", process, model, grid, x_T, cond
        )

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[InpaintState, Any]:
        r"""One step of the base solver (with half of `key`), then the replacement at the point
        it lands on (with the other half). The info is the base solver's."""
        assert isinstance(state, InpaintState)
        return inpaint_step(self.solver, key, state, "Inpaint")

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` with the keys `fold_in(key, i)`."""
        if key is None:
            raise ValueError("Inpaint draws noise: pass a key.")
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def body(st, i):
            st = self.step(self.step_key(key, i, K), st)[0]
            return st, (st.x if save_trajectory else None)

        state, xs = scan_carry(body, state, jnp.arange(K, dtype=jnp.int32))
        traj = grid_trajectory(self.solver, x_T, xs) if save_trajectory else None
        nfe = base_nfe(self.solver, K, state.base)
        return Sample(state.x, traj, {"nfe": nfe, "num_steps": K})
