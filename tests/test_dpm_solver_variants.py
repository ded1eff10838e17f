"""sd.DPMSolverMultistep, sd.DPMSolverFast and sd.DPMSolverAdaptive: the original DPM-Solver
(noise prediction) in its multistep, mixed-order ("fast") and adaptive forms.

(a) agreement with the official DPM-Solver code, read from tests/fixtures/dpm_solver_variants.
    {npz,json} (written by tests/fixtures/make_dpm_solver_variants.py, float64): 11 cases;
(b) the official conventions: order lists, grids;
(c) independent identities: order 1 is DDIM; the multistep third-order update (Taylor weight)
    integrates a quadratic noise prediction exactly; every third-order step of DPM-Solver-fast
    integrates a linear one exactly; the adaptive pair agrees exactly on a constant one, so the
    solve takes two attempts (and max_steps=1 stops it); a grid ending at sigma = 0 ends on the
    data prediction;
(d) the step API; the adaptive solver's grid stops (vmap with per-example step control is (a));
(e) bad input.
The convergence orders are measured in docs/derivations/dpm-solver-pp.md (not re-run here).
"""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd
from helpers import mixture_2d, no_runtime_typecheck
from scoredyn._solve.dpm_solver_fast import fast_orders

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NPZ = os.path.join(FIXTURES, "dpm_solver_variants.npz")
JSON = os.path.join(FIXTURES, "dpm_solver_variants.json")
# Largest deviations measured: 1.4e-13 (fixed-step states), 1.0e-12 (adaptive, without the
# official float32 rounding of the step-size factor); with that rounding, 1.5e-9.
REF_TOL = 1e-10
REF_TOL_F32_FACTOR = 1e-8

SDE = sd.VPSDE(0.1, 20.0)  # the official 'linear' schedule (scoredyn's default)
T_EPS = 1e-3
MODEL = sd.EpsModel(mixture_2d().eps_fn(SDE))  # the fixtures' model (checked below)


@eqx.filter_jit
def batch_sample(process, model, solver, grid, x_T):
    """`sd.sample` over a batch of starts (no key), the trajectory saved: one program per
    solver and grid length (the grid, the model's arrays and x_T are arguments)."""
    run = lambda x: sd.sample(None, process, model, solver, grid, x, save_trajectory=True)  # noqa: E731
    return jax.vmap(run)(x_T)


# ------------------------------------------------------------------ (a) reference fixtures
@pytest.fixture(scope="module")
def ref():
    if not (os.path.exists(NPZ) and os.path.exists(JSON)):
        pytest.skip("tests/fixtures/dpm_solver_variants.npz is missing")
    with open(JSON) as f:
        meta = json.load(f)
    m, gm = meta["mixture"], mixture_2d()
    for name, value in (("weights", gm.weights), ("means", gm.means), ("covs", gm.covs)):
        np.testing.assert_array_equal(np.asarray(m[name]), value)
    assert meta["schedule"].endswith(f"sd.VPSDE({SDE.beta_min}, {SDE.beta_max})")
    return {"meta": meta, "a": dict(np.load(NPZ))}


def _solver(case):
    kw = dict(case["solver"])
    cls = getattr(sd, kw.pop("class"))
    if cls is sd.DPMSolverAdaptive:  # arrays, not Python floats: one program for all tolerances
        kw["rtol"], kw["atol"] = jnp.asarray(kw["rtol"]), jnp.asarray(kw["atol"])
    return cls(**kw)


CASES = []
if os.path.exists(JSON):
    with open(JSON) as _f:
        CASES = sorted(json.load(_f)["cases"])


@pytest.mark.parametrize("name", CASES)
def test_agrees_with_official(ref, name):
    case, a = ref["meta"]["cases"][name], ref["a"]
    solver = _solver(case)
    adaptive = isinstance(solver, sd.DPMSolverAdaptive)
    grid = jnp.array([1.0, ref["meta"]["t_end"]]) if adaptive else jnp.asarray(a[f"{name}__grid"])
    res = batch_sample(SDE, MODEL, solver, grid, jnp.asarray(a["x_T"]))
    if adaptive:
        np.testing.assert_allclose(res.x, a[f"{name}__x_f64"], rtol=0, atol=REF_TOL)
        np.testing.assert_allclose(res.x, a[f"{name}__x"], rtol=0, atol=REF_TOL_F32_FACTOR)
        np.testing.assert_array_equal(res.stats["nfe"], a[f"{name}__nfe_f64"])
        np.testing.assert_array_equal(res.stats["nfe"], a[f"{name}__nfe"])
        steps = res.stats["num_accepted_steps"] + res.stats["num_rejected_steps"]
        np.testing.assert_array_equal(res.stats["num_steps"], steps)
        return
    np.testing.assert_allclose(res.x, a[f"{name}__x"], rtol=0, atol=REF_TOL)
    assert res.trajectory is not None
    traj = jnp.swapaxes(res.trajectory, 0, 1)  # (K + 1, B, 2)
    if f"{name}__ends" in a:  # singlestep: the official states are at the step ends
        traj = traj[a[f"{name}__ends"]]
    ref_traj = a[f"{name}__traj"]
    n = ref_traj.shape[0] - int(solver.denoise_to_zero)  # our last entry is the denoised x
    np.testing.assert_allclose(traj[:n], ref_traj[:n], rtol=0, atol=REF_TOL)
    K = grid.shape[0] - 1
    assert int(res.stats["nfe"][0]) == K + int(solver.denoise_to_zero) == solver.nfe(K)


# ------------------------------------------------------------- (b) the official conventions
def test_official_conventions(ref):
    """The official time grids are scoredyn's (to 1e-12; measured 4e-15): `log_snr_grid` for
    DPM-Solver-fast's 'logSNR', `sd.grids.uniform` / `quadratic` / `log_snr` otherwise; and
    the official orders are `DPMSolverFast.orders`."""
    a, cases = ref["a"], ref["meta"]["cases"]
    grids, builders = [], []
    for name, case in cases.items():
        call = case["call"]
        if call["method"] == "adaptive":
            continue
        n, skip = call["steps"], call["skip_type"]
        if call["method"] == "singlestep":
            fast = sd.DPMSolverFast(call["order"])
            np.testing.assert_array_equal(fast.orders(n), a[f"{name}__orders"])
            if skip == "logSNR":  # the paper's grid
                builders.append(lambda fast=fast, n=n: fast.log_snr_grid(SDE, n))
                grids.append(a[f"{name}__grid"])
                continue
        build = {"logSNR": sd.grids.log_snr, "time_uniform": sd.grids.uniform}.get(
            skip, sd.grids.quadratic
        )
        builders.append(lambda build=build, n=n: build(SDE, n))
        grids.append(a[f"{name}__grid"])
    ours = jax.jit(lambda: [b() for b in builders])()
    for g, want in zip(ours, grids, strict=True):
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-12)


def test_order_lists():
    """The official DPM-Solver-fast orders (K = N // 3 + 1 steps for order 3), written out."""
    assert fast_orders(20, 3).tolist() == [3] * 6 + [2]
    assert fast_orders(10, 3).tolist() == [3, 3, 3, 1]
    assert fast_orders(12, 3).tolist() == [3, 3, 3, 2, 1]
    assert fast_orders(3, 3).tolist() == [2, 1]
    assert fast_orders(2, 3).tolist() == [2] and fast_orders(1, 3).tolist() == [1]
    assert fast_orders(9, 2).tolist() == [2, 2, 2, 2, 1]
    assert fast_orders(4, 1).tolist() == [1, 1, 1, 1]
    for n in range(1, 40):
        for k in (1, 2, 3):
            assert fast_orders(n, k).sum() == n
    ms = sd.DPMSolverMultistep(3)
    assert ms.orders(8).tolist() == [1, 2, 3, 3, 3, 3, 2, 1]
    assert sd.DPMSolverMultistep(3, lower_order_final=False).orders(5).tolist() == [1, 2, 3, 3, 3]


# ------------------------------------------------------------- (c) independent identities
def test_order_one_is_ddim_and_a_step_to_zero_noise_ends_on_the_data_prediction():
    """Order 1 of every variant is DDIM (DPMSolver(1)); a multistep grid ending at sigma = 0
    makes the last step return the data prediction at its start (the first-order limit)."""
    x_T = jnp.array([0.4, -1.2])
    solvers = (sd.DPMSolver(1), sd.DPMSolverMultistep(1), sd.DPMSolverFast(1))

    @jax.jit
    def run(x):
        # the grids in the program too (eagerly, their ops compile one by one)
        grid = sd.grids.quadratic(SDE, 7)
        to_zero = jnp.append(sd.grids.log_snr(SDE, 6), 0.0)
        res = sd.sample(
            None, SDE, MODEL, sd.DPMSolverMultistep(3), to_zero, x, save_trajectory=True
        )
        assert res.trajectory is not None
        x0 = MODEL.x0(SDE, to_zero[-2], res.trajectory[-2])
        return [sd.sample(None, SDE, MODEL, s, grid, x).x for s in solvers], res.x, x0

    (ddim, ms, fast), x_end, x0 = run(x_T)
    np.testing.assert_allclose(ms, ddim, rtol=0, atol=1e-14)
    np.testing.assert_allclose(fast, ddim, rtol=0, atol=1e-14)
    np.testing.assert_allclose(x_end, x0, rtol=0, atol=1e-13)


def _poly_model(coefs):
    r"""$\hat\varepsilon = \sum_k c_k\ell^k$, independent of $x$."""

    def net(t, x):
        ell, out = 0.5 * SDE.log_snr(t), jnp.zeros_like(x)
        for k, c in enumerate(coefs):
            out = out + jnp.asarray(c, x.dtype) * ell**k
        return out

    return sd.EpsModel(net)


@jax.jit  # one program per grid length (eagerly, op by op)
def _half_log_snr_and_alpha(grid):
    return 0.5 * jax.vmap(SDE.log_snr)(grid), jax.vmap(SDE.marginal)(grid)[0]


def _exact_poly(grid, coefs, x_T):
    r"""$x_t = \frac{\alpha_t}{\alpha_s}x_s - \alpha_t\int_{\ell_s}^{\ell_t}e^{-\ell}p(\ell)\,d\ell$
    interval by interval (30-point Gauss-Legendre: exact to rounding)."""
    nodes, weights = np.polynomial.legendre.leggauss(30)
    ell, al = (np.asarray(a) for a in _half_log_snr_and_alpha(jnp.asarray(grid)))
    xs = [np.asarray(x_T)]
    for i in range(len(grid) - 1):
        lo, hi = ell[i], ell[i + 1]
        u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
        p = sum(c[None, :] * u[:, None] ** k for k, c in enumerate(coefs))
        integral = 0.5 * (hi - lo) * np.sum(weights[:, None] * np.exp(-u)[:, None] * p, 0)
        xs.append(al[i + 1] / al[i] * xs[-1] - al[i + 1] * integral)
    return np.stack(xs)


def test_polynomial_noise_predictions_are_integrated_exactly():
    r"""(i) With $\hat\varepsilon$ quadratic in $\ell$, every multistep third-order step after the
    two warm-up steps is exact with the Taylor weight of $D_2$ (from the true state at $t_2$;
    the official weight, half of it, is not: derivation page). (ii) With $\hat\varepsilon$ linear
    in $\ell$, each third-order step of DPM-Solver-fast (stages anywhere inside the step) is
    exact: the states at the ends of its first three steps of `[3, 3, 3, 1]`."""
    quad = [np.array([0.5, -1.0]), np.array([0.2, 0.3]), np.array([-0.05, 0.04])]
    # both grids from one compiled program (eagerly, their ops compile one by one)
    grid, fast_grid = jax.jit(
        lambda: (sd.grids.log_snr(SDE, 12, t_eps=T_EPS), sd.grids.uniform(SDE, 10, t_eps=T_EPS))
    )()
    x_T = jnp.array([0.7, -0.2])
    exact = _exact_poly(grid, quad, x_T)

    def from_warm(solver, model, grid, x_2):
        state = solver.init(SDE, model, grid, x_T)
        for _ in range(2):
            state = solver.step(None, state)[0]
        state = eqx.tree_at(lambda s: s.x, state, x_2)  # restart on the truth
        dyn, static = eqx.partition(state, eqx.is_array)

        def body(d, _):
            st = solver.step(None, eqx.combine(d, static))[0]
            return eqx.partition(st, eqx.is_array)[0], None

        dyn, _ = lax.scan(body, dyn, None, length=grid.shape[0] - 3)
        return eqx.combine(dyn, static).x

    lin = quad[:2]
    # fast_grid (uniform in t): stages off the log-SNR fractions
    fast = sd.DPMSolverFast(3)
    x_2 = jnp.asarray(exact[2])

    @jax.jit
    def run():
        m = _poly_model(quad)
        taylor = from_warm(sd.DPMSolverMultistep(3, lower_order_final=False), m, grid, x_2)
        res = sd.sample(None, SDE, _poly_model(lin), fast, fast_grid, x_T, save_trajectory=True)
        return taylor, res.trajectory

    taylor, traj = run()
    np.testing.assert_allclose(taylor, exact[-1], rtol=1e-13, atol=1e-12)  # |x| ~ 300
    exact_lin = _exact_poly(fast_grid, lin, x_T)
    np.testing.assert_allclose(np.asarray(traj)[[3, 6, 9]], exact_lin[[3, 6, 9]], atol=1e-12)
    assert np.max(np.abs(traj[10] - exact_lin[10])) > 1e-6  # the last step is first order


def test_adaptive_on_a_constant_noise_prediction_takes_two_attempts():
    r"""With $\hat\varepsilon = c$ both estimates of an attempt are DDIM's exact step, so
    $E = 0$: the first attempt ($h$ = `h_init`) is accepted, the next step reaches the end.
    The result is the exact solution. With `max_steps=1` the solve stops after the first
    attempt: `throw=False` returns it, the default raises."""
    c = jnp.array([0.3, -0.6])
    model = sd.EpsModel(lambda t, x: jnp.broadcast_to(c, x.shape).astype(x.dtype))
    grid = jnp.array([1.0, T_EPS])
    x_T = jnp.array([0.5, 1.5])
    solvers = (
        sd.DPMSolverAdaptive(2),
        sd.DPMSolverAdaptive(3),
        sd.DPMSolverAdaptive(3, max_steps=1, throw=False),
    )

    @jax.jit  # the exact solution in the solves' program (eagerly, op by op)
    def run():
        a_T, (a_e, s_e) = SDE.marginal(1.0)[0], SDE.marginal(T_EPS)
        h = 0.5 * (SDE.log_snr(T_EPS) - SDE.log_snr(1.0))
        exact = a_e / a_T * x_T - s_e * jnp.expm1(h) * c
        return exact, [sd.sample(None, SDE, model, s, grid, x_T) for s in solvers]

    exact, (*full, capped) = run()
    for solver, res in zip(solvers, full):
        np.testing.assert_allclose(res.x, exact, rtol=0, atol=1e-12)
        assert int(res.stats["num_steps"]) == int(res.stats["num_accepted_steps"]) == 2
        assert int(res.stats["nfe"]) == 2 * solver.order
    assert int(capped.stats["num_steps"]) == 1 and int(capped.stats["nfe"]) == 3
    assert np.max(np.abs(capped.x - exact)) > 0.1  # stopped early
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps=1"):
        sd.sample(None, SDE, model, sd.DPMSolverAdaptive(3, max_steps=1), grid, x_T)


# ------------------------------------------------------------------ (d) step API, transforms
@pytest.mark.parametrize(
    "solver",
    [sd.DPMSolverMultistep(3, denoise_to_zero=True), sd.DPMSolverFast(3, denoise_to_zero=True)],
    ids=["multistep-3", "fast-3"],
)
def test_step_api_in_a_scan_equals_the_verb(solver):
    model = MODEL
    grid = sd.grids.log_snr(SDE, 9)
    x_T = jnp.array([0.2, 0.8])
    K = grid.shape[0] - 1

    @jax.jit
    def both(x_T):
        res = sd.sample(None, SDE, model, solver, grid, x_T, save_trajectory=True)
        dyn, static = eqx.partition(solver.init(SDE, model, grid, x_T), eqx.is_array)

        def body(dyn, _):
            st, info = solver.step(None, eqx.combine(dyn, static))
            return eqx.partition(st, eqx.is_array)[0], (st.x, info.order)

        _, (xs, orders) = lax.scan(body, dyn, None, length=K)
        return res, xs, orders

    res, xs, orders = both(x_T)
    assert res.trajectory is not None
    np.testing.assert_allclose(xs, res.trajectory[1:], rtol=0, atol=1e-14)
    if isinstance(solver, sd.DPMSolverMultistep):
        np.testing.assert_array_equal(orders, solver.orders(K))
    else:  # position in the step, plus one: [1, 2, 3, 1, 2, 3, 1, 2, 1] for [3, 3, 2, 1]
        assert orders.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert int(res.stats["nfe"]) == solver.nfe(K) == K + 1


def test_adaptive_grid_stops():
    """A grid with inner points saves the states there, and ends within the tolerance of the
    two-point solve. (vmap with per-example step control is test (a): the official runs are
    one example at a time, scoredyn's a vmapped batch.)"""
    solver = sd.DPMSolverAdaptive(3, rtol=jnp.asarray(1e-3), atol=jnp.asarray(1e-4))
    ends = jnp.array([SDE.T, T_EPS])
    x = jnp.array([[0.3, -1.1], [-0.4, 0.2], [1.2, 0.5], [0.0, -0.7]])
    two = batch_sample(SDE, MODEL, solver, ends, x)  # the fixture's program (B = 4)
    stops = batch_sample(SDE, MODEL, solver, sd.grids.log_snr(SDE, 4, t_eps=T_EPS), x)
    assert stops.trajectory is not None and stops.trajectory.shape == (4, 5, 2)
    np.testing.assert_array_equal(stops.trajectory[:, 0], x)
    np.testing.assert_allclose(stops.x, two.x, rtol=0, atol=2e-3)
    assert np.all(stops.stats["nfe"] >= 3 * 4) and not np.allclose(stops.x, two.x, atol=1e-8)


# ------------------------------------------------------------------------ (e) bad input
def test_validation():
    for cls, bad in ((sd.DPMSolverMultistep, 4), (sd.DPMSolverFast, 0), (sd.DPMSolverAdaptive, 1)):
        with pytest.raises(ValueError, match="`order` must be"):
            cls(bad)  # pyright: ignore[reportArgumentType]
        with no_runtime_typecheck(), pytest.raises(TypeError, match="`order` must be an int"):
            cls(2.0)  # pyright: ignore[reportArgumentType]
    for cls, flag in (
        (sd.DPMSolverMultistep, "reference_3m"),
        (sd.DPMSolverMultistep, "lower_order_final"),
        (sd.DPMSolverFast, "denoise_to_zero"),
        (sd.DPMSolverAdaptive, "throw"),
    ):
        with no_runtime_typecheck(), pytest.raises(TypeError, match=f"`{flag}`"):
            cls(**{flag: 1})  # pyright: ignore[reportArgumentType]
    for name, bad in (("rtol", -0.1), ("h_init", 0.0), ("theta", -1.0), ("t_err", 0.0)):
        with pytest.raises(ValueError, match=f"`{name}`"):
            sd.DPMSolverAdaptive(**{name: bad})  # pyright: ignore[reportArgumentType]
    with no_runtime_typecheck(), pytest.raises(TypeError, match="`max_steps`"):
        sd.DPMSolverAdaptive(max_steps=10.0)  # pyright: ignore[reportArgumentType]
    with pytest.raises(NotImplementedError, match="stats"):
        sd.DPMSolverAdaptive().nfe(3)
    with no_runtime_typecheck(), pytest.raises(TypeError, match="`nfe`"):
        sd.DPMSolverFast().orders(2.0)  # pyright: ignore[reportArgumentType]

    model = MODEL
    x_T = jnp.zeros(2)
    to_zero = jnp.append(sd.grids.log_snr(SDE, 4), 0.0)
    for solver in (sd.DPMSolverFast(), sd.DPMSolverAdaptive()):
        with pytest.raises(ValueError, match="sigma > 0"):
            sd.sample(None, SDE, model, solver, to_zero, x_T)
    sched = sd.DiscreteSchedule.linear(100)
    for solver in (sd.DPMSolverMultistep(), sd.DPMSolverFast(), sd.DPMSolverAdaptive()):
        with pytest.raises(TypeError, match="`process`"):
            sd.sample(None, sched, model, solver, sd.grids.even(100, 10), x_T)
        with pytest.raises(ValueError, match="`grid`"):
            sd.sample(None, SDE, model, solver, jnp.array([0.1, 0.5, 1.0]), x_T)
