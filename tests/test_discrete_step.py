"""Forward posterior q(x_m | x_n, x_0) and the generalised reverse step (DDIM family)."""

from typing import Any

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import scoredyn as sd
from helpers import built_on_first_use, no_runtime_typecheck

# a short chain with large steps
_sched = built_on_first_use(lambda: sd.DiscreteSchedule.linear(20, 0.01, 0.2))
_coarse = built_on_first_use(lambda: sd.DiscreteSchedule.linear(100, 1e-3, 0.1))


@pytest.fixture(scope="module")
def forward_chain():
    """Monte Carlo of Ho et al.'s Markov chain x_n = sqrt(1 - beta_n) x_{n-1} + sqrt(beta_n) z."""
    M, x0 = 200_000, 0.7
    betas = jnp.asarray(np.linspace(0.01, 0.2, 20))

    def step(x, inp):
        beta, key = inp
        x = jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, x.shape)
        return x, x

    keys = jax.random.split(jax.random.key(11), 20)
    _, xs = jax.jit(lambda: jax.lax.scan(step, jnp.full((M,), x0), (betas, keys)))()
    return x0, jnp.concatenate([jnp.full((1, M), x0), xs])  # (N + 1, M)


@pytest.mark.parametrize("n,m", [(15, 7), (20, 1), (5, 4), (20, 10)])
def test_forward_posterior_matches_forward_chain(forward_chain, n, m):
    """q(x_m | x_n, x_0) of DDPM vs linear regression of x_m on x_n in the simulated chain."""
    x0, xs = forward_chain
    M = xs.shape[1]
    xn, xm = np.asarray(xs[n]), np.asarray(xs[m])
    cov = np.cov(np.stack([xn, xm]))
    slope = cov[0, 1] / cov[0, 0]
    intercept = xm.mean() - slope * xn.mean()
    resid = cov[1, 1] - slope * cov[0, 1]
    c0, cn, var = sd.forward_posterior(_sched(), n, m)
    se_slope = np.sqrt(resid / (M * cov[0, 0]))
    # tolerances: 5 standard errors
    assert abs(slope - float(cn)) < 5 * se_slope
    assert abs(intercept - float(c0) * x0) < 5 * np.sqrt(resid / M) * (
        1 + abs(xn.mean()) / np.sqrt(cov[0, 0])
    )
    assert abs(resid / float(var) - 1) < 5 * np.sqrt(2 / M)


def test_ddpm_posterior_is_ho_eq7():
    """Ho et al. eq. (7) for m = n - 1, from the betas (NumPy)."""
    betas = np.linspace(0.01, 0.2, 20)
    ab = np.concatenate([[1.0], np.cumprod(1 - betas)])
    for n in (1, 2, 10, 20):
        c0, cn, var = sd.forward_posterior(_sched(), n, n - 1)
        b = betas[n - 1]
        np.testing.assert_allclose(c0, np.sqrt(ab[n - 1]) * b / (1 - ab[n]), rtol=1e-12)
        np.testing.assert_allclose(cn, np.sqrt(1 - b) * (1 - ab[n - 1]) / (1 - ab[n]), rtol=1e-12)
        np.testing.assert_allclose(var, (1 - ab[n - 1]) / (1 - ab[n]) * b, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        sd.posterior_variance(_sched(), 10, 9), sd.forward_posterior(_sched(), 10, 9).var
    )


_pair_fn = jax.jit(
    lambda n, m, eta: (
        sd.forward_posterior(_coarse(), n, m, eta**2 * sd.posterior_variance(_coarse(), n, m)),
        _coarse().marginal(n),
        _coarse().marginal(m),
    )
)


@given(n=st.integers(1, 100), gap=st.integers(1, 100), eta=st.floats(0.0, 1.0, allow_nan=False))
def test_ddim_family_keeps_the_marginals(n, gap, eta):
    """x_n ~ q(x_n|x0), x_m ~ q_lambda(x_m|x_n,x0)  =>  x_m ~ N(alpha_m x0, sigma_m^2), any eta."""
    m = max(n - gap, 0)
    (c0, cn, lam2), (a_n, s_n), (a_m, s_m) = _pair_fn(jnp.int32(n), jnp.int32(m), eta)
    np.testing.assert_allclose(c0 + cn * a_n, a_m, rtol=1e-10, atol=1e-14)  # mean
    np.testing.assert_allclose(cn**2 * s_n**2 + lam2, s_m**2, rtol=1e-10, atol=1e-14)  # variance


class _DiracEps(eqx.Module):
    """The exact eps of data concentrated at x0: eps = (x - alpha_n x0) / sigma_n."""

    sched: sd.DiscreteSchedule
    x0: jax.Array

    def __call__(self, t, x):
        n = jnp.round(t * self.sched.num_steps).astype(jnp.int32)
        a, s = self.sched.marginal(n)
        return (x - a * self.x0) / s


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, "beta"])
def test_ddim_family_marginals_monte_carlo(eta):
    """Sampling q_lambda(x_m | x_n, x0) along a trajectory keeps q(x_n | x0) for every eta (MC)."""
    M, N = 40_000, 100
    sched = _coarse()
    x0 = jnp.array([0.7, -1.2])
    tau = sd.respace(N, 5, "quadratic")
    a_N, s_N = sched.marginal(N)
    xT = a_N * x0[None] + s_N * jax.random.normal(jax.random.key(3), (M, 2))
    kw: dict[str, Any] = {"variances": "ddpm_beta"} if eta == "beta" else {"eta": eta}
    run = jax.jit(
        jax.vmap(
            lambda k, x: sd.sample_discrete(
                k, sched, _DiracEps(sched, x0), x, tau, return_trajectory=True, **kw
            )
        )
    )
    _, traj = run(jax.random.split(jax.random.key(4), M), xT)
    alpha, sigma = sched.marginal(tau)
    mean_err = jnp.abs(traj.mean(0) - alpha[:, None] * x0[None]) / (
        sigma[:, None] / np.sqrt(M) + 1e-300
    )
    var_ratio = traj.var(0)[1:] / sigma[1:, None] ** 2
    if eta == "beta":
        # control: a reverse variance beta_{n|m} > lambda^2 inflates the marginals; the MC sees it
        assert float(jnp.max(var_ratio)) > 1.05
        return
    assert float(jnp.max(mean_err[1:])) < 5.0  # within 5 standard errors
    assert float(jnp.max(jnp.abs(var_ratio - 1))) < 5 * np.sqrt(2 / M)
    np.testing.assert_allclose(traj[:, 0], jnp.broadcast_to(x0, (M, 2)), atol=1e-12)  # decoder: x0


# ---------------------------------------------------------------------------- the reverse step
def test_ddim_step_is_euler_step_of_su_ode():
    """DDIM (eta = 0), Su post 9181.

    x_m/alpha_m - x_n/alpha_n = (sigma_m/alpha_m - sigma_n/alpha_n) eps.
    """
    x_n = jnp.array([0.3, -1.1, 2.0])
    eps = jnp.array([-0.5, 0.9, 0.2])
    for n, m in [(20, 19), (20, 3), (7, 1)]:
        x_m = sd.ddim_step(None, _sched(), n, m, x_n, eps)
        (a_n, s_n), (a_m, s_m) = _sched().marginal(n), _sched().marginal(m)
        np.testing.assert_allclose(x_m / a_m - x_n / a_n, (s_m / a_m - s_n / a_n) * eps, rtol=1e-12)
    x_0 = sd.ddim_step(None, _sched(), 5, 0, x_n, eps)  # into n = 0 the step returns x0_hat
    a5, s5 = _sched().marginal(5)
    np.testing.assert_allclose(x_0, (x_n - s5 * eps) / a5, rtol=1e-12)


def test_ddpm_mean_is_ho_eq11():
    """lam2 = beta-tilde: mean = (x_n - beta_{n|m}/sigma_n eps) / sqrt(1 - beta_{n|m}), any pair."""
    x_n = jnp.array([0.3, -1.1])
    eps = jnp.array([-0.5, 0.9])
    ab = np.asarray(_sched().alpha_bar)
    for n, m in [(20, 19), (12, 2), (3, 1)]:
        mean = sd.reverse_step(None, _sched(), n, m, x_n, eps, lam2=None, var=0.0)
        b = 1 - ab[n] / ab[m]
        np.testing.assert_allclose(
            mean, (x_n - b / np.sqrt(1 - ab[n]) * eps) / np.sqrt(1 - b), rtol=1e-12
        )


@given(n=st.integers(2, 20), gap=st.integers(1, 19), frac=st.floats(0.0, 1.0))
def test_generalised_mean_is_su_form(n, gap, frac):
    """Su's DDIM-family mean.

    (1/a)(x_n - (sigma_n - a sqrt(sigma_m^2 - lam^2)) eps), with a = sqrt(abar_n/abar_m).
    """
    m = max(n - gap, 1)
    ab = np.asarray(_sched().alpha_bar)
    lam2 = frac * (1 - ab[m])
    x_n, eps = jnp.array([0.4, -0.8]), jnp.array([1.3, 0.1])
    mean = _step_mean(jnp.int32(n), jnp.int32(m), x_n, eps, lam2)
    a = np.sqrt(ab[n] / ab[m])
    ref = (x_n - (np.sqrt(1 - ab[n]) - a * np.sqrt(max(1 - ab[m] - lam2, 0.0))) * eps) / a
    np.testing.assert_allclose(mean, ref, rtol=1e-9, atol=1e-12)


_step_mean = jax.jit(
    lambda n, m, x, e, lam2: sd.reverse_step(None, _sched(), n, m, x, e, lam2=lam2, var=0.0)
)


def test_reverse_step_noise_variance_monte_carlo():
    """The added noise has variance var (scalar and diagonal), and the mean is unchanged."""
    M = 40_000
    x_n, eps = jnp.array([0.3, -1.1]), jnp.array([-0.5, 0.9])
    var = jnp.array([0.02, 0.2])
    f = jax.jit(jax.vmap(lambda k: sd.reverse_step(k, _sched(), 10, 4, x_n, eps, var=var)))
    xs = f(jax.random.split(jax.random.key(0), M))
    mean = sd.reverse_step(None, _sched(), 10, 4, x_n, eps, var=0.0)
    np.testing.assert_allclose(xs.var(0) / var, 1.0, atol=5 * np.sqrt(2 / M))
    assert float(jnp.max(jnp.abs(xs.mean(0) - mean) / jnp.sqrt(var / M))) < 5


def test_clip_x0():
    x_n, eps = jnp.array([3.0, 0.1]), jnp.array([-2.0, 0.0])
    n, m = 20, 10
    a_n, s_n = _sched().marginal(n)
    x0_hat = (x_n - s_n * eps) / a_n
    c0, cn, _ = sd.forward_posterior(_sched(), n, m, 0.0)
    out = sd.ddim_step(None, _sched(), n, m, x_n, eps, clip_x0=1.0)
    np.testing.assert_allclose(out, c0 * jnp.clip(x0_hat, -1, 1) + cn * x_n, rtol=1e-12)
    assert float(x0_hat[0]) > 1  # the clip was active
    # a clip that is not active changes nothing
    np.testing.assert_allclose(
        sd.ddim_step(None, _sched(), n, m, x_n, eps, clip_x0=(-100.0, 100.0)),
        sd.ddim_step(None, _sched(), n, m, x_n, eps),
        rtol=1e-12,
    )


def test_step_gradient_is_alpha_ratio():
    """d x_m / d x_n (eps fixed) = alpha_m / alpha_n for every member of the family. (jit, vmap,
    grad with a finite-difference check, float32 and float64 of ddim_step and reverse_step:
    their case in test_transforms.py.)"""
    x_n, eps = jnp.array([0.3, -1.1]), jnp.array([-0.5, 0.9])
    g = jax.grad(
        lambda x: sd.reverse_step(jax.random.key(0), _sched(), 10, 3, x, eps, lam2=None).sum()
    )(x_n)
    np.testing.assert_allclose(g, _sched().marginal(3)[0] / _sched().marginal(10)[0], rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_float32_steps_finite_at_both_ends(kind):
    s32 = getattr(sd.DiscreteSchedule, kind)(1000, dtype=jnp.float32)
    s64 = getattr(sd.DiscreteSchedule, kind)(1000, dtype=jnp.float64)
    x = jnp.array([0.5, -2.0], jnp.float32)
    e = jnp.array([0.3, 1.0], jnp.float32)
    for n, m in [(1, 0), (2, 1), (1000, 999), (1000, 0), (1000, 500)]:
        for lam2 in (None, 0.0):
            y32 = sd.reverse_step(None, s32, n, m, x, e, lam2=lam2, var=0.0)
            y64 = sd.reverse_step(
                None, s64, n, m, x.astype(jnp.float64), e.astype(jnp.float64), lam2=lam2, var=0.0
            )
            assert y32.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y32)))
            np.testing.assert_allclose(
                y32, y64, rtol=2e-5, atol=1e-5 * float(jnp.max(jnp.abs(y64)))
            )
        for field in sd.forward_posterior(s32, n, m):
            assert bool(jnp.all(jnp.isfinite(field)))


@no_runtime_typecheck()
def test_step_validation():
    x, e = jnp.zeros(2), jnp.zeros(2)
    with pytest.raises(ValueError, match="m < n"):
        sd.forward_posterior(_sched(), 3, 3)
    with pytest.raises(ValueError, match="`n`"):
        sd.forward_posterior(_sched(), 21, 3)
    with pytest.raises(ValueError, match="`m`"):
        sd.forward_posterior(_sched(), 5, -1)
    with pytest.raises(ValueError, match="lam2"):
        sd.forward_posterior(_sched(), 5, 3, lam2=2.0)
    with pytest.raises(ValueError, match="lam2"):
        sd.forward_posterior(_sched(), 5, 3, lam2=float("nan"))
    with pytest.raises(ValueError, match="`var`"):
        sd.reverse_step(jax.random.key(0), _sched(), 5, 3, x, e, var=-1.0)
    with pytest.raises(ValueError, match="eps_hat"), no_runtime_typecheck():
        sd.reverse_step(None, _sched(), 5, 3, x, jnp.zeros(3), var=0.0)
    with pytest.raises(TypeError, match="eps_hat"), no_runtime_typecheck():
        sd.reverse_step(None, _sched(), 5, 3, x, jnp.zeros(2, jnp.float32), var=0.0)
    with pytest.raises(ValueError, match="key"):
        sd.reverse_step(None, _sched(), 5, 3, x, e)
    with pytest.raises(ValueError, match="clip_x0"):
        sd.ddim_step(None, _sched(), 5, 3, x, e, clip_x0=-1.0)
    # ill-typed on purpose (pyright: ignore): scoredyn's own errors
    with pytest.raises(TypeError, match="sched"):
        sd.forward_posterior(jnp.ones(3), 2, 1)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="kind"):
        sd.reverse_variances(_sched(), sd.respace(20, 4), "large")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="eta"):
        sd.reverse_variances(_sched(), sd.respace(20, 4), "eta", eta=-0.1)
    # traced indices: checked at run time
    f = jax.jit(lambda n, m: sd.forward_posterior(_sched(), n, m).coef_x0)
    with pytest.raises(Exception, match="m < n"):
        f(jnp.int32(3), jnp.int32(5)).block_until_ready()


def test_reverse_variances_named_choices():
    tau = sd.respace(20, 4)
    ab = np.asarray(_sched().alpha_bar)[np.asarray(tau)]
    b = 1 - ab[1:] / ab[:-1]
    bt = (1 - ab[:-1]) / (1 - ab[1:]) * b
    np.testing.assert_allclose(sd.reverse_variances(_sched(), tau, "ddpm"), bt, rtol=1e-12)
    np.testing.assert_allclose(sd.reverse_variances(_sched(), tau, "ddpm_beta"), b, rtol=1e-12)
    np.testing.assert_allclose(
        sd.reverse_variances(_sched(), tau, "eta", eta=0.5), 0.25 * bt, rtol=1e-12
    )
    np.testing.assert_array_equal(sd.reverse_variances(_sched(), tau, "ddim"), np.zeros(4))
    assert float(sd.reverse_variances(_sched(), tau, "ddpm")[0]) == 0.0  # step into n = 0
