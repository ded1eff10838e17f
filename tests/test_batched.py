"""Batches: `sd.sample_batch` (one noise draw per step for the whole batch), `sd.BatchedNet`
(a network written for batches), `sd.ODE(shared_steps=True)` and `sd.sample_sde` with
`sd.EulerMaruyama()` (fixed steps without a Brownian tree)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoredyn as sd
from helpers import mixture_2d, no_runtime_typecheck

# tests share compiled solves (same solver, model, grid and shapes): one xdist worker
pytestmark = pytest.mark.xdist_group("batched")

GM = mixture_2d()
SCHED = sd.DiscreteSchedule.linear(1000)
EPS_D = sd.EpsModel(sd.toy.discrete_eps_fn(GM, SCHED))
VP = sd.VPSDE()
SCORE = sd.ScoreModel(GM.score_fn(VP))
EPS_C = sd.EpsModel(GM.eps_fn(VP))
TAU = sd.respace(1000, 10)
GRID = sd.grids.uniform(VP, 10, t_eps=1e-3)
LOG_SNR = sd.grids.log_snr(VP, 6, t_eps=1e-3)


def _per_example(key, process, model, solver, grid, x_T):
    keys = jax.random.split(key, x_T.shape[0])
    run = lambda k, x: sd.sample(k, process, model, solver, grid, x).x
    return jax.jit(jax.vmap(run))(keys, x_T)


# Every stochastic solver, on its process and grid.
STOCHASTIC = {
    "DDPM": (SCHED, EPS_D, sd.DDPM(), TAU),
    "DDIM(eta=0.5)": (SCHED, EPS_D, sd.DDIM(eta=0.5), TAU),
    "EulerMaruyama": (VP, SCORE, sd.EulerMaruyama(), GRID),
    "DPMSolverPP(stochastic)": (VP, EPS_C, sd.DPMSolverPP(order=2, stochastic=True), LOG_SNR),
    "EDMHeun(churn)": (VP, EPS_C, sd.EDMHeun(churn=2.0), LOG_SNR),
    "PredictorCorrector": (VP, SCORE, sd.PredictorCorrector(snr=0.16), GRID),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_every_stochastic_solver_batches(name):
    """One key for the batch: the solve is deterministic, examples started from the SAME point
    get independent noise (different outputs), and example 0 is `sd.sample` with that key.

    The last holds because row 0 of `jax.random.normal(k, (B, *shape))` is
    `jax.random.normal(k, shape)` (threefry's counter layout with `jax_threefry_partitionable`,
    JAX's default): so the per-example maths of the batched path (a corrector's norm, a
    variance head) is checked against the per-example solve to rounding."""
    process, model, solver, grid = STOCHASTIC[name]
    key = jax.random.key(3)
    x_T = jnp.broadcast_to(jnp.array([0.3, -0.4]), (4, 2))
    res = sd.sample_batch(key, process, model, solver, grid, x_T)
    again = sd.sample_batch(key, process, model, solver, grid, x_T)
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(again.x))
    assert res.x.shape == (4, 2) and bool(jnp.all(jnp.isfinite(res.x)))
    # the four examples started at one point: all different after independent noise
    d = np.asarray(res.x)
    assert min(np.abs(d[i] - d[j]).max() for i in range(4) for j in range(i)) > 1e-6
    one = sd.sample(key, process, model, solver, grid, x_T[0])
    np.testing.assert_allclose(np.asarray(res.x[0]), np.asarray(one.x), rtol=1e-12, atol=1e-12)
    # a different batch key gives a different draw
    other = sd.sample_batch(jax.random.key(4), process, model, solver, grid, x_T)
    assert float(jnp.max(jnp.abs(other.x - res.x))) > 1e-6


def test_bitwise_deterministic_eager_and_jitted():
    """Given the key, `sample_batch` gives the same bits eagerly and under the user's jit (the
    verb compiles its whole solve either way), with the process, model and grid arguments of
    the jitted function (closed over, XLA folds them as constants: the suite's -O0 build then
    rounds some steps differently, by an ulp, for `jax.vmap(sd.sample)` too)."""
    key = jax.random.key(0)
    x_T = jax.random.normal(jax.random.key(1), (4, 2))
    run = lambda k, s, m, tau, x: sd.sample_batch(k, s, m, sd.DDPM(), tau, x).x
    a = run(key, SCHED, EPS_D, TAU, x_T)
    b = eqx.filter_jit(run)(key, SCHED, EPS_D, jnp.asarray(TAU), x_T)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(run(key, SCHED, EPS_D, TAU, x_T)))


def test_batched_ddpm_equals_hand_loop_given_same_noise():
    r"""`sd.sample_batch` with `sd.DDPM()` IS the hand-written batched loop: step $k$ (pair
    $\tau_{k+1}\to\tau_k$, visited $k = K-1, \dots, 0$) draws `normal(fold_in(key, k), (B, d))`
    once, and example $b$ takes row $b$; no noise on the last step. Exact, with the chain's
    coefficients read from the step API; and to 1e-12 with coefficients computed here in
    NumPy from $\bar a$."""
    B, K = 4, TAU.shape[0] - 1  # B = 4: the program of test_every_stochastic_solver_batches
    key = jax.random.key(7)
    x_T = jax.random.normal(jax.random.key(8), (B, 2))
    eps = jax.vmap(EPS_D.eps_at, in_axes=(None, None, None, 0))

    @eqx.filter_jit
    def hand(key, x, sched, model, tau):
        # the chain's per-step constants from the step API, computed in the program (as the
        # verb does: computed eagerly, op by op, they can round differently by an ulp)
        st = sd.DDPM().init(sched, model, tau, x[0])
        eps_b = jax.vmap(model.eps_at, in_axes=(None, None, None, 0))

        def body(x, s):
            c, t, std, k = s
            x = c.a * x + c.b * eps_b(c.alpha_n, c.sigma_n, t, x)
            z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
            return x + std * z, None

        consts = (st.coeffs, st.times, st.std, jnp.arange(K))
        consts = jax.tree_util.tree_map(lambda a: a[::-1], consts)  # k = K - 1, ..., 0
        return lax.scan(body, x, consts)[0]

    res = sd.sample_batch(key, SCHED, EPS_D, sd.DDPM(), TAU, x_T)
    ref = hand(key, x_T, SCHED, EPS_D, jnp.asarray(TAU))
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(ref))

    # independent coefficients: x_m = a x_n + b eps + std z (posterior mean, beta_tilde)
    ab = np.asarray(SCHED.alpha_bar, np.float64)
    tau = np.asarray(TAU)
    x = np.asarray(x_T, np.float64)
    # the model's eps and the step's draw, each one compiled program for all K steps (eagerly,
    # their ops compile one by one)
    eps_j = jax.jit(lambda a, s, n, x: eps(a, s, SCHED.time(n), x))
    draw = jax.jit(lambda k: jax.random.normal(jax.random.fold_in(key, k), x.shape, jnp.float64))
    for k in range(K - 1, -1, -1):
        n, m = tau[k + 1], tau[k]
        beta = 1 - ab[n] / ab[m]
        a = np.sqrt(ab[m] / ab[n])
        b = -beta * np.sqrt(ab[m]) / (np.sqrt(ab[n]) * np.sqrt(1 - ab[n]))
        std = 0.0 if k == 0 else np.sqrt((1 - ab[m]) / (1 - ab[n]) * beta)
        e = np.asarray(eps_j(np.sqrt(ab[n]), np.sqrt(1 - ab[n]), n, jnp.asarray(x)))
        z = np.asarray(draw(k))
        x = a * x + b * e + std * z
    np.testing.assert_allclose(np.asarray(res.x), x, rtol=1e-12, atol=1e-12)


def _moments(x):
    """Means and second moments E[x_i x_j] (i <= j) with their Monte Carlo standard errors."""
    x = np.asarray(x, np.float64)
    feats = [x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 0] * x[:, 1], x[:, 1] ** 2]
    f = np.stack(feats, 1)
    return f.mean(0), f.std(0, ddof=1) / np.sqrt(len(x))


def _exact_moments(gm):
    w, m, c = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.covs))
    mean = w @ m
    second = np.einsum("k,kij->ij", w, c + np.einsum("ki,kj->kij", m, m))
    return np.array([mean[0], mean[1], second[0, 0], second[0, 1], second[1, 1]])


@pytest.mark.parametrize("name, K", [("DDPM", 100), ("EulerMaruyama", 200)])
def test_batched_agrees_in_distribution_with_per_example(name, K):
    r"""n = 4096 samples from each path, from independent prior draws. The means and second
    moments of the batched and the per-example path agree within 4.5 combined standard errors
    (each path's SE estimated from its own samples), and each is within 4.5 SE plus a
    discretisation allowance of 0.03 of the exact mixture's (the oracle `sd.toy`)."""
    process, model, solver, _ = STOCHASTIC[name]
    n = 4096
    if process is SCHED:
        grid = sd.respace(1000, K)
        x_T = jax.random.normal(jax.random.key(10), (2 * n, 2))
    else:
        grid = sd.grids.uniform(VP, K, t_eps=1e-3)
        x_T = VP.prior_sample(jax.random.key(10), (2 * n, 2))
    xb = sd.sample_batch(jax.random.key(11), process, model, solver, grid, x_T[:n]).x
    xp = _per_example(jax.random.key(12), process, model, solver, grid, x_T[n:])
    (mb, sb), (mp, sp) = _moments(xb), _moments(xp)
    z = np.abs(mb - mp) / np.sqrt(sb**2 + sp**2)
    assert np.all(z < 4.5), (name, mb, mp, z)
    exact = _exact_moments(GM)
    for m_, s_ in ((mb, sb), (mp, sp)):
        assert np.all(np.abs(m_ - exact) < 4.5 * s_ + 0.03), (name, m_, exact)


def test_axis_name_reaches_the_solver():
    """`axis_name` names the batch axis: `PredictorCorrector(axis_name=...)` then averages its
    norms over the batch (a different step size than per-example norms, so other samples)."""
    key = jax.random.key(3)
    x_T = VP.prior_sample(jax.random.key(4), (4, 2))
    pc = sd.PredictorCorrector(snr=0.16, axis_name="b")
    res = sd.sample_batch(key, VP, SCORE, pc, GRID, x_T, axis_name="b")
    per = sd.sample_batch(key, VP, SCORE, sd.PredictorCorrector(snr=0.16), GRID, x_T)
    assert bool(jnp.all(jnp.isfinite(res.x)))
    assert float(jnp.max(jnp.abs(res.x - per.x))) > 1e-8


def test_diffrax_sde_batches_with_one_key_per_example():
    """A Brownian tree names one path per key: `sample_batch` gives example b the key
    `split(key, B)[b]`, which is `jax.vmap(sd.sample)` exactly."""
    key = jax.random.key(5)
    x_T = jax.random.normal(jax.random.key(6), (4, 2))
    solver = sd.DiffraxSDE()
    res = sd.sample_batch(key, VP, SCORE, solver, GRID, x_T)
    ref = _per_example(key, VP, SCORE, solver, GRID, x_T)
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(ref), rtol=0, atol=1e-13)


def test_noise_free_last_step():
    """`EulerMaruyama()` in a batch: the last step is the mean of the transition,
    `x_K = x_{K-1} - h (f x_{K-1} - g^2 s)`; with `final_noise=True` noise is added there."""
    key = jax.random.key(2)
    x_T = VP.prior_sample(jax.random.key(3), (8, 2))
    res = sd.sample_batch(key, VP, SCORE, sd.EulerMaruyama(), GRID, x_T, save_trajectory=True)
    assert res.trajectory is not None and res.trajectory.shape == (8, 11, 2)

    @jax.jit  # the expected last step in one compiled program (eagerly, op by op)
    def last_step(x_prev):
        t, t_next = GRID[-2], GRID[-1]
        f, g = VP.coefficients(t)
        s = jax.vmap(lambda x: SCORE.score(VP, t, x))(x_prev)
        mean = x_prev - (t - t_next) * (f * x_prev - g**2 * s)
        # the noise of final_noise=True: g sqrt(h) z, z the batch's draw of step K-1
        z = jax.random.normal(jax.random.fold_in(key, 9), x_prev.shape, x_prev.dtype)
        return mean, g * jnp.sqrt(t - t_next) * z

    traj = np.asarray(res.trajectory)
    mean, noise = last_step(jnp.asarray(traj[:, -2]))
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(mean), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(traj[:, -1], np.asarray(res.x))
    noisy = sd.sample_batch(key, VP, SCORE, sd.EulerMaruyama(final_noise=True), GRID, x_T)
    # the same draws up to the last step, then the noise
    np.testing.assert_allclose(
        np.asarray(noisy.x) - np.asarray(res.x), np.asarray(noise), atol=1e-12
    )


def test_sample_sde_euler_maruyama_mapping():
    """`sd.sample_sde(key, ..., solver=sd.EulerMaruyama(...))` is `sd.sample(k_bm, ...,
    sd.EulerMaruyama(...), grid, x_T)` on the uniform grid with `k_prior, k_bm = split(key)`;
    `final_noise` chooses the noise-free last step. The default (`solver=None`, fixed steps) is
    `sd.EulerMaruyama()`. Adaptive options are refused."""
    key = jax.random.key(9)
    t_eps, K = 1e-3, 10
    k_prior, k_bm = jax.random.split(key)
    x_T = VP.prior_sample(k_prior, (2,))
    grid = np.linspace(VP.T, t_eps, K + 1)
    grid[-1] = t_eps
    # GRID: the reference solve with sd.EulerMaruyama() is test_every_stochastic_solver_batches'
    np.testing.assert_allclose(grid, GRID, rtol=1e-15)
    em = sd.EulerMaruyama(final_noise=True)  # the noise-free last step: test_noise_free_last_step
    out = sd.sample_sde(key, VP, GM.score_fn(VP), (2,), num_steps=K, solver=em)
    ref = sd.sample(k_bm, VP, SCORE, em, jnp.asarray(grid), x_T).x
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-13, atol=1e-13)
    out = sd.sample_sde(key, VP, GM.score_fn(VP), (2,), num_steps=K)
    ref = sd.sample(k_bm, VP, SCORE, sd.EulerMaruyama(), jnp.asarray(grid), x_T).x
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="must be None"):
        sd.sample_sde(
            key,
            VP,
            GM.score_fn(VP),
            (2,),
            solver=sd.EulerMaruyama(),
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3),
        )


def test_shared_step_ode_agrees_with_per_example():
    """`sd.ODE(shared_steps=True)` in a batch is one diffrax solve with one error norm over the
    batch; it agrees with the per-example adaptive solves to the solver's tolerance (rtol =
    atol = 1e-6 here; measured difference about 1e-6, bound 1e-4) and reports one solve's
    statistics."""
    x_T = VP.prior_sample(jax.random.key(4), (32, 2))
    grid = jnp.array([VP.T, 0.5, 1e-3])
    ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-6)
    per = sd.sample_batch(None, VP, SCORE, sd.ODE(stepsize_controller=ctrl), grid, x_T)
    ode = sd.ODE(stepsize_controller=ctrl, shared_steps=True)
    shared = sd.sample_batch(None, VP, SCORE, ode, grid, x_T, save_trajectory=True)
    np.testing.assert_allclose(np.asarray(shared.x), np.asarray(per.x), rtol=0, atol=1e-4)
    assert per.stats["nfe"].shape == (32,) and shared.stats["nfe"].shape == ()
    assert int(shared.stats["nfe"]) >= int(jnp.max(per.stats["nfe"])) // 2
    traj = shared.trajectory
    assert traj is not None and traj.shape == (32, 3, 2)
    np.testing.assert_array_equal(np.asarray(traj[:, 0]), np.asarray(x_T))
    np.testing.assert_array_equal(np.asarray(traj[:, -1]), np.asarray(shared.x))


def test_batched_net_is_called_once_on_the_batch():
    """`sd.BatchedNet(net)`: `net(t_batch, x_batch)` is traced on the whole batch (never on one
    example) inside `sample_batch`, gives the per-example network's samples, and works for one
    example (a batch of one)."""
    eps1 = GM.eps_fn(VP)
    shapes = []

    def batch_net(t, x):  # written for batches: t (B,), x (B, 2)
        shapes.append((jnp.shape(t), x.shape))
        return jax.vmap(eps1)(t, x)

    model = sd.EpsModel(sd.BatchedNet(batch_net))
    key = jax.random.key(1)
    x_T = VP.prior_sample(jax.random.key(2), (4, 2))
    res = sd.sample_batch(key, VP, model, sd.EulerMaruyama(), GRID, x_T)
    ref = sd.sample_batch(key, VP, SCORE, sd.EulerMaruyama(), GRID, x_T)
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(ref.x), rtol=1e-12, atol=1e-12)
    assert ((4,), (4, 2)) in shapes
    assert all(s[1][0] in (1, 4) for s in shapes)  # batches of one (the checks) or the batch
    x = jnp.array([0.2, -0.3])
    # one example, both evaluations in one compiled program (eagerly, op by op)
    one, ref1 = jax.jit(lambda x: (model.eps(VP, 0.4, x), eps1(jnp.asarray(0.4), x)))(x)
    np.testing.assert_allclose(
        np.asarray(one), np.asarray(ref1), rtol=1e-14
    )  # (gradients through BatchedNet: its case in test_transforms.py)


def test_cond_is_per_example():
    """`cond` leaves carry a leading batch axis: example b's network sees its own label."""
    net = lambda t, x, c: EPS_D.net(t, x) + 0.1 * c
    model = sd.EpsModel(net)
    x_T = jax.random.normal(jax.random.key(2), (6, 2))
    c = jnp.arange(6.0)
    res = sd.sample_batch(None, SCHED, model, sd.DDIM(), TAU, x_T, cond=(c,))
    run = lambda x, c: sd.sample(None, SCHED, model, sd.DDIM(), TAU, x, cond=(c,))
    ref = jax.vmap(run)(x_T, c).x
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(ref), rtol=1e-13, atol=1e-13)


def test_bad_input():
    x_T = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="key"):
        sd.sample_batch(None, SCHED, EPS_D, sd.DDPM(), TAU, x_T)
    with pytest.raises(ValueError, match="leading axis of size B = 4"):
        sd.sample_batch(None, SCHED, EPS_D, sd.DDIM(), TAU, x_T, cond=(jnp.zeros(3),))
    with no_runtime_typecheck(), pytest.raises(ValueError, match="batch axis"):
        sd.sample_batch(None, SCHED, EPS_D, sd.DDIM(), TAU, jnp.zeros(()))
    with pytest.raises(TypeError, match="shared_steps"):
        sd.ODE(shared_steps=1)  # pyright: ignore[reportArgumentType]
    bad = sd.EpsModel(sd.BatchedNet(lambda t, x: x[:, :1]))
    with pytest.raises(ValueError, match="shaped like"):
        bad.eps(VP, 0.5, jnp.ones(2))
