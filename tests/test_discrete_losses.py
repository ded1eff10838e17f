"""Training losses: parameterisations, weightings, time sampling, and the link to the bound."""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import scoredyn as sd
from helpers import compiled_o3, gaussian_1comp, mixture_2d, no_runtime_typecheck, old_bound

GM = mixture_2d()
VP = sd.VPSDE(0.1, 20.0)


def _run_o3(fn, *args):
    """`jax.jit(fn)(*args)` compiled at LLVM -O1 (`helpers.compiled_o3`), not the suite's -O0:
    run-bound Monte Carlo. -O1 runs about as fast as -O3 and compiles these two programs
    ~1 CPU-s faster in all (measured)."""
    return compiled_o3(fn, *args, level="1")(*args)


Prediction = Literal["eps", "x0", "v", "score"]
Weighting = Literal["uniform", "snr", "snr_trunc", "snr_plus_one", "min_snr", "likelihood"]


class _Scaled(eqx.Module):
    """A deliberately imperfect model: c * (exact eps)."""

    fn: Callable[[jax.Array, jax.Array], jax.Array]
    c: float

    def __call__(self, t, x):
        return self.c * self.fn(t, x)


def _native_models(sde, eps_fn) -> dict[Prediction, Callable]:
    """The same (imperfect) model written in the four parameterisations (formulas of the test)."""

    def coeffs(t):
        return (
            sde.marginal(t)
            if not isinstance(sde, sd.DiscreteSchedule)
            else sde.marginal(jnp.round(t * sde.num_steps).astype(jnp.int32))
        )

    def x0_fn(t, x):
        a, s = coeffs(t)
        return (x - s * eps_fn(t, x)) / a

    def v_fn(t, x):
        a, s = coeffs(t)
        return a * eps_fn(t, x) - s * x0_fn(t, x)

    def score_fn(t, x):
        return -eps_fn(t, x) / coeffs(t)[1]

    return {"eps": eps_fn, "x0": x0_fn, "v": v_fn, "score": score_fn}


def _cheap_eps(t, x):
    """An imperfect eps-prediction, nonlinear in t and x."""
    return 0.8 * jnp.tanh(x + t) - 0.3 * t * x[::-1]


@pytest.mark.parametrize("process", ["vp", "cosine", "discrete"])
def test_weightings_agree_across_parameterisations(process):
    """One error, four parameterisations: the named weightings give the same loss for each."""
    sde = {"vp": VP, "cosine": sd.CosineVPSDE(), "discrete": sd.DiscreteSchedule.cosine(100)}[
        process
    ]
    # any model will do (the identities hold for every eps_hat): a cheap nonlinear one keeps the
    # compiled program (24 losses) small
    models = _native_models(sde, _cheap_eps)
    x0 = jnp.array([0.4, -0.9])
    weightings: list[Weighting] = [
        "uniform",
        "snr",
        "snr_trunc",
        "snr_plus_one",
        "min_snr",
        "likelihood",
    ]
    if process == "discrete":  # no likelihood weighting for a discrete schedule
        weightings = ["uniform", "snr", "snr_plus_one", "min_snr"]
    elif process == "cosine":  # same code path as vp: a smaller matrix
        weightings = ["uniform", "snr", "snr_plus_one", "likelihood"]

    if process == "discrete":
        lam_of = lambda t: sde.log_snr(jnp.round(t * sde.num_steps).astype(jnp.int32))
    else:
        lam_of = sde.log_snr

    @jax.jit
    def losses(key):
        out = {
            (k, w): sd.diffusion_loss(key, sde, models[k], x0, prediction=k, weighting=w)
            for k in models
            for w in weightings
        }
        inv_snr = lambda t: jnp.exp(-lam_of(t))  # a callable weighting
        out["eps", "inv_snr"] = sd.diffusion_loss(key, sde, models["eps"], x0, weighting=inv_snr)
        return out

    for key in jax.random.split(jax.random.key(0), 3):
        L = losses(key)
        for w in weightings[
            1:
        ]:  # SNR-based and likelihood weightings do not depend on the parameterisation
            for k in ("x0", "v", "score"):
                np.testing.assert_allclose(L[k, w], L["eps", w], rtol=1e-8)
        np.testing.assert_allclose(
            L["eps", "snr"], L["eps", "uniform"], rtol=1e-10
        )  # SNR x0-loss = eps-loss
        np.testing.assert_allclose(L["x0", "uniform"], L["eps", "inv_snr"], rtol=1e-8)  # x0-loss
        np.testing.assert_allclose(
            L["v", "uniform"], L["eps", "snr_plus_one"], rtol=1e-8
        )  # VP: v-loss


def test_likelihood_weight_is_minus_dlambda_dt():
    """weighting='likelihood' for eps = -d lambda/dt (autodiff of log_snr), i.e. g^2 / sigma^2."""
    x0 = jnp.array([0.4, -0.9])
    model = _Scaled(GM.eps_fn(VP), 0.8)
    w_auto = lambda t: -jax.grad(VP.log_snr)(t)

    @jax.jit  # one program for the four keys
    def both(key):
        a = sd.diffusion_loss(key, VP, model, x0, weighting="likelihood")
        return a, sd.diffusion_loss(key, VP, model, x0, weighting=w_auto)

    for key in jax.random.split(jax.random.key(1), 4):
        a, b = both(key)
        np.testing.assert_allclose(a, b, rtol=1e-8)


@pytest.mark.slow
def test_eps_loss_of_the_oracle_is_the_irreducible_variance():
    """Gaussian data, exact eps, uniform n.

    E[loss] = (1/N) sum_n d alpha_n^2 s^2 / (alpha_n^2 s^2 + sigma_n^2).
    """
    d, m, s2 = 3, 0.3, 0.25
    g = gaussian_1comp(d, m, s2)
    sched = sd.DiscreteSchedule.linear(200, 1e-3, 0.05)
    eps_fn = sd.toy.discrete_eps_fn(g, sched)
    M = 40_000
    kx, kl = jax.random.split(jax.random.key(2))
    x0 = g.sample(kx, M)
    L = jax.jit(jax.vmap(lambda k, x: sd.diffusion_loss(k, sched, eps_fn, x)))(
        jax.random.split(kl, M), x0
    )
    ab = np.asarray(sched.alpha_bar[1:])
    ref = np.mean(d * ab * s2 / (ab * s2 + 1 - ab))
    se = float(L.std()) / np.sqrt(M)
    assert abs(float(L.mean()) - ref) < 4 * se, (float(L.mean()), ref, se)


@pytest.mark.slow
def test_importance_sampling_is_unbiased_and_reduces_variance():
    """Same mean under uniform and log-SNR-uniform t; much smaller variance for 'likelihood'."""
    x0 = jnp.array([0.4, -0.9])
    model = GM.eps_fn(VP)
    M = 50_000
    keys = jax.random.split(jax.random.key(3), M)
    out = {}
    w: Weighting  # declared: the lambda below captures the loop variables
    ts: Literal["uniform", "importance"]
    for w in ("uniform", "likelihood"):
        for ts in ("uniform", "importance"):
            f = jax.jit(
                jax.vmap(
                    lambda k: sd.diffusion_loss(
                        k, VP, model, x0, weighting=w, time_sampling=ts, t_eps=1e-3
                    )
                )
            )
            L = f(keys)
            out[w, ts] = (float(L.mean()), float(L.std()))
    for w in ("uniform", "likelihood"):
        (mu_u, sd_u), (mu_i, sd_i) = out[w, "uniform"], out[w, "importance"]
        assert abs(mu_u - mu_i) < 4 * np.hypot(sd_u, sd_i) / np.sqrt(M), (w, out)
    print(
        "\n[loss] std of the likelihood-weighted loss: uniform t "
        f"{out['likelihood', 'uniform'][1]:.1f}, "
        f"importance {out['likelihood', 'importance'][1]:.1f}"
    )
    assert out["likelihood", "importance"][1] < 0.5 * out["likelihood", "uniform"][1]


@pytest.mark.slow
def test_likelihood_loss_is_the_limit_of_the_bound():
    """E[sum of Gaussian KL terms] (DDPM, K = N) -> likelihood loss.

    The limit is 1/2 int g^2 E||s_hat - grad log q||^2 dt.

    Model-dependent parts (model minus exact eps, common random numbers) for Gaussian data, both
    compared with the integral computed by quadrature.
    """
    d, m, s2, c = 3, 0.3, 0.25, 0.9
    g = gaussian_1comp(d, m, s2)
    x0 = jnp.array([0.9, -0.1, 0.3])
    N = 1000
    sched = sd.DiscreteSchedule.from_sde(VP, N)
    orc = g.eps_fn(VP)
    model = _Scaled(orc, c)

    # closed form: E||c eps* - eps||^2 - E||eps* - eps||^2 at log alpha^2 = la2
    # (eps* is linear in x for Gaussian data)
    def excess(la2):
        a2, sg2 = np.exp(la2), -np.expm1(la2)
        D = a2 * s2 + sg2
        A = np.sqrt(sg2 * a2)[..., None] * (np.asarray(x0) - m) / D[..., None]
        B = (sg2 / D)[..., None]
        return np.sum((c * A) ** 2 + (c * B - 1) ** 2 - A**2 - (B - 1) ** 2, -1)

    def la2_of(t):  # log alpha(t)^2 of the VP SDE, in NumPy
        t = np.asarray(t, np.float64)
        return -(0.5 * t**2 * (VP.beta_max - VP.beta_min) + t * VP.beta_min)

    def neg_lam_dot(t):  # -d lambda/dt by central differences (not the library's g^2/sigma^2)
        lam = lambda s: la2_of(s) - np.log(-np.expm1(la2_of(s)))
        return -(lam(t + 1e-6) - lam(t - 1e-6)) / 2e-6

    def discrete_sum(n_steps):
        """sum_{n=2}^{N} 1/2 (SNR_{n-1}/SNR_n - 1) excess(t_n), in closed form."""
        la2 = la2_of(np.arange(1, n_steps + 1) / n_steps)
        lam = la2 - np.log(-np.expm1(la2))
        return np.sum(0.5 * np.expm1(lam[:-1] - lam[1:]) * excess(la2[1:]))

    def integral(n_steps):
        f = lambda t: 0.5 * neg_lam_dot(t) * float(excess(la2_of(t)))
        return integrate.quad(f, 1 / n_steps, 1.0, limit=200)[0]

    Ns = [250, 1000, 4000]
    gaps = [abs(discrete_sum(n) - integral(n)) for n in Ns]
    slope = np.polyfit(np.log(Ns), np.log(gaps), 1)[0]
    print(f"\n[rate] E[KL sum] - 1/2 int g^2 E||s - s*||^2 dt: {gaps} at N={Ns}, slope {slope:.3f}")
    assert -1.1 < slope < -0.9
    ref, ref_disc = integral(N), discrete_sum(N)

    M = 2000
    tau = sd.respace(N, N)
    kl = lambda k, f: old_bound(k, sched, f, x0, tau, decoder="gaussian", variances="ddpm").kl
    dkl = _run_o3(
        jax.vmap(lambda k: kl(k, model) - kl(k, orc)), jax.random.split(jax.random.key(4), M)
    )
    Mc = 50_000
    loss = lambda k, f: sd.diffusion_loss(
        k, VP, f, x0, weighting="likelihood", time_sampling="importance", t_eps=1 / N
    )
    dl = _run_o3(
        jax.vmap(lambda k: loss(k, model) - loss(k, orc)), jax.random.split(jax.random.key(5), Mc)
    )
    dl = 0.5 * (1 - 1 / N) * dl
    se_kl, se_l = float(dkl.std()) / np.sqrt(M), float(dl.std()) / np.sqrt(Mc)
    print(
        f"\n[vlb] KL sum (N={N}) {float(dkl.mean()):.5f} +- {se_kl:.5f}; likelihood loss "
        f"{float(dl.mean()):.5f} +- {se_l:.5f}; closed-form sum {ref_disc:.5f}, integral {ref:.5f}"
    )
    assert (
        abs(float(dkl.mean()) - ref_disc) < 4 * se_kl
    )  # the bound's KL terms, exactly in expectation
    assert abs(float(dl.mean()) - ref) < 4 * se_l  # the continuous likelihood-weighted loss


def test_loss_transforms_and_validation():
    x0 = jnp.array([0.4, -0.9])
    lin = sd.DiscreteSchedule.linear(100)

    class Net(eqx.Module):
        w: jax.Array

        def __call__(self, t, x):
            return self.w * x + t

    net = Net(jnp.array(0.3))
    f = jax.jit(
        lambda k, n: sd.diffusion_loss(
            k, VP, n, x0, weighting="min_snr", time_sampling="importance"
        )
    )
    g = jax.jit(
        jax.grad(lambda n, k: sd.diffusion_loss(k, VP, n, x0, prediction="v"), allow_int=True)
    )
    k = jax.random.key(0)
    assert bool(jnp.isfinite(f(k, net)))
    grad = g(net, k)
    h = 1e-6
    v_loss = jax.jit(lambda n: sd.diffusion_loss(k, VP, n, x0, prediction="v"))  # w traced
    fd = (v_loss(Net(jnp.array(0.3 + h))) - v_loss(Net(jnp.array(0.3 - h)))) / (2 * h)
    np.testing.assert_allclose(grad.w, fd, rtol=1e-6)
    batch = jax.jit(jax.vmap(lambda kk: sd.diffusion_loss(kk, lin, net, x0)))(
        jax.random.split(k, 4)
    )
    assert batch.shape == (4,)
    # the pyright-ignored calls below are ill-typed on purpose: scoredyn's own errors
    with no_runtime_typecheck(), pytest.raises(ValueError, match="weighting"):
        sd.diffusion_loss(k, VP, net, x0, weighting="elbo")  # pyright: ignore[reportArgumentType]
    with no_runtime_typecheck(), pytest.raises(ValueError, match="prediction"):
        sd.diffusion_loss(k, VP, net, x0, prediction="noise")  # pyright: ignore[reportArgumentType]
    with no_runtime_typecheck(), pytest.raises(ValueError, match="time_sampling"):
        sd.diffusion_loss(k, VP, net, x0, time_sampling="sobol")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="t_eps"):
        sd.diffusion_loss(k, VP, net, x0, t_eps=0.0)
    with pytest.raises(ValueError, match="snr_gamma"):
        sd.diffusion_loss(k, VP, net, x0, weighting="min_snr", snr_gamma=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        sd.diffusion_loss(k, lin, net, x0, weighting="likelihood")
    with no_runtime_typecheck(), pytest.raises(TypeError, match="process"):
        sd.diffusion_loss(k, "vp", net, x0)  # pyright: ignore[reportArgumentType]
    with no_runtime_typecheck(), pytest.raises(TypeError, match="model_fn"):
        sd.diffusion_loss(k, VP, lambda t, x: x.astype(jnp.float32), x0)
