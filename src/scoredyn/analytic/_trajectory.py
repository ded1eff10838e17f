r"""The optimal trajectory of Analytic-DPM: a least-cost path by dynamic programming.

The first node is fixed at $\tau_1 = 1$, as in the paper, or free (`free_first=True`), when
the decoder step $\tau_1 \to 0$ becomes an edge of the path with its own cost.
See [the optimal trajectory](../derivations/analytic-dpm.md#the-optimal-trajectory) and
[a free first node](../derivations/grids.md#the-optimal-trajectory-with-a-free-first-node).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._discrete import DiscreteSchedule
from ._common import check_schedule, check_tau
from ._gamma import as_ms_eps


def trajectory_costs(
    sched: DiscreteSchedule, ms_eps
) -> Float[Array, "{sched.num_steps}+1 {sched.num_steps}+1"]:
    r"""The cost matrix $J(s, t)$ of every possible DDPM step $t \to s$ of the optimal trajectory.

    With the optimal (Analytic-DPM) variance and the DDPM forward process, the KL term of a step
    $t\to s$ equals $\frac d2\log(v^*_{s|t}/\tilde\beta_{s|t})$, and

    $$\frac{v^*_{s|t}}{\tilde\beta_{s|t}}
      = \frac{(1 - \bar a_t)\,\bar a_s}{\bar a_t\,(1 - \bar a_s)}
        \Big(1 - \beta_{t|s}\,\frac{\texttt{ms\_eps}_t}{1 - \bar a_t}\Big),\qquad
      \beta_{t|s} = 1 - \frac{\bar a_t}{\bar a_s}.$$

    The first factor telescopes along any path with fixed end points, so only

    $$J(s, t) = \log\Big(1 - \Big(1 - \frac{\bar a_t}{\bar a_s}\Big)
      \frac{\texttt{ms\_eps}_t}{1 - \bar a_t}\Big)
      = \log\big(1 - \beta_{t|s}\Gamma_t\big)$$

    depends on the path (Analytic-DPM Theorem 3, Eq. 14). `ms_eps` is clipped to $[0, 1]$ first
    (a Monte Carlo estimate may exceed 1); then $J \le 0$ is finite for $1\le s < t$.
    Entries with $s \ge t$ or $s = 0$ are $+\infty$.

    Args:
        sched: discrete schedule.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.

    Returns:
        Shape `(N+1, N+1)`, indexed `[s, t]`.
    """
    sched = check_schedule(sched)
    N = sched.num_steps
    ms = as_ms_eps(ms_eps, N)
    la = sched.log_alpha_bar
    dtype = jnp.result_type(la, ms)
    la = la.astype(dtype)
    ms = jnp.clip(ms.astype(dtype), 0.0, 1.0)
    idx = jnp.arange(N + 1)
    s, t = idx[:, None], idx[None, :]
    valid = (s >= 1) & (s < t)
    # 1 - beta_{t|s} ms / (1 - abar_t) = ms r + (1 - ms),
    # r = abar_t (1 - abar_s) / (abar_s (1 - abar_t)): a sum of two non-negative terms. The
    # direct form subtracts two numbers close to 1 and cancels to 0 in float32 once abar_t is
    # tiny and ms = 1; r is formed in log space.
    log_bbar = jnp.log(jnp.where(idx > 0, sched.one_minus_alpha_bar.astype(dtype), 1.0))
    log_odds = la - log_bbar  # log(abar / (1 - abar)); log r(s, t) = log_odds[t] - log_odds[s]
    log_r = log_odds[None, :] - log_odds[:, None]
    r = jnp.exp(jnp.where(valid, log_r, 0.0))
    ms_t = ms[None, :]
    J = jnp.log(ms_t * r + (1.0 - ms_t))
    return jnp.where(valid, J, jnp.inf)


def _decoder_costs(sched: DiscreteSchedule, ms_eps, dtype) -> Float[Array, " {sched.num_steps}+1"]:
    r"""$J(0, t) = \log(1 - \texttt{ms\_eps}_t)$, the cost of the decoder edge $t \to 0$.

    With the continuous Gaussian decoder $\mathcal N(\hat x_0, \kappa_t I)$ at its optimal
    variance $\kappa_t = e^{-\lambda_t}(1 - \texttt{ms\_eps}_t)$, the decoder term
    $\frac d2\log(2\pi e\,\kappa_t)$ plus the telescoped $\frac d2\lambda_t$ left by the Gaussian
    steps is $\frac d2\big(\log(2\pi e) + J(0, t)\big)$. `ms_eps` is clipped to $[0, 1]$ as in
    `trajectory_costs`, and $1 - \texttt{ms\_eps}$ is floored at the smallest normal float, so
    that `ms_eps = 1` (a posterior of $x_0$ that is a point) gives a very negative but finite
    cost. Entry 0 is $+\infty$.
    """
    N = sched.num_steps
    ms = jnp.clip(as_ms_eps(ms_eps, N).astype(dtype), 0.0, 1.0)
    D = jnp.log(jnp.maximum(1.0 - ms, jnp.finfo(dtype).tiny))
    return D.at[0].set(jnp.inf)


def _first_level(sched: DiscreteSchedule, ms_eps, free_first: bool, dtype) -> Array:
    """C_1 of the dynamic programme: 0 at node 1 (fixed first node) or the decoder costs."""
    if free_first:
        return _decoder_costs(sched, ms_eps, dtype)
    return jnp.full((sched.num_steps + 1,), jnp.inf, dtype).at[1].set(0.0)


def _check_free_first(free_first) -> bool:
    if not isinstance(free_first, bool):
        raise TypeError(f"`free_first` must be a bool, got {free_first!r}.")
    return free_first


def trajectory_cost(
    sched: DiscreteSchedule, ms_eps, tau: Int[ArrayLike, " nodes"], *, free_first: bool = False
) -> Float[Array, ""]:
    r"""$\sum_{k=2}^{K} J(\tau_{k-1}, \tau_k)$: the path-dependent part of the DDPM-forward bound.

    The KL divergence between the forward process on `tau` and the Analytic-DPM reverse
    process is $\frac d2$ times this plus a constant that depends only on `tau[1]` and `N`
    (Analytic-DPM Theorem 3). The decoder step `tau[1] -> 0` is not included.

    With `free_first=True` the decoder edge is included,
    $J(0, \tau_1) + \sum_{k=2}^K J(\tau_{k-1}, \tau_k)$ with
    $J(0, t) = \log(1 - \texttt{ms\_eps}_t)$: for the continuous Gaussian decoder at its
    optimal variance, the whole expected bound is $\frac d2$ times this plus a constant that
    depends only on $N$ (see
    [a free first node](../derivations/grids.md#the-optimal-trajectory-with-a-free-first-node)).
    This is what [`optimal_trajectory`][scoredyn.analytic.optimal_trajectory] minimises with
    `free_first=True`.

    Args:
        sched: discrete schedule.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.
        tau: trajectory, shape `(K+1,)`.
        free_first: include the decoder edge $\tau_1 \to 0$.

    Returns:
        A scalar.
    """
    sched = check_schedule(sched)
    tau = check_tau(tau, sched.num_steps)
    free_first = _check_free_first(free_first)
    J = trajectory_costs(sched, ms_eps)
    cost = jnp.sum(J[tau[1:-1], tau[2:]])
    if free_first:
        cost = cost + _decoder_costs(sched, ms_eps, J.dtype)[tau[1]]
    return cost


@functools.partial(jax.jit, static_argnums=2)
def _dp_tables(J: Array, C0: Array, K: int) -> Array:
    """Forward pass from the level-1 costs C0: D[j-2, t] = best predecessor of node t at level
    j = 2..K. Shape (K-1, N+1)."""

    def forward(C, _):
        tot = C[:, None] + J  # [s, t]
        return jnp.min(tot, axis=0), jnp.argmin(tot, axis=0).astype(jnp.int32)

    _, D = jax.lax.scan(forward, C0, None, length=K - 1)
    return D


@jax.jit
def _backtrack(D: Array, K: Array) -> Array:
    """Backtrack from tau[K] = N through levels K..2 of D; entries above K are N (padding).

    Returns shape (K_max + 1,) with K_max = D.shape[0] + 1: tau[0] = 0, tau[1..K] the path.
    """
    K_max = D.shape[0] + 1
    N = D.shape[1] - 1

    def back(t, xs):
        j, Dj = xs  # level j = K_max..2 (reverse scan), Dj = D[j - 2]
        s = jnp.where(j <= K, Dj[t], t)
        return s, s

    levels = jnp.arange(2, K_max + 1)
    _, prev = jax.lax.scan(back, jnp.asarray(N, jnp.int32), (levels, D), reverse=True)
    # prev[j - 2] is the node at level j - 1 for j <= K, and N above
    path = jnp.concatenate([prev, jnp.full((1,), N, jnp.int32)])  # nodes at levels 1..K_max
    path = jnp.where(jnp.arange(1, K_max + 1) <= K, path, N)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), path])


def optimal_trajectory(
    sched: DiscreteSchedule, ms_eps, num_evals: int, *, free_first: bool = False
) -> Int[Array, " {num_evals}+1"]:
    r"""The $K$-step trajectory that minimises the DDPM-forward variational bound of Analytic-DPM.

    As in the paper (Algorithm 1), by default `tau[1] = 1` is fixed (the decoder step
    $x_1\to x_0$ is then the same for every trajectory), and the $K - 1$ Gaussian steps from $N$
    down to 1 are chosen to minimise $\sum_{k=2}^K J(\tau_{k-1}, \tau_k)$, with $J$ from
    [`trajectory_costs`][scoredyn.analytic.trajectory_costs]. The dynamic programme

    $$C_1(t) = [t = 1]\cdot 0 + [t\neq 1]\cdot\infty,\qquad
      C_j(t) = \min_{s < t}\big(C_{j-1}(s) + J(s, t)\big),\quad j = 2..K,$$

    is one `lax.scan` over $j$ with a vectorised min over $s$ ($O(K N^2)$ work, $O(N^2)$
    memory, no Python loops), followed by a backtracking scan from $\tau_K = N$.

    With `free_first=True` the first node is free: the decoder step $\tau_1 \to 0$ is an edge of
    the path with cost $J(0, t) = \log(1 - \texttt{ms\_eps}_t)$, so
    $C_1(t) = J(0, t)$ for $t \ge 1$. This is the exact $\tau_1$-dependent part of the expected
    bound for a continuous Gaussian decoder $\mathcal N(\hat x_0, \kappa_{\tau_1} I)$ at its
    optimal variance $\kappa_{\tau_1} = \frac{1 - \bar a_{\tau_1}}{\bar a_{\tau_1}}
    (1 - \texttt{ms\_eps}_{\tau_1})$: the decoder's $\frac d2\log(2\pi e\,\kappa_{\tau_1})$ plus
    the $\frac d2\lambda_{\tau_1}$ left over by the telescoping log-SNR factor of the Gaussian
    steps (see
    [a free first node](../derivations/grids.md#the-optimal-trajectory-with-a-free-first-node)).
    For data on a grid (a discretised decoder) the decoder term differs; keep `tau[1] = 1`
    there, as the paper does. An estimate with `ms_eps` close to 1 at large $n$ (Monte Carlo
    noise) makes $J(0, n)$ very negative and pulls $\tau_1$ up: project the estimate first.

    Args:
        sched: discrete schedule with $N$ steps.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.
        num_evals: $K$, the number of network evaluations (steps), $1\le K\le N$; a static int.
        free_first: let the DP choose $\tau_1$ too (the decoder edge has a cost), instead of
            fixing $\tau_1 = 1$. A static bool.

    Returns:
        `tau`, int array of shape `(K+1,)`: `tau[0] = 0`, `tau[1] = 1` (if $K\ge 2$ and not
        `free_first`), `tau[K] = N`, strictly increasing. With $K = 1$: `[0, N]`.

    Raises:
        ValueError: if `num_evals` is not an int in $[1, N]$.
        TypeError: if `free_first` is not a bool.

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503, Theorem 3, Algorithm 1; Watson et al.
        2021, arXiv:2106.03802.

    Example:
        ```python
        tau = sd.analytic.optimal_trajectory(sched, est, 10)   # (11,), for N = 1000: ~0.1 s
        tau = sd.analytic.optimal_trajectory(sched, est, 10, free_first=True)  # tau[1] chosen
        ```
    """
    sched = check_schedule(sched)
    free_first = _check_free_first(free_first)
    N = sched.num_steps
    K = num_evals
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= N:
        raise ValueError(f"`num_evals` must be an int in [1, N={N}], got {K!r}.")
    if K == 1:
        return jnp.array([0, N], jnp.int32)
    J = trajectory_costs(sched, ms_eps)
    C0 = _first_level(sched, ms_eps, free_first, J.dtype)
    return _backtrack(_dp_tables(J, C0, K), jnp.asarray(K))


def optimal_trajectories(
    sched: DiscreteSchedule, ms_eps, num_evals: Sequence[int], *, free_first: bool = False
) -> list[Int[Array, " _nodes"]]:
    r"""Optimal trajectories for several $K$ at once, from a single dynamic programme.

    The forward pass of [`optimal_trajectory`][scoredyn.analytic.optimal_trajectory] for
    $K_{\max} = \max K$ contains the tables of every smaller $K$; each trajectory is then one
    backtracking pass. Equal to calling `optimal_trajectory` for each $K$ (with the same
    `free_first`), in about the time of the largest. Not traceable (returns a Python list of
    arrays of different lengths).

    Args:
        sched: discrete schedule with $N$ steps.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.
        num_evals: the $K$ values, each an int in $[1, N]$.
        free_first: let the DP choose $\tau_1$ (see `optimal_trajectory`).

    Returns:
        A list of trajectories, one per entry of `num_evals`.
    """
    sched = check_schedule(sched)
    free_first = _check_free_first(free_first)
    N = sched.num_steps
    Ks = list(num_evals)
    for K in Ks:
        if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= N:
            raise ValueError(f"every entry of `num_evals` must be an int in [1, N={N}], got {K!r}.")
    K_max = max(Ks)
    if K_max == 1:
        return [jnp.array([0, N], jnp.int32) for _ in Ks]
    J = trajectory_costs(sched, ms_eps)
    D = _dp_tables(J, _first_level(sched, ms_eps, free_first, J.dtype), K_max)
    out = []
    for K in Ks:
        tau = jnp.array([0, N], jnp.int32) if K == 1 else _backtrack(D, jnp.asarray(K))[: K + 1]
        out.append(tau)
    return out
