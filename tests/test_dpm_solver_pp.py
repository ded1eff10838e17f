"""sd.DPMSolverPP: DPM-Solver++ (2S, 3S, 2M, 3M) and SDE-DPM-Solver++ (1M, 2M).

(a) agreement with the reference implementations, read from tests/fixtures/dpm_solver_pp.{npz,
    json} (written by tests/fixtures/make_dpm_solver_pp.py with diffusers 0.32 and the official
    DPM-Solver PyTorch code, in float64): 13 cases, every variant and option;
(b) convergence order on the exact Gaussian-mixture oracle against a converged adaptive ODE
    solve (Tsit5, tolerances 1e-12): the slope of log error against log K;
(c) independent identities: order 1 is DDIM; SDE-DPM-Solver++(1M) is DDPM's ancestral step
    (the forward posterior of sd.forward_posterior); the corrected 3M integrates a quadratic
    data prediction exactly, the reference 3M does not;
(d) the step API, jit / vmap / grad;
(e) bad input.
"""

import functools
import json
import os

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd
from helpers import mixture_2d, no_runtime_typecheck
from scoredyn._solve.dpm_solver_pp import grid_stage_orders, multistep_orders
from scoredyn._solve.verbs import encode as encode_

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NPZ = os.path.join(FIXTURES, "dpm_solver_pp.npz")
JSON = os.path.join(FIXTURES, "dpm_solver_pp.json")
# Largest deviation measured from the references: 4e-14 (official 3M on the time-uniform grid).
REF_TOL = 1e-10


def batch_solve(process, model, solver, grid, *, save_trajectory=False):
    """`sd.sample` over a batch of starts (and keys), compiled as one program: every check and
    table of the solve is traced once, not dispatched op by op under `vmap`."""

    def run(key, x_T):
        k = key if solver.stochastic else None
        return sd.sample(k, process, model, solver, grid, x_T, save_trajectory=save_trajectory)

    return jax.jit(jax.vmap(run))


class PiecewiseVP(sd.AbstractLinearSDE):
    r"""A VP process with $\log\alpha$ linear in $t$ between the knots $t_k = (k + 1)/N$,
    $\log\alpha(t_k) = \tfrac12\log\bar a_k$ (and $\log\alpha(0) = 0$): the official
    DPM-Solver code's `NoiseScheduleVP('discrete')` on $[1/N, 1]$, and the continuous process on
    which diffusers' integer timestep $k$ sits at time $t_k$."""

    log_alpha: jax.Array
    T: float = 1.0

    def _table(self):
        n = self.log_alpha.shape[0]
        knots = jnp.arange(0, n + 1, dtype=self.log_alpha.dtype) / n
        return knots, jnp.concatenate([jnp.zeros(1, self.log_alpha.dtype), self.log_alpha])

    def marginal(self, t):
        la = jnp.interp(t, *self._table())
        return jnp.exp(la), jnp.sqrt(-jnp.expm1(2.0 * la))

    def coefficients(self, t):
        kn, la = self._table()
        j = jnp.clip(jnp.searchsorted(kn, t) - 1, 0, kn.shape[0] - 2)
        f = (la[j + 1] - la[j]) / (kn[j + 1] - kn[j])
        return f, jnp.sqrt(-2.0 * f)  # sigma^2 = 1 - alpha^2, so g^2 = -2f

    def time_at_log_snr(self, lam):
        la = -0.5 * jax.nn.softplus(-jnp.asarray(lam))  # log alpha = log sigmoid(lam) / 2
        kn, table = self._table()
        return jnp.interp(la, table[::-1], kn[::-1])


# ------------------------------------------------------------------ (a) reference fixtures
@pytest.fixture(scope="module")
def ref():
    if not (os.path.exists(NPZ) and os.path.exists(JSON)):
        pytest.skip("tests/fixtures/dpm_solver_pp.npz is missing (make_dpm_solver_pp.py)")
    with open(JSON) as f:
        meta = json.load(f)
    a = dict(np.load(NPZ))
    m = meta["mixture"]
    gm = sd.toy.GaussianMixture(
        jnp.asarray(m["weights"]), jnp.asarray(m["means"]), jnp.asarray(m["covs"])
    )
    procs = {
        "sd.VPSDE(0.1, 20.0)": sd.VPSDE(0.1, 20.0),
        "piecewise_vp(alphas_cumprod)": PiecewiseVP(
            log_alpha=0.5 * jnp.log(jnp.asarray(a["alphas_cumprod"]))
        ),
    }
    return {"meta": meta, "a": a, "gm": gm, "procs": procs}


CASES = []
if os.path.exists(JSON):
    with open(JSON) as _f:
        CASES = sorted(json.load(_f)["cases"])


@pytest.mark.parametrize("name", CASES)
def test_agrees_with_reference(ref, name):
    case = ref["meta"]["cases"][name]
    a = ref["a"]
    process = ref["procs"][case["process"]]
    solver = sd.DPMSolverPP(**case["solver"])
    model = sd.EpsModel(ref["gm"].eps_fn(process))
    grid = jnp.asarray(a[f"{name}__grid"])
    B = ref["meta"]["batch"]
    keys = jax.random.split(jax.random.key(ref["meta"]["seed"]), B)

    res = batch_solve(process, model, solver, grid, save_trajectory=True)(keys, a["x_T"])
    K = grid.shape[0] - 1
    np.testing.assert_allclose(res.x, a[f"{name}__x"], rtol=0, atol=REF_TOL)
    # the states at the grid points (with denoise_to_zero the last entry is the denoised x)
    n = K if solver.denoise_to_zero else K + 1
    assert res.trajectory is not None
    traj = jnp.swapaxes(res.trajectory, 0, 1)[:n]
    np.testing.assert_allclose(traj, a[f"{name}__traj"][:n], rtol=0, atol=REF_TOL)
    per = solver.order if not (solver.multistep or solver.stages_on_grid) else 1
    assert int(res.stats["nfe"][0]) == per * K + solver.denoise_to_zero


def test_reference_conventions(ref):
    """How the references' time points are written in scoredyn (see the derivation page)."""
    a, meta = ref["a"], ref["meta"]
    vp = ref["procs"]["sd.VPSDE(0.1, 20.0)"]
    pw = ref["procs"]["piecewise_vp(alphas_cumprod)"]
    ts = a["diffusers_2m_k20__timesteps"]
    N = a["alphas_cumprod"].shape[0]
    keys = jax.random.split(jax.random.key(meta["seed"]), meta["batch"])
    z = a["diffusers_sde2m_k10__noise"]

    @jax.jit
    def tables(t_nodes, keys):
        """Everything computed here, as one program (eagerly each operation compiles alone)."""
        draw = jax.vmap(
            lambda k: jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), (2,)))(
                jnp.arange(z.shape[1])
            )
        )(keys)
        alpha = jax.vmap(pw.marginal)(t_nodes)[0]
        return sd.grids.log_snr(vp, 8), sd.grids.uniform(vp, 20), alpha, draw

    log_snr_8, uniform_20, alpha, draw = tables(jnp.asarray((ts + 1) / N), keys)
    # the official log-SNR and time-uniform grids are sd.grids.log_snr and sd.grids.uniform
    np.testing.assert_allclose(log_snr_8, a["official_vp_2m_s8__grid"], atol=1e-12)
    np.testing.assert_allclose(uniform_20, a["official_vp_3m_s20__grid"], atol=1e-15)
    # diffusers' timestep k sits at t = (k + 1)/N of PiecewiseVP, with alpha^2 = alphas_cumprod[k]
    np.testing.assert_allclose(alpha**2, a["alphas_cumprod"][ts], rtol=1e-14)
    # trailing spacing is sd.grids.trailing's trajectory: tau = [0] + sorted(k + 1)
    tau = np.asarray(sd.grids.trailing(N, 20))
    np.testing.assert_array_equal(tau[1:][::-1], ts + 1)
    # the SDE cases' noise is scoredyn's own draw at each step
    np.testing.assert_allclose(draw, z, rtol=1e-15, atol=1e-15)  # 1 ulp: XLA flags differ


# ---------------------------------------------------------------- (b) convergence order
SDE = sd.VPSDE()
T_EPS = 1e-3


@pytest.fixture(scope="module")
def oracle():
    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    x_T = jax.random.normal(jax.random.key(1), (8, 2))
    ode = sd.ODE(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-12, atol=1e-12))
    exact = jax.jit(
        jax.vmap(lambda x: sd.sample(None, SDE, model, ode, jnp.array([SDE.T, T_EPS]), x).x)
    )
    return model, x_T, np.asarray(exact(x_T))


# (solver, step counts K, expected order): two step counts in the asymptotic range and the
# slope between them. Measured (8 starting points, RMS error): 2M 1.97, 3M 3.16,
# 3M(reference) 2.09, 2S 1.91, 3S 2.87, 3S on grid 2.86. Order 1 is DDIM (test below).
ORDERS = {
    "2M": (sd.DPMSolverPP(2), (128, 256), 2),
    "3M": (sd.DPMSolverPP(3), (256, 512), 3),
    "3M-reference": (sd.DPMSolverPP(3, reference_3m=True), (256, 512), 2),
    "2S": (sd.DPMSolverPP(2, multistep=False), (64, 128), 2),
    "3S": (sd.DPMSolverPP(3, multistep=False), (64, 128), 3),
    "3S-grid": (sd.DPMSolverPP(3, multistep=False, stages_on_grid=True), (192, 384), 3),
}
SLOPE_TOL = 0.3


@functools.cache
def _order_grid(K):
    """The log-SNR grid of K steps, computed (compiled) once per K: the solvers share them."""
    return jax.jit(lambda: sd.grids.log_snr(SDE, K, t_eps=T_EPS))()


# one worker for all six: the module-scoped `oracle` (a Tsit5 solve at 1e-12, ~1.5 CPU-s of
# compile) is then built once, not once per xdist worker
@pytest.mark.xdist_group("dpm-solver-pp-orders")
@pytest.mark.parametrize("name", list(ORDERS))
def test_convergence_order(oracle, name):
    solver, Ks, order = ORDERS[name]
    model, x_T, exact = oracle
    errs = []
    for K in Ks:
        grid = _order_grid(K)
        x = np.asarray(batch_solve(SDE, model, solver, grid)(x_T, x_T).x)
        errs.append(np.sqrt(np.mean(np.sum((x - exact) ** 2, -1))))
    slope = np.log(errs[0] / errs[1]) / np.log(Ks[1] / Ks[0])
    assert abs(slope - order) < SLOPE_TOL, (name, errs, slope)


# ------------------------------------------------------------- (c) independent identities
def test_order_one_is_ddim():
    """Data- and noise-prediction first-order steps are the same map (DDIM), in every mode."""
    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    x_T = jnp.array([0.4, -1.2])

    @jax.jit
    def run(x_T):
        grid = sd.grids.quadratic(SDE, 12)  # built in the program: eagerly, op by op compiles
        ddim = sd.sample(None, SDE, model, sd.DPMSolver(order=1), grid, x_T).x
        pp = sd.sample(None, SDE, model, sd.DPMSolverPP(1), grid, x_T).x
        s1 = sd.DPMSolverPP(1, multistep=False, stages_on_grid=True)
        return ddim, pp, sd.sample(None, SDE, model, s1, grid, x_T).x

    ddim, pp, on_grid = run(x_T)
    np.testing.assert_allclose(pp, ddim, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(on_grid, ddim, rtol=1e-12, atol=1e-12)


def test_2s_is_2s_on_the_doubled_log_snr_grid():
    """Lu's 2S on `log_snr(K)` puts its stage at the log-SNR midpoint, which is the odd point of
    `log_snr(2K)`: the two conventions coincide there (and differ on other grids)."""
    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    x_T = jnp.array([0.4, -1.2])
    lu = sd.DPMSolverPP(2, multistep=False)
    on_grid = sd.DPMSolverPP(2, multistep=False, stages_on_grid=True, lower_order_final=False)

    @jax.jit
    def run(x_T):
        a = sd.sample(None, SDE, model, lu, sd.grids.log_snr(SDE, 6), x_T)
        b = sd.sample(None, SDE, model, on_grid, sd.grids.log_snr(SDE, 12), x_T)
        return a.x, b.x

    a, b = run(x_T)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert lu.nfe(6) == on_grid.nfe(12) == 12


def test_sde_first_order_is_ddpm_ancestral_step():
    r"""SDE-DPM-Solver++(1M) from index n to m draws from DDPM's posterior
    $q(x_m\mid x_n, \hat x_0)$ (sd.forward_posterior), with the same standard normal draw."""
    sched = sd.DiscreteSchedule.linear(1000)
    N = sched.num_steps
    x0_hat = jnp.array([0.3, -0.7])
    model = sd.X0Model(lambda t, x: jnp.broadcast_to(x0_hat, x.shape).astype(x.dtype))
    x_n = jnp.array([1.1, 0.2])
    key = jax.random.key(3)
    solver = sd.DPMSolverPP(1, stochastic=True)
    n, m = np.array([1000, 500, 40]), np.array([900, 499, 3])

    @jax.jit
    def steps(n, m):
        """The three steps (vmapped), the posterior coefficients and the draw in one program:
        eagerly each small operation compiles on its own."""
        proc = PiecewiseVP(log_alpha=0.5 * jnp.log(sched.alpha_bar[1:]))  # index n at t = n / N

        def one_step(grid):
            state, info = solver.step(key, solver.init(proc, model, grid, x_n))
            return state.x, info.order

        x_m, order = jax.vmap(one_step)(jnp.stack([n / N, m / N], -1))
        return x_m, order, sd.forward_posterior(sched, n, m), jax.random.normal(key, (2,))

    x_m, order, (c0, cn, var), z = steps(n, m)
    c0, cn, var = (np.asarray(c)[:, None] for c in (c0, cn, var))
    want = c0 * np.asarray(x0_hat) + cn * np.asarray(x_n) + np.sqrt(var) * np.asarray(z)
    np.testing.assert_allclose(x_m, want, atol=1e-12)
    np.testing.assert_array_equal(order, [1, 1, 1])


@jax.jit
def _grid_tables(grid):
    """Half the log-SNR and sigma at the grid points (one program, not op by op)."""
    return 0.5 * jax.vmap(SDE.log_snr)(grid), jax.vmap(SDE.marginal)(grid)[1]


def _exact_linear_x0(grid, coefs, x_T):
    r"""$x_t = \frac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_{\ell_s}^{\ell_t}e^{\ell}p(\ell)\,d\ell$
    interval by interval, with Gauss-Legendre quadrature (30 nodes: exact to rounding)."""
    nodes, weights = np.polynomial.legendre.leggauss(30)
    ell, sig = (np.asarray(v) for v in _grid_tables(grid))
    xs = [np.asarray(x_T)]
    for i in range(len(grid) - 1):
        lo, hi = ell[i], ell[i + 1]
        u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
        p = sum(c[None, :] * u[:, None] ** k for k, c in enumerate(coefs))
        integral = 0.5 * (hi - lo) * np.sum(weights[:, None] * np.exp(u)[:, None] * p, 0)
        xs.append(sig[i + 1] / sig[i] * xs[-1] + sig[i + 1] * integral)
    return xs


def test_3m_integrates_a_quadratic_data_prediction_exactly():
    r"""With $\hat x_0 = c_0 + c_1\ell + c_2\ell^2$ (independent of $x$) every 3M step after the
    warm-up is exact with the Taylor weight of the second difference; the reference weight
    (half of it) leaves an $O(h^3)$ error per step. The singlestep solvers, whose stages are
    not Taylor-exact, are still exact for a constant $\hat x_0$."""
    coefs = [np.array([0.5, -1.0]), np.array([0.2, 0.3]), np.array([-0.05, 0.04])]

    def net(t, x):
        ell, out = 0.5 * SDE.log_snr(t), jnp.zeros_like(x)
        for k, c in enumerate(coefs):
            out = out + jnp.asarray(c, x.dtype) * ell**k
        return out

    model = sd.X0Model(net)
    grid = _order_grid(16)  # sd.grids.log_snr(SDE, 16, t_eps=T_EPS), compiled as one program
    x_T = jnp.array([0.7, -0.2])
    exact = _exact_linear_x0(grid, coefs, x_T)

    def run_from_warm(solver):
        @jax.jit
        def run(x_T, x_2):
            state = solver.init(SDE, model, grid, x_T)
            for _ in range(2):  # the first- and second-order warm-up steps
                state = solver.step(None, state)[0]
            state = eqx.tree_at(lambda s: s.x, state, x_2)  # restart on the truth
            dyn, static = eqx.partition(state, eqx.is_array)
            step = lambda d, _: (
                eqx.partition(solver.step(None, eqx.combine(d, static))[0], eqx.is_array)[0],
                None,
            )  # noqa: E501, E731
            dyn, _ = lax.scan(step, dyn, None, length=grid.shape[0] - 3)
            return eqx.combine(dyn, static).x

        return run(x_T, jnp.asarray(exact[2]))

    np.testing.assert_allclose(run_from_warm(sd.DPMSolverPP(3)), exact[-1], atol=1e-12)
    err_ref = np.max(np.abs(run_from_warm(sd.DPMSolverPP(3, reference_3m=True)) - exact[-1]))
    assert err_ref > 1e-6

    const = [coefs[0]]
    exact_c = _exact_linear_x0(grid, const, x_T)
    model_c = sd.X0Model(lambda t, x: jnp.broadcast_to(jnp.asarray(const[0], x.dtype), x.shape))
    solvers = (
        sd.DPMSolverPP(3, multistep=False),
        sd.DPMSolverPP(3, multistep=False, stages_on_grid=True),
    )
    outs = jax.jit(lambda x: [sd.sample(None, SDE, model_c, s, grid, x).x for s in solvers])(x_T)
    for x in outs:
        np.testing.assert_allclose(x, exact_c[-1], atol=1e-12)


def test_every_model_parameterisation_gives_the_same_solve():
    gm = mixture_2d()
    eps = gm.eps_fn(SDE)

    def x0(t, x):
        a, s = SDE.marginal(t)
        return (x - s * eps(t, x)) / a

    def v(t, x):
        a, s = SDE.marginal(t)
        return a * eps(t, x) - s * x0(t, x)

    x_T = jnp.array([-0.3, 0.9])
    solver = sd.DPMSolverPP(3)
    models = (sd.EpsModel(eps), sd.VModel(v))

    @jax.jit
    def run(x):
        grid = sd.grids.log_snr(SDE, 10)  # in the program: eagerly each operation compiles
        return [sd.sample(None, SDE, m, solver, grid, x).x for m in models]

    base, *others = run(x_T)
    for x in others:
        np.testing.assert_allclose(x, base, rtol=1e-11, atol=1e-11)


def test_sde_variant_samples_the_data_distribution():
    r"""SDE-DPM-Solver++(2M) on a 1-D Gaussian $\mathcal N(0.3, 0.25)$ with its exact model:
    n = 10000 samples at K = 40 have the mean and variance of the law at $t_\epsilon$ to 4 Monte
    Carlo standard errors (0.005 and 0.0035). Measured deviations: 0.002 and 0.006; the
    first-order SDE-DPM-Solver++(1M) misses the variance by 0.05 at the same K."""
    gm = sd.toy.GaussianMixture(jnp.ones(1), jnp.full((1, 1), 0.3), jnp.full((1, 1, 1), 0.25))
    model = sd.EpsModel(gm.eps_fn(SDE))
    solver = sd.DPMSolverPP(2, stochastic=True)
    n = 10000

    @jax.jit
    def draw():  # starts, keys, grid and solves in one program (eagerly: op by op)
        grid = sd.grids.log_snr(SDE, 40, t_eps=T_EPS)
        k1, k2 = jax.random.split(jax.random.key(7))
        x_T = SDE.prior_std() * jax.random.normal(k1, (n, 1))
        keys = jax.random.split(k2, n)
        run = lambda k, x: sd.sample(k, SDE, model, solver, grid, x).x[0]  # noqa: E731
        return jax.vmap(run)(keys, x_T)

    xs = draw()
    a, s = (float(v) for v in SDE.marginal(T_EPS))
    mean, var = 0.3 * a, 0.25 * a**2 + s**2
    xs = np.asarray(xs)
    assert abs(float(np.mean(xs)) - mean) < 4 * 0.005
    assert abs(float(np.var(xs)) - var) < 4 * 0.0035


# ------------------------------------------------------------------ (d) step API, transforms
def test_order_lists():
    """The documented order lists (diffusers' rules), written out."""
    assert multistep_orders(8, 3, True).tolist() == [1, 2, 3, 3, 3, 3, 2, 1]
    assert multistep_orders(8, 3, False).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
    assert multistep_orders(15, 2, True).tolist() == [1] + [2] * 14  # only below 15 steps
    assert grid_stage_orders(6, 2, False).tolist() == [1, 2, 1, 2, 1, 2]
    assert grid_stage_orders(6, 2, True).tolist() == [1, 2, 1, 2, 1, 1]
    assert grid_stage_orders(7, 2, False).tolist() == [1, 2, 1, 2, 1, 2, 1]
    assert grid_stage_orders(9, 3, True).tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert grid_stage_orders(8, 3, True).tolist() == [1, 2, 3, 1, 2, 3, 1, 2]


@pytest.mark.parametrize(
    "solver",
    [
        sd.DPMSolverPP(3, denoise_to_zero=True),
        sd.DPMSolverPP(2, stochastic=True),
    ],
    ids=["3M-denoise", "SDE-2M"],
)
def test_step_api_in_a_scan_equals_the_verb(solver):
    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    x_T = jnp.array([0.2, 0.8])
    key = jax.random.key(5)
    K = 9

    @jax.jit
    def both(x_T):
        grid = sd.grids.log_snr(SDE, K)  # in the program: eagerly each operation compiles
        res = sd.sample(key, SDE, model, solver, grid, x_T, save_trajectory=True)
        state = solver.init(SDE, model, grid, x_T)
        dyn, static = eqx.partition(state, eqx.is_array)

        def body(dyn, i):
            st, info = solver.step(solver.step_key(key, i, K), eqx.combine(dyn, static))
            return eqx.partition(st, eqx.is_array)[0], (st.x, info.order)

        _, (xs, orders) = lax.scan(body, dyn, jnp.arange(K))
        return res, xs, orders

    res, xs, orders = both(x_T)
    np.testing.assert_allclose(xs[-1], res.x, rtol=0, atol=1e-14)
    assert res.trajectory is not None
    np.testing.assert_allclose(xs, res.trajectory[1:], rtol=0, atol=1e-14)
    np.testing.assert_array_equal(orders, solver.orders(K))
    assert int(res.stats["nfe"]) == solver.nfe(K)


def test_jit_vmap_grad():
    """3M (its third-order steps: 8 steps) under jit(vmap) equals the eager one-example solves
    and its gradient matches central differences; SDE-2M with vmapped keys and a grid traced
    under jit. The transforms run in one compiled program. (Orders 1-2 and SDE-2M on a 3-step
    grid under jit, vmap and grad with finite differences: the DPMSolverPP case of
    test_transforms.py.)"""
    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    grid = jax.jit(lambda: sd.grids.log_snr(SDE, 8))()  # one program, not op by op
    x_T = jax.random.normal(jax.random.key(2), (3, 2))
    f = lambda x: sd.sample(None, SDE, model, sd.DPMSolverPP(3), grid, x).x  # noqa: E731
    # stochastic: keys vmapped and the grid traced under jit (vmapped keys: test (a), SDE cases)
    solver = sd.DPMSolverPP(2, stochastic=True)
    keys = jax.random.split(jax.random.key(4), 3)
    h = lambda k, x, grid: sd.sample(k, SDE, model, solver, grid, x).x  # noqa: E731

    @jax.jit
    def transformed(x_T, keys, grid):
        g = jax.grad(lambda x: jnp.sum(f(x)))(x_T[0])
        return jax.vmap(f)(x_T), g, jax.vmap(h, in_axes=(0, 0, None))(keys, x_T, grid)

    batched, g, out = transformed(x_T, keys, grid)
    eager = jnp.stack([f(x) for x in x_T])
    np.testing.assert_allclose(batched, eager, rtol=1e-14, atol=1e-14)
    fd = [(jnp.sum(f(x_T[0] + d)) - jnp.sum(f(x_T[0] - d))) / 2e-6 for d in 1e-6 * jnp.eye(2)]
    np.testing.assert_allclose(g, jnp.stack(fd), rtol=1e-5)
    assert np.all(np.isfinite(out)) and not np.allclose(out[0], out[1])


# ------------------------------------------------------------------------ (e) bad input
def test_validation():
    for bad in (0, 4):
        with pytest.raises(ValueError, match="`order` must be 1, 2 or 3"):
            sd.DPMSolverPP(bad)  # pyright: ignore[reportArgumentType]
    for bad in (True, 2.0):
        with no_runtime_typecheck(), pytest.raises(TypeError, match="`order` must be an int"):
            sd.DPMSolverPP(bad)  # pyright: ignore[reportArgumentType]
    for flag in (
        "multistep",
        "stochastic",
        "lower_order_final",
        "denoise_to_zero",
        "stages_on_grid",
        "reference_3m",
    ):
        with no_runtime_typecheck(), pytest.raises(TypeError, match=f"`{flag}`"):
            sd.DPMSolverPP(**{flag: 1})  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`stochastic=True`.*multistep"):
        sd.DPMSolverPP(2, multistep=False, stochastic=True)
    with pytest.raises(ValueError, match="`stochastic=True`.*order"):
        sd.DPMSolverPP(3, stochastic=True)
    with pytest.raises(ValueError, match="`stages_on_grid=True`"):
        sd.DPMSolverPP(2, stages_on_grid=True)

    gm = mixture_2d()
    model = sd.EpsModel(gm.eps_fn(SDE))
    x_T = jnp.zeros(2)
    sched = sd.DiscreteSchedule.linear(100)
    with pytest.raises(TypeError, match="`process`.*DiscreteSchedule"):
        sd.sample(None, sched, model, sd.DPMSolverPP(), sd.grids.even(100, 10), x_T)
    with pytest.raises(ValueError, match="`grid`"):
        sd.sample(None, SDE, model, sd.DPMSolverPP(), jnp.array([0.1, 0.5, 1.0]), x_T)
    with pytest.raises(ValueError, match="`key` is None"):
        sd.sample(None, SDE, model, sd.DPMSolverPP(stochastic=True), sd.grids.log_snr(SDE, 4), x_T)
    solver, grid = sd.DPMSolverPP(stochastic=True), sd.grids.log_snr(SDE, 4)
    with pytest.raises(ValueError, match="needs a key"):
        jax.eval_shape(lambda x: solver.step(None, solver.init(SDE, model, grid, x)), x_T)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_(SDE, model, sd.DPMSolverPP(), sd.grids.log_snr(SDE, 4), x_T)
