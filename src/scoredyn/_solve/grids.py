r"""Grids as values: the times or step indices a sampler visits.

A *continuous grid* is a float array of shape `(K+1,)`, strictly decreasing from `grid[0] = T`
to `grid[-1] = t_eps` (both set exactly), for a continuous-time process (any linear SDE). A
*discrete grid*, or *trajectory*, is an int32 array `tau` of shape `(K+1,)` with
$0 = \tau_0 < \tau_1 < \dots < \tau_K = N$, visited backwards. Any such array is a grid; the
functions here build the common ones. See [Grids](../derivations/grids.md).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._custom_types import ScalarLike, Time
from .._discrete import DiscreteSchedule, respace
from .._misc import is_concrete
from .._process import AbstractProcess
from ..analytic._trajectory import optimal_trajectory
from ._utils import check_dtype

# ----------------------------------------------------------------------------- validation


def _check_count(value, name: str, lo: int = 1) -> int:
    """A Python (or NumPy) int >= lo; it sets an array length, so it must be static."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a Python int, got {value!r} ({type(value).__name__}).")
    if value < lo:
        raise ValueError(f"`{name}` must be >= {lo}, got {value}.")
    return int(value)


def _check_steps(N, K) -> tuple[int, int]:
    N = _check_count(N, "N")
    K = _check_count(K, "K")
    if K > N:
        raise ValueError(f"`K` must be <= N = {N} (at most one step per index), got {K}.")
    return N, K


def _check_process(process) -> None:
    if isinstance(process, DiscreteSchedule):
        raise TypeError(
            "`process` must be a continuous-time process (e.g. sd.VPSDE()), got a "
            "DiscreteSchedule; its grids are integer trajectories: sd.grids.even, "
            "sd.grids.uniform_trajectory, sd.grids.trailing, ..."
        )
    if not isinstance(process, AbstractProcess) or not hasattr(process, "T"):
        raise TypeError(
            "`process` must be a continuous-time process with `T`, `log_snr` and "
            f"`time_at_log_snr` (e.g. sd.VPSDE()), got {type(process).__name__}."
        )


def _check_positive_scalar(value, name: str) -> None:
    if is_concrete(value):
        v = float(np.asarray(value))
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"`{name}` must be > 0 and finite, got {v}.")


def _setup(process, num_steps, t_eps, dtype):
    """Checked inputs: (T, t_eps, u) as `dtype` arrays, u = linspace(0, 1, K + 1)."""
    _check_process(process)
    K = _check_count(num_steps, "num_steps")
    dtype = check_dtype(dtype)
    if is_concrete(t_eps, process.T):
        v, T = float(np.asarray(t_eps)), float(np.asarray(process.T))
        if not 0.0 < v < T:  # also refuses NaN
            raise ValueError(f"`t_eps` must satisfy 0 < t_eps < T = {T}, got {v}.")
    T = jnp.asarray(process.T, dtype)
    te = jnp.asarray(t_eps, dtype)
    u = jnp.linspace(0.0, 1.0, K + 1, dtype=dtype)
    return T, te, u


def _pin(ts, T, te):
    """Set the end points exactly (rounding in the interior map must not move them)."""
    return ts.astype(T.dtype).at[0].set(T).at[-1].set(te)


def _log_snr_ends(process, T, te):
    dtype = T.dtype
    return process.log_snr(T).astype(dtype), process.log_snr(te).astype(dtype)


# ----------------------------------------------------------------------- continuous grids


def uniform(
    process: AbstractProcess, num_steps: int, *, t_eps: Time = 1e-3, dtype=None
) -> Float[Array, " {num_steps}+1"]:
    r"""$K$ equal steps in time: $t_i = T + \tfrac iK(t_\epsilon - T)$, $i = 0..K$.

    The same floats as DPM-Solver's `"time_uniform"` grid. See
    [continuous grids](../derivations/grids.md#continuous-grids).

    Args:
        process: a continuous-time process (any linear SDE: `sd.VPSDE()`, ...).
        num_steps: $K \ge 1$, a Python int (static under `jit`).
        t_eps: the last time, $0 < t_\epsilon < T$.
        dtype: float dtype of the grid (default: float64 under x64, else float32).

    Returns:
        Shape `(K+1,)`, strictly decreasing, `grid[0] == T` and `grid[-1] == t_eps` exactly.

    Raises:
        TypeError: if `process` is not a continuous process, `num_steps` not an int or
            `dtype` not a float dtype.
        ValueError: if `num_steps < 1` or `t_eps` is outside $(0, T)$.

    Example:
        ```python
        sd.grids.uniform(sd.VPSDE(), 4)   # [1.0, 0.75025, 0.5005, 0.25075, 0.001]
        ```
    """
    T, te, u = _setup(process, num_steps, t_eps, dtype)
    return _pin(T + u * (te - T), T, te)


def quadratic(
    process: AbstractProcess, num_steps: int, *, t_eps: Time = 1e-3, dtype=None
) -> Float[Array, " {num_steps}+1"]:
    r"""$K$ equal steps in $\sqrt t$:
    $t_i = \big(\sqrt T + \tfrac iK(\sqrt{t_\epsilon} - \sqrt T)\big)^2$.

    Short steps near $t_\epsilon$, where detail is decided. The same floats as DPM-Solver's
    `"time_quadratic"` grid. See [continuous grids](../derivations/grids.md#continuous-grids).

    Args:
        process: a continuous-time process.
        num_steps: $K \ge 1$, a Python int (static under `jit`).
        t_eps: the last time, $0 < t_\epsilon < T$.
        dtype: float dtype of the grid (default: float64 under x64, else float32).

    Returns:
        Shape `(K+1,)`, strictly decreasing, `grid[0] == T` and `grid[-1] == t_eps` exactly.

    Raises:
        TypeError: if `process` is not a continuous process, `num_steps` not an int or
            `dtype` not a float dtype.
        ValueError: if `num_steps < 1` or `t_eps` is outside $(0, T)$.
    """
    T, te, u = _setup(process, num_steps, t_eps, dtype)
    return _pin((jnp.sqrt(T) + u * (jnp.sqrt(te) - jnp.sqrt(T))) ** 2, T, te)


def log_snr(
    process: AbstractProcess, num_steps: int, *, t_eps: Time = 1e-3, dtype=None
) -> Float[Array, " {num_steps}+1"]:
    r"""$K$ equal steps in log-SNR: $\lambda(t_i) = \lambda_T + \tfrac iK(\lambda_{t_\epsilon} -
    \lambda_T)$, with $\lambda = \log(\alpha^2/\sigma^2)$.

    The times come from the process's `time_at_log_snr` (closed form for VP, VE and cosine,
    bisection otherwise). This is DPM-Solver's `"logSNR"` grid, on which every step has the same
    $h = \Delta\lambda/2$. See [continuous grids](../derivations/grids.md#continuous-grids).

    Args:
        process: a continuous-time process.
        num_steps: $K \ge 1$, a Python int (static under `jit`).
        t_eps: the last time, $0 < t_\epsilon < T$.
        dtype: float dtype of the grid (default: float64 under x64, else float32).

    Returns:
        Shape `(K+1,)`, strictly decreasing, `grid[0] == T` and `grid[-1] == t_eps` exactly.

    Raises:
        TypeError: if `process` is not a continuous process, `num_steps` not an int or
            `dtype` not a float dtype.
        ValueError: if `num_steps < 1` or `t_eps` is outside $(0, T)$.

    References:
        Lu et al., *DPM-Solver*, arXiv:2206.00927, Sec. 3.3.
    """
    T, te, u = _setup(process, num_steps, t_eps, dtype)
    lam_T, lam_e = _log_snr_ends(process, T, te)
    lam = lam_T + u * (lam_e - lam_T)
    return _pin(process.time_at_log_snr(lam), T, te)


def karras(
    process: AbstractProcess,
    num_steps: int,
    *,
    t_eps: Time = 1e-3,
    rho: ScalarLike = 7.0,
    sigma_min: ScalarLike | None = None,
    sigma_max: ScalarLike | None = None,
    dtype=None,
) -> Float[Array, " {num_steps}+1"]:
    r"""EDM's grid: $K$ equal steps in $s^{1/\rho}$, where $s = \sigma/\alpha = e^{-\lambda/2}$
    is the noise level.

    $$s_i = \Big(s_{\max}^{1/\rho} + \tfrac iK\big(s_{\min}^{1/\rho} - s_{\max}^{1/\rho}\big)
      \Big)^{\rho},\qquad t_i = \texttt{time\_at\_log\_snr}(-2\log s_i),$$

    with $s_{\max} = s(T)$ and $s_{\min} = s(t_\epsilon)$ by default. $\rho = 1$ is uniform in
    $s$; $\rho\to\infty$ tends to the [`log_snr`][scoredyn.grids.log_snr] grid; EDM uses
    $\rho = 7$, which shortens the steps at low noise. The powers are evaluated as
    $\mathrm{expm1}(\log s/\rho)$ and $\mathrm{log1p}$, so large $\rho$ loses no precision.

    The grid always runs from $T$ to $t_\epsilon$ (`grid[0] == T`, `grid[-1] == t_eps`
    exactly). Given `sigma_min` or `sigma_max`, the interior nodes $i = 1..K-1$ follow the curve
    through that range instead, which must lie inside $[s(t_\epsilon), s(T)]$; a sampler still
    starts from the prior at $T$. See
    [the EDM grid](../derivations/grids.md#the-edm-grid-karras).

    Args:
        process: a continuous-time process.
        num_steps: $K \ge 1$, a Python int (static under `jit`).
        t_eps: the last time, $0 < t_\epsilon < T$.
        rho: $\rho > 0$.
        sigma_min: $s_{\min}$ of the curve (default $s(t_\epsilon)$).
        sigma_max: $s_{\max}$ of the curve (default $s(T)$).
        dtype: float dtype of the grid (default: float64 under x64, else float32).

    Returns:
        Shape `(K+1,)`, strictly decreasing, `grid[0] == T` and `grid[-1] == t_eps` exactly.

    Raises:
        TypeError: if `process` is not a continuous process, `num_steps` not an int or
            `dtype` not a float dtype.
        ValueError: if `num_steps < 1`, `t_eps` is outside $(0, T)$, `rho <= 0`, or
            `sigma_min`/`sigma_max` are not positive, not ordered, or outside
            $[s(t_\epsilon), s(T)]$ (concrete values).

    References:
        Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
        arXiv:2206.00364, Eq. 5.

    Example:
        ```python
        grid = sd.grids.karras(sd.VESDE(), 18, t_eps=1e-5)   # (19,)
        ```
    """
    T, te, u = _setup(process, num_steps, t_eps, dtype)
    _check_positive_scalar(rho, "rho")
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if v is not None:
            _check_positive_scalar(v, name)
    dtype = T.dtype
    lam_T, lam_e = _log_snr_ends(process, T, te)
    log_s_max = -0.5 * lam_T if sigma_max is None else jnp.log(jnp.asarray(sigma_max, dtype))
    log_s_min = -0.5 * lam_e if sigma_min is None else jnp.log(jnp.asarray(sigma_min, dtype))
    if (sigma_min is not None or sigma_max is not None) and is_concrete(
        log_s_min, log_s_max, lam_T, lam_e
    ):
        lo, hi = float(log_s_min), float(log_s_max)
        lo_ok, hi_ok = -0.5 * float(lam_e), -0.5 * float(lam_T)
        slack = 1e-6 * max(abs(lo_ok), abs(hi_ok), 1.0)
        if not lo < hi:
            raise ValueError(
                f"`sigma_min` must be < `sigma_max`, got {math.exp(lo)} and {math.exp(hi)}."
            )
        if lo < lo_ok - slack or hi > hi_ok + slack:
            raise ValueError(
                f"`sigma_min`, `sigma_max` must lie inside the noise levels of the grid, "
                f"[s(t_eps), s(T)] = [{math.exp(lo_ok)}, {math.exp(hi_ok)}], got "
                f"[{math.exp(lo)}, {math.exp(hi)}]."
            )
    r = jnp.asarray(rho, dtype)
    a = jnp.expm1(log_s_max / r)  # s_max^(1/rho) - 1
    b = jnp.expm1(log_s_min / r)
    lam = -2.0 * r * jnp.log1p(a + u * (b - a))  # -2 log s_i
    lam = jnp.clip(lam, lam_T, lam_e)
    return _pin(process.time_at_log_snr(lam), T, te)


# ------------------------------------------------------------------------- discrete grids


def _as_tau(indices, rule: str, N: int, K: int) -> Int[Array, " {K}+1"]:
    """[0] + indices as int32, after checking they are K strictly increasing ints in 1..N."""
    idx = [int(i) for i in indices]
    if len(idx) != K or any(b <= a for a, b in zip([0, *idx], idx)) or idx[-1] > N:
        raise ValueError(
            f"the {rule} rule gives the indices {idx} for N = {N}, K = {K}: not {K} distinct "
            "indices in 1..N, so it is not a trajectory; choose another K."
        )
    # device_put, not jnp.asarray: the latter compiles a small XLA program for every new K
    return jax.device_put(np.asarray([0, *idx], np.int32))


def uniform_trajectory(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""$\tau_k = \lfloor kN/K + \tfrac12\rfloor$: $K$ equal steps rounded half up.

    The same as [`sd.respace(N, K)`][scoredyn.respace] (integer arithmetic, exact for any $N$).
    Ties ($kN/K$ exactly half an integer) go up.

    Args:
        N: number of steps of the schedule, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[-1] == N`.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$ or $K > N$.

    Example:
        ```python
        sd.grids.uniform_trajectory(10, 4)   # [0, 3, 5, 8, 10]: 2.5 -> 3, 7.5 -> 8
        ```
    """
    N, K = _check_steps(N, K)
    return respace(N, K)


def quadratic_trajectory(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""$\tau_k = k + \lfloor (N - K)(k/K)^2 + \tfrac12\rfloor$: a unit step plus a quadratic share.

    The same as [`sd.respace(N, K, "quadratic")`][scoredyn.respace] (integer arithmetic). Ties
    go up. Steps are short near $n = 0$ and long near $N$.

    Args:
        N: number of steps of the schedule, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[-1] == N`.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$ or $K > N$.

    Example:
        ```python
        sd.grids.quadratic_trajectory(1000, 4)   # [0, 63, 251, 563, 1000]
        ```
    """
    N, K = _check_steps(N, K)
    return respace(N, K, "quadratic")


def even(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""Analytic-DPM's even trajectory: $\tau_1 = 1$, then $K - 1$ equal steps up to $N$.

    The nodes $\tau_1..\tau_K$ are $1 + (k - 1)\frac{N - 1}{K - 1}$, rounded, computed exactly as
    the official Analytic-DPM code computes them (its `"linear"` trajectory): a Python float
    starts at $1.0$ and the stride $(N - 1)/(K - 1)$ is *added* to it $K - 1$ times, and each
    partial sum is rounded by Python's `round`, i.e. **half to even**. The accumulated float can
    sit just above or below a half where the exact value is a half, so the result differs from
    rounding $1 + (k - 1)(N - 1)/(K - 1)$ directly for some $K$ (for $N = 1000$, e.g. $K = 15$:
    $\tau_8 = 501$ here, 500 by direct half-to-even rounding; $K = 21$: $\tau_{11} = 500$ here,
    501 by rounding half up). The decoder step always starts from $x_1$, like the
    [optimal trajectory](../derivations/grids.md#the-optimal-trajectory-with-a-free-first-node)
    with a fixed first node. $K = 1$ gives `[0, N]`.

    Args:
        N: number of steps of the schedule, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[1] == 1` (for $K \ge 2$),
        `tau[-1] == N`.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$ or $K > N$.

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503, App. F (code: github.com/baofff/Analytic-DPM).

    Example:
        ```python
        sd.grids.even(1000, 4)   # [0, 1, 334, 667, 1000]
        sd.grids.even(1000, 3)   # [0, 1, 500, 1000]: 500.5 is a tie, rounded to even
        ```
    """
    N, K = _check_steps(N, K)
    if K == 1:
        return jnp.array([0, N], jnp.int32)
    stride = (N - 1) / (K - 1)
    partial_sums = itertools.accumulate(itertools.repeat(stride, K - 1), initial=1.0)
    return _as_tau([round(x) for x in partial_sums], "even", N, K)


def leading(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""diffusers' `timestep_spacing="leading"` (with `steps_offset=0`): $\tau_k = 1 + (k - 1)
    \lfloor N/K\rfloor$ for $k = 1..K$.

    diffusers numbers its $N$ training timesteps $t = 0..N-1$, where $t$ is our index
    $n = t + 1$ (our $n = 0$ is clean data), and lists the visited timesteps in sampling order.
    Here `tau = [0] + sorted(t + 1 for t in timesteps)`. Leading spacing takes
    $t = 0, r, 2r, \dots, (K-1)r$ with $r = \lfloor N/K\rfloor$ (integers, no rounding).

    **It does not end at $N$**: $\tau_K = (K - 1)\lfloor N/K\rfloor + 1 < N$ unless $K = N$.
    diffusers starts from pure noise at that index, the mismatch pointed out by Lin et al.
    (*Common Diffusion Noise Schedules and Sample Steps are Flawed*, arXiv:2305.08891, Table 2);
    this grid reproduces that behaviour, so a sampler given it treats $x_T$ as $x_{\tau_K}$.

    Args:
        N: number of training timesteps, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, strictly increasing, `tau[-1] <= N`.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$ or $K > N$.

    Example:
        ```python
        sd.grids.leading(1000, 10)   # [0, 1, 101, 201, ..., 901]: diffusers' [900, ..., 0]
        ```
    """
    N, K = _check_steps(N, K)
    ratio = N // K
    return _as_tau([k * ratio + 1 for k in range(K)], "leading", N, K)


def trailing(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""diffusers' `timestep_spacing="trailing"`: steps of $N/K$ back from $N$.

    With diffusers' timesteps $t = n - 1$ (see [`leading`][scoredyn.grids.leading]), trailing
    spacing takes `np.round(np.arange(N, 0, -N / K)) - 1`: the floats $N - jN/K$ as NumPy's
    `arange` produces them, rounded half to even, minus one. So $\tau_K = N$ and, in our index,
    the nodes are $\mathrm{round}(N - jN/K)$, $j = 0..K-1$. Here
    `tau = [0] + sorted(t + 1 for t in timesteps)`.

    For some $(N, K)$ the float `arange` has $K + 1$ entries, the last rounding to timestep
    $-1$ (our index 0, repeated): for $N = 1000$ the first are
    $K = 61, 103, 121, 122, 201$. diffusers then samples $K + 1$ steps through $t = -1$; here
    that is a `ValueError`.

    Args:
        N: number of training timesteps, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[-1] == N`.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$, $K > N$, or the rule does not give $K$ distinct indices.

    Example:
        ```python
        sd.grids.trailing(1000, 10)   # [0, 100, 200, ..., 1000]: diffusers' [999, ..., 99]
        ```
    """
    N, K = _check_steps(N, K)
    nodes = np.round(np.arange(N, 0, -N / K))  # = diffusers' timesteps + 1
    return _as_tau(sorted(nodes.tolist()), "trailing", N, K)


def linspace(N: int, K: int) -> Int[Array, " {K}+1"]:
    r"""diffusers' `timestep_spacing="linspace"`: $K$ timesteps evenly from 0 to $N - 1$.

    With diffusers' timesteps $t = n - 1$ (see [`leading`][scoredyn.grids.leading]), linspace
    spacing takes `np.linspace(0, N - 1, K).round()`: $t_k = k\frac{N-1}{K-1}$ as NumPy computes
    it (product, last entry set to $N - 1$), rounded half to even. Here
    `tau = [0] + sorted(t + 1 for t in timesteps)`, so $\tau_1 = 1$ and $\tau_K = N$, like
    [`even`][scoredyn.grids.even] but with the stride multiplied rather than accumulated (the
    two differ at ties: $N = 1000$, $K = 3$ gives 501 here, 500 there). $K = 1$ gives
    `[0, 1]`, which does not end at $N$ (diffusers' single timestep 0).

    Args:
        N: number of training timesteps, a Python int $\ge 1$.
        K: number of sampling steps, $1 \le K \le N$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[-1] == N` for $K \ge 2$.

    Raises:
        TypeError: if `N` or `K` is not an int.
        ValueError: if $K < 1$, $K > N$, or the rule does not give $K$ distinct indices.

    Example:
        ```python
        sd.grids.linspace(1000, 10)   # [0, 1, 112, 223, ..., 1000]: diffusers' [999, 888, ..., 0]
        ```
    """
    N, K = _check_steps(N, K)
    nodes = np.round(np.linspace(0, N - 1, K)) + 1
    return _as_tau(sorted(nodes.tolist()), "linspace", N, K)


def optimal(
    sched: DiscreteSchedule, gamma, K: int, *, free_first: bool = False
) -> Int[Array, " {K}+1"]:
    r"""The trajectory of least Analytic-DPM bound:
    [`sd.analytic.optimal_trajectory`][scoredyn.analytic.optimal_trajectory]`(sched, gamma, K,
    free_first=free_first)`.

    By default $\tau_1 = 1$ is fixed, as in the paper; with `free_first=True` the dynamic
    programme also chooses $\tau_1$, costing the decoder step $\tau_1 \to 0$ as an edge. See
    [a free first node](../derivations/grids.md#the-optimal-trajectory-with-a-free-first-node).

    Args:
        sched: discrete schedule with $N$ steps.
        gamma: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or `ms_eps` array `(N+1,)`.
        K: number of steps, $1 \le K \le N$ (static).
        free_first: let the programme choose $\tau_1$.

    Returns:
        `tau`, int32 of shape `(K+1,)`, `tau[0] == 0`, `tau[-1] == N`.

    Raises:
        TypeError: if `K` is not an int or `free_first` not a bool.
        ValueError: if $K < 1$ or $K > N$.
    """
    K = _check_count(K, "K")
    if isinstance(sched, DiscreteSchedule) and K > sched.num_steps:
        raise ValueError(f"`K` must be <= N = {sched.num_steps}, got {K}.")
    return optimal_trajectory(sched, gamma, K, free_first=free_first)
