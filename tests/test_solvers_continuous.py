"""The continuous-time solvers as values: sd.ODE, sd.DiffraxSDE, sd.EulerMaruyama,
sd.PredictorCorrector and sd.DPMSolver.

(a) bit-identity with the pre-0.2 samplers, read from the frozen fixtures
    tests/fixtures/legacy_samplers.{npz,json} (written at commit e30de8d by
    tests/fixtures/make_legacy_samplers.py; the old verbs are wrappers of the new solvers now,
    so they cannot serve as their own reference). The fixtures were compiled with XLA's default
    flags; the suite compiles at -O0 (conftest), where LLVM contracts other multiply-adds and
    the last bits move (and adaptive step-size control carries them further), so by default the
    check is to a stated tolerance. Bit for bit (as in tests/test_sampling_layer.py):
        XLA_FLAGS=--xla_backend_optimization_level=3 SCOREDYN_BITWISE=1 pytest <this file>
(b) the step API driven by a lax.scan against the one-verb solve;
(c) a Monte Carlo check of EulerMaruyama (and DiffraxSDE) against a Gaussian mixture;
(d) the adaptive ODE under jit(vmap) (every solver under jit, vmap, grad, float32 and float64:
    its case in tests/test_transforms.py);
(e) bad input.
"""

import functools
import json
import os
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, compiled_o3, mixture_2d
from scoredyn._solve.dpm_solver import _half_log_snr, _stage_fractions, time_grid
from scoredyn._solve.verbs import decode as decode_, encode as encode_

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
BITWISE = os.environ.get("SCOREDYN_BITWISE") == "1"
# Largest deviations measured at -O0: 1 ulp on the prior draw and fixed-step paths; on adaptive
# Tsit5 solves (the step-size controller carries the last bits on) 2.5e-14 at the end point and
# 1.9e-12 on interpolated save points of values up to 40.
FIXED, ADAPTIVE = 1e-14, 1e-11
# tests sharing a compiled solve run on one xdist worker (`make test`: --dist loadgroup), so that
# the solve is compiled once per suite run, not once per worker
DIFFRAX_GROUP = pytest.mark.xdist_group("solvers-continuous-diffrax-sde")
# sd.ODE() on sd.VPSDE() along [T, t_eps]: ode verb, encode + decode (one program for the three)
ODE_VP_GROUP = pytest.mark.xdist_group("solvers-continuous-ode-vp")
# the step API's ODE cases' one-example solves, reused by test_ode_step_stats_add_up (constant
# steps) and test_adaptive_ode_under_jit_vmap (adaptive)
ODE_CONSTANT_GROUP = pytest.mark.xdist_group("solvers-continuous-ode-constant")
ODE_ADAPTIVE_GROUP = pytest.mark.xdist_group("solvers-continuous-ode-adaptive")
# DPMSolver(order) on a 10-step grid: one verb solve per order for the three skip types
DPM_LEGACY_GROUP = pytest.mark.xdist_group("solvers-continuous-dpm-legacy")


def assert_same(actual, desired, tol):
    """Bit for bit with SCOREDYN_BITWISE=1 (XLA's default flags), else to `tol` (abs and rel)."""
    if BITWISE:
        np.testing.assert_array_equal(np.asarray(actual), desired)
    else:
        np.testing.assert_allclose(np.asarray(actual), desired, rtol=tol, atol=tol)


NPZ = os.path.join(FIXTURES, "legacy_samplers.npz")
JSON = os.path.join(FIXTURES, "legacy_samplers.json")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def legacy():
    if not (os.path.exists(NPZ) and os.path.exists(JSON)):
        pytest.skip("tests/fixtures/legacy_samplers.npz is missing (make_legacy_samplers.py)")
    with open(JSON) as f:
        meta = json.load(f)
    arrays = dict(np.load(NPZ))
    gm = sd.toy.GaussianMixture(
        jnp.asarray(arrays["common__mixture_weights"]),
        jnp.asarray(arrays["common__mixture_means"]),
        jnp.asarray(arrays["common__mixture_covs"]),
    )
    return {"a": arrays, "cases": {c["name"]: c for c in meta["cases"]}, "gm": gm}


def _case(legacy, name):
    assert name in legacy["cases"], name
    a = legacy["a"]
    return {k[len(name) + 2 :]: v for k, v in a.items() if k.startswith(name + "__")}


SDES = {"vp": (sd.VPSDE(), 1e-3), "ve": (sd.VESDE(), 1e-5)}


def _prior(sde, key):
    """The prior draw as the old kernels made it: compiled (an eager, op-by-op draw can differ
    in the last bit, as XLA fuses the compiled one); compiled once per SDE."""
    return _prior_draw(sde)(key)


@functools.cache
def _prior_draw(sde):
    return jax.jit(lambda k: sde.prior_sample(k, (2,), jnp.float64))


# ------------------------------------------------------------ (a) bit-identity: the ODE
@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("variant", ["default", "heun", "ts_stats"])
def test_sample_ode_legacy_bits(legacy, name, variant):
    """sd.sample_ode, now a wrapper of sd.sample with sd.ODE, returns pre-0.2's floats."""
    sde, t_eps = SDES[name]
    score = legacy["gm"].score_fn(sde)
    c = _case(legacy, f"ode_{name}_{variant}")
    kw: dict[str, Any] = {}
    if variant == "heun":
        kw = dict(solver=diffrax.Heun(), stepsize_controller=diffrax.ConstantStepSize(), dt0=-0.01)
    elif variant == "ts_stats":
        kw = dict(ts=jnp.asarray(c["ts"]), return_stats=True)
    for j, seed in enumerate(c["seeds"]):
        out = sd.sample_ode(jax.random.key(int(seed)), sde, score, (2,), **kw)
        if variant == "ts_stats":
            out, stats = out
            assert set(stats) == {"nfe", "num_steps", "num_accepted_steps", "num_rejected_steps"}
            for k, v in stats.items():
                assert int(v) == int(c[f"stats_{k}"][j]), k
        assert_same(out, c["out"][j], FIXED if variant == "heun" else ADAPTIVE)


@pytest.mark.parametrize("name", [pytest.param("vp", marks=ODE_VP_GROUP), "ve"])
def test_ode_verb_legacy_bits(legacy, name):
    """sd.sample(key, sde, ScoreModel(score), sd.ODE(), [T, t_eps], x_T) with x_T the prior draw
    of the old kernel (sde.prior_sample(key, shape)) is old sd.sample_ode(key, ...), bit for bit,
    also eagerly with a run-time grid."""
    sde, t_eps = SDES[name]
    model = sd.ScoreModel(legacy["gm"].score_fn(sde))
    c = _case(legacy, f"ode_{name}_default")
    for j, seed in enumerate(c["seeds"]):
        key = jax.random.key(int(seed))
        x_T = _prior(sde, key)
        assert_same(x_T, c["x_T"][j], FIXED)
        res = sd.sample(key, sde, model, sd.ODE(), jnp.array([sde.T, t_eps]), x_T)
        assert_same(res.x, c["out"][j], ADAPTIVE)
        assert set(res.stats) == {"nfe", "num_steps", "num_accepted_steps", "num_rejected_steps"}


def test_ode_verb_constant_step_bits(legacy):
    """A fixed-step ODE solve is bit-identical when the grid is a constant of the compiled
    program (as T and t_eps were in the old kernel); a run-time grid differs by ~1 ulp."""
    sde, t_eps = SDES["vp"]
    model = sd.ScoreModel(legacy["gm"].score_fn(sde))
    c = _case(legacy, "ode_vp_heun")
    ode = sd.ODE(diffrax.Heun(), diffrax.ConstantStepSize(), dt0=0.01)  # |dt0|: sign follows grid
    grid = np.array([sde.T, t_eps])
    run = jax.jit(lambda x: sd.sample(None, sde, model, ode, grid, x).x)
    worst = 0.0
    for j in range(len(c["seeds"])):
        x_T = jnp.asarray(c["x_T"][j])
        assert_same(run(x_T), c["out"][j], FIXED)
        eager = sd.sample(None, sde, model, ode, jnp.asarray(grid), x_T).x
        worst = max(worst, float(np.max(np.abs(np.asarray(eager) - c["out"][j]))))
    assert worst <= FIXED


@pytest.mark.parametrize("variant", [pytest.param("default", marks=ODE_VP_GROUP), "ts"])
def test_encode_decode_legacy_bits(legacy, variant):
    """The new encode/decode verbs with sd.ODE() equal old sd.encode / sd.decode (flow_map)."""
    sde, t_eps = SDES["vp"]
    model = sd.ScoreModel(legacy["gm"].score_fn(sde))
    ce = _case(legacy, f"encode_vp_{variant}")
    cd = _case(legacy, f"decode_vp_{variant}")
    for j in range(len(ce["seeds"])):
        if variant == "default":
            grid = jnp.array([sde.T, t_eps])
            z = encode_(sde, model, sd.ODE(), grid, jnp.asarray(ce["x0"][j])).x
            x = decode_(sde, model, sd.ODE(), grid, jnp.asarray(cd["z"][j])).x
        else:  # save times: the grid is [T, *ts, t_eps]; the ODE saves at its interior points
            # (grids and slices in NumPy: the same floats, without an eager program per op)
            ts_enc = ce["ts"]  # increasing
            grid = np.concatenate([[sde.T], ts_enc[::-1], [t_eps]])
            res = encode_(
                sde, model, sd.ODE(), grid, jnp.asarray(ce["x0"][j]), save_trajectory=True
            )
            assert res.trajectory is not None
            z = np.asarray(res.trajectory)[1:-1][::-1]  # indexed like the grid; old ts: t_eps -> T
            ts_dec = cd["ts"]  # decreasing
            grid = np.concatenate([[sde.T], ts_dec, [t_eps]])
            res = decode_(sde, model, sd.ODE(), grid, jnp.asarray(cd["z"][j]), save_trajectory=True)
            assert res.trajectory is not None
            x = np.asarray(res.trajectory)[1:-1]
        assert_same(z, ce["out"][j], ADAPTIVE)
        assert_same(x, cd["out"][j], ADAPTIVE)


# ----------------------------------------------------------- (a) bit-identity: the SDE
@pytest.mark.parametrize("variant", ["default", "ts"])
def test_sample_sde_legacy_bits(legacy, variant):
    """`solver=diffrax.Euler()` is 0.1's `sample_sde` bit for bit (its default until 0.2; the
    default is now the tree-free `sd.EulerMaruyama()`, test_batched.py); with save times `ts`
    the default is still `diffrax.Euler()`."""
    sde, _ = SDES["vp"]
    score = legacy["gm"].score_fn(sde)
    c = _case(legacy, f"sde_vp_{variant}")
    kw: dict[str, Any] = {"num_steps": 50}
    if variant == "default":
        kw["solver"] = diffrax.Euler()
    if variant == "ts":
        kw["ts"] = c["ts"]
    for j, seed in enumerate(c["seeds"]):
        out = sd.sample_sde(jax.random.key(int(seed)), sde, score, (2,), **kw)
        assert_same(out, c["out"][j], FIXED)


@DIFFRAX_GROUP
def test_diffrax_sde_verb_legacy_bits(legacy):
    """old sd.sample_sde(key, ...) == sd.sample(k_bm, ..., sd.DiffraxSDE(), grid, x_T) with
    k_prior, k_bm = split(key) and x_T = sde.prior_sample(k_prior, shape): bit for bit when the
    grid is a constant of the compiled program (the old kernel had T and t_eps as constants, and
    XLA folds the step-size arithmetic on constants); to 1e-14 with a run-time grid."""
    sde, t_eps = SDES["vp"]
    model = sd.ScoreModel(legacy["gm"].score_fn(sde))
    c = _case(legacy, "sde_vp_default")
    grid = np.linspace(sde.T, t_eps, 51)
    grid[-1] = t_eps
    run = jax.jit(lambda k, x: sd.sample(k, sde, model, sd.DiffraxSDE(), grid, x).x)
    worst = 0.0
    for j, seed in enumerate(c["seeds"]):
        k_prior, k_bm = jax.random.split(jax.random.key(int(seed)))
        x_T = _prior(sde, k_prior)
        assert_same(x_T, c["x_T"][j], FIXED)
        assert_same(run(k_bm, x_T), c["out"][j], FIXED)
        eager = sd.sample(k_bm, sde, model, sd.DiffraxSDE(), jnp.asarray(grid), x_T)
        worst = max(worst, float(np.max(np.abs(np.asarray(eager.x) - c["out"][j]))))
        assert int(eager.stats["num_steps"]) == int(eager.stats["nfe"]) == 50
    assert worst <= FIXED


@pytest.mark.parametrize("nc", [1, 0])
def test_sample_pc_legacy_bits(legacy, nc):
    """old sd.sample_pc(key, ...) == sd.sample(k_loop, ..., sd.PredictorCorrector(), grid, x_T)
    with k_prior, k_loop = split(key), x_T = prior_sample(k_prior), grid = linspace(T, t_eps)."""
    sde, t_eps = SDES["vp"]
    score = legacy["gm"].score_fn(sde)
    c = _case(legacy, f"pc_vp_corr{nc}")
    pc = sd.PredictorCorrector(num_corrector_steps=nc)
    grid = jnp.linspace(sde.T, t_eps, 51)
    for j, seed in enumerate(c["seeds"]):
        key = jax.random.key(int(seed))
        out = sd.sample_pc(key, sde, score, (2,), num_steps=50, num_corrector_steps=nc)
        assert_same(out, c["out"][j], FIXED)
        k_prior, k_loop = jax.random.split(key)
        x_T = _prior(sde, k_prior)
        res = sd.sample(k_loop, sde, sd.ScoreModel(score), pc, grid, x_T)
        assert_same(res.x, c["out"][j], FIXED)
        assert res.stats["nfe"] == 50 * (1 + nc)


@DPM_LEGACY_GROUP
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("skip", ["logSNR", "time_uniform", "time_quadratic"])
def test_dpm_solver_legacy_bits(legacy, order, skip):
    """old sd.dpm_solver(sde, eps, x_T, num_steps=10, order, skip) == sd.sample(None, sde,
    sd.EpsModel(eps), sd.DPMSolver(order), time_grid(...), x_T), bit for bit, eagerly too."""
    sde, t_eps = SDES["vp"]
    eps = legacy["gm"].eps_fn(sde)
    c = _case(legacy, f"dpm_vp_o{order}_{skip}")
    grid = time_grid(sde, 10, t_eps, skip, jnp.float64)
    for j in range(len(c["seeds"])):
        x_T = jnp.asarray(c["x_T"][j])
        out = sd.dpm_solver(sde, eps, x_T, num_steps=10, order=order, skip=skip)
        assert_same(out, c["out"][j], FIXED)
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.DPMSolver(order), grid, x_T)
        assert_same(res.x, c["out"][j], FIXED)
        assert res.stats == {"nfe": 10 * order, "num_steps": 10}


def test_sample_dpm_solver_legacy_bits(legacy):
    sde, _ = SDES["vp"]
    eps = legacy["gm"].eps_fn(sde)
    c = _case(legacy, "sample_dpm_vp_o3")
    for j, seed in enumerate(c["seeds"]):
        out = sd.sample_dpm_solver(jax.random.key(int(seed)), sde, eps, (2,), num_steps=10, order=3)
        assert_same(out, c["out"][j], FIXED)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_dpm_stage_times_closed_form_agree(sde):
    """The stage times DPMSolver finds by bisection (kept for 0.1's bits) agree with the
    closed-form inverse `time_at_log_snr` (bisection for sub-VP) to 1e-12, and so do the
    samples of DPM-Solver-3 (float64)."""
    solver = sd.DPMSolver(3)

    @jax.jit  # the mixture, grid and start built inside (eagerly, each op compiles on its own)
    def both(key):
        eps = sd.EpsModel(mixture_2d().eps_fn(sde))
        grid = sd.grids.log_snr(sde, 10, t_eps=1e-3)
        x_T = jax.random.normal(key, (2,), jnp.float64)
        st = solver.init(sde, eps, grid, x_T)
        l_s = _half_log_snr(sde, st.t_s)
        closed = tuple(sde.time_at_log_snr(2.0 * (l_s + r * st.h)) for r in _stage_fractions(3))
        st2 = eqx.tree_at(lambda s: s.stage_t, st, closed)
        # one scan over the two states (vmapped), not two scans: one loop body to compile
        stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), st, st2)
        xs = jax.vmap(lambda s: _scan(solver, None, s, 10))(stacked)
        return st.stage_t, closed, xs[0], xs[1]

    bisected, closed, x1, x2 = both(jax.random.key(7))
    for a, b in zip(bisected, closed):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x1, x2, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ (b) the step API
def _scan(solver, key, state, K):
    def body(st, i):
        k = None if key is None else solver.step_key(key, i, K)
        st, _ = solver.step(k, st)
        return st, None

    state, _ = lax.scan(body, state, jnp.arange(K, dtype=jnp.int32))
    return state.x


def _setup(sde=None):
    sde = sd.VPSDE() if sde is None else sde
    gm = mixture_2d()
    return sde, gm, sd.ScoreModel(gm.score_fn(sde)), sd.EpsModel(gm.eps_fn(sde))


STEP_CASES = {
    "em": (lambda: sd.EulerMaruyama(), "quadratic", 0.0),
    "em_final_noise": (lambda: sd.EulerMaruyama(final_noise=True), "quadratic", 0.0),
    "pc": (lambda: sd.PredictorCorrector(num_corrector_steps=2), "quadratic", 0.0),
    "dpm2": (lambda: sd.DPMSolver(2), "log_snr", 1e-13),  # solve scans the tables, step indexes
    "dpm3": (lambda: sd.DPMSolver(3), "log_snr", 1e-13),
    "diffrax_sde": (lambda: sd.DiffraxSDE(), "uniform", 1e-12),
    "ode_constant": (
        lambda: sd.ODE(diffrax.Tsit5(), diffrax.ConstantStepSize(), dt0=(1.0 - 1e-3) / 20),
        "uniform",
        1e-12,
    ),
    "ode_adaptive": (lambda: sd.ODE(), "log_snr", 1e-4),
}
# DiffraxSDE takes K = 50 steps: its solve without a trajectory is then the very program of
# test_diffrax_sde_verb_legacy_bits (a 51-point grid), compiled once for both when they run in one
# process (one xdist group)
STEPS = {"diffrax_sde": 50}
STEP_GROUPS = {
    "diffrax_sde": DIFFRAX_GROUP,
    "ode_constant": ODE_CONSTANT_GROUP,
    "ode_adaptive": ODE_ADAPTIVE_GROUP,
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[STEP_GROUPS[n]] if n in STEP_GROUPS else []) for n in STEP_CASES],
)
def test_step_api_scan_equals_verb(name):
    """init + a lax.scan of step (with step_key) gives the one-verb result: exactly for the
    scanned solvers, to 1e-12 for one-diffeqsolve solvers on matching steps, and to the
    tolerance for an adaptive ODE (each step restarts its step size)."""
    make, grid_name, tol = STEP_CASES[name]
    K = STEPS.get(name, 20)
    solver = make()
    sde, _, score_model, eps_model = _setup()
    model = eps_model if isinstance(solver, sd.DPMSolver) else score_model
    grid = getattr(sd.grids, grid_name)(sde, K, t_eps=1e-3)
    key = jax.random.key(3)
    x_T = sde.prior_sample(jax.random.key(4), (2,), jnp.float64)
    k = key if solver.is_stochastic(sde, grid) else None
    res = sd.sample(k, sde, model, solver, grid, x_T, save_trajectory=True)
    run = jax.jit(lambda x: _scan(solver, k, solver.init(sde, model, grid, x), K))
    x = run(x_T)
    if tol == 0.0:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(res.x))
    else:
        np.testing.assert_allclose(x, res.x, rtol=0, atol=tol)
    # the trajectory is indexed like the grid and ends at x
    assert res.trajectory is not None and res.trajectory.shape == (K + 1, 2)
    np.testing.assert_array_equal(np.asarray(res.trajectory[0]), np.asarray(x_T))
    np.testing.assert_array_equal(np.asarray(res.trajectory[-1]), np.asarray(res.x))
    # x does not depend on save_trajectory (diffrax saves differently; the scans do not). The
    # two are different XLA programs: equal bits are up to the code generator (they are equal
    # under XLA's default one; the suite compiles with another, conftest.py), so to rounding.
    if isinstance(solver, (sd.ODE, sd.DiffraxSDE)):
        res0 = sd.sample(k, sde, model, solver, grid, x_T)
        np.testing.assert_allclose(np.asarray(res0.x), np.asarray(res.x), rtol=1e-12, atol=0)


@ODE_CONSTANT_GROUP
def test_ode_step_stats_add_up():
    """With constant steps, the step loop takes as many diffrax steps as the one solve."""
    sde, _, model, _ = _setup()
    ode = sd.ODE(diffrax.Tsit5(), diffrax.ConstantStepSize(), dt0=(1.0 - 1e-3) / 20)
    grid = sd.grids.uniform(sde, 20)
    x_T = jnp.array([0.3, -0.4])
    res = sd.sample(None, sde, model, ode, grid, x_T)
    st = ode.init(sde, model, grid, x_T)
    step = eqx.filter_jit(ode.step)  # one program for the 20 calls (eagerly, ~20 small ones)
    for _ in range(20):
        st, info = step(None, st)
    assert int(st.stats["num_steps"]) == int(res.stats["num_steps"]) == 20
    assert int(st.stats["nfe"]) == 20 * 6 + 20  # FSAL per solve; one solve per step
    assert int(res.stats["nfe"]) == 20 * 6 + 1


def test_ode_encode_decode_roundtrip():
    sde, gm, model, _ = _setup()
    grid = jnp.array([sde.T, 1e-3])
    ode = sd.ODE(stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9))
    x0 = jax.jit(lambda k: gm.sample(k, 1)[0])(jax.random.key(0))  # one program, not op by op
    z = encode_(sde, model, ode, grid, x0)
    back = decode_(sde, model, ode, grid, z.x)
    np.testing.assert_allclose(back.x, x0, atol=1e-6)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_(sde, model, sd.DPMSolver(), grid, x0)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_(sde, model, sd.EulerMaruyama(), grid, x0)


def test_em_single_step_is_deterministic():
    """K = 1 without final noise draws nothing: sample(None, ...) works and is the mean."""
    sde, _, model, _ = _setup()
    grid = jnp.array([0.5, 0.4])
    x = jnp.array([0.1, 0.2])
    assert not sd.EulerMaruyama().is_stochastic(sde, grid)
    assert sd.EulerMaruyama(final_noise=True).is_stochastic(sde, grid)
    out = sd.sample(None, sde, model, sd.EulerMaruyama(), grid, x).x

    @jax.jit  # the Euler step by hand, one program (eagerly, each op compiles on its own)
    def mean(x):
        f, g = sde.coefficients(0.5)
        return x - 0.1 * (f * x - g**2 * model.score(sde, 0.5, x))

    np.testing.assert_allclose(out, mean(x), rtol=1e-14)


# ------------------------------------------------------------ (c) Monte Carlo: EM
def _moments(gm):
    w, m, c = gm.weights, gm.means, gm.covs
    mean = jnp.einsum("k,ki->i", w, m)
    second = jnp.einsum("k,kij->ij", w, c + jnp.einsum("ki,kj->kij", m, m))
    return mean, second - jnp.outer(mean, mean)


@pytest.mark.slow
def test_euler_maruyama_monte_carlo():
    """Fixed keys, n = 4000 samples, exact mixture score: the sample mean and covariance of
    EulerMaruyama (K = 200 steps on a non-uniform, quadratic grid) and of DiffraxSDE (Euler on a
    uniform grid of K = 100 steps: the same scheme with other noise; its Brownian tree makes it
    ~10x dearer per step, so half the steps) match the exact moments of p_{t_eps}, mean to 0.06
    and covariance to 0.08 (about 3.5 and 3 Monte Carlo standard errors; the measured errors are
    below 0.018 and 0.012 for EulerMaruyama, 0.024 and 0.02 for DiffraxSDE at K = 100: the O(h)
    bias of 100 steps is still well inside the Monte Carlo error)."""
    sde, gm, model, _ = _setup()
    t_eps, n = 1e-3, 4000

    @jax.jit  # the exact moments, the starts, the keys and both grids: one program
    def setup():
        mean, cov = _moments(gm.perturbed(*sde.marginal(t_eps)))
        x_T = jax.vmap(lambda k: sde.prior_sample(k, (2,), jnp.float64))(
            jax.random.split(jax.random.key(11), n)
        )
        keys = jax.random.split(jax.random.key(12), n)
        grids = sd.grids.quadratic(sde, 200, t_eps=t_eps), sd.grids.uniform(sde, 100, t_eps=t_eps)
        return mean, cov, x_T, keys, grids

    mean, cov, x_T, keys, (quadratic, uniform) = setup()
    mean, cov = np.asarray(mean), np.asarray(cov)
    for solver, grid, opt in (
        (sd.EulerMaruyama(), quadratic, "0"),
        (sd.DiffraxSDE(), uniform, "1"),
    ):
        run = lambda k, x, g, solver=solver: sd.sample(k, sde, model, solver, g, x).x
        # The DiffraxSDE program is run-time bound (4000 Brownian-tree paths: ~6.6 CPU-s at the
        # suite's LLVM -O0, ~2 s above it), so it is compiled at -O1 (-O3 runs no faster and
        # compiles this large program ~3 CPU-s more slowly)
        draw = compiled_o3(jax.vmap(run, in_axes=(0, 0, None)), keys, x_T, grid, level=opt)
        xs = np.asarray(draw(keys, x_T, grid))
        assert np.all(np.isfinite(xs))
        np.testing.assert_allclose(xs.mean(0), mean, atol=0.06)
        np.testing.assert_allclose(np.cov(xs.T), cov, atol=0.08)


# ------------------------------------------------------- (d) the adaptive ODE under vmap
SOLVERS = {
    "ode": (lambda: sd.ODE(), "log_snr"),
    "diffrax_sde": (lambda: sd.DiffraxSDE(), "uniform"),
    "em": (lambda: sd.EulerMaruyama(), "quadratic"),
    "pc": (lambda: sd.PredictorCorrector(), "uniform"),
    "dpm": (lambda: sd.DPMSolver(3), "log_snr"),
}


@ODE_ADAPTIVE_GROUP
def test_adaptive_ode_under_jit_vmap():
    """The adaptive ODE (Tsit5 with a PID controller: a while loop whose number of steps depends
    on the example) under jit(vmap) over starting points: finite float64 samples, each equal to
    its one-example call.

    The other solvers of SOLVERS (and the ODE with constant steps) are under jit, vmap (equal to
    the separate calls), grad, float32 and float64 in their shared case of test_transforms.py;
    this adaptive configuration is not, so it is checked here. The grid is that of
    test_step_api_scan_equals_verb[ode_adaptive], whose one-example solve this one reuses."""
    sde, _, model, _ = _setup()
    solver = sd.ODE()
    grid = sd.grids.log_snr(sde, 20, t_eps=1e-3)
    x_T = jax.jit(  # one program (eagerly, each op of the vmapped draw compiles on its own)
        lambda key: jax.vmap(lambda k: sde.prior_sample(k, (2,), jnp.float64))(
            jax.random.split(key, 3)
        )
    )(jax.random.key(0))
    # the grid enters as an argument, as in the eager call (closed over, XLA folds it)
    run = lambda x, g: sd.sample(None, sde, model, solver, g, x).x
    xs = jax.jit(jax.vmap(run, in_axes=(0, None)))(x_T, grid)
    assert xs.shape == (3, 2) and xs.dtype == jnp.float64
    assert bool(jnp.all(jnp.isfinite(xs)))
    for i in (0, 2):
        one = sd.sample(None, sde, model, solver, grid, x_T[i]).x
        np.testing.assert_allclose(xs[i], one, rtol=1e-12, atol=1e-12)


def test_pc_axis_name_under_vmap():
    """axis_name averages the Langevin norms over a named vmap axis (through sd.sample)."""
    sde, _, model, _ = _setup()
    grid = sd.grids.uniform(sde, 10)
    pc = sd.PredictorCorrector(axis_name="batch")

    @jax.jit  # the keys and starts in one program (eagerly, each vmapped op compiles on its own)
    def starts(key):
        keys = jax.random.split(key, 8)
        return keys, jax.vmap(lambda k: sde.prior_sample(k, (2,)))(keys)

    keys, x_T = starts(jax.random.key(0))
    xs = jax.vmap(lambda k, x: sd.sample(k, sde, model, pc, grid, x).x, axis_name="batch")(
        keys, x_T
    )
    assert xs.shape == (8, 2) and bool(jnp.all(jnp.isfinite(xs)))


# ------------------------------------------------------------------------ (e) bad input
ALL = [make for make, _ in SOLVERS.values()]


@pytest.mark.parametrize("make", ALL, ids=list(SOLVERS))
def test_discrete_schedule_is_refused(make):
    """A DiscreteSchedule is refused with a TypeError naming `process`, by the solver and so by
    the verb (which asks the solver before calling the model)."""
    sched = sd.DiscreteSchedule.linear(100)
    model = sd.EpsModel(lambda t, x: x)
    grid, x = jnp.array([1.0, 0.5]), jnp.zeros(2)
    with pytest.raises(TypeError, match="`process`"):
        make().is_stochastic(sched, grid)
    with pytest.raises(TypeError, match="`process`"):
        make().init(sched, model, grid, x)
    with pytest.raises(TypeError, match="`process`"):
        sd.sample(jax.random.key(0), sched, model, make(), grid, x)


@pytest.mark.parametrize("make", ALL, ids=list(SOLVERS))
@pytest.mark.parametrize(
    "grid",
    [[1.0, 0.3, 0.5, 0.001], [0.5, 0.5, 0.001], [1.5, 0.5, 0.1], [0.5, 0.5]],
    ids=["non-monotone", "tie", "outside", "empty"],
)
def test_bad_grid_is_refused(make, grid):
    """A concrete bad grid raises ValueError naming `grid`, from the solver and from the verb
    (before anything is compiled). The ODE tolerates inner ties, a zero-length step; a grid with
    equal ends it refuses."""
    sde, _, model, _ = _setup()
    solver = make()
    grid = jnp.asarray(grid)
    x = jnp.zeros(2)
    if isinstance(solver, sd.ODE) and grid.shape[0] == 3 and float(grid[0]) == float(grid[1]):
        assert not solver.is_stochastic(sde, grid)  # a tie is a zero-length step for the ODE
        return
    with pytest.raises(ValueError, match="`grid`"):
        solver.is_stochastic(sde, grid)
    with pytest.raises(ValueError, match="`grid`"):
        solver.init(sde, model, grid, x)
    with pytest.raises(ValueError, match="`grid`"):
        sd.sample(jax.random.key(0), sde, model, solver, grid, x)


def test_traced_bad_grid_fails_at_run_time():
    """A grid traced by the caller's jit is checked when the program runs (equinox's error;
    under a plain jax.jit XLA reports it as a ValueError from the callback)."""
    sde, _, model, _ = _setup()
    em, x = sd.EulerMaruyama(), jnp.zeros(2)
    run = jax.jit(lambda g: sd.sample(jax.random.key(0), sde, model, em, g, x).x)
    assert bool(jnp.all(jnp.isfinite(run(jnp.array([0.9, 0.5, 0.1])))))
    with pytest.raises((RuntimeError, ValueError), match="`grid` must be strictly decreasing"):
        jax.block_until_ready(run(jnp.array([1.0, 0.3, 0.5])))


def test_diffrax_sde_needs_a_uniform_grid():
    sde, _, model, _ = _setup()
    grid = sd.grids.quadratic(sde, 10)
    with pytest.raises(ValueError, match="uniform"):
        sd.DiffraxSDE().init(sde, model, grid, jnp.zeros(2))
    # with a controller the grid only gives the ends, the first step and the save points
    adaptive = sd.DiffraxSDE(diffrax.Heun(), diffrax.PIDController(rtol=1e-3, atol=1e-3), 1e-4)
    assert adaptive.is_stochastic(sde, grid)


def test_bad_options():
    with pytest.raises(ValueError, match="dt0"):
        sd.ODE(diffrax.Heun(), diffrax.ConstantStepSize())
    with pytest.raises(TypeError, match="solver"):
        sd.ODE("tsit5")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="stepsize_controller"):
        sd.DiffraxSDE(stepsize_controller="pid")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="snr"):
        sd.PredictorCorrector(snr=0.0)
    with pytest.raises(ValueError, match="num_corrector_steps"):
        sd.PredictorCorrector(num_corrector_steps=-1)
    with pytest.raises(ValueError, match="order"):
        sd.DPMSolver(order=4)
    with pytest.raises(TypeError, match="final_noise"):
        sd.EulerMaruyama(final_noise=1)  # pyright: ignore[reportArgumentType]
    with pytest.raises(NotImplementedError, match="stats"):
        sd.ODE().nfe(10)
    assert sd.DiffraxSDE().nfe(10) == 10 and sd.DPMSolver(3).nfe(10) == 30


@pytest.mark.parametrize("make", ALL, ids=list(SOLVERS))
def test_model_output_shape_is_checked(make):
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda t, x: jnp.zeros(3))
    with pytest.raises((TypeError, ValueError), match="model"):
        make().init(sde, model, jnp.array([0.9, 0.5, 0.1]), jnp.zeros(2))


@pytest.mark.parametrize("make", ALL, ids=list(SOLVERS))
def test_plain_function_model_under_jit(make):
    """A model may wrap a plain function closing over traced values (the solvers scan only the
    arrays of their state)."""
    sde = sd.VPSDE()
    solver = make()
    grid = sd.grids.uniform(sde, 4)

    @jax.jit
    def f(w, x_T):
        model = sd.ScoreModel(lambda t, x: -w * x)
        k = jax.random.key(0) if solver.is_stochastic(sde, jnp.array([0.9, 0.5, 0.1])) else None
        return sd.sample(k, sde, model, solver, grid, x_T, save_trajectory=True).trajectory

    traj = f(1.0, jnp.array([0.5, -0.2]))
    assert traj.shape == (5, 2) and bool(jnp.all(jnp.isfinite(traj)))
