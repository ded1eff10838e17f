r"""Evaluation: Gamma, bounds of every sampler at every K, the PF-ODE likelihood, samples.

Everything here is a composition of public library calls (`sd.analytic.estimate_gamma`,
`sd.analytic.monotone_ms_eps`, `sd.grids.even`, `sd.reverse_variances`,
`sd.analytic.optimal_variances`, `sd.analytic.optimal_trajectory`, `sd.variational_bound`,
`sd.sample_discrete`, `sd.eps_to_score`, `sd.bits_per_dim`, `sd.log_likelihood`). Two devices
keep it fast on a CPU:

- All samplers that share a trajectory are evaluated in ONE `jax.vmap` over their variance
  arrays. The draws $x_n \sim q(x_n\mid x_0)$ depend only on the key and $x_0$, so JAX evaluates
  the network once per step and batches only the Gaussian KL terms over the samplers.
- Every sampler passes its variances as arrays, so there is one compilation per trajectory
  length $K$, not one per sampler.

The bounds use the DDPM forward process. DDIM's forward process ($\lambda = 0$) has a
deterministic posterior $q(x_m\mid x_n, x_0)$, so its bound is $+\infty$ whatever the reverse
variance: DDIM and Analytic-DDIM appear in the samples, not in the bound table (as in Bao et al.,
who report likelihoods for the DDPM forward process only).

Every sampler uses the Monte Carlo `ms_eps` projected by `sd.analytic.monotone_ms_eps` (a
non-decreasing posterior variance of $x_0$, capped at $1 - 10^{-5}$): where an estimate reaches 1
at large $n$, the cost $\log(1 - \beta_{t|s}\Gamma_t)$ of a long jump in the optimal-trajectory
dynamic programme can round to $\log 0$ in float32.

The even trajectory is `sd.grids.even(N, K)`, Analytic-DPM's $\tau_1 = 1$ and $K - 1$ equal steps
up to $N$, rounded as the paper's code rounds them.
"""

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from .config import Config
from .data import Dataset

# Display names, in table order.
DDPM_TILDE = "DDPM, beta-tilde"
DDPM_BETA = "DDPM, beta"
DDIM = "DDIM (eta = 0)"
ANALYTIC_DPM = "Analytic-DPM"
ANALYTIC_DDIM = "Analytic-DDIM"
ANALYTIC_DPM_OT = "Analytic-DPM, optimal traj."
PF_ODE = "PF-ODE"
BOUND_METHODS = (DDPM_TILDE, DDPM_BETA, ANALYTIC_DPM, ANALYTIC_DPM_OT)
INFINITE_BOUND = (DDIM, ANALYTIC_DDIM)  # deterministic forward posterior: +inf
SAMPLERS = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM, ANALYTIC_DPM_OT)


@eqx.filter_jit
def optimal_trajectory(sched, ms_eps, K: int):
    """`sd.analytic.optimal_trajectory` of `K` steps for the given `ms_eps`."""
    return sd.analytic.optimal_trajectory(sched, ms_eps, K)


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


@eqx.filter_jit
def _bounds_batch(net, sched, x0s, keys, tau, variances, levels):
    """bits/dim of every (method, example) under the DDPM forward process.

    `vmap` over methods (outer: their reverse variances) and examples (inner). The draws
    $x_n$ do not depend on the method, so the network runs once per (example, step). `levels`
    is the data grid (discretised decoder) or `None` (Gaussian decoder).
    """
    model = sd.EpsModel(net)
    lam2 = sd.reverse_variances(sched, tau, "ddpm")  # DDPM's forward posterior, beta-tilde
    dec_vars = decoder_variances(sched, tau, variances)

    def one_method(var, dec_var):
        chain = sd.make_chain(sched, tau, lam2, var, decoder_var=dec_var)

        def one_example(key, x0):
            return sd.variational_bound(key, sched, model, chain, x0, levels=levels).bits_per_dim

        return jax.vmap(one_example)(keys, x0s)

    return jax.vmap(one_method)(variances, dec_vars)


def decoder_variances(sched, tau, variances):
    r"""Decoder variance of each method: $\max(v_1, 1 - \bar\alpha_{\tau_1})$.

    The last step $x_{\tau_1}\to x_0$ is a discretised (or continuous) Gaussian with variance
    $v_1$, the method's own variance of that step, floored at the noise variance
    $\sigma_{\tau_1}^2 = 1 - \bar\alpha_{\tau_1}$ of $x_{\tau_1}$ ($\beta_1$ for $\tau_1 = 1$,
    Ho et al.'s decoder). Without the floor, DDPM's $\tilde\beta_{0|\tau_1} = 0$ and
    Analytic-DPM's estimate $\frac{\sigma_1^2}{\alpha_1^2}(1 - \texttt{ms\_eps}_1)$, which is 0
    once a network identifies the noise at $n = 1$ (as on grid data), give a degenerate decoder.
    """
    floor = sched.one_minus_alpha_bar[tau[1]].astype(variances.dtype)
    return jnp.maximum(variances[..., 0], floor)


BOUND_NAMES = (DDPM_TILDE, DDPM_BETA, ANALYTIC_DPM)
SAMPLER_NAMES = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM)


@eqx.filter_jit
def _bound_variances(sched, tau, ms_eps, data_range):
    """Reverse variances of the bound methods (`BOUND_NAMES`) on one trajectory, shape (3, K)."""
    bt = sd.reverse_variances(sched, tau, "ddpm")
    beta = sd.reverse_variances(sched, tau, "ddpm_beta")
    a_dpm = sd.analytic.optimal_variances(sched, tau, ms_eps, forward="ddpm", data_range=data_range)
    return jnp.stack([bt, beta, a_dpm])


@eqx.filter_jit
def _sampler_arrays(sched, tau, ms_eps, data_range, last_clip):
    """Forward and reverse variances of the samplers (`SAMPLER_NAMES`), each shape (5, K)."""
    bt = sd.reverse_variances(sched, tau, "ddpm")
    beta = sd.reverse_variances(sched, tau, "ddpm_beta")
    zero = jnp.zeros_like(bt)
    a_dpm = sd.analytic.optimal_variances(
        sched, tau, ms_eps, forward="ddpm", data_range=data_range, last_step_clip=last_clip
    )
    a_ddim = sd.analytic.optimal_variances(
        sched, tau, ms_eps, forward="ddim", data_range=data_range, last_step_clip=last_clip
    )
    lam2s = jnp.stack([bt, bt, zero, bt, zero])
    variances = jnp.stack([bt, beta, zero, a_dpm, a_ddim])
    return lam2s, variances


@eqx.filter_jit
def _sample_batch(net, sched, keys, x_T, tau, lam2s, variances, clip):
    def one_method(lam2, var):
        return jax.vmap(
            lambda k, x: sd.sample_discrete(
                k, sched, net, x, tau, lam2=lam2, variances=var, clip_x0=clip
            )
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
    train = jnp.asarray(data.train[: cfg.num_gamma], jnp.float32)
    test = jnp.asarray(data.test[: cfg.num_eval], jnp.float32)

    # ---- Gamma (Analytic-DPM's score moment), once for all K and all samplers
    t0 = time.perf_counter()
    est = sd.analytic.estimate_gamma(k_gamma, sched, net, train)
    ms_eps = sd.analytic.monotone_ms_eps(sched, est.ms_eps)  # what every sampler uses
    ms = np.asarray(est.ms_eps)
    seconds["gamma"] = time.perf_counter() - t0
    what = "images" if data.image_shape is not None else "points"
    log(
        f"Gamma: ms_eps estimated at all {N} steps from {est.num_samples} training {what} "
        f"({seconds['gamma']:.1f} s)"
    )

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
        oracle_est = sd.analytic.monotone_ms_eps(
            sched, sd.analytic.estimate_gamma(k_gamma, sched, oracle, train).ms_eps
        )
    t0 = time.perf_counter()
    for K in ks:
        tau = sd.grids.even(N, K)
        for model, e, store in ((net, ms_eps, None), (oracle, oracle_est, oracle_bounds)):
            if model is None:
                continue
            tau_ot = tau if K == N else optimal_trajectory(sched, e, K)
            if store is None:
                trajectories[K] = [int(v) for v in np.asarray(tau_ot)]
            names = BOUND_NAMES
            variances = _bound_variances(sched, tau, e, data.data_range)
            bpd = np.asarray(_bounds_batch(model, sched, test, keys, tau, variances, data.levels))
            if K == N:  # the optimal trajectory of N steps is every step
                bpd_ot = bpd[2]
            else:  # same shapes as above, so the compilation is re-used
                var_ot = _bound_variances(sched, tau_ot, e, data.data_range)
                bpd_ot = np.asarray(
                    _bounds_batch(model, sched, test, keys, tau_ot, var_ot, data.levels)
                )[2]
            rows = dict(zip(names, bpd))
            rows[ANALYTIC_DPM_OT] = bpd_ot
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
    log(
        f"PF-ODE: {pf['mean']:.3f} ± {pf['stderr']:.3f} bits/dim on {pf['n']} held-out examples, "
        f"{pf['nfe']:.0f} function evaluations ({seconds['pf_ode']:.1f} s)"
    )

    reference = {}
    if data.levels is not None:
        reference["uniform over the grid"] = math.log2(data.levels)
    eps_error = None
    if data.oracle is not None:
        nll = lambda n: float(
            jnp.mean(
                -jax.vmap(data.oracle.log_prob)(jnp.asarray(data.test[:n], jnp.float32))
                / (data.dim * math.log(2.0))
            )
        )
        pf_true = _pf_ode(cfg, data, sched, sde, None, k_ode)
        if cfg.num_ode == cfg.num_eval:
            reference["exact -log2 p(x)/d of the held-out points"] = nll(cfg.num_eval)
        else:
            reference["exact -log2 p(x)/d, bound points"] = nll(cfg.num_eval)
            reference["exact -log2 p(x)/d, PF-ODE points"] = nll(cfg.num_ode)
        reference["PF-ODE with the exact score"] = pf_true["mean"]
        eps_error = _eps_error(net, oracle, sched, data, k_ode)

    # ---- samples for the picture
    t0 = time.perf_counter()
    samples = _samples(cfg, data, sched, net, ms_eps, k_samp)
    seconds["samples"] = time.perf_counter() - t0
    return Evaluation(
        ks=ks,
        bounds=bounds,
        stderr=stderr,
        pf_ode=pf,
        gamma={
            "ms_eps": [float(v) for v in ms],
            "num_samples": int(est.num_samples),
            "ms_eps_monotone": [float(v) for v in np.asarray(ms_eps)],
            "stderr": [float(v) for v in np.asarray(est.stderr)],
        },
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
            bpd, stats = sd.bits_per_dim(
                sde,
                score,
                x,
                key=key,
                levels=levels,
                t_eps=t_eps,
                rtol=rtol,
                atol=rtol,
                return_stats=True,
            )
            return bpd, stats["nfe"]
    else:

        def one(key, x):
            lp, stats = sd.log_likelihood(
                sde, score, x, t_eps=t_eps, rtol=rtol, atol=rtol, return_stats=True
            )
            return -lp / (x.size * math.log(2.0)), stats["nfe"]

    return jax.vmap(one)(keys, xs)


def pf_ode_start(sde, sched, data: Dataset) -> float:
    r"""Start time $t_\epsilon$ of the PF-ODE likelihood.

    For data on a grid of spacing $\Delta$ the ODE models the blurred density $p_{t_\epsilon}$,
    and uniform dequantisation over a bin costs least when the blur matches the bin,
    $\sigma(t_\epsilon) = \Delta/\sqrt{12}$ (the standard deviation of the uniform noise), found
    by `sd.dequantization_t_eps`. For continuous data, $t_\epsilon = t_1 = T/N$, the first time
    the network was trained at.
    """
    t1 = float(sched.T) / sched.num_steps
    if data.levels is None:
        return t1
    lo_, hi_ = data.data_range
    bin_width = (hi_ - lo_) / (data.levels - 1)
    return max(float(sd.dequantization_t_eps(sde, bin_width)), t1)


def _pf_ode(cfg, data, sched, sde, net, key) -> dict:
    """Bits/dim of held-out data under the PF-ODE of `net` (or the exact score if `net` is None)."""
    xs = jnp.asarray(data.test[: cfg.num_ode], jnp.float32)
    if net is None:
        score = data.oracle.score_fn(sde)
    else:
        score = sd.eps_to_score(sde, net)
    t_eps = pf_ode_start(sde, sched, data)
    keys = jax.random.split(key, xs.shape[0])
    bpd, nfe = _pf_batch(sde, score, xs, keys, data.levels, t_eps, 1e-4)
    mean, se = _mean_se(np.asarray(bpd))
    return {
        "mean": mean,
        "stderr": se,
        "nfe": float(np.mean(np.asarray(nfe))),
        "n": int(xs.shape[0]),
        "t_eps": t_eps,
        "sigma_t_eps": float(sde.marginal(t_eps)[1]),
    }


def _eps_error(net, oracle, sched, data, key) -> dict:
    r"""$\frac1d\|\hat\varepsilon - \varepsilon^*\|^2$, averaged over $n$ (every 10th step) and
    held-out $x_n\sim q(x_n\mid x_0)$."""
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


def _samples(cfg, data, sched, net, ms_eps, key) -> dict:
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
        tau = sd.grids.even(N, K)
        names = SAMPLER_NAMES
        lam2s, variances = _sampler_arrays(sched, tau, ms_eps, data.data_range, last_clip)
        xs = np.asarray(_sample_batch(net, sched, keys, x_T, tau, lam2s, variances, clip))
        for name, x in zip(names, xs):
            out[name][K] = x
        # Analytic-DPM on the optimal trajectory: same shapes, so the compilation is re-used
        tau_ot = optimal_trajectory(sched, ms_eps, K)
        lam2s, variances = _sampler_arrays(sched, tau_ot, ms_eps, data.data_range, last_clip)
        xs = np.asarray(_sample_batch(net, sched, keys, x_T, tau_ot, lam2s, variances, clip))
        out[ANALYTIC_DPM_OT][K] = xs[names.index(ANALYTIC_DPM)]
    return out
