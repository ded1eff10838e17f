r"""Inverse problems against exact Gaussian posteriors.

The prior is a correlated 3-D Gaussian $\mathcal N(m, C)$; its noise prediction
$\hat\varepsilon = \sigma(\alpha^2C + \sigma^2I)^{-1}(x - \alpha m)$ is exact for every
$(\alpha, \sigma)$ (solved here with `jnp.linalg.solve`). With a linear measurement the
posterior is Gaussian and written below in closed form (NumPy, independent of the library):

- masked, noiseless: $x_u\mid x_k = y_k \sim \mathcal N\big(m_u + C_{uk}C_{kk}^{-1}(y_k - m_k),\
  C_{uu} - C_{uk}C_{kk}^{-1}C_{ku}\big)$;
- $y = Ax_0 + n$, $n\sim\mathcal N(0, \sigma_y^2I)$: $\Sigma = (C^{-1} + A^\top A/\sigma_y^2)^{-1}$,
  $\mu = \Sigma(C^{-1}m + A^\top y/\sigma_y^2)$.

The error of a sampler is $\lVert\bar x - \mu\rVert + \lVert\hat\Sigma - \Sigma\rVert_F$ from
$n = 2000$ samples with fixed keys; the figures are printed (`-s`) and quoted in
docs/derivations/inverse-problems.md. Also: DDIM inversion and the PF-ODE flow map round trips
(float64), an edit (encode under one class, decode under another) against the closed-form
Gaussian flow, wrapped solvers on other processes (jit, vmap and grad of the wrappers: their
case in tests/test_transforms.py), the step API, bad input.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import no_runtime_typecheck

N_SAMPLES = 2000
MEAN = np.array([0.5, -0.3, 0.2])
_L = np.array([[1.0, 0.0, 0.0], [0.9, 0.45, 0.0], [-0.6, 0.3, 0.5]])
COV = _L @ _L.T  # correlations 0.89 and -0.69 with coordinate 0
SCHED = sd.DiscreteSchedule.linear(1000)


class ExactModel(sd.AbstractModel):
    r"""Exact $\hat\varepsilon = \sigma U\operatorname{diag}(\alpha^2\ell + \sigma^2)^{-1}U^\top
    (x - \alpha m)$ of $\mathcal N(m, U\operatorname{diag}(\ell)U^\top)$ at
    $x = \alpha x_0 + \sigma\varepsilon$, on any process (it needs only $\alpha, \sigma$);
    `cond=(c,)` selects the mean `means[c]` (for the edit test)."""

    means: jax.Array
    lam: jax.Array
    U: jax.Array

    def eps_at(self, alpha, sigma, t, x, *cond):
        m = self.means[cond[0] if cond else 0]
        r = self.U.T @ (x - alpha * m)
        return sigma * (self.U @ (r / (alpha**2 * self.lam + sigma**2)))


def exact_model(means, cov) -> ExactModel:
    lam, U = np.linalg.eigh(cov)  # NumPy: independent of the library's mixtures
    return ExactModel(jnp.asarray(means), jnp.asarray(lam), jnp.asarray(U))


MODEL = exact_model(MEAN[None], COV)


def masked_posterior(mean, cov, known, y):
    """Mean and covariance of the unknown coordinates given x[known] = y[known] exactly."""
    k = np.flatnonzero(known)
    u = np.flatnonzero(~known)
    gain = cov[np.ix_(u, k)] @ np.linalg.inv(cov[np.ix_(k, k)])
    return mean[u] + gain @ (y[k] - mean[k]), cov[np.ix_(u, u)] - gain @ cov[np.ix_(k, u)]


def linear_posterior(mean, cov, A, y, noise_std):
    """Mean and covariance of x given y = A x + N(0, noise_std^2 I)."""
    prec = np.linalg.inv(cov) + A.T @ A / noise_std**2
    post = np.linalg.inv(prec)
    return post @ (np.linalg.solve(cov, mean) + A.T @ y / noise_std**2), post


def moment_error(xs, mu, sigma) -> float:
    xs = np.asarray(xs)
    return float(np.linalg.norm(xs.mean(0) - mu) + np.linalg.norm(np.cov(xs.T) - sigma))


def draw(solver, grid, process=SCHED, model: sd.AbstractModel = MODEL, n=N_SAMPLES, seed=0):
    """n samples of `solver` from standard normal starts, with fixed keys.

    At the suite's LLVM -O0: helpers.compiled_o3 was measured here and costs more than it saves
    (RePaint's -O3 compile alone is ~4 CPU-s more; the run is ~2 CPU-s at -O0)."""
    keys = jax.random.split(jax.random.key(seed), n)
    x_T = jax.random.normal(jax.random.key(seed + 1), (n, 3))
    run = jax.jit(jax.vmap(lambda k, x: sd.sample(k, process, model, solver, grid, x).x))
    return np.asarray(run(keys, x_T))


# ----------------------------------------------------------------------------- inpainting


@pytest.mark.slow
def test_replacement_is_biased_and_repaint_reduces_the_error():
    """Noiseless measurement of coordinate 0 (at 1.5 prior standard deviations); DDPM on 50
    steps of a 1000-step linear schedule. Replacement misses the exact posterior of the other
    two coordinates by far more than the Monte Carlo error (~0.03 at n = 2000); RePaint (jump
    5, 5 passes per block) cuts the error by more than half."""
    known = np.array([True, False, False])
    y = np.array([2.0, 0.0, 0.0])  # the unmeasured entries of y are ignored
    mu, sigma = masked_posterior(MEAN, COV, known, y)
    grid = sd.grids.even(1000, 50)
    xs_rep = draw(sd.Inpaint(sd.DDPM(), known, y), grid)
    xs_rp = draw(sd.RePaint(sd.DDPM(), known, y, jump=5, resample=5), grid)
    # at index 0 (sigma = 0) the measured entry is y exactly
    np.testing.assert_array_equal(xs_rep[:, 0], 2.0)
    np.testing.assert_array_equal(xs_rp[:, 0], 2.0)
    err_rep = moment_error(xs_rep[:, 1:], mu, sigma)
    err_rp = moment_error(xs_rp[:, 1:], mu, sigma)
    print(
        f"\n[inpaint, n={N_SAMPLES}] exact mean {mu}, replacement mean {xs_rep[:, 1:].mean(0)}, "
        f"RePaint mean {xs_rp[:, 1:].mean(0)}\n  error: replacement {err_rep:.3f}, "
        f"RePaint(jump=5, resample=5) {err_rp:.3f}"
    )
    assert err_rep > 0.4
    assert err_rp < 0.3
    assert err_rp < 0.5 * err_rep


# ----------------------------------------------------------------------------- DPS


@pytest.mark.slow
def test_dps_error_below_bound():
    r"""$y = Ax_0 + n$ with a 2x3 operator and $\sigma_y = 0.5$; DDPM on 100 steps.
    DPSGuidance (w = 1, the plain approximation $p(y\mid x_t)\approx p(y\mid\hat x_0)$) and the
    paper's normalised step (DPS, zeta = 0.1) are approximate: their errors are bounded and
    reported, and both far below the prior's distance to the posterior."""
    A = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])
    noise_std = 0.5
    y = np.array([1.5, -0.8])
    mu, sigma = linear_posterior(MEAN, COV, A, y, noise_std)
    Aj, yj = jnp.asarray(A), jnp.asarray(y)
    op = lambda x0: Aj @ x0
    grid = sd.grids.even(1000, 100)
    xs_g = draw(sd.DDPM(), grid, model=sd.DPSGuidance(MODEL, op, yj, noise_std))
    xs_s = draw(sd.DPS(sd.DDPM(), op, yj, step_size=0.1), grid)
    err_g = moment_error(xs_g, mu, sigma)
    err_s = moment_error(xs_s, mu, sigma)
    err_prior = float(np.linalg.norm(MEAN - mu) + np.linalg.norm(COV - sigma))
    print(
        f"\n[DPS, n={N_SAMPLES}] error: DPSGuidance(w=1) {err_g:.3f}, DPS(zeta=0.1) "
        f"{err_s:.3f}; prior vs posterior {err_prior:.3f}"
    )
    assert err_g < 0.25
    assert err_s < 0.6
    assert max(err_g, err_s) < 0.3 * err_prior


# ----------------------------------------------------------------------------- inversion


def test_ddim_inversion_round_trip():
    r"""DDIM inversion then DDIM decoding on 100 steps, float64: the plain inversion is off by
    O(1/K) (the decode evaluates eps at the other end of each step); with 10 fixed-point
    iterations per step it is the exact inverse to rounding."""
    tau = sd.grids.even(1000, 100)
    x0 = jax.random.multivariate_normal(
        jax.random.key(3), jnp.asarray(MEAN), jnp.asarray(COV), (64,)
    )

    def round_trip(fixed_point):
        z = jax.vmap(lambda x: sd.ddim_inversion(SCHED, MODEL, tau, x, fixed_point=fixed_point).x)
        dec = jax.vmap(lambda z: sd.sample(None, SCHED, MODEL, sd.DDIM(), tau, z).x)
        return float(jnp.max(jnp.abs(jax.jit(lambda x: dec(z(x)))(x0) - x0)))

    err_plain, err_fp = round_trip(0), round_trip(10)
    print(
        f"\n[DDIM inversion, K=100] round trip: plain {err_plain:.2e}, fixed_point=10 {err_fp:.2e}"
    )
    assert err_plain < 0.3
    assert err_fp < 1e-12


def test_pf_ode_round_trip_and_class_edit():
    r"""The PF-ODE flow map (`sd.encode` / `sd.decode`, Tsit5, rtol = atol = 1e-10): decode of
    encode is the identity, and encoding under class a then decoding under class b equals the
    closed-form Gaussian flow $x_t - \alpha_t m = S_t^{1/2}S_s^{-1/2}(x_s - \alpha_s m)$,
    $S_t = \alpha_t^2C + \sigma_t^2I$."""
    sde = sd.VPSDE()
    means = np.array([[1.0, -1.0, 0.5], [-1.0, 0.5, 0.0]])
    model = exact_model(means, COV)
    ctrl = diffrax.PIDController(rtol=1e-10, atol=1e-10)
    t_eps = 1e-3
    score = lambda c: lambda t, x: model.score(sde, t, x, c)
    enc = lambda x: sd.encode(sde, score(0), x, stepsize_controller=ctrl, t_eps=t_eps)
    dec = lambda c, z: sd.decode(sde, score(c), z, stepsize_controller=ctrl, t_eps=t_eps)
    x0 = jnp.asarray(means[:1]) + jax.random.normal(jax.random.key(4), (8, 3)) @ jnp.asarray(_L).T

    @jax.jit
    def run(x0):
        z = jax.vmap(enc)(x0)
        return jax.vmap(lambda c: jax.vmap(lambda z: dec(c, z))(z))(jnp.arange(2))

    back, edited = run(x0)
    err_round = float(jnp.max(jnp.abs(back - x0)))

    lam, U = np.linalg.eigh(COV)
    (a_e, s_e), (a_T, s_T) = (map(float, sde.marginal(t)) for t in (t_eps, sde.T))
    root = lambda a, s, p: U @ np.diag((a**2 * lam + s**2) ** p) @ U.T
    to_T = root(a_T, s_T, 0.5) @ root(a_e, s_e, -0.5)  # the flow from t_eps to T
    z = a_T * means[0] + (np.asarray(x0) - a_e * means[0]) @ to_T.T
    expected = a_e * means[1] + (z - a_T * means[1]) @ np.linalg.inv(to_T).T
    err_edit = float(np.max(np.abs(np.asarray(edited) - expected)))
    print(f"\n[PF-ODE] round trip {err_round:.2e}; class edit vs closed form {err_edit:.2e}")
    assert err_round < 1e-8
    assert err_edit < 1e-7


# ----------------------------------------------------------------------------- transforms


def test_wrappers_on_other_processes():
    """Inpaint and RePaint around DPM-Solver++(2M) on a rectified flow and DPS around DDIM on
    the schedule: the measured entries end at alpha y + sigma z, RePaint's trajectory is indexed
    like the grid; the step API (init, then step with fold_in(key, i)) equals sample.

    (Under jit and vmap, equal to the separate calls, with gradients: the wrappers' case in
    test_transforms.py, on the VP SDE; here the four examples run under one jit(vmap): the
    draws, the grid and the three wrappers' solves are one compiled program, not op by op.)"""
    rf = sd.RectifiedFlow()
    mask = jnp.array([True, False, True])
    A = lambda x0: x0[:2]

    @jax.jit
    def run():
        grid = sd.grids.uniform(rf, 10)
        ys = jax.random.normal(jax.random.key(5), (4, 3))
        keys = jax.random.split(jax.random.key(6), 4)
        x_T = jax.random.normal(jax.random.key(7), (4, 3))

        def one(k, x, y):
            inp = sd.sample(k, rf, MODEL, sd.Inpaint(sd.DPMSolverPP(), mask, y), grid, x).x
            rp = sd.RePaint(sd.DPMSolverPP(order=1), mask, y, jump=5, resample=2)
            rp = sd.sample(k, rf, MODEL, rp, grid, x, save_trajectory=True)
            dps = sd.DPS(sd.DDIM(), A, y[:2], step_size=0.2)
            d = sd.sample(None, SCHED, MODEL, dps, sd.grids.even(1000, 10), x).x
            return inp, rp.x, rp.trajectory, d

        return ys, keys, x_T, jax.vmap(one)(keys, x_T, ys), rf.marginal(grid[-1])

    ys, keys, *out = run()
    # checked in NumPy: eagerly each jnp operation compiles on its own
    ys, x_T, (inp, rp, traj, d), (a_e, s_e) = jax.tree.map(np.asarray, (ys, *out))
    m = np.asarray(mask)
    assert np.all(np.isfinite(d))
    # measured entries: alpha y + sigma z at t_eps (sigma = 1e-3)
    assert float(np.max(np.abs(inp[:, m] - a_e * ys[:, m]))) < 6 * float(s_e)
    assert traj.shape == (4, 11, 3)
    np.testing.assert_array_equal(traj[:, 0], x_T)
    np.testing.assert_array_equal(traj[:, -1], rp)

    # the step API: a Python loop of step equals the whole solve
    solver = sd.Inpaint(sd.DDIM(), mask, jnp.asarray(ys[0]))
    tau = sd.grids.even(1000, 5)
    state = solver.init(SCHED, MODEL, tau, jnp.asarray(x_T[0]))
    step = eqx.filter_jit(solver.step)
    for i in range(solver.num_steps(tau)):
        state, info = step(jax.random.fold_in(keys[0], i), state)
        assert isinstance(info, sd.DiscreteInfo)
    res = sd.sample(keys[0], SCHED, MODEL, solver, tau, jnp.asarray(x_T[0]))
    np.testing.assert_allclose(state.x, res.x, rtol=1e-12, atol=1e-12)
    assert res.stats == {"nfe": 5, "num_steps": 5}
    np.testing.assert_array_equal(np.asarray(res.x)[m], ys[0][m])  # index 0: sigma = 0


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_named():
    """Bad input raises errors that name the argument (scoredyn's own messages, so the
    run-time type checks are off around the ill-typed calls)."""
    mask, y = jnp.array([True, False, True]), jnp.zeros(3)
    x_T, tau = jnp.zeros(3), sd.grids.even(1000, 10)
    key = jax.random.key(0)
    with no_runtime_typecheck():
        with pytest.raises(TypeError, match="`solver` must be an sd.AbstractSolver"):
            sd.Inpaint(MODEL, mask, y)  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="`mask` must hold only 0 and 1"):
            sd.Inpaint(sd.DDPM(), jnp.array([0.0, 0.5, 1.0]), y)
        with pytest.raises(ValueError, match="`mask` of shape \\(2,\\) does not broadcast"):
            sd.Inpaint(sd.DDPM(), jnp.array([True, False]), y)
        with pytest.raises(ValueError, match="`y` of Inpaint must be shaped like x_T \\(4,\\)"):
            sd.sample(key, SCHED, exact_model(np.zeros((1, 4)), np.eye(4)),
                      sd.Inpaint(sd.DDPM(), mask, y), tau, jnp.zeros(4))  # fmt: skip
        with pytest.raises(ValueError, match="`key` is None"):
            sd.sample(None, SCHED, MODEL, sd.Inpaint(sd.DDIM(), mask, y), tau, x_T)
        with pytest.raises(ValueError, match="`jump` = 3 must divide the grid's number of steps"):
            sd.sample(key, SCHED, MODEL, sd.RePaint(sd.DDPM(), mask, y, jump=3), tau, x_T)
        with pytest.raises(ValueError, match="`resample` must be >= 1"):
            sd.RePaint(sd.DDPM(), mask, y, resample=0)
        with pytest.raises(TypeError, match="`operator` must be callable"):
            sd.DPSGuidance(MODEL, "A", y, 0.1)  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="`noise_std` must be > 0"):
            sd.DPSGuidance(MODEL, lambda x: x, y, 0.0)
        with pytest.raises(ValueError, match="`step_size` must be >= 0"):
            sd.DPS(sd.DDPM(), lambda x: x, y, step_size=-1.0)
        with pytest.raises(ValueError, match="`operator\\(x0\\)` must return an array shaped like"):
            sd.sample(None, SCHED, MODEL, sd.DPS(sd.DDIM(), lambda x: x[:2], y), tau, x_T)
        with pytest.raises(ValueError, match="`fixed_point` must be >= 0"):
            sd.ddim_inversion(SCHED, MODEL, tau, x_T, fixed_point=-1)
        with pytest.raises(TypeError, match="`process` must be an sd.DiscreteSchedule or a linear"):
            sd.ddim_inversion(object(), MODEL, tau, x_T)  # pyright: ignore[reportArgumentType]
