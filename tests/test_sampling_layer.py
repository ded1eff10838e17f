"""The 0.2 sampling layer against frozen 0.1 outputs, and its step API against its verb.

`tests/fixtures/legacy_samplers.npz` was written by `tests/fixtures/make_legacy_samplers.py`
run at commit e30de8d (the last 0.1 commit), before the redesign: it holds the inputs and
outputs of every 0.1 sampler. Here each 0.1 call is expressed in the new API (a process, a
model, a solver value and a grid) and must reproduce the frozen output bit for bit, except
where the new layer deliberately reorganises arithmetic (clipping as a model transform):
those are checked to 1e-12 and say so.
"""

import json
import os
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd

FIX = pathlib.Path(__file__).parent / "fixtures"
# The fixtures were compiled outside pytest with XLA's default flags. Run that way, DDPM, DDIM
# and Analytic-DDIM reproduce them bit for bit (checked by hand for this release); the suite
# compiles at -O0 with its own configuration (conftest), where LLVM contracts other
# multiply-adds and the last bits move, so here the check is to 1e-14 relative.
BITWISE = os.environ.get("SCOREDYN_BITWISE") == "1"


def assert_same(actual, desired, err_msg=""):
    if BITWISE:
        np.testing.assert_array_equal(np.asarray(actual), desired, err_msg=err_msg)
    else:  # last bits only
        np.testing.assert_allclose(
            np.asarray(actual), desired, rtol=1e-14, atol=1e-15, err_msg=err_msg
        )


# the tests share compiled solves (same solver, model and grid length): one xdist worker
pytestmark = pytest.mark.xdist_group("sampling-layer")

Z = np.load(FIX / "legacy_samplers.npz")
META = json.loads((FIX / "legacy_samplers.json").read_text())


@pytest.fixture(scope="module")
def setup():
    gm = sd.toy.GaussianMixture(
        jnp.asarray(Z["common__mixture_weights"]),
        jnp.asarray(Z["common__mixture_means"]),
        jnp.asarray(Z["common__mixture_covs"]),
    )
    sched = sd.DiscreteSchedule.linear(1000)
    np.testing.assert_array_equal(np.asarray(sched.log_alpha_bar), Z["common__log_alpha_bar"])
    eps_fn = sd.toy.discrete_eps_fn(gm, sched)
    return gm, sched, sd.EpsModel(eps_fn), jnp.asarray(Z["common__ms_eps"])


def _solvers(ms_eps):
    dr = (-1.0, 1.0)
    return {
        "default": sd.DDPM(),
        "ddpm_beta": sd.DDPM(large_variance=True),
        "ddim": sd.DDIM(),
        "eta05": sd.DDIM(eta=0.5),
        "analytic": sd.analytic.AnalyticDPM(ms_eps, data_range=dr),
        "analytic_ddim": sd.analytic.AnalyticDDIM(ms_eps, data_range=dr),
        "final_noise": sd.DDPM(final_noise=True),
        "final_noise_ddpm_beta": sd.DDPM(large_variance=True, final_noise=True),
        "traj": sd.DDPM(),
        "ddim_traj": sd.DDIM(),
    }


@pytest.mark.parametrize("grid_name", ["uniform", "quadratic"])
def test_discrete_solvers_reproduce_0_1_bit_for_bit(setup, grid_name):
    _, sched, model, ms_eps = setup
    tau = jnp.asarray(Z[f"discrete_{grid_name}__tau"])
    for case, solver in _solvers(ms_eps).items():
        name = f"discrete_{grid_name}_{case}"
        traj = case.endswith("traj")
        for i, seed in enumerate(Z[f"{name}__seeds"]):
            x_T = jnp.asarray(Z[f"{name}__x_T"][i])
            key = jax.random.key(int(seed))
            res = sd.sample(key, sched, model, solver, tau, x_T, save_trajectory=traj)
            if case == "analytic":
                # 0.1's variances were formed eagerly, 0.2's inside the compiled sampler
                np.testing.assert_allclose(np.asarray(res.x), Z[f"{name}__out"][i], rtol=1e-13)
                continue
            assert_same(res.x, Z[f"{name}__out"][i], err_msg=name)
            if traj:
                assert_same(res.trajectory, Z[f"{name}__traj"][i], err_msg=name)


@pytest.mark.parametrize("case,lo,hi", [("clip", -1.0, 1.0), ("clip_tight", -0.5, 0.25)])
def test_clip_transform_matches_0_1_clip(setup, case, lo, hi):
    """0.1 clipped x0 inside the step; 0.2 clips it in the model (ClipX0), and the step reads
    the implied eps. The same maths, other rounding: 1e-12."""
    _, sched, model, _ = setup
    tau = jnp.asarray(Z["discrete_uniform__tau"])
    name = f"discrete_uniform_{case}"
    for i, seed in enumerate(Z[f"{name}__seeds"]):
        res = sd.sample(
            jax.random.key(int(seed)),
            sched,
            sd.ClipX0(model, lo, hi),
            sd.DDPM(),
            tau,
            jnp.asarray(Z[f"{name}__x_T"][i]),
        )
        np.testing.assert_allclose(np.asarray(res.x), Z[f"{name}__out"][i], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "case", ["default", "ddpm_beta", "eta05", "analytic", "gaussian", "decoder_var"]
)
def test_bound_of_a_chain_reproduces_0_1(setup, case):
    """The bound verb on the chain of the matching solver. KL terms are bit for bit; the decoder
    term is checked to 1e-12 (0.1 reflected the decoder mean about x0, which only matters in
    the edge bins; these x0 are interior)."""
    _, sched, model, ms_eps = setup
    tau = jnp.asarray(Z["vlb__tau"]) if "vlb__tau" in Z else sd.respace(1000, 10)
    solver = {
        "default": sd.DDPM(),
        "ddpm_beta": sd.DDPM(large_variance=True),
        "eta05": sd.DDIM(eta=0.5),
        "analytic": sd.analytic.AnalyticDPM(ms_eps, data_range=(-1.0, 1.0)),
        "gaussian": sd.DDPM(),
        "decoder_var": sd.DDPM(),
    }[case]
    chain = solver.chain(sched, tau)
    if case == "decoder_var":
        chain = sd.make_chain(sched, tau, chain.lam2, chain.variances, decoder_var=1e-3)
    levels = None if case == "gaussian" else 256
    name = f"vlb_{case}"
    # compiled once for the seeds (eagerly, the bound's lax.scan is traced and compiled anew on
    # every call); eager as in 0.1 for the bit-for-bit run
    bound = sd.variational_bound if BITWISE else eqx.filter_jit(sd.variational_bound)
    for i, seed in enumerate(Z[f"{name}__seeds"]):
        x0 = jnp.asarray(Z[f"{name}__x0"][i])
        b = bound(jax.random.key(int(seed)), sched, model, chain, x0, levels=levels)
        tol = 1e-13 if case == "analytic" else 0.0
        if tol or not BITWISE:
            np.testing.assert_allclose(np.asarray(b.kl), Z[f"{name}__kl"][i], rtol=tol or 1e-14)
        else:
            assert_same(b.kl, Z[f"{name}__kl"][i], err_msg=name)
        assert_same(b.prior, Z[f"{name}__prior"][i], err_msg=name)
        np.testing.assert_allclose(
            np.asarray(b.decoder), Z[f"{name}__decoder"][i], rtol=1e-12, err_msg=name
        )


# The solvers and the 10-step grid of the 0.1 cases above (default, eta05, ddpm_beta): each
# verb solve here is the very program compiled there (one xdist group: one worker)
@pytest.mark.parametrize("solver", [sd.DDPM(), sd.DDIM(eta=0.5), sd.DDPM(large_variance=True)])
def test_step_api_in_a_scan_equals_the_verb(setup, solver):
    _, sched, model, _ = setup
    tau = sd.respace(1000, 10, "quadratic")
    np.testing.assert_array_equal(np.asarray(tau), Z["discrete_quadratic__tau"])
    x_T = jax.random.normal(jax.random.key(7), (2,))
    key = jax.random.key(8)
    K = tau.shape[0] - 1
    verb = sd.sample(key, sched, model, solver, tau, x_T)

    state = solver.init(sched, model, tau, x_T)

    def body(state, i):
        state, info = solver.step(solver.step_key(key, i, K), state)
        return state, info.x0

    state, x0s = lax.scan(body, state, jnp.arange(K))
    np.testing.assert_allclose(np.asarray(state.x), np.asarray(verb.x), rtol=0, atol=1e-13)
    assert x0s.shape == (K, 2)
    assert verb.stats["nfe"] == K


def test_decoder_mean_is_x0_hat_in_edge_bins(setup):
    """Regression for 0.1's reflected decoder mean: at an edge pixel (x0 = -1) the decoder term
    must be -log P(x0 | N(x0_hat, v)) with x0_hat the model's prediction at x_{tau_1}
    (computed here directly from the model, not through the bound)."""
    _, sched, model, _ = setup
    tau = sd.respace(1000, 10)
    chain = sd.DDPM(large_variance=True).chain(sched, tau)
    decoder_var = chain.decoder_var
    assert decoder_var is not None  # DDPM(large_variance=True) sets one
    n = int(tau[1])

    # the bound and the reference each compiled whole (eagerly, the bound's scan is traced and
    # every op of both compiles on its own: ~100 small programs)
    bound = jax.jit(lambda key, x0: sd.variational_bound(key, sched, model, chain, x0, levels=17))

    @jax.jit
    def reference(key, x0):
        eps = jax.random.normal(jax.random.split(key, 10)[0], (2,))
        alpha, sigma = sched.marginal(n)
        x_n = alpha * x0 + sigma * eps
        x0_hat = model.x0(sched, n, x_n)
        return -sd.discretized_gaussian_log_likelihood(x0, x0_hat, decoder_var, 17)

    x0 = jnp.array([-1.0, 0.5])
    key = jax.random.key(3)
    np.testing.assert_allclose(float(bound(key, x0).decoder), float(reference(key, x0)), rtol=1e-10)


def test_bad_values_name_the_argument(setup):
    gm, sched, model, _ = setup
    x_T = jnp.zeros(2)
    tau = sd.respace(1000, 5)
    with pytest.raises(TypeError, match="EpsModel"):
        sd.sample(None, sched, gm.eps_fn(sd.VPSDE()), sd.DDIM(), tau, x_T)
    # the pyright-ignored calls here are ill-typed on purpose: scoredyn's own errors
    with pytest.raises(TypeError, match="solver"):
        sd.sample(None, sched, model, "ddim", tau, x_T)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="process"):
        sd.sample(None, "linear", model, sd.DDIM(), tau, x_T)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        sd.sample(None, sd.VPSDE(), model, sd.DDIM(), tau, x_T)
    with pytest.raises(ValueError, match="key"):
        sd.sample(None, sched, model, sd.DDPM(), tau, x_T)
    with pytest.raises(ValueError, match="eta"):
        sd.DDIM(eta=-1.0)
    with pytest.raises(TypeError, match="model"):
        sd.sample(None, sched, sd.EpsModel(lambda t, x: x[:1]), sd.DDIM(), tau, x_T)
    with pytest.raises(TypeError, match="chain"):
        sd.variational_bound(jax.random.key(0), sched, model, tau, x_T)  # pyright: ignore[reportArgumentType]


def test_models_convert_through_alpha_sigma(setup):
    """Every wrapper gives the exact oracle's eps at any (alpha, sigma), VP or not."""
    gm, _, _, _ = setup
    x = jnp.array([0.3, -0.2])

    @jax.jit  # one program for the three (alpha, sigma) (eagerly, every op compiles on its own)
    def conversions(alpha, sigma):
        eps = gm.eps_at(alpha, sigma, x)
        mean, _ = gm.posterior_moments(alpha, sigma, x)
        score = gm.score_at(alpha, sigma, x)
        v = alpha * eps - sigma * mean
        got = [
            (m.eps_at(alpha, sigma, 0.0, x), m.x0_at(alpha, sigma, 0.0, x))
            + (m.score_at(alpha, sigma, 0.0, x), m.v_at(alpha, sigma, 0.0, x))
            for m in (
                sd.EpsModel(lambda t, x: gm.eps_at(alpha, sigma, x)),
                sd.ScoreModel(lambda t, x: gm.score_at(alpha, sigma, x)),
                sd.X0Model(lambda t, x: gm.posterior_moments(alpha, sigma, x)[0]),
                sd.VModel(
                    lambda t, x: (
                        alpha * gm.eps_at(alpha, sigma, x)
                        - sigma * gm.posterior_moments(alpha, sigma, x)[0]
                    )
                ),
            )
        ]
        return (eps, mean, score, v), got

    for alpha, sigma in [(0.8, 0.6), (1.0, 2.5), (0.3, 0.1)]:
        want, got = conversions(alpha, sigma)
        for m_got in got:  # eps, x0, score and v of each wrapper
            for a, b in zip(m_got, want):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.CosineVPSDE()])
def test_time_at_log_snr_inverts_log_snr(sde):
    t = jnp.linspace(1e-4, sde.T, 33)

    @jax.jit  # one program (op by op, every eager op of the inverse compiles on its own)
    def inverse(t):
        lam = jax.vmap(sde.log_snr)(t)
        g = jax.grad(lambda l: sde.time_at_log_snr(l))(lam[10])
        return sde.time_at_log_snr(lam), g, jax.grad(sde.log_snr)(t[10])

    back, g, dl = inverse(t)
    np.testing.assert_allclose(np.asarray(back), np.asarray(t), atol=1e-11)
    # and its derivative is 1 / lambda'(t) (inverse function theorem)
    np.testing.assert_allclose(float(g), 1.0 / float(dl), rtol=1e-7)


def test_discrete_schedule_is_a_process():
    sched = sd.DiscreteSchedule.linear(100)
    n = np.arange(1, 101)

    @jax.jit  # one program (op by op, every eager op compiles on its own)
    def facts(n):
        a, s = sched.marginal(40)
        return sched.time_at_log_snr(sched.log_snr(n)), sched.log_snr(40), jnp.log(a**2 / s**2)

    back, lam40, want40 = facts(n)
    np.testing.assert_allclose(np.asarray(back), n, atol=1e-9)
    np.testing.assert_allclose(float(lam40), float(want40), rtol=1e-12)
    assert isinstance(sched, sd.AbstractProcess) and isinstance(sd.VPSDE(), sd.AbstractProcess)
