"""Flow matching: interpolants as processes, the velocity model, the time shift and the loss.

Every check is against an independent fact: the exact Gaussian-mixture oracles of
`scoredyn.toy` (posterior means and scores, exact for any (alpha, sigma)), autodiff of the
marginals, closed-form Gaussian pushes and log-densities, and closed-form time densities.
Derivations: docs/derivations/flow-matching.md.
"""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtr

import scoredyn as sd
from helpers import gaussian_1comp, mixture_2d, no_runtime_typecheck
from scoredyn._convert import (
    eps_from_velocity,
    velocity_from_eps,
    velocity_from_x0,
    x0_from_velocity,
)
from scoredyn._flow.loss import MODE_SCALE_MAX, mode_map

RF = sd.RectifiedFlow()
COS = sd.Interpolant(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t))
LINEAR = sd.Interpolant(lambda t: 1.0 - t, lambda t: t)
PATHS = [RF, COS]
PATH_IDS = ["rf", "cos"]
# processes in their own coordinate: the paths, and shifts of them (network at the base time)
PROCESSES = [RF, COS, sd.TimeShift(RF, 3.0), sd.TimeShift(COS, 0.5)]
PROCESS_IDS = ["rf", "cos", "rf-shift3", "cos-shift0.5"]
TIMES = [0.02, 0.3, 0.5, 0.8, 0.99]


def _base(process) -> sd.AbstractInterpolant:
    """The interpolant a velocity network of `process` is trained on."""
    base = process.process if isinstance(process, sd.TimeShift) else process
    assert isinstance(base, sd.AbstractInterpolant)
    return base


def oracle_velocity(gm, path):
    r"""The exact flow velocity $\mathbb E[u\mid x_t] = \dot\alpha\,\mathbb E[x_0\mid x] +
    \dot\sigma\,\mathbb E[\varepsilon\mid x]$ of `path` (network time), from the mixture's
    posterior mean and its score-based noise prediction (two independent oracle pieces)."""

    def net(t, x):
        a, s = path.marginal(t)
        da, ds = path.rates(t)
        x0, _ = gm.posterior_moments(a, s, x)
        return (da * x0 + ds * gm.eps_at(a, s, x)).astype(x.dtype)

    return net


# --------------------------------------------------------------------------- the processes


@pytest.mark.parametrize("process", PROCESSES + [LINEAR], ids=PROCESS_IDS + ["linear"])
def test_coefficients_match_autodiff_of_marginal(process):
    """f = d log(alpha)/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (the marginals of dx = f x dt +
    g dW) = -sigma^2 lambda'; an interpolant's rates are the derivatives of its marginal; and
    time_at_log_snr inverts log_snr."""

    @jax.jit
    @jax.vmap
    def check(t):
        (a, s), (da, ds) = jax.jvp(process.marginal, (t,), (jnp.ones_like(t),))
        f, g = process.coefficients(t)
        lam_dot = jax.grad(process.log_snr)(t)
        rates = process.rates(t) if isinstance(process, sd.AbstractInterpolant) else (da, ds)
        t_back = process.time_at_log_snr(process.log_snr(t))
        got = (f, g**2, g**2, rates, t_back)
        want = (da / a, 2 * s * ds - 2 * (da / a) * s**2, -(s**2) * lam_dot, (da, ds), t)
        return got, want

    got, want = check(jnp.asarray(TIMES))
    for g_, w_ in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g_, w_, rtol=1e-10)


def test_interpolant_of_the_straight_path_is_the_rectified_flow():
    """Interpolant(1 - t, t) (autodiff rates, bisection inverse) = RectifiedFlow (closed
    forms), and alpha(1) = 0 is the end of the path: lambda(1) = -inf."""

    @jax.jit
    def tables(ts, inner, lam):
        out = {}
        for proc in (LINEAR, RF):
            out[proc is RF] = (
                jax.vmap(proc.marginal)(ts),
                jax.vmap(proc.rates)(ts),
                jax.vmap(proc.log_snr)(ts),
                jax.vmap(proc.coefficients)(inner),
                proc.time_at_log_snr(lam),
            )
        return out[False], out[True]

    ts = jnp.linspace(0.0, 1.0, 11)
    lam = jnp.linspace(-12.0, 12.0, 9)
    lin, rf = tables(ts, ts[1:-1], lam)
    for a, b in zip(jax.tree_util.tree_leaves(lin), jax.tree_util.tree_leaves(rf)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rf[-1], 1.0 / (1.0 + jnp.exp(lam / 2)), rtol=1e-14)
    assert RF.log_snr(1.0) == -jnp.inf and RF.log_snr(0.0) == jnp.inf


# ------------------------------------------------------------------------------ the velocity


@pytest.mark.parametrize("process", PROCESSES[::3], ids=PROCESS_IDS[::3])
def test_velocity_converts_exactly_and_is_the_probability_flow_drift(process):
    """With the exact velocity of the 2-D mixture (posterior mean and score-based eps):

    - VelocityModel gives the exact eps, x0 (posterior mean) and score, also on a shifted
      process (network at the base time; the shifted cosine path covers both the autodiff
      rates and the chain rule);
    - velocity_from_eps / velocity_from_x0 and their inverses round-trip the oracle over
      (alpha, sigma, alpha', sigma');
    - E[u | x_t] = f x - g^2/2 score: the PF-ODE drift of the process is the oracle velocity
      (on a shift, tau'(t) times the base velocity at tau(t))."""
    gm = mixture_2d()
    path = _base(process)
    u_fn = oracle_velocity(gm, path)
    model = sd.VelocityModel(u_fn, path)
    pf = sd.probability_flow(process, gm.score_fn(process))
    x = jnp.array([0.4, -0.7])

    @jax.jit
    @jax.vmap
    def check(t):
        a, s = process.marginal(t)
        eps, score = gm.eps_at(a, s, x), gm.score_at(a, s, x)
        x0 = gm.posterior_moments(a, s, x)[0]
        tau = process.model_time(t)
        da, ds = path.rates(tau)
        u = u_fn(tau, x)
        rate = process.warp_rate(t) if isinstance(process, sd.TimeShift) else jnp.ones_like(t)
        got = (
            model.eps(process, t, x),
            model.score(process, t, x),
            model.x0(process, t, x),
            model.velocity(process, t, x),
            velocity_from_eps(a, s, da, ds, x, eps),
            velocity_from_x0(a, s, da, ds, x, x0),
            eps_from_velocity(a, s, da, ds, x, u),
            x0_from_velocity(a, s, da, ds, x, u),
            pf(t, x),
        )
        want = (eps, score, x0, u, u, u, eps, x0, rate * u)
        return got, want

    got, want = check(jnp.asarray(TIMES))
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-9, atol=1e-12)


def test_velocity_conversions_at_the_noise_end():
    """At t = 1 of the rectified flow (alpha = 0, alpha' = -1, sigma = sigma' = 1) eps = x
    exactly and x0 = x - u stay finite."""
    x1, u1 = jnp.array([0.3, -0.2]), jnp.array([1.0, 2.0])
    np.testing.assert_allclose(eps_from_velocity(0.0, 1.0, -1.0, 1.0, x1, u1), x1)
    np.testing.assert_allclose(x0_from_velocity(0.0, 1.0, -1.0, 1.0, x1, u1), x1 - u1)
    model = sd.VelocityModel(lambda t, x: u1)
    np.testing.assert_allclose(model.eps(RF, 1.0, x1), x1)


def test_velocity_of_the_cosine_path_is_a_scaled_v():
    """On alpha = cos(pi t/2), sigma = sin(pi t/2) the velocity is (pi/2) v: a VModel fed
    (2/pi) u predicts the mixture's exact eps, as the VelocityModel does."""
    gm = mixture_2d()
    u_fn = oracle_velocity(gm, COS)
    vmodel = sd.VModel(lambda t, x: (2 / jnp.pi) * u_fn(t, x))
    x = jnp.array([-0.3, 0.8])

    @jax.jit
    @jax.vmap
    def eps(t):
        a, s = COS.marginal(t)
        return vmodel.eps(COS, t, x), gm.eps_at(a, s, x)

    got, want = eps(jnp.asarray(TIMES))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_dpm_solver_1_is_euler_on_the_velocity():
    """DDIM (DPM-Solver-1) on a rectified-flow grid is Euler's method on the velocity,
    x + (t' - t) u (against an explicit Euler loop on a non-uniform grid)."""
    gm = mixture_2d()
    model = sd.VelocityModel(oracle_velocity(gm, RF))
    grid = np.asarray(jax.jit(lambda: sd.grids.quadratic(RF, 8))())  # one program, not op by op
    x_T = jnp.array([0.7, -1.2])
    model32 = sd.VelocityModel(lambda t, x: model.net(t, x.astype(jnp.float64)).astype(x.dtype))

    @jax.jit  # DDIM, the Euler loop and the float32 run in one program (eagerly: op by op)
    def run(x_T):
        ddim = sd.sample(None, RF, model, sd.DPMSolver(order=1), grid, x_T).x
        x = x_T
        for t, t_next in zip(grid[:-1], grid[1:]):
            x = x + (t_next - t) * model.velocity(RF, t, x)
        # a float32 grid and state (T = 0.999 rounds up in float32) run too, to float32 accuracy
        g32, x32 = jnp.asarray(grid, jnp.float32), x_T.astype(jnp.float32)
        return ddim, x, sd.sample(None, RF, model32, sd.DPMSolver(order=1), g32, x32).x

    ddim, x, out32 = run(x_T)
    np.testing.assert_allclose(ddim, x, rtol=1e-12)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, x, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- one ODE in log-SNR time


def test_one_ode_in_log_snr_time():
    """y = x / alpha obeys dy/dlambda = -e^{-lambda/2} eps(y, lambda) / 2 for every process:
    the PF-ODEs of RF, the cosine path and VP are one ODE, mapped by x_vp = x_rf alpha_vp /
    alpha_rf at equal log-SNR (pointwise, and through DPM-Solver-3 solves)."""
    gm = mixture_2d()
    vp = sd.VPSDE()
    y = jnp.array([0.6, -0.4])

    @jax.jit
    @jax.vmap
    def dy_dlam(lam):
        out = []
        for proc in (vp, RF, COS):
            t = proc.time_at_log_snr(lam)
            a, _ = proc.marginal(t)
            f, _ = proc.coefficients(t)
            dxdt = sd.probability_flow(proc, gm.score_fn(proc))(t, a * y)
            out.append((dxdt - f * a * y) / (a * jax.grad(proc.log_snr)(t)))
        return out

    want, got_rf, got_cos = dy_dlam(jnp.array([-6.0, -1.0, 0.5, 4.0]))
    np.testing.assert_allclose(got_rf, want, rtol=1e-9)
    np.testing.assert_allclose(got_cos, want, rtol=1e-9)

    # whole solves: DPM-Solver on grids with the same log-SNR nodes
    @jax.jit  # both solves and their grids in one program (eagerly: op by op)
    def solves(x_rf):
        lam = jnp.linspace(-9.0, 9.0, 13)
        grid_rf, grid_vp = RF.time_at_log_snr(lam), vp.time_at_log_snr(lam)
        a_rf_T, a_vp_T = RF.marginal(grid_rf[0])[0], vp.marginal(grid_vp[0])[0]
        x_vp = x_rf * a_vp_T / a_rf_T
        solver = sd.DPMSolver(order=3)
        out_rf = sd.sample(None, RF, sd.EpsModel(gm.eps_fn(RF)), solver, grid_rf, x_rf).x
        out_vp = sd.sample(None, vp, sd.EpsModel(gm.eps_fn(vp)), solver, grid_vp, x_vp).x
        a_rf, a_vp = RF.marginal(grid_rf[-1])[0], vp.marginal(grid_vp[-1])[0]
        return out_rf / a_rf, out_vp / a_vp

    y_rf, y_vp = solves(jnp.array([0.9, -0.3]))
    np.testing.assert_allclose(y_rf, y_vp, rtol=1e-9)


# ------------------------------------------------------------------------------ sampling


def _gaussian_push(process, m, v, x_T, t0, t1):
    """The exact PF-ODE map of N(m, v I) data from t0 to t1: affine, standardised per time."""
    a0, s0 = process.marginal(t0)
    a1, s1 = process.marginal(t1)
    z = (x_T - a0 * m) / jnp.sqrt(a0**2 * v + s0**2)
    return a1 * m + jnp.sqrt(a1**2 * v + s1**2) * z


def test_ode_pushes_a_gaussian_exactly():
    """The adaptive PF-ODE solve on the rectified flow, with a velocity model, carries
    N(m, v I) data along the exact affine map from T to t_eps (to 1e-7 at rtol = atol = 1e-9)."""
    m, v = 0.3, 0.25
    model = sd.VelocityModel(oracle_velocity(gaussian_1comp(2, m, v), RF))
    grid = jnp.array([RF.T, 1e-3])
    x_T = jnp.array([1.3, -0.6])
    ode = sd.ODE(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-9, atol=1e-9))
    run = jax.jit(  # the solve and the exact map in one program (eagerly: op by op)
        lambda x_T: (
            sd.sample(None, RF, model, ode, grid, x_T).x,
            _gaussian_push(RF, m, v, x_T, grid[0], grid[-1]),
        )
    )
    out, want = run(x_T)
    np.testing.assert_allclose(out, want, atol=1e-7)


def test_dpm_solver_converges_on_shifted_rectified_flow():
    """DPM-Solver-3 on the log-SNR grid of the SD3-shifted rectified flow (s = 3) with a
    velocity network trained on the unshifted flow, N(m, v I) data: error against the exact
    map below 6e-3 at K = 10 and falling at least 2^2.6 when K doubles (measured on RF:
    5.1e-3 -> 4.1e-4 -> 4.1e-5, order 3.3-3.6)."""
    process = sd.TimeShift(RF, 3.0)
    m, v = 0.3, 0.25
    model = sd.VelocityModel(oracle_velocity(gaussian_1comp(2, m, v), RF))
    x_T = jnp.array([1.3, -0.6])

    @jax.jit  # both step counts, their grids and the exact maps in one program (not op by op)
    def errors(x_T):
        errs = []
        for K in (10, 20):
            grid = sd.grids.log_snr(process, K)
            out = sd.sample(None, process, model, sd.DPMSolver(order=3), grid, x_T).x
            want = _gaussian_push(process, m, v, x_T, grid[0], grid[-1])
            errs.append(jnp.max(jnp.abs(out - want)))
        return errs

    errs = [float(e) for e in errors(x_T)]
    assert errs[0] < 6e-3 and errs[0] / errs[1] > 2**2.6, errs


def test_dpm_solver_on_rectified_flow_reaches_the_mixture():
    """n = 2000 DPM-Solver-3 draws (K = 15) of the 2-D mixture on RF: sample mean and
    covariance within 5 standard errors of the exact moments of p_{t_eps}."""
    gm = mixture_2d()
    model = sd.VelocityModel(oracle_velocity(gm, RF))
    n = 2000

    @jax.jit  # grid, draws and the exact moments in one program (eagerly: op by op)
    def run():
        grid = sd.grids.log_snr(RF, 15)
        keys = jax.random.split(jax.random.key(3), n)
        draw = lambda k: (
            sd.sample(  # noqa: E731
                None, RF, model, sd.DPMSolver(3), grid, RF.prior_sample(k, (2,))
            ).x
        )
        target = gm.marginal(RF, grid[-1])
        mean = jnp.einsum("k,ki->i", target.weights, target.means)
        dev = target.means - mean[None, :]
        cov = jnp.einsum("k,kij->ij", target.weights, target.covs) + jnp.einsum(
            "k,ki,kj->ij", target.weights, dev, dev
        )
        return jax.vmap(draw)(keys), mean, cov

    xs, mean, cov = (np.asarray(v) for v in run())
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(xs.mean(0) - mean), 5 * se_mean)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)  # Gaussian approx
    np.testing.assert_array_less(np.abs(np.cov(xs.T) - cov), 5 * se_cov + 1e-3)


def test_euler_maruyama_on_rectified_flow():
    """The reverse SDE of RF (f = -1/(1-t), g^2 = 2t/(1-t)) by Euler-Maruyama, K = 200 uniform
    steps from the prior N(0, sigma(T)^2), n = 2000: mean and variance of N(m, v I) data at
    t_eps within 4 MC standard errors (sqrt(v/n), v sqrt(2/n)) plus 0.01 of discretisation
    (the exact EM chain's own bias is 5e-4 in variance)."""
    m, v = 0.3, 0.25
    model = sd.VelocityModel(oracle_velocity(gaussian_1comp(2, m, v), RF))
    n = 2000

    @jax.jit  # grid, keys and draws in one program (eagerly: op by op)
    def run():
        grid = sd.grids.uniform(RF, 200)
        keys = jax.random.split(jax.random.key(5), n)

        def draw(k):
            k1, k2 = jax.random.split(k)
            return sd.sample(k2, RF, model, sd.EulerMaruyama(), grid, RF.prior_sample(k1, (2,))).x

        return jax.vmap(draw)(keys), RF.marginal(grid[-1])

    xs, (a, s) = run()
    xs, a, s = np.asarray(xs), float(a), float(s)
    mean, var = a * m, a**2 * v + s**2
    np.testing.assert_array_less(jnp.abs(xs.mean(0) - mean), 4 * math.sqrt(var / n) + 0.01)
    np.testing.assert_array_less(jnp.abs(xs.var(0) - var), 4 * var * math.sqrt(2 / n) + 0.01)


def test_log_likelihood_of_a_gaussian_under_rectified_flow():
    """log p_{t_eps}(x) through the PF-ODE of RF equals the exact Gaussian log-density: to the
    ODE tolerance with the exact log p_T as prior, and within the prior's mismatch (alpha(T)
    = 1e-3) with the default N(0, sigma(T)^2) (one solve: latent and integral from the stats)."""
    m, v, d = 0.3, 0.25, 2
    gm = gaussian_1comp(d, m, v)
    x = jnp.array([0.5, -0.1])
    t_eps = 1e-3

    @jax.jit  # the solve and the exact densities in one program (eagerly: op by op)
    def run(x):
        lp, stats = sd.log_likelihood(
            RF, gm.score_fn(RF), x, t_eps=t_eps, rtol=1e-9, atol=1e-9, return_stats=True
        )
        z, delta = stats["latent"], stats["delta_log_prob"]
        return lp, gm.marginal(RF, RF.T).log_prob(z) + delta, gm.marginal(RF, t_eps).log_prob(x)

    lp, exact_prior_lp, exact = run(x)
    np.testing.assert_allclose(exact_prior_lp, exact, atol=1e-6)
    np.testing.assert_allclose(lp, exact, atol=1e-2)


# ---------------------------------------------------------------------------- time shift


def test_time_shift_properties():
    """s = 1 is the identity; the shift multiplies the odds t/(1-t) by s, so on RF the
    log-SNR drops by 2 log s at every t; shifts compose by multiplying; T_s maps to T."""
    ts = np.linspace(0.05, 0.95, 7)
    names = ("marginal", "coefficients", "log_snr", "model_time")
    shifts = (0.25, 3.0, 7.5)

    @jax.jit  # every table in one program (eagerly each vmap runs op by op, each op compiled)
    def tables(ts):
        at = lambda proc, name: jax.vmap(getattr(proc, name))(ts)  # noqa: E731
        one = sd.TimeShift(RF, 1.0)
        base = {name: at(RF, name) for name in names}
        ident = {name: at(one, name) for name in names}
        per_shift = []
        for s in shifts:
            sh = sd.TimeShift(RF, s)
            per_shift.append(
                (
                    at(sh, "log_snr"),
                    at(sh, "warp"),
                    at(sh, "model_time"),
                    sh.marginal(sh.T),
                    RF.marginal(RF.T),
                    at(sd.TimeShift(sh, 1 / s), "marginal"),
                )
            )
        twice = sd.TimeShift(sd.TimeShift(COS, 2.0), 1.5)
        return base, ident, per_shift, at(twice, "marginal"), at(sd.TimeShift(COS, 3.0), "marginal")

    base, ident, per_shift, twice, thrice = tables(ts)
    for name in names:
        np.testing.assert_allclose(ident[name], base[name], rtol=1e-14)
    for s, (log_snr, tau, model_time, m_T, rf_T, back) in zip(shifts, per_shift):
        want = base["log_snr"] - 2 * math.log(s)
        np.testing.assert_allclose(log_snr, want, rtol=1e-12, atol=1e-14)
        tau = np.asarray(tau)
        np.testing.assert_allclose(tau / (1 - tau), s * ts / (1 - ts), rtol=1e-12)
        np.testing.assert_allclose(model_time, tau)
        np.testing.assert_allclose(m_T, rf_T, rtol=1e-12)
        np.testing.assert_allclose(back, base["marginal"])
    np.testing.assert_allclose(twice, thrice)


# ---------------------------------------------------------------------------------- loss


def _loss_times(time_sampling, n, **kw):
    """The loss's drawn times, read back through the loss itself: with x0 = 0 on RF,
    x_t = t eps and the target is eps = x_t / t, so a model x/t + sqrt(t) e_1 has loss t."""
    e1 = jnp.array([1.0, 0.0])

    def model_fn(t, x):
        return x / t + jnp.sqrt(t) * e1

    loss = lambda k: sd.flow_matching_loss(
        k, RF, model_fn, jnp.zeros(2), time_sampling=time_sampling, **kw
    )
    return jax.jit(jax.vmap(loss))(jax.random.split(jax.random.key(11), n))


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal", "mode"])
def test_loss_time_sampling_distributions(time_sampling):
    """Empirical CDFs of n = 20000 drawn times against the closed forms (Esser et al. 2024):
    uniform t; logit-normal Phi((logit t - m)/s); mode: F(f_mode(u)) = 1 - u (f_mode
    decreasing). Tolerance: 5 binomial SEs sqrt(F(1 - F)/n)."""
    n = 20000
    kw = {}
    if time_sampling == "logit_normal":
        kw = {"logit_mean": 0.3, "logit_std": 0.8}
    if time_sampling == "mode":
        kw = {"mode_scale": 1.29}
    t = np.asarray(_loss_times(time_sampling, n, **kw))
    assert t.min() >= 0 and t.max() <= 1
    if time_sampling == "uniform":
        q = np.linspace(0.1, 0.9, 9)
        F = q
    elif time_sampling == "logit_normal":
        q = np.linspace(0.1, 0.9, 9)
        F = np.asarray(ndtr((np.log(q / (1 - q)) - 0.3) / 0.8))
    else:
        u = np.linspace(0.1, 0.9, 9)
        q = np.asarray(mode_map(jnp.asarray(u), 1.29))
        F = 1 - u
    emp = (t[:, None] <= q[None, :]).mean(0)
    np.testing.assert_array_less(np.abs(emp - F), 5 * np.sqrt(F * (1 - F) / n))
    if time_sampling == "logit_normal":  # and the histogram against the density
        hist, edges = np.histogram(t, bins=10, range=(0.05, 0.95))
        mid = 0.5 * (edges[1:] + edges[:-1])
        dens = np.exp(-((np.log(mid / (1 - mid)) - 0.3) ** 2) / (2 * 0.8**2)) / (
            0.8 * math.sqrt(2 * math.pi) * mid * (1 - mid)
        )
        p = dens * (edges[1] - edges[0])
        np.testing.assert_array_less(np.abs(hist / n - p), 5 * np.sqrt(p / n) + 2e-3)


def test_loss_of_the_exact_velocity_is_the_posterior_variance():
    """For N(0, I) data on RF the Bayes-optimal velocity leaves
    E||u - E[u|x_t]||^2 = d / ((1-t)^2 + t^2), whose mean over uniform t is d pi / 2
    (closed form). n = 10000 draws; 5 SE tolerance."""
    d = 2
    gm = gaussian_1comp(d, 0.0, 1.0)
    u_fn = oracle_velocity(gm, RF)
    n = 10000
    keys = jax.random.split(jax.random.key(7), n)
    x0s = jax.random.normal(jax.random.key(8), (n, d))  # the data N(0, I)
    losses = jax.jit(jax.vmap(lambda k, x0: sd.flow_matching_loss(k, RF, u_fn, x0)))(keys, x0s)
    se = float(jnp.std(losses)) / math.sqrt(n)
    assert abs(float(jnp.mean(losses)) - d * math.pi / 2) < 5 * se
    # a shifted process trains the base's velocity at the shifted time: still the optimum
    shifted = sd.TimeShift(RF, 3.0)
    lsh = jax.jit(jax.vmap(lambda k, x0: sd.flow_matching_loss(k, shifted, u_fn, x0)))(keys, x0s)
    # E over tau = warp(u), u uniform: d / ((1 - tau)^2 + tau^2), by quadrature in u
    uq = (np.arange(4000) + 0.5) / 4000
    tau = 3.0 * uq / (1.0 + 2.0 * uq)  # SD3's shift with s = 3
    want = float(np.mean(d / ((1 - tau) ** 2 + tau**2)))
    assert abs(float(jnp.mean(lsh)) - want) < 5 * float(jnp.std(lsh)) / math.sqrt(n)


def test_loss_is_differentiable_and_jittable():
    rf = RF
    x0 = jnp.array([0.3, -0.2])

    def loss(w, key):
        return sd.flow_matching_loss(key, rf, lambda t, x: w * x, x0, time_sampling="mode")

    k = jax.random.key(0)
    g = jax.jit(jax.grad(loss))(0.5, k)  # under jit: eagerly grad's operations compile one by one
    assert jnp.isfinite(g)
    np.testing.assert_allclose(jax.jit(loss)(0.5, k), loss(0.5, k), rtol=1e-12)


# ---------------------------------------------------------------------------- validation


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="`T` of RectifiedFlow"):
        sd.RectifiedFlow(T=1.0)
    with pytest.raises(ValueError, match="`T` of Interpolant"):
        sd.Interpolant(lambda t: 1 - t, lambda t: t, T=1.5)
    with no_runtime_typecheck(), pytest.raises(TypeError, match="`alpha` must be callable"):
        sd.Interpolant(0.5, lambda t: t)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="`sigma` must map a scalar"):
        sd.Interpolant(lambda t: 1 - t, lambda t: jnp.stack([t, t]))
    with pytest.raises(ValueError, match="`shift`"):
        sd.TimeShift(RF, 0.0)
    with no_runtime_typecheck(), pytest.raises(TypeError, match="`process` of TimeShift"):
        sd.TimeShift("rf", 2.0)  # pyright: ignore[reportArgumentType]
    with no_runtime_typecheck(), pytest.raises(TypeError, match="unshifted interpolant"):
        sd.VelocityModel(lambda t, x: x, sd.TimeShift(RF, 2.0))  # pyright: ignore
    with no_runtime_typecheck(), pytest.raises(TypeError, match="AbstractInterpolant"):
        sd.VelocityModel(lambda t, x: x, sd.VPSDE())  # pyright: ignore[reportArgumentType]
    key, x0 = jax.random.key(0), jnp.zeros(2)
    u = lambda t, x: x
    with no_runtime_typecheck(), pytest.raises(ValueError, match="`time_sampling`"):
        sd.flow_matching_loss(key, RF, u, x0, time_sampling="cosmap")  # pyright: ignore
    with pytest.raises(ValueError, match="`mode_scale`"):
        sd.flow_matching_loss(key, RF, u, x0, time_sampling="mode", mode_scale=MODE_SCALE_MAX + 0.1)
    with pytest.raises(ValueError, match="`logit_std`"):
        sd.flow_matching_loss(key, RF, u, x0, logit_std=0.0)
    with pytest.raises(TypeError, match="must be a flow"):
        sd.flow_matching_loss(key, sd.VPSDE(), u, x0)
    with pytest.raises(ValueError, match="`t` must lie"):
        RF.marginal(1.5)
