"""Tests for `scoredyn.reparam`: perturb-and-argmax distributions.

Every probability is checked against something computed independently of the library's rule:
scipy's adaptive quadrature of the defining integral, the softmax (Gumbel), the CDF of the
noise difference (n = 2), Monte Carlo frequencies, the blog's published check value, or an
invariance / limit of the construction.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import integrate, special, stats

import scoredyn as sd
from scoredyn.reparam import _quadrature as quad
from scoredyn.reparam._noise import _log_probs

R = sd.reparam
NAMES = ["gaussian", "gumbel", "logistic", "laplace", "uniform"]
CLASSES = {
    "gaussian": R.Gaussian,
    "gumbel": R.Gumbel,
    "logistic": R.Logistic,
    "laplace": R.Laplace,
    "uniform": R.Uniform,
}
MU4 = np.array([0.3, -1.2, 2.0, 0.5])
# uniform noise needs a width above the score range for every class to be possible
SCALE = {"gaussian": 1.0, "gumbel": 1.0, "logistic": 1.0, "laplace": 1.0, "uniform": 4.0}


def scipy_dist(name: str, scale: float) -> Any:  # a frozen scipy.stats distribution
    if name == "uniform":
        return stats.uniform(loc=-scale / 2, scale=scale)
    base = {
        "gaussian": stats.norm,
        "gumbel": stats.gumbel_r,
        "logistic": stats.logistic,
        "laplace": stats.laplace,
    }[name]
    return base(scale=scale)


def _scalar_pdf_cdf(name: str, scale: float):
    """The density and CDF of `scipy_dist(name, scale)` as plain NumPy / `scipy.special`
    formulas (the ones scipy.stats evaluates), for QUADPACK's integrands: a frozen scipy.stats
    distribution spends ~30 us per call on argument handling, and the integrals here take
    thousands of calls (~4 CPU-s of this file). Checked against the frozen distribution, off
    and on the support, before they are returned."""
    if name == "gaussian":
        c = 1.0 / (scale * math.sqrt(2.0 * math.pi))
        pdf, cdf = lambda e: c * np.exp(-0.5 * (e / scale) ** 2), lambda e: special.ndtr(e / scale)
    elif name == "logistic":
        pdf = lambda e: special.expit(e / scale) * special.expit(-e / scale) / scale  # noqa: E731
        cdf = lambda e: special.expit(e / scale)  # noqa: E731
    elif name == "laplace":
        pdf = lambda e: 0.5 * np.exp(-np.abs(e) / scale) / scale  # noqa: E731
        cdf = lambda e: np.where(e < 0, 0.5 * np.exp(e / scale), 1.0 - 0.5 * np.exp(-e / scale))  # noqa: E731
    elif name == "uniform":
        lo, hi = -scale / 2, scale / 2
        pdf = lambda e: np.where((lo <= e) & (e <= hi), 1.0 / scale, 0.0)  # noqa: E731
        cdf = lambda e: np.clip((e - lo) / scale, 0.0, 1.0)  # noqa: E731
    else:
        dist = scipy_dist(name, scale)
        return dist.pdf, dist.cdf
    return _checked(pdf, cdf, scipy_dist(name, scale), np.linspace(-9.0, 9.0, 37) * scale)


def _checked(pdf, cdf, dist, e):
    """`(pdf, cdf)`, after checking both against the scipy.stats distribution `dist` at `e`."""
    np.testing.assert_allclose(pdf(e), dist.pdf(e), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(cdf(e), dist.cdf(e), rtol=1e-14, atol=1e-300)
    return pdf, cdf


@functools.cache
def scipy_probs(name: str, mu: tuple, scale: float = 1.0) -> np.ndarray:
    """$p_i = \\int p(e) \\prod_{j\\ne i} F(e + \\mu_i - \\mu_j) de$ by scipy's QUADPACK."""
    pdf, cdf = _scalar_pdf_cdf(name, scale)
    m = np.asarray(mu, float)
    out = []
    for i in range(m.size):
        d = m[i] - np.delete(m, i)
        pts = [0.0]
        if name == "laplace":
            pts = sorted({0.0, *(-d).tolist()})
        if name == "uniform":
            lo, hi = -scale / 2, scale / 2
            pts = sorted({p for p in (-d - scale / 2).tolist() + (-d + scale / 2).tolist()})
            pts = [p for p in pts if lo < p < hi]
        else:
            lo, hi = min(pts) - 60.0 * scale, max(pts) + 60.0 * scale

        def f(e, d=d):
            return pdf(e) * np.prod(cdf(e + d))

        kw: dict[str, Any] = {"points": pts} if pts else {}
        out.append(integrate.quad(f, lo, hi, epsabs=0.0, epsrel=1e-13, limit=2000, **kw)[0])
    return np.asarray(out)


def f64(x):
    return jnp.asarray(x, jnp.float64)


def rkey(seed: int):
    """A fixed key. The RBG generator compiles in ~0.1 s per sample shape, against ~0.3-1 s for
    threefry, which matters on the 2-core CI machine; the statistics are the same."""
    return jax.random.key(seed, impl="rbg")


def probs(name, mu, scale=None, method="auto", num_nodes=None):
    """p through the public API (eager calls share one compiled kernel per shape)."""
    scale = SCALE[name] if scale is None else scale
    return CLASSES[name](scale).argmax_probs(jnp.asarray(mu), method=method, num_nodes=num_nodes)


def log_probs(name, mu, scale=None, method="auto"):
    scale = SCALE[name] if scale is None else scale
    return CLASSES[name](scale).argmax_log_probs(jnp.asarray(mu), method=method)


def raw_quadrature(name, mu, scale=1.0, num_nodes=None):
    """The unnormalised quadrature values of log p_i for one row."""
    mu = jnp.asarray(mu)
    return _log_probs(CLASSES[name](scale), mu[None, :], "quadrature", num_nodes)[1][0]


# --------------------------------------------------------------------------- reference values


def test_blog_check_value():
    """mu = (0.3, -1.2, 2.0, 0.5), N(0, 1) noise: p ≈ (0.0891, 0.0046, 0.7844, 0.1219)."""
    p = np.asarray(probs("gaussian", f64(MU4)))
    ref = scipy_probs("gaussian", tuple(MU4))
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-13)
    # the 4-digit check value; its first entry, 0.0891, is the K = 20000 midpoint-rule value
    # (0.089146) rounded; the integral is 0.089162 (QUADPACK above), so allow 1e-4
    np.testing.assert_allclose(p, [0.0891, 0.0046, 0.7844, 0.1219], rtol=0, atol=1e-4)
    pm = R.PerturbMax(f64(MU4), R.Gaussian())
    np.testing.assert_allclose(np.asarray(pm.probs), ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["gaussian", "logistic", "laplace", "uniform"])
def test_quadrature_matches_scipy(name):
    """The default rule (uniform: the exact piecewise rule) against QUADPACK, float64."""
    rng = np.random.default_rng(0)
    rows = np.stack([MU4, rng.normal(0, 1.5, 4), np.array([0.0, 0.0, 0.5, -0.5])])
    s = SCALE[name]
    for r in rows:
        p = np.asarray(probs(name, f64(r), s, method="quadrature"))
        np.testing.assert_allclose(p, scipy_probs(name, tuple(r), s), rtol=0, atol=1e-12)
    # the unnormalised quadrature rows already sum to one
    raw = np.exp(np.asarray(raw_quadrature(name, f64(MU4), s)))
    assert abs(raw.sum() - 1.0) < 1e-12


def test_gumbel_quadrature_is_softmax_float64():
    """Gumbel noise: the quadrature (forced, unnormalised) equals softmax to 1e-10."""
    rows = [MU4, np.array([0.0, -30.0, 5.0, 12.0]), np.array([1e-3, 0.0, -1e-3, 0.0])]
    for row in rows:
        raw = raw_quadrature("gumbel", f64(row), 0.7)
        exact = jax.nn.log_softmax(f64(row) / 0.7)
        # log space: relative accuracy also for p ~ e^-60
        np.testing.assert_allclose(np.asarray(raw), np.asarray(exact), rtol=0, atol=1e-10)
        p = probs("gumbel", f64(row), 0.7, method="quadrature")
        np.testing.assert_allclose(np.asarray(p), np.asarray(jnp.exp(exact)), rtol=0, atol=1e-12)


def test_gumbel_quadrature_is_softmax_float32():
    mu = jnp.asarray(MU4, jnp.float32)
    # both float32 rules in one compiled program (nothing else in the file runs in float32)
    raw, p32 = jax.jit(lambda m: (raw_quadrature("gumbel", m, 1.0), probs("gaussian", m, 1.0)))(mu)
    assert raw.dtype == jnp.float32
    exact = jax.nn.softmax(f64(MU4))
    np.testing.assert_allclose(np.exp(np.asarray(raw, np.float64)), exact, rtol=0, atol=1e-6)
    # float32 Gaussian check value against float64 QUADPACK
    assert p32.dtype == jnp.float32
    np.testing.assert_allclose(p32, scipy_probs("gaussian", tuple(MU4)), rtol=0, atol=1e-6)


def test_midpoint_baseline_published_error():
    """The blog's quantile-midpoint rule at K = 20000: error ~2e-5, rows short by ~5e-5."""
    mu = f64(MU4)
    noise = R.Gumbel()
    raw = jax.jit(lambda m: quad.midpoint_log_integrals(noise.log_cdf, noise.quantile, m, 20000))(
        mu
    )
    p = np.exp(np.asarray(raw))
    err = np.max(np.abs(p - np.asarray(jax.nn.softmax(mu))))
    assert 1e-5 < err < 4e-5
    assert 2e-5 < 1.0 - p.sum() < 1e-4
    # ... while the default rule with 64 nodes is at rounding level
    ours = np.exp(np.asarray(raw_quadrature("gumbel", mu, 1.0)))
    assert np.max(np.abs(ours - np.asarray(jax.nn.softmax(mu)))) < 1e-13
    # the midpoint method is reachable from the public API, normalised
    pm = R.PerturbMax(mu, noise, method="midpoint", num_nodes=20000)
    np.testing.assert_allclose(pm.probs.sum(), 1.0, atol=1e-14)


# --------------------------------------------------------------------------- n = 2


D2 = np.linspace(-7.0, 7.0, 9)


def two_class_rows(dtype=jnp.float64):
    return jnp.stack([jnp.asarray(D2, dtype), jnp.zeros(D2.shape, dtype)], axis=-1)


@pytest.mark.parametrize("method", ["auto", "quadrature"])
def test_two_classes_gaussian_is_probit(method):
    s = 0.8
    p = probs("gaussian", two_class_rows(), s, method=method)[:, 0]
    np.testing.assert_allclose(p, special.ndtr(D2 / (math.sqrt(2.0) * s)), rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["auto", "quadrature"])
def test_two_classes_gumbel_is_sigmoid(method):
    s = 0.7
    p = probs("gumbel", two_class_rows(), s, method=method)[:, 0]
    np.testing.assert_allclose(p, special.expit(D2 / s), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["logistic", "laplace", "uniform"])
def test_two_classes_difference_cdf(name):
    """p_1 = P[eps_2 - eps_1 <= mu_1 - mu_2] in closed form, against QUADPACK.

    (The quadrature for these families is checked against QUADPACK at n = 4 above.)
    """
    s = 1.3
    p = np.asarray(probs(name, two_class_rows(), s)[:, 0])
    ref = np.array([scipy_probs(name, (d, 0.0), s)[0] for d in D2])
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-12)


def test_logistic_difference_is_not_logistic():
    """The difference of two logistics is not logistic: no sigmoid matches its CDF."""
    s = 1.0
    p = np.asarray(probs("logistic", two_class_rows(), s)[:, 0])
    # best logistic fit by variance matching has scale sqrt(2)
    assert np.max(np.abs(p - special.expit(D2 / math.sqrt(2.0)))) > 5e-3
    assert np.max(np.abs(p - special.expit(D2))) > 5e-3


@pytest.mark.parametrize("name", NAMES)
def test_log_diff_cdf_tails(name):
    """log P[eps_2 - eps_1 <= x] stays accurate in the far tail (no underflow to -inf)."""
    noise = CLASSES[name](1.0)
    x = f64([-40.0, -8.0, -1e-6, 0.0, 1e-6, 8.0])
    got = np.asarray(noise.log_diff_cdf(x))
    if name == "gaussian":
        ref = special.log_ndtr(np.asarray(x) / math.sqrt(2.0))
    elif name == "gumbel":
        ref = -np.logaddexp(0.0, -np.asarray(x))
    elif name == "laplace":  # density (1 + |y|) e^{-|y|} / 4: integrate it directly
        dens = lambda y: (1 + abs(y)) * np.exp(-abs(y)) / 4  # noqa: E731
        kw: dict[str, Any] = dict(epsabs=0.0, epsrel=1e-13, limit=200)
        ref = [
            np.log(integrate.quad(dens, v - 80.0, v, **kw)[0])
            if v < 0
            else np.log1p(-integrate.quad(dens, v, v + 80.0, **kw)[0])
            for v in np.asarray(x)
        ]
    elif name == "uniform":
        tri = stats.triang(c=0.5, loc=-1.0, scale=2.0)
        ref = np.log(np.maximum(tri.cdf(np.asarray(x)), 1e-300))
        ref[np.asarray(x) <= -1.0] = -np.inf
    else:  # logistic: the exact CDF of the difference, in numpy at moderate x
        ref = []
        pdf, cdf = _scalar_pdf_cdf("logistic", 1.0)  # scipy.stats.logistic's formulas
        for v in np.asarray(x):
            val = integrate.quad(lambda e: pdf(e) * cdf(e + v), -80, 80, epsrel=1e-13)[0]
            ref.append(np.log(val))
        ref[0] = np.nan  # checked below against the asymptotic form instead
    ref = np.asarray(ref, float)
    ok = np.isfinite(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-11, atol=1e-13)
    if name == "logistic":  # q(x) ~ x e^{-x} for large x: log q = -40 + log(39 + e^-40) - ...
        a = math.exp(-40.0)
        exact = -40.0 + math.log(40.0 - 1.0 + a) - 2.0 * math.log1p(-a)
        assert abs(got[0] - exact) < 1e-12


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("name", NAMES)
def test_monte_carlo_frequencies(name):
    """Frequencies of argmax(mu + eps) over 4e5 draws match probs within 4 standard errors."""
    n_draws = 400_000
    s = SCALE[name]
    pm = R.PerturbMax(f64(MU4), CLASSES[name](s))
    draws = jax.jit(lambda k: pm.sample(k, (n_draws,)))(rkey(7))
    assert draws.shape == (n_draws,)
    freq = np.bincount(np.asarray(draws), minlength=4) / n_draws
    p = np.asarray(pm.probs)
    se = np.sqrt(p * (1 - p) / n_draws)
    assert np.all(np.abs(freq - p) <= 4 * se + 1e-12), (freq, p, se)


# --------------------------------------------------------------------------- invariances

scores = st.lists(
    st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False), min_size=4, max_size=4
)


@pytest.mark.parametrize("name", NAMES)
@given(mu=scores, c=st.floats(-50.0, 50.0), s=st.floats(0.2, 5.0))
def test_invariances(name, mu, c, s):
    """Shift invariance, the scale relation, monotonicity and normalisation."""
    mu = f64(mu)
    fn = functools.partial(probs, name)
    base = SCALE[name]
    p = np.asarray(fn(mu, base))
    assert np.all(p >= 0) and abs(p.sum() - 1.0) < 1e-12
    # shift invariance p(mu + c) = p(mu)
    np.testing.assert_allclose(fn(mu + c, base), p, rtol=0, atol=1e-11)
    # location-scale: p(mu; s) = p(mu / s; 1)
    np.testing.assert_allclose(fn(mu, base * s), fn(mu / s, base), rtol=0, atol=1e-11)
    # monotone: mu_i > mu_j implies p_i >= p_j
    m = np.asarray(mu)
    gt = m[:, None] > m[None, :]
    assert np.all((p[:, None] >= p[None, :] - 1e-13)[gt])


@pytest.mark.parametrize("name", NAMES)
def test_equal_scores_uniform_and_large_gap_one_hot(name):
    fn = functools.partial(probs, name)
    s = SCALE[name]
    np.testing.assert_allclose(fn(f64([1.7, 1.7, 1.7, 1.7]), s), 0.25, rtol=0, atol=1e-13)
    big = f64([0.0, 80.0, 1.0, -3.0])
    np.testing.assert_allclose(fn(big, s), [0.0, 1.0, 0.0, 0.0], rtol=0, atol=1e-13)
    # log space keeps the tiny probabilities finite and ordered
    lp = np.asarray(log_probs(name, big, s))
    if name == "uniform":
        assert np.all(np.isneginf(lp[[0, 2, 3]])) and lp[1] == 0.0
    else:
        assert np.all(np.isfinite(lp)) and lp[2] > lp[0] > lp[3] and lp[0] < -50


def test_large_gaps_log_space_gumbel_and_gaussian():
    """Huge gaps: log p matches log-softmax (Gumbel) and log-probit (Gaussian, n = 2)."""
    mu = f64([0.0, -400.0, 3.0, 250.0])
    lp = log_probs("gumbel", mu, 1.0, method="quadrature")
    np.testing.assert_allclose(lp, jax.nn.log_softmax(mu), rtol=1e-12, atol=1e-10)
    # Gaussian, n = 2, gaps up to 35 sigma (p down to e^-600), same compiled rule as above
    rows = 5.0 * two_class_rows()
    lp2 = np.asarray(log_probs("gaussian", rows, 1.0, method="quadrature"))[:, 0]
    ref = special.log_ndtr(5.0 * D2 / math.sqrt(2.0))
    np.testing.assert_allclose(lp2, ref, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "name,method", [("gaussian", "auto"), ("laplace", "auto"), ("uniform", "auto")]
)
def test_gradients_match_finite_differences(name, method):
    """d/d(mu, scale) of sum_i w_i log p_i against central differences (float64).

    Gaussian and Laplace take the quadrature path (Laplace with its kinks), uniform the exact
    piecewise rule.
    """
    s0 = SCALE[name]
    w = f64([0.3, -1.1, 0.7, 0.4])
    mu0 = f64([0.3, -0.4, 1.1, 0.5])
    cls = CLASSES[name]

    def objective(mu, s):
        return jnp.sum(w * cls(s).argmax_log_probs(mu, method=method))

    grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
    g_mu, g_s = grad(mu0, s0)
    h = 1e-5
    e = np.eye(4) * h
    fd = [(objective(mu0 + e[k], s0) - objective(mu0 - e[k], s0)) / (2 * h) for k in range(4)]
    np.testing.assert_allclose(g_mu, fd, rtol=1e-6, atol=1e-8)
    fd_s = (objective(mu0, s0 + h) - objective(mu0, s0 - h)) / (2 * h)
    np.testing.assert_allclose(g_s, fd_s, rtol=1e-6, atol=1e-8)
    assert abs(float(jnp.sum(g_mu))) < 1e-10  # shift invariance: gradient sums to zero
    # the same compiled gradient stays finite for huge score gaps
    g_big = grad(f64([0.0, 300.0, 1.0, -40.0]), s0)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in g_big)


def test_gradient_finite_for_huge_gaps_float32():
    """Gumbel quadrature in float32, where exp(-x) overflows in the left tail."""
    mu = jnp.asarray([0.0, 300.0, 1.0, -40.0], jnp.float32)

    def first(m):
        return R.Gumbel().argmax_probs(m, method="quadrature")[0]

    g = jax.grad(first)(mu)
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
    lp = log_probs("gumbel", mu, 1.0, method="quadrature")
    np.testing.assert_allclose(lp, jax.nn.log_softmax(mu), rtol=1e-6, atol=1e-4)


# --------------------------------------------------------------------------- transforms


def test_jit_vmap_batch_shapes():
    """A (2, 3) batch of 4-class rows: shapes, log_prob broadcasting, and the batched
    distribution equal to a vmap over its rows. Everything is computed in one jitted program
    (op by op, each eager op on these shapes compiled on its own)."""
    mu = jax.random.normal(rkey(0), (2, 3, 4), jnp.float64)
    pm = R.PerturbMax(mu, R.Logistic(0.5))
    assert pm.batch_shape == (2, 3) and pm.num_classes == 4
    idx = jnp.array([[0, 3, 4]])

    @jax.jit
    def run(mu):
        pm = R.PerturbMax(mu, R.Logistic(0.5))
        return dict(
            p=pm.probs,
            # vmap over rows of the batched distribution's rule
            pv=jax.vmap(jax.vmap(lambda m: R.PerturbMax(m, R.Logistic(0.5)).probs))(mu),
            lp=pm.log_prob(idx),  # broadcasts indices against the batch; out of range: -inf
            lp_neg=pm.log_prob(-1),
            prob2=pm.prob(jnp.array(2)),
            sample=pm.sample(rkey(1), (5,)),
            relaxed=pm.relaxed_sample(rkey(2), 0.5, (5,)),
            st=pm.straight_through_sample(rkey(3), 0.5, (5,)),
            entropy=pm.entropy(),
            mode=pm.mode(),
        )

    out = {k: np.asarray(v) for k, v in run(mu).items()}
    p = out["p"]
    assert p.shape == (2, 3, 4)
    np.testing.assert_allclose(out["pv"], p, rtol=0, atol=1e-14)
    lp = out["lp"]
    assert lp.shape == (2, 3)
    np.testing.assert_allclose(lp[:, :2], np.log(p[:, [0, 1], [0, 3]]), rtol=0, atol=1e-13)
    assert np.all(np.isneginf(lp[:, 2]))
    assert out["lp_neg"][0, 0] == -np.inf
    np.testing.assert_allclose(out["prob2"], p[..., 2], rtol=0, atol=1e-15)
    assert out["sample"].shape == (5, 2, 3)
    assert out["relaxed"].shape == (5, 2, 3, 4)
    assert out["st"].shape == (5, 2, 3, 4)
    assert out["entropy"].shape == (2, 3)
    np.testing.assert_array_equal(out["mode"], np.argmax(np.asarray(mu), -1))


def test_dtypes_follow_mu(getkey):
    """float32 scores give float32 outputs (traced abstractly: no compilation needed)."""
    mu = jnp.asarray(MU4, jnp.float32)
    key = getkey()
    for name in NAMES:
        pm = R.PerturbMax(mu, CLASSES[name](SCALE[name]))
        for fn in (
            lambda pm: pm.probs,
            lambda pm: pm.log_prob(1),
            lambda pm: pm.entropy(),
            lambda pm: pm.relaxed_sample(key, 0.3),
            lambda pm: pm.straight_through_sample(key, 0.3),
        ):
            assert jax.eval_shape(fn, pm).dtype == jnp.float32, name
        assert jnp.issubdtype(jax.eval_shape(lambda pm: pm.sample(key, (3,)), pm).dtype, int)


def test_n_equals_one():
    pm = R.PerturbMax(f64([[2.5], [-1.0]]), R.Laplace())
    np.testing.assert_array_equal(pm.probs, [[1.0], [1.0]])
    assert np.all(np.asarray(pm.sample(rkey(0), (3,))) == 0)


# --------------------------------------------------------------------------- relaxed / ST


@pytest.mark.parametrize("name", ["gumbel", "gaussian"])
def test_straight_through_value_and_gradient(name):
    key = rkey(11)
    mu = f64(MU4)
    noise = CLASSES[name](1.0)
    tau = 0.7

    def st_fn(m):
        return R.PerturbMax(m, noise).straight_through_sample(key, tau, (3,))

    def relaxed_fn(m):
        return R.PerturbMax(m, noise).relaxed_sample(key, tau, (3,))

    hard = st_fn(mu)
    onehot = jax.nn.one_hot(R.PerturbMax(mu, noise).sample(key, (3,)), 4, dtype=jnp.float64)
    np.testing.assert_array_equal(hard, onehot)
    j_st = jax.jit(jax.jacobian(st_fn))(mu)
    j_rel = jax.jit(jax.jacobian(relaxed_fn))(mu)
    np.testing.assert_allclose(j_st, j_rel, rtol=0, atol=1e-14)
    assert float(jnp.max(jnp.abs(j_rel))) > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", NAMES)
def test_relaxed_sample_converges_to_one_hot(name):
    """1 - max_i y_i <= (n - 1) exp(-g / tau), g the top-two gap of mu + eps; -> 0 as tau -> 0."""
    n_s = 256
    key = rkey(12)
    noise = CLASSES[name](SCALE[name])
    pm = R.PerturbMax(f64(MU4), noise)
    z = f64(MU4)[None, :] + noise.sample(key, (n_s, 4), jnp.float64)  # the sampler's draw
    top2 = jnp.sort(z, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    onehot = jax.nn.one_hot(pm.sample(key, (n_s,)), 4, dtype=jnp.float64)
    prev = None
    for tau in [1.0, 0.1, 0.01, 0.001]:
        y = pm.relaxed_sample(key, tau, (n_s,))
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-12)
        dist = jnp.max(jnp.abs(y - onehot), axis=-1)
        bound = 3.0 * jnp.exp(-gap / tau)
        assert bool(jnp.all(dist <= bound + 1e-12))
        mean = float(jnp.mean(dist))
        assert prev is None or mean < prev
        prev = mean
    assert prev < 0.02


# --------------------------------------------------------------------------- entropy


def test_entropy():
    eq = R.PerturbMax(f64([0.4, 0.4, 0.4, 0.4]), R.Gaussian())
    assert abs(float(eq.entropy()) - math.log(4.0)) < 1e-13
    mu = f64(MU4)
    h_gumbel = R.PerturbMax(mu, R.Gumbel()).entropy()
    assert abs(float(h_gumbel) - stats.entropy(special.softmax(MU4))) < 1e-13
    h_gauss = R.PerturbMax(mu, R.Gaussian()).entropy()
    assert abs(float(h_gauss) - stats.entropy(scipy_probs("gaussian", tuple(MU4)))) < 1e-12
    # uniform noise with exact zeros: 0 log 0 = 0
    h_unif = R.PerturbMax(f64([0.0, 5.0, 4.5]), R.Uniform(1.0)).entropy()
    assert abs(float(h_unif) - stats.entropy([0.0, 7 / 8, 1 / 8])) < 1e-13
    assert float(R.PerturbMax(f64([0.0, 90.0]), R.Logistic()).entropy()) < 1e-30


# --------------------------------------------------------------------------- noise families


@pytest.mark.parametrize("name", NAMES)
def test_noise_functions_match_scipy(name):
    s = 1.7
    noise = CLASSES[name](s)
    ref = scipy_dist(name, s)
    x = f64(np.linspace(-0.8, 0.8, 9) if name == "uniform" else np.linspace(-6, 6, 13))
    xn = np.asarray(x)
    u = f64([1e-6, 0.1, 0.25, 0.5, 0.75, 0.9, 1 - 1e-6])
    # one compiled program for the five functions (eagerly, each op compiles on its own)
    lpdf, cdf, lcdf, q, icdf = jax.jit(
        lambda x, u: (
            (noise.log_pdf(x), noise.cdf(x), noise.log_cdf(x), noise.quantile(u)) + (noise.icdf(u),)
        )
    )(x, u)
    np.testing.assert_allclose(lpdf, ref.logpdf(xn), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cdf, ref.cdf(xn), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lcdf, ref.logcdf(xn), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(q, ref.ppf(np.asarray(u)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(icdf, q, rtol=0, atol=0)
    # sampling: Kolmogorov–Smirnov against the CDF (fixed key, 1024 draws)
    xs = np.asarray(noise.sample(rkey(13), (256, 4), jnp.float64)).reshape(-1)
    assert stats.kstest(xs, ref.cdf).pvalue > 1e-3
    if name != "uniform":  # deep left tail stays finite in log space
        assert np.isfinite(float(noise.log_cdf(f64(-25.0 * s))))


def test_gaussian_log_cdf_deep_tail():
    got = float(R.Gaussian().log_cdf(f64(-30.0)))
    assert abs(got / stats.norm.logcdf(-30.0) - 1.0) < 1e-12


class HypSecant(R.AbstractNoise):
    """A user-defined family (scipy's hypsecant): p(x) = sech(x) / pi."""

    def sample(self, key, shape=(), dtype=None):
        u = jax.random.uniform(key, shape, jnp.float64 if dtype is None else dtype)
        return self.quantile(u)

    def log_pdf(self, x):
        x = jnp.asarray(x)
        return -jnp.logaddexp(x, -x) + math.log(2.0 / math.pi)

    def cdf(self, x):
        return 2.0 / math.pi * jnp.arctan(jnp.exp(x))

    def quantile(self, u):
        return jnp.log(jnp.tan(0.5 * math.pi * jnp.asarray(u)))


def test_user_defined_family():
    noise = HypSecant()
    mu = f64(MU4)
    p = noise.argmax_probs(mu)
    # scipy's hypsecant density and CDF as formulas for QUADPACK's thousands of scalar calls
    # (see _scalar_pdf_cdf), checked against scipy.stats.hypsecant first
    pdf, cdf = _checked(
        lambda e: 1.0 / (math.pi * np.cosh(e)),
        lambda e: 2.0 / math.pi * np.arctan(np.exp(e)),
        stats.hypsecant,
        np.linspace(-30.0, 30.0, 61),
    )
    ref = []
    for i in range(4):
        d = MU4[i] - np.delete(MU4, i)
        f = lambda e, d=d: pdf(e) * np.prod(cdf(e + d))
        ref.append(integrate.quad(f, -80, 80, epsabs=0, epsrel=1e-13, limit=500)[0])
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-12)
    # the generic n = 2 map is the CDF of the difference
    v = float(noise.log_diff_cdf(f64(0.8)))
    f2 = lambda e: pdf(e) * cdf(e + 0.8)
    assert abs(math.exp(v) - integrate.quad(f2, -80, 80, epsrel=1e-13)[0]) < 1e-12
    with pytest.raises(ValueError, match="exact"):
        R.PerturbMax(mu, noise, method="exact")


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    mu = f64(MU4)
    pm = R.PerturbMax(mu, R.Gumbel())
    key = jax.random.key(0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            pm.relaxed_sample(key, bad)
        with pytest.raises(ValueError, match="temperature"):
            pm.straight_through_sample(key, bad)
    with pytest.raises(Exception, match="temperature"):
        jax.block_until_ready(jax.jit(lambda t: pm.relaxed_sample(key, t))(-0.5))
    with pytest.raises(TypeError, match="mu"):
        R.PerturbMax(jnp.array([1, 2, 3]), R.Gaussian())
    with pytest.raises(TypeError, match="mu"):
        R.Gaussian().argmax_probs(jnp.array([True, False]))
    with pytest.raises(ValueError, match="mu"):
        R.PerturbMax(jnp.zeros((3, 0)), R.Gaussian())
    with pytest.raises(TypeError, match="noise"):
        R.PerturbMax(mu, "gaussian")  # pyright: ignore[reportArgumentType]
    for cls in CLASSES.values():
        with pytest.raises(ValueError, match="scale"):
            cls(0.0)
        with pytest.raises(ValueError, match="scale"):
            cls(-2.0)
    with pytest.raises(ValueError, match="method"):
        R.PerturbMax(mu, R.Gaussian(), method="simpson")
    with pytest.raises(ValueError, match="exact"):
        R.PerturbMax(mu, R.Gaussian(), method="exact")
    with pytest.raises(ValueError, match="exact"):
        R.Laplace().argmax_probs(mu, method="exact")
    with pytest.raises(ValueError, match="num_nodes"):
        R.PerturbMax(mu, R.Gaussian(), num_nodes=1)
    with pytest.raises(TypeError, match="integer"):
        pm.log_prob(jnp.array(1.0))
    # exact is fine where a closed form exists
    R.PerturbMax(mu, R.Gumbel(), method="exact")
    R.PerturbMax(mu[:2], R.Gaussian(), method="exact")
