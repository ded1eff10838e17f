"""Samplers (PF-ODE, reverse SDE, predictor-corrector), SDE simulation and the flow map.

Every sampler is checked against the Gaussian-mixture oracle: samples are classified by their
responsibility under the data mixture and the component weights and means are compared with the
truth. Monte Carlo tolerances are stated next to each test; run `pytest -s` to see the measured
figures.
"""

from typing import cast

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, compiled_o3, mixture_2d, no_runtime_typecheck

VP, SUBVP, VE, COSINE = ALL_LINEAR_SDES
SAMPLING_SDES = [VP, SUBVP, VE]
SAMPLING_IDS = SDE_IDS[:3]

N_SAMPLES = 2000  # per sampler and SDE
# The run-bound Monte Carlo programs here (diffrax on a Brownian tree, 2000 chains) are compiled at
# LLVM -O1: measured on this suite's compile settings, -O1 runs within ~10 % of -O3 but compiles in
# about half the time (forward EM 4.8 -> 3.0 CPU-s, the Brownian-tree samplers ~7.7 -> ~4.3; -O0
# compiles fastest but runs 3-4x slower). Same values up to rounding (no fast-math at any level).
RUN_BOUND_LEVEL = "1"
# Weights: the SE of a fraction is sqrt(w(1 - w)/n) <= 0.0112 at n = 2000; 0.04 is ~3.6 SE.
# Means: SE <= sqrt(0.12 / 400) = 0.017 for the lightest component (w = 0.2, n_k ~ 400);
# 0.07 is ~4 SE.
TOL_WEIGHTS = 0.04
TOL_MEANS = 0.07
T_MID = 0.5


def mixture_moments(gm):
    """Mean and covariance of a Gaussian mixture, from its parameters (an independent fact)."""
    w, m, c = gm.weights, gm.means, gm.covs
    mean = w @ m
    second = jnp.einsum("k,kij->ij", w, c + m[:, :, None] * m[:, None, :])
    return mean, second - jnp.outer(mean, mean)


def classify(gm, xs):
    """Weights and per-component means, assigning each sample to its likeliest component."""
    logits = jax.vmap(lambda x: gm._component_terms(x, 1.0, 0.0)[0])(xs)
    lab = np.asarray(jnp.argmax(logits, -1))
    xs = np.asarray(xs)
    k = gm.num_components
    w = np.array([np.mean(lab == i) for i in range(k)])
    means = np.stack([xs[lab == i].mean(0) for i in range(k)])
    return w, means


def check_mixture(gm, xs, label):
    w, means = classify(gm, xs)
    dw = float(np.max(np.abs(w - np.asarray(gm.weights))))
    dm = float(np.max(np.abs(means - np.asarray(gm.means))))
    print(
        f"\n[{label}] n={xs.shape[0]}: max |w - w*| = {dw:.4f} (tol {TOL_WEIGHTS}), "
        f"max |m - m*| = {dm:.4f} (tol {TOL_MEANS})"
    )
    assert dw < TOL_WEIGHTS
    assert dm < TOL_MEANS


def check_moments(ref_gm, xs, label, tol_mean, tol_cov):
    mean, cov = mixture_moments(ref_gm)
    dmean = float(jnp.max(jnp.abs(xs.mean(0) - mean)))
    dcov = float(jnp.max(jnp.abs(jnp.cov(xs.T) - cov)))
    print(
        f"\n[{label}] max |mean err| = {dmean:.4f} (tol {tol_mean}), "
        f"max |cov err| = {dcov:.4f} (tol {tol_cov})"
    )
    assert dmean < tol_mean
    assert dcov < tol_cov


@pytest.fixture(scope="module")
def gm():
    return mixture_2d()


@pytest.fixture(scope="module")
def keys():
    return jax.random.split(jax.random.key(20240611), N_SAMPLES)


# ----------------------------------------------------------------------------- forward SDE
def test_forward_euler_maruyama_matches_marginal(gm):
    """EM (diffrax Euler, 50 steps) from x0 ~ mixture matches the moments of gm.marginal(sde, 0.5).

    n = 2000: mean SE <= sqrt(1.05 / 2000) = 0.023 (tol 0.09); covariance SE ~ 0.035 (tol 0.14).
    """
    sde = VP
    n = 2000
    x0 = gm.sample(jax.random.key(1), n)
    keys = jax.random.split(jax.random.key(2), n)
    fwd = jax.vmap(lambda k, x: sd.simulate_sde(k, sde, x, 0.0, T_MID, num_steps=50))
    xt = compiled_o3(fwd, keys, x0, level=RUN_BOUND_LEVEL)(keys, x0)
    assert xt.shape == (n, 2) and xt.dtype == jnp.float64
    check_moments(gm.marginal(sde, T_MID), xt, f"forward EM {type(sde).__name__}", 0.09, 0.14)


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("sde", SAMPLING_SDES, ids=SAMPLING_IDS)
def test_sample_ode_reproduces_mixture(sde, gm, keys):
    """PF-ODE (Tsit5, rtol = atol = 1e-4) from the prior, exact score; also the marginal at 0.5."""
    score = gm.score_fn(sde)
    ts = jnp.array([T_MID, 1e-3])
    ctrl = diffrax.PIDController(rtol=1e-4, atol=1e-4)
    f = jax.jit(
        jax.vmap(
            lambda k: sd.sample_ode(
                k, sde, score, (2,), stepsize_controller=ctrl, t_eps=1e-3, ts=ts
            )
        )
    )
    path = f(keys)
    assert path.shape == (N_SAMPLES, 2, 2)
    check_mixture(gm, path[:, 1], f"sample_ode {type(sde).__name__}")
    check_moments(
        gm.marginal(sde, T_MID), path[:, 0], f"sample_ode at t=0.5 {type(sde).__name__}", 0.08, 0.15
    )


@pytest.mark.parametrize(
    "sde, solver",
    [(VP, None), (SUBVP, diffrax.Euler()), (VE, diffrax.Heun())],
    ids=["vp-default", "subvp-euler", "ve-heun"],
)
def test_sample_sde_reproduces_mixture(sde, solver, gm, keys):
    """Reverse SDE with 100 steps, exact score: the default (tree-free Euler-Maruyama with a
    noise-free last step) for VP, diffrax's Euler-Maruyama on a Brownian tree for sub-VP, and
    Heun for VE.

    Heun is a Stratonovich solver; for the additive noise of a linear SDE Ito and Stratonovich
    coincide, so it samples the same reverse SDE.
    """
    score = gm.score_fn(sde)
    f = jax.vmap(lambda k: sd.sample_sde(k, sde, score, (2,), solver=solver, num_steps=100))
    xs = compiled_o3(f, keys, level=RUN_BOUND_LEVEL)(keys)
    assert xs.shape == (N_SAMPLES, 2)
    check_mixture(gm, xs, f"sample_sde {type(sde).__name__} {type(solver).__name__}")


@pytest.mark.parametrize("sde", SAMPLING_SDES, ids=SAMPLING_IDS)
def test_sample_pc_reproduces_mixture(sde, gm, keys):
    """Predictor-corrector, 100 steps, snr 0.16, norms averaged over the vmapped batch (as Song)."""
    score = gm.score_fn(sde)
    f = jax.jit(
        jax.vmap(
            lambda k: sd.sample_pc(k, sde, score, (2,), num_steps=100, snr=0.16, axis_name="batch"),
            axis_name="batch",
        )
    )
    xs = f(keys)
    assert xs.shape == (N_SAMPLES, 2)
    check_mixture(gm, xs, f"sample_pc {type(sde).__name__}")


# ----------------------------------------------------------------------------- flow map
def test_encode_decode_roundtrip(gm):
    """decode(encode(x)) = x (rtol = atol = 1e-8), batched and jitted."""
    sde = VP
    score = gm.score_fn(sde)
    ctrl = diffrax.PIDController(rtol=1e-8, atol=1e-8)
    xs = gm.sample(jax.random.key(4), 16)
    # encode and decode in one compiled program (two jits compile two)
    enc = jax.vmap(lambda x: sd.encode(sde, score, x, stepsize_controller=ctrl))
    dec = jax.vmap(lambda z: sd.decode(sde, score, z, stepsize_controller=ctrl))
    back = jax.jit(lambda x: dec(enc(x)))(xs)
    err = float(jnp.max(jnp.abs(back - xs)))
    print(f"\n[encode/decode VP f64] max round-trip error = {err:.2e}")
    assert err < 1e-6


def test_flow_map_stats_and_ts(gm):
    """`return_stats` counts score evaluations exactly (checked with a host-side counter), and
    `ts` returns the trajectory at user times."""
    sde = VP
    count = [0]

    def counted(t, x):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1), ordered=True)
        return gm.score_fn(sde)(t, x)

    x0 = gm.means[0]
    ts = jnp.array([1e-3, 0.5, 1.0])
    traj, stats = cast(
        tuple[jax.Array, dict[str, jax.Array]],
        sd.encode(sde, counted, x0, ts=ts, return_stats=True),
    )
    jax.effects_barrier()
    print(
        f"\n[encode stats] {count[0]} score calls counted, stats = "
        f"{ {k: int(v) for k, v in stats.items()} }"
    )
    assert int(stats["nfe"]) == count[0]
    assert int(stats["num_steps"]) == int(stats["num_accepted_steps"] + stats["num_rejected_steps"])
    assert traj.shape == (3, 2)
    np.testing.assert_allclose(traj[0], x0, atol=1e-12)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def score_vp(gm):
    return gm.score_fn(VP)


def test_bad_shape(score_vp):
    # the pyright-ignored calls in the test_bad_* tests are ill-typed on purpose (error checks)
    key = jax.random.key(0)
    for fn in (sd.sample_ode, sd.sample_sde, sd.sample_pc):
        with pytest.raises(TypeError, match="shape"):
            fn(key, VP, score_vp, 2)  # pyright: ignore[reportArgumentType]
        with pytest.raises(TypeError, match="shape"):
            fn(key, VP, score_vp, (2.0,))  # pyright: ignore[reportArgumentType]


def test_bad_t_eps(score_vp):
    key = jax.random.key(0)
    for t_eps in (0.0, -1e-3, VP.T, 2.0):
        for fn in (sd.sample_ode, sd.sample_sde, sd.sample_pc):
            with pytest.raises(ValueError, match="t_eps"):
                fn(key, VP, score_vp, (2,), t_eps=t_eps)
        with pytest.raises(ValueError, match="t_eps"):
            sd.encode(VP, score_vp, jnp.zeros(2), t_eps=t_eps)
        with pytest.raises(ValueError, match="t_eps"):
            sd.decode(VP, score_vp, jnp.zeros(2), t_eps=t_eps)


def test_bad_num_steps_and_options(score_vp):
    key = jax.random.key(0)
    # one rule for step counts (scoredyn._checks.check_int): a non-int is a TypeError, an int
    # below 1 a ValueError; both name the argument
    for n, err in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="num_steps"), no_runtime_typecheck():
            sd.sample_sde(key, VP, score_vp, (2,), num_steps=n)  # pyright: ignore[reportArgumentType]
        with pytest.raises(err, match="num_steps"), no_runtime_typecheck():
            sd.sample_pc(key, VP, score_vp, (2,), num_steps=n)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="snr"):
        sd.sample_pc(key, VP, score_vp, (2,), snr=0.0)
    with pytest.raises(ValueError, match="num_corrector_steps"):
        sd.sample_pc(key, VP, score_vp, (2,), num_corrector_steps=-1)
    with pytest.raises(ValueError, match="dt0"):
        sd.sample_ode(key, VP, score_vp, (2,), stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(TypeError, match="solver"):
        sd.sample_ode(key, VP, score_vp, (2,), solver="tsit5")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="stepsize_controller"):
        sd.sample_ode(key, VP, score_vp, (2,), stepsize_controller="pid")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="ts"):
        sd.decode(VP, score_vp, jnp.zeros(2), ts=jnp.array([0.1, 0.5]))  # must decrease
    with pytest.raises(ValueError, match="ts"):
        sd.encode(VP, score_vp, jnp.zeros(2), ts=jnp.array([0.5, 2.0]))  # outside [t_eps, T]
    with pytest.raises(ValueError, match="t0"):
        sd.simulate_sde(key, VP, jnp.zeros(2), 0.3, 0.3)


def test_bad_score_and_sde(score_vp):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="score"):
        sd.sample_ode(key, VP, lambda t, x: x[:1], (2,))
    with pytest.raises(TypeError, match="score"):
        sd.sample_sde(key, VP, lambda t, x: x.astype(jnp.float32), (2,))
    with pytest.raises(TypeError, match="score"):
        sd.encode(VP, "not callable", jnp.zeros(2))  # pyright: ignore[reportArgumentType]
    general = sd.SDE(lambda t, x: -x, lambda t, x: jnp.sqrt(2.0))
    with pytest.raises(TypeError, match="sde"):
        sd.sample_ode(key, general, score_vp, (2,))  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="sde"):
        sd.sample_pc(key, "vp", score_vp, (2,))  # pyright: ignore[reportArgumentType]


def test_general_sde_flow_map():
    """encode/decode accept a general SDE: the OU process dx = -x dt + sqrt(2) dW keeps N(0, I).

    With p_t = N(0, I) for all t the score is -x and the PF-ODE velocity -x + x = 0, so the
    flow map is the identity.
    """
    ou = sd.SDE(lambda t, x: -x, lambda t, x: jnp.sqrt(2.0))
    x = jnp.array([0.3, -1.2])
    z = cast(jax.Array, sd.encode(ou, lambda t, x: -x, x))
    np.testing.assert_allclose(z, x, atol=1e-12)


# ----------------------------------------------------------------------------- DPM-Solver
def _ddim_reference(sde, eps_fn, x, ts):
    """DDIM (eta = 0) written from its definition: predict x0, then re-noise with the same eps."""
    for t_s, t_t in zip(ts[:-1], ts[1:]):
        a_s, s_s = sde.marginal(t_s)
        a_t, s_t = sde.marginal(t_t)
        eps = eps_fn(t_s, x)
        x0_hat = (x - s_s * eps) / a_s
        x = a_t * x0_hat + s_t * eps
    return x


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_dpm_solver_order1_is_ddim(sde, gm):
    """DPM-Solver-1 equals DDIM on the same grid to 1e-10 (two different formulas, one map)."""
    from scoredyn._solve.dpm_solver import time_grid

    eps = gm.eps_fn(sde)
    x_T = jnp.array([3.0, -2.0]) * sde.prior_std()
    n = 12

    # the solver, the grid and the reference in one compiled program (eagerly, each of the
    # reference's ops compiles on its own)
    @jax.jit
    def got_and_want(x):
        got = sd.dpm_solver(sde, eps, x, num_steps=n, order=1, t_eps=1e-3)
        ts = time_grid(sde, n, 1e-3, "logSNR", jnp.float64)
        return got, _ddim_reference(sde, eps, x, ts)

    got, want = got_and_want(x_T)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_dpm_solver_log_snr_grid_is_uniform():
    """The "logSNR" grid inverts lambda(t) by bisection: lambda(t_i) must be equally spaced."""
    from scoredyn._solve.dpm_solver import time_grid

    # all four grids and their log-SNRs in one compiled program (eagerly, each op compiles alone)
    @jax.jit
    def grids_and_lams():
        out = []
        for sde in ALL_LINEAR_SDES:
            ts = time_grid(sde, 10, 1e-3, "logSNR", jnp.float64)
            out.append((ts, jax.vmap(sde.log_snr)(ts)))
        return out

    for sde, (ts, lam) in zip(ALL_LINEAR_SDES, grids_and_lams()):
        lam = np.asarray(lam)
        np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-9)
        ts = np.asarray(ts)
        assert ts[0] == sde.T and ts[-1] == 1e-3


def test_dpm_solver_convergence_order(gm):
    """Error against a Tsit5 PF-ODE reference (rtol = atol = 1e-10) from the same x_T decays like
    N^-k for DPM-Solver-k (VP, 24 starting points, N = 16 and 32).

    The median error over points is used: the few trajectories that start near the boundary
    between two basins are sensitive and, for order 1, stay pre-asymptotic. The observed order
    log2(err(16) / err(32)) must lie within [k - 0.25, k + 0.8] (order 3 is still slightly
    super-convergent at these N: ~3.7).
    """
    sde = VP
    eps, score = gm.eps_fn(sde), gm.score_fn(sde)
    x_T = jax.vmap(lambda k: sde.prior_sample(k, (2,)))(jax.random.split(jax.random.key(9), 24))
    ctrl = diffrax.PIDController(rtol=1e-10, atol=1e-10)
    ref = jax.jit(
        jax.vmap(
            lambda z: sd.decode(
                sde, score, z, t_eps=1e-3, stepsize_controller=ctrl, max_steps=100_000
            )
        )
    )(x_T)
    configs = [(order, n) for order in (1, 2, 3) for n in (16, 32)]
    solve_all = jax.jit(
        lambda z: [
            jax.vmap(lambda x: sd.dpm_solver(sde, eps, x, num_steps=n, order=o, t_eps=1e-3))(z)
            for o, n in configs
        ]
    )
    errs = dict(zip(configs, solve_all(x_T)))
    for order in (1, 2, 3):
        med = [float(jnp.median(jnp.linalg.norm(errs[order, n] - ref, axis=-1))) for n in (16, 32)]
        rate = np.log2(med[0] / med[1])
        print(
            f"\n[DPM-Solver-{order}] median errors {med[0]:.2e} (N=16), {med[1]:.2e} (N=32); "
            f"observed order {rate:.2f}"
        )
        assert order - 0.25 < rate < order + 0.8


def test_sample_dpm_solver_reproduces_mixture(gm, keys):
    """DPM-Solver-3 with 10 steps (30 evaluations) from the prior reproduces the mixture."""
    sde = VP
    f = jax.jit(
        jax.vmap(
            lambda k: sd.sample_dpm_solver(k, sde, gm.eps_fn(sde), (2,), num_steps=10, order=3)
        )
    )
    xs = f(keys)
    assert xs.shape == (N_SAMPLES, 2)
    check_mixture(gm, xs, "sample_dpm_solver VP order 3, 10 steps")


def test_dpm_solver_bad_input(gm):
    eps = gm.eps_fn(VP)
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="order"):
        sd.dpm_solver(VP, eps, x, order=4)
    with pytest.raises(ValueError, match="skip"):
        sd.dpm_solver(VP, eps, x, skip="logsnr")
    with pytest.raises(ValueError, match="num_steps"):
        sd.dpm_solver(VP, eps, x, num_steps=0)
    with pytest.raises(ValueError, match="t_eps"):
        sd.dpm_solver(VP, eps, x, t_eps=1.5)
    with pytest.raises(ValueError, match="eps_fn"):
        sd.dpm_solver(VP, lambda t, y: y[:1], x)
    # ill-typed on purpose (pyright: ignore): scoredyn's own error messages
    with pytest.raises(TypeError, match="shape"):
        sd.sample_dpm_solver(jax.random.key(0), VP, eps, [2.0])  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="sde"):
        sd.dpm_solver(sd.SDE(lambda t, y: -y, lambda t, y: 1.0), eps, x)  # pyright: ignore[reportArgumentType]
