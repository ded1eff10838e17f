r"""DPM-Solver-fast (Lu et al. 2022a, Sec. 3.4): singlestep DPM-Solver-3, -2 and -1 mixed so
that a budget of $N$ model evaluations is used up (the official code's `method='singlestep'`,
`algorithm_type='dpmsolver'`).

The grid holds one point per evaluation: a step of order $k$ spans $k$ grid intervals, and
its intermediate stages are the inner grid points. In half log-SNR $\ell$, a step from $s$ to
$t$ with $H = \ell_t - \ell_s$ and stage fractions $r_1, r_2$ is Lu et al.'s DPM-Solver-$k$
with those fractions. See [DPM-Solver-fast](../derivations/dpm-solver-pp.md#dpm-solver-fast).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_int
from .._custom_types import Time
from .._misc import check_vector_field
from ._continuous import check_grid, check_linear_process
from .base import AbstractSolver, AbstractState, Sample, SolverKey
from .dpm_solver import ModelEps
from .dpm_solver_multistep import (
    DPMHistoryState,
    DPMSolverInfo,
    check_sigma_end,
    grid_coefficients,
    history_step,
    init_history,
)
from .dpm_solver_pp import _check_bool, scan_solve


def fast_orders(nfe: int, order: int) -> np.ndarray:
    r"""The orders of the singlestep steps of DPM-Solver-fast with `nfe` evaluations.

    With $N$ = `nfe` $= 3q + r$ and `order` 3: $q$ third-order steps and one of order $r$ when
    $r > 0$; when $r = 0$, $q - 1$ third-order steps, then one second- and one first-order step
    (so $q + 1$ steps in every case, Lu et al.'s $K = \lfloor N/3\rfloor + 1$). With `order` 2:
    $\lfloor N/2\rfloor$ second-order steps, then one first-order step if $N$ is odd. With
    `order` 1: $N$ first-order steps. The orders sum to $N$."""
    if order == 3:
        q, r = divmod(nfe, 3)
        orders = [3] * q + [r] if r else [3] * (q - 1) + [2, 1]
    elif order == 2:
        q, r = divmod(nfe, 2)
        orders = [2] * q + [1] * r
    else:
        orders = [1] * nfe
    return np.asarray(orders, np.int32)


def _layout(orders: np.ndarray):
    """Per grid interval: its position in its step, its step's order and first grid index."""
    pos = np.concatenate([np.arange(k) for k in orders]).astype(np.int32)
    grp = np.repeat(orders, orders).astype(np.int32)
    src = np.arange(pos.shape[0], dtype=np.int32) - pos
    return pos, grp, src


def _fast_tables(al, sg, ell, orders: np.ndarray, n_cols: int):
    r"""Coefficients of every grid interval of DPM-Solver-fast (noise prediction).

    Interval $j$ at position $p$ of a step of order $k$ from grid point $s = j - p$ to
    $e = s + k$, with $H = \ell_e - \ell_s$, $r_m = (\ell_{s+m} - \ell_s)/H$ and
    $\hat\varepsilon_{s+m}$ the prediction at the step's $m$-th point, forms the estimate at
    $t_{j+1}$ (columns of `coef_x` on $x_j, x_{j-1}, x_{j-2}$, of `coef_m` on
    $\hat\varepsilon_j, \hat\varepsilon_{j-1}, \hat\varepsilon_{j-2}$):

    - $p = 0$: the first-order step from $s$ (for $k > 1$ the first stage $u_1$);
    - $k = 2$, $p = 1$: $x_e$ from $\hat\varepsilon_s$ and $\hat\varepsilon_{s+1}$
      (DPM-Solver-2 with fraction $r_1$);
    - $k = 3$, $p = 1$: the second stage $u_2$, a second-order Taylor step from $s$ to $s + 2$;
    - $k = 3$, $p = 2$: $x_e$ from $\hat\varepsilon_s$ and $\hat\varepsilon_{s+2}$
      (DPM-Solver-3's last line with fraction $r_2$)."""
    pos, grp, src = _layout(orders)
    n = int(orders.sum())  # index of the last grid point
    ls = ell[src]
    H = ell[np.minimum(src + grp, n)] - ls
    d1 = ell[np.minimum(src + 1, n)] - ls
    d2 = ell[np.minimum(src + 2, n)] - ls
    r1 = jnp.where(jnp.asarray(grp > 1), d1 / H, 1.0)
    r2 = jnp.where(jnp.asarray(grp > 2), d2 / H, 1.0)
    s_t = sg[1:]
    ratio = al[1:] / al[src]
    z = jnp.zeros_like(H)
    phi1 = jnp.expm1(H)
    # p = 0: a first-order step from s to the first inner point (to t when k = 1)
    first = -s_t * jnp.where(jnp.asarray(grp > 1), jnp.expm1(r1 * H), phi1)
    # k = 2, p = 1
    c2 = (0.5 / r1) * s_t * phi1
    two = [-c2, -s_t * phi1 + c2, z]
    # k = 3, p = 1: u2
    phi12 = jnp.expm1(r2 * H)
    phi22 = phi12 / (r2 * H) - 1.0
    c3 = (r2 / r1) * s_t * phi22
    mid = [-c3, -s_t * phi12 + c3, z]
    # k = 3, p = 2
    phi2 = phi1 / H - 1.0
    c4 = s_t * phi2 / r2
    last = [-c4, z, -s_t * phi1 + c4]
    cm = jnp.stack([first, z, z], -1)
    for mask, rows in (
        ((grp == 2) & (pos == 1), two),
        ((grp == 3) & (pos == 1), mid),
        ((grp == 3) & (pos == 2), last),
    ):
        cm = jnp.where(jnp.asarray(mask)[:, None], jnp.stack(rows, -1), cm)
    onehot = jnp.asarray(np.eye(3)[pos]).astype(ratio.dtype)
    cx = onehot * ratio[:, None]
    return cx[:, :n_cols], cm[:, :n_cols]


class DPMSolverFast(AbstractSolver):
    r"""DPM-Solver-fast (Lu et al. 2022a): singlestep DPM-Solver-3 steps, with a second- and/or
    first-order step at the end, using exactly one model evaluation per grid interval (the
    official code's `method='singlestep'`, `algorithm_type='dpmsolver'`).

    The grid has $N + 1$ points for a budget of $N$ evaluations. The steps' orders are
    [`orders(N)`][scoredyn.DPMSolverFast.orders] (e.g. `[3, 3, 3, 3, 3, 3, 2]` for $N = 20$,
    `[3, 3, 3, 2, 1]` for $N = 12$); a step of order $k$ spans $k$ grid intervals, and its
    stages are the inner grid points. With $\ell = \lambda/2$, $H = \ell_t - \ell_s$ over the
    step, $r_m = (\ell_{s_m} - \ell_s)/H$ the fraction of its $m$-th inner point and
    $\psi_1 = e^{H} - 1$:

    - order 1 (DDIM): $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t\psi_1\hat\varepsilon_s$;
    - order 2: $u_1$ by DDIM to $s_1$, then
      $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t\psi_1\hat\varepsilon_s -
      \frac{1}{2r_1}\sigma_t\psi_1(\hat\varepsilon(s_1, u_1) - \hat\varepsilon_s)$;
    - order 3: $u_1$ by DDIM to $s_1$, $u_2$ by a second-order Taylor step to $s_2$, then
      $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t\psi_1\hat\varepsilon_s -
      \frac{1}{r_2}\sigma_t\big(\tfrac{\psi_1}{H} - 1\big)(\hat\varepsilon(s_2, u_2) -
      \hat\varepsilon_s)$ (Lu et al.'s DPM-Solver-3 with free fractions; its local error has
      an extra $O((r_2 - \tfrac23)H^3)$ term, so third order needs $r_2 \to \tfrac23$).

    On the grid [`log_snr_grid`][scoredyn.DPMSolverFast.log_snr_grid] (steps uniform in
    $\lambda$, stages at $r = \tfrac12$ and $r = \tfrac13, \tfrac23$) this is the paper's
    DPM-Solver-fast; on [`sd.grids.uniform`][scoredyn.grids.uniform] or
    [`sd.grids.quadratic`][scoredyn.grids.quadratic] with $N$ steps it is the official code's
    `skip_type='time_uniform'` / `'time_quadratic'`. The state at an inner grid point is the
    stage value ($u_1$ or $u_2$, a lower-order estimate). The last grid point must have
    $\sigma > 0$ (use `denoise_to_zero` to end on the data prediction). Deterministic; cost $N$
    evaluations, plus one with `denoise_to_zero`. See
    [the derivation](../derivations/dpm-solver-pp.md#dpm-solver-fast).

    Args:
        order: the highest order, 1, 2 or 3.
        denoise_to_zero: after the last step, return $\hat x_0$ at the last grid time (one
            more evaluation), the official code's `denoise_to_zero`.

    Raises:
        ValueError: at construction, for an `order` other than 1, 2, 3; in
            [`sample`][scoredyn.sample], for a grid that is not strictly decreasing in $[0, T]$
            or ends where $\sigma = 0$.
        TypeError: at construction, for an `order` that is not an int or a flag that is not a
            bool; in `sample`, for a `process` that is not a linear SDE.

    Example:
        ```python
        fast = sd.DPMSolverFast(order=3)
        grid = fast.log_snr_grid(sde, 20)          # 21 points: 6 steps of order 3, 1 of order 2
        res = sd.sample(None, sde, sd.EpsModel(eps), fast, grid, x_T)
        res.stats["nfe"]   # 20
        ```

    References:
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
        in Around 10 Steps*, arXiv:2206.00927, Sec. 3.4 and Appendix.
    """

    order: int = eqx.field(static=True, default=3)
    denoise_to_zero: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise TypeError(f"`order` must be an int (1, 2 or 3), got {self.order!r}.")
        if self.order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3, got {self.order!r}.")
        _check_bool(self.denoise_to_zero, "denoise_to_zero")

    def orders(self, nfe: int) -> np.ndarray:
        """The orders of the steps for `nfe` evaluations (static; they sum to `nfe`)."""
        return fast_orders(check_int(nfe, "nfe"), self.order)

    def log_snr_grid(
        self, process, nfe: int, *, t_eps: Time = 1e-3, dtype=None
    ) -> Float[Array, " {nfe}+1"]:
        r"""Lu et al.'s grid for `nfe` evaluations: the steps' end points uniform in
        $\lambda$ ([`sd.grids.log_snr`][scoredyn.grids.log_snr] with one step per entry of
        `orders(nfe)`), each step of order $k$ cut into $k$ equal parts in $\lambda$ (the
        official code's `skip_type='logSNR'`). Returns `nfe + 1` decreasing times."""
        from .grids import log_snr  # not at import time: grids imports the discrete layer

        orders = self.orders(nfe)
        outer = log_snr(process, int(orders.shape[0]), t_eps=t_eps, dtype=dtype)
        ell = 0.5 * jax.vmap(process.log_snr)(outer)
        pos, grp, _ = _layout(orders)
        step = np.repeat(np.arange(orders.shape[0]), orders)  # the step of each interval
        frac = jnp.asarray(pos / grp, outer.dtype)
        inner = process.time_at_log_snr(2.0 * (ell[step] + frac * (ell[step + 1] - ell[step])))
        ts = jnp.where(jnp.asarray(pos == 0), outer[step], inner.astype(outer.dtype))
        return jnp.concatenate([ts, outer[-1:]])

    def is_stochastic(self, process, grid) -> bool:
        check_sigma_end(self, process, grid)
        return False

    def nfe(self, num_steps: int) -> int:
        return num_steps + int(self.denoise_to_zero)

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPMHistoryState:
        r"""The state at `grid[0]`: checks, then every grid interval's coefficients."""
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        eps = ModelEps(model, sde, tuple(cond))
        check_vector_field(eps, "model.eps", grid[0], x_T)
        al, sg, ell = grid_coefficients(sde, grid, x_T.dtype)
        orders = self.orders(grid.shape[0] - 1)
        cx, cm = _fast_tables(al, sg, ell, orders, self.order)
        pos, _, _ = _layout(orders)
        n = self.order - 1
        return init_history(grid, x_T, eps, pos + 1, cx, cm, n, n)

    def step(
        self, key: SolverKey | None, state: AbstractState
    ) -> tuple[DPMHistoryState, DPMSolverInfo]:
        r"""One grid interval $t_j \to t_{j+1}$ (`key` is unused): the model at $(t_j, x_j)$,
        then the interval's linear combination. The info's `order` is the order of the estimate
        formed (the interval's position in its step plus one)."""
        assert isinstance(state, DPMHistoryState)
        return history_step(state, self.denoise_to_zero)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` over the grid intervals."""
        return scan_solve(self, key, process, model, grid, x_T, cond, save_trajectory)
