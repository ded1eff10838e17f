r"""Evaluation: Gamma, variational bounds of every sampler at every K, the PF-ODE likelihood, samples.

Everything here is a composition of public library calls (`sd.analytic.estimate_gamma`,
`sd.respace`, `sd.reverse_variances`, `sd.analytic.optimal_variances`,
`sd.analytic.optimal_trajectory`, `sd.variational_bound`, `sd.sample_discrete`,
`sd.bits_per_dim`, `sd.log_likelihood`). Two devices keep it fast on a CPU:

- All samplers that share a trajectory are evaluated in ONE `jax.vmap` over their variance
  arrays. The draws $x_n \sim q(x_n\mid x_0)$ depend only on the key and $x_0$, so JAX evaluates
  the network once per step and batches only the Gaussian KL terms over the samplers.
- Every sampler passes its forward variances `lam2` and reverse variances as arrays, so there is
  one compilation per trajectory length $K$, not one per sampler.
"""

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from ._config import Config
from ._data import Dataset

# Display names, in table order.
DDPM_TILDE = "DDPM, beta-tilde"
DDPM_BETA = "DDPM, beta"
DDIM = "DDIM (eta = 0)"
ANALYTIC_DPM = "Analytic-DPM"
ANALYTIC_DDIM = "Analytic-DDIM"
ANALYTIC_DPM_OT = "Analytic-DPM, optimal traj."
PF_ODE = "PF-ODE"
BOUND_METHODS = (DDPM_TILDE, DDPM_BETA, ANALYTIC_DPM, ANALYTIC_DDIM, ANALYTIC_DPM_OT)
SAMPLERS = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM, ANALYTIC_DPM_OT)


class DDIMMeanAsDDPM(eqx.Module):
    r"""Rewrite a DDIM-mean reverse step in the DDPM parameterisation, so its bound is finite.

    The DDIM forward process ($\lambda = 0$) has a deterministic posterior
    $q_0(x_m\mid x_n, x_0)$, so the variational bound built on it is $+\infty$ for every reverse
    variance. A reverse chain $p(x_m\mid x_n) = \mathcal N(\mu_0(x_n), v)$ with the DDIM mean
    $\mu_0 = c_0(0)\hat x_0 + c_n(0)x_n$ (Analytic-DDIM: $v > 0$) is still a proper model, and the
    DDPM forward chain ($\lambda^2 = \tilde\beta$) bounds its likelihood. The bound evaluates the
    mean as $c_0(\tilde\beta)\hat x_0' + c_n(\tilde\beta)x_n$, so this wrapper returns the noise
    prediction $\hat\varepsilon' = (x_n - \alpha_n\hat x_0')/\sigma_n$ of

    $$\hat x_0' = \frac{c_0(0)\,\hat x_0 + \big(c_n(0) - c_n(\tilde\beta)\big)\,x_n}{c_0(\tilde\beta)},$$

    for which the DDPM-parameterised mean equals $\mu_0$ exactly. `weight` blends
    $\hat\varepsilon + w(\hat\varepsilon' - \hat\varepsilon)$, so one `vmap` over $w\in\{0, 1\}$
    evaluates DDPM-mean and DDIM-mean chains with a single network call. The step $n\to m$ is
    looked up from $n = \mathrm{round}(tN/T)$ along the trajectory `tau`. On the decoder step
    ($m = 0$) both parameterisations coincide and $\hat\varepsilon' = \hat\varepsilon$.
    """

    net: eqx.Module
    alpha: jax.Array  # (N+1,)
    sigma: jax.Array
    coef_a: jax.Array  # (N+1,): c0(0)/c0(bt) at the n of each step, 1 elsewhere
    coef_b: jax.Array  # (N+1,): (cn(0) - cn(bt))/c0(bt), 0 elsewhere
    weight: jax.Array
    num_steps: int = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __call__(self, t, x):
        eps = self.net(t, x)
        n = jnp.clip(jnp.round(t * (self.num_steps / self.T)).astype(jnp.int32), 0, self.num_steps)
        a, s = self.alpha[n].astype(x.dtype), self.sigma[n].astype(x.dtype)
        x0_hat = (x - s * eps) / a
        x0_new = self.coef_a[n].astype(x.dtype) * x0_hat + self.coef_b[n].astype(x.dtype) * x
        eps_new = (x - a * x0_new) / s
        return eps + self.weight.astype(x.dtype) * (eps_new - eps)


def ddim_mean_as_ddpm(net, sched, tau, weight=1.0) -> DDIMMeanAsDDPM:
    """Build [`DDIMMeanAsDDPM`][] for trajectory `tau` (see its docstring)."""
    N = sched.num_steps
    n, m = tau[1:], tau[:-1]
    ddim = sd.forward_posterior(sched, n, m, jnp.zeros(n.shape, sched.dtype))
    ddpm = sd.forward_posterior(sched, n, m, None)
    c0p = jnp.where(m > 0, ddpm.coef_x0, 1.0)
    a_steps = jnp.where(m > 0, ddim.coef_x0 / c0p, 1.0)
    b_steps = jnp.where(m > 0, (ddim.coef_xn - ddpm.coef_xn) / c0p, 0.0)
    coef_a = jnp.ones((N + 1,), sched.dtype).at[n].set(a_steps)
    coef_b = jnp.zeros((N + 1,), sched.dtype).at[n].set(b_steps)
    alpha, sigma = jnp.sqrt(sched.alpha_bar), jnp.sqrt(sched.one_minus_alpha_bar)
    sigma = sigma.at[0].set(1.0)  # n = 0 is never called; avoid 0/0 in the unused slot
    return DDIMMeanAsDDPM(net, alpha, sigma, coef_a, coef_b, jnp.asarray(weight, sched.dtype), N,
                          float(sched.T))


@dataclasses.dataclass
class Evaluation:
    """What the demo measured (all numbers are Python floats, for JSON)."""

    ks: list[int]
    bounds: dict[str, dict[int, float]]  # method -> K -> mean bits/dim
    stderr: dict[str, dict[int, float]]  # method -> K -> standard error over examples
    pf_ode: dict[str, float] | None  # mean, stderr, nfe, n
    gamma: dict  # ms_eps (list), num_samples
    trajectories: dict[int, list[int]]  # K -> optimal trajectory
    samples: dict[str, dict[int, np.ndarray]]  # sampler -> K -> (n, d)
    reference: dict[str, float]  # extra lines (true NLL, oracle bounds, uniform baseline ...)
    oracle_bounds: dict[str, dict[int, float]] | None
    eps_error: dict[str, float] | None
    seconds: dict[str, float]
    num_eval: int


def _decoder(data: Dataset) -> dict:
    if data.levels is not None:
        return dict(decoder="discretized", levels=data.levels)
    return dict(decoder="gaussian")


@eqx.filter_jit
def _bounds_batch(net, sched, x0s, keys, tau, lam2s, variances, weights, decoder_kw):
    """bits/dim of every (method, example): vmap over methods (outer) and examples (inner)."""
    decoder_kw = dict(decoder_kw)

    def one_method(lam2, var, w):
        model = ddim_mean_as_ddpm(net, sched, tau, w)

        def one_example(key, x0):
            vb = sd.variational_bound(key, sched, model, x0, tau, lam2=lam2, variances=var,
                                      **decoder_kw)
            return vb.bits_per_dim

        return jax.vmap(one_example)(keys, x0s)

    return jax.vmap(one_method)(lam2s, variances, weights)


def _method_arrays(sched, tau, est, data: Dataset):
    """(lam2, variances, weight) per bound method that uses the even trajectory."""
    bt = sd.reverse_variances(sched, tau, "ddpm")
    beta = sd.reverse_variances(sched, tau, "ddpm_beta")
    rng = data.data_range
    a_dpm = sd.analytic.optimal_variances(sched, tau, est, forward="ddpm", data_range=rng)
    a_ddim = sd.analytic.optimal_variances(sched, tau, est, forward="ddim", data_range=rng)
    names = (DDPM_TILDE, DDPM_BETA, ANALYTIC_DPM, ANALYTIC_DDIM)
    lam2s = jnp.stack([bt, bt, bt, bt])  # the DDPM forward chain bounds every model
    variances = jnp.stack([bt, beta, a_dpm, a_ddim])
    weights = jnp.array([0.0, 0.0, 0.0, 1.0], sched.dtype)  # DDIM mean for Analytic-DDIM
    return names, lam2s, variances, weights


def _sampler_arrays(sched, tau, est, data: Dataset, last_clip):
    bt = sd.reverse_variances(sched, tau, "ddpm")
    beta = sd.reverse_variances(sched, tau, "ddpm_beta")
    zero = jnp.zeros_like(bt)
    rng = data.data_range
    a_dpm = sd.analytic.optimal_variances(sched, tau, est, forward="ddpm", data_range=rng,
                                          last_step_clip=last_clip)
    a_ddim = sd.analytic.optimal_variances(sched, tau, est, forward="ddim", data_range=rng,
                                           last_step_clip=last_clip)
    names = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM)
    lam2s = jnp.stack([bt, bt, zero, bt, zero])
    variances = jnp.stack([bt, beta, zero, a_dpm, a_ddim])
    return names, lam2s, variances


@eqx.filter_jit
def _sample_batch(net, sched, keys, x_T, tau, lam2s, variances, clip):
    def one_method(lam2, var):
        return jax.vmap(
            lambda k, x: sd.sample_discrete(k, sched, net, x, tau, lam2=lam2, variances=var,
                                            clip_x0=clip)
        )(keys, x_T)

    return jax.vmap(one_method)(lam2s, variances)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = float(x.std(ddof=1) / math.sqrt(x.shape[-1])) if x.shape[-1] > 1 else float("nan")
    return float(x.mean()), se


def evaluate(cfg: Config, data: Dataset, sched, sde, net, key, log=print, progress=None):
    """Run every measurement of the demo on the trained `net` (an eps-prediction `(t, x)`)."""
    seconds = {}
    k_gamma, k_bound, k_ode, k_samp = jax.random.split(key, 4)
    N = sched.num_steps
    dec = _decoder(data)
    dec_kw = tuple(sorted(dec.items()))
    train = jnp.asarray(data.train[: cfg.num_gamma], jnp.float32)
    test = jnp.asarray(data.test[: cfg.num_eval], jnp.float32)

    # ---- Gamma (Analytic-DPM's score moment), once for all K and all samplers
    t0 = time.perf_counter()
    est = sd.analytic.estimate_gamma(k_gamma, sched, net, train)
    ms = np.asarray(est.ms_eps)
    seconds["gamma"] = time.perf_counter() - t0
    log(f"Gamma: ms_eps estimated at all {N} steps from {est.num_samples} training images "
        f"({seconds['gamma']:.1f} s)")

    # ---- variational bounds, every K, every method
    ks = list(cfg.ks) + [N]
    bounds = {m: {} for m in BOUND_METHODS}
    stderr = {m: {} for m in BOUND_METHODS}
    trajectories = {}
    keys = jax.random.split(k_bound, test.shape[0])
    oracle = None if data.oracle is None else sd.toy.discrete_eps_fn(data.oracle, sched)
    oracle_bounds = None if oracle is None else {m: {} for m in BOUND_METHODS}
    oracle_est = None
    if oracle is not None:
        oracle_est = sd.analytic.estimate_gamma(k_gamma, sched, oracle, train)
    t0 = time.perf_counter()
    for K in ks:
        tau = sd.respace(N, K)
        tau_ot = tau if K == N else sd.analytic.optimal_trajectory(sched, est, K)
        trajectories[K] = [int(v) for v in np.asarray(tau_ot)]
        for model, e, store in ((net, est, None), (oracle, oracle_est, oracle_bounds)):
            if model is None:
                continue
            names, lam2s, variances, weights = _method_arrays(sched, tau, e, data)
            bpd = np.asarray(_bounds_batch(model, sched, test, keys, tau, lam2s, variances,
                                           weights, dec_kw))
            if K == N:
                bpd_ot = bpd[2:3]
            else:
                t_ot = tau_ot if store is None else sd.analytic.optimal_trajectory(sched, e, K)
                a_ot = sd.analytic.optimal_variances(sched, t_ot, e, forward="ddpm",
                                                     data_range=data.data_range)
                bt_ot = sd.reverse_variances(sched, t_ot, "ddpm")
                # same shapes as above: pad the batch of methods to reuse the compilation
                lam2_ot = jnp.stack([bt_ot] * 4)
                var_ot = jnp.stack([a_ot] * 4)
                bpd_ot = np.asarray(_bounds_batch(model, sched, test, keys, t_ot, lam2_ot,
                                                  var_ot, jnp.zeros(4, sched.dtype), dec_kw))[:1]
            rows = dict(zip(names, bpd))
            rows[ANALYTIC_DPM_OT] = bpd_ot[0]
            for name, vals in rows.items():
                mean, se = _mean_se(vals)
                if store is None:
                    bounds[name][K], stderr[name][K] = mean, se
                else:
                    store[name][K] = mean
        if progress is not None:
            progress(f"bounds K={K}")
        log(f"  K = {K:4d}: " + ", ".join(f"{m} {bounds[m][K]:.3f}" for m in BOUND_METHODS))
    seconds["bounds"] = time.perf_counter() - t0

    # ---- PF-ODE likelihood (dequantised for grid data)
    t0 = time.perf_counter()
    pf = _pf_ode(cfg, data, sched, sde, net, k_ode)
    seconds["pf_ode"] = time.perf_counter() - t0
    log(f"PF-ODE: {pf['mean']:.3f} ± {pf['stderr']:.3f} bits/dim on {pf['n']} held-out examples, "
        f"{pf['nfe']:.0f} function evaluations ({seconds['pf_ode']:.1f} s)")

    reference = {}
    if data.levels is not None:
        reference["uniform over the grid"] = math.log2(data.levels)
    eps_error = None
    if data.oracle is not None:
        x = jnp.asarray(data.test[: cfg.num_eval], jnp.float32)
        true_nll = -jax.vmap(data.oracle.log_prob)(x) / (data.dim * math.log(2.0))
        reference["exact -log2 p(x)/d of the data"] = float(jnp.mean(true_nll))
        pf_true = _pf_ode(cfg, data, sched, sde, None, k_ode)
        reference["PF-ODE with the exact score"] = pf_true["mean"]
        eps_error = _eps_error(net, oracle, sched, data, k_ode)

    # ---- samples for the picture
    t0 = time.perf_counter()
    samples = _samples(cfg, data, sched, net, est, k_samp)
    seconds["samples"] = time.perf_counter() - t0
    return Evaluation(
        ks=ks,
        bounds=bounds,
        stderr=stderr,
        pf_ode=pf,
        gamma={"ms_eps": [float(v) for v in ms], "num_samples": int(est.num_samples)},
        trajectories=trajectories,
        samples=samples,
        reference=reference,
        oracle_bounds=oracle_bounds,
        eps_error=eps_error,
        seconds=seconds,
        num_eval=int(test.shape[0]),
    )


@eqx.filter_jit
def _pf_batch(sde, score, xs, keys, levels, t_eps, rtol):
    if levels is not None:
        def one(key, x):
            bpd, stats = sd.bits_per_dim(sde, score, x, key=key, levels=levels, t_eps=t_eps,
                                         rtol=rtol, atol=rtol, return_stats=True)
            return bpd, stats["nfe"]
    else:
        def one(key, x):
            lp, stats = sd.log_likelihood(sde, score, x, t_eps=t_eps, rtol=rtol, atol=rtol,
                                          return_stats=True)
            return -lp / (x.size * math.log(2.0)), stats["nfe"]

    return jax.vmap(one)(keys, xs)


def _pf_ode(cfg, data, sched, sde, net, key) -> dict:
    """Bits/dim of held-out data under the PF-ODE of `net` (or the exact score if `net` is None)."""
    xs = jnp.asarray(data.test[: cfg.num_ode], jnp.float32)
    if net is None:
        score = data.oracle.score_fn(sde)
    else:
        score = sd.eps_to_score(sde, net)
    t_eps = float(sched.time(1))  # the network was trained on t_n = n/N, n >= 1
    keys = jax.random.split(key, xs.shape[0])
    bpd, nfe = _pf_batch(sde, score, xs, keys, data.levels, t_eps, 1e-4)
    mean, se = _mean_se(np.asarray(bpd))
    return {"mean": mean, "stderr": se, "nfe": float(np.mean(np.asarray(nfe))), "n": int(xs.shape[0])}


def _eps_error(net, oracle, sched, data, key) -> dict:
    r"""Mean over $n$ (every 10th step) and held-out $x_n\sim q(x_n\mid x_0)$ of $\frac1d\|\hat\varepsilon - \varepsilon^*\|^2$."""
    N = sched.num_steps
    ns = jnp.arange(1, N + 1, max(N // 100, 1))
    x0 = jnp.asarray(data.test, jnp.float32)

    @jax.jit
    def err(n, k):
        a, s = sched.marginal(n)
        x = a.astype(x0.dtype) * x0 + s.astype(x0.dtype) * jax.random.normal(k, x0.shape, x0.dtype)
        t = sched.time(n).astype(x0.dtype)
        d = jax.vmap(net, (None, 0))(t, x) - jax.vmap(oracle, (None, 0))(t, x)
        ref = jax.vmap(oracle, (None, 0))(t, x)
        return jnp.mean(d**2), jnp.mean(ref**2)

    e, r = jax.lax.map(lambda a: err(*a), (ns, jax.random.split(key, ns.shape[0])))
    return {"mse": float(jnp.mean(e)), "mse_of_zero": float(jnp.mean(r))}


def _samples(cfg, data, sched, net, est, key) -> dict:
    N = sched.num_steps
    kx, kz = jax.random.split(key)
    x_T = jax.random.normal(kx, (cfg.num_samples, data.dim), jnp.float32)
    keys = jax.random.split(kz, cfg.num_samples)
    clip = data.data_range
    # Analytic-DPM's sampling practice: cap the noise of the step into tau[1] at one grid bin
    last_clip = None if data.levels is None else 2.0 / (data.levels - 1)
    out = {name: {} for name in SAMPLERS}
    for K in cfg.sample_ks:
        K = min(K, N)
        tau = sd.respace(N, K)
        names, lam2s, variances = _sampler_arrays(sched, tau, est, data, last_clip)
        xs = np.asarray(_sample_batch(net, sched, keys, x_T, tau, lam2s, variances, clip))
        for name, x in zip(names, xs):
            out[name][K] = x
        tau_ot = sd.analytic.optimal_trajectory(sched, est, K)
        a_ot = sd.analytic.optimal_variances(sched, tau_ot, est, forward="ddpm",
                                             data_range=data.data_range, last_step_clip=last_clip)
        bt_ot = sd.reverse_variances(sched, tau_ot, "ddpm")
        xs = np.asarray(_sample_batch(net, sched, keys, x_T, tau_ot, jnp.stack([bt_ot] * 5),
                                      jnp.stack([a_ot] * 5), clip))
        out[ANALYTIC_DPM_OT][K] = xs[0]
    return out
