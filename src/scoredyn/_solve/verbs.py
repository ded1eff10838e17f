r"""The verbs: [`sample`][scoredyn.sample], [`sample_batch`][scoredyn.sample_batch],
[`encode`][scoredyn.encode] and [`decode`][scoredyn.decode].

Each takes the same four values (process, model, solver, grid) plus a start, and returns a
[`Sample`][scoredyn.Sample]. See [the sampling layer](../derivations/sampling-layer.md#verbs).
"""

from collections.abc import Hashable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._custom_types import Key
from .._misc import as_float
from .._model import check_model, check_model_output
from .._process import AbstractProcess
from .base import AbstractSolver, Sample


def _check(process, model, solver, grid, x, x_name: str):
    if not isinstance(process, AbstractProcess):
        raise TypeError(
            "`process` must be an sd.AbstractProcess (a linear SDE such as sd.VPSDE() or an "
            f"sd.DiscreteSchedule), got {type(process).__name__}."
        )
    model = check_model(model)
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            "`solver` must be an sd.AbstractSolver (e.g. sd.DDIM(), sd.DDPM(), sd.ODE(), "
            f"sd.DPMSolver()), got {type(solver).__name__}."
        )
    if isinstance(grid, (list, tuple)):
        grid = np.asarray(grid)
    grid = jnp.asarray(grid)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"`grid` must be a 1-D array of at least 2 points (see sd.grids), got shape "
            f"{grid.shape}."
        )
    x = as_float(x, x_name)
    return model, grid, x


def _check_output(process, model, grid, x, cond):
    check_model_output(model, process, grid[0], x, cond)


def _cond(cond) -> tuple:
    if not isinstance(cond, tuple):
        raise TypeError(
            f"`cond` must be a tuple of extra model arguments (net(t, x, *cond)), got {cond!r}."
        )
    return cond


def sample(
    key: Key | None,
    process: AbstractProcess,
    model,
    solver: AbstractSolver,
    grid: ArrayLike,
    x_T: Float[ArrayLike, "*shape"],
    *,
    cond: tuple = (),
    save_trajectory: bool = False,
) -> Sample:
    r"""Run `solver` with `model` on `process` along `grid`, from `x_T`.

    One verb for every sampler: the solver is a value
    ([`DDPM`][scoredyn.DDPM], [`DDIM`][scoredyn.DDIM], [`ODE`][scoredyn.ODE],
    [`DPMSolver`][scoredyn.DPMSolver], [`EulerMaruyama`][scoredyn.EulerMaruyama], ...), the
    model knows its parameterisation ([`EpsModel`][scoredyn.EpsModel], ...), and the grid is
    an array ([`sd.grids`](grids.md)): increasing indices `tau` for a discrete schedule,
    decreasing times from $T$ for a continuous process.

    Args:
        key: PRNG key for the solver's noise; may be `None` only for a deterministic solver.
        process: the forward process ([`AbstractProcess`][scoredyn.AbstractProcess]).
        model: an [`AbstractModel`][scoredyn.AbstractModel].
        solver: an [`AbstractSolver`][scoredyn.AbstractSolver].
        grid: the grid (see above).
        x_T: the starting point (ONE example; `jax.vmap` for a batch), e.g.
            `process.prior_sample(key, shape)` or `jax.random.normal(key, shape)`.
        cond: extra model arguments, passed on as `net(t, x, *cond)` (class labels, ...).
        save_trajectory: also return the state at every grid point.

    Returns:
        A [`Sample`][scoredyn.Sample] `(x, trajectory, stats)`.

    Raises:
        TypeError: for a bare callable as `model` (wrap it: `sd.EpsModel(fn)`), or a value of
            the wrong kind for `process` / `solver`.
        ValueError: for a grid the solver cannot use, or `key=None` with a stochastic solver.

    Example:
        ```python
        sched = sd.DiscreteSchedule.linear(1000)
        res = sd.sample(key, sched, sd.EpsModel(net), sd.DDIM(), sd.grids.even(1000, 50), x_T)
        res.x, res.stats["nfe"]
        ```
    """
    model, grid, x_T = _check(process, model, solver, grid, x_T, "x_T")
    cond = _cond(cond)
    stochastic = solver.is_stochastic(process, grid)  # also checks the process's kind
    _check_output(process, model, grid, x_T, cond)
    if key is None and stochastic:
        raise ValueError(
            f"`key` is None but {type(solver).__name__} adds noise on this grid; pass a key."
        )
    return _solve(key, process, model, solver, grid, x_T, cond, save_trajectory)


@eqx.filter_jit
def _solve(key, process, model, solver, grid, x_T, cond, save_trajectory):
    """Compiled whole, so an eager call and a call under the user's jit give the same bits."""
    return solver.solve(key, process, model, grid, x_T, cond, save_trajectory)


def sample_batch(
    key: Key | None,
    process: AbstractProcess,
    model,
    solver: AbstractSolver,
    grid: ArrayLike,
    x_T: Float[ArrayLike, " batch *shape"],
    *,
    cond: tuple = (),
    save_trajectory: bool = False,
    axis_name: Hashable | None = None,
) -> Sample:
    r"""[`sample`][scoredyn.sample] for a whole batch `x_T` of shape `(B, *shape)`, with each
    step's noise drawn once for the batch.

    Every example runs exactly its own solve (`jax.vmap` of the solver's solve over the leading
    axis, so per-example maths such as a corrector's norms or a variance head stay per
    example), but a solver that draws through
    [`draw_noise`][scoredyn.AbstractSolver.draw_noise] (every built-in stochastic solver but
    [`DiffraxSDE`][scoredyn.DiffraxSDE]) gets ONE key for the batch: step $i$ makes one
    `jax.random.normal(step_key(key, i), (B, *shape))` and example $b$ takes row $b$, as a
    hand-written batched loop does. `jax.vmap(sd.sample)` over `B` keys instead makes `B`
    small draws per step. The two paths draw different, equally valid noise: the same
    distribution, not the same bits. Given `key` the result is deterministic, but it depends on
    `B`: example $b$ of a batch of 8 is not example $b$ of a batch of 16.
    [`DiffraxSDE`][scoredyn.DiffraxSDE] (one Brownian tree per path) gives example $b$ the key
    `jax.random.split(key, B)[b]`, which is `jax.vmap(sd.sample)` exactly.

    The model is called per example, under `jax.vmap`. For a network written for batches,
    `net(t_batch, x_batch, *cond_batch)`, wrap it in [`BatchedNet`][scoredyn.BatchedNet]: it is
    then called ONCE per evaluation on the whole batch. An adaptive
    [`ODE`][scoredyn.ODE] controls each example's steps; `sd.ODE(shared_steps=True)` solves the
    batch as one diffrax solve with one error norm over the batch (cheaper, less accurate per
    example; see [batching](../performance.md#batches-which-path)).

    Args:
        key: PRNG key for the whole batch; may be `None` only for a deterministic solver.
        process: the forward process ([`AbstractProcess`][scoredyn.AbstractProcess]).
        model: an [`AbstractModel`][scoredyn.AbstractModel] (its network for ONE example, or
            a [`BatchedNet`][scoredyn.BatchedNet]).
        solver: an [`AbstractSolver`][scoredyn.AbstractSolver].
        grid: the grid, shared by the batch.
        x_T: the starting points, shape `(B, *shape)`, $B \ge 1$.
        cond: extra model arguments, one per example: each leaf has a leading axis of size `B`
            (broadcast a condition shared by the batch: `jnp.broadcast_to(c, (B, *c.shape))`).
        save_trajectory: also return every example's states at the grid points.
        axis_name: a name for the batch axis, for a solver that averages over it
            (`sd.PredictorCorrector(axis_name=...)` with the same name).

    Returns:
        A [`Sample`][scoredyn.Sample] with `x` of shape `(B, *shape)`, `trajectory` of shape
        `(B, K + 1, *shape)` (or `None`) and `stats` as for one example (a leading `B` on the
        arrays that vary per example, such as an adaptive solve's `nfe`).

    Raises:
        TypeError: as [`sample`][scoredyn.sample].
        ValueError: as [`sample`][scoredyn.sample]; for `x_T` without a batch axis, or a `cond`
            leaf whose leading axis is not `B`.

    Example:
        ```python
        x_T = jax.random.normal(k_prior, (4096, 2))
        res = sd.sample_batch(key, sched, sd.EpsModel(net), sd.DDPM(), sd.grids.even(1000, 50), x_T)
        res.x.shape   # (4096, 2)
        ```
    """
    model, grid, x_T = _check(process, model, solver, grid, x_T, "x_T")
    cond = _cond(cond)
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(
            f"`x_T` must have a leading batch axis of size B >= 1, (B, *shape), got shape "
            f"{x_T.shape}; for one example use sd.sample."
        )
    B = x_T.shape[0]
    for leaf in jax.tree_util.tree_leaves(cond):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != B:
            raise ValueError(
                f"every `cond` leaf must have a leading axis of size B = {B} (one per example), "
                f"got shape {jnp.shape(leaf)}; broadcast a shared condition with "
                "jnp.broadcast_to(c, (B, *c.shape))."
            )
    stochastic = solver.is_stochastic(process, grid)
    cond0 = jax.tree_util.tree_map(lambda c: jnp.asarray(c)[0], cond)
    _check_output(process, model, grid, x_T[0], cond0)
    if key is None and stochastic:
        raise ValueError(
            f"`key` is None but {type(solver).__name__} adds noise on this grid; pass a key."
        )
    return _solve_batch(key, process, model, solver, grid, x_T, cond, save_trajectory, axis_name)


@eqx.filter_jit
def _solve_batch(key, process, model, solver, grid, x_T, cond, save_trajectory, axis_name):
    """Compiled whole, as `_solve`."""
    return solver.solve_batch(key, process, model, grid, x_T, cond, save_trajectory, axis_name)


def decode(
    process: AbstractProcess,
    model,
    solver: AbstractSolver,
    grid: ArrayLike,
    z: Float[ArrayLike, "*shape"],
    *,
    cond: tuple = (),
    save_trajectory: bool = False,
) -> Sample:
    r"""Map a latent to data with a deterministic solver: [`sample`][scoredyn.sample] with no
    key, from `z` at `grid[0]`.

    Raises:
        ValueError: if `solver` adds noise on this grid.
    """
    return sample(None, process, model, solver, grid, z, cond=cond, save_trajectory=save_trajectory)


def encode(
    process: AbstractProcess,
    model,
    solver: AbstractSolver,
    grid: ArrayLike,
    x0: Float[ArrayLike, "*shape"],
    *,
    cond: tuple = (),
    save_trajectory: bool = False,
) -> Sample:
    r"""Map data to a latent: run a deterministic solver along `grid` backwards, from `x0` at
    `grid[-1]` to `grid[0]`. With the same arguments, [`decode`][scoredyn.decode] inverts it
    (exactly in the limit of fine steps or tight tolerances).

    The trajectory, when saved, is indexed like `grid` (so `trajectory[-1]` is `x0`).

    Raises:
        ValueError: if `solver` cannot run backwards or adds noise.
    """
    model, grid, x0 = _check(process, model, solver, grid, x0, "x0")
    cond = _cond(cond)
    _check_output(process, model, grid, x0, cond)
    if not solver.can_encode() or solver.is_stochastic(process, grid):
        raise ValueError(
            f"{type(solver).__name__} cannot encode (run its grid backwards deterministically); "
            "use sd.ODE(...) or another deterministic solver that supports it."
        )
    res = _solve(None, process, model, solver, jnp.flip(grid), x0, cond, save_trajectory)
    if res.trajectory is None:
        return res
    return Sample(res.x, jnp.flip(res.trajectory, axis=0), res.stats)
