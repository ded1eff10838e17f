"""Linear SDEs: closed forms, the f/g identities by autodiff, stability at both ends."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, no_runtime_typecheck

sde_params = pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)


def _closed_form(sde, t):
    """Textbook marginals written independently of the library (numpy, float64)."""
    t = np.float64(t)
    if isinstance(sde, sd.VPSDE):
        la = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
        return np.exp(la), np.sqrt(1 - np.exp(2 * la))
    if isinstance(sde, sd.SubVPSDE):
        la = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
        return np.exp(la), 1 - np.exp(2 * la)
    if isinstance(sde, sd.VESDE):
        s = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return 1.0, np.sqrt(s**2 - sde.sigma_min**2)
    if isinstance(sde, sd.CosineVPSDE):
        a = np.cos((t + sde.s) / (1 + sde.s) * np.pi / 2) / np.cos(sde.s / (1 + sde.s) * np.pi / 2)
        return a, np.sqrt(1 - a**2)
    raise AssertionError


@sde_params
@given(u=st.floats(0.01, 1.0))
def test_marginal_matches_closed_form(sde, u):
    t = u * sde.T
    alpha, sigma = sde.marginal(t)
    a_ref, s_ref = _closed_form(sde, t)
    np.testing.assert_allclose(alpha, a_ref, rtol=1e-10)
    np.testing.assert_allclose(sigma, s_ref, rtol=1e-8)


@sde_params
@given(u=st.floats(0.02, 0.98))
def test_coefficients_match_autodiff_of_marginal(sde, u):
    """f = d log(alpha)/dt and g^2 = d(sigma^2)/dt - 2 f sigma^2, by jax.jvp of `marginal`."""
    t = jnp.asarray(u * sde.T)
    _, dlog_alpha = jax.jvp(lambda s: jnp.log(sde.marginal(s)[0]), (t,), (jnp.ones_like(t),))
    sigma = sde.marginal(t)[1]
    _, dsigma2 = jax.jvp(lambda s: sde.marginal(s)[1] ** 2, (t,), (jnp.ones_like(t),))
    f, g = sde.coefficients(t)
    np.testing.assert_allclose(f, dlog_alpha, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g**2, dsigma2 - 2 * f * sigma**2, rtol=1e-8, atol=1e-12)


@sde_params
def test_log_snr_matches_definition_and_decreases(sde):
    t = jnp.linspace(0.01, 1.0, 50) * sde.T
    alpha, sigma = jax.vmap(sde.marginal)(t)
    lam = jax.vmap(sde.log_snr)(t)
    np.testing.assert_allclose(lam, np.log(alpha**2 / sigma**2), rtol=1e-9)
    assert np.all(np.diff(np.asarray(lam, dtype=float)) < 0)


@sde_params
def test_finite_in_float32_on_whole_interval(sde):
    """No NaN or inf for t in [0, T] in float32 (t = 0 excepted for log-SNR, which is +inf)."""
    t = jnp.concatenate([jnp.array([0.0, 1e-7, 1e-5]), jnp.linspace(0, 1, 101)]).astype(jnp.float32)
    t = jnp.clip(t * sde.T, 0, sde.T).astype(jnp.float32)
    t_small = 1e-6 * sde.T

    @jax.jit  # one program (op by op, the vmapped methods compile each of their ops)
    def all_of(t, t_small):
        alpha, sigma = jax.vmap(sde.marginal)(t)
        f, g = jax.vmap(sde.coefficients)(t)
        return alpha, sigma, f, g, jax.vmap(sde.log_snr)(t), sde.marginal(t_small)[1]

    alpha, sigma, f, g, lam, s32 = all_of(t, jnp.float32(t_small))
    for name, arr in dict(alpha=alpha, sigma=sigma, f=f, g=g, lam=lam, s32=s32).items():
        assert arr.dtype == jnp.float32, name
    for name, arr in dict(alpha=alpha, sigma=sigma, f=f, g=g).items():
        assert np.all(np.isfinite(np.asarray(arr))), name
    assert np.all(np.asarray(sigma) >= 0) and np.all(np.asarray(alpha) <= 1)
    assert np.all(np.isfinite(np.asarray(lam)[np.asarray(t) > 0]))
    # float32 schedule agrees with float64 near t = 0, where 1 - exp(.) would cancel
    s64 = _closed_form(sde, t_small)[1]
    np.testing.assert_allclose(s32, s64, rtol=1e-4)


@sde_params
def test_float64_honoured(sde):
    alpha, sigma = sde.marginal(jnp.float64(0.3))
    assert alpha.dtype == sigma.dtype == jnp.float64


@sde_params
def test_prior_matches_marginal_at_T(sde, getkey):
    x = sde.prior_sample(getkey(), (20000,))
    np.testing.assert_allclose(np.std(x), sde.marginal(sde.T)[1], rtol=0.03)
    # log density of the prior: compare with scipy-free closed form for one point
    z = jnp.array([0.3, -0.2])
    s = float(sde.marginal(sde.T)[1])
    ref = -0.5 * float(jnp.sum(z**2)) / s**2 - 2 * math.log(s) - math.log(2 * math.pi)
    np.testing.assert_allclose(sde.prior_log_prob(z), ref, rtol=1e-12)


@sde_params
def test_perturb_mean_and_std(sde, getkey):
    x0 = jnp.array([0.5, -1.0])
    keys = jax.random.split(getkey(), 20000)
    xt = jax.vmap(lambda k: sd.perturb(k, sde, x0, 0.4 * sde.T))(keys)
    alpha, sigma = sde.marginal(0.4 * sde.T)
    se = float(sigma) / math.sqrt(20000)
    np.testing.assert_allclose(xt.mean(0), alpha * x0, atol=5 * se)
    np.testing.assert_allclose(xt.std(0), sigma, rtol=0.03)


@sde_params
def test_forward_moment_odes(sde):
    """Integrating m' = f m and v' = 2 f v + g^2 from (1, 0) reproduces (alpha, sigma^2)."""
    t = jnp.linspace(0.0, 0.9 * sde.T, 4001)

    def step(carry, ts):
        m, v = carry
        t0, t1 = ts
        h = t1 - t0

        def rhs(tt, mm, vv):
            f, g = sde.coefficients(tt)
            return f * mm, 2 * f * vv + g**2

        k1 = rhs(t0, m, v)
        k2 = rhs(t0 + h / 2, m + h / 2 * k1[0], v + h / 2 * k1[1])
        k3 = rhs(t0 + h / 2, m + h / 2 * k2[0], v + h / 2 * k2[1])
        k4 = rhs(t1, m + h * k3[0], v + h * k3[1])
        m = m + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        v = v + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return (m, v), None

    (m, v), _ = jax.lax.scan(step, (jnp.float64(1.0), jnp.float64(0.0)), (t[:-1], t[1:]))
    alpha, sigma = sde.marginal(t[-1])
    np.testing.assert_allclose(m, alpha, rtol=1e-7)
    np.testing.assert_allclose(v, sigma**2, rtol=1e-6)


def test_probability_flow_and_reverse_drift_formulas():
    """PF drift = f x - g^2 s / 2 and reverse drift = f x - g^2 s for a linear SDE."""
    sde = sd.VPSDE()
    score = lambda t, x: -x * (1 + t)
    x, t = jnp.array([0.3, -0.7]), 0.25
    f, g = sde.coefficients(t)
    chex.assert_trees_all_close(
        sd.probability_flow(sde, score)(t, x), f * x - 0.5 * g**2 * score(t, x)
    )
    rev = sd.reverse_sde(sde, score)
    chex.assert_trees_all_close(rev.drift(t, x), f * x - g**2 * score(t, x))
    chex.assert_trees_all_close(rev.diffusion(t, x), g)


def test_state_dependent_diffusion_correction():
    """For g(x) = c x (diagonal) the correction d(g_i^2)/dx_i = 2 c^2 x_i enters both drifts."""
    c = 0.5
    sde = sd.SDE(lambda t, x: -x, lambda t, x: c * x, state_dependent_diffusion=True)
    score = lambda t, x: jnp.zeros_like(x)
    x = jnp.array([0.4, -1.2, 2.0])
    chex.assert_trees_all_close(sd.probability_flow(sde, score)(0.1, x), -x - 0.5 * 2 * c**2 * x)
    chex.assert_trees_all_close(sd.reverse_sde(sde, score).drift(0.1, x), -x - 2 * c**2 * x)


def test_stationary_ou_pf_is_zero():
    """Ornstein-Uhlenbeck dx = -x dt + sqrt(2) dW has N(0, I) stationary: the PF field vanishes."""
    ou = sd.SDE(lambda t, x: -x, lambda t, x: jnp.sqrt(2.0), T=5.0)
    score = lambda t, x: -x
    x = jnp.array([0.3, -2.0])
    chex.assert_trees_all_close(sd.probability_flow(ou, score)(1.0, x), jnp.zeros(2), atol=1e-12)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sd.VPSDE(beta_min=1.0, beta_max=0.5), "beta_min"),
        (lambda: sd.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sd.VPSDE(beta_max=float("nan")), "beta_max"),
        (lambda: sd.SubVPSDE(beta_min=0.0), "beta_min"),
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sd.VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: sd.CosineVPSDE(T=1.0), "T"),
        (lambda: sd.CosineVPSDE(s=-1.0), "s"),
        (lambda: sd.VPSDE(T=0.0), "T"),
        (lambda: sd.SDE(1.0, lambda t, x: 1.0), "drift_fn"),  # pyright: ignore[reportArgumentType]
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_time_raises(getkey):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="t"):
        sd.perturb(getkey(), sde, jnp.zeros(2), 1.5)
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(ValueError, match="scalar"):
            sd.perturb(getkey(), sde, jnp.zeros(2), jnp.array([0.1, 0.2]))
        with pytest.raises(TypeError, match="x0"):
            sd.perturb(getkey(), sde, jnp.zeros(2, jnp.complex64), 0.5)
    # traced time outside [0, T]: a runtime error, not a silent NaN
    with pytest.raises(Exception, match=r"\[0, T"):
        jax.jit(lambda t: sd.perturb(jax.random.key(0), sde, jnp.zeros(2), t))(
            -0.5
        ).block_until_ready()


# (jit, vmap and grad of every SDE method and of perturb, float32 and float64: their cases in
# tests/test_transforms.py)
