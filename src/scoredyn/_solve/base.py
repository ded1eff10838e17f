r"""Solvers are values: options only, never the model.

Every solver offers a step-level API in the blackjax manner,

```python
state = solver.init(process, model, grid, x_T)     # constants computed once
state, info = solver.step(key, state)               # one step of the grid
```

and [`sample`][scoredyn.sample] drives it: by default a `lax.scan` of `step` over the grid,
with the per-step key [`step_key`][scoredyn.AbstractSolver.step_key]`(key, i, K)`. A solver may
run its whole solve another way (diffrax's adaptive stepping) by overriding `solve`; it must then
still agree with its own `step` loop. Adding a solver is one new file: a subclass with `init`
and `step`, and nothing else to register.

[`sample_batch`][scoredyn.sample_batch] runs `solve` under `jax.vmap` with ONE key for the whole
batch when the solver draws its Gaussians with
[`draw_noise`][scoredyn.AbstractSolver.draw_noise] (declared by
[`batch_noise`][scoredyn.AbstractSolver.batch_noise]): each step then makes one draw of shape
`(B, *shape)`, as a hand-written batched loop does.
See [the sampling layer](../derivations/sampling-layer.md#solvers).
"""

import abc
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float

from .._custom_types import Key


class Sample(NamedTuple):
    r"""What [`sample`][scoredyn.sample], [`encode`][scoredyn.encode] and
    [`decode`][scoredyn.decode] return.

    Attributes:
        x: the final state, shaped like the start.
        trajectory: with `save_trajectory=True`, the state at every grid point,
            shape `(K + 1, *x.shape)`, indexed like the grid (`trajectory[k]` is the state at
            `grid[k]`); otherwise `None`.
        stats: solver statistics, a dict with at least `nfe` (network evaluations) and
            `num_steps`.
    """

    x: Float[Array, "*shape"]
    trajectory: Float[Array, " num_points *shape"] | None
    stats: dict[str, Any]


class BatchKey(eqx.Module):
    r"""One PRNG key for a whole batch, as [`sample_batch`][scoredyn.sample_batch] hands it to
    a solver's `solve` under `jax.vmap` (internal: solvers meet it, users do not).

    [`AbstractSolver.draw_noise`][scoredyn.AbstractSolver.draw_noise] on a `BatchKey` draws for
    the whole batch at once: under `jax.vmap` over `x`, ONE `jax.random.normal(key, (B,
    *shape))` rather than `B` draws from `B` keys. Key arithmetic goes through
    `map_key`, which keeps the wrapper.
    """

    key: Array  # a key, or a stack of keys (`split`) to scan over


# What a solver's `step`, `step_key` and `draw_noise` receive: a key, or (inside `sample_batch`,
# for a solver whose `batch_noise()` is True) a `BatchKey`. To the type checker it is a key, so
# that every solver's `step(key: Key | None, ...)` stays a valid override; the run-time checks
# (`--jaxtyping-packages`) see the union.
if TYPE_CHECKING:
    SolverKey: TypeAlias = Key
else:
    SolverKey = Key | BatchKey


def map_key(fn: Callable[[Array], Array], key) -> Any:
    r"""`fn(key)` (a `jax.random.fold_in`, `split` or index), re-wrapped if `key` is a
    `BatchKey`. `key` may be a stack of keys (after a `split`)."""
    if isinstance(key, BatchKey):
        return BatchKey(fn(key.key))
    return fn(key)


@custom_vmap
def _batch_normal(key, x):
    return jax.random.normal(key, x.shape, x.dtype)


@_batch_normal.def_vmap
def _batch_normal_rule(axis_size, in_batched, key, x):
    # one key, a batch of x (sample_batch): one draw for the whole batch
    key_batched, x_batched = in_batched
    if not key_batched:
        return jax.random.normal(key, x.shape, x.dtype), True
    # a key per example (an outer vmap over keys): one draw per example, as without the wrapper
    if not x_batched:
        x = jnp.broadcast_to(x, (axis_size, *x.shape))
    return jax.vmap(lambda k, x: jax.random.normal(k, x.shape, x.dtype))(key, x), True


def normal_like(key, x: Array) -> Array:
    r"""A standard normal array shaped and typed like `x`: `jax.random.normal(key, x.shape,
    x.dtype)`; for a `BatchKey` under `jax.vmap` over `x`, one draw of shape `(B, *x.shape)`
    for the whole batch (no gradient flows through `x`: only its shape and batch are read)."""
    if isinstance(key, BatchKey):
        return _batch_normal(key.key, lax.stop_gradient(x))
    return jax.random.normal(key, x.shape, x.dtype)


class AbstractState(eqx.Module):
    """A solver's state between steps: at least the current `x`."""

    x: eqx.AbstractVar[Array]


class AbstractSolver(eqx.Module):
    r"""A sampler as a value: its options, and `init` / `step` over a grid.

    Subclasses implement [`init`][scoredyn.AbstractSolver.init] and
    [`step`][scoredyn.AbstractSolver.step]. The default
    [`solve`][scoredyn.AbstractSolver.solve] scans `step` over the grid.
    """

    @abc.abstractmethod
    def init(self, process, model, grid, x_T, cond: tuple = ()) -> AbstractState:
        r"""The state at the first grid point: `x_T` plus every constant of the grid."""

    @abc.abstractmethod
    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[AbstractState, Any]:
        r"""One step along the grid; returns the new state and a per-step info value."""

    def num_steps(self, grid: Array) -> int:
        """The number of `step` calls a grid takes (static)."""
        return grid.shape[0] - 1

    def nfe(self, num_steps: int) -> int:
        """Network evaluations of a whole solve (static)."""
        return num_steps

    def is_stochastic(self, process, grid) -> bool:
        """Whether the solve draws noise (then `sample` needs a key). Default: yes."""
        return True

    def can_encode(self) -> bool:
        """Whether the solver can run its grid backwards ([`encode`][scoredyn.encode])."""
        return False

    def grid_order(self, trajectory: Array) -> Array:
        """Reorder a trajectory from visiting order to grid order (identity by default; a
        discrete trajectory `tau` is increasing but visited from `tau[K]` down)."""
        return trajectory

    def step_key(self, key: SolverKey, i, num_steps: int) -> SolverKey:
        r"""The key of step `i` ($0 \le i < K$, in sampling order) in a whole solve: by default
        `fold_in(key, i)`, which costs $O(1)$ memory per example whatever $K$."""
        return map_key(lambda k: jax.random.fold_in(k, i), key)

    def draw_noise(self, key: SolverKey, x: Array) -> Array:
        r"""A standard normal draw shaped and typed like `x` from `key`:
        `jax.random.normal(key, x.shape, x.dtype)`, the same bits as that call.

        Under [`sample_batch`][scoredyn.sample_batch] the key is one key for the whole batch,
        and this makes ONE draw of shape `(B, *x.shape)` per call, each example taking its row:
        a different draw from the per-example path's, equally valid. A solver that draws every
        Gaussian of its steps through this method declares it with
        [`batch_noise`][scoredyn.AbstractSolver.batch_noise]."""
        return normal_like(key, x)

    def batch_noise(self) -> bool:
        r"""Whether every random draw of this solver is a
        [`draw_noise`][scoredyn.AbstractSolver.draw_noise] from keys derived with
        [`step_key`][scoredyn.AbstractSolver.step_key] (or `map_key`). Then
        [`sample_batch`][scoredyn.sample_batch] gives the batch ONE key and each step one
        draw for the whole batch. Default `False`: the batch gets `jax.random.split(key, B)`,
        one key per example (always correct; what a Brownian tree needs)."""
        return False

    def solve(
        self, key: SolverKey | None, process, model, grid, x_T, cond: tuple, save_trajectory: bool
    ) -> Sample:
        r"""The whole solve: `init`, then a `lax.scan` of `step` over the grid."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def body(state, i):
            k = None if key is None else self.step_key(key, i, K)
            state, _ = self.step(k, state)
            return state, (state.x if save_trajectory else None)

        state, xs = lax.scan(body, state, jnp.arange(K, dtype=jnp.int32))
        traj = None
        if save_trajectory:
            assert xs is not None
            traj = self.grid_order(jnp.concatenate([x_T[None], xs], axis=0))
        return Sample(state.x, traj, {"nfe": self.nfe(K), "num_steps": K})

    def solve_batch(
        self,
        key: Key | None,
        process,
        model,
        grid,
        x_T,
        cond: tuple,
        save_trajectory: bool,
        axis_name: Hashable | None = None,
    ) -> Sample:
        r"""The solve of a batch `x_T` of shape `(B, *shape)`
        ([`sample_batch`][scoredyn.sample_batch]): `jax.vmap` of
        [`solve`][scoredyn.AbstractSolver.solve] over the examples (and over the leading axis
        of each `cond` leaf), so every example runs exactly its own solve. With
        [`batch_noise`][scoredyn.AbstractSolver.batch_noise] the batch shares one key and each
        step draws its noise for the whole batch at once; otherwise example `b` gets
        `jax.random.split(key, B)[b]`. Returns `x` of shape `(B, *shape)`, the trajectory as
        `(B, K + 1, *shape)`, and stats with a leading `B` where they are arrays.
        `axis_name` names the batch axis (for a solver that reduces over it)."""
        B = x_T.shape[0]
        if key is None:
            keys, key_axis = None, None
        elif self.batch_noise():
            keys, key_axis = BatchKey(key), None
        else:
            keys, key_axis = jax.random.split(key, B), 0

        def one(k, x, c):
            return self.solve(k, process, model, grid, x, c, save_trajectory)

        run = eqx.filter_vmap(
            one, in_axes=(key_axis, 0, 0), out_axes=eqx.if_array(0), axis_name=axis_name
        )
        return run(keys, x_T, tuple(cond))
