"""Divergence estimators, log-likelihood through the PF-ODE, and bits/dim.

The oracle is `scoredyn.toy.GaussianMixture`: with the exact score the PF-ODE transports
p_{t_eps} exactly, so `log_likelihood(x)` must equal `gm.marginal(sde, t_eps).log_prob(x)` up to
the solver tolerance, once the Gaussian prior is replaced by the exact p_T. Run `pytest -s` to see
the measured errors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, gaussian_1comp, mixture_2d, no_runtime_typecheck
from scoredyn._likelihood.likelihood import EXACT_MAX_DIM, _resolve_estimator

VP = ALL_LINEAR_SDES[0]
T_EPS = 1e-5


# ----------------------------------------------------------------------------- divergence
def _sym_matrix(d=5, seed=0):
    a = jax.random.normal(jax.random.key(seed), (d, d))
    return 0.5 * (a + a.T)


def test_divergence_exact_linear_and_nonlinear():
    """div(Ax) = tr A; div of x -> x * |x|^2 in d dims is (d + 2)|x|^2."""
    x = jnp.array([0.3, -1.0, 2.0, 0.5])

    @jax.jit  # one program: eagerly each operation compiles on its own
    def run(x):
        a = jax.random.normal(jax.random.key(0), (4, 4))
        x3 = x.reshape(2, 2)  # any shape: the divergence sums over all entries
        got = sd.divergence(lambda y: y * jnp.sum(y**2), x3)
        return sd.divergence(lambda y: a @ y, x), jnp.trace(a), got, (4 + 2) * jnp.sum(x**2)

    div_a, tr_a, got, want = run(x)
    np.testing.assert_allclose(div_a, tr_a, rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_with_known_variance(probe):
    """Mean of v^T A v is tr A; its variance is 2(|A|_F^2 - sum A_ii^2) (Rademacher) or 2|A|_F^2
    (Gaussian) for symmetric A. K = 20000 probes: mean within 4 SE, variance within 5%."""
    a = np.asarray(_sym_matrix())
    x = jnp.ones(5)
    k = 20000

    @jax.jit  # the probes and the terms in one program (eagerly: op by op)
    def run(x):
        probes = sd.hutchinson_probes(jax.random.key(1), (5,), num_probes=k, probe=probe)
        terms = jax.vmap(lambda v: sd.hutchinson_divergence(lambda y: a @ y, x, v[None]))(probes)
        ten = sd.hutchinson_divergence(lambda y: a @ y, x, probes[:10])  # K probes in one call
        return probes, terms, ten

    probes, terms, ten = run(x)
    assert probes.shape == (k, 5) and probes.dtype == jnp.float64
    terms, trace = np.asarray(terms), float(np.trace(a))
    frob = np.sum(a**2)
    var = 2 * (frob - np.sum(np.diag(a) ** 2)) if probe == "rademacher" else 2 * frob
    se = np.sqrt(var / k)
    print(
        f"\n[hutchinson {probe}] mean err {float(terms.mean() - trace):.4f} "
        f"(SE {float(se):.4f}); var {float(terms.var()):.3f} vs {float(var):.3f}"
    )
    assert abs(float(terms.mean() - trace)) < 4 * float(se)
    np.testing.assert_allclose(terms.var(), var, rtol=0.05)
    # averaging K probes in one call is the mean of the single-probe terms
    np.testing.assert_allclose(ten, terms[:10].mean(), rtol=1e-12)


def test_divergence_bad_input():
    with pytest.raises(ValueError, match="probe"):
        sd.hutchinson_probes(jax.random.key(0), (2,), probe="uniform")
    with pytest.raises(ValueError, match="num_probes"):
        sd.hutchinson_probes(jax.random.key(0), (2,), num_probes=0)
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(ValueError, match="probes"):
            sd.hutchinson_divergence(lambda y: y, jnp.ones(3), jnp.ones((2, 2)))
        with pytest.raises(TypeError, match="fn"):
            sd.divergence("f", jnp.ones(3))  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------------------------------- log-likelihood
@pytest.fixture(scope="module")
def points64():
    return mixture_2d().sample(jax.random.key(7), 6)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_log_likelihood_float64(sde, points64):
    """Exact divergence, Tsit5 with rtol = atol = 1e-8, float64.

    Compared with log p_{t_eps}(x) = gm.marginal(sde, t_eps).log_prob(x) at t_eps = 1e-5 (the
    integral starts at t_eps, so this is the right target; it differs from log p_0 by ~1e-5).
    With the exact p_T in place of the Gaussian prior the error must be below 1e-4 nats; with the
    default Gaussian prior the error is the prior mismatch log N(x_T; 0, sigma_T^2) - log p_T(x_T),
    below 5e-2 nats here (largest for VE, where it is about x_T . m / sigma_max^2).
    """
    gm = mixture_2d()
    score = gm.score_fn(sde)

    @jax.jit  # the solves and the oracle's densities in one program (eagerly: op by op)
    def run(xs):
        solve = lambda x: sd.log_likelihood(  # noqa: E731
            sde, score, x, rtol=1e-8, atol=1e-8, t_eps=T_EPS, return_stats=True
        )
        lp, stats = jax.vmap(solve)(xs)
        target = jax.vmap(gm.marginal(sde, T_EPS).log_prob)(xs)
        exact_prior = jax.vmap(gm.marginal(sde, sde.T).log_prob)(stats["latent"])
        return lp, stats, target, exact_prior, jax.vmap(gm.log_prob)(xs)

    lp, stats, target, exact_prior, log_p0 = run(points64)
    target, delta = np.asarray(target), np.asarray(stats["delta_log_prob"])
    err = float(np.max(np.abs(np.asarray(exact_prior) + delta - target)))
    err_default = float(np.max(np.abs(np.asarray(lp) - target)))
    err_p0 = float(np.max(np.abs(target - np.asarray(log_p0))))
    print(
        f"\n[log_likelihood f64 {type(sde).__name__}] max err {err:.2e} nats (exact prior), "
        f"{err_default:.2e} (default prior); |log p_t_eps - log p_0| = {err_p0:.1e}; "
        f"nfe {np.asarray(stats['nfe']).tolist()}"
    )
    assert lp.dtype == jnp.float64
    assert err < 1e-4
    assert err_default < 5e-2


def test_log_likelihood_float32():
    """float32 end to end (mixture, points, solver at rtol = atol = 1e-5): error below 1e-2 nats."""
    sde = VP
    gm = mixture_2d(jnp.float32)

    @jax.jit  # the draws, solves and oracle densities in one program (eagerly: op by op)
    def run():
        xs = gm.sample(jax.random.key(7), 6)
        exact_prior = gm.marginal(sde, sde.T).log_prob
        solve = lambda x: sd.log_likelihood(  # noqa: E731
            sde, gm.score_fn(sde), x, t_eps=T_EPS, prior_log_prob=exact_prior
        )
        return xs, jax.vmap(solve)(xs), jax.vmap(gm.marginal(sde, T_EPS).log_prob)(xs)

    xs, lp, target = run()
    assert xs.dtype == jnp.float32
    assert lp.dtype == jnp.float32
    err = float(np.max(np.abs(np.asarray(lp) - np.asarray(target))))
    print(f"\n[log_likelihood f32 VP] max err {err:.2e} nats (exact prior)")
    assert err < 1e-2


def test_log_likelihood_hutchinson_unbiased(points64):
    """Hutchinson (Rademacher, 1 probe, held fixed along the path) averaged over 64 keys agrees
    with the exact-divergence value within 4 standard errors."""
    sde = VP
    gm = mixture_2d()
    score = gm.score_fn(sde)
    x = points64[0]

    @jax.jit  # keys, solves and the oracle's density in one program (eagerly: op by op)
    def run(x):
        prior = gm.marginal(sde, sde.T).log_prob
        keys = jax.random.split(jax.random.key(11), 64)
        solve = lambda k: sd.log_likelihood(  # noqa: E731
            sde,
            score,
            x,
            key=k,
            estimator="hutchinson",
            prior_log_prob=prior,
            rtol=1e-6,
            atol=1e-6,
            t_eps=T_EPS,
        )
        return jax.vmap(solve)(keys), gm.marginal(sde, T_EPS).log_prob(x)

    est, exact = run(x)
    est = np.asarray(est)
    se = float(est.std() / math.sqrt(est.shape[0]))
    diff = float(est.mean() - float(exact))
    print(
        f"\n[hutchinson log_likelihood] mean - exact = {diff:.4f}, SE = {se:.4f}, "
        f"per-key std = {float(est.std()):.3f}"
    )
    assert se > 0  # the estimator is genuinely random here (non-diagonal Jacobian)
    assert abs(diff) < 4 * se


@pytest.mark.slow
def test_log_likelihood_grad_is_score():
    """d/dx log p_{t_eps}(x) through the ODE solve equals the exact score of p_{t_eps}."""
    sde = VP
    gm = gaussian_1comp(2)
    x = jnp.array([0.1, 0.7])
    prior = gm.marginal(sde, sde.T).log_prob

    @jax.jit  # the oracle's score in the same program (eagerly: op by op)
    def run(x):
        g = jax.grad(
            lambda y: sd.log_likelihood(
                sde, gm.score_fn(sde), y, rtol=1e-8, atol=1e-8, t_eps=T_EPS, prior_log_prob=prior
            )
        )(x)
        return g, gm.marginal(sde, T_EPS).score(x)

    g, want = run(x)
    print(f"\n[grad log_likelihood] max err {float(jnp.max(jnp.abs(g - want))):.2e}")
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


def test_auto_estimator():
    assert _resolve_estimator("auto", None, 10_000) is True  # exact without a key
    assert _resolve_estimator("auto", jax.random.key(0), EXACT_MAX_DIM) is True
    assert _resolve_estimator("auto", jax.random.key(0), EXACT_MAX_DIM + 1) is False
    assert _resolve_estimator("exact", jax.random.key(0), 10_000) is True


def test_log_likelihood_bad_input():
    gm = mixture_2d()
    score = gm.score_fn(VP)
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="key"):
        sd.log_likelihood(VP, score, x, estimator="hutchinson")
    with pytest.raises(ValueError, match="estimator"):
        sd.log_likelihood(VP, score, x, estimator="trace")
    with pytest.raises(ValueError, match="probe"):
        sd.log_likelihood(
            VP, score, x, key=jax.random.key(0), estimator="hutchinson", probe="sphere"
        )
    with pytest.raises(ValueError, match="num_probes"):
        sd.log_likelihood(VP, score, x, key=jax.random.key(0), estimator="hutchinson", num_probes=0)
    for t_eps in (0.0, 1.0, 3.0):
        with pytest.raises(ValueError, match="t_eps"):
            sd.log_likelihood(VP, score, x, t_eps=t_eps)
    with pytest.raises(ValueError, match="score"):
        sd.log_likelihood(VP, lambda t, y: y[:1], x)
    general = sd.SDE(lambda t, y: -y, lambda t, y: jnp.sqrt(2.0))
    with pytest.raises(TypeError, match="sde"):
        sd.log_likelihood(general, score, x)  # no prior without prior_log_prob
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(TypeError, match="prior_log_prob"):
            sd.log_likelihood(general, score, x, prior_log_prob=1.0)  # pyright: ignore[reportArgumentType]
        with pytest.raises(TypeError, match="solver"):
            sd.log_likelihood(VP, score, x, solver=None)  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------------------------------- bits/dim
def test_bits_per_dim_dequantised_gaussian():
    """N(0.3, 0.25 I) in 2-D on a grid of L = 16 levels (bin width 2/15), 64 dequantisation draws.

    Two independent facts: (1) for a Gaussian the expected dequantised bound is in closed form,
    E_u log N(x + Du) = log N(x) - d D^2 / (24 s^2); (2) the exact discretised mass
    P(bin) = prod_i [Phi((x_i + D/2 - m)/s) - Phi((x_i - D/2 - m)/s)] gives -log2 P / d, which
    the bound exceeds only by the small Jensen gap. The MC mean must match (1) within 4 SE and
    (2) within 4 SE + 0.01 bits.
    """
    levels = 16
    width = 2.0 / (levels - 1)
    m, s2, d = 0.3, 0.25, 2
    gm = gaussian_1comp(d, mean=m, var=s2)
    sde = VP
    x = jnp.array([2, 10]) * width - 1.0  # grid points k * 2/(L - 1) - 1
    sd_ = math.sqrt(s2)

    @jax.jit  # keys, solves and both references in one program (eagerly: op by op)
    def run(x):
        keys = jax.random.split(jax.random.key(5), 64)
        one = lambda k: sd.bits_per_dim(  # noqa: E731
            sde, gm.score_fn(sde), x, key=k, levels=levels, t_eps=T_EPS
        )
        closed = -(gm.log_prob(x) - d * width**2 / (24 * s2) + d * math.log(width)) / (
            d * math.log(2)
        )
        mass = jnp.prod(norm.cdf((x + width / 2 - m) / sd_) - norm.cdf((x - width / 2 - m) / sd_))
        return jax.vmap(one)(keys), closed, -jnp.log2(mass) / d

    bpd, closed, discrete = (np.asarray(v) for v in run(x))
    se = float(bpd.std() / math.sqrt(bpd.shape[0]))
    print(
        f"\n[bits_per_dim L=16] MC mean {float(bpd.mean()):.4f} (SE {se:.4f}); closed-form "
        f"bound {float(closed):.4f}; discretised -log2 P/d {float(discrete):.4f}"
    )
    assert abs(float(bpd.mean() - closed)) < 4 * se
    assert abs(float(bpd.mean() - discrete)) < 4 * se + 0.01


def test_bits_per_dim_bad_input():
    gm = gaussian_1comp(2)
    score = gm.score_fn(VP)
    with pytest.raises(ValueError, match="levels"):
        sd.bits_per_dim(VP, score, jnp.zeros(2), key=jax.random.key(0), levels=1)
    with pytest.raises(ValueError, match="key"):
        sd.bits_per_dim(VP, score, jnp.zeros(2))
    with pytest.raises(ValueError, match="x"):  # 0.01 is not on the 256-level grid
        sd.bits_per_dim(VP, score, jnp.array([0.01, 1.0]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="x"):  # beyond the last level
        sd.bits_per_dim(VP, score, jnp.array([1.0 + 2 / 255, 1.0]), key=jax.random.key(0))


def test_divergence_jit_vmap_grad():
    """divergence and the probes work under jit and vmap; grad of div(Ax * |x|^2) is known."""
    f = lambda y: y * jnp.sum(y**2)

    @jax.jit  # all of it in one program (eagerly, grad's operations compile one by one)
    def run():
        xs = jax.random.normal(jax.random.key(3), (5, 3))
        got = jax.vmap(lambda x: sd.divergence(f, x))(xs)
        g = jax.grad(lambda x: sd.divergence(f, x))(xs[0])
        keys = jax.random.split(jax.random.key(4), 3)
        probes = jax.vmap(lambda k: sd.hutchinson_probes(k, (3,), num_probes=2))(keys)
        return xs, got, g, probes

    xs, got, g, probes = (np.asarray(v) for v in run())
    np.testing.assert_allclose(got, 5 * np.sum(xs**2, -1), rtol=1e-12)
    # grad of (d + 2)|x|^2 is 2 (d + 2) x
    np.testing.assert_allclose(g, 10 * xs[0], rtol=1e-12)
    assert probes.shape == (3, 2, 3)
    assert set(np.unique(np.asarray(probes)).tolist()) <= {-1.0, 1.0}
