r"""Euler–Maruyama for the reverse-time SDE on any grid: the fast fixed-step path.

On a grid $t_0 > t_1 > \dots > t_K$, with $h_i = t_i - t_{i+1}$ and $z_i \sim \mathcal N(0, I)$,

$$x_{i+1} = x_i - h_i\,\big[f(t_i)\,x_i - g(t_i)^2\,s(t_i, x_i)\big] + g(t_i)\sqrt{h_i}\,z_i,$$

the last step without noise unless `final_noise=True`. One Gaussian draw per step, from
`fold_in(key, i)`: no Brownian tree, so this is the cheap way to sample the reverse SDE on a
non-uniform grid. See [sampling the reverse SDE](../derivations/reverse-sde.md#sampling).
"""

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._continuous import (
    GridState,
    check_grid,
    check_linear_process,
    init_grid_state,
    scan_states,
    with_start,
)
from .base import AbstractSolver, AbstractState, Sample, SolverKey


class SDEStepInfo(NamedTuple):
    """Per-step info of [`EulerMaruyama`][scoredyn.EulerMaruyama] and
    [`PredictorCorrector`][scoredyn.PredictorCorrector]: the step's start and end times and the
    model's score at the point the (last) predictor step started from."""

    t: Array
    t_next: Array
    score: Array


class EulerMaruyama(AbstractSolver):
    r"""Euler–Maruyama for the reverse-time SDE on any strictly decreasing grid.

    $$x_{i+1} = x_i - h_i\,\big[f(t_i)\,x_i - g(t_i)^2\,s(t_i, x_i)\big]
      + g(t_i)\sqrt{h_i}\,z_i,\qquad h_i = t_i - t_{i+1},$$

    with $s$ = `model.score(process, t, x, *cond)` and one draw $z_i$ per step from the step's
    key (`fold_in(key, i)` in a whole solve). The last step adds no noise unless
    `final_noise=True`, so the output is the mean of the last transition. Unlike
    [`DiffraxSDE`][scoredyn.DiffraxSDE] there is no Brownian tree, and the grid may be
    non-uniform (e.g. [`sd.grids.quadratic`][scoredyn.grids.quadratic]). Cost: $K$ score
    evaluations.

    Args:
        final_noise: add $g(t_{K-1})\sqrt{h_{K-1}}\,z$ on the last step too.

    Raises:
        TypeError: for a `process` that is not a linear SDE.
        ValueError: for a grid that is not strictly decreasing inside $[0, T]$.

    Example:
        ```python
        grid, model = sd.grids.quadratic(sde, 200), sd.ScoreModel(score)
        draw = lambda k, x_T: sd.sample(k, sde, model, sd.EulerMaruyama(), grid, x_T).x
        xs = jax.vmap(draw)(keys, x_Ts)
        ```

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456.
    """

    final_noise: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.final_noise, bool):
            raise TypeError(f"`final_noise` must be a bool, got {self.final_noise!r}.")

    def is_stochastic(self, process, grid) -> bool:
        grid, _ = check_grid(grid, check_linear_process(process, self), float)
        return self.final_noise or grid.shape[0] > 2

    def batch_noise(self) -> bool:
        return True

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> GridState:
        return init_grid_state(self, process, model, grid, x_T, cond)

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[GridState, SDEStepInfo]:
        r"""One Euler–Maruyama step $t_i \to t_{i+1}$ with one draw from `key` (none on the
        last step unless `final_noise`)."""
        assert isinstance(state, GridState)
        i, x, grid = state.i, state.x, state.grid
        dtype = x.dtype
        K = grid.shape[0] - 1
        t, t_next = grid[i], grid[i + 1]
        f, g = state.sde.coefficients(t)
        f, g = f.astype(dtype), g.astype(dtype)
        h = t - t_next
        s = state.score(t, x)
        x_new = x - h * (f * x - g**2 * s)
        if self.final_noise or K > 1:
            if key is None:
                raise ValueError("EulerMaruyama adds noise on this grid: `step` needs a key.")
            noise = g * jnp.sqrt(h) * self.draw_noise(key, x)
            if not self.final_noise:
                noise = jnp.where(i == K - 1, jnp.zeros_like(noise), noise)
            x_new = x_new + noise
        new = eqx.tree_at(lambda st: (st.x, st.i), state, (x_new, i + 1))
        return new, SDEStepInfo(t, t_next, s)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` with the keys `fold_in(key, i)` (the default solve, carrying
        only the state's arrays, so that a model may wrap a plain function)."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def step(st, i):
            k = None if key is None else self.step_key(key, i, K)
            return self.step(k, st)[0]

        state, xs = scan_states(step, state, jnp.arange(K, dtype=jnp.int32), save_trajectory)
        traj = with_start(x_T, xs) if save_trajectory else None
        return Sample(state.x, traj, {"nfe": self.nfe(K), "num_steps": K})
