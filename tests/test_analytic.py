"""Analytic-DPM: the score moment, optimal variances, bounds and the optimal trajectory.

Independent facts used: Gauss-Hermite quadrature of E||E[eps|x_n]||^2 for a Gaussian mixture,
closed-form moments of Gaussian data (joint covariance of the forward Markov chain, Schur
complements), DDPM's two classic variance choices (Dirac and standard-normal data), the
paper's published clipping thresholds, and brute-force enumeration of trajectories.
"""

import itertools
import math
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import scoredyn as sd
from helpers import compiled_o3, gaussian_1comp, mixture_2d, no_runtime_typecheck

N = 100


@pytest.fixture(scope="module")
def sched():
    return sd.DiscreteSchedule.linear(N, 1e-3, 0.2)  # the DDPM schedule rescaled to N = 100


@pytest.fixture(scope="module")
def gm():
    return mixture_2d()


@pytest.fixture(scope="module")
def est(sched, gm):
    data = gm.sample(jax.random.key(1), 512)
    return sd.analytic.estimate_gamma(
        jax.random.key(2), sched, sd.toy.discrete_eps_fn(gm, sched), data
    )


_NODES = 90


def _quadrature_ms_eps(gm, sched):
    r"""`_quadrature_ms_eps_program`, compiled once (mixture and schedule are arguments) with LLVM
    at -O3 instead of the suite's -O0 (conftest): its 2.4 million evaluations of the exact eps
    cost more to run than to compile. Same values up to rounding (no fast-math either way)."""
    if "program" not in _QUADRATURE:
        _QUADRATURE["program"] = compiled_o3(_quadrature_ms_eps_program, gm, sched)
    return _QUADRATURE["program"](gm, sched)


_QUADRATURE = {}


@jax.jit
def _quadrature_ms_eps_program(gm, sched):
    r"""$\frac1d\mathbb E\|\mathbb E[\varepsilon\mid x_n]\|^2$ for n = 1..N by tensor Gauss-Hermite
    quadrature (90^2 nodes) of each component of the diffused mixture (d = 2)."""
    z, w = np.polynomial.hermite_e.hermegauss(_NODES)
    w = w / math.sqrt(2 * math.pi)
    d = gm.dim
    Z = jnp.asarray(np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, d))
    W = jnp.asarray(np.outer(w, w).reshape(-1))

    def one(n):
        al, si = sched.marginal(n)

        def comp(k):
            L = jnp.linalg.cholesky(al**2 * gm.covs[k] + si**2 * jnp.eye(d))
            xs = al * gm.means[k][None, :] + Z @ L.T
            e = jax.vmap(lambda x: gm.eps_at(al, si, x))(xs)
            return jnp.sum(W * jnp.sum(e**2, -1)) / d

        return jnp.sum(gm.weights * jax.vmap(comp)(jnp.arange(gm.num_components)))

    return jax.vmap(one)(jnp.arange(1, sched.num_steps + 1))


def _gaussian_as_mixture(mean, var, d=2):
    """N(mean, var I) written as three identical components (the shapes of mixture_2d)."""
    g1 = gaussian_1comp(d=d, mean=mean, var=var)
    return sd.toy.GaussianMixture(
        jnp.full(3, 1 / 3), jnp.tile(g1.means, (3, 1)), jnp.tile(g1.covs, (3, 1, 1))
    )


@pytest.fixture(scope="module")
def exact_ms(sched, gm):
    return _quadrature_ms_eps(gm, sched)


# ------------------------------------------------------------------------ Gamma estimation
def test_quadrature_reference_exact_for_gaussian_data(sched):
    """The quadrature reference itself, on Gaussian data where ms_eps has a closed form."""
    quad = _quadrature_ms_eps(_gaussian_as_mixture(0.3, 0.25), sched)
    np.testing.assert_allclose(quad, _gaussian_ms_eps(sched, 0.25)[1:], rtol=1e-10)


@pytest.mark.parametrize("which", ["plain", "cv"])
def test_gamma_estimators_unbiased_with_calibrated_stderr(est, exact_ms, which):
    """Both estimators against quadrature: z-scores over the N steps look standard normal.

    S = 512 pairs per step; mean z^2 within [0.6, 1.5] (chi^2_100 / 100 has sd 0.14), max |z| < 4.5,
    mean z within 4 / sqrt(N) of 0 (a bias of 0.4 stderr would fail).
    """
    m = est.ms_eps_plain if which == "plain" else est.ms_eps_cv
    se = est.stderr_plain if which == "plain" else est.stderr_cv
    z = np.asarray((m[1:] - exact_ms) / se[1:])
    assert 0.6 < np.mean(z**2) < 1.5
    assert np.max(np.abs(z)) < 4.5
    assert abs(np.mean(z)) < 4 / math.sqrt(N)


def test_control_variate_reduces_variance_and_overshoot(est, exact_ms):
    """The control-variate estimator: never much worse, far better at large n, no ms_eps > 1."""
    ratio = np.asarray(est.stderr_plain[1:] / est.stderr_cv[1:])
    assert ratio.min() > 0.9  # cross-fitting costs at most a few percent where it cannot help
    assert np.median(ratio[N // 2 :]) > 10.0  # second half of the schedule
    assert ratio[-1] > 500.0  # n = N: plain stderr 0.03, control variate ~4e-5
    # the plain estimator overshoots its bound ms_eps <= 1 at many steps, the new one nowhere
    assert int(jnp.sum(est.ms_eps_plain > 1)) > 10
    assert int(jnp.sum(est.ms_eps_cv > 1)) == 0
    assert bool(jnp.all(exact_ms < 1))
    # the coefficient of ||eps||^2/d - 1 goes from ~0 (small n) to ~1 (large n)
    assert abs(float(est.cv_coef[1, 0])) < 0.05 and abs(float(est.cv_coef[-1, 0]) - 1) < 0.01
    chex.assert_shape(est.cv_coef, (N + 1, 2))
    assert est.num_samples == 512


def test_control_variate_unbiased_at_tiny_sample_size(sched):
    """Cross-fitting is exactly unbiased even for S = 8: average of 400 independent estimates.

    1-D Gaussian data N(0.3, 0.25), where ms_eps_n = (1 - abar_n) / (abar_n s^2 + 1 - abar_n)
    exactly. Over 400 repetitions the mean error is compared with its standard error (|z| < 4 at
    every n checked); an in-sample fitted coefficient would be biased by O(1/S) here.
    """
    g = gaussian_1comp(d=1)
    eps_fn = sd.toy.discrete_eps_fn(g, sched)
    ab = np.asarray(sched.alpha_bar)
    exact = (1 - ab) / (ab * 0.25 + 1 - ab)
    keys = jax.random.split(jax.random.key(4), 400)

    @jax.jit
    @jax.vmap
    def many(k):
        # fresh data each repetition: the estimate is unbiased for the population value
        kd, ke = jax.random.split(k)
        x = g.sample(kd, 8)
        return sd.analytic.estimate_gamma(ke, sched, eps_fn, x).ms_eps_cv

    reps = np.asarray(many(keys))
    err = reps.mean(0) - exact
    se = reps.std(0) / math.sqrt(keys.shape[0])
    z = err[1:] / se[1:]
    assert np.max(np.abs(z)) < 4.0


def test_gamma_chunk_size_invariance(sched, gm, est):
    """Chunking (here 2 sample batches per step, one step at a time) changes nothing."""
    eps_fn = sd.toy.discrete_eps_fn(gm, sched)
    data = gm.sample(jax.random.key(1), 512)  # the fixture's data and key
    b = sd.analytic.estimate_gamma(jax.random.key(2), sched, eps_fn, data, chunk_size=300)
    chex.assert_trees_all_close(est, b, rtol=1e-10, atol=1e-14)
    assert est.ms_eps.dtype == jnp.float64
    assert float(est.ms_eps[0]) == 0.0 and float(est.stderr[0]) == 0.0
    np.testing.assert_allclose(
        est.gamma[1:], est.ms_eps[1:] / (1 - sched.alpha_bar[1:]), rtol=1e-12
    )
    plain = sd.analytic.estimate_gamma(
        jax.random.key(2), sched, eps_fn, data, control_variate=False
    )
    np.testing.assert_array_equal(plain.ms_eps, est.ms_eps_plain)
    np.testing.assert_array_equal(plain.stderr, est.stderr_plain)


# ------------------------------------------------------------------------ optimal variance
def _gaussian_ms_eps(sched, s2):
    """Closed form for x0 ~ N(m, s2 I): ms_eps_n = (1 - abar_n) / (abar_n s2 + 1 - abar_n)."""
    ab = sched.alpha_bar
    return (1 - ab) / (ab * s2 + 1 - ab)


def _conditional_var_markov(sched, n, m, s2):
    r"""Var[x_m | x_n] for x0 ~ N(mu, s2) under the DDPM Markov chain, by Gaussian conditioning.

    x_m = sqrt(abar_m) x0 + sqrt(1 - abar_m) e1,
    x_n = sqrt(abar_n / abar_m) x_m + sqrt(1 - abar_n / abar_m) e2.
    """
    ab = np.asarray(sched.alpha_bar)
    vm = ab[m] * s2 + 1 - ab[m]
    vn = ab[n] * s2 + 1 - ab[n]
    cov = np.sqrt(ab[n] / ab[m]) * vm
    return vm - cov**2 / vn


def _conditional_var_family(sched, n, m, s2, lam2):
    r"""Var[x_m | x_n] under the DDIM-family forward process with variance lam2 (paper eq. for mu~).

    x_n = a_n x0 + s_n e,
    x_m = a_m x0 + sqrt(1 - abar_m - lam2) (x_n - a_n x0) / s_n + sqrt(lam2) z;
    the joint covariance of (x_m, x_n) from the linear map of (x0, e, z), then a Schur complement.
    """
    ab = np.asarray(sched.alpha_bar)
    an, sn, am = np.sqrt(ab[n]), np.sqrt(1 - ab[n]), np.sqrt(ab[m])
    k = np.sqrt(1 - ab[m] - lam2)
    # x_m = am x0 + k (x_n - an x0) / sn + sqrt(lam2) z = am x0 + k e + sqrt(lam2) z
    A = np.array([[am, k, np.sqrt(lam2)], [an, sn, 0.0]])  # rows x_m, x_n; columns x0, e, z
    C = A @ np.diag([s2, 1.0, 1.0]) @ A.T
    return C[0, 0] - C[0, 1] ** 2 / C[1, 1]


@pytest.mark.parametrize(
    "forward,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0)]
)
def test_optimal_variance_exact_for_gaussian_data(sched, forward, eta):
    """Isotropic Gaussian data: the optimal variance is the true Var[x_m | x_n], to 1e-12."""
    s2 = 0.25
    ms = _gaussian_ms_eps(sched, s2)
    tau = sd.respace(N, 7, "quadratic")
    var = sd.analytic.optimal_variances(sched, tau, ms, forward=forward, eta=eta)
    n, m = np.asarray(tau[1:]), np.asarray(tau[:-1])
    lam2 = np.asarray(
        sd.reverse_variances(sched, tau, "eta", eta=1.0 if forward == "ddpm" else eta)
    )
    truth = np.array([_conditional_var_family(sched, a, b, s2, l2) for a, b, l2 in zip(n, m, lam2)])
    np.testing.assert_allclose(var, truth, rtol=1e-10, atol=1e-15)
    if forward == "ddpm" or eta == 1.0:  # and independently through the Markov chain
        markov = np.array([_conditional_var_markov(sched, a, b, s2) for a, b in zip(n, m)])
        np.testing.assert_allclose(var, markov, rtol=1e-10, atol=1e-15)


def test_optimal_variance_exact_with_estimated_gamma(sched):
    """Whole pipeline on Gaussian data N(0.3, 0.25 I): estimate_gamma + optimal_variances vs truth.

    (Written as a mixture of three identical components: same shapes as the other tests, so
    nothing recompiles.) S = 512; the variance error must be within
    gamma^2 (1 - abar_n)/abar_n * 4 stderr(ms_eps).
    """
    g = _gaussian_as_mixture(0.3, 0.25)
    est = sd.analytic.estimate_gamma(
        jax.random.key(7), sched, sd.toy.discrete_eps_fn(g, sched), g.sample(jax.random.key(8), 512)
    )
    tau = sd.respace(N, 10)
    var = sd.analytic.optimal_variances(sched, tau, est)
    n, m = np.asarray(tau[1:]), np.asarray(tau[:-1])
    truth = np.array([_conditional_var_markov(sched, a, b, 0.25) for a, b in zip(n, m)])
    ab = np.asarray(sched.alpha_bar)
    gam = np.asarray(sd.forward_posterior(sched, jnp.asarray(n), jnp.asarray(m)).coef_x0)
    tol = gam**2 * (1 - ab[n]) / ab[n] * 4 * np.asarray(est.stderr)[n] + 1e-14
    assert np.all(np.abs(var - truth) <= tol)
    # and the estimate of ms_eps itself against its closed form, within 4 standard errors
    exact = _gaussian_ms_eps(sched, 0.25)
    assert bool(jnp.all(jnp.abs(est.ms_eps - exact)[1:] <= 4 * est.stderr[1:]))


def test_classic_ddpm_variances_are_the_optimum_for_their_data(sched):
    """DDPM's beta-tilde is optimal for Dirac data (ms_eps = 1), beta for N(0, I) data."""
    tau = sd.respace(N, 9, "quadratic")
    dirac = sd.analytic.optimal_variances(sched, tau, jnp.ones(N + 1))
    np.testing.assert_allclose(dirac, sd.reverse_variances(sched, tau, "ddpm"), rtol=1e-12, atol=0)
    std_normal = sd.analytic.optimal_variances(sched, tau, _gaussian_ms_eps(sched, 1.0))
    np.testing.assert_allclose(
        std_normal, sd.reverse_variances(sched, tau, "ddpm_beta"), rtol=1e-10, atol=0
    )
    # the decoder step (m = 0) of Dirac data has zero variance, of N(0, I) data 1 - abar_tau1
    assert float(dirac[0]) == 0.0


def test_bounds_are_the_extreme_ms_eps_and_monotone(sched):
    """Lower bound = ms_eps 1, Eq. 11 upper bound = ms_eps 0; variance decreasing in ms_eps."""
    tau = sd.respace(N, 12)
    lo, hi = sd.analytic.variance_bounds(sched, tau)
    np.testing.assert_allclose(sd.analytic.optimal_variances(sched, tau, jnp.ones(N + 1)), lo)
    np.testing.assert_allclose(sd.analytic.optimal_variances(sched, tau, jnp.zeros(N + 1)), hi)
    # Corollary 3 (DDPM forward): beta-tilde <= sigma*^2 <= beta_{n|m} / alpha_{n|m}
    ab = np.asarray(sched.alpha_bar)
    n, m = np.asarray(tau[1:]), np.asarray(tau[:-1])
    np.testing.assert_allclose(hi, (1 - ab[n] / ab[m]) / (ab[n] / ab[m]), rtol=1e-10)
    v = [sd.analytic.optimal_variances(sched, tau, jnp.full(N + 1, c)) for c in (0.2, 0.5, 0.9)]
    assert bool(jnp.all(v[0] >= v[1])) and bool(jnp.all(v[1] >= v[2]))


def _wrong_mixture(gm, kind):
    """A deliberately wrong model: the exact eps of another mixture (same shapes as `gm`)."""
    if kind == "overconfident":  # shifted means, 100x too narrow: ms_eps far above 1
        return sd.toy.GaussianMixture(gm.weights, gm.means + 0.5, 0.01 * gm.covs)
    return sd.toy.GaussianMixture(gm.weights, gm.means, 25.0 * gm.covs)  # too broad


@pytest.mark.parametrize("kind", ["overconfident", "underconfident"])
@pytest.mark.parametrize("data_range", [None, (-1.0, 1.0)])
def test_variances_inside_bounds_even_with_a_wrong_eps(sched, gm, kind, data_range):
    """A deliberately wrong eps (ms_eps > 1 at many steps, or too small): clipped variances stay
    inside the bounds, for DDPM, DDIM and DDIM(eta) forward processes."""
    data = gm.sample(jax.random.key(9), 512)
    wrong = sd.toy.discrete_eps_fn(_wrong_mixture(gm, kind), sched)
    est = sd.analytic.estimate_gamma(jax.random.key(10), sched, wrong, data)
    if kind == "overconfident":
        assert float(est.ms_eps.max()) > 1.5  # the estimate really is outside [0, 1]
    tau = sd.respace(N, 10, "quadratic")
    forwards: tuple[tuple[Literal["ddpm", "ddim"], float], ...] = (
        ("ddpm", 0.0),
        ("ddim", 0.0),
        ("ddim", 0.7),
    )
    for forward, eta in forwards:
        lo, hi = sd.analytic.variance_bounds(
            sched, tau, forward=forward, eta=eta, data_range=data_range
        )
        v = sd.analytic.optimal_variances(
            sched, tau, est, forward=forward, eta=eta, data_range=data_range
        )
        assert bool(jnp.all(v >= lo * (1 - 1e-12))) and bool(jnp.all(v <= hi * (1 + 1e-12)))
    x0v = sd.analytic.x0_variance(sched, est, data_range=data_range)
    assert bool(jnp.all(x0v >= 0))
    if data_range is not None:
        assert bool(jnp.all(x0v <= 1.0))


@settings(max_examples=20)
@given(ms=st.lists(st.floats(-1.0, 3.0), min_size=N + 1, max_size=N + 1), eta=st.floats(0, 1))
def test_bounds_property_any_ms_eps(sched, ms, eta):
    """For ANY ms_eps array (also < 0 or > 1) and eta the clipped variance lies in the bounds."""
    tau = sd.respace(N, 8)
    v, lo, hi = _clipped_and_bounds(sched, tau, jnp.asarray(ms), jnp.asarray(eta))
    assert bool(jnp.all((v >= lo * (1 - 1e-12)) & (v <= hi * (1 + 1e-12))))


@jax.jit
def _clipped_and_bounds(sched, tau, ms, eta):
    return (
        sd.analytic.optimal_variances(
            sched, tau, ms, forward="ddim", eta=eta, data_range=(-1.0, 1.0)
        ),
        *sd.analytic.variance_bounds(sched, tau, forward="ddim", eta=eta, data_range=(-1.0, 1.0)),
    )


def test_data_range_bound_tighter_at_large_n(sched):
    """Eq. 12 (data in [-1, 1]) is tighter than Eq. 11 at large n, looser at small n (Fig. 8)."""
    tau = sd.respace(N, N)
    _, hi11 = sd.analytic.variance_bounds(sched, tau)
    _, hi = sd.analytic.variance_bounds(sched, tau, data_range=(-1.0, 1.0))
    assert bool(jnp.all(hi <= hi11 * (1 + 1e-12)))
    assert float(hi[-1]) < 0.9 * float(hi11[-1])
    assert float(hi[1]) == pytest.approx(float(hi11[1]), rel=1e-12)


def test_last_step_clip_matches_paper_thresholds():
    """App. F.2 / Table 7: E|sigma z| <= 2y/255 gives sigma^2 <= 9.66e-5 (y=1), 3.87e-4 (y=2)."""
    sched = sd.DiscreteSchedule.linear(1000)
    tau = sd.respace(1000, 10)
    ms = jnp.zeros(1001)  # the largest variances
    for y, cap in ((1, 9.66e-5), (2, 3.87e-4)):
        v = sd.analytic.optimal_variances(sched, tau, ms, last_step_clip=2 * y / 255)
        assert float(v[1]) == pytest.approx(cap, rel=2e-3)
        v0 = sd.analytic.optimal_variances(sched, tau, ms)
        np.testing.assert_array_equal(v[2:], v0[2:])
        np.testing.assert_array_equal(v[0], v0[0])


def test_scalar_pair_version_and_x0_variance(sched, est):
    """optimal_variance (one pair) agrees with the trajectory version; x0_variance is its pieces."""
    tau = np.asarray(sd.respace(N, 6))
    n2, m2 = int(tau[3]), int(tau[2])  # the third pair, as Python ints

    @jax.jit  # every function below in one program (not op by op); tau a constant of it
    def run(sched, est):
        v = sd.analytic.optimal_variances(sched, tau, est)
        n, m = tau[1:], tau[:-1]  # the pair version works elementwise on arrays of pairs
        pairs = sd.analytic.optimal_variance(sched, n, m, est.ms_eps[n])
        one = sd.analytic.optimal_variance(sched, n2, m2, est.ms_eps[n2])
        x0v = sd.analytic.x0_variance(sched, est)
        lam2 = sd.reverse_variances(sched, tau, "ddpm")
        gam = sd.forward_posterior(sched, tau[1:], tau[:-1]).coef_x0
        return v, pairs, one, lam2 + gam**2 * x0v[tau[1:]]

    v, pairs, one, pieces = (np.asarray(a) for a in run(sched, est))
    np.testing.assert_allclose(pairs, v, rtol=1e-12)
    assert float(one) == pytest.approx(float(v[2]), rel=1e-12)
    np.testing.assert_allclose(v, pieces, rtol=1e-12)


# ------------------------------------------------------------------------ optimal trajectory
def _path_cost(J, tau):
    return sum(float(J[s, t]) for s, t in zip(tau[1:-1], tau[2:]))


def _small_sched():
    return sd.DiscreteSchedule.linear(12, 1e-2, 0.3)


def _mixture_like_ms(sched_small, sched, est):
    """The mixture's estimated ms_eps carried over to another schedule by its log-SNR."""
    lam, lam_small = np.asarray(sched.log_snr())[1:], np.asarray(sched_small.log_snr())[1:]
    ms = np.interp(lam_small, lam[::-1], np.asarray(est.ms_eps)[1:][::-1])
    return jnp.asarray(np.concatenate([[0.0], ms]))


@pytest.mark.parametrize("ms_kind", ["mixture", "random"])
def test_dp_matches_brute_force(ms_kind, sched, est):
    """N = 12, every K: DP cost and path equal exhaustive search over all C(N-2, K-2) paths."""
    n_small = 12
    sched_small = _small_sched()
    if ms_kind == "random":
        ms = jax.random.uniform(jax.random.key(11), (n_small + 1,), minval=0.0, maxval=1.0)
    else:
        ms = _mixture_like_ms(sched_small, sched, est)
    sched = sched_small
    J = np.asarray(sd.analytic.trajectory_costs(sched, ms))
    Ks = list(range(1, n_small + 1))
    taus = sd.analytic.optimal_trajectories(sched, ms, Ks)  # one DP for every K
    for K, tau_dp in zip(Ks[1:], taus[1:]):
        best, best_tau = math.inf, None
        for mid in itertools.combinations(range(2, n_small), K - 2):
            tau = (0, 1, *mid, n_small)
            c = _path_cost(J, tau)
            if c < best:
                best, best_tau = c, tau
        assert tuple(np.asarray(tau_dp).tolist()) == best_tau
        assert _path_cost(J, np.asarray(tau_dp)) == pytest.approx(best, rel=1e-12)
    assert np.asarray(taus[0]).tolist() == [0, n_small]
    np.testing.assert_array_equal(taus[-1], np.arange(n_small + 1))
    for K in (1, 4, n_small):  # the single-K function agrees
        np.testing.assert_array_equal(sd.analytic.optimal_trajectory(sched, ms, K), taus[K - 1])
    cost = sd.analytic.trajectory_cost(sched, ms, taus[3])
    assert float(cost) == pytest.approx(_path_cost(J, np.asarray(taus[3])), rel=1e-12)


def test_gaussian_data_every_path_costs_the_same():
    """Gaussian data: the optimal reverse kernels are the exact q(x_m | x_n), so the path cost
    (KL minus a path-independent constant) is the same for every trajectory (checked on all
    2^10 paths of N = 12 to 1e-12)."""
    sched_small = _small_sched()
    J = np.asarray(sd.analytic.trajectory_costs(sched_small, _gaussian_ms_eps(sched_small, 0.05)))
    costs = [
        _path_cost(J, (0, 1, *mid, 12))
        for K in range(2, 13)
        for mid in itertools.combinations(range(2, 12), K - 2)
    ]
    assert len(costs) == 2**10 and np.ptp(costs) < 1e-12


def test_cost_matrix_is_the_kl_ratio(sched, est):
    """J(s, t) + log(bbar_t abar_s / (abar_t bbar_s)) = log(sigma*^2 / beta-tilde) for each step."""
    J = sd.analytic.trajectory_costs(sched, est)
    tau = sd.respace(N, 9, "quadratic").at[1].set(1)
    var = sd.analytic.optimal_variances(sched, tau, est)
    lam2 = sd.reverse_variances(sched, tau, "ddpm")
    ab, om = sched.alpha_bar, sched.one_minus_alpha_bar
    t, s = tau[2:], tau[1:-1]
    tele = jnp.log(om[t] * ab[s] / (ab[t] * om[s]))
    np.testing.assert_allclose(J[s, t] + tele, jnp.log(var[1:] / lam2[1:]), rtol=1e-9, atol=1e-12)
    assert bool(jnp.all(J[s, t] <= 0))
    assert bool(jnp.all(jnp.isinf(J[0])) and jnp.all(jnp.isinf(jnp.diag(J))))


def test_cost_matrix_finite_in_float32_at_unit_ms_eps():
    """ms_eps = 1 (a data distribution concentrated at a point) makes J(s, t) = log r(s, t) with
    r = abar_t (1 - abar_s) / (abar_s (1 - abar_t)); the direct 1 - beta ms / (1 - abar_t) form
    cancels to 0 in float32 once abar_t ~ 4e-5 (found by the digits demo). Reference: the same
    closed form in float64 NumPy, from the float64 schedule."""
    sched64 = sd.DiscreteSchedule.linear(1000)
    sched32 = sd.DiscreteSchedule.linear(1000, dtype=jnp.float32)
    J = np.asarray(sd.analytic.trajectory_costs(sched32, jnp.ones(1001, jnp.float32)))
    assert J.dtype == np.float32
    la = np.asarray(sched64.log_alpha_bar)
    om = -np.expm1(la)
    s, t = np.triu_indices(1001, k=1)
    keep = s >= 1
    s, t = s[keep], t[keep]
    ref = la[t] - la[s] + np.log(om[s]) - np.log(om[t])
    assert np.all(np.isfinite(J[s, t]))
    np.testing.assert_allclose(J[s, t], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_dp_full_size_path_is_valid():
    """N = 1000, K = 100: a valid strictly increasing path (timing lives in benchmarks/)."""
    sched = sd.DiscreteSchedule.linear(1000)
    ms = np.linspace(0.0, 1.0, 1001) ** 0.5
    # compiled at LLVM -O1, not the suite's -O0 (conftest): the O(K N^2) = 1e8 DP costs more
    # to run than to compile (~2x faster); same path (min/argmin, no fast-math at either level)
    dp = compiled_o3(lambda s, ms: sd.analytic.optimal_trajectory(s, ms, 100), sched, ms, level="1")
    tau = np.asarray(dp(sched, ms))
    assert tau.shape == (101,)
    assert int(tau[1]) == 1 and int(tau[-1]) == 1000 and bool(np.all(np.diff(tau) > 0))


# ------------------------------------------------------------------------ transforms, errors
def test_grad_of_the_optimal_variances(sched):
    """The gradient of the total variance with respect to ms_eps is
    -gamma^2 (1 - abar)/abar on the steps (closed form). (jit, vmap and grad of every
    `sd.analytic` function, with finite-difference checks: tests/test_transforms.py.)"""
    tau = sd.respace(N, 10)
    g = jax.grad(lambda ms: jnp.sum(sd.analytic.optimal_variances(sched, tau, ms, clip=False)))(
        jnp.full(N + 1, 0.5)
    )
    gam = sd.forward_posterior(sched, tau[1:], tau[:-1]).coef_x0
    ab = sched.alpha_bar[tau[1:]]
    np.testing.assert_allclose(g[tau[1:]], -(gam**2) * (1 - ab) / ab, rtol=1e-10)
    # estimate_gamma under jit and vmap: see test_control_variate_unbiased_at_tiny_sample_size


def test_errors(sched, est, gm):
    tau = sd.respace(N, 10)
    with pytest.raises(ValueError, match="forward"), no_runtime_typecheck():
        sd.analytic.optimal_variances(sched, tau, est, forward="ddpm2")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="eta"):
        sd.analytic.optimal_variances(sched, tau, est, forward="ddim", eta=1.5)
    with pytest.raises(ValueError, match="ms_eps"):
        sd.analytic.optimal_variances(sched, tau, jnp.ones(5))
    with pytest.raises(ValueError, match="data_range"):
        sd.analytic.optimal_variances(sched, tau, est, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="last_step_clip"):
        sd.analytic.optimal_variances(sched, tau, est, last_step_clip=-1.0)
    with pytest.raises(ValueError, match="tau"):
        sd.analytic.optimal_variances(sched, jnp.array([0, 5, 3, N]), est)
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        sd.analytic.optimal_variances(sched.alpha_bar, tau, est)
    with pytest.raises(ValueError, match="num_evals"):
        sd.analytic.optimal_trajectory(sched, est, N + 1)
    with pytest.raises(ValueError, match="num_evals"):
        sd.analytic.optimal_trajectory(sched, est, 0)
    eps_fn = sd.toy.discrete_eps_fn(gm, sched)
    with pytest.raises(ValueError, match="at least 8"):
        sd.analytic.estimate_gamma(jax.random.key(0), sched, eps_fn, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="num_noise"):
        sd.analytic.estimate_gamma(
            jax.random.key(0), sched, eps_fn, jnp.zeros((30, 2)), num_noise=0
        )
    with pytest.raises(ValueError, match="shape"):
        sd.analytic.estimate_gamma(jax.random.key(0), sched, lambda t, x: x[:1], jnp.zeros((30, 2)))
    with pytest.raises(ValueError, match="m < n"):
        sd.analytic.optimal_variance(sched, 3, 3, 0.5)
