r"""Adaptive DPM-Solver: DPM-Solver-12 and DPM-Solver-23 (Lu et al. 2022a, Sec. 3.4 and
Algorithm 4; the official code's `method='adaptive'`, `algorithm_type='dpmsolver'`).

Each attempt from $s$ with step $h$ in half log-SNR $\ell$ computes a lower- and a
higher-order singlestep DPM-Solver estimate that share their model evaluations, compares them
in a mixed absolute/relative RMS norm, accepts the higher one when the error is at most 1,
and rescales $h$ by $\theta E^{-1/k}$. The number of attempts depends on the data: the loop
is a `lax.while_loop`, bounded by `max_steps`. See
[adaptive DPM-Solver](../derivations/dpm-solver-pp.md#adaptive-dpm-solver).
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._checks import check_int, check_positive
from .._custom_types import ScalarLike
from .._misc import check_vector_field
from .._sde import AbstractLinearSDE
from ._continuous import check_grid, check_linear_process, scan_states, with_start
from .base import AbstractSolver, AbstractState, Sample, SolverKey
from .dpm_solver import ModelEps
from .dpm_solver_multistep import check_sigma_end, denoise
from .dpm_solver_pp import _check_bool

_STATS = ("nfe", "num_steps", "num_accepted_steps", "num_rejected_steps")


class DPMSolverAdaptiveState(AbstractState):
    r"""State of [`DPMSolverAdaptive`][scoredyn.DPMSolverAdaptive]: `x` at `grid[i]`, the
    proposed step `h` in half log-SNR (before it is cut at the next grid point), the
    lower-order estimate `x_prev` of the last accepted step (the relative tolerance's other
    scale), and the counts so far."""

    x: Array
    i: Array
    grid: Array
    h: Array
    x_prev: Array
    stats: dict[str, Array]
    sde: AbstractLinearSDE
    eps: ModelEps


def _ell(sde, t, dtype):
    return (0.5 * sde.log_snr(t)).astype(dtype)


def _time(sde, ell, dtype):
    return sde.time_at_log_snr(2.0 * ell).astype(dtype)


def _coefs(sde, t, dtype):
    a, s = sde.marginal(t)
    return a.astype(dtype), s.astype(dtype)


def embedded_pair(order: int, sde, eps, x, s, t, l_s):
    r"""The lower- and higher-order estimates at $t$ from $(s, x)$, sharing evaluations.

    `order` 2 (DPM-Solver-12): DPM-Solver-1 and DPM-Solver-2 with $r_1 = \tfrac12$ (two
    evaluations). `order` 3 (DPM-Solver-23): DPM-Solver-2 with $r_1 = \tfrac13$ and
    DPM-Solver-3 with $r_1 = \tfrac13$, $r_2 = \tfrac23$ (three evaluations)."""
    dtype = x.dtype
    a_s, s_s = _coefs(sde, s, dtype)
    a_t, s_t = _coefs(sde, t, dtype)
    h = _ell(sde, t, dtype) - l_s
    phi1 = jnp.expm1(h)
    base = (a_t / a_s) * x
    e_s = eps(s, x)
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    s1 = _time(sde, l_s + r1 * h, dtype)
    a1, sig1 = _coefs(sde, s1, dtype)
    u1 = (a1 / a_s) * x - sig1 * jnp.expm1(r1 * h) * e_s
    d1 = eps(s1, u1) - e_s
    second = base - s_t * phi1 * e_s - (0.5 / r1) * s_t * phi1 * d1
    if order == 2:
        return base - s_t * phi1 * e_s, second
    r2 = 2.0 / 3.0
    s2 = _time(sde, l_s + r2 * h, dtype)
    a2, sig2 = _coefs(sde, s2, dtype)
    phi12 = jnp.expm1(r2 * h)
    phi22 = phi12 / (r2 * h) - 1.0
    u2 = (a2 / a_s) * x - sig2 * phi12 * e_s - (r2 / r1) * sig2 * phi22 * d1
    d2 = eps(s2, u2) - e_s
    phi2 = phi1 / h - 1.0
    third = base - s_t * phi1 * e_s - (1.0 / r2) * s_t * phi2 * d2
    return second, third


class DPMSolverAdaptive(AbstractSolver):
    r"""Adaptive DPM-Solver (Lu et al. 2022a, Algorithm 4): DPM-Solver-12 (`order=2`) or
    DPM-Solver-23 (`order=3`) with step-size control in half log-SNR $\ell = \lambda/2$.

    From $(s, x)$ an attempt with step $h$ goes to $t = t_\ell(\ell_s + h)$ and forms the
    estimates $x_{\rm lo}$ (order $k - 1$) and $x_{\rm hi}$ (order $k$), which share their $k$
    model evaluations. With $\delta = \max(\text{atol}, \text{rtol}\,\max(|x_{\rm lo}|,
    |x_{\rm prev}|))$ elementwise ($x_{\rm prev}$ the $x_{\rm lo}$ of the last accepted step,
    initially $x_T$) and $E = \operatorname{RMS}((x_{\rm hi} - x_{\rm lo})/\delta)$ over the
    elements of `x`:

    - if $E \le 1$, accept: $x \leftarrow x_{\rm hi}$, $s \leftarrow t$,
      $x_{\rm prev} \leftarrow x_{\rm lo}$;
    - either way $h \leftarrow \min(\theta h E^{-1/k}, \ell_{\rm end} - \ell_s)$.

    The loop runs until $|s - t_{\rm end}| \le$ `t_err`. On a two-point grid
    `[T, t_eps]` this is the official code's `method='adaptive'`; more grid points are stops
    that every solve lands on (the step is cut at each, and $h$ and $x_{\rm prev}$ carry over),
    so the trajectory is saved there. Each example controls its own steps: under `jax.vmap`
    the loop runs until the slowest example is done, and every example gets the result it
    would get alone (the official code takes one step size for the whole batch, accepting
    only when every example passes). `Sample.stats` holds the traced counts `nfe` ($k$ per
    attempt, plus one with `denoise_to_zero`), `num_steps` (attempts),
    `num_accepted_steps` and `num_rejected_steps`. Deterministic. Reverse-mode derivatives are
    not available (`lax.while_loop`).

    Args:
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23).
        rtol: relative tolerance (the paper's $\epsilon_{\rm rtol}$, default 0.05).
        atol: absolute tolerance (default 0.0078, about 2/255: data in $[-1, 1]$).
        h_init: first proposed step in $\ell$ (default 0.05).
        theta: safety factor $\theta$ (default 0.9).
        t_err: stop within this distance of the end time (default $10^{-5}$).
        max_steps: the most attempts (accepted or rejected) of a whole solve.
        denoise_to_zero: after the last step, return $\hat x_0$ at the last grid time (one
            more evaluation).
        throw: raise at run time when `max_steps` attempts do not reach the end; otherwise
            return the state reached (`stats` tells).

    Raises:
        ValueError: at construction, for an `order` other than 2, 3, a negative tolerance or a
            non-positive `h_init`, `theta`, `t_err`; in [`sample`][scoredyn.sample], for a grid
            that is not strictly decreasing in $[0, T]$ (a grid ending at $\sigma = 0$ is
            refused: end at $t_\epsilon$ and use `denoise_to_zero`).
        TypeError: for an `order` or `max_steps` that is not an int or a flag that is not a
            bool; in `sample`, for a `process` that is not a linear SDE.

    Example:
        ```python
        adaptive = sd.DPMSolverAdaptive(order=3, rtol=0.05, atol=0.0078)
        res = sd.sample(None, sde, sd.EpsModel(eps), adaptive, jnp.array([1.0, 1e-3]), x_T)
        res.stats["nfe"]   # traced: 3 per attempt
        ```

    References:
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
        in Around 10 Steps*, arXiv:2206.00927, Sec. 3.4 and Algorithm 4; the error norm after
        Jolicoeur-Martineau et al., *Gotta Go Fast When Generating Data with Score-Based
        Models*, arXiv:2105.14080.
    """

    order: int = eqx.field(static=True, default=3)
    rtol: ScalarLike = 0.05
    atol: ScalarLike = 0.0078
    h_init: ScalarLike = 0.05
    theta: ScalarLike = 0.9
    t_err: ScalarLike = 1e-5
    max_steps: int = eqx.field(static=True, default=1000)
    denoise_to_zero: bool = eqx.field(static=True, default=False)
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise TypeError(f"`order` must be an int (2 or 3), got {self.order!r}.")
        if self.order not in (2, 3):
            raise ValueError(
                f"`order` must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {self.order!r}."
            )
        check_positive(self.rtol, "rtol", strict=False)
        check_positive(self.atol, "atol", strict=False)
        for name in ("h_init", "theta", "t_err"):
            check_positive(getattr(self, name), name)
        check_int(self.max_steps, "max_steps")
        for name in ("denoise_to_zero", "throw"):
            _check_bool(getattr(self, name), name)

    def is_stochastic(self, process, grid) -> bool:
        check_sigma_end(self, process, grid)
        return False

    def nfe(self, num_steps: int) -> int:
        """Not static: the number of evaluations depends on the steps taken. Read
        `Sample.stats["nfe"]` instead."""
        raise NotImplementedError(
            "DPMSolverAdaptive's number of model evaluations is known only after the solve: "
            "read Sample.stats['nfe']."
        )

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPMSolverAdaptiveState:
        r"""The state at `grid[0]`: checks, $h$ = `h_init`, $x_{\rm prev} = x_T$, zero counts."""
        sde = check_linear_process(process, self)
        grid, x_T = check_grid(grid, sde, x_T.dtype, x=x_T)
        eps = ModelEps(model, sde, tuple(cond))
        check_vector_field(eps, "model.eps", grid[0], x_T)
        zero = jnp.zeros((), jnp.int32)
        h = jnp.asarray(self.h_init, x_T.dtype)
        return DPMSolverAdaptiveState(x_T, zero, grid, h, x_T, {k: zero for k in _STATS}, sde, eps)

    def step(
        self, key: SolverKey | None, state: AbstractState
    ) -> tuple[DPMSolverAdaptiveState, dict[str, Array]]:
        r"""The adaptive solve over one grid interval $[t_i, t_{i+1}]$ (`key` is unused); the
        info is that interval's counts."""
        assert isinstance(state, DPMSolverAdaptiveState)
        sde, eps, grid, k = state.sde, state.eps, state.grid, self.order
        x = state.x
        dtype = x.dtype
        K = grid.shape[0] - 1
        i = state.i
        t_end = grid[i + 1]
        l_end = _ell(sde, t_end, dtype)
        rtol, atol, theta, t_err = (
            jnp.asarray(v, dtype) for v in (self.rtol, self.atol, self.theta, self.t_err)
        )
        done = state.stats["num_steps"]

        def unfinished(c):
            return jnp.abs(c[1] - t_end) > t_err

        def cond(c):
            return unfinished(c) & (done + c[5] + c[6] < self.max_steps)

        def body(c):
            x, s, l_s, h_free, x_prev, n_acc, n_rej = c
            h = jnp.minimum(h_free, l_end - l_s)  # the official code's h after its first step
            t = _time(sde, l_s + h, dtype)
            x_lo, x_hi = embedded_pair(k, sde, eps, x, s, t, l_s)
            delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_lo), jnp.abs(x_prev)))
            err = jnp.sqrt(jnp.mean(jnp.square((x_hi - x_lo) / delta)))
            ok = err <= 1.0
            x = jnp.where(ok, x_hi, x)
            x_prev = jnp.where(ok, x_lo, x_prev)
            s = jnp.where(ok, t, s)
            l_s = jnp.where(ok, _ell(sde, t, dtype), l_s)
            h_free = theta * h * err ** (-1.0 / k)  # cut to the interval's end next attempt
            return (
                x,
                s,
                l_s,
                h_free,
                x_prev,
                n_acc + ok.astype(jnp.int32),
                n_rej + (~ok).astype(jnp.int32),
            )

        zero = jnp.zeros((), jnp.int32)
        s0 = grid[i]
        carry = (x, s0, _ell(sde, s0, dtype), state.h, state.x_prev, zero, zero)
        carry = lax.while_loop(cond, body, carry)
        x, _, _, h, x_prev, n_acc, n_rej = carry
        if self.throw:
            x = eqx.error_if(
                x,
                unfinished(carry),
                f"DPMSolverAdaptive: max_steps={self.max_steps} attempts did not reach the end "
                "time; raise max_steps or loosen rtol/atol (or pass throw=False).",
            )
        n = n_acc + n_rej
        nfe = k * n
        if self.denoise_to_zero:
            last = i == K - 1
            x = lax.cond(last, lambda y: denoise(eps, t_end, y), lambda y: y, x)
            nfe = nfe + last.astype(jnp.int32)
        info = {
            "nfe": nfe,
            "num_steps": n,
            "num_accepted_steps": n_acc,
            "num_rejected_steps": n_rej,
        }
        stats = {name: state.stats[name] + info[name] for name in _STATS}
        new = eqx.tree_at(
            lambda st: (st.x, st.i, st.h, st.x_prev, st.stats), state, (x, i + 1, h, x_prev, stats)
        )
        return new, info

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` over the grid intervals (one adaptive solve on a two-point
        grid)."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def step(st, _):
            return self.step(None, st)[0]

        state, xs = scan_states(step, state, jnp.arange(K, dtype=jnp.int32), save_trajectory)
        traj = with_start(x_T, xs) if save_trajectory else None
        return Sample(state.x, traj, dict(state.stats))
