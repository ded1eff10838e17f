r"""`sd.analytic.monotone_ms_eps`: the projection onto a non-decreasing posterior variance of $x_0$.

Independent facts: the exact `ms_eps` of a 1-D Gaussian mixture, computed here by numpy
quadrature (no library code), gives a non-decreasing $\kappa_n = \frac{1 - \bar a_n}{\bar a_n}
(1 - \texttt{ms\_eps}_n)$ (law of total variance along the Markov chain $x_0 \to x_m \to x_n$), so
the projection must return it unchanged; a hand-made dip must come back as the running maximum
$\max_{m \le n}\kappa_m$ computed by numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import no_runtime_typecheck

CAP = 1.0 - 1e-5

# The projection as one compiled program (the eager call compiles its ops one by one); the eager
# call itself is checked against this one bit for bit in test_output_range_dtype_and_gamma_...
_monotone = jax.jit(sd.analytic.monotone_ms_eps)


def _snr_inv(sched):
    abar = np.asarray(sched.alpha_bar, np.float64)
    return np.where(abar < 1, (1 - abar) / abar, 0.0)


def _exact_ms_eps_1d_mixture(sched, w, mu, var, num_points=40001):
    r"""$\mathbb E\,\mathbb E[\varepsilon\mid x_n]^2$ for $x_0\sim\sum_k w_k\mathcal N(\mu_k, v_k)$.

    $x_n = a x_0 + s\varepsilon$ is the mixture of $\mathcal N(a\mu_k, a^2 v_k + s^2)$, and
    $\mathbb E[\varepsilon\mid x_n, k] = s(x_n - a\mu_k)/(a^2 v_k + s^2)$; the outer expectation is
    a trapezoid rule on a grid of $\pm 14$ standard deviations (error far below $10^{-12}$).
    """
    abar = np.asarray(sched.alpha_bar, np.float64)
    out = np.zeros_like(abar)
    for n in range(1, abar.shape[0]):
        a, s = np.sqrt(abar[n]), np.sqrt(1.0 - abar[n])
        tot = a**2 * var + s**2
        sd_max = np.sqrt(tot.max())
        x = np.linspace((a * mu).min() - 14 * sd_max, (a * mu).max() + 14 * sd_max, num_points)
        dens = w * np.exp(-0.5 * (x[:, None] - a * mu) ** 2 / tot) / np.sqrt(2 * np.pi * tot)
        p = dens.sum(1)
        post = dens / p[:, None]
        e_eps = (post * s * (x[:, None] - a * mu) / tot).sum(1)
        out[n] = np.trapezoid(p * e_eps**2, x)
    return out


def test_exact_mixture_profile_is_left_unchanged():
    sched = sd.DiscreteSchedule.linear(60, 1e-3, 0.12)
    w, mu, var = np.array([0.3, 0.7]), np.array([-1.0, 0.8]), np.array([0.05, 0.2])
    ms = _exact_ms_eps_1d_mixture(sched, w, mu, var)
    kappa = _snr_inv(sched) * (1 - ms)
    assert np.all(np.diff(kappa[1:]) > 0)  # the fact the projection relies on
    out = np.asarray(_monotone(sched, ms))
    np.testing.assert_allclose(out, np.minimum(ms, CAP), rtol=0, atol=1e-12)
    assert out[0] == 0.0


def test_dips_are_raised_to_the_running_max():
    sched = sd.DiscreteSchedule.linear(100)
    r = _snr_inv(sched)
    kappa_true = 0.3 * (1 - np.asarray(sched.alpha_bar))  # increasing, below (1 - abar) / abar
    ms = np.concatenate([[0.0], 1 - kappa_true[1:] / r[1:]])
    noisy = ms.copy()
    noisy[[20, 60, 90, 100]] = [ms[20] + 0.2, 1.0, 1.2, 0.9999999]  # dips, incl. estimates >= 1
    out = np.asarray(_monotone(sched, noisy))
    kappa_in = r * (1 - np.clip(noisy, 0.0, 1.0))
    want = np.maximum.accumulate(kappa_in[1:])
    np.testing.assert_allclose(np.minimum(1 - want / r[1:], CAP), out[1:], rtol=0, atol=1e-12)
    kappa_out = r[1:] * (1 - out[1:])
    assert np.all(np.diff(kappa_out) >= -1e-12 * kappa_out[1:])
    assert np.all(out[1:] <= np.minimum(noisy[1:], CAP) + 1e-15)  # variances only go up
    untouched = np.arange(1, 20)  # before the first dip nothing changes
    np.testing.assert_allclose(out[untouched], ms[untouched], rtol=0, atol=1e-12)


def test_output_range_dtype_and_gamma_estimate_input():
    sched = sd.DiscreteSchedule.linear(40, 1e-3, 0.2)
    wild = jax.random.uniform(jax.random.key(0), (41,), jnp.float64, -0.5, 1.5)
    out = sd.analytic.monotone_ms_eps(sched, wild)
    assert out.dtype == jnp.float64 and out.shape == (41,)
    assert float(out.min()) >= 0.0 and float(out.max()) <= CAP and float(out[0]) == 0.0
    assert float(sd.analytic.monotone_ms_eps(sched, wild, cap=0.5).max()) <= 0.5
    np.testing.assert_array_equal(_monotone(sched, wild), out)

    z = jnp.zeros(41)
    est = sd.analytic.GammaEstimate(wild, z, wild, z, wild, z, jnp.zeros((41, 2)), z, 1)
    np.testing.assert_array_equal(sd.analytic.monotone_ms_eps(sched, est), out)
    with jax.enable_x64(False):
        s32 = sd.DiscreteSchedule.linear(40, 1e-3, 0.2, dtype=jnp.float32)
        assert sd.analytic.monotone_ms_eps(s32, wild.astype(jnp.float32)).dtype == jnp.float32


def test_errors():
    sched = sd.DiscreteSchedule.linear(10)
    with pytest.raises(ValueError, match="cap"):
        sd.analytic.monotone_ms_eps(sched, jnp.zeros(11), cap=1.5)
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(ValueError, match="shape"):
            sd.analytic.monotone_ms_eps(sched, jnp.zeros(10))
        with pytest.raises(TypeError, match="DiscreteSchedule"):
            sd.analytic.monotone_ms_eps(sched.alpha_bar, jnp.zeros(11))  # pyright: ignore[reportArgumentType]
