"""Extended-Analytic-DPM (SN-DPM, NPR-DPM): covariances, reverse variances, sampling, losses.

Independent facts: Monte Carlo draws from the exact posterior p(x_0 | x_n) of a Gaussian
mixture (sampled as a mixture) pushed through q(x_m | x_n, x_0), exactness of the reverse
chain for Gaussian data, and the quadratic form of the expected losses around their minimiser.
"""

import math
from typing import cast

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import mixture_2d, no_runtime_typecheck

N = 100


@pytest.fixture(scope="module")
def sched():
    return sd.DiscreteSchedule.linear(N, 1e-3, 0.2)


@pytest.fixture(scope="module")
def gm():
    return mixture_2d()


def _posterior_draws(gm, sched, n, x_n, key, num):
    """x_0 ~ p(x_0 | x_n) exactly: the posterior is again a Gaussian mixture."""
    alpha, sigma = sched.marginal(n)
    post = gm.posterior(alpha, sigma, x_n)
    w = jnp.clip(post.weights, 0.0, None)
    mix = sd.toy.GaussianMixture(w / w.sum(), post.means, post.covs)
    return mix.sample(key, num)


def _x_m_draws(sched, n, m, x_n, x0s, key, lam2):
    """x_m ~ q(x_m | x_n, x_0) of the DDIM family, from the paper's posterior mean formula."""
    ab = sched.alpha_bar
    k = jnp.sqrt(1 - ab[m] - lam2)
    mean = jnp.sqrt(ab[m]) * x0s + k * (x_n[None, :] - jnp.sqrt(ab[n]) * x0s) / jnp.sqrt(1 - ab[n])
    return mean + jnp.sqrt(lam2) * jax.random.normal(key, x0s.shape)


CASES = [(5, 0), (20, 10), (60, 30), (95, 60)]  # (n, m) pairs, incl. the decoder step


@jax.jit
def _sn_case(sched, gm, n, m):
    """Everything `test_sn_reverse_variance_is_the_exact_conditional_variance` compares, for the
    pair (n, m) (traced: one compiled program for every pair)."""
    # independent keys (note fold_in(k, 1) == split(k)[1], so never mix the two on one key)
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(n), 5)
    x0 = gm.sample(k1, 1)[0]
    alpha, sigma = sched.marginal(n)
    x_n = alpha * x0 + sigma * jax.random.normal(k2, (2,))
    m1, m2 = gm.eps_moments(alpha, sigma, x_n)
    cov = sd.analytic.sn_covariance(sched, n, m1, m2)
    x0s = _posterior_draws(gm, sched, n, x_n, k3, 100_000)
    lam2 = sd.posterior_variance(sched, n, m)
    x_ms = _x_m_draws(sched, n, m, x_n, x0s, k4, lam2)
    var_fn = sd.analytic.sn_variance_fn(sched, sd.toy.discrete_eps2_fn(gm, sched))
    eps_hat = sd.toy.discrete_eps_fn(gm, sched)(sched.time(n), x_n)
    v = var_fn(n, m, x_n, eps_hat)
    # the DDIM forward (eta = 0.5) as well
    lam2_e = 0.25 * lam2
    var_e = sd.analytic.sn_variance_fn(
        sched, sd.toy.discrete_eps2_fn(gm, sched), forward="ddim", eta=0.5
    )(n, m, x_n, eps_hat)
    x_ms_e = _x_m_draws(sched, n, m, x_n, x0s, k5, lam2_e)
    _, pcov = gm.posterior_moments(alpha, sigma, x_n)
    return {
        "cov": (cov, jnp.var(x0s, 0)),
        "v": (v, jnp.var(x_ms, 0)),
        "v_ddim": (var_e, jnp.var(x_ms_e, 0)),
        "pcov": (cov, jnp.diagonal(pcov)),
    }


@pytest.mark.parametrize("n,m", CASES)
def test_sn_reverse_variance_is_the_exact_conditional_variance(sched, gm, n, m):
    """With exact heads, SN-DPM's diagonal variance is Var[x_m | x_n] per coordinate.

    Monte Carlo: 100k draws x_0 ~ p(x_0 | x_n), x_m ~ q(x_m | x_n, x_0); relative standard
    error of a sample variance sqrt(2/1e5) = 0.45%; tolerance 3%. Also the x_0 covariance
    diag Cov[x_0 | x_n] against the same draws. (One jitted program for the four pairs.)
    """
    r = _sn_case(sched, gm, jnp.asarray(n), jnp.asarray(m))
    np.testing.assert_allclose(*r["cov"], rtol=0.03)
    np.testing.assert_allclose(*r["v"], rtol=0.03)
    np.testing.assert_allclose(*r["v_ddim"], rtol=0.03)
    # exact posterior moments (closed form) agree to rounding
    np.testing.assert_allclose(*r["pcov"], rtol=1e-9)


@jax.jit
def _npr_case(sched, gm, n, m):
    """Everything `test_npr_corrects_an_imperfect_mean` compares, for the pair (n, m) (traced:
    one compiled program for every pair)."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(100 + n), 4)
    x0 = gm.sample(k1, 1)[0]
    alpha, sigma = sched.marginal(n)
    x_n = alpha * x0 + sigma * jax.random.normal(k2, (2,))
    m1, m2 = gm.eps_moments(alpha, sigma, x_n)
    eps_wrong = m1 + 0.3
    g_star = m2 - 2 * eps_wrong * m1 + eps_wrong**2  # E[(eps - eps_wrong)^2 | x_n]
    head = lambda t, x: g_star  # exact NPR head at this x_n
    v_npr = sd.analytic.npr_variance_fn(sched, head)(n, m, x_n, eps_wrong)
    mu_p = sd.reverse_step(None, sched, n, m, x_n, eps_wrong, var=0.0)
    x0s = _posterior_draws(gm, sched, n, x_n, k3, 100_000)
    x_ms = _x_m_draws(sched, n, m, x_n, x0s, k4, sd.posterior_variance(sched, n, m))
    # the exact conditional variance (SN with the exact mean)
    v_exact = sd.analytic.sn_variance_fn(sched, lambda t, x: m2)(n, m, x_n, m1)
    cov_sn_exact = sd.analytic.sn_covariance(sched, n, m1, m2)
    cov_npr_exact = sd.analytic.npr_covariance(sched, n, m2 - m1**2)
    return {
        "v_npr": (v_npr, jnp.mean((x_ms - mu_p[None, :]) ** 2, 0)),
        "v_exact": v_exact,
        "exact_mean": (cov_npr_exact, cov_sn_exact),
    }


@pytest.mark.parametrize("n,m", CASES[1:])
def test_npr_corrects_an_imperfect_mean(sched, gm, n, m):
    """With a wrong eps_hat (exact + 0.3), NPR-DPM's variance is E[(x_m - mu_p)^2 | x_n]
    (the maximum-likelihood diagonal variance for that mean), larger than Var[x_m | x_n].

    mu_p is the reverse-step mean with the wrong eps_hat (sd.reverse_step with var = 0);
    100k posterior draws, tolerance 3%. (One jitted program for the three pairs.)
    """
    r = _npr_case(sched, gm, jnp.asarray(n), jnp.asarray(m))
    v_npr, mc = r["v_npr"]
    np.testing.assert_allclose(v_npr, mc, rtol=0.03)
    # the exact conditional variance (SN with the exact mean) is smaller: the mean error adds
    assert bool(jnp.all(v_npr > r["v_exact"]))
    # NPR = Var + (E[eps|x] - eps_hat)^2 >= Var: with the exact mean both agree
    np.testing.assert_allclose(*r["exact_mean"], rtol=1e-12)


def test_sn_average_is_analytic_dpm(sched, gm):
    """Averaging SN-DPM's diagonal over x_n and coordinates gives Analytic-DPM's scalar
    kappa_n = (1 - abar)/abar (1 - ms_eps) (because E[eps^2] = 1), and the law of total
    variance E Var[x_0 | x_n] = Var x_0 - Var E[x_0 | x_n]. 20k draws, 4 standard errors."""
    n = 40

    @jax.jit
    def draws(k1, k2):
        alpha, sigma = sched.marginal(n)
        x0 = gm.sample(k1, 20_000)
        x_n = alpha * x0 + sigma * jax.random.normal(k2, x0.shape)
        m1, m2 = jax.vmap(lambda x: gm.eps_moments(alpha, sigma, x))(x_n)
        covs = jax.vmap(lambda a, b: sd.analytic.sn_covariance(sched, n, a, b, clip=False))(m1, m2)
        ms_i = jnp.sum(m1**2, -1) / 2
        # Analytic-DPM's kappa_n from the mean ms_eps (in the program, not op by op)
        kappa = sd.analytic.x0_variance(
            sched, jnp.zeros(N + 1).at[n].set(jnp.mean(ms_i)), clip=False
        )[n]
        return x0, (x_n - sigma * m1) / alpha, jnp.mean(covs, -1), ms_i, kappa

    x0, x0hat, cov_mean, ms_i, kappa = (
        np.asarray(a) for a in draws(jax.random.key(20), jax.random.key(21))
    )
    num = x0.shape[0]
    ab = np.asarray(sched.alpha_bar)
    diff = cov_mean - (1 - ab[n]) / ab[n] * (1 - ms_i)  # mean zero
    assert abs(float(np.mean(cov_mean) - kappa)) < 4 * float(np.std(diff)) / math.sqrt(num)
    total = np.mean(np.var(x0, 0)) - np.mean(np.var(x0hat, 0))
    se = float(np.std(cov_mean)) / math.sqrt(num)
    assert abs(float(np.mean(cov_mean) - total)) < 4 * se + 0.02 * float(total)


def test_sampling_with_diagonal_covariance_is_exact_for_gaussian_data(sched):
    """Anisotropic Gaussian data N(m, diag(0.02, 0.6)): with exact heads every SN-DPM reverse
    kernel is the exact q(x_m | x_n), so K = 5 steps reproduce the data law (20k samples,
    tolerance 5 standard errors of a variance, 4.5%); isotropic Analytic-DPM cannot (its
    error on the small-variance coordinate is > 20%)."""
    mean = np.array([0.4, -0.2])
    cov = np.diag([0.02, 0.6])
    tau = np.asarray(sd.respace(N, 5))

    @jax.jit  # the mixture, draws and both samplers in one program (not op by op)
    def run(sched):
        g = sd.toy.GaussianMixture(jnp.ones(1), mean[None], cov[None])
        eps_fn = sd.toy.discrete_eps_fn(g, sched)
        x_T = jax.random.normal(jax.random.key(30), (20_000, 2))
        keys = jax.random.split(jax.random.key(31), 20_000)
        sn = sd.analytic.sn_variance_fn(sched, sd.toy.discrete_eps2_fn(g, sched))
        xs = jax.vmap(
            lambda k, x: sd.sample_discrete(
                k, sched, eps_fn, x, tau, lam2="ddpm", variances=sn, final_noise=True
            )
        )(keys, x_T)
        ab = sched.alpha_bar
        ms = (1 - ab) * jnp.mean(1 / (ab[:, None] * np.diag(cov)[None] + 1 - ab[:, None]), -1)
        v_iso = sd.analytic.optimal_variances(sched, tau, ms)
        xs_iso = jax.vmap(
            lambda k, x: cast(  # return_trajectory=False: the final sample only
                jax.Array,
                sd.sample_discrete(
                    k, sched, eps_fn, x, tau, lam2="ddpm", variances=v_iso, final_noise=True
                ),
            )
        )(keys, x_T)
        return xs, xs_iso

    xs, xs_iso = (np.asarray(a) for a in run(sched))
    tol = 5 * math.sqrt(2 / 20_000)
    np.testing.assert_allclose(np.var(xs, 0), np.diag(cov), rtol=tol)
    np.testing.assert_allclose(np.mean(xs, 0), mean, atol=5 * math.sqrt(0.6 / 20_000))
    assert abs(float(np.var(xs_iso[:, 0])) / 0.02 - 1) > 0.2


# ------------------------------------------------------------------------ losses
class _Oracle(eqx.Module):
    """(eps_hat, head) from the exact mixture moments, with optional perturbations."""

    gm: sd.toy.GaussianMixture
    sched: sd.DiscreteSchedule
    kind: str = eqx.field(static=True)
    eps_shift: jax.Array
    head_shift: jax.Array

    def __call__(self, t, x):
        n = jnp.round(t * self.sched.num_steps).astype(jnp.int32)
        alpha, sigma = self.sched.marginal(n)
        m1, m2 = self.gm.eps_moments(alpha, sigma, x)
        e = m1 + self.eps_shift
        head = m2 if self.kind == "sn" else m2 - 2 * e * m1 + e**2
        return e, head + self.head_shift


@jax.jit
def _loss_data(gm):
    """The loss tests' 20k examples and keys, in one program (not op by op; shared by both)."""
    return gm.sample(jax.random.key(40), 20_000), jax.random.split(jax.random.key(41), 20_000)


@pytest.mark.parametrize("kind", ["sn", "npr"])
def test_losses_minimised_by_the_conditional_moments(sched, gm, kind):
    """E[loss(head* + delta)] - E[loss(head*)] = r * d * delta^2: the exact conditional moment
    is the minimiser (the cross term has mean zero). 20k examples, common random numbers,
    tolerance 5 standard errors. For NPR the mean is deliberately wrong (shift 0.2)."""
    loss = sd.analytic.sn_dpm_loss if kind == "sn" else sd.analytic.npr_dpm_loss
    x0, keys = _loss_data(gm)
    eps_shift = jnp.asarray(0.0 if kind == "sn" else 0.2)
    r = 0.7

    @jax.jit
    def per_example(delta):
        model = _Oracle(gm, sched, kind, eps_shift, jnp.asarray(delta))
        return jax.vmap(lambda k, x: loss(k, sched, model, x, ratio=r))(keys, x0)

    base = np.asarray(per_example(0.0))
    for delta in (0.3, -0.3):
        diff = np.asarray(per_example(delta)) - base
        se = float(np.std(diff)) / math.sqrt(diff.shape[0])
        assert abs(float(np.mean(diff)) - r * 2 * delta**2) < 5 * se


def test_npr_loss_stops_gradient_into_the_mean(sched):
    """The NPR head term does not train eps_hat: gradients w.r.t. the eps head equal those of
    ||eps - eps_hat||^2 alone; mean_weight = 0 leaves only the head term."""

    class Lin(eqx.Module):
        W: jax.Array
        V: jax.Array

        def __call__(self, t, x):
            return self.W @ x + t, jax.nn.softplus(self.V @ x)

    model = Lin(jnp.eye(2) * 0.5, jnp.ones((2, 2)) * 0.1)
    x0 = jnp.array([0.3, -0.4])

    @jax.jit  # the gradients and losses in one program (not op by op)
    def run(sched, model, x0):
        key = jax.random.key(50)
        g_npr = jax.grad(lambda mdl: sd.analytic.npr_dpm_loss(key, sched, mdl, x0, ratio=3.0))
        g_mse = jax.grad(lambda mdl: sd.analytic.npr_dpm_loss(key, sched, mdl, x0, ratio=0.0))
        losses = (
            sd.analytic.npr_dpm_loss(key, sched, model, x0, mean_weight=0.0),
            sd.analytic.npr_dpm_loss(key, sched, model, x0),
            sd.analytic.npr_dpm_loss(key, sched, model, x0, ratio=0.0),
        )
        # SN: same decomposition, and vmap over examples (jit: this program)
        sn = jax.vmap(lambda k, x: sd.analytic.sn_dpm_loss(k, sched, model, x))
        return (
            g_npr(model),
            g_mse(model),
            losses,
            sn(jax.random.split(key, 4), jnp.tile(x0, (4, 1))),
        )

    g_npr, g_mse, (only_head, full, mse), sn_losses = run(sched, model, x0)
    np.testing.assert_allclose(g_npr.W, g_mse.W, rtol=1e-12)
    assert float(np.abs(g_npr.V).sum()) > 0 and float(np.abs(g_mse.V).sum()) == 0
    assert float(full) == pytest.approx(float(only_head) + float(mse), rel=1e-12)
    chex.assert_shape(sn_losses, (4,))


# ------------------------------------------------------------------------ the bound with it
def test_sn_dpm_chain_beats_analytic_dpm_in_the_bound(sched, gm):
    """SN-DPM as a solver value: its chain (a state-dependent diagonal variance from the exact
    E[eps^2 | x_n] head) plugs into the bound verb, which is finite, and on the mixture at
    K = 10 its mean bound is below DDPM's (300 points, paired, by more than 4 standard errors):
    the exact covariance is the better reverse variance (Bao et al. 2022b)."""
    model = sd.EpsModel(sd.toy.discrete_eps_fn(gm, sched))
    num = 300
    tau = sd.grids.even(N, 10)
    sn = sd.analytic.SNDPM(sd.toy.discrete_eps2_fn(gm, sched)).chain(sched, tau)
    ddpm = sd.DDPM(large_variance=True).chain(sched, tau)

    @eqx.filter_jit  # the test points, keys and both chains' bounds in one program
    def bounds(sn, ddpm):
        x0 = gm.sample(jax.random.key(60), num)
        keys = jax.random.split(jax.random.key(63), num)

        def f(chain):
            g = lambda k, x: sd.variational_bound(k, sched, model, chain, x, levels=None).total
            return jax.vmap(g)(keys, x0)

        return f(sn), f(ddpm)

    b_sn, b_ddpm = (np.asarray(b) for b in bounds(sn, ddpm))
    chex.assert_tree_all_finite(b_sn)
    d = b_ddpm - b_sn
    assert float(np.mean(d)) > 4 * float(np.std(d)) / math.sqrt(num)


def test_errors(sched):
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(ValueError, match="second_moment"):
            sd.analytic.sn_covariance(sched, 3, jnp.zeros(2), jnp.zeros(3))
        with pytest.raises(ValueError, match="ratio"):
            sd.analytic.sn_dpm_loss(
                jax.random.key(0), sched, lambda t, x: (x, x), jnp.zeros(2), ratio=-1.0
            )
        with pytest.raises(ValueError, match="forward"):
            sd.analytic.sn_variance_fn(sched, lambda t, x: x, forward="sde")  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="n"):
            sd.analytic.npr_covariance(sched, N + 3, jnp.zeros(2))
        with pytest.raises(TypeError, match="DiscreteSchedule"):
            sd.analytic.npr_covariance(sched.alpha_bar, 3, jnp.zeros(2))
