"""`sd.encode` / `sd.decode`: one verb, two documented call forms (a model selects the sampling
layer's form, a score function scoredyn 0.1's flow map); both forms compute the same map."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import mixture_2d

VP = sd.VPSDE()
T_EPS = 1e-3
GM = mixture_2d()


def test_model_form_is_the_flow_map_of_the_score_form():
    """With the exact mixture score, `sd.encode(sde, sd.ScoreModel(score), sd.ODE(), grid, x0)`
    and the 0.1 form `sd.encode(sde, score, x0)` solve the same probability-flow ODE (adaptive
    Tsit5 at 1e-5 both); they agree to the solver tolerance, and `decode` inverts `encode`."""
    score = GM.score_fn(VP)
    model = sd.ScoreModel(score)
    grid = jnp.array([VP.T, T_EPS])
    ode = sd.ODE(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-8, atol=1e-8))
    x0 = jnp.array([0.7, -1.2])
    res = sd.encode(VP, model, ode, grid, x0)
    assert isinstance(res, sd.Sample)
    z_old = sd.encode(
        VP, score, x0, stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8)
    )
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(z_old), rtol=1e-6, atol=1e-6)
    back = sd.decode(VP, model, ode, grid, res.x)
    np.testing.assert_allclose(np.asarray(back.x), np.asarray(x0), rtol=1e-6, atol=1e-6)
    # decode's model form is `sample` with no key, for any deterministic solver
    g = sd.grids.log_snr(VP, 6, t_eps=T_EPS)
    dec = sd.decode(VP, model, sd.DPMSolver(order=2), g, res.x).x
    ref = sd.sample(None, VP, model, sd.DPMSolver(order=2), g, res.x).x
    np.testing.assert_array_equal(np.asarray(dec), np.asarray(ref))


def test_model_form_refuses_a_solver_that_cannot_encode():
    with pytest.raises(ValueError, match="cannot encode"):
        sd.encode(
            VP, sd.ScoreModel(GM.score_fn(VP)), sd.DPMSolver(), jnp.array([1.0, 0.1]), jnp.zeros(2)
        )
