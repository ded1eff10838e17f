r"""Evaluation: Gamma, bounds of every sampler at every K, the PF-ODE likelihood, samples.

Everything here is a composition of public library calls (`sd.analytic.estimate_gamma`,
`sd.analytic.monotone_ms_eps`, `sd.grids.even`, `sd.analytic.optimal_trajectory`, the solver
values `sd.DDPM`, `sd.DDIM`, `sd.analytic.AnalyticDPM` / `AnalyticDDIM` and their chains,
`sd.make_chain`, `sd.variational_bound`, `sd.sample`, `sd.ClipX0`, `sd.eps_to_score`,
`sd.bits_per_dim`, `sd.log_likelihood`). Two devices keep it fast on a CPU:

- Every sampler is a solver value; bound to a trajectory it is a chain, `solver.chain(sched,
  tau)`, the value `sd.sample` runs and `sd.variational_bound` scores. The chains of the bound
  methods on one trajectory are stacked and evaluated in ONE `jax.vmap` with the trajectory
  unbatched. The draws $x_n \sim q(x_n\mid x_0)$ then depend only on the key and $x_0$, so JAX
  evaluates the network once per step and batches only the Gaussian KL terms over the methods.
- The chains hold their variances as arrays, so there is one compilation of the bounds per
  trajectory length $K$, not one per method. The samplers likewise: the five solvers' chains on
  one trajectory are stacked and run by `sd.sample` in one `jax.vmap` (through `_Run`, a
  discrete solver that runs a given chain), one compilation per $K$ instead of one per solver.

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
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from .config import Config
from .data import Dataset
from .progress import Ticks, progress_bar

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


def _stack(chains: list) -> tuple[sd.Chain, sd.Chain]:
    """Chains on one trajectory as one chain of stacked arrays, and the matching `in_axes`
    (the trajectory unbatched, so the draws and the network are shared by the methods)."""
    stack = jax.tree.map(lambda *a: jnp.stack(a), *chains)
    stack = eqx.tree_at(lambda c: c.tau, stack, chains[0].tau)
    axes = eqx.tree_at(lambda c: c.tau, jax.tree.map(lambda _: 0, stack), None)
    return stack, axes


@eqx.filter_jit
def _bounds_batch(net, sched, x0s, keys, chains: list, levels, progress: Any = False):
    """bits/dim of every (method, example): one chain per method, all on one trajectory.

    `vmap` over the stacked chains (outer) and examples (inner). The draws $x_n$ do not depend
    on the method, so the network runs once per (example, step). `levels` is the data grid
    (discretised decoder) or `None` (Gaussian decoder). `progress` is the library's option: a
    callable `progress(done, total)` hears the steps done of the chain, once for the batch.
    """
    model = sd.EpsModel(net)
    stack, axes = _stack(chains)

    def one_method(chain):
        def one_example(key, x0):
            return sd.variational_bound(
                key, sched, model, chain, x0, levels=levels, progress=progress
            ).bits_per_dim

        return jax.vmap(one_example)(keys, x0s)

    return jax.vmap(one_method, in_axes=(axes,))(stack)


def decoder_variance(sched, chain: sd.Chain):
    r"""The demo's decoder variance: $\max(v_1, 1 - \bar\alpha_{\tau_1})$.

    The last step $x_{\tau_1}\to x_0$ is a discretised (or continuous) Gaussian with variance
    $v_1$, the method's own variance of that step, floored at the noise variance
    $\sigma_{\tau_1}^2 = 1 - \bar\alpha_{\tau_1}$ of $x_{\tau_1}$ ($\beta_1$ for $\tau_1 = 1$,
    Ho et al.'s decoder). Without the floor, DDPM's $\tilde\beta_{0|\tau_1} = 0$ and
    Analytic-DPM's estimate $\frac{\sigma_1^2}{\alpha_1^2}(1 - \texttt{ms\_eps}_1)$, which is 0
    once a network identifies the noise at $n = 1$ (as on grid data), give a degenerate decoder.
    """
    v = jnp.asarray(chain.variances)
    return jnp.maximum(v[0], sched.one_minus_alpha_bar[chain.tau[1]].astype(v.dtype))


BOUND_NAMES = (DDPM_TILDE, DDPM_BETA, ANALYTIC_DPM)
SAMPLER_NAMES = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM)


def bound_solvers(ms_eps, data_range) -> dict:
    """The solver of each bound method (`BOUND_NAMES`)."""
    return {
        DDPM_TILDE: sd.DDPM(),
        DDPM_BETA: sd.DDPM(large_variance=True),
        ANALYTIC_DPM: sd.analytic.AnalyticDPM(ms_eps, data_range=data_range),
    }


def sampler_solvers(ms_eps, data_range, last_clip) -> dict:
    """The solver of each sampler (`SAMPLER_NAMES`); the Analytic ones cap the noise of the step
    into `tau[1]` at `last_clip` (Analytic-DPM's sampling practice)."""
    opts = dict(data_range=data_range, last_step_clip=last_clip)
    return {
        DDPM_TILDE: sd.DDPM(),
        DDPM_BETA: sd.DDPM(large_variance=True),
        DDIM: sd.DDIM(),
        ANALYTIC_DPM: sd.analytic.AnalyticDPM(ms_eps, **opts),
        ANALYTIC_DDIM: sd.analytic.AnalyticDDIM(ms_eps, **opts),
    }


@eqx.filter_jit
def _bound_chains(sched, tau, ms_eps, data_range) -> list:
    """Chains of the bound methods (`BOUND_NAMES`) on one trajectory, with the demo's decoder."""
    chains = []
    for solver in bound_solvers(ms_eps, data_range).values():
        c = solver.chain(sched, tau)
        # The demo's decoder variance max(v_1, 1 - abar[tau_1]) is no solver's choice (DDPM's is
        # v_2 where v_1 = 0, Analytic-DPM's v_1), so the chain is rebuilt with it by make_chain.
        chains.append(
            sd.make_chain(sched, tau, c.lam2, c.variances, decoder_var=decoder_variance(sched, c))
        )
    return chains


class _Run(sd.AbstractDiscreteSolver):
    """Runs a chain that a solver built, `solver.chain(sched, tau)`: the chains of several
    solvers on one trajectory are then one stack, sampled in one compiled `jax.vmap`."""

    given: sd.Chain

    def chain(self, sched, tau):
        return self.given


def sampler_chains(sched, tau, solvers: dict) -> sd.Chain:
    """The samplers' chains on `tau`, stacked (leading axis: `SAMPLER_NAMES`)."""
    chains = [solvers[name].chain(sched, tau) for name in SAMPLER_NAMES]
    return jax.tree.map(lambda *a: jnp.stack(a), *chains)


@eqx.filter_jit
def _sample_batch(model, sched, chains, keys, x_T, tau):
    """`sd.sample` of every stacked chain for a batch of starting points: (methods, batch, d)."""

    def one_method(chain):
        run = _Run(chain)
        return jax.vmap(lambda k, x: sd.sample(k, sched, model, run, tau, x).x)(keys, x_T)

    return jax.vmap(one_method)(chains)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = float(x.std(ddof=1) / math.sqrt(x.shape[-1])) if x.shape[-1] > 1 else float("nan")
    return float(x.mean()), se


def evaluate(cfg: Config, data: Dataset, sched, sde, net, key, log=print):
    """Run every measurement of the demo on the trained `net` (an eps-prediction `(t, x)`)."""
    seconds = {}
    k_gamma, k_bound, k_ode, k_samp = jax.random.split(key, 4)
    N = sched.num_steps
    train = jnp.asarray(data.train[: cfg.num_gamma], jnp.float32)
    test = jnp.asarray(data.test[: cfg.num_eval], jnp.float32)

    # ---- Gamma (Analytic-DPM's score moment), once for all K and all samplers
    t0 = time.perf_counter()
    with progress_bar(N, "Gamma", "step", cfg.progress) as bar:
        ticks = Ticks(bar) if cfg.progress else False
        est = sd.analytic.estimate_gamma(k_gamma, sched, net, train, progress=ticks)
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
        with progress_bar(N, "Gamma (exact eps)", "step", cfg.progress) as bar:
            ticks = Ticks(bar) if cfg.progress else False
            est_oracle = sd.analytic.estimate_gamma(k_gamma, sched, oracle, train, progress=ticks)
        oracle_est = sd.analytic.monotone_ms_eps(sched, est_oracle.ms_eps)
    t0 = time.perf_counter()
    # the work in chain steps: every K once, twice where the optimal trajectory differs
    models: list[tuple] = [(net, ms_eps, None)]
    if oracle is not None:
        models.append((oracle, oracle_est, oracle_bounds))
    work = sum(K * len(models) * (1 if K == N else 2) for K in ks)
    lines = []
    with progress_bar(work, "bounds", "step", cfg.progress) as bar:
        ticks = Ticks(bar) if cfg.progress else False
        for K in ks:
            tau = sd.grids.even(N, K)
            bar.set_postfix_str(f"K = {K}")
            for model, e, store in models:
                tau_ot = tau if K == N else optimal_trajectory(sched, e, K)
                if store is None:
                    trajectories[K] = [int(v) for v in np.asarray(tau_ot)]
                names = BOUND_NAMES
                chains = _bound_chains(sched, tau, e, data.data_range)
                bpd = np.asarray(
                    _bounds_batch(model, sched, test, keys, chains, data.levels, ticks)
                )
                i_adpm = names.index(ANALYTIC_DPM)
                if K == N:  # the optimal trajectory of N steps is every step
                    bpd_ot = bpd[i_adpm]
                else:  # same shapes as above, so the compilation is re-used
                    chains_ot = _bound_chains(sched, tau_ot, e, data.data_range)
                    bpd_ot = np.asarray(
                        _bounds_batch(model, sched, test, keys, chains_ot, data.levels, ticks)
                    )[i_adpm]
                rows: dict[str, np.ndarray] = dict(zip(names, bpd))
                rows[ANALYTIC_DPM_OT] = bpd_ot
                for name, vals in rows.items():
                    mean, se = _mean_se(vals)
                    if store is None:
                        bounds[name][K], stderr[name][K] = mean, se
                    else:
                        store[name][K] = mean
            line = ", ".join(f"{m} {bounds[m][K]:.3f}" for m in BOUND_METHODS)
            lines.append(f"  K = {K:4d}: {line}")
            if not cfg.progress:  # with a bar, the lines follow it (they would break it)
                log(lines[-1])
    if cfg.progress:
        for line in lines:
            log(line)
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
        gm = data.oracle
        nll = lambda n: float(
            jnp.mean(
                -jax.vmap(gm.log_prob)(jnp.asarray(data.test[:n], jnp.float32))
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
    if data.levels is None or data.data_range is None:
        return t1
    lo_, hi_ = data.data_range
    bin_width = (hi_ - lo_) / (data.levels - 1)
    return max(float(sd.dequantization_t_eps(sde, bin_width)), t1)


#: examples per compiled PF-ODE call
PF_BATCH = 32


def _pf_ode(cfg, data, sched, sde, net, key) -> dict:
    """Bits/dim of held-out data under the PF-ODE of `net` (or the exact score if `net` is None)."""
    xs = jnp.asarray(data.test[: cfg.num_ode], jnp.float32)
    if net is None:
        score = data.oracle.score_fn(sde)
    else:
        score = sd.eps_to_score(sde, net)
    t_eps = pf_ode_start(sde, sched, data)
    n = xs.shape[0]
    keys = jax.random.split(key, n)
    # in batches of PF_BATCH rows (the last padded with its last row: one compilation), so a
    # progress bar can follow
    bpd, nfe = [], []
    desc = "PF-ODE" if net is not None else "PF-ODE (exact score)"
    with progress_bar(n, desc, "example", cfg.progress) as bar:
        size = min(PF_BATCH, n)
        for lo in range(0, n, size):
            idx = np.minimum(np.arange(lo, lo + size), n - 1)
            b, f = _pf_batch(sde, score, xs[idx], keys[idx], data.levels, t_eps, 1e-4)
            k = min(size, n - lo)
            bpd.append(np.asarray(b)[:k])
            nfe.append(np.asarray(f)[:k])
            bar.update(k)
    mean, se = _mean_se(np.concatenate(bpd))
    return {
        "mean": mean,
        "stderr": se,
        "nfe": float(np.mean(np.concatenate(nfe))),
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
    model = sd.EpsModel(net)
    if data.data_range is not None:  # clip x0_hat into the data's box at every step
        model = sd.ClipX0(model, *data.data_range)
    # Analytic-DPM's sampling practice: cap the noise of the step into tau[1] at one grid bin
    last_clip = None if data.levels is None else 2.0 / (data.levels - 1)
    solvers = sampler_solvers(ms_eps, data.data_range, last_clip)
    out = {name: {} for name in SAMPLERS}
    with progress_bar(2 * len(cfg.sample_ks), "sampling", "run", cfg.progress) as bar:
        for K in cfg.sample_ks:
            K = min(K, N)
            for traj in ("even", "optimal"):
                if traj == "even":
                    tau = sd.grids.even(N, K)
                else:
                    tau = optimal_trajectory(sched, ms_eps, K)
                chains = sampler_chains(sched, tau, solvers)  # same shapes: one compile per K
                xs = np.asarray(_sample_batch(model, sched, chains, keys, x_T, tau))
                if traj == "even":
                    for name, x in zip(SAMPLER_NAMES, xs):
                        out[name][K] = x
                else:  # Analytic-DPM on the optimal trajectory
                    out[ANALYTIC_DPM_OT][K] = xs[SAMPLER_NAMES.index(ANALYTIC_DPM)]
                bar.update(1)
    return out
