r"""`dequantization_t_eps`: the PF-ODE start time whose noise matches uniform dequantisation.

Independent facts: $\sigma(t_\epsilon) = \Delta/\sqrt{12}$ read back from `marginal` for every
linear SDE, and closed forms of the inverse: $t = \log(1 + s^2/\sigma_{\min}^2)/(2L)$ for VE
($\alpha = 1$), and `time_at_log_snr(log((1 - s^2)/s^2))` for the variance-preserving SDEs
($\alpha^2 = 1 - \sigma^2$).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, no_runtime_typecheck

dequantization_t_eps = sd.dequantization_t_eps

WIDTHS = (2.0 / 255, 2.0 / 16, 0.5, 2.0)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_sigma_matches_the_uniform_noise(sde):
    for width in WIDTHS:
        t = dequantization_t_eps(sde, width)
        assert t.dtype == jnp.float64 and t.shape == ()
        assert 0.0 < float(t) < sde.T
        target = width / math.sqrt(12.0)
        assert abs(float(sde.marginal(t)[1]) / target - 1.0) < 1e-12, (width, float(t))


def test_closed_forms():
    s = 0.125 / math.sqrt(12.0)
    for sde in (sd.VPSDE(), sd.CosineVPSDE(), sd.VPSDE(beta_min=0.5, beta_max=5.0, T=2.0)):
        want = float(sde.time_at_log_snr(math.log((1.0 - s**2) / s**2)))
        assert abs(float(dequantization_t_eps(sde, 0.125)) - want) < 1e-12 * max(want, 1.0)
    ve = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    want = math.log1p(s**2 / 0.01**2) / (2.0 * math.log(50.0 / 0.01))
    assert abs(float(dequantization_t_eps(ve, 0.125)) - want) < 1e-12


def test_transforms_dtype_and_end_of_range():
    sde = sd.VPSDE()
    widths = jnp.array([0.01, 0.1, 1.0])
    batched = jax.jit(jax.vmap(lambda w: dequantization_t_eps(sde, w)))(widths)
    np.testing.assert_allclose(
        batched, [float(dequantization_t_eps(sde, float(w))) for w in widths], rtol=0, atol=1e-15
    )
    with jax.enable_x64(False):
        t32 = dequantization_t_eps(sde, 0.125)
        assert t32.dtype == jnp.float32
        assert abs(float(sde.marginal(t32)[1]) / (0.125 / math.sqrt(12.0)) - 1.0) < 1e-5
    # sigma(T) < 4 / sqrt(12) for the VP SDE: no time is noisy enough, so T
    assert float(dequantization_t_eps(sde, 4.0)) == pytest.approx(sde.T, abs=1e-15)


def test_errors():
    with pytest.raises(ValueError, match="bin_width"):
        dequantization_t_eps(sd.VPSDE(), 0.0)
    with pytest.raises(ValueError, match="bin_width"):
        dequantization_t_eps(sd.VPSDE(), -1.0)
    with no_runtime_typecheck():  # ill-typed on purpose: scoredyn's own errors
        with pytest.raises(TypeError, match="AbstractLinearSDE"):
            dequantization_t_eps(sd.DiscreteSchedule.linear(10), 0.1)  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="scalar"):
            dequantization_t_eps(sd.VPSDE(), jnp.ones(2))
