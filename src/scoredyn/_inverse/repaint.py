r"""RePaint (Lugmayr et al. 2022): replacement with resampling.

The steps of the grid are taken in blocks of `jump`. Each block is run `resample` times: after
a pass, the state at the block's end is sent back to the block's start by the forward
transition of the process, and the block is denoised again (with replacement after every step).
The re-noising mixes the measured and the unmeasured entries, so the unmeasured ones get the
chance to agree with the measurement that replacement alone never gives them. See
[inverse problems](../derivations/inverse-problems.md#repaint-resampling).
"""

from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._checks import check_int
from .._misc import safe_sqrt
from .._process import AbstractProcess
from .._solve.base import AbstractSolver, AbstractState, Sample, SolverKey, normal_like
from .replacement import (
    InpaintState,
    base_nfe,
    check_mask_y,
    check_solver,
    coefficients,
    fold_key,
    grid_trajectory,
    init_inpaint,
    inpaint_step,
    scan_carry,
    split_key,
    with_x,
)


def forward_transition(key: SolverKey, process: AbstractProcess, x: Array, c_from, c_to) -> Array:
    r"""A draw of $q(x_{c_{to}}\mid x_{c_{from}} = x)$, from a less noisy point to a noisier one:

    $$x_{to} = \frac{\alpha_{to}}{\alpha_{from}}\,x
      + \sqrt{\sigma_{to}^2 - \Big(\frac{\alpha_{to}}{\alpha_{from}}\Big)^2\sigma_{from}^2}\;z,$$

    the Gaussian transition whose composition with $x_{from} = \alpha_{from}x_0 +
    \sigma_{from}\varepsilon$ gives the marginal $\alpha_{to}x_0 + \sigma_{to}\varepsilon'$."""
    a1, s1 = coefficients(process, c_from, x.dtype)
    a0, s0 = coefficients(process, c_to, x.dtype)
    ratio = a0 / a1
    var = jnp.maximum(s0**2 - (ratio * s1) ** 2, 0.0)
    return ratio * x + safe_sqrt(var) * normal_like(key, x)


class RePaintInfo(NamedTuple):
    r"""Per-step info of [`RePaint`][scoredyn.RePaint] (one step is one block): the states
    after each of the block's `jump` base steps in its last pass, shape `(jump, *x.shape)`."""

    xs: Array


class RePaint(AbstractSolver):
    r"""RePaint (Lugmayr et al. 2022): inpainting by replacement with resampling, around any
    solver.

    The $K$ steps of the grid are cut into $K/j$ blocks of $j$ = `jump` steps. A block from
    grid point $c_b$ to $c_e$ (in visiting order) is run $r$ = `resample` times:

    1. from the state at $c_b$, take the $j$ steps of the base solver, each followed by the
       replacement of [`Inpaint`][scoredyn.Inpaint]
       ($x\leftarrow\mathrm{mask}\odot(\alpha y + \sigma z) + (1-\mathrm{mask})\odot x$);
    2. unless this was pass $r$, re-noise the state at $c_e$ back to $c_b$ with the forward
       transition
       $x_b = \frac{\alpha_b}{\alpha_e}x_e + \sqrt{\sigma_b^2 - (\alpha_b\sigma_e/\alpha_e)^2}\,z$,
       and go to 1 from the base solver's state at $c_b$ with this $x$.

    $j = 1$ is the paper's Algorithm 1 (resample every step); $r = 1$ is plain
    [`Inpaint`][scoredyn.Inpaint]. The re-noising lets the unmeasured entries move towards
    agreement with the measurement, which replacement alone cannot
    ([derivation](../derivations/inverse-problems.md#repaint-resampling)). A multistep base
    solver restarts each pass from its state at $c_b$, history included, so its first steps
    of a pass combine outputs of the previous pass; single-step solvers (DDPM, DDIM, EDM, ...)
    are the intended use.

    One `step` is one block, all its passes; `num_steps(grid)` $= K/j$. Cost: $r$ times the
    base solver's network evaluations. The trajectory (`save_trajectory=True`) holds, at each
    grid point, the state of the last pass through it. Always stochastic: `sample` needs a key.

    Args:
        solver: the [`AbstractSolver`][scoredyn.AbstractSolver] to wrap.
        mask: boolean, True where $x$ is measured (as in [`Inpaint`][scoredyn.Inpaint]).
        y: the measurement, shaped like one example $x$.
        jump: $j \ge 1$, the block length in grid steps; it must divide the grid's $K$.
        resample: $r \ge 1$, the passes through each block.

    Raises:
        TypeError: for a `solver` that is not an `AbstractSolver`, a non-boolean `mask`, or a
            `jump` / `resample` that is not an int.
        ValueError: for `jump` or `resample` below 1, a `mask` with entries other than 0 and 1;
            in [`sample`][scoredyn.sample], for a `jump` that does not divide the grid's
            number of steps, a `y` not shaped like `x_T`, or `key=None`.

    Example:
        ```python
        solver = sd.RePaint(sd.DDPM(), mask, y, jump=10, resample=10)
        res = sd.sample(key, sched, model, solver, sd.grids.even(1000, 250), x_T)
        ```

    References:
        Lugmayr et al., *RePaint: Inpainting using Denoising Diffusion Probabilistic Models*,
        arXiv:2201.09865.
    """

    solver: AbstractSolver
    mask: Bool[Array, "..."]
    y: Float[Array, "..."]
    jump: int = eqx.field(static=True)
    resample: int = eqx.field(static=True)

    def __init__(
        self,
        solver: AbstractSolver,
        mask: ArrayLike,
        y: Float[ArrayLike, "..."],
        *,
        jump: int = 10,
        resample: int = 10,
    ):
        self.solver = check_solver(solver)
        self.mask, self.y = check_mask_y(mask, y)
        self.jump = check_int(jump, "jump")
        self.resample = check_int(resample, "resample")

    def _base_steps(self, grid) -> int:
        K = self.solver.num_steps(jnp.asarray(grid))
        if K % self.jump:
            raise ValueError(
                f"`jump` = {self.jump} must divide the grid's number of steps K = {K} (RePaint "
                "runs the grid in blocks of `jump` steps)."
            )
        return K

    def num_steps(self, grid) -> int:
        """The number of blocks, $K/j$."""
        return self._base_steps(grid) // self.jump

    def nfe(self, num_steps: int) -> int:
        """$r$ times the base solver's count for $K = j\\cdot$`num_steps` steps."""
        return self.resample * self.solver.nfe(num_steps * self.jump)

    def is_stochastic(self, process, grid) -> bool:
        self.solver.is_stochastic(process, grid)  # the base solver's checks of process and grid
        self._base_steps(grid)
        return True

    def grid_order(self, trajectory):
        return self.solver.grid_order(trajectory)

    def batch_noise(self) -> bool:
        return self.solver.batch_noise()

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> InpaintState:
        r"""The base solver's state at the first grid point, with the mask and measurement
        checked against `x_T` and `jump` against the grid."""
        self._base_steps(grid)
        return init_inpaint(
            self.solver, self.mask, self.y, "RePaint", process, model, grid, x_T, cond
        )

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[InpaintState, RePaintInfo]:
        r"""One block: $r$ passes of $j$ replaced base steps, re-noised back to the block's
        start between passes. Pass $u$ uses `fold_in(key, u)`, split into the re-noising key
        and the steps' keys (`fold_in(., s)` for step $s$ of the pass)."""
        if key is None:
            raise ValueError("RePaint draws noise: `step` needs a key, got None.")
        assert isinstance(state, InpaintState)
        j = self.jump
        i0 = state.i
        c_b, c_e = state.coords[i0], state.coords[i0 + j]

        def one_pass(carry, u):
            end, _ = carry
            k_noise, k_steps = split_key(fold_key(key, u))
            x_back = forward_transition(k_noise, state.process, end.x, c_e, c_b)
            x = jnp.where(u == 0, state.x, x_back)
            start = eqx.tree_at(lambda s: (s.x, s.base), state, (x, with_x(state.base, x)))

            def one_step(st, s):
                st = inpaint_step(self.solver, fold_key(k_steps, s), st, "RePaint")[0]
                return st, st.x

            end, xs = scan_carry(one_step, start, jnp.arange(j, dtype=jnp.int32))
            return (end, xs), None

        xs0 = jnp.zeros((j, *state.x.shape), state.x.dtype)
        passes = jnp.arange(self.resample, dtype=jnp.int32)
        (end, xs), _ = scan_carry(one_pass, (state, xs0), passes)
        return end, RePaintInfo(xs)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` (one block each) with the keys `fold_in(key, b)`."""
        if key is None:
            raise ValueError("RePaint draws noise: pass a key.")
        state = self.init(process, model, grid, x_T, cond)
        B = self.num_steps(grid)

        def body(st, b):
            st, info = self.step(self.step_key(key, b, B), st)
            return st, (info.xs if save_trajectory else None)

        state, xs = scan_carry(body, state, jnp.arange(B, dtype=jnp.int32))
        traj = None
        if save_trajectory:
            assert xs is not None
            traj = grid_trajectory(self.solver, x_T, xs.reshape(-1, *x_T.shape))
        K = B * self.jump
        nfe: Any = self.resample * base_nfe(self.solver, K, state.base)
        return Sample(state.x, traj, {"nfe": nfe, "num_steps": K})
