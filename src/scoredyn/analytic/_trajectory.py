r"""The optimal trajectory of Analytic-DPM: a least-cost path by dynamic programming."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._discrete import DiscreteSchedule
from ._common import check_schedule, check_tau
from ._gamma import as_ms_eps


def trajectory_costs(sched: DiscreteSchedule, ms_eps) -> Float[Array, "N+1 N+1"]:
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
    # 1 - beta_{t|s} ms / (1 - abar_t) = ms r + (1 - ms), r = abar_t (1 - abar_s) / (abar_s (1 - abar_t)):
    # a sum of two non-negative terms. The direct form subtracts two numbers close to 1 and
    # cancels to 0 in float32 once abar_t is tiny and ms = 1; r is formed in log space.
    log_bbar = jnp.log(jnp.where(idx > 0, sched.one_minus_alpha_bar.astype(dtype), 1.0))
    log_odds = la - log_bbar  # log(abar / (1 - abar)); log r(s, t) = log_odds[t] - log_odds[s]
    log_r = log_odds[None, :] - log_odds[:, None]
    r = jnp.exp(jnp.where(valid, log_r, 0.0))
    ms_t = ms[None, :]
    J = jnp.log(ms_t * r + (1.0 - ms_t))
    return jnp.where(valid, J, jnp.inf)


def trajectory_cost(
    sched: DiscreteSchedule, ms_eps, tau: Int[ArrayLike, " K+1"]
) -> Float[Array, ""]:
    r"""$\sum_{k=2}^{K} J(\tau_{k-1}, \tau_k)$: the path-dependent part of the DDPM-forward bound.

    The KL divergence between the forward process on `tau` and the Analytic-DPM reverse
    process is $\frac d2$ times this plus a constant that depends only on `tau[1]` and `N`
    (Analytic-DPM Theorem 3). The decoder step `tau[1] -> 0` is not included.
    """
    sched = check_schedule(sched)
    tau = check_tau(tau, sched.num_steps)
    J = trajectory_costs(sched, ms_eps)
    return jnp.sum(J[tau[1:-1], tau[2:]])


@functools.partial(jax.jit, static_argnums=1)
def _dp_tables(J: Array, K: int) -> Array:
    """Forward pass: D[j-2, t] = best predecessor of node t at level j = 2..K. Shape (K-1, N+1)."""
    N = J.shape[0] - 1
    C0 = jnp.full((N + 1,), jnp.inf, J.dtype).at[1].set(0.0)

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


def optimal_trajectory(sched: DiscreteSchedule, ms_eps, num_evals: int) -> Int[Array, " K+1"]:
    r"""The $K$-step trajectory that minimises the DDPM-forward variational bound of Analytic-DPM.

    As in the paper (Algorithm 1), `tau[1] = 1` is fixed (the decoder step $x_1\to x_0$ is then
    the same for every trajectory), and the $K - 1$ Gaussian steps from $N$ down to 1 are chosen
    to minimise $\sum_{k=2}^K J(\tau_{k-1}, \tau_k)$, with $J$ from
    [`trajectory_costs`][scoredyn.analytic.trajectory_costs]. The dynamic programme

    $$C_1(t) = [t = 1]\cdot 0 + [t\neq 1]\cdot\infty,\qquad
      C_j(t) = \min_{s < t}\big(C_{j-1}(s) + J(s, t)\big),\quad j = 2..K,$$

    is one `lax.scan` over $j$ with a vectorised min over $s$ ($O(K N^2)$ work, $O(N^2)$
    memory, no Python loops), followed by a backtracking scan from $\tau_K = N$.

    Args:
        sched: discrete schedule with $N$ steps.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.
        num_evals: $K$, the number of network evaluations (steps), $1\le K\le N$; a static int.

    Returns:
        `tau`, int array of shape `(K+1,)`: `tau[0] = 0`, `tau[1] = 1` (if $K\ge 2$),
        `tau[K] = N`, strictly increasing. With $K = 1$: `[0, N]`.

    Raises:
        ValueError: if `num_evals` is not an int in $[1, N]$.

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503, Theorem 3, Algorithm 1; Watson et al.
        2021, arXiv:2106.03802.

    Example:
        ```python
        tau = sd.analytic.optimal_trajectory(sched, est, 10)   # (11,), for N = 1000: ~0.1 s
        ```
    """
    sched = check_schedule(sched)
    N = sched.num_steps
    K = num_evals
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= N:
        raise ValueError(f"`num_evals` must be an int in [1, N={N}], got {K!r}.")
    if K == 1:
        return jnp.array([0, N], jnp.int32)
    return _backtrack(_dp_tables(trajectory_costs(sched, ms_eps), K), jnp.asarray(K))


def optimal_trajectories(
    sched: DiscreteSchedule, ms_eps, num_evals: Sequence[int]
) -> list[Int[Array, " K+1"]]:
    r"""Optimal trajectories for several $K$ at once, from a single dynamic programme.

    The forward pass of [`optimal_trajectory`][scoredyn.analytic.optimal_trajectory] for
    $K_{\max} = \max K$ contains the tables of every smaller $K$; each trajectory is then one
    backtracking pass. Equal to calling `optimal_trajectory` for each $K$, in about the time of
    the largest. Not traceable (returns a Python list of arrays of different lengths).

    Args:
        sched: discrete schedule with $N$ steps.
        ms_eps: [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or array `(N+1,)`.
        num_evals: the $K$ values, each an int in $[1, N]$.

    Returns:
        A list of trajectories, one per entry of `num_evals`.
    """
    sched = check_schedule(sched)
    N = sched.num_steps
    Ks = list(num_evals)
    for K in Ks:
        if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= N:
            raise ValueError(f"every entry of `num_evals` must be an int in [1, N={N}], got {K!r}.")
    K_max = max(Ks)
    if K_max == 1:
        return [jnp.array([0, N], jnp.int32) for _ in Ks]
    D = _dp_tables(trajectory_costs(sched, ms_eps), K_max)
    out = []
    for K in Ks:
        tau = jnp.array([0, N], jnp.int32) if K == 1 else _backtrack(D, jnp.asarray(K))[: K + 1]
        out.append(tau)
    return out
