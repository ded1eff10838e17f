r"""Predictor–corrector sampling (Song et al. 2021): Langevin corrector, then an Euler–Maruyama
predictor of the reverse-time SDE, at every step of a grid.

At step $i$ ($t_i \to t_{i+1}$), `num_corrector_steps` Langevin steps targeting $p_{t_i}$,

$$x \leftarrow x + \epsilon_i\,s(t_i, x) + \sqrt{2\epsilon_i}\,z,\qquad
  \epsilon_i = 2 a_i\Big(r\,\frac{\lVert z\rVert}{\lVert s(t_i, x)\rVert}\Big)^2,\qquad
  a_i = \frac{\alpha(t_i)^2}{\alpha(t_{i+1})^2},$$

then $x \leftarrow x - h\,[f(t_i)x - g(t_i)^2 s(t_i, x)] + g(t_i)\sqrt h\,z'$,
$h = t_i - t_{i+1}$. See
[predictor–corrector](../derivations/reverse-sde.md#predictor-corrector-sampling).
"""

from collections.abc import Hashable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._misc import as_float, is_concrete
from ._continuous import (
    GridState,
    check_grid,
    check_linear_process,
    init_grid_state,
    scan_states,
    with_start,
)
from .base import AbstractSolver, AbstractState, Sample, SolverKey, map_key
from .euler_maruyama import SDEStepInfo


def langevin_step_size(snr, a, z, s, axis_name=None):
    r"""$\epsilon = 2a\,(r\,\lVert z\rVert / \lVert s\rVert)^2$ (0 where the score vanishes).

    With `axis_name`, both norms are first averaged over that named (vmapped) batch axis.
    """
    z_norm = jnp.sqrt(jnp.sum(z * z))
    s_norm = jnp.sqrt(jnp.sum(s * s))
    if axis_name is not None:
        z_norm = lax.pmean(z_norm, axis_name)
        s_norm = lax.pmean(s_norm, axis_name)
    ratio = z_norm / jnp.where(s_norm > 0, s_norm, 1.0)
    return jnp.where(s_norm > 0, 2.0 * a * (snr * ratio) ** 2, 0.0)


class PredictorCorrector(AbstractSolver):
    r"""Predictor–corrector sampling: Langevin corrector, Euler–Maruyama predictor.

    Each `step` splits its key as `kc, kp = split(key)`: `num_corrector_steps` Langevin steps
    at $t_i$ with the keys `split(kc, num_corrector_steps)`, then one Euler–Maruyama step to
    $t_{i+1}$ with noise from `kp` (on every step, the last included). A whole solve gives step
    $i$ the key `split(key, K)[i]` ([`step_key`][scoredyn.PredictorCorrector.step_key]), as
    scoredyn 0.1's `sample_pc` did; `sd.sample_pc(key, ...)` is
    `sd.sample(k_loop, ..., sd.PredictorCorrector(...), grid, x_T)` with
    `k_prior, k_loop = split(key)`, `x_T = sde.prior_sample(k_prior, shape)` and
    `grid = jnp.linspace(T, t_eps, num_steps + 1)`, bit for bit. Any strictly decreasing grid
    works. Cost: $K(1 + C)$ score evaluations, $C$ = `num_corrector_steps`.

    Args:
        snr: the signal-to-noise ratio $r > 0$ of the corrector (may be traced).
        num_corrector_steps: Langevin steps per predictor step ($\ge 0$; 0 gives
            Euler–Maruyama with noise on the last step too).
        axis_name: name of a `jax.vmap` axis over which to average $\lVert z\rVert$ and
            $\lVert s\rVert$ before forming $\epsilon_i$, as Song et al.'s code does over a
            batch (recommended in low dimension, where the per-example ratio is heavy-tailed).

    Raises:
        ValueError: at construction, for `snr <= 0` or `num_corrector_steps` not an int
            $\ge 0$; in [`sample`][scoredyn.sample], for a grid that is not strictly
            decreasing inside $[0, T]$.
        TypeError: for a `process` that is not a linear SDE.

    Example:
        ```python
        pc = sd.PredictorCorrector(snr=0.16, axis_name="batch")
        draw = lambda k, x_T: sd.sample(k, sde, sd.ScoreModel(score), pc, grid, x_T).x
        xs = jax.vmap(draw, axis_name="batch")(keys, x_Ts)
        ```

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456, Alg. 4–5.
    """

    snr: float | Array = 0.16
    num_corrector_steps: int = eqx.field(static=True, default=1)
    axis_name: Hashable | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        n = self.num_corrector_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"`num_corrector_steps` must be a Python int >= 0, got {n!r}.")
        if is_concrete(self.snr) and not float(self.snr) > 0:
            raise ValueError(f"`snr` must be > 0, got {self.snr}.")

    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float)
        return True

    def batch_noise(self) -> bool:
        return True

    def nfe(self, num_steps: int) -> int:
        return num_steps * (1 + self.num_corrector_steps)

    def step_key(self, key: SolverKey, i, num_steps: int) -> SolverKey:
        """`split(key, K)[i]`, the keys of scoredyn 0.1's `sample_pc` (the whole solve splits
        once rather than calling this per step)."""
        return map_key(lambda k: jax.random.split(k, num_steps)[i], key)

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> GridState:
        return init_grid_state(self, process, model, grid, x_T, cond)

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[GridState, SDEStepInfo]:
        r"""The corrector at $t_i$, then the predictor $t_i \to t_{i+1}$, with noise from
        `key` (split into the corrector's and the predictor's keys)."""
        if key is None:
            raise ValueError("PredictorCorrector adds noise: `step` needs a key.")
        assert isinstance(state, GridState)
        i, x, grid, sde, score = state.i, state.x, state.grid, state.sde, state.score
        dtype = x.dtype
        snr = as_float(self.snr, "snr").astype(dtype)  # a Python float stays a constant
        t, t_next = grid[i], grid[i + 1]
        keys = map_key(jax.random.split, key)
        kc, kp = (map_key(lambda k, j=j: k[j], keys) for j in (0, 1))
        if self.num_corrector_steps > 0:
            alpha_t, _ = sde.marginal(t)
            alpha_n, _ = sde.marginal(t_next)
            a = ((alpha_t / alpha_n) ** 2).astype(dtype)

            def body(x, k):
                s = score(t, x)
                z = self.draw_noise(k, x)
                eps = langevin_step_size(snr, a, z, s, self.axis_name)
                return x + eps * s + jnp.sqrt(2.0 * eps) * z, None

            C = self.num_corrector_steps
            x, _ = lax.scan(body, x, map_key(lambda k: jax.random.split(k, C), kc))
        f, g = sde.coefficients(t)
        f, g = f.astype(dtype), g.astype(dtype)
        h = t - t_next
        z = self.draw_noise(kp, x)
        s = score(t, x)
        x = x - h * (f * x - g**2 * s) + g * jnp.sqrt(h) * z
        new = eqx.tree_at(lambda st: (st.x, st.i), state, (x, i + 1))
        return new, SDEStepInfo(t, t_next, s)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` over the keys `split(key, K)`."""
        if key is None:
            raise ValueError("PredictorCorrector adds noise: pass a key.")
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)
        step = lambda st, k: self.step(k, st)[0]
        keys = map_key(lambda k: jax.random.split(k, K), key)
        state, xs = scan_states(step, state, keys, save_trajectory)
        traj = with_start(x_T, xs) if save_trajectory else None
        return Sample(state.x, traj, {"nfe": self.nfe(K), "num_steps": K})
