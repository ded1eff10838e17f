r"""The headline of Analytic-DPM on an exact oracle: variational bounds of every variance choice.

Run `python -m examples.analytic_dpm_report` from the repository root (options: `--num-steps`,
`--num-eval`, `--num-train`, `--seed`). It uses the public API only (`import scoredyn as sd`).

Setting: the 2-D, three-component Gaussian mixture of the test-suite, the linear DDPM schedule
with $N = 1000$, and the *exact* noise prediction $\hat\varepsilon = \mathbb E[\varepsilon\mid
x_n]$ of the mixture (so every method has the optimal mean and only the variances differ).
$\texttt{ms\_eps}$ is estimated by `sd.analytic.estimate_gamma` on
training draws; the bound is evaluated on fresh draws with a continuous Gaussian decoder and the
DDPM forward process $q$ as the variational posterior, in nats per dimension. All rows use the
same data and the same noise draws (common random numbers), so differences are precise.

What the rows are (trajectory ET: `sd.grids.even`, the paper's even trajectory
$\tau_k = \mathrm{round}(1 + (N-1)\frac{k-1}{K-1})$, $\tau_0 = 0$; OT:
`sd.analytic.optimal_trajectory`):

- DDPM $\tilde\beta$ / DDPM $\beta$: mean from the DDPM posterior, variance $\tilde\beta_{m|n}$ or
  $\beta_{n|m}$ (decoder variance: $\tilde\beta_{0|\tau_1} = 0$ is replaced by the next step's, as
  in Ho et al.'s code and `sd.variational_bound`).
- Analytic-DPM: mean from the DDPM posterior, variance from
  `sd.analytic.optimal_variances(forward="ddpm")`.
- DDIM ($\eta = 0$): its reverse kernels are deterministic ($v = 0$), so its bound is
  $+\infty$ under any forward process (and under its own, $\lambda = 0$, every KL term is
  infinite too); reported as `inf`.
- Analytic-DDIM: the generative model with the DDIM mean ($\lambda = 0$) and the Analytic-DDIM
  variance `optimal_variances(forward="ddim")`. Its own forward process is deterministic given
  $(x_n, x_0)$, so, as for DDIM, the paper reports no likelihood; we report the valid upper
  bound on its negative log-likelihood obtained with the DDPM forward process as the
  variational posterior (any $q$ gives a valid bound; this one is not tight for it).
- SN-DPM (exact head): the diagonal, state-dependent variance of
  `sd.analytic.sn_variance_fn` with the exact
  $\mathbb E[\varepsilon^2\mid x_n]$ of the mixture.
- Analytic-DPM (OT): Analytic-DPM on the optimal trajectory.

The exact negative log-likelihood $-\mathbb E\log p(x_0)/d$ of the mixture (its entropy per
dimension) is the floor every bound stays above.
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

KS = (10, 25, 50, 100)
SPEEDUP_KS = (10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 400, 600, 1000)


def report_mixture(dtype=jnp.float64) -> sd.toy.GaussianMixture:
    """The 2-D three-component mixture with full covariances used throughout the tests."""
    w = jnp.array([0.2, 0.5, 0.3], dtype)
    m = jnp.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype)
    c = jnp.array(
        [[[0.10, 0.03], [0.03, 0.05]], [[0.08, -0.02], [-0.02, 0.12]], [[0.05, 0.0], [0.0, 0.05]]],
        dtype,
    )
    return sd.toy.GaussianMixture(w, m, c)


# ------------------------------------------------------------------------------ the bound
# TODO(lead): replace `_Steps`, `_row_steps`, `_stack`, `_step_term` and `_row_bounds` by
# sd.variational_bound(chain) over the public chain value, once it lands.
# Every (method, K) row is a list of steps (n, m, lam2_q, lam2_p, var). All rows are flattened
# into one list of steps, evaluated in one vectorised call (one compilation for the whole
# table), and summed back per row. The noise of step n for test point i is drawn from
# fold_in(fold_in(key, i), n): rows that share a step share its draw (common random numbers).


class _Steps(eqx.Module):
    """Flat per-step arrays of several rows."""

    n: jax.Array
    m: jax.Array
    lam2_q: jax.Array
    lam2_p: jax.Array
    var: jax.Array
    row: jax.Array


def _row_steps(sched, tau, row, var, *, lam2_p_zero=False, decoder_fallback=True, bt=None):
    """Steps of one row: DDPM forward q; mean from q (or DDIM's, lam2_p = 0); variances `var`."""
    tau = np.asarray(tau)
    n, m = tau[1:], tau[:-1]
    if bt is None:
        bt = sd.posterior_variance(sched, jnp.asarray(n), jnp.asarray(m))
    bt = np.asarray(bt)
    var = np.asarray(var, np.float64).copy()
    if decoder_fallback and var[0] == 0 and len(var) >= 2:
        var[0] = var[1]  # DDPM's zero decoder variance -> the next step's (Ho et al.'s code)
    lam2_p = np.zeros_like(bt) if lam2_p_zero else bt
    return (n, m, bt, lam2_p, var, np.full(n.shape, row))


def _stack(rows):
    cols = [np.concatenate(c) for c in zip(*rows)]
    return _Steps(*(jnp.asarray(c) for c in cols))


def _step_term(key, sched, eps_fn, x0, n, m, lam2_q, lam2_p, var, var_fn):
    r"""KL term of step $n\to m$ (or the decoder NLL if $m = 0$) for one test point, one draw."""
    # TODO(lead): replace by sd.variational_bound(chain)
    dtype = x0.dtype
    pq = sd.forward_posterior(sched, n, m, lam2_q)
    pp = sd.forward_posterior(sched, n, m, lam2_p)
    alpha, sigma = (a.astype(dtype) for a in sched.marginal(n))
    eps = jax.random.normal(jax.random.fold_in(key, n), x0.shape, dtype)
    x_n = alpha * x0 + sigma * eps
    eps_hat = eps_fn(sched.time(n).astype(dtype), x_n)
    diff0 = sigma / alpha * (eps - eps_hat)  # x0 - x0_hat
    c = lambda a: a.astype(dtype)
    dmean = (
        c(pp.coef_x0) * diff0 + c(pq.coef_x0 - pp.coef_x0) * x0 + c(pq.coef_xn - pp.coef_xn) * x_n
    )
    v = var.astype(dtype) if var_fn is None else jnp.asarray(var_fn(n, m, x_n, eps_hat), dtype)
    v = jnp.broadcast_to(v, x0.shape)
    lam2 = c(lam2_q)
    safe = jnp.where(lam2 > 0, lam2, 1.0)
    kl = jnp.where(lam2 > 0, 0.5 * (jnp.log(v / safe) + (lam2 + dmean**2) / v - 1.0), jnp.inf)
    nll = 0.5 * (jnp.log(2.0 * math.pi * v) + diff0**2 / v)
    return jnp.sum(jnp.where(m == 0, nll, kl))


@eqx.filter_jit
def _row_bounds(key, sched, eps_fn, x0s, steps: _Steps, num_rows: int, var_fn=None):
    """Bound (nats) of every row for every test point, shape `(num_points, num_rows)`."""
    # TODO(lead): replace by sd.variational_bound(chain)
    abar_N = sched.alpha_bar[-1].astype(x0s.dtype)

    def one(i, x0):
        k = jax.random.fold_in(key, i)
        terms = jax.vmap(
            lambda n, m, lq, lp, v: _step_term(k, sched, eps_fn, x0, n, m, lq, lp, v, var_fn)
        )(steps.n, steps.m, steps.lam2_q, steps.lam2_p, steps.var)
        prior = 0.5 * jnp.sum(abar_N * x0**2 - abar_N - jnp.log1p(-abar_N))
        return prior + jax.ops.segment_sum(terms, steps.row, num_segments=num_rows)

    return jax.vmap(one)(jnp.arange(x0s.shape[0]), x0s)


def _mean_se(v):
    v = np.asarray(v)
    return float(v.mean()), float(v.std() / math.sqrt(v.shape[0]))


def headline(
    *,
    num_steps: int = 1000,
    Ks=KS,
    speedup_Ks=SPEEDUP_KS,
    num_train: int = 2000,
    num_eval: int = 2000,
    seed: int = 0,
    with_sn: bool = True,
    mixture: sd.toy.GaussianMixture | None = None,
) -> dict:
    """Compute the table (nats/dim).

    Returns a dict with `rows` (name -> list over `Ks` of (mean bound, standard error of its
    gap above the exact NLL)), `diffs` (name -> list over `Ks` of (mean of row - Analytic-DPM
    (ET), its standard error), paired over test points), the speed-up and timings.
    """
    t_start = time.perf_counter()
    gm = report_mixture() if mixture is None else mixture
    d = gm.dim
    sched = sd.DiscreteSchedule.linear(num_steps, 1e-4 * 1000 / num_steps, 0.02 * 1000 / num_steps)
    eps_fn = sd.toy.discrete_eps_fn(gm, sched)
    k_train, k_gamma, k_eval, k_bound = jax.random.split(jax.random.key(seed), 4)
    train = gm.sample(k_train, num_train)
    x_eval = gm.sample(k_eval, num_eval)
    t0 = time.perf_counter()
    est = sd.analytic.estimate_gamma(k_gamma, sched, eps_fn, train)
    est.ms_eps.block_until_ready()
    t_gamma = time.perf_counter() - t0
    nll = np.asarray(-jax.vmap(gm.log_prob)(x_eval))

    t0 = time.perf_counter()
    ots = dict(zip(Ks, sd.analytic.optimal_trajectories(sched, est, Ks)))
    t_dp = time.perf_counter() - t0

    # ---- the trajectories of every row, then all per-step variances in three flat calls
    K0 = Ks[0]
    curve_Ks = [K for K in speedup_Ks if K <= max(Ks) and K not in Ks]
    trajs = {("ET", K): sd.grids.even(num_steps, K) for K in sorted(set(Ks) | set(curve_Ks))}
    trajs.update({("OT", K): ots[K] for K in Ks})
    keys = list(trajs)
    n_all = np.concatenate([np.asarray(trajs[k][1:]) for k in keys])
    m_all = np.concatenate([np.asarray(trajs[k][:-1]) for k in keys])
    cuts = np.cumsum([0] + [len(trajs[k]) - 1 for k in keys])
    abar = np.asarray(sched.alpha_bar)
    n_j, m_j = jnp.asarray(n_all), jnp.asarray(m_all)
    ms_n = jnp.asarray(est.ms_eps)[n_j]
    flat = {
        "tilde": np.asarray(sd.posterior_variance(sched, n_j, m_j)),
        "beta": 1.0 - abar[n_all] / abar[m_all],
        "analytic": np.asarray(sd.analytic.optimal_variance(sched, n_j, m_j, ms_n)),
        "analytic-ddim": np.asarray(
            sd.analytic.optimal_variance(sched, n_j, m_j, ms_n, forward="ddim")
        ),
    }
    per = {
        (k, name): v[cuts[i] : cuts[i + 1]] for i, k in enumerate(keys) for name, v in flat.items()
    }

    def row(i, traj, kind, **kw):
        return _row_steps(sched, trajs[traj], i, per[(traj, kind)], bt=per[(traj, "tilde")], **kw)

    spec = []  # (row name, K, row steps)
    for K in Ks:
        for name, traj, kind in (
            ("DDPM beta-tilde (ET)", "ET", "tilde"),
            ("DDPM beta (ET)", "ET", "beta"),
            ("Analytic-DPM (ET)", "ET", "analytic"),
            ("Analytic-DPM (OT)", "OT", "analytic"),
        ):
            spec.append((name, K, row(len(spec), (traj, K), kind)))
    spec.append(("proxy", K0, row(len(spec), ("ET", K0), "analytic-ddim", lam2_p_zero=True)))
    for K in curve_Ks:
        spec.append(("curve tilde", K, row(len(spec), ("ET", K), "tilde")))
        spec.append(("curve beta", K, row(len(spec), ("ET", K), "beta")))
    t0 = time.perf_counter()
    steps = _stack([r for *_, r in spec])
    vals = np.asarray(_row_bounds(k_bound, sched, eps_fn, x_eval, steps, len(spec)))
    col = {(name, K): vals[:, i] for i, (name, K, _) in enumerate(spec)}
    if with_sn:
        sn_fn = sd.analytic.sn_variance_fn(sched, sd.toy.discrete_eps2_fn(gm, sched))
        sn_steps = [
            _row_steps(
                sched,
                trajs[("ET", K)],
                i,
                np.zeros(K),
                decoder_fallback=False,
                bt=per[(("ET", K), "tilde")],
            )
            for i, K in enumerate(Ks)
        ]
        v_sn = np.asarray(
            _row_bounds(k_bound, sched, eps_fn, x_eval, _stack(sn_steps), len(Ks), var_fn=sn_fn)
        )
        for i, K in enumerate(Ks):
            col[("SN-DPM exact head (ET)", K)] = v_sn[:, i]

    names = ["DDPM beta-tilde (ET)", "DDPM beta (ET)", "DDIM (ET)", "Analytic-DDIM (ET)"]
    names += ["Analytic-DPM (ET)"] + (["SN-DPM exact head (ET)"] if with_sn else [])
    names += ["Analytic-DPM (OT)"]
    rows: dict[str, list] = {name: [] for name in names}
    diffs: dict[str, list] = {name: [] for name in names}
    for K in Ks:
        ref = col[("Analytic-DPM (ET)", K)]
        for name in names:
            if name in ("DDIM (ET)", "Analytic-DDIM (ET)"):
                rows[name].append((math.inf, 0.0))
                diffs[name].append((math.inf, 0.0))
                continue
            v = col[(name, K)]
            rows[name].append((float(v.mean()) / d, _mean_se((v - nll) / d)[1]))
            diffs[name].append(_mean_se((v - ref) / d))
    ddim_proxy = (K0, float(col[("proxy", K0)].mean()) / d)

    # ---- speed-up: the fewest ET steps for which DDPM (best variance) matches Analytic-DPM at K0
    target = rows["Analytic-DPM (ET)"][0][0]
    curve = {}
    for K in sorted(set(Ks) | set(curve_Ks)):
        if K in Ks:
            i = Ks.index(K)
            curve[K] = min(rows["DDPM beta-tilde (ET)"][i][0], rows["DDPM beta (ET)"][i][0])
        else:
            curve[K] = min(col[("curve tilde", K)].mean(), col[("curve beta", K)].mean()) / d
    larger = [K for K in speedup_Ks if K > max(Ks) and K <= num_steps]
    if larger and not any(v <= target for v in curve.values()):
        steps_x = []
        for j, K in enumerate(larger):
            tau = sd.grids.even(num_steps, K)
            n, m = np.asarray(tau[1:]), np.asarray(tau[:-1])
            bt = np.asarray(sd.posterior_variance(sched, jnp.asarray(n), jnp.asarray(m)))
            steps_x.append(_row_steps(sched, tau, 2 * j, bt, bt=bt))
            steps_x.append(_row_steps(sched, tau, 2 * j + 1, 1.0 - abar[n] / abar[m], bt=bt))
        vx = np.asarray(
            _row_bounds(k_bound, sched, eps_fn, x_eval, _stack(steps_x), 2 * len(larger))
        ).mean(0)
        for j, K in enumerate(larger):
            curve[K] = float(min(vx[2 * j], vx[2 * j + 1])) / d
    curve = {K: float(v) for K, v in sorted(curve.items())}
    match = next((K for K, v in curve.items() if v <= target), None)
    target_ot = rows["Analytic-DPM (OT)"][0][0]
    match_ot = next((K for K, v in curve.items() if v <= target_ot), None)
    t_bounds = time.perf_counter() - t0
    return {
        "Ks": tuple(Ks),
        "rows": rows,
        "diffs": diffs,
        "entropy": float(nll.mean()) / d,
        "target_K": K0,
        "ddpm_curve": curve,
        "ddpm_match_K": match,
        "ddpm_match_K_ot": match_ot,
        "ddim_proxy": ddim_proxy,
        "dim": d,
        "speedup": None if match is None else match / K0,
        "plain_above_one": int(jnp.sum(est.ms_eps_plain > 1)),
        "cv_above_one": int(jnp.sum(est.ms_eps_cv > 1)),
        "num_steps": num_steps,
        "num_train": num_train,
        "num_eval": num_eval,
        "trajectories_ot": {K: np.asarray(v).tolist() for K, v in ots.items()},
        "time_gamma_s": t_gamma,
        "time_dp_s": t_dp,
        "time_bounds_s": t_bounds,
        "time_total_s": time.perf_counter() - t_start,
    }


def format_table(res: dict) -> str:
    """Markdown table of `headline`'s result."""
    Ks = res["Ks"]
    head = "| method | " + " | ".join(f"K={K}" for K in Ks) + " |"
    lines = [head, "|---|" + "---|" * len(Ks)]
    for name, vals in res["rows"].items():
        cells = []
        for (v, se), (dv, dse) in zip(vals, res["diffs"][name]):
            if math.isinf(v):
                cells.append("inf")
            elif name == "Analytic-DPM (ET)":
                cells.append(f"**{v:.4f}** ± {se:.4f}")
            else:
                cells.append(f"{v:.4f} ± {se:.4f} ({dv:+.4f} ± {dse:.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        f"| exact NLL $-\\mathbb E\\log p(x_0)/d$ | {res['entropy']:.4f} |" + " |" * (len(Ks) - 1)
    )
    K0 = res["target_K"]
    curve = ", ".join(f"K={K}: {v:.4f}" for K, v in res["ddpm_curve"].items())
    match, match_ot = res["ddpm_match_K"], res["ddpm_match_K_ot"]
    if match is None:
        speed = (
            f"DDPM (better of beta and beta-tilde, ET) does not reach Analytic-DPM's K={K0} bound "
            f"with K <= {max(res['ddpm_curve'])}."
        )
    else:
        speed = (
            f"Speed-up: DDPM (better of beta and beta-tilde, ET) needs K={match} to match "
            f"Analytic-DPM's K={K0} bound ({match / K0:g}x)"
        )
        if match_ot is not None:
            speed += f", and K={match_ot} to match Analytic-DPM (OT) at K={K0} ({match_ot / K0:g}x)"
        speed += "."
    K_p, v_p = res["ddim_proxy"]
    notes = [
        "",
        f"Nats per dimension (d={res['dim']}), N={res['num_steps']}: mean over {res['num_eval']} "
        "test points ± the standard error of its gap above the exact NLL; in brackets the "
        "difference from Analytic-DPM (ET) at the same K ± its standard error (paired: every "
        "row uses the same points and noise draws). ms_eps from "
        f"{res['num_train']} training points with the control-variate estimator (the plain "
        f"estimate exceeds 1 at {res['plain_above_one']} of {res['num_steps']} steps, the "
        f"control-variate one at {res['cv_above_one']}).",
        "",
        speed + f" DDPM curve: {curve}.",
        "",
        "DDIM and Analytic-DDIM (eta = 0): under their own forward process (lambda = 0) "
        "q(x_m | x_n, x_0) is a point mass, so every KL term is +inf (the paper reports no "
        "likelihood for them); DDIM's zero reverse variance is +inf under any forward process. "
        "A finite but useless proxy, the Analytic-DDIM model (DDIM mean, Analytic-DDIM variance) "
        f"bounded with DDPM's q as variational posterior, gives {v_p:.4g} nats/dim at K={K_p}, "
        "because its variances are far below DDPM's posterior variances.",
        "",
        f"Time: Gamma {res['time_gamma_s']:.1f} s, DP {res['time_dp_s']:.1f} s, bounds "
        f"{res['time_bounds_s']:.1f} s (incl. compilation).",
    ]
    return "\n".join(lines + notes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-steps", type=int, default=1000)
    p.add_argument("--num-eval", type=int, default=2000)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the table is in float64; only when run as a script
    res = headline(
        num_steps=args.num_steps,
        num_eval=args.num_eval,
        num_train=args.num_train,
        seed=args.seed,
    )
    print(format_table(res))


if __name__ == "__main__":
    main()
