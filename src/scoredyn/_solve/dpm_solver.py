r"""DPM-Solver: exponential integrators of the probability-flow ODE in log-SNR time.

Notation: $\ell = \lambda/2 = \log(\alpha/\sigma)$ is half the code's log-SNR (the paper's
$\lambda$), $\hat\varepsilon$ the noise prediction. From $\ell_s$ to $\ell_t$,
$h = \ell_t - \ell_s$,

$$x_t = \frac{\alpha_t}{\alpha_s}x_s
  - \alpha_t\int_{\ell_s}^{\ell_t} e^{-\ell}\,\hat\varepsilon(x_\ell, \ell)\,\mathrm d\ell$$

exactly; DPM-Solver-$k$ approximates $\hat\varepsilon$ along the step by a Taylor polynomial of
degree $k - 1$ in $\ell$ built from intermediate evaluations.
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import EpsFn, Key
from .._misc import check_vector_field
from .._model import AbstractModel, EpsModel
from .._sde import AbstractLinearSDE
from ._continuous import check_grid, check_linear_process, with_start
from ._utils import check_dtype, check_num_steps, check_score, check_sde, check_shape, check_t_eps
from .base import AbstractSolver, AbstractState, Sample
from .verbs import sample

_SKIPS = ("logSNR", "time_uniform", "time_quadratic")
# Intermediate log-SNR fractions of Lu et al.'s DPM-Solver-2 and -3 (Algorithms 1-2).
_R2 = 0.5
_R31, _R32 = 1.0 / 3.0, 2.0 / 3.0


def _half_log_snr(sde, t):
    r"""$\ell(t) = \lambda(t)/2$ for any shape of `t` (an SDE's methods take a scalar time)."""
    return 0.5 * jnp.vectorize(sde.log_snr)(t)


def time_of_half_log_snr(sde: AbstractLinearSDE, ell, t_lo, t_hi, iters: int = 64):
    r"""Invert $\ell(t) = \lambda(t)/2$ on $[t_{lo}, t_{hi}]$ by bisection.

    $\ell$ decreases in $t$. Works for any linear SDE; `iters` halvings leave a bracket of width
    $(t_{hi} - t_{lo})\,2^{-\text{iters}}$.
    """
    ell = jnp.asarray(ell)
    lo = jnp.full(ell.shape, t_lo, ell.dtype)
    hi = jnp.full(ell.shape, t_hi, ell.dtype)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = _half_log_snr(sde, mid) > ell  # l(mid) > l: the root lies later than mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def _stage_fractions(order: int):
    return {1: (), 2: (_R2,), 3: (_R31, _R32)}[order]


def time_grid(sde: AbstractLinearSDE, num_steps: int, t_eps, skip: str, dtype):
    r"""Times $T = t_0 > \dots > t_N = t_\epsilon$ on the grid named by `skip`."""
    T = jnp.asarray(sde.T, dtype)
    t_eps = jnp.asarray(t_eps, dtype)
    u = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    if skip == "time_uniform":
        ts = T + u * (t_eps - T)
    elif skip == "time_quadratic":
        ts = (jnp.sqrt(T) + u * (jnp.sqrt(t_eps) - jnp.sqrt(T))) ** 2
    else:
        l_T, l_eps = _half_log_snr(sde, T), _half_log_snr(sde, t_eps)
        ts = time_of_half_log_snr(sde, l_T + u * (l_eps - l_T), t_eps, T)
    return ts.at[0].set(T).at[-1].set(t_eps)


def _step_tables(sde, ts, order):
    """Per-step times and coefficients (schedule only, no x): computed once before the scan."""
    t_s, t_t = ts[:-1], ts[1:]
    l_s, l_t = _half_log_snr(sde, t_s), _half_log_snr(sde, t_t)
    h = l_t - l_s
    fr = _stage_fractions(order)
    stage_t = [time_of_half_log_snr(sde, l_s + r * h, ts[-1], ts[0]) for r in fr]
    return t_s, t_t, h, stage_t


def _dpm_step(sde, eps_fn, order, x, t_s, t_t, h, stage_t):
    """One DPM-Solver-`order` step from t_s to t_t (h = l_t - l_s > 0)."""
    dtype = x.dtype
    a_s, s_s = sde.marginal(t_s)
    a_t, s_t = sde.marginal(t_t)
    a_s, s_s, a_t, s_t = (v.astype(dtype) for v in (a_s, s_s, a_t, s_t))
    e_s = eps_fn(t_s, x)
    em1 = jnp.expm1(h)  # e^h - 1
    if order == 1:  # DDIM
        return (a_t / a_s) * x - s_t * em1 * e_s
    if order == 2:
        (t1,) = stage_t
        a1, s1 = (v.astype(dtype) for v in sde.marginal(t1))
        u1 = (a1 / a_s) * x - s1 * jnp.expm1(_R2 * h) * e_s
        return (a_t / a_s) * x - s_t * em1 * eps_fn(t1, u1)
    t1, t2 = stage_t
    a1, s1 = (v.astype(dtype) for v in sde.marginal(t1))
    a2, s2 = (v.astype(dtype) for v in sde.marginal(t2))
    u1 = (a1 / a_s) * x - s1 * jnp.expm1(_R31 * h) * e_s
    d1 = eps_fn(t1, u1) - e_s
    phi2_r2 = jnp.expm1(_R32 * h) / (_R32 * h) - 1.0  # (e^{r2 h} - 1)/(r2 h) - 1
    u2 = (a2 / a_s) * x - s2 * jnp.expm1(_R32 * h) * e_s - s2 * (_R32 / _R31) * phi2_r2 * d1
    d2 = eps_fn(t2, u2) - e_s
    phi2 = em1 / h - 1.0
    return (a_t / a_s) * x - s_t * em1 * e_s - (s_t / _R32) * phi2 * d2


class ModelEps(eqx.Module):
    """`model.eps(process, t, x, *cond)` as a noise prediction `(t, x) -> array like x`."""

    model: AbstractModel
    process: AbstractLinearSDE
    cond: tuple

    def __call__(self, t, x):
        return self.model.eps(self.process, t, x, *self.cond)


class DPMState(AbstractState):
    """State of [`DPMSolver`][scoredyn.DPMSolver]: `x` at `grid[i]` and the per-step tables
    (start and end times, $h$ in half log-SNR, stage times), computed once by `init`."""

    x: Array
    i: Array
    t_s: Array
    t_t: Array
    h: Array
    stage_t: tuple[Array, ...]
    sde: AbstractLinearSDE
    eps: ModelEps


class DPMSolver(AbstractSolver):
    r"""DPM-Solver-1, -2 or -3 (Lu et al. 2022): an exponential integrator of the
    probability-flow ODE in half log-SNR time $\ell = \lambda/2 = \log(\alpha/\sigma)$.

    From $t_i$ to $t_{i+1}$, $h_i = \ell_{i+1} - \ell_i$, $\hat\varepsilon_i =$
    `model.eps(process, t_i, x_i, *cond)`:

    - order 1 (exactly DDIM):
      $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(e^{h_i} - 1)\hat\varepsilon_i$;
    - order 2: one stage at $\ell_i + h_i/2$ (Lu et al., Algorithm 1 with $r_1 = 1/2$);
    - order 3: two stages at $\ell_i + h_i/3$ and $\ell_i + 2h_i/3$ (Algorithm 2).

    Any strictly decreasing grid works; the paper's choice is uniform in $\lambda$,
    [`sd.grids.log_snr`][scoredyn.grids.log_snr]. The stage times are found once, in `init`,
    by bisection of $\ell$ on $[t_K, t_0]$ (64 halvings), the schedule of scoredyn 0.1's
    `dpm_solver`, which this reproduces bit for bit on the same grid; they agree with the
    process's `time_at_log_snr` (closed form for VP, VE and cosine) to $10^{-12}$ in float64.
    Deterministic; cost `order * K` evaluations of the model.

    Args:
        order: 1, 2 or 3.

    Raises:
        ValueError: at construction, for an `order` other than 1, 2, 3; in
            [`sample`][scoredyn.sample], for a grid that is not strictly decreasing inside
            $[0, T]$.
        TypeError: for a `process` that is not a linear SDE.

    Example:
        ```python
        grid = sd.grids.log_snr(sde, 10)
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.DPMSolver(order=3), grid, x_T)
        res.stats["nfe"]   # 30
        ```

    References:
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
        in Around 10 Steps*, arXiv:2206.00927.
    """

    order: int = eqx.field(static=True, default=2)

    def __check_init__(self):
        if self.order not in (1, 2, 3) or isinstance(self.order, bool):
            raise ValueError(f"`order` must be 1, 2 or 3, got {self.order!r}.")

    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float)
        return False

    def nfe(self, num_steps: int) -> int:
        return self.order * num_steps

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPMState:
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        eps = ModelEps(model, sde, tuple(cond))
        check_vector_field(eps, "model.eps", grid[0], x_T)
        t_s, t_t, h, stage_t = _step_tables(sde, grid, self.order)
        i = jnp.zeros((), jnp.int32)
        return DPMState(x_T, i, t_s, t_t, h, tuple(stage_t), sde, eps)

    def step(self, key: Key | None, state: AbstractState) -> tuple[DPMState, Array]:
        r"""One DPM-Solver step $t_i \to t_{i+1}$ (`key` is unused). The info is $h_i$."""
        assert isinstance(state, DPMState)
        i = state.i
        stage_t = tuple(st[i] for st in state.stage_t)
        x = _dpm_step(
            state.sde,
            state.eps,
            self.order,
            state.x,
            state.t_s[i],
            state.t_t[i],
            state.h[i],
            stage_t,
        )
        return eqx.tree_at(lambda st: (st.x, st.i), state, (x, i + 1)), state.h[i]

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""`init`, then a `lax.scan` of the step over the tables (scanned over rather than
        indexed, as scoredyn 0.1's kernel did, so the bits are the same)."""
        st = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def body(x, inp):
            ts_, tt_, h_, stage_ = inp
            x = _dpm_step(st.sde, st.eps, self.order, x, ts_, tt_, h_, stage_)
            return x, (x if save_trajectory else None)

        x, xs = lax.scan(body, st.x, (st.t_s, st.t_t, st.h, st.stage_t))
        traj = with_start(x_T, xs) if save_trajectory else None
        return Sample(x, traj, {"nfe": self.nfe(K), "num_steps": K})


def _check_common(sde, order, skip, num_steps):
    check_sde(sde, linear=True)
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"`order` must be 1, 2 or 3, got {order!r}.")
    if skip not in _SKIPS:
        raise ValueError(f"`skip` must be one of {_SKIPS}, got {skip!r}.")
    return check_num_steps(num_steps)


def dpm_solver(
    sde: AbstractLinearSDE,
    eps_fn: EpsFn,
    x_T: Float[ArrayLike, "*shape"],
    *,
    num_steps: int = 20,
    order: int = 2,
    t_eps: float | None = None,
    skip: str = "logSNR",
) -> Float[Array, "*shape"]:
    r"""Integrate the probability-flow ODE from $x_T$ to $t_\epsilon$ with DPM-Solver-1, -2 or -3.

    Deprecated alias (removed in 0.3): use
    `sd.sample(None, sde, sd.EpsModel(eps_fn), sd.DPMSolver(order), grid, x_T)`, with `grid`
    from [`sd.grids`](grids.md) (`log_snr`, `uniform`, `quadratic` for the three `skip`s);
    this function is exactly that on its own grid (same bits).

    With $\ell = \log(\alpha/\sigma)$ (half the log-SNR), $h_i = \ell_{t_{i+1}} - \ell_{t_i}$ and
    $\hat\varepsilon_i = \hat\varepsilon(t_i, x_i)$, one step reads

    - order 1 (exactly DDIM):
      $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(e^{h_i} - 1)\hat\varepsilon_i$;
    - order 2: $u = \frac{\alpha_{s}}{\alpha_i}x_i - \sigma_{s}(e^{h_i/2} - 1)\hat\varepsilon_i$ at
      $\ell_s = \ell_i + h_i/2$, then
      $x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}(e^{h_i} - 1)\hat\varepsilon(s, u)$;
    - order 3: two stages at $\ell_i + h_i/3$ and $\ell_i + 2h_i/3$ (Lu et al., Algorithm 2).

    The local error is $O(h^{k+1})$, so the global error decays like $N^{-k}$ for $k$ = `order`.
    The step loop is a `lax.scan`; the schedule (times of the grid and of the stages, found by
    bisection on $\lambda(t)$ for the `"logSNR"` grid) is computed once before it. Cost:
    `order * num_steps` evaluations of `eps_fn`. See
    [DPM-Solver](../derivations/probability-flow.md#dpm-solver-exponential-integrators-in-log-snr-time).

    Args:
        sde: a linear SDE.
        eps_fn: noise prediction $(t, x) \mapsto \hat\varepsilon$ (e.g. `gm.eps_fn(sde)` or
            `sd.score_to_eps(sde, score)`).
        x_T: the starting point at $t = T$ (one example, any shape).
        num_steps: number of steps $N \ge 1$.
        order: 1, 2 or 3.
        t_eps: end time $0 < t_\epsilon < T$ (default $10^{-3}$; $10^{-5}$ for VE).
        skip: the time grid: `"logSNR"` (uniform in $\lambda$, the paper's choice),
            `"time_uniform"` or `"time_quadratic"` (uniform in $\sqrt t$).

    Returns:
        $x_{t_\epsilon}$, shaped like `x_T`.

    Raises:
        ValueError: for a bad `order`, `skip`, `num_steps` or `t_eps`.
        TypeError: for a non-linear `sde` or an `eps_fn` of the wrong shape or dtype.

    References:
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
        in Around 10 Steps*, arXiv:2206.00927.
    """
    num_steps = _check_common(sde, order, skip, num_steps)
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"`x_T` must be a floating array, got dtype {x_T.dtype}.")
    t_eps = check_t_eps(t_eps, sde)
    check_score(eps_fn, "eps_fn", sde.T, x_T)
    return _dpm_kernel(sde, eps_fn, x_T, num_steps, order, t_eps, skip)


@eqx.filter_jit
def _dpm_kernel(sde, eps_fn, x_T, num_steps, order, t_eps, skip):
    """The grid and `sd.sample(None, sde, sd.EpsModel(eps_fn), sd.DPMSolver(order), grid, x_T)`,
    compiled whole (eager and jitted calls give the same bits)."""
    ts = time_grid(sde, num_steps, t_eps, skip, x_T.dtype)
    return sample(None, sde, EpsModel(eps_fn), DPMSolver(order), ts, x_T).x


def sample_dpm_solver(
    key: Key,
    sde: AbstractLinearSDE,
    eps_fn: EpsFn,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    order: int = 2,
    t_eps: float | None = None,
    skip: str = "logSNR",
    dtype=None,
) -> Float[Array, "*shape"]:
    r"""Draw $x_T \sim \mathcal N(0, \sigma(T)^2 I)$, then run [`dpm_solver`][scoredyn.dpm_solver].

    Deprecated alias (removed in 0.3): use
    `sd.sample(None, sde, sd.EpsModel(eps_fn), sd.DPMSolver(order), grid, x_T)` with
    `x_T = sde.prior_sample(key, shape)`.

    Args:
        key: PRNG key for the prior draw.
        sde: a linear SDE.
        eps_fn: noise prediction $(t, x) \mapsto \hat\varepsilon$.
        shape: shape of ONE example.
        num_steps: number of steps $N$ (`order * num_steps` evaluations).
        order: 1 (DDIM), 2 or 3.
        t_eps: end time.
        skip: `"logSNR"`, `"time_uniform"` or `"time_quadratic"`.
        dtype: floating dtype (default float).

    Returns:
        A sample of shape `shape`.

    Example:
        ```python
        eps = gm.eps_fn(sde)
        keys = jax.random.split(key, 1000)
        draw = lambda k: sd.sample_dpm_solver(k, sde, eps, (2,), num_steps=10, order=3)
        xs = jax.vmap(draw)(keys)   # (1000, 2)
        ```
    """
    num_steps = _check_common(sde, order, skip, num_steps)
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    t_eps = check_t_eps(t_eps, sde)
    check_score(eps_fn, "eps_fn", sde.T, jnp.zeros(shape, dtype))
    return _sample_dpm_kernel(key, sde, eps_fn, shape, dtype, num_steps, order, t_eps, skip)


@eqx.filter_jit
def _sample_dpm_kernel(key, sde, eps_fn, shape, dtype, num_steps, order, t_eps, skip):
    """The prior draw and the solver, compiled whole (eager and jitted calls give the same bits)."""
    x_T = sde.prior_sample(key, shape, dtype)
    return _dpm_kernel(sde, eps_fn, x_T, num_steps, order, t_eps, skip)
