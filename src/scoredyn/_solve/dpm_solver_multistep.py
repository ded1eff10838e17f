r"""Multistep DPM-Solver in noise prediction (Lu et al. 2022a, the official code's
`method='multistep'` with `algorithm_type='dpmsolver'`).

Notation: $\ell = \lambda/2 = \log(\alpha/\sigma)$, $\hat\varepsilon_k$ the noise prediction at
grid point $t_k$, $h_i = \ell_{i+1} - \ell_i > 0$. The exact solution of the probability-flow ODE,

$$x_t = \frac{\alpha_t}{\alpha_s}x_s - \alpha_t\int_{\ell_s}^{\ell_t} e^{-\ell}\,
  \hat\varepsilon(x_\ell, \ell)\,\mathrm d\ell,$$

is the data-prediction solution of DPM-Solver++ (`dpm_solver_pp.py`) with $\alpha$ and
$\sigma$ exchanged and $\ell$ negated ($x = \alpha x_0 + \sigma\varepsilon$ is symmetric under
$\alpha\leftrightarrow\sigma$, $x_0\leftrightarrow\varepsilon$, which maps $\ell$ to $-\ell$).
The multistep weights are therefore DPM-Solver++'s, computed on $(\sigma, \alpha, -\ell)$.
See the derivation page `dpm-solver-pp.md`, section "DPM-Solver in noise prediction".
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._misc import check_vector_field, is_concrete
from ._continuous import check_grid, check_linear_process
from .base import AbstractSolver, AbstractState, Sample, SolverKey
from .dpm_solver import ModelEps
from .dpm_solver_pp import _check_bool, _multistep_tables, multistep_orders, scan_solve


class DPMSolverInfo(NamedTuple):
    r"""Per-step info of [`DPMSolverMultistep`][scoredyn.DPMSolverMultistep] and
    [`DPMSolverFast`][scoredyn.DPMSolverFast]: the step's start and end times, the order of the
    update it formed, and the model's noise prediction $\hat\varepsilon$ at its start."""

    t: Array
    t_next: Array
    order: Array
    eps: Array


class DPMHistoryState(AbstractState):
    r"""State of [`DPMSolverMultistep`][scoredyn.DPMSolverMultistep] and
    [`DPMSolverFast`][scoredyn.DPMSolverFast]: `x` at `grid[i]`, the earlier states and noise
    predictions a step combines (most recent first), and the per-step coefficients from `init`.

    Step `i` evaluates $\hat\varepsilon^{(0)} = \hat\varepsilon(t_i, x_i)$ and forms
    $x_{i+1} = \sum_k$ `coef_x[i, k]` $x_{i-k} + \sum_k$ `coef_m[i, k]`
    $\hat\varepsilon^{(k)}$, with $\hat\varepsilon^{(k)}$ the prediction at $t_{i-k}$.
    """

    x: Array
    i: Array
    xs: tuple[Array, ...]
    ms: tuple[Array, ...]
    grid: Array
    orders: Array
    coef_x: Array
    coef_m: Array
    eps: ModelEps


def init_history(grid, x_T, eps, orders, coef_x, coef_m, n_xs: int, n_ms: int):
    """The state at `grid[0]`, with `n_xs` earlier states and `n_ms` earlier outputs (zeros)."""
    zeros = jnp.zeros_like(x_T)
    return DPMHistoryState(
        x_T,
        jnp.zeros((), jnp.int32),
        (zeros,) * n_xs,
        (zeros,) * n_ms,
        grid,
        jnp.asarray(orders, jnp.int32),
        coef_x,
        coef_m,
        eps,
    )


def history_step(state: DPMHistoryState, denoise_to_zero: bool):
    r"""One step of a `DPMHistoryState`: the model at $(t_i, x_i)$, then the step's linear
    combination; with `denoise_to_zero`, the last step is followed by the data prediction at
    the last grid time."""
    i, x, grid = state.i, state.x, state.grid
    K = grid.shape[0] - 1
    t, t_next = grid[i], grid[i + 1]
    m0 = state.eps(t, x)
    hist_x = (x, *state.xs)
    hist_m = (m0, *state.ms)
    x_new = state.coef_x[i, 0] * hist_x[0]
    for k in range(1, len(hist_x)):
        x_new = x_new + state.coef_x[i, k] * hist_x[k]
    for k, m_k in enumerate(hist_m):
        x_new = x_new + state.coef_m[i, k] * m_k
    if denoise_to_zero:
        x_new = lax.cond(i == K - 1, lambda y: denoise(state.eps, t_next, y), lambda y: y, x_new)
    xs = (x, *state.xs[:-1]) if state.xs else ()
    ms = (m0, *state.ms[:-1]) if state.ms else ()
    new = eqx.tree_at(lambda st: (st.x, st.i, st.xs, st.ms), state, (x_new, i + 1, xs, ms))
    return new, DPMSolverInfo(t, t_next, state.orders[i], m0)


def denoise(eps: ModelEps, t, x):
    r"""The data prediction $\hat x_0 = (x - \sigma_t\hat\varepsilon)/\alpha_t$ at $t$ (one more
    model evaluation): the official code's `denoise_to_zero`, a first-order step from $\ell_t$ to
    $\ell = \infty$."""
    return eps.model.x0(eps.process, t, x, *eps.cond)


def noise_multistep_tables(al, sg, ell, orders, order, reference_3m):
    r"""Coefficients of multistep DPM-Solver-1/2/3 in noise prediction: DPM-Solver++'s
    multistep weights on $(\sigma, \alpha, -\ell)$. Columns: `coef_x` on $x_i$; `coef_m` on
    $\hat\varepsilon$ at $t_i, t_{i-1}, t_{i-2}$.

    A step to $\sigma = 0$ ($\ell = \infty$) is given its first-order limit
    $x_{i+1} = \alpha_{i+1}(x_i - \sigma_i\hat\varepsilon_i)/\alpha_i$, the data prediction at
    its start (the higher-order weights have no limit there)."""
    cx, cm, _ = _multistep_tables(sg, al, -ell, orders, order, False, reference_3m)
    inf = jnp.isinf(ell[1:] - ell[:-1])
    a_t, a_s, s_s = al[1:], al[:-1], sg[:-1]
    first = jnp.zeros_like(cm).at[:, 0].set(-a_t * s_s / a_s)
    cx = jnp.where(inf[:, None], (a_t / a_s)[:, None], cx)
    cm = jnp.where(inf[:, None], first, cm)
    return cx, cm


def check_sigma_end(solver, process, grid) -> None:
    r"""A concrete grid of `solver` must end where $\sigma > 0$ (`ValueError` otherwise)."""
    sde = check_linear_process(process, solver)
    grid, _ = check_grid(grid, sde, float)
    if not is_concrete(grid, sde):
        return
    with jax.ensure_compile_time_eval():  # a constant grid inside the user's jit
        sigma = float(sde.marginal(grid[-1])[1])
    if sigma == 0.0:
        raise ValueError(
            f"`grid` of {type(solver).__name__} must end where sigma > 0 (got sigma = 0 at "
            f"t = {float(grid[-1])}); end at t_eps and pass denoise_to_zero=True instead."
        )


def grid_coefficients(sde, grid, dtype):
    r"""$\alpha$, $\sigma$ and $\ell = \lambda/2$ at the grid points, in `dtype`."""
    al, sg = (v.astype(dtype) for v in jax.vmap(sde.marginal)(grid))
    ell = (0.5 * jax.vmap(sde.log_snr)(grid)).astype(dtype)
    return al, sg, ell


class DPMSolverMultistep(AbstractSolver):
    r"""Multistep DPM-Solver-2 and -3 in noise prediction (Lu et al. 2022a; the official code's
    `method='multistep'`, `algorithm_type='dpmsolver'`): one model evaluation per step, the
    earlier predictions carried in the state.

    With $\ell = \lambda/2 = \log(\alpha/\sigma)$, $h_i = \ell_{i+1} - \ell_i$,
    $\psi_1 = e^{h_i} - 1$, $\psi_2 = \psi_1/h_i - 1$, $\psi_3 = \psi_2/h_i - \tfrac12$,
    $\hat\varepsilon_k$ = `model.eps(process, t_k, x_k, *cond)` and $r_0 = h_{i-1}/h_i$,
    $r_1 = h_{i-2}/h_i$, $D_{1,0} = (\hat\varepsilon_i - \hat\varepsilon_{i-1})/r_0$,
    $D_{1,1} = (\hat\varepsilon_{i-1} - \hat\varepsilon_{i-2})/r_1$:

    - order 1 (DDIM):
      $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}\psi_1\hat\varepsilon_i$;
    - order 2: $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}\psi_1
      (\hat\varepsilon_i + \tfrac12 D_{1,0})$;
    - order 3: $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(\psi_1\hat\varepsilon_i +
      \psi_2 D_1 + 2\psi_3 D_2)$ with
      $D_1 = D_{1,0} + \frac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1})$ and
      $D_2 = \frac{D_{1,0} - D_{1,1}}{r_0 + r_1}$ (the Taylor weight; `reference_3m=True` gives
      $D_2$ the official code's weight $\sigma_{i+1}\psi_3$, half of it, which makes the
      method second order).

    Step $i$ has order at most $i + 1$ (warm-up); with `lower_order_final` and fewer than 15
    steps also at most $K - i$, as [`DPMSolverPP`][scoredyn.DPMSolverPP] and diffusers (the
    official code lowers the order below 10 steps only: pass `lower_order_final=False` to
    reproduce it at 10 to 14 steps). A grid ending where $\sigma = 0$ makes the last step
    return the data prediction at its start. Any strictly decreasing grid of a linear SDE
    works; Lu et al.'s is [`sd.grids.log_snr`][scoredyn.grids.log_snr]. Deterministic; cost $K$
    evaluations, plus one with `denoise_to_zero`. See
    [the derivation](../derivations/dpm-solver-pp.md#multistep-dpm-solver).

    Args:
        order: 1, 2 or 3.
        lower_order_final: lower the order of the last steps (fewer than 15 steps).
        denoise_to_zero: after the last step, return $\hat x_0$ at the last grid time (one
            more evaluation), the official code's `denoise_to_zero`.
        reference_3m: the official code's third-order weight (second order in practice).

    Raises:
        ValueError: at construction, for an `order` other than 1, 2, 3; in
            [`sample`][scoredyn.sample], for a grid that is not strictly decreasing in $[0, T]$.
        TypeError: at construction, for an `order` that is not an int or a flag that is not a
            bool; in `sample`, for a `process` that is not a linear SDE.

    Example:
        ```python
        grid = sd.grids.log_snr(sde, 10)
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.DPMSolverMultistep(order=3), grid, x_T)
        res.stats["nfe"]   # 10
        ```

    References:
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
        in Around 10 Steps*, arXiv:2206.00927; the multistep variant is the official code's.
    """

    order: int = eqx.field(static=True, default=2)
    lower_order_final: bool = eqx.field(static=True, default=True)
    denoise_to_zero: bool = eqx.field(static=True, default=False)
    reference_3m: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise TypeError(f"`order` must be an int (1, 2 or 3), got {self.order!r}.")
        if self.order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3, got {self.order!r}.")
        for name in ("lower_order_final", "denoise_to_zero", "reference_3m"):
            _check_bool(getattr(self, name), name)

    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float)
        return False

    def nfe(self, num_steps: int) -> int:
        return num_steps + int(self.denoise_to_zero)

    def orders(self, num_steps: int) -> np.ndarray:
        """The order of each of `num_steps` steps (static): see `lower_order_final`."""
        return multistep_orders(num_steps, self.order, self.lower_order_final)

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPMHistoryState:
        r"""The state at `grid[0]`: checks (a linear SDE, a strictly decreasing grid in
        $[0, T]$, a model shaped like `x`), then every step's coefficients."""
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        eps = ModelEps(model, sde, tuple(cond))
        check_vector_field(eps, "model.eps", grid[0], x_T)
        al, sg, ell = grid_coefficients(sde, grid, x_T.dtype)
        orders = self.orders(grid.shape[0] - 1)
        cx, cm = noise_multistep_tables(al, sg, ell, orders, self.order, self.reference_3m)
        return init_history(grid, x_T, eps, orders, cx, cm, 0, self.order - 1)

    def step(
        self, key: SolverKey | None, state: AbstractState
    ) -> tuple[DPMHistoryState, DPMSolverInfo]:
        r"""One step $t_i \to t_{i+1}$ (`key` is unused): the model at $(t_i, x_i)$, then the
        step's linear combination. The info is a [`DPMSolverInfo`][scoredyn.DPMSolverInfo]."""
        assert isinstance(state, DPMHistoryState)
        return history_step(state, self.denoise_to_zero)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` (carrying only the state's arrays, so that a model may wrap
        a plain function)."""
        return scan_solve(self, key, process, model, grid, x_T, cond, save_trajectory)
