"""UniPC, EDM's Heun sampler and EDM's preconditioning.

(a) agreement with the reference implementations, read from tests/fixtures/unipc_edm.{npz,json}
    (written once by tests/fixtures/make_unipc_edm.py with PyTorch float64): diffusers'
    `UniPCMultistepScheduler` and k-diffusion's `sample_heun` (with churn, on the same draws),
    and k-diffusion's `get_sigmas_karras` against `sd.grids.karras`;
(b) orders of convergence against an independent PF-ODE solution (scipy DOP853 at 1e-13, in the
    same fixture) of a Gaussian mixture;
(c) `EDMPrecond` against EDM's published coefficients and the exact Gaussian posterior;
(d) the step API and a traced churn (jit, vmap and grad: the UniPC/EDM case of
    tests/test_transforms.py); (e) bad input.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd
from helpers import no_runtime_typecheck
from scoredyn._solve.edm import _heun_step

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NPZ = os.path.join(FIXTURES, "unipc_edm.npz")
with open(os.path.join(FIXTURES, "unipc_edm.json")) as _f:
    META = json.load(_f)
FIX = dict(np.load(NPZ))
VP = sd.VPSDE(beta_min=0.1, beta_max=20.0)
VE = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
TOL = 1e-10  # float64 references


def _mixture(spec) -> sd.toy.GaussianMixture:
    """The fixture's mixture (diagonal covariances) as the scoredyn oracle."""
    var = jnp.asarray(spec["variances"])
    return sd.toy.GaussianMixture(
        jnp.asarray(spec["weights"]), jnp.asarray(spec["means"]), jax.vmap(jnp.diag)(var)
    )


GM = _mixture(META["mixture"])


# ------------------------------------------------------------------------------ (a) UniPC
def diffusers_grid(K: int, final: str, N: int = 1000):
    """The documented mapping: diffusers' "linspace" timesteps tau of K steps (N training steps)
    plus its final point are the schedule indices n = tau + 1 of sd.grids.linspace(N, K + 1),
    visited downwards; the final point is n = 1 (final_sigmas_type="sigma_min", timestep 0) or
    n = 0 ("zero", sigma = 0). On the VP SDE: t = n / N."""
    n = np.asarray(sd.grids.linspace(N, K + 1))[::-1]  # N, ..., 1, 0
    n = n[:-1] if final == "sigma_min" else np.concatenate([n[:-2], [0]])
    return jnp.asarray(n / N)


UNIPC_CASES = sorted(META["unipc"])


def _unipc_solver(c) -> sd.UniPC:
    return sd.UniPC(
        order=c["solver_order"],
        variant=sd.UniPCVariant(c["solver_type"]),
        lower_order_final=c["lower_order_final"],
        disable_corrector=tuple(c["disable_corrector"]),
    )


def test_unipc_matches_diffusers():
    """Every diffusers case (orders 1-4, bh1/bh2, lower_order_final, final sigma of timestep 0
    or 0, disable_corrector): the whole trajectory. All cases run in one compiled program."""
    model = sd.EpsModel(GM.eps_fn(VP))
    x_T = jnp.asarray(FIX["unipc__x_T"])
    grids, solvers = {}, {}
    for name in UNIPC_CASES:
        c = META["unipc"][name]
        grids[name] = diffusers_grid(c["num_inference_steps"], c["final_sigmas_type"])
        np.testing.assert_array_equal(np.asarray(grids[name]), FIX[f"unipc__{name}__t"])
        solvers[name] = _unipc_solver(c)

    @jax.jit
    def run(x_T):
        out = {}
        for name in UNIPC_CASES:
            f = lambda x: sd.sample(
                None, VP, model, solvers[name], grids[name], x, save_trajectory=True
            )  # noqa: E501
            res = jax.vmap(f)(x_T)
            # the limit checked for diffusers' NaN cases: the data prediction at grid[K-1], at
            # diffusers' own x_{K-1} (in this program: eagerly it compiles op by op)
            a, s = VP.marginal(grids[name][-2])
            ref_prev = jnp.asarray(FIX[f"unipc__{name}__traj"][-2])
            x0 = jax.vmap(lambda x: GM.posterior_moments(a, s, x)[0])(ref_prev)  # noqa: B023
            out[name] = (res.trajectory, res.stats["nfe"], x0)
        return out

    out = run(x_T)
    for name in UNIPC_CASES:
        c = META["unipc"][name]
        traj = np.moveaxis(np.asarray(out[name][0]), 1, 0)  # (K + 1, batch, 2)
        assert int(out[name][1][0]) == c["num_inference_steps"]
        ref = FIX[f"unipc__{name}__traj"]
        if c["finite"]:
            np.testing.assert_allclose(traj, ref, rtol=0, atol=TOL, err_msg=name)
            continue
        # diffusers' bh1 with a final sigma = 0 is NaN (B(h) = -inf times 0); scoredyn's last
        # step is its limit: the data prediction at grid[K-1], made at diffusers' own x_{K-1}
        assert np.isnan(ref[-1]).all()
        np.testing.assert_allclose(traj[:-1], ref[:-1], rtol=0, atol=TOL, err_msg=name)
        x0 = out[name][2]
        np.testing.assert_allclose(traj[-1], np.asarray(x0), rtol=0, atol=TOL, err_msg=name)


# ------------------------------------------------------------------------------ (a) EDM
def _edm_grid(process, sigmas):
    t = process.time_at_log_snr(-2.0 * jnp.log(jnp.asarray(sigmas[sigmas > 0])))
    return jnp.append(t, 0.0) if sigmas[-1] == 0 else t


def _edm_solver(c):
    return sd.EDMHeun(c["s_churn"], c["s_tmin"], float(c["s_tmax"]), c["s_noise"])


# a VP SDE whose s(T), s(t_eps) are the fixture's sigma_max, sigma_min: sd.grids.karras on it
# (then t = 0) is k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max, rho) (append_zero)
_E = META["edm"]
KARRAS_SDE = sd.VPSDE(
    beta_min=0.1, beta_max=20.0, T=float(VP.time_at_log_snr(-2.0 * math.log(_E["sigma_max"])))
)
KARRAS_GRID = jnp.append(
    sd.grids.karras(
        KARRAS_SDE,
        FIX["edm__det_zero__sigmas"].shape[0] - 2,
        t_eps=float(KARRAS_SDE.time_at_log_snr(-2.0 * math.log(_E["sigma_min"]))),
        rho=_E["rho"],
    ),
    0.0,
)
EDM_RUNS = [("det_zero", VP), ("det_zero", KARRAS_SDE), ("det_nozero", VE)] + [
    ("churn_zero", VP),
    ("churn_zero", VE),
    ("churn_nozero", sd.CosineVPSDE()),
]


def test_edm_heun_matches_k_diffusion():
    """Same noise levels, start and draws as k-diffusion's sample_heun (with and without churn,
    ending at sigma = 0 or not); EDM's coordinates x / alpha make the result the same on every
    process. The churn runs take k-diffusion's recorded draws z[i] (one per step) in place of
    the step key's. All runs in one compiled program."""
    grids = [
        KARRAS_GRID if p is KARRAS_SDE else _edm_grid(p, FIX[f"edm__{n}__sigmas"])
        for n, p in EDM_RUNS
    ]

    @jax.jit
    def run():
        out = []
        for (name, process), grid in zip(EDM_RUNS, grids):
            c = META["edm"]["cases"][name]
            solver, model = _edm_solver(c), sd.EpsModel(GM.eps_fn(process))
            x_T = process.marginal(grid[0])[0] * jnp.asarray(FIX[f"edm__{name}__x_T"])
            z = jnp.asarray(FIX[f"edm__{name}__z"])
            if c["s_churn"] == 0:
                res = jax.vmap(lambda x: sd.sample(None, process, model, solver, grid, x))(x_T)
                x, nfe = res.x, res.stats["nfe"][0]
            else:

                def one(x, z):
                    st = solver.init(process, model, grid, x)
                    step = lambda st, zi: (_heun_step(solver, st, zi)[0], None)  # noqa: B023
                    return lax.scan(step, st, z)[0].x

                x, nfe = jax.vmap(one, in_axes=(0, 1))(x_T, z), jnp.zeros((), jnp.int32)
            out.append((x / process.marginal(grid[-1])[0], nfe))
        return out

    for (name, _), grid, (x, nfe) in zip(EDM_RUNS, grids, run()):
        np.testing.assert_allclose(
            np.asarray(x), FIX[f"edm__{name}__x"], rtol=0, atol=TOL, err_msg=name
        )
        if META["edm"]["cases"][name]["s_churn"] == 0:
            last_zero = int(FIX[f"edm__{name}__sigmas"][-1] == 0)
            assert int(nfe) == 2 * (grid.shape[0] - 1) - last_zero


def test_karras_grid_is_get_sigmas_karras():
    """sd.grids.karras on a process whose s(T) and s(t_eps) are k-diffusion's sigma_max and
    sigma_min gives get_sigmas_karras's noise levels (the Heun sample on it, then t = 0, is
    checked in test_edm_heun_matches_k_diffusion)."""
    sigmas = FIX["edm__det_zero__sigmas"]
    a, s = jax.jit(jax.vmap(KARRAS_SDE.marginal))(KARRAS_GRID[:-1])  # one program, not op by op
    np.testing.assert_allclose(np.asarray(s / a), sigmas[:-1], rtol=1e-13)
    assert float(KARRAS_GRID[-1]) == 0.0 and float(KARRAS_SDE.marginal(0.0)[1]) == 0.0


# ------------------------------------------------------------------------------ (b) orders
WIDE = _mixture(META["ode"]["mixture"])


ORDERS = [  # solver, expected order, label
    (sd.UniPC(order=2), 3, "UniPC-2"),
    (sd.UniPC(order=3, corrector=False, lower_order_final=False), 3, "UniP-3 alone"),
    (sd.EDMHeun(), 2, "Heun"),
]


def test_order_of_convergence():
    """Max error at t_eps against the scipy solution, on log-SNR grids of 40 and 80 steps.
    Measured slopes: UniPC-2 2.98, UniP-3 3.06, Heun 2.05 (docs/derivations/unipc.md has the
    table from 10 to 320 steps, UniPC-1 to -4)."""
    model = sd.EpsModel(WIDE.eps_fn(VP))
    x_T, ref = jnp.asarray(FIX["ode__x_T"]), FIX["ode__x"]

    @jax.jit
    def run(x_T):
        # the grids too (eagerly, each of their operations compiles on its own)
        grids = [sd.grids.log_snr(VP, K, t_eps=META["ode"]["t_eps"]) for K in (40, 80)]
        return [
            [jax.vmap(lambda x: sd.sample(None, VP, model, s, g, x).x)(x_T) for g in grids]
            for s, _, _ in ORDERS
        ]

    for (_, order, label), xs in zip(ORDERS, run(x_T)):
        e40, e80 = (float(np.abs(np.asarray(x) - ref).max()) for x in xs)
        slope = math.log2(e40 / e80)
        assert order - 0.25 < slope < order + 0.5, (label, e40, e80, slope)


# ------------------------------------------------------------------------------ (c) EDMPrecond
def test_edm_precond_coefficients_at_sigma_data():
    """EDM Table 1 at sigma = sigma_data: c_skip = 1/2, c_out = sigma_d/sqrt2,
    c_in = 1/(sigma_d sqrt2), c_noise = log(sigma_d)/4; and the network sees (c_noise, c_in x)."""
    sd_ = 0.5
    pre = sd.EDMPrecond(lambda t, y: y, sigma_data=sd_)
    got = pre.coefficients(jnp.asarray(sd_))
    want = (0.5, sd_ / math.sqrt(2), 1 / (sd_ * math.sqrt(2)), math.log(sd_) / 4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-15)
    x = jnp.array([0.3, -1.2])
    # F(y) = y: D = (c_skip + c_out c_in) x = x at s = sigma_d; F = c_noise: D = x/2 + c_out/4 log s
    np.testing.assert_allclose(pre.x0_at(1.0, sd_, 0.0, x), x, rtol=1e-15)
    pre2 = sd.EDMPrecond(lambda t, y: jnp.full_like(y, t), sigma_data=sd_)
    want2 = 0.5 * x + sd_ / math.sqrt(2) * math.log(sd_) / 4
    np.testing.assert_allclose(pre2.x0_at(1.0, sd_, 0.0, x), want2, rtol=1e-15)


@pytest.mark.parametrize("s", [0.01, 0.3, 2.0, 80.0])
def test_edm_precond_unit_variance(s):
    """EDM App. B.6: for zero-mean data of per-coordinate variance sigma_d^2, F's input
    c_in (x0 + s n) and its ideal target (x0 - c_skip (x0 + s n)) / c_out have unit variance.
    The data here is a two-component mixture whose exact moments give sigma_d^2 = 0.25."""
    w, m, v = jnp.array([0.5, 0.5]), jnp.array([[0.3, -0.4], [-0.3, 0.4]]), jnp.array([0.16, 0.09])
    gm = sd.toy.GaussianMixture(w, m, jnp.stack([jnp.diag(v), jnp.diag(v)]))
    mean = jnp.einsum("k,kd->d", gm.weights, gm.means)
    second = jnp.einsum("k,kd->d", gm.weights, gm.means**2 + jax.vmap(jnp.diag)(gm.covs))
    np.testing.assert_allclose(np.asarray(mean), 0.0, atol=1e-16)
    np.testing.assert_allclose(np.asarray(second), 0.25, rtol=1e-15)
    c_skip, c_out, c_in, _ = sd.EDMPrecond(lambda t, y: y, sigma_data=0.5).coefficients(
        jnp.asarray(s)
    )
    var_in = c_in**2 * (second + s**2)
    var_target = ((1 - c_skip) ** 2 * second + c_skip**2 * s**2) / c_out**2
    np.testing.assert_allclose(np.asarray(var_in), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(var_target), 1.0, rtol=1e-14)


@pytest.mark.parametrize("process", [VP, VE], ids=["vp", "ve"])
def test_edm_precond_zero_network_is_the_gaussian_posterior(process):
    """With F = 0 the preconditioned denoiser is c_skip x / alpha, the exact posterior mean of
    N(0, sigma_d^2 I) data (and its eps the exact eps), on any process."""
    d = 0.7
    gm = sd.toy.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), d**2 * jnp.eye(2)[None])
    model = sd.EDMPrecond(lambda t, y: jnp.zeros_like(y), sigma_data=d)
    x = jnp.array([0.4, -1.1])

    @jax.jit
    @jax.vmap
    def both(t):
        a, s = process.marginal(t)
        ours = model.x0(process, t, x), model.eps(process, t, x)
        return ours, (gm.posterior_moments(a, s, x)[0], gm.eps_at(a, s, x))

    (x0, eps), (x0_ref, eps_ref) = both(jnp.array([0.05, 0.4, 0.9]))
    np.testing.assert_allclose(np.asarray(x0), np.asarray(x0_ref), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(eps), np.asarray(eps_ref), rtol=1e-12)


# ------------------------------------------------------------------------------ (d) transforms
@pytest.mark.parametrize(
    "solver",
    [sd.UniPC(order=3, final_corrector=True, disable_corrector=(1,))]
    + [sd.EDMHeun(churn=2.0, churn_noise=1.007)],
    ids=["unipc3-final", "heun-churn"],
)
def test_step_api_in_a_scan_equals_the_verb(solver):
    """A jitted lax.scan of `step` with `step_key(key, i, K)` is the verb's solve; for EDMHeun
    also the step with its draw given as z_i = normal(fold_in(key, i), x.shape): one Gaussian
    per step for the whole x."""
    heun = isinstance(solver, sd.EDMHeun)
    grid = jax.jit(  # one program, not op by op
        lambda: jnp.append(sd.grids.karras(VP, 7), 0.0) if heun else sd.grids.log_snr(VP, 7)
    )()
    model = sd.EpsModel(GM.eps_fn(VP))
    x_T, key = jnp.array([0.9, -0.2]), jax.random.key(2)
    K = grid.shape[0] - 1
    verb = sd.sample(key, VP, model, solver, grid, x_T, save_trajectory=True)

    @jax.jit
    def loop(x_T):
        def body(state, i):
            state, _ = solver.step(solver.step_key(key, i, K), state)
            return state, state.x

        def body_z(state, i):
            z = jax.random.normal(jax.random.fold_in(key, i), x_T.shape, x_T.dtype)
            state, _ = _heun_step(solver, state, z)  # type: ignore[arg-type]
            return state, None

        state0 = solver.init(VP, model, grid, x_T)
        state, xs = lax.scan(body, state0, jnp.arange(K, dtype=jnp.int32))
        by_z = lax.scan(body_z, state0, jnp.arange(K))[0].x if heun else state.x
        return state.x, xs, by_z

    x, xs, by_z = loop(x_T)
    assert verb.trajectory is not None
    np.testing.assert_allclose(np.asarray(x), np.asarray(verb.x), rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(xs), np.asarray(verb.trajectory[1:]), atol=1e-13)
    np.testing.assert_allclose(np.asarray(by_z), np.asarray(verb.x), rtol=0, atol=1e-13)
    nfe = 2 * K - 1 if heun else K + int(getattr(solver, "final_corrector"))
    assert int(verb.stats["nfe"]) == nfe
    assert solver.is_stochastic(VP, grid) == heun


def test_vmap_over_churn():
    """A traced S_churn (vmap over it) agrees with a separate solve. (Gradients through UniPC(3),
    its tables included, against finite differences on a 3-step log-SNR grid, and EDMHeun
    under jit, vmap and grad: their case in test_transforms.py.)"""
    grid = jax.jit(lambda: sd.grids.log_snr(VP, 6))()  # one program, not op by op
    model = sd.EpsModel(GM.eps_fn(VP))
    x_T, key = jnp.array([0.5, 0.1]), jax.random.key(0)
    draw = jax.jit(jax.vmap(lambda c: sd.sample(key, VP, model, sd.EDMHeun(churn=c), grid, x_T).x))
    xs = draw(jnp.array([0.0, 3.0]))
    one = sd.sample(key, VP, model, sd.EDMHeun(churn=3.0), grid, x_T).x
    np.testing.assert_allclose(np.asarray(xs[1]), np.asarray(one), rtol=1e-13, atol=1e-13)
    assert not np.allclose(np.asarray(xs[0]), np.asarray(one))


# ------------------------------------------------------------------------------ (e) bad input
def test_bad_input():
    model = sd.EpsModel(GM.eps_fn(VP))
    grid, x = sd.grids.log_snr(VP, 4), jnp.zeros(2)
    with no_runtime_typecheck():
        for bad in (0, 5, 2.0, True):
            with pytest.raises(ValueError, match="order"):
                sd.UniPC(order=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="variant"):
            sd.UniPC(variant="bh1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="disable_corrector"):
            sd.UniPC(disable_corrector=[0])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="disable_corrector"):
            sd.UniPC(disable_corrector=(-1,))
        with pytest.raises(TypeError, match="lower_order_final"):
            sd.UniPC(lower_order_final=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="churn"):
            sd.EDMHeun(churn=-1.0)
        with pytest.raises(ValueError, match="churn_noise"):
            sd.EDMHeun(churn_noise=-0.5)
        with pytest.raises(ValueError, match="churn_max"):
            sd.EDMHeun(churn_min=2.0, churn_max=1.0)
        with pytest.raises(ValueError, match="sigma_data"):
            sd.EDMPrecond(lambda t, y: y, sigma_data=0.0)
        with pytest.raises(TypeError, match="net"):
            sd.EDMPrecond(3)  # type: ignore[arg-type]
    for solver in (sd.UniPC(), sd.EDMHeun()):
        with pytest.raises(TypeError, match="process"):
            sd.sample(None, sd.DiscreteSchedule.linear(100), model, solver, jnp.arange(5), x)
        with pytest.raises(ValueError, match="grid"):
            sd.sample(None, VP, model, solver, jnp.flip(grid), x)
    with pytest.raises(ValueError, match="final_corrector"):
        sd.sample(None, VP, model, sd.UniPC(final_corrector=True), jnp.append(grid, 0.0), x)
    with pytest.raises(ValueError, match="key"):
        sd.sample(None, VP, model, sd.EDMHeun(churn=1.0), grid, x)
