"""The optimal-trajectory dynamic programme with a free first node (`free_first=True`).

With the first node free, the decoder step tau_1 -> 0 is an edge with cost
J(0, t) = log(1 - ms_eps_t), and the DP minimises J(0, tau_1) + sum_k J(tau_{k-1}, tau_k).
Checked against exhaustive search, against the expected variational bound assembled from
`optimal_variances` / `x0_variance` (the decoder term included), and on Gaussian data, where
every path must cost the same.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from scoredyn.analytic._trajectory import _decoder_costs

pytestmark = pytest.mark.xdist_group("trajectory-dp")  # the per-N programs compiled once


@functools.cache
def _sched(N):
    return sd.DiscreteSchedule.linear(N, 1e-2, 0.3)


@functools.cache
def _ms(kind, N):
    """ms_eps of shape (N+1,) in (0, 1): i.i.d. uniform, or sorted (increasing in n, as a
    real estimate is)."""
    u = jax.random.uniform(jax.random.key(7 + N), (N + 1,), minval=0.02, maxval=0.98)
    return jnp.sort(u) if kind == "sorted" else u


def _costs(sched, ms):
    J = np.asarray(sd.analytic.trajectory_costs(sched, ms))
    D = np.asarray(_decoder_costs(sched, ms, jnp.float64))
    return J, D


# the library's free-first cost of one path, compiled once per path length K
_free_cost_lib = jax.jit(functools.partial(sd.analytic.trajectory_cost, free_first=True))


def _free_cost(J, D, tau):
    """J(0, tau_1) + sum_{k >= 2} J(tau_{k-1}, tau_k), summed in Python floats."""
    return float(D[tau[1]]) + sum(float(J[s, t]) for s, t in zip(tau[1:-1], tau[2:]))


def _all_free_paths(N, K):
    """Every trajectory 0 < tau_1 < ... < tau_{K-1} < tau_K = N: C(N - 1, K - 1) of them."""
    for mid in itertools.combinations(range(1, N), K - 1):
        yield (0, *mid, N)


@pytest.mark.parametrize("N", [8, 10, 12])
@pytest.mark.parametrize("kind", ["uniform", "sorted"])
def test_free_first_dp_matches_brute_force(N, kind):
    """For every K in 1..N the DP's path is the exhaustive-search minimiser over all
    C(N - 1, K - 1) paths, and its cost equals the minimum to 1e-12."""
    sched, ms = _sched(N), _ms(kind, N)
    J, D = _costs(sched, ms)
    Ks = list(range(1, N + 1))
    taus = sd.analytic.optimal_trajectories(sched, ms, Ks, free_first=True)
    for K, tau_dp in zip(Ks, taus):
        costs = {tau: _free_cost(J, D, tau) for tau in _all_free_paths(N, K)}
        best = min(costs, key=lambda p: costs[p])
        tau_dp = tuple(np.asarray(tau_dp).tolist())
        assert tau_dp == best, (K, tau_dp, best)
        assert _free_cost(J, D, tau_dp) == pytest.approx(costs[best], rel=1e-12, abs=1e-12)
        if K in (2, N // 2, N):  # the single-K function agrees (one compilation per K)
            single = sd.analytic.optimal_trajectory(sched, ms, K, free_first=True)
            assert tuple(np.asarray(single).tolist()) == tau_dp
        cost = sd.analytic.trajectory_cost(sched, ms, jnp.asarray(tau_dp), free_first=True)
        assert float(cost) == pytest.approx(costs[best], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", ["uniform", "sorted"])
def test_fixed_first_node_unchanged(kind):
    """free_first=False (the default) still fixes tau_1 = 1 and minimises sum_{k>=2} J; the
    free optimum is never worse than the fixed one under the free objective."""
    N = 12
    sched, ms = _sched(N), _ms(kind, N)
    J, D = _costs(sched, ms)
    for K in range(2, N + 1):
        fixed = tuple(np.asarray(sd.analytic.optimal_trajectory(sched, ms, K)).tolist())
        paths = [(0, 1, *mid, N) for mid in itertools.combinations(range(2, N), K - 2)]
        best = min(paths, key=lambda p: _free_cost(J, D, p) - float(D[1]))
        assert fixed == best and fixed[1] == 1
        free = sd.analytic.optimal_trajectory(sched, ms, K, free_first=True)
        assert _free_cost(J, D, tuple(np.asarray(free).tolist())) <= _free_cost(J, D, fixed)


def test_free_cost_is_the_expected_bound():
    """The free-first cost is the whole expected bound up to a constant of N alone.

    For the DDPM forward process, the optimal variances v*_k and the continuous Gaussian
    decoder N(x0_hat, kappa_{tau_1}) at its optimal variance, the expected bound minus the
    prior term is (d/2) [sum_{k>=2} log(v*_k / beta-tilde_k) + log(2 pi e kappa_{tau_1})].
    Built from `optimal_variances`, `reverse_variances` and `x0_variance` (independent of
    `trajectory_costs`), it must equal (d/2) [cost + log(2 pi e) - lambda_N] on every path of
    N = 8 (all 2^7), to 1e-10."""
    N = 8
    sched, ms = _sched(N), _ms("sorted", N)
    kappa = np.asarray(sd.analytic.x0_variance(sched, ms, clip=False))
    lam_N = float(np.log(sched.alpha_bar[N]) - np.log(sched.one_minus_alpha_bar[N]))

    @jax.jit  # one program per path length K (not one per operation and K, as eagerly)
    def parts(tau):
        v = sd.analytic.optimal_variances(sched, tau, ms, clip=False)
        return v, sd.reverse_variances(sched, tau, "ddpm"), _free_cost_lib(sched, ms, tau)

    for K in range(1, N + 1):
        for path in _all_free_paths(N, K):
            v, lam2, cost = parts(jnp.asarray(path, jnp.int32))
            v, lam2, cost = np.asarray(v), np.asarray(lam2), float(cost)
            assert v[0] == pytest.approx(kappa[path[1]], rel=1e-12)  # decoder variance
            bound = np.sum(np.log(v[1:] / lam2[1:])) + math.log(2 * math.pi * math.e * v[0])
            assert bound == pytest.approx(cost + math.log(2 * math.pi * math.e) - lam_N, abs=1e-10)


def _gaussian_ms_eps(sched, s2):
    """Exact ms_eps for data N(0, s2 I): E[eps | x_n] = sigma_n x_n / (abar_n s2 + 1 - abar_n)."""
    ab, om = sched.alpha_bar, sched.one_minus_alpha_bar
    return om / (ab * s2 + om)


def test_gaussian_data_every_free_path_costs_the_same():
    """Gaussian data: every reverse kernel and the decoder are exact, so the bound is the exact
    NLL whatever the path, first node included: all 2^11 paths of N = 12 cost the same to
    1e-12, and the DP's cost equals it."""
    N = 12
    sched = _sched(N)
    ms = _gaussian_ms_eps(sched, 0.05)
    J, D = _costs(sched, ms)
    costs = [_free_cost(J, D, p) for K in range(1, N + 1) for p in _all_free_paths(N, K)]
    assert len(costs) == 2 ** (N - 1) and np.ptp(costs) < 1e-12
    tau = sd.analytic.optimal_trajectory(sched, ms, 5, free_first=True)
    assert float(sd.analytic.trajectory_cost(sched, ms, tau, free_first=True)) == pytest.approx(
        costs[0], abs=1e-12
    )


def test_unit_ms_eps_stays_finite():
    """ms_eps = 1 (a point-mass posterior of x_0) floors 1 - ms_eps at the smallest normal
    float: finite costs, a valid path, no NaN; in float32 too."""
    for dtype in (jnp.float64, jnp.float32):
        sched = sd.DiscreteSchedule.linear(200, dtype=dtype)
        ms = jnp.ones(201, dtype).at[:50].set(0.5)
        D = _decoder_costs(sched, ms, dtype)
        assert bool(jnp.all(jnp.isfinite(D[1:]))) and D.dtype == dtype
        for K in (1, 2, 7):
            tau = sd.analytic.optimal_trajectory(sched, ms, K, free_first=True)
            np.testing.assert_array_equal(sd.trajectory(tau, 200), tau)
            assert bool(jnp.isfinite(sd.analytic.trajectory_cost(sched, ms, tau, free_first=True)))


def test_free_first_full_size_and_jit():
    """N = 1000: a valid path; under jit (K and free_first static) the same path."""
    sched = sd.DiscreteSchedule.linear(1000)
    ms = jnp.linspace(0.0, 0.999, 1001) ** 0.5
    tau = sd.analytic.optimal_trajectory(sched, ms, 10, free_first=True)
    np.testing.assert_array_equal(sd.trajectory(tau, 1000), tau)
    dp = jax.jit(sd.analytic.optimal_trajectory, static_argnums=2, static_argnames="free_first")
    np.testing.assert_array_equal(dp(sched, ms, 10, free_first=True), tau)
    assert np.asarray(sd.analytic.optimal_trajectory(sched, ms, 1, free_first=True)).tolist() == [
        0,
        1000,
    ]


def test_errors():
    sched = _sched(8)
    ms = _ms("uniform", 8)
    bads: list = [1, "yes", None]
    for bad in bads:
        with pytest.raises(TypeError, match="free_first"):
            sd.analytic.optimal_trajectory(sched, ms, 3, free_first=bad)
        with pytest.raises(TypeError, match="free_first"):
            sd.analytic.optimal_trajectories(sched, ms, [2, 3], free_first=bad)
        with pytest.raises(TypeError, match="free_first"):
            sd.analytic.trajectory_cost(sched, ms, sd.respace(8, 3), free_first=bad)
    with pytest.raises(ValueError, match="num_evals"):
        sd.analytic.optimal_trajectory(sched, ms, 9, free_first=True)
