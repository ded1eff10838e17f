"""Samplers: DDIM -> PF-ODE, DDPM -> data law, compile time independent of K, conversions."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import compiled_o3, mixture_2d

GM = mixture_2d()
VP = sd.VPSDE(0.1, 20.0)


def _mixture_moments(gm):
    mu = jnp.einsum("k,ki->i", gm.weights, gm.means)
    second = gm.covs + jnp.einsum("ki,kj->kij", gm.means, gm.means)
    return mu, jnp.einsum("k,kij->ij", gm.weights, second) - jnp.outer(mu, mu)


@pytest.mark.slow
def test_ddim_converges_to_pf_ode_first_order():
    """DDIM (eta = 0) on from_sde(VP, N), exact eps -> diffrax PF-ODE solution, error ~ 1/K."""
    N = 1024
    sched = sd.DiscreteSchedule.from_sde(VP, N)
    eps_fn = GM.eps_fn(VP)  # continuous oracle, called at t_n = n / N
    xT = jax.random.normal(jax.random.key(0), (16, 2))
    vf = sd.probability_flow(VP, GM.score_fn(VP))

    @jax.jit
    def ode(z):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: vf(t, y)),
            diffrax.Tsit5(),
            1.0,
            0.0,
            -1e-3,
            z,
            saveat=diffrax.SaveAt(ts=jnp.array([1.0 / 32, 0.0])),
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
            max_steps=20_000,
        )
        return sol.ys

    ref = jax.vmap(ode)(xT)  # (16, 2 times, 2)
    Ks = [32, 64, 128, 256]
    err_mid, err_end = [], []
    for K in Ks:
        tau = sd.respace(N, K)
        run = jax.jit(
            jax.vmap(
                lambda x: sd.sample_discrete(
                    None, sched, eps_fn, x, tau, lam2="ddim", return_trajectory=True
                )
            )
        )
        x0, traj = run(xT)
        k32 = K // 32
        assert int(tau[k32]) == 32  # t = 1/32
        err_mid.append(float(jnp.max(jnp.linalg.norm(traj[:, k32] - ref[:, 0], axis=-1))))
        err_end.append(float(jnp.max(jnp.linalg.norm(x0 - ref[:, 1], axis=-1))))
    s_mid = np.polyfit(np.log(Ks), np.log(err_mid), 1)[0]
    s_end = np.polyfit(np.log(Ks), np.log(err_end), 1)[0]
    print(
        f"\n[rate] DDIM -> PF-ODE at t=1/32: max error {err_mid}, slope {s_mid:.3f} (expected -1)"
    )
    print(f"[rate] DDIM -> PF-ODE at t=0:    max error {err_end}, slope {s_end:.3f} (expected -1)")
    assert -1.25 < s_mid < -0.85 and -1.25 < s_end < -0.85
    assert err_end[-1] < 0.02 and all(a > b for a, b in zip(err_end, err_end[1:]))


@pytest.fixture(scope="module")
def ddpm_samples():
    """DDPM ancestral samples (eta = 1) with the exact oracle eps, for several K (common noise)."""
    sched = sd.DiscreteSchedule.linear(1000)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    M = 6000
    xT = jax.random.normal(jax.random.key(0), (M, 2))
    keys = jax.random.split(jax.random.key(1), M)
    out = {}
    for K in (10, 20, 40, 1000):
        tau = sd.respace(1000, K)
        run = jax.jit(jax.vmap(lambda k, x: sd.sample_discrete(k, sched, eps_fn, x, tau)))
        if K == 1000:
            # 6,000 chains of 1,000 steps: the cost is running it, so LLVM at -O3 instead of
            # the suite's -O0 (conftest); same values up to rounding (no fast-math either way)
            run = compiled_o3(run, keys, xT)
        out[K] = run(keys, xT)
    return out


@pytest.mark.slow
def test_ddpm_reproduces_the_mixture(ddpm_samples):
    """K = N = 1000, exact eps: mean, covariance and component weights match the mixture."""
    x = ddpm_samples[1000]
    M = x.shape[0]
    mu, cov = _mixture_moments(GM)
    sd_x = jnp.sqrt(jnp.diag(cov))
    # mean within 4 standard errors; covariance within 4 s.e.
    # (the variance of a sample covariance entry is (C_ii C_jj + C_ij^2) / M)
    assert float(jnp.max(jnp.abs(x.mean(0) - mu) / (sd_x / np.sqrt(M)))) < 4
    se_cov = jnp.sqrt((jnp.outer(jnp.diag(cov), jnp.diag(cov)) + cov**2) / M)
    assert float(jnp.max(jnp.abs(jnp.cov(x.T) - cov) / se_cov)) < 4
    post = jax.vmap(lambda y: GM.posterior(1.0, 1e-6, y).weights)(x)  # responsibilities
    w = post.mean(0)
    assert float(jnp.max(jnp.abs(w - GM.weights) / jnp.sqrt(GM.weights / M))) < 4


@pytest.mark.slow
def test_ddpm_converges_in_distribution(ddpm_samples):
    """Covariance error of DDPM samples vs the data law (= the reverse SDE's) shrinks like 1/K."""
    _, cov = _mixture_moments(GM)
    Ks = [10, 20, 40]
    errs = [float(jnp.linalg.norm(jnp.cov(ddpm_samples[K].T) - cov)) for K in Ks + [1000]]
    slope = np.polyfit(np.log(Ks), np.log(errs[:3]), 1)[0]
    print(
        f"\n[rate] DDPM (eta=1) samples -> data law: cov error {errs} at K={Ks + [1000]}, "
        f"slope {slope:.3f}"
    )
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert -1.3 < slope < -0.7
    assert errs[-1] < 0.05 * errs[0]


def test_compile_time_and_memory_independent_of_K():
    """The traced program (a scan) has the same size for K = 10 and K = 1000."""
    sched = sd.DiscreteSchedule.linear(1000)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    x = jnp.zeros(2)
    sizes = {}
    for K in (10, 1000):
        tau = sd.respace(1000, K)
        jaxpr = jax.make_jaxpr(lambda k, x: sd.sample_discrete(k, sched, eps_fn, x, tau))(
            jax.random.key(0), x
        )
        # the sampler runs as one compiled kernel (a pjit): look inside it
        (inner,) = [
            e.params["jaxpr"].jaxpr
            for e in jaxpr.eqns
            if e.primitive.name in ("jit", "pjit")
            and any(q.primitive.name == "scan" for q in e.params["jaxpr"].jaxpr.eqns)
        ]
        scans = [e for e in inner.eqns if e.primitive.name == "scan"]
        assert len(scans) == 1 and scans[0].params["length"] == K
        sizes[K] = (len(inner.eqns), len(scans[0].params["jaxpr"].eqns))
    assert sizes[10] == sizes[1000]


def test_prediction_conversions_and_callable_variances():
    sched = sd.DiscreteSchedule.cosine(200)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    tau = sd.respace(200, 20, "quadratic")
    key, xT = jax.random.key(5), jnp.array([0.4, -1.0])

    def wrap(kind):
        def fn(t, x):
            n = jnp.round(t * 200).astype(jnp.int32)
            a, s = sched.marginal(n)
            e = eps_fn(t, x)
            x0 = (x - s * e) / a
            return {"score": -e / s, "x0": x0, "v": a * e - s * x0}[kind]

        return fn

    var = sd.reverse_variances(sched, tau, "ddpm_beta")
    lookup = lambda n, m, x, e: jnp.full_like(x, var[jnp.searchsorted(tau, n) - 1])

    @jax.jit
    def run_all(key, xT):
        run = lambda fn, k=key, **kw: sd.sample_discrete(k, sched, fn, xT, tau, **kw)
        out = {"ref": run(eps_fn)}
        for kind in ("score", "x0", "v"):
            out[kind] = run(wrap(kind), prediction=kind)
        out["var_array"] = run(eps_fn, variances=var)
        out["var_fn"] = run(eps_fn, variances=lookup)  # (n, m, x_n, eps) -> var
        out["var_name"] = run(eps_fn, variances="ddpm_beta")
        out["eta1"] = run(eps_fn, eta=1.0)  # eta = 1 is DDPM with beta-tilde
        out["eta0"] = run(eps_fn, eta=0.0)
        out["ddim"] = run(eps_fn, k=None, lam2="ddim")
        return out

    out = run_all(key, xT)
    for kind in ("score", "x0", "v"):
        np.testing.assert_allclose(out[kind], out["ref"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out["var_array"], out["var_fn"], rtol=1e-12)
    np.testing.assert_allclose(out["var_array"], out["var_name"], rtol=1e-12)
    np.testing.assert_allclose(out["eta1"], out["ref"], rtol=1e-12)
    np.testing.assert_allclose(out["eta0"], out["ddim"], rtol=1e-12)


def test_trajectory_output_and_final_noise():
    sched = sd.DiscreteSchedule.linear(100)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    tau = sd.respace(100, 7)
    xT = jnp.array([0.1, 0.2])

    @jax.jit
    def run(key):
        out = sd.sample_discrete(key, sched, eps_fn, xT, tau, return_trajectory=True)
        y0 = sd.sample_discrete(key, sched, eps_fn, xT, tau, variances="ddpm_beta")
        y1 = sd.sample_discrete(
            key, sched, eps_fn, xT, tau, final_noise=True, variances="ddpm_beta"
        )
        return out, y0, y1

    (x0, traj), y0, y1 = run(jax.random.key(0))
    assert traj.shape == (8, 2)
    np.testing.assert_array_equal(traj[-1], xT)
    np.testing.assert_array_equal(traj[0], x0)
    # final_noise adds sqrt(v_1) z on the step into n = 0 (v_1 = beta_{tau_1|0} here)
    assert float(jnp.max(jnp.abs(y1 - y0))) > 0


def test_sampler_with_traced_schedule_and_trajectory():
    """The schedule and the trajectory may be traced (arguments of a jitted function): the same
    DDIM samples as with both concrete. (`sample_discrete` under jit, vmap and grad, with a
    finite-difference check of the gradient: tests/test_transforms.py.)"""
    sched = sd.DiscreteSchedule.linear(100)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    tau = sd.respace(100, 10)
    x = jnp.array([0.3, -0.4])
    ref = sd.sample_discrete(None, sched, eps_fn, x, tau, lam2="ddim")
    g2 = eqx.filter_jit(lambda s, t, y: sd.sample_discrete(None, s, eps_fn, y, t, lam2="ddim"))
    np.testing.assert_allclose(g2(sched, tau, x), ref, rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_float32_sampler_finite(kind):
    s32 = getattr(sd.DiscreteSchedule, kind)(1000, dtype=jnp.float32)
    gm32 = mixture_2d(jnp.float32)
    eps_fn = sd.toy.discrete_eps_fn(gm32, s32)
    xT = jax.random.normal(jax.random.key(0), (64, 2), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 64)
    cases = [(1000, {}), (10, {"lam2": "ddim"})]  # DDPM with N steps; DDIM with long steps

    @jax.jit
    def run(keys, xT):
        return [
            jax.vmap(lambda k, x: sd.sample_discrete(k, s32, eps_fn, x, sd.respace(1000, K), **kw))(
                keys, xT
            )
            for K, kw in cases
        ]

    for (K, kw), out in zip(cases, run(keys, xT)):
        assert out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out))), (kind, K, kw)
        assert float(jnp.max(jnp.abs(out))) < 10


def test_sampler_validation():
    sched = sd.DiscreteSchedule.linear(100)
    eps_fn = sd.toy.discrete_eps_fn(GM, sched)
    tau = sd.respace(100, 10)
    key, x = jax.random.key(0), jnp.zeros(2)
    with pytest.raises(ValueError, match="variances"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, variances=jnp.ones(9))
    with pytest.raises(ValueError, match="variances"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, variances=-jnp.ones(10))
    with pytest.raises(ValueError, match="variances"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, variances="large")
    with pytest.raises(ValueError, match="lam2"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, lam2=jnp.ones(11))
    with pytest.raises(ValueError, match="lam2"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, lam2=jnp.full(10, 2.0))
    with pytest.raises(ValueError, match="lam2"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, lam2="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="eta"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, eta=float("nan"))
    with pytest.raises(ValueError, match="eta"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, eta=-1.0)
    with pytest.raises(TypeError, match="eps_fn"):  # dtype of eps_fn output differs from x_T
        sd.sample_discrete(key, sched, lambda t, y: y.astype(jnp.float32), x, tau)
    with pytest.raises(ValueError, match="eps_fn"):
        sd.sample_discrete(key, sched, lambda t, y: y[:1], x, tau)
    with pytest.raises(TypeError, match="eps_fn"):  # ill-typed on purpose
        sd.sample_discrete(key, sched, "eps", x, tau)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="K <= N"):
        sd.sample_discrete(key, sched, eps_fn, x, jnp.arange(102))
    with pytest.raises(ValueError, match="strictly increasing"):
        sd.sample_discrete(key, sched, eps_fn, x, jnp.array([0, 50, 40, 100]))
    with pytest.raises(ValueError, match="key"):
        sd.sample_discrete(None, sched, eps_fn, x, tau)
    with pytest.raises(ValueError, match="prediction"):
        sd.sample_discrete(key, sched, eps_fn, x, tau, prediction="noise")


def test_ddpm_beta_is_exact_for_standard_normal_data():
    """Data N(0, I), exact eps: v = beta_{n|m} keeps every marginal N(0, I), even on long steps.

    This is Su's second classic choice; v = beta-tilde shrinks the variance to
    1 - beta + beta-tilde < 1."""
    g = sd.toy.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
    sched = sd.DiscreteSchedule.linear(100, 1e-3, 0.1)
    eps_fn = sd.toy.discrete_eps_fn(g, sched)
    tau = sd.respace(100, 3)
    M = 40_000
    xT = jax.random.normal(jax.random.key(0), (M, 2))
    keys = jax.random.split(jax.random.key(1), M)

    @eqx.filter_jit
    def run(v):
        f = lambda k, x: sd.sample_discrete(
            k, sched, eps_fn, x, tau, variances=v, return_trajectory=True
        )[1]
        return jax.vmap(f)(keys, xT)

    var_beta = run("ddpm_beta").var(0)[1:]  # states at tau_1 .. tau_K
    np.testing.assert_allclose(var_beta, 1.0, atol=5 * np.sqrt(2 / M))
    var_tilde = run("ddpm").var(0)[1:-1]
    assert float(jnp.max(var_tilde)) < 1 - 0.05
