r"""DPM-Solver++: exponential integrators in data prediction (Lu et al. 2022b).

Notation: $\ell = \lambda/2 = \log(\alpha/\sigma)$ is half the code's log-SNR, $\hat x_0$ the
model's data prediction. From $\ell_s$ to $\ell_t$, $h = \ell_t - \ell_s > 0$, the
probability-flow ODE is solved exactly by

$$x_t = \frac{\sigma_t}{\sigma_s}x_s
  + \sigma_t\int_{\ell_s}^{\ell_t} e^{\ell}\,\hat x_0(x_\ell, \ell)\,\mathrm d\ell,$$

and the reverse SDE by
$x_t = \frac{\sigma_t}{\sigma_s}e^{-h}x_s + 2\alpha_t\int_{\ell_s}^{\ell_t}
e^{-2(\ell_t - \ell)}\hat x_0\,\mathrm d\ell + \sigma_t\sqrt{1 - e^{-2h}}\,z$. Every variant here
replaces $\hat x_0$ along the step by a polynomial in $\ell$ through a few evaluations, so each
step is a linear combination of the current state, earlier states or model outputs, and (for
the SDE) one Gaussian draw, with coefficients that depend on the grid alone. `init` computes
those coefficients once; `step` evaluates the model and forms the combination. See
[DPM-Solver++](../derivations/dpm-solver-pp.md).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._misc import check_vector_field
from .._model import AbstractModel
from .._sde import AbstractLinearSDE
from ._continuous import check_grid, check_linear_process, scan_states, with_start
from .base import AbstractSolver, AbstractState, Sample, SolverKey

# Intermediate log-SNR fractions of Lu et al.'s singlestep solvers (2S: r1; 3S: r1, r2).
_R2: tuple[float, ...] = (0.5,)
_R3: tuple[float, ...] = (1.0 / 3.0, 2.0 / 3.0)
# diffusers and the official code lower the order of the last steps only below this many steps.
_LOWER_ORDER_BELOW = 15


class ModelX0(eqx.Module):
    """`model.x0(process, t, x, *cond)` as a data prediction `(t, x) -> array like x`."""

    model: AbstractModel
    process: AbstractLinearSDE
    cond: tuple

    def __call__(self, t, x):
        return self.model.x0(self.process, t, x, *self.cond)


class DPMSolverPPInfo(NamedTuple):
    r"""Per-step info of [`DPMSolverPP`][scoredyn.DPMSolverPP]: the step's start and end times,
    the order it used, and the model's data prediction $\hat x_0$ at its start."""

    t: Array
    t_next: Array
    order: Array
    x0: Array


class DPMSolverPPState(AbstractState):
    r"""State of [`DPMSolverPP`][scoredyn.DPMSolverPP]: `x` at `grid[i]`, the previous states
    and model outputs a step combines (most recent first), and the per-step coefficient tables
    computed by `init`.

    Step `i` forms
    $x_{i+1} = \sum_k$ `coef_x[i, k]` $x_{i-k} + \sum_k$ `coef_m[i, k]` $\hat x_0^{(k)}
    +$ `coef_z[i]` $z_i$, where $\hat x_0^{(k)}$ is the model output at $t_{i-k}$ (multistep
    and grid-staged singlestep) or at the step's $k$-th stage (singlestep), and stage $k$ starts
    from `stage_x[i, k]` $x_i + \sum_l$ `stage_m[i, k, l]` $\hat x_0^{(l)}$ at `stage_t[i, k]`.
    """

    x: Array
    i: Array
    xs: tuple[Array, ...]
    ms: tuple[Array, ...]
    grid: Array
    orders: Array
    coef_x: Array
    coef_m: Array
    coef_z: Array
    stage_t: Array
    stage_x: Array
    stage_m: Array
    x0: ModelX0


# ------------------------------------------------------------------------------ order lists


def multistep_orders(K: int, order: int, lower_order_final: bool) -> np.ndarray:
    r"""Orders of the $K$ steps of a multistep solve: $\min(k, i + 1)$ for step $i$ (the first
    steps have fewer previous outputs), and with `lower_order_final` and $K < 15$ also at most
    $K - i$ (the last step is first order, the one before at most second order), as diffusers'
    `DPMSolverMultistepScheduler` and the official code."""
    i = np.arange(K)
    orders = np.minimum(order, i + 1)
    if lower_order_final and K < _LOWER_ORDER_BELOW:
        orders = np.minimum(orders, K - i)
    return orders.astype(np.int32)


def grid_stage_orders(K: int, order: int, lower_order_final: bool) -> np.ndarray:
    r"""diffusers' `DPMSolverSinglestepScheduler.get_order_list` for $K$ grid intervals: entry
    $j$ is one more than the position of interval $j$ in its singlestep group (a group of $k$
    intervals is one step of order $k$ whose stages sit on the inner grid points). Without
    `lower_order_final` the groups are full, `[1, 2, 3] * (K // 3)`; with it (or when $K$ is not
    a multiple of `order`, where diffusers switches it on) the last groups are shorter."""
    if order == 1:
        return np.ones(K, np.int32)
    full = list(range(1, order + 1))
    if not lower_order_final and K % order == 0:
        return np.array(full * (K // order), np.int32)
    q, rem = divmod(K, order)
    if order == 2:
        orders = full * (q - 1) + [1, 1] if rem == 0 else full * q + [1]
    elif rem == 0:
        orders = full * (q - 1) + [1, 2] + [1]
    else:
        orders = full * q + list(range(1, rem + 1))
    return np.array(orders, np.int32)


# ----------------------------------------------------------------------- coefficient tables


def _pad_back(v: Array, n: int) -> Array:
    """`v` shifted back by `n` places (entry i holds v[i - n]), the first n set to v[0]: a
    finite stand-in for the missing earlier steps, whose coefficients are then unused."""
    return jnp.concatenate([jnp.full((n,), v[0], v.dtype), v])[: v.shape[0]]


def _to_zero_noise(h, a_t, cx, cm, cz):
    r"""Rows of a step to $\sigma = 0$ ($\ell = \infty$: a grid ending at $t = 0$ of a VP-type
    process) are the first-order update's limit, $x_{i+1} = \hat x_0^{(i)}$ (diffusers'
    `final_sigmas_type="zero"`): higher-order weights have no limit there."""
    inf = jnp.isinf(h)
    first = jnp.zeros_like(cm).at[:, 0].set(a_t)
    return (
        jnp.where(inf[:, None], 0.0, cx),
        jnp.where(inf[:, None], first, cm),
        jnp.where(inf, 0.0, cz),
    )


def _finite(h: Array) -> Array:
    """`h` with an infinite step (to sigma = 0) replaced by 1, so that the unused higher-order
    weights of that step stay finite."""
    return jnp.where(jnp.isinf(h), 1.0, h)


def _select(orders: np.ndarray, cands: list[Array]) -> Array:
    """Row i of `cands[orders[i] - 1]` (static orders, so no traced branching)."""
    out = cands[0]
    for k in range(1, len(cands)):
        out = jnp.where(jnp.asarray(orders == k + 1)[:, None], cands[k], out)
    return out


def _multistep_tables(al, sg, ell, orders, order, stochastic, reference_3m):
    r"""Coefficients of DPM-Solver++(1M/2M/3M) and SDE-DPM-Solver++(1M/2M) on each step.

    Columns: `coef_x` on $x_i$; `coef_m` on $\hat x_0$ at $t_i, t_{i-1}, t_{i-2}$."""
    h_inf = ell[1:] - ell[:-1]
    h = _finite(h_inf)
    r0 = _pad_back(h, 1) / h  # h_{i-1} / h_i
    r1 = _pad_back(h, 2) / h  # h_{i-2} / h_i
    a_t, s_t, s_s = al[1:], sg[1:], sg[:-1]
    z = jnp.zeros_like(h)
    if stochastic:
        em = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        cx = (s_t / s_s) * jnp.exp(-h)
        cz = s_t * jnp.sqrt(em)
        c1 = jnp.stack([a_t * em, z], -1)
        c2 = jnp.stack([a_t * em * (1.0 + 0.5 / r0), -a_t * em * 0.5 / r0], -1)
        return _to_zero_noise(h_inf, a_t, cx[:, None], _select(orders, [c1, c2][:order]), cz)
    phi1 = jnp.expm1(-h)
    cx = s_t / s_s
    cols = [z] * (order - 1)
    c1 = jnp.stack([-a_t * phi1, *cols], -1)
    cands = [c1]
    if order >= 2:
        c2 = jnp.stack([-a_t * phi1 * (1.0 + 0.5 / r0), a_t * phi1 * 0.5 / r0, *cols[1:]], -1)
        cands.append(c2)
    if order == 3:
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        w = 1.0 if reference_3m else 2.0  # weight of D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0''/2
        c = phi2 * (1.0 + r0 / (r0 + r1)) - w * phi3 / (r0 + r1)  # on D1_0 = (m0 - m1)/r0
        d = -phi2 * r0 / (r0 + r1) + w * phi3 / (r0 + r1)  # on D1_1 = (m1 - m2)/r1
        c3 = jnp.stack(
            [-a_t * phi1 + a_t * c / r0, -a_t * c / r0 + a_t * d / r1, -a_t * d / r1], -1
        )
        cands.append(c3)
    return _to_zero_noise(h_inf, a_t, cx[:, None], _select(orders, cands), jnp.zeros_like(h))


def _grid_stage_tables(al, sg, ell, orders, order):
    r"""Coefficients of the grid-staged singlestep solver (diffusers' singlestep scheduler).

    Interval $j$ at position $p$ of its group starts the update from the group's first point
    $s = j - p$: columns of `coef_x` on $x_j, x_{j-1}, x_{j-2}$, of `coef_m` on $\hat x_0$ at
    $t_j, t_{j-1}, t_{j-2}$."""
    K = orders.shape[0]
    pos = orders - 1
    src = np.arange(K) - pos
    l_s, s_s = ell[src], sg[src]
    h_inf = ell[1:] - l_s
    h = _finite(h_inf)
    r = jnp.where(jnp.asarray(pos > 0), (ell[:-1] - l_s) / h, 1.0)  # stage fraction (1: unused)
    a_t, s_t = al[1:], sg[1:]
    phi1 = jnp.expm1(-h)
    z = jnp.zeros_like(h)
    onehot = jnp.asarray(np.eye(order, dtype=np.float64)[pos]).astype(h.dtype)
    cx = onehot * (s_t / s_s)[:, None]
    cols = [z] * (order - 1)
    cands = [jnp.stack([-a_t * phi1, *cols], -1)]
    if order >= 2:  # 2S from s = j - 1: (1 - 1/(2r)) on x0(s), 1/(2r) on x0(t_j)
        cands.append(
            jnp.stack([-a_t * phi1 * 0.5 / r, -a_t * phi1 * (1.0 - 0.5 / r), *cols[1:]], -1)
        )
    if order == 3:  # 3S from s = j - 2, final update through x0(s) and x0(t_j) only
        phi2 = phi1 / h + 1.0
        cands.append(jnp.stack([a_t * phi2 / r, z, -a_t * phi1 - a_t * phi2 / r], -1))
    return _to_zero_noise(h_inf, a_t, cx, _select(orders, cands), jnp.zeros_like(h))


def _singlestep_tables(process, grid, al, sg, ell, order, dtype):
    r"""Coefficients of Lu et al.'s singlestep DPM-Solver++(2S) / (3S): stages at the log-SNR
    fractions $r_1 = 1/2$ (2S) or $r_1 = 1/3, r_2 = 2/3$ (3S) of each interval."""
    K = ell.shape[0] - 1
    h_inf = ell[1:] - ell[:-1]
    h = _finite(h_inf)
    a_t, s_t, s_s = al[1:], sg[1:], sg[:-1]
    phi1 = jnp.expm1(-h)
    cx = (s_t / s_s)[:, None]
    if order == 1:
        empty = jnp.zeros((K, 0), dtype)
        cx, cm, cz = _to_zero_noise(h_inf, a_t, cx, (-a_t * phi1)[:, None], jnp.zeros_like(h))
        return cx, cm, cz, empty, empty, jnp.zeros((K, 0, 0), dtype)
    fracs = _R2 if order == 2 else _R3
    stage_t = jnp.stack([process.time_at_log_snr(2.0 * (ell[:-1] + f * h)) for f in fracs], -1)
    # a step to sigma = 0 returns x0 at its start (below); its unused stages sit at its end
    stage_t = jnp.where(jnp.isinf(h_inf)[:, None], grid[1:, None], stage_t).astype(dtype)
    a_k, s_k = (v.astype(dtype) for v in jax.vmap(jax.vmap(process.marginal))(stage_t))
    z = jnp.zeros_like(h)
    if order == 2:
        r1 = fracs[0]
        stage_x = s_k / s_s[:, None]
        stage_m = (-a_k[:, 0] * jnp.expm1(-r1 * h))[:, None, None]
        cm = jnp.stack([-a_t * phi1 * (1.0 - 0.5 / r1), -a_t * phi1 * 0.5 / r1], -1)
        return (*_to_zero_noise(h_inf, a_t, cx, cm, z), stage_t, stage_x, stage_m)
    r1, r2 = fracs[0], fracs[1]
    phi11, phi12 = jnp.expm1(-r1 * h), jnp.expm1(-r2 * h)
    phi22 = phi12 / (r2 * h) + 1.0
    phi2 = phi1 / h + 1.0
    a1, a2 = a_k[:, 0], a_k[:, 1]
    stage_x = s_k / s_s[:, None]
    row1 = jnp.stack([-a1 * phi11, z], -1)
    row2 = jnp.stack([-a2 * phi12 - (r2 / r1) * a2 * phi22, (r2 / r1) * a2 * phi22], -1)
    stage_m = jnp.stack([row1, row2], 1)
    cm = jnp.stack([-a_t * phi1 - a_t * phi2 / r2, z, a_t * phi2 / r2], -1)
    return (*_to_zero_noise(h_inf, a_t, cx, cm, z), stage_t, stage_x, stage_m)


# ----------------------------------------------------------------------------------- solver


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def scan_solve(solver, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
    """`init`, then a `lax.scan` of `step` (carrying only the state's arrays)."""
    state = solver.init(process, model, grid, x_T, cond)
    K = solver.num_steps(grid)

    def step(st, i):
        k = None if key is None else solver.step_key(key, i, K)
        return solver.step(k, st)[0]

    state, xs = scan_states(step, state, jnp.arange(K, dtype=jnp.int32), save_trajectory)
    traj = with_start(x_T, xs) if save_trajectory else None
    return Sample(state.x, traj, {"nfe": solver.nfe(K), "num_steps": K})


class DPMSolverPP(AbstractSolver):
    r"""DPM-Solver++ (Lu et al. 2022b): exponential integrators in data prediction, singlestep
    (2S, 3S) or multistep (2M, 3M), and SDE-DPM-Solver++ (1M, 2M).

    With $\ell = \lambda/2 = \log(\alpha/\sigma)$, $h_i = \ell_{i+1} - \ell_i$,
    $\varphi_1 = e^{-h_i} - 1$ and $\hat x_0^{(i)}$ = `model.x0(process, t_i, x_i, *cond)`:

    - order 1 (DDIM):
      $x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}x_i - \alpha_{i+1}\varphi_1\hat x_0^{(i)}$;
    - 2M (`multistep=True`): $D = (1 + \frac1{2r})\hat x_0^{(i)} - \frac1{2r}\hat x_0^{(i-1)}$,
      $r = h_{i-1}/h_i$, in place of $\hat x_0^{(i)}$;
    - 3M: adds the second divided difference of the last three outputs with its Taylor weight
      (see `reference_3m`);
    - 2S / 3S (`multistep=False`): intermediate stages at the log-SNR fractions $1/2$, or
      $1/3$ and $2/3$, of each interval (Lu et al.'s Algorithm 1 and the official code);
      with `stages_on_grid=True` instead each step of order $k$ spans $k$ grid intervals and
      takes its stages at the inner grid points (diffusers' `DPMSolverSinglestepScheduler`);
    - SDE-DPM-Solver++ (`stochastic=True`, multistep, order 1 or 2):
      $x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-h_i}x_i + \alpha_{i+1}(1 - e^{-2h_i})D +
      \sigma_{i+1}\sqrt{1 - e^{-2h_i}}\,z_i$, one standard normal draw $z_i$ per step for the
      whole `x` from the step's key (`fold_in(key, i)` in a whole solve), the last step
      included.

    Multistep solves start with lower orders (step $i$ uses at most order $i + 1$) and carry
    the previous model outputs in the state; with `lower_order_final` and fewer than 15 steps
    the last steps lower their order too, as in diffusers. A grid ending where $\sigma = 0$
    (e.g. $t = 0$ of a VP-type process) makes the last step return the data prediction at its
    start (diffusers' `final_sigmas_type="zero"`). The grid is any strictly decreasing
    array of times of a linear SDE ([`sd.grids`](grids.md)); a
    [`DiscreteSchedule`][scoredyn.DiscreteSchedule] is refused, as by
    [`DPMSolver`][scoredyn.DPMSolver] (express diffusers' integer timesteps as times of a
    linear SDE, see [the derivation](../derivations/dpm-solver-pp.md#reference-implementations)).
    Cost: $K$ evaluations of the model (multistep and grid-staged), `order` $\cdot K$
    (singlestep), plus one with `denoise_to_zero`.

    Args:
        order: 1, 2 or 3.
        multistep: multistep (2M, 3M; default) or singlestep (2S, 3S).
        stochastic: SDE-DPM-Solver++ (multistep, order 1 or 2); then `sample` needs a key.
        lower_order_final: lower the order of the last steps. Multistep, with fewer than 15
            steps: the last step is first order, the one before at most second. Grid-staged
            singlestep, any number of steps: the last groups are shorter (diffusers' order
            list). No effect on Lu's singlestep, whose steps are self-contained.
        denoise_to_zero: after the last step, return $\hat x_0$ evaluated at the last grid time
            (one more model evaluation), as the official code's `denoise_to_zero`.
        stages_on_grid: singlestep only: stages on the grid points (diffusers) instead of at
            fixed log-SNR fractions inside each interval (Lu et al.).
        reference_3m: use the third-order multistep update of the official code and diffusers,
            which gives the second divided difference half its Taylor weight, second order in
            practice (see
            [3M](../derivations/dpm-solver-pp.md#3m-and-the-weight-of-the-second-difference)).
            Default `False`: the Taylor weight, third order.

    Raises:
        ValueError: at construction, for an `order` other than 1, 2, 3, `stochastic` with
            singlestep or order 3, or `stages_on_grid` with multistep; in
            [`sample`][scoredyn.sample], for a grid that is not strictly decreasing in $[0, T]$.
        TypeError: at construction, for an `order` that is not an int or a flag that is not a
            bool; in `sample`, for a `process` that is not a linear SDE.

    Example:
        ```python
        grid = sd.grids.log_snr(sde, 10)
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.DPMSolverPP(order=2), grid, x_T)
        res.stats["nfe"]   # 10
        x = sd.sample(key, sde, model, sd.DPMSolverPP(stochastic=True), grid, x_T).x
        ```

    References:
        Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
        Models*, arXiv:2211.01095.
    """

    order: int = eqx.field(static=True, default=2)
    multistep: bool = eqx.field(static=True, default=True)
    stochastic: bool = eqx.field(static=True, default=False)
    lower_order_final: bool = eqx.field(static=True, default=True)
    denoise_to_zero: bool = eqx.field(static=True, default=False)
    stages_on_grid: bool = eqx.field(static=True, default=False)
    reference_3m: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise TypeError(f"`order` must be an int (1, 2 or 3), got {self.order!r}.")
        if self.order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3, got {self.order!r}.")
        for name in (
            "multistep",
            "stochastic",
            "lower_order_final",
            "denoise_to_zero",
            "stages_on_grid",
            "reference_3m",
        ):
            _check_bool(getattr(self, name), name)
        if self.stochastic and not self.multistep:
            raise ValueError(
                "`stochastic=True` (SDE-DPM-Solver++) is multistep: pass `multistep=True`."
            )
        if self.stochastic and self.order == 3:
            raise ValueError(
                "`stochastic=True` supports `order` 1 or 2 (SDE-DPM-Solver++(1M), (2M)), got 3."
            )
        if self.stages_on_grid and self.multistep:
            raise ValueError(
                "`stages_on_grid=True` is a singlestep option: pass `multistep=False`."
            )

    @property
    def _lu_singlestep(self) -> bool:
        return not self.multistep and not self.stages_on_grid

    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float)
        return self.stochastic

    def batch_noise(self) -> bool:
        return True

    def nfe(self, num_steps: int) -> int:
        per = self.order if self._lu_singlestep else 1
        return per * num_steps + int(self.denoise_to_zero)

    def orders(self, num_steps: int) -> np.ndarray:
        """The order of each of `num_steps` steps (static): see `lower_order_final`."""
        if self.multistep:
            return multistep_orders(num_steps, self.order, self.lower_order_final)
        if self.stages_on_grid:
            return grid_stage_orders(num_steps, self.order, self.lower_order_final)
        return np.full(num_steps, self.order, np.int32)

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPMSolverPPState:
        r"""The state at `grid[0]`: checks (a linear SDE, a strictly decreasing grid in
        $[0, T]$, a model shaped like `x`), then every step's coefficients, computed from
        $\alpha$, $\sigma$ and $\ell$ at the grid (and stage) times."""
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        x0 = ModelX0(model, sde, tuple(cond))
        check_vector_field(x0, "model.x0", grid[0], x_T)
        dtype = x_T.dtype
        K = grid.shape[0] - 1
        al, sg = (v.astype(dtype) for v in jax.vmap(sde.marginal)(grid))
        ell = (0.5 * jax.vmap(sde.log_snr)(grid)).astype(dtype)
        orders = self.orders(K)
        n_hist = 0
        if self._lu_singlestep:
            tables = _singlestep_tables(sde, grid, al, sg, ell, self.order, dtype)
        else:
            n_hist = self.order - 1
            if self.multistep:
                cx, cm, cz = _multistep_tables(
                    al, sg, ell, orders, self.order, self.stochastic, self.reference_3m
                )
            else:
                cx, cm, cz = _grid_stage_tables(al, sg, ell, orders, self.order)
            empty = jnp.zeros((K, 0), dtype)
            tables = (cx, cm, cz, empty, empty, jnp.zeros((K, 0, 0), dtype))
        cx, cm, cz, stage_t, stage_x, stage_m = tables
        n_xs = n_hist if self.stages_on_grid else 0
        zeros = jnp.zeros_like(x_T)
        return DPMSolverPPState(
            x_T,
            jnp.zeros((), jnp.int32),
            (zeros,) * n_xs,
            (zeros,) * n_hist,
            grid,
            jnp.asarray(orders),
            cx,
            cm,
            cz,
            stage_t,
            stage_x,
            stage_m.astype(dtype),
            x0,
        )

    def step(
        self, key: SolverKey | None, state: AbstractState
    ) -> tuple[DPMSolverPPState, DPMSolverPPInfo]:
        r"""One step $t_i \to t_{i+1}$: the model at $(t_i, x_i)$ (and at the stages of a
        singlestep solver), then the step's linear combination; with `stochastic`, plus
        `coef_z[i]` times one standard normal draw from `key`. The info is a
        [`DPMSolverPPInfo`][scoredyn.DPMSolverPPInfo]."""
        assert isinstance(state, DPMSolverPPState)
        i, x, grid = state.i, state.x, state.grid
        K = grid.shape[0] - 1
        t, t_next = grid[i], grid[i + 1]
        m = [state.x0(t, x)]
        for k in range(state.stage_t.shape[1]):  # singlestep stages (static count)
            u = state.stage_x[i, k] * x
            for l_, m_l in enumerate(m):
                u = u + state.stage_m[i, k, l_] * m_l
            m.append(state.x0(state.stage_t[i, k], u))
        hist_x = (x, *state.xs)
        hist_m = (*m, *state.ms)
        x_new = state.coef_x[i, 0] * hist_x[0]
        for k in range(1, len(hist_x)):
            x_new = x_new + state.coef_x[i, k] * hist_x[k]
        for k, m_k in enumerate(hist_m):
            x_new = x_new + state.coef_m[i, k] * m_k
        if self.stochastic:
            if key is None:
                raise ValueError("DPMSolverPP(stochastic=True) adds noise: `step` needs a key.")
            x_new = x_new + state.coef_z[i] * self.draw_noise(key, x)
        if self.denoise_to_zero:
            x_new = lax.cond(i == K - 1, lambda y: state.x0(t_next, y), lambda y: y, x_new)
        xs = (x, *state.xs[:-1]) if state.xs else ()
        ms = (m[0], *state.ms[:-1]) if state.ms else ()
        new = eqx.tree_at(lambda st: (st.x, st.i, st.xs, st.ms), state, (x_new, i + 1, xs, ms))
        return new, DPMSolverPPInfo(t, t_next, state.orders[i], m[0])

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` with the keys `fold_in(key, i)` (the default solve, carrying
        only the state's arrays, so that a model may wrap a plain function)."""
        return scan_solve(self, key, process, model, grid, x_T, cond, save_trajectory)
