"""The Gaussian-mixture oracle against scipy, autodiff, quadrature and Monte Carlo."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, mixture_2d


def _scipy_log_prob(gm, x):
    dens = sum(
        float(w) * stats.multivariate_normal(np.asarray(m), np.asarray(c)).pdf(np.asarray(x))  # pyright: ignore[reportArgumentType]
        for w, m, c in zip(gm.weights, gm.means, gm.covs)
    )
    return np.log(dens)


@given(x=st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_log_prob_matches_scipy(x):
    gm = mixture_2d()
    x = jnp.array(x)
    np.testing.assert_allclose(gm.log_prob(x), _scipy_log_prob(gm, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
@settings(max_examples=8)
@given(u=st.floats(0.01, 1.0), x=st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_score_is_gradient_of_marginal_log_prob(sde, u, x):
    """Closed-form score equals autodiff of the diffused log-density, and the marginal is
    scipy's."""
    gm = mixture_2d()
    t = u * sde.T
    x = jnp.array(x)
    gm_t = gm.marginal(sde, t)
    np.testing.assert_allclose(gm_t.log_prob(x), _scipy_log_prob(gm_t, x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        gm.score_fn(sde)(t, x), jax.grad(gm_t.log_prob)(x), rtol=1e-8, atol=1e-10
    )
    alpha, sigma = sde.marginal(t)
    np.testing.assert_allclose(
        gm.eps_fn(sde)(t, x), -sigma * jax.grad(gm_t.log_prob)(x), rtol=1e-8, atol=1e-10
    )


def test_sample_moments(getkey):
    gm = mixture_2d()
    n = 200_000
    x = gm.sample(getkey(), n)
    chex.assert_shape(x, (n, 2))
    mean = jnp.einsum("k,ki->i", gm.weights, gm.means)
    dev = gm.means - mean[None, :]
    cov = jnp.einsum("k,kij->ij", gm.weights, gm.covs) + jnp.einsum(
        "k,ki,kj->ij", gm.weights, dev, dev
    )
    # standard error of each mean ~ sqrt(var / n) < 3e-3; 5 standard errors
    np.testing.assert_allclose(x.mean(0), mean, atol=1.5e-2)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=2.5e-2)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_marginal_matches_monte_carlo_of_perturb(sde, getkey):
    gm = mixture_2d()
    n, t = 100_000, 0.3 * sde.T
    x0 = gm.sample(getkey(), n)
    xt = jax.vmap(lambda k, x: sd.perturb(k, sde, x, t))(jax.random.split(getkey(), n), x0)
    gm_t = gm.marginal(sde, t)
    mean = jnp.einsum("k,ki->i", gm_t.weights, gm_t.means)
    dev = gm_t.means - mean[None, :]
    cov = jnp.einsum("k,kij->ij", gm_t.weights, gm_t.covs) + jnp.einsum(
        "k,ki,kj->ij", gm_t.weights, dev, dev
    )
    scale = float(jnp.sqrt(jnp.max(jnp.diag(cov))))
    np.testing.assert_allclose(xt.mean(0), mean, atol=5 * scale / np.sqrt(n))
    np.testing.assert_allclose(np.cov(np.asarray(xt).T), cov, atol=0.03 * scale**2)


def test_posterior_moments_match_quadrature_1d():
    """p(x0 | x) for a 1-D mixture, by direct numerical integration of p(x0) N(x; a x0, s^2)."""
    gm = sd.toy.GaussianMixture(
        jnp.array([0.3, 0.7]), jnp.array([[-1.0], [1.5]]), jnp.array([[[0.2]], [[0.5]]])
    )
    a, s, x = 0.6, 0.8, jnp.array([0.4])

    def joint(x0, power):
        prior = 0.3 * stats.norm.pdf(x0, -1.0, np.sqrt(0.2)) + 0.7 * stats.norm.pdf(
            x0, 1.5, np.sqrt(0.5)
        )
        return x0**power * prior * stats.norm.pdf(float(x[0]), a * x0, s)

    z = integrate.quad(joint, -15, 15, args=(0,), epsabs=1e-14)[0]
    m1 = integrate.quad(joint, -15, 15, args=(1,), epsabs=1e-14)[0] / z
    m2 = integrate.quad(joint, -15, 15, args=(2,), epsabs=1e-14)[0] / z
    mean, cov = gm.posterior_moments(a, s, x)
    np.testing.assert_allclose(mean[0], m1, rtol=1e-8)
    np.testing.assert_allclose(cov[0, 0], m2 - m1**2, rtol=1e-7)
    e1, e2 = gm.eps_moments(a, s, x)
    np.testing.assert_allclose(e1[0], (x[0] - a * m1) / s, rtol=1e-8)
    np.testing.assert_allclose(e2[0], (x[0] ** 2 - 2 * a * x[0] * m1 + a**2 * m2) / s**2, rtol=1e-7)


@given(u=st.floats(0.05, 0.95))
def test_tweedie_posterior_mean(u):
    """E[x0 | x] = (x + sigma^2 grad log p(x)) / alpha (Tweedie) in 2-D with full covariances."""
    gm = mixture_2d()
    sde = sd.VPSDE()
    alpha, sigma = sde.marginal(u)
    x = jnp.array([0.2, -0.4])
    mean, _ = gm.posterior_moments(alpha, sigma, x)
    grad = jax.grad(lambda y: gm.log_prob_at(alpha, sigma, y))(x)
    np.testing.assert_allclose(mean, (x + sigma**2 * grad) / alpha, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, 0.6]), "sum to one"),
        (dict(weights=[-0.5, 1.5]), "non-negative"),
        (dict(covs=[[[1.0, 0.0], [0.0, -1.0]], [[1.0, 0.0], [0.0, 1.0]]]), "positive definite"),
        (dict(covs=[[[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]), "symmetric"),
        (dict(means=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), "covs"),
        (dict(weights=[[0.5, 0.5]]), "weights"),
    ],
)
def test_bad_mixture_raises(kwargs, match):
    args = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1.0, 1.0]], covs=[np.eye(2), np.eye(2)])
    args = {k: np.asarray(v) for k, v in (args | kwargs).items()}
    with pytest.raises(ValueError, match=match):
        sd.toy.GaussianMixture(**args)


def test_bad_point_raises():
    gm = mixture_2d()
    with pytest.raises(ValueError, match="x"):
        gm.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="t"):
        gm.marginal(sd.VPSDE(), 2.0)


# (jit, vmap and grad of the mixture, built from traced parameters, and of its score, in
# float32 and float64: the cases toy.GaussianMixture and toy.MixtureScore of
# tests/test_transforms.py)
