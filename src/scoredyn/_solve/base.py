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
See [the sampling layer](../derivations/sampling-layer.md#solvers).
"""

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
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
    def step(self, key: Key | None, state: AbstractState) -> tuple[AbstractState, Any]:
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

    def step_key(self, key: Key, i, num_steps: int) -> Key:
        r"""The key of step `i` ($0 \le i < K$, in sampling order) in a whole solve: by default
        `fold_in(key, i)`, which costs $O(1)$ memory per example whatever $K$."""
        return jax.random.fold_in(key, i)

    def solve(
        self, key: Key | None, process, model, grid, x_T, cond: tuple, save_trajectory: bool
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
