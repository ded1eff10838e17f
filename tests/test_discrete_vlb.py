"""The variational bound: Gaussian KL, discretised decoder, closed forms, bounds on the NLL."""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy import integrate, stats

import scoredyn as sd
from helpers import built_on_first_use, compiled_o3, gaussian_1comp, mixture_2d, old_bound

_gm = built_on_first_use(mixture_2d)
_sched = built_on_first_use(lambda: sd.DiscreteSchedule.linear(1000))


# ---------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "mq,vq,mp,vp", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.0, 0.3)]
)
def test_gaussian_kl_matches_quadrature(mq, vq, mp, vp):
    """KL(N(mq, vq) || N(mp, vp)) vs numerical integration of q log(q/p) (scipy.quad)."""
    norm, sq, sp = stats.norm, np.sqrt(vq), np.sqrt(vp)
    ref, _ = integrate.quad(
        lambda x: norm.pdf(x, mq, sq) * (norm.logpdf(x, mq, sq) - norm.logpdf(x, mp, sp)),
        -np.inf,
        np.inf,
    )
    np.testing.assert_allclose(sd.gaussian_kl(mq, vq, mp, vp), ref, rtol=1e-7, atol=1e-12)
    # a scalar variance is isotropic: the sum runs over the broadcast shape
    np.testing.assert_allclose(
        sd.gaussian_kl(jnp.full(3, mq), vq, mp, vp), 3 * ref, rtol=1e-7, atol=1e-12
    )
    assert float(sd.gaussian_kl(0.0, 0.0, 0.0, 1.0)) == np.inf


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_discretized_decoder_is_a_distribution(levels):
    """Probabilities over the L grid points sum to one and match Phi differences (scipy)."""
    grid = -1 + 2 * np.arange(levels) / (levels - 1)
    h = 1 / (levels - 1)
    # one compiled program per `levels` (mean and variance traced), not one per operation
    log_probs = jax.jit(
        jax.vmap(
            lambda x, mean, var: sd.discretized_gaussian_log_likelihood(x, mean, var, levels),
            (0, None, None),
        )
    )
    for mean, var in [(0.1, 0.3), (-0.97, 1e-3), (0.5, 4.0)]:
        lp = log_probs(jnp.asarray(grid), mean, var)
        s = np.sqrt(var)
        hi = np.where(grid > 1 - h / 2, np.inf, (grid + h - mean) / s)
        lo = np.where(grid < -1 + h / 2, -np.inf, (grid - h - mean) / s)
        ref = stats.norm.cdf(hi) - stats.norm.cdf(lo)
        np.testing.assert_allclose(np.exp(lp), ref, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(np.sum(np.exp(lp)), 1.0, rtol=1e-12)


@jax.jit  # one program for the four cases (the values traced)
def _log_likelihood_256(x, mean, var):
    return sd.discretized_gaussian_log_likelihood(x, mean, var, 256)


def test_discretized_decoder_tails_are_exact():
    """Far in the tails log P stays finite and exact (reference: mpmath at 50 digits)."""
    mpmath.mp.dps = 50
    h = 1 / 255  # 256 levels (`_log_likelihood_256`)
    for x, mean, var in [
        (0.2, -0.6, 1e-4),
        (-0.2, 0.6, 1e-4),
        (0.2, 0.2, 1e-12),
        (1.0, -1.0, 1e-3),
    ]:
        got = float(_log_likelihood_256(jnp.array([x]), jnp.array([mean]), var))
        s = mpmath.sqrt(var)
        Phi = lambda z: mpmath.ncdf(z)
        hi = mpmath.inf if x > 1 - h / 2 else (mpmath.mpf(x) + h - mean) / s
        lo = -mpmath.inf if x < -1 + h / 2 else (mpmath.mpf(x) - h - mean) / s
        # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): evaluate in the tail where it is not 1 - 1
        p = Phi(-lo) - Phi(-hi) if lo > 0 else Phi(hi) - Phi(lo)
        ref = float(mpmath.log(p))
        assert np.isfinite(got)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- closed forms
class _ConstantX0(eqx.Module):
    """A model that always predicts x0_hat = c: eps_hat = (x - alpha_n c) / sigma_n."""

    sched: sd.DiscreteSchedule
    c: jax.Array

    def __call__(self, t, x):
        a, s = self.sched.marginal(jnp.round(t * self.sched.num_steps).astype(jnp.int32))
        return (x - a * self.c) / s


def test_ddpm_kl_terms_are_snr_differences():
    """lam2 = v = beta-tilde: KL term = 1/2 (SNR_m - SNR_n) ||x0 - x0_hat||^2 (Kingma et al.)."""
    x0, c = jnp.array([0.4, -0.3, 0.9]), jnp.array([0.1, 0.2, 0.5])
    tau = sd.respace(1000, 8, "quadratic")
    model = _ConstantX0(_sched(), c)

    @jax.jit
    def run(key):
        vb = partial(old_bound, key, _sched(), model, x0, tau, decoder="gaussian")
        return vb(variances="ddpm_beta"), vb()

    vb, vb2 = run(jax.random.key(0))
    ab = np.asarray(_sched().alpha_bar)[np.asarray(tau)]
    snr = ab[1:] / (1 - ab[1:])  # SNR at tau_1 .. tau_K
    d2 = float(jnp.sum((x0 - c) ** 2))
    np.testing.assert_allclose(vb2.terms[1:], 0.5 * (snr[:-1] - snr[1:]) * d2, rtol=1e-9)
    # decoder: Gaussian NLL with mean c and the decoder variance
    v1 = sd.reverse_variances(_sched(), tau, "ddpm_beta")[0]
    np.testing.assert_allclose(vb.decoder, 0.5 * (3 * np.log(2 * np.pi * v1) + d2 / v1), rtol=1e-10)
    # prior: KL(N(sqrt(abar_N) x0, 1 - abar_N) || N(0, 1)) via the general Gaussian KL
    aN = ab[-1]
    np.testing.assert_allclose(
        vb.prior, sd.gaussian_kl(np.sqrt(aN) * x0, 1 - aN, 0.0, 1.0), rtol=1e-8
    )
    np.testing.assert_allclose(vb.total, vb.prior + vb.kl + vb.decoder, rtol=1e-12)
    np.testing.assert_allclose(vb.bits_per_dim, vb.total / (3 * np.log(2)), rtol=1e-12)


def _expected_bound_gaussian(sched, tau, m, s2, x0):
    """Closed-form E_q[bound] for data N(m, s2 I), exact eps, lam2 = beta-tilde, v = beta."""
    ab = np.asarray(sched.alpha_bar, np.float64)[np.asarray(tau)]
    a, sg2 = np.sqrt(ab), 1 - ab
    Dn = a**2 * s2 + sg2
    # eps_hat - eps = sigma a (x0 - m) / D - (a^2 s2 / D) eps  =>  E (eps_hat - eps)^2, per entry
    e2 = (np.sqrt(sg2)[:, None] * a[:, None] * (x0 - m)[None] / Dn[:, None]) ** 2 + (
        a**2 * s2 / Dn
    )[:, None] ** 2
    diff2 = (sg2 / ab)[:, None] * e2  # E (x0_hat - x0)^2 = (sigma/alpha)^2 E (eps_hat - eps)^2
    b = 1 - ab[1:] / ab[:-1]  # beta_{n|m}, index k-1 for step tau_k -> tau_{k-1}
    bt = (1 - ab[:-1]) / (1 - ab[1:]) * b
    c0 = np.sqrt(ab[:-1]) * b / (1 - ab[1:])
    kl = [
        0.5 * np.sum(np.log(b[k] / bt[k]) + (bt[k] + c0[k] ** 2 * diff2[k + 1]) / b[k] - 1)
        for k in range(1, len(b))
    ]
    dec = 0.5 * np.sum(np.log(2 * np.pi * b[0]) + diff2[1] / b[0])
    prior = 0.5 * np.sum(ab[-1] * x0**2 - ab[-1] - np.log(1 - ab[-1]))
    return prior + np.sum(kl) + dec


@pytest.mark.slow
def test_bound_matches_closed_form_for_gaussian_data():
    """Monte Carlo mean of the bound = its closed form for Gaussian data (eps* linear in x_n)."""
    d, m, s2 = 3, 0.3, 0.25
    g = gaussian_1comp(d, m, s2)
    sched = sd.DiscreteSchedule.linear(1000)
    eps_fn = sd.toy.discrete_eps_fn(g, sched)
    tau = sd.respace(1000, 10)
    x0 = jnp.array([0.9, -0.1, 0.3])
    M = 4000
    f = jax.jit(
        jax.vmap(
            lambda k: (
                old_bound(
                    k, sched, eps_fn, x0, tau, decoder="gaussian", variances="ddpm_beta"
                ).total
            )
        )
    )
    tot = f(jax.random.split(jax.random.key(0), M))
    ref = _expected_bound_gaussian(sched, tau, m, s2, np.asarray(x0))
    se = float(jnp.std(tot)) / np.sqrt(M)
    assert abs(float(tot.mean()) - ref) < 4 * se, (float(tot.mean()), ref, se)
    # and the expected bound is above -log N(x0; m, s2 I), the exact NLL
    assert ref > -float(g.log_prob(x0))


@pytest.fixture(scope="module")
def mixture_bounds():
    """Bound (continuous decoder, exact eps) on M mixture samples, several K, two variances."""
    eps_fn = sd.toy.discrete_eps_fn(_gm(), _sched())
    M = 1200

    @jax.jit  # the draws and their exact NLL: one program (not one per eager operation)
    def data():
        x0 = _gm().sample(jax.random.key(4), M)
        return x0, jax.random.split(jax.random.key(0), M), -jax.vmap(_gm().log_prob)(x0)

    x0, keys, nll = data()

    def bound(tau):  # the variances traced: one program serves beta and beta-tilde
        return jax.jit(
            jax.vmap(
                lambda k, x, v: (
                    old_bound(k, _sched(), eps_fn, x, tau, decoder="gaussian", variances=v).total
                ),
                (0, 0, None),
            )
        )

    out = {}
    for K in (4, 16, 64):
        tau = sd.respace(1000, K)
        v = sd.reverse_variances(_sched(), tau, "ddpm_beta")
        out["ddpm_beta", K] = np.asarray(bound(tau)(keys, x0, v) - nll)  # per-example gap
    # 1,200 chains of 1,000 steps: run-bound, so LLVM at -O1 (compile ~1.4 CPU-s, run ~0.5;
    # at -O0 ~0.7 and ~2.4, at -O3 ~2.2 and ~0.6), compiled once for both variances
    tau = sd.respace(1000, 1000)
    v_beta, v_tilde = (sd.reverse_variances(_sched(), tau, var) for var in ("ddpm_beta", "ddpm"))
    run = compiled_o3(bound(tau), keys, x0, v_beta, level="1")
    out["ddpm_beta", 1000] = np.asarray(run(keys, x0, v_beta) - nll)
    out["ddpm", 1000] = np.asarray(run(keys, x0, v_tilde) - nll)
    return out


@pytest.mark.slow
def test_bound_is_above_the_exact_nll_and_tightens(mixture_bounds):
    """E[bound - (-log p(x0))] >= 0 for every K and variance; it shrinks with K for v = beta."""
    se = lambda a: float(a.std() / np.sqrt(a.size))
    summary = {k: (round(float(g.mean()), 4), round(se(g), 4)) for k, g in mixture_bounds.items()}
    print("\n[vlb] mixture, continuous decoder: (mean gap, s.e.) in nats =", summary)
    for key, gap in mixture_bounds.items():
        assert gap.mean() > -3 * se(gap), key  # never below the exact NLL (within MC error)
    gaps = [mixture_bounds["ddpm_beta", K] for K in (4, 16, 64, 1000)]
    # strictly tighter with K: paired differences (same examples) beyond 3 standard errors
    assert all((a - b).mean() > 3 * se(a - b) for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1].mean() < 0.15
    # DDPM's beta-tilde keeps an O(1) gap on continuous data (its early steps are too narrow)
    assert mixture_bounds["ddpm", 1000].mean() > 0.3


@pytest.mark.slow
def test_discretized_bound_on_grid_data():
    """Grid data, L = 4 levels: E[bound] >= H(w) (the exact discrete NLL), ~= it at K = N."""
    w = jnp.array([0.2, 0.5, 0.3])
    means = jnp.array([[-1.0, 1 / 3], [1 / 3, 1 / 3], [1.0, -1.0]])
    gm = sd.toy.GaussianMixture(w, means, jnp.stack([jnp.eye(2) * 1e-6] * 3))  # ~ point masses
    eps_fn = sd.toy.discrete_eps_fn(gm, _sched())
    M = 600
    comp = jax.random.categorical(jax.random.key(0), jnp.log(w), shape=(M,))
    x0, nll = means[comp], -jnp.log(w[comp])
    keys = jax.random.split(jax.random.key(1), M)
    res = {}
    for K in (64, 1000):
        tau = sd.respace(1000, K)
        vb = jax.jit(jax.vmap(lambda k, x: old_bound(k, _sched(), eps_fn, x, tau, levels=4)))(
            keys, x0
        )
        gap = vb.total - nll
        res[K] = (float(gap.mean()), float(gap.std()) / np.sqrt(M))
        np.testing.assert_allclose(vb.bits_per_dim, vb.total / (2 * np.log(2)), rtol=1e-12)
    print("\n[vlb] grid data L=4, discretised decoder, beta-tilde: (mean gap, s.e.) =", res)
    assert res[64][0] > 3 * res[64][1] and res[1000][0] > -3 * res[1000][1]
    assert res[1000][0] < 0.05 and res[64][0] > res[1000][0]


# ---------------------------------------------------------------------------- plumbing
def test_callable_variances_and_transforms():
    eps_fn = sd.toy.discrete_eps_fn(_gm(), _sched())
    tau = sd.respace(1000, 6)
    var = sd.reverse_variances(_sched(), tau, "ddpm_beta")
    lookup = lambda n, m, x, e: jnp.full_like(x, var[jnp.searchsorted(tau, n) - 1])
    x0 = jnp.array([0.5, -0.5])

    class Scaled(eqx.Module):
        scale: jax.Array

        def __call__(self, t, x):
            return self.scale * eps_fn(t, x)

    @jax.jit
    def run(key, scale):
        f = lambda v: old_bound(
            key, _sched(), Scaled(scale), x0, tau, decoder="gaussian", variances=v
        )
        return (
            f(var),
            f(lookup),
            jax.grad(
                lambda s: (
                    old_bound(
                        key, _sched(), Scaled(s), x0, tau, decoder="gaussian", variances=var
                    ).total
                )
            )(scale),
        )

    a, b, g = run(jax.random.key(3), 1.0)
    np.testing.assert_allclose(a.terms, b.terms, rtol=1e-12)
    assert a.terms.shape == (6,)
    h = 1e-5
    fd = (run(jax.random.key(3), 1.0 + h)[0].total - run(jax.random.key(3), 1.0 - h)[0].total) / (
        2 * h
    )
    np.testing.assert_allclose(g, fd, rtol=1e-4)
    # (the bound under jit and vmap, float32 and float64: tests/test_transforms.py)


def test_float32_bound_finite():
    s32 = sd.DiscreteSchedule.cosine(1000, dtype=jnp.float32)
    gm32 = mixture_2d(jnp.float32)
    eps_fn = sd.toy.discrete_eps_fn(gm32, s32)
    x0 = jnp.array([0.25, -0.5], jnp.float32)
    tau = sd.respace(1000, 1000)
    vb = jax.jit(lambda k: old_bound(k, s32, eps_fn, x0, tau, levels=256))(jax.random.key(0))
    assert vb.total.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in vb)


def test_vlb_validation():
    eps_fn = sd.toy.discrete_eps_fn(_gm(), _sched())
    tau = sd.respace(1000, 5)
    key, x0 = jax.random.key(0), jnp.array([0.2, 0.3])
    with pytest.raises(ValueError, match="decoder"):
        old_bound(key, _sched(), eps_fn, x0, tau, decoder="logistic")
    with pytest.raises(ValueError, match="levels"):
        old_bound(key, _sched(), eps_fn, x0, tau, levels=1)
    with pytest.raises(ValueError, match="x0"):
        old_bound(key, _sched(), eps_fn, jnp.array([2.0, 0.0]), tau)
    with pytest.raises(ValueError, match="variances"):
        old_bound(key, _sched(), eps_fn, x0, tau, variances=jnp.ones(4))
    with pytest.raises(ValueError, match="decoder_var"):
        old_bound(key, _sched(), eps_fn, x0, tau, decoder_var=-1.0)
    with pytest.raises(TypeError, match="eps_fn"):
        old_bound(key, _sched(), lambda t, x: x.astype(jnp.float32), x0, tau)


def test_helpers_jit_vmap_grad():
    # d KL / d mean_p = (mean_p - mean_q) / var_p, summed entries
    g = jax.jit(jax.grad(sd.gaussian_kl, argnums=2))(
        jnp.array([0.1, 0.2]), 0.5, jnp.array([0.3, -0.1]), 2.0
    )
    np.testing.assert_allclose(
        g, (jnp.array([0.3, -0.1]) - jnp.array([0.1, 0.2])) / 2.0, rtol=1e-12
    )
    ll = lambda m: sd.discretized_gaussian_log_likelihood(jnp.array([1 / 3, 1.0]), m, 0.04, 4)
    m0 = jnp.array([0.2, 0.7])
    h = 1e-6

    @jax.jit  # the gradient, the central differences and the far-tail gradient: one program
    def grads(m0):
        fd = jnp.stack([(ll(m0 + h * e) - ll(m0 - h * e)) / (2 * h) for e in jnp.eye(2)])
        far = jax.grad(lambda m: sd.discretized_gaussian_log_likelihood(0.0, m, 1e-6, 256))(0.9)
        return jax.grad(ll)(m0), fd, far

    g, fd, far = grads(m0)
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    # far tails: finite value and finite gradient
    assert bool(jnp.isfinite(far))
    tau = sd.respace(1000, 5)
    v = jax.jit(lambda t: sd.reverse_variances(_sched(), t, "ddpm"))(tau)
    np.testing.assert_allclose(v, sd.reverse_variances(_sched(), tau, "ddpm"), rtol=1e-12)
    pv = jax.vmap(lambda n: sd.posterior_variance(_sched(), n, n - 1))(jnp.arange(1, 6))
    assert pv.shape == (5,) and float(pv[0]) == 0.0 and bool(jnp.all(pv[1:] > 0))
