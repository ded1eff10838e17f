"""Section 4: sample quality per network evaluation on the exact 2-D Gaussian-mixture oracle.

Error measure: the cross-entropy gap  E_q[-log p(x)] - H(p)  of the samples q against the exact
mixture p (H(p) by a large Monte Carlo of p's own samples), and a kernel MMD against p (exact on
p's side). Every sampler starts from the same prior draws x_T ~ N(0, I).
"""

import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from ._common import md_table, mixture_2d

N = 1000
T_EPS = 1.0e-3  # = t_1 of the N = 1000 discrete schedule sampled from the same VP SDE
NFES = (5, 10, 20, 50, 100)
ANCHOR = {10: 0.095, 20: 0.015}  # best PyTorch samplers (issue 7)
TARGET = {10: 0.03, 20: 0.01}


MMD_BANDWIDTH = 0.25


def mmd(gm, x, h: float = MMD_BANDWIDTH, num_pairs: int = 2**14) -> float:
    r"""Maximum mean discrepancy with a Gaussian kernel $k(x, y) = e^{-|x-y|^2/2h^2}$, exact on
    p's side.

    $\mathrm{MMD}^2 = \mathbb E_{qq}k - 2\,\mathbb E_{q}\mathbb E_{p}k + \mathbb E_{pp}k$. For a
    Gaussian mixture $p$ the last two are closed forms:
    $\mathbb E_{y\sim p}k(x, y) = (2\pi h^2)^{d/2} p_h(x)$ with $p_h = p * \mathcal N(0, h^2 I)$,
    and $\mathbb E_{pp}k = (2\pi h^2)^{d/2}
    \sum_{jk} w_j w_k \mathcal N(m_j; m_k, C_j + C_k + h^2 I)$. The $qq$ term is the U-statistic
    on the first `num_pairs` samples. Unlike the cross-entropy gap it is a metric (zero iff
    q = p), so it cannot cancel. Returns $\sqrt{\max(\mathrm{MMD}^2, 0)}$.
    """
    d = x.shape[1]
    c = (2 * np.pi * h**2) ** (d / 2)
    ph = gm.perturbed(1.0, h)
    w, m, C = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.covs))
    pp = 0.0
    for j in range(len(w)):
        for k in range(len(w)):
            S = C[j] + C[k] + h**2 * np.eye(d)
            r = m[j] - m[k]
            pp += (
                w[j]
                * w[k]
                * np.exp(-0.5 * r @ np.linalg.solve(S, r))
                / np.sqrt(np.linalg.det(2 * np.pi * S))
            )
    pp *= c
    n = min(num_pairs, x.shape[0])
    blk = min(1024, n)
    n -= n % blk
    xs = x[:n]
    sq = jnp.sum(xs**2, -1)

    def block_sum(i):
        rows = jax.lax.dynamic_slice_in_dim(xs, i, blk)
        d2 = jax.lax.dynamic_slice_in_dim(sq, i, blk)[:, None] + sq[None, :] - 2.0 * rows @ xs.T
        return jnp.sum(jnp.exp(-jnp.maximum(d2, 0.0) / (2 * h**2)))

    total = jnp.sum(jax.lax.map(block_sum, jnp.arange(0, n, blk)))
    qq = (total - n) / (n * (n - 1))  # U-statistic: drop the n diagonal terms k(x, x) = 1
    # the same n samples in the cross term keep the estimator degenerate (noise O(1/n)) at q = p
    cross = c * jnp.mean(jnp.exp(jax.vmap(ph.log_prob)(xs)))
    return float(jnp.sqrt(jnp.maximum(qq - 2 * cross + pp, 0.0)))


def _dpm_solver_caller(sde, eps_fn):
    """`name -> fn(x_T, nfe) -> (x, NFE used)` for `sd.DPMSolver` (orders 2, 3), or {} if absent."""
    if not hasattr(sd, "DPMSolver"):
        return {}
    model = sd.EpsModel(eps_fn)
    out = {}
    for make_grid, label in (
        (sd.grids.log_snr, "log-SNR steps"),
        (sd.grids.quadratic, "time-quadratic steps"),
    ):
        for order in (2, 3):
            cache = {}

            def call(x_T, nfe, order=order, cache=cache, make_grid=make_grid):
                steps = nfe // order
                if steps < 1:
                    return None
                if steps not in cache:
                    grid = make_grid(sde, steps, t_eps=T_EPS)
                    solver = sd.DPMSolver(order=order)
                    g = lambda z: sd.sample(None, sde, model, solver, grid, z).x
                    cache[steps] = jax.jit(jax.vmap(g))
                return cache[steps](x_T), steps * order

            out[f"DPM-Solver-{order} ({label})"] = call
    return out


def run(*, num_samples=2**16, num_entropy=2**21, nfes=NFES, log=print) -> dict:
    with jax.enable_x64(True):
        return _run(num_samples, num_entropy, nfes, log)


def _run(num_samples, num_entropy, nfes, log):
    t_start = time.perf_counter()
    dtype = jnp.float64
    gm = mixture_2d(dtype)
    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, N, dtype=dtype)
    eps_d = sd.toy.discrete_eps_fn(gm, sched)
    score = gm.score_fn(sde)
    logp = jax.jit(jax.vmap(gm.log_prob))

    k_ent, k_ref, k_xT, k_gam, k_samp = jax.random.split(jax.random.key(7), 5)
    # entropy of p by Monte Carlo (chunked) and its standard error
    ent_vals = []
    for k in jax.random.split(k_ent, max(1, num_entropy // 2**18)):
        ent_vals.append(np.asarray(-logp(gm.sample(k, min(num_entropy, 2**18)))))
    ent_vals = np.concatenate(ent_vals)
    H, H_se = float(ent_vals.mean()), float(ent_vals.std() / np.sqrt(ent_vals.size))
    x_T = jax.random.normal(k_xT, (num_samples, 2), dtype)
    keys = jax.random.split(k_samp, num_samples)

    samplers = {}
    model_d = sd.EpsModel(eps_d)

    # One compiled function per (solver structure, K): the trajectory tau and the solver's
    # arrays (Gamma) are traced arguments, so Analytic-DPM on the uniform and on the optimal
    # trajectory share one compilation.
    def stochastic(make_solver):
        f = lambda k, x, tau, p: sd.sample(k, sched, model_d, make_solver(p), tau, x).x
        return jax.jit(jax.vmap(f, in_axes=(0, 0, None, None)))

    deterministic = jax.jit(
        jax.vmap(
            lambda x, tau: sd.sample(None, sched, model_d, sd.DDIM(), tau, x).x,
            in_axes=(0, None),
        )
    )
    ddpm = stochastic(lambda _: sd.DDPM())
    samplers["DDPM"] = lambda x, nfe: ddpm(keys, x, sd.respace(N, nfe), None)
    samplers["DDIM"] = lambda x, nfe: deterministic(x, sd.respace(N, nfe))
    samplers["DDIM (quadratic)"] = lambda x, nfe: deterministic(x, sd.respace(N, nfe, "quadratic"))

    analytic_ok = hasattr(sd, "analytic") and hasattr(sd.analytic, "AnalyticDPM")
    if analytic_ok:
        t0 = time.perf_counter()
        est = sd.analytic.estimate_gamma(k_gam, sched, eps_d, gm.sample(k_gam, 2048))
        jax.block_until_ready(est.ms_eps)
        log(f"  [4] Gamma estimated from 2048 oracle samples in {time.perf_counter() - t0:.1f} s")
        a_dpm = stochastic(sd.analytic.AnalyticDPM)
        a_ddim = stochastic(sd.analytic.AnalyticDDIM)
        samplers["Analytic-DPM"] = lambda x, nfe: a_dpm(keys, x, sd.respace(N, nfe), est)
        samplers["Analytic-DDIM"] = lambda x, nfe: a_ddim(keys, x, sd.respace(N, nfe), est)
        if hasattr(sd.analytic, "optimal_trajectory"):
            samplers["Analytic-DPM (optimal trajectory)"] = lambda x, nfe: a_dpm(
                keys, x, sd.analytic.optimal_trajectory(sched, est, nfe), est
            )

    # PF-ODE solvers (diffrax), time-uniform steps; dt0 is traced so one compile per solver
    def ode(name, solver, per_step, extra):
        def make():
            @jax.jit
            def f(x_T, dt0):
                g = lambda z: sd.decode(
                    sde,
                    score,
                    z,
                    solver=solver,
                    stepsize_controller=diffrax.ConstantStepSize(),
                    dt0=dt0,
                    t_eps=T_EPS,
                    max_steps=256,
                    return_stats=True,
                )
                return jax.vmap(g)(x_T)

            return f

        f = make()

        def call(x_T, nfe):
            steps = (nfe - extra) // per_step
            if steps < 1:
                return None
            dt0 = -(sde.T - T_EPS) / steps * (1 + 1e-12)
            x, stats = f(x_T, dt0)
            return x, int(stats["nfe"][0])

        samplers[name] = call

    ode("PF-ODE Euler", diffrax.Euler(), 1, 0)
    ode("PF-ODE Heun", diffrax.Heun(), 2, 0)
    ode("PF-ODE Tsit5 (fixed steps)", diffrax.Tsit5(), 6, 1)
    dpm = _dpm_solver_caller(sde, gm.eps_fn(sde))
    samplers.update(dpm)

    # Reference: the exact PF-ODE flow of the same x_T (adaptive Tsit5, tight tolerances).
    # gap(q) = E[-log p(x_q) + log p(x_ref)] (paired, low variance for deterministic samplers)
    #        + (E[-log p(x_ref)] - H(p)), the second term = CE(p_teps, p) - H(p) computed with a
    # paired Monte Carlo over x0 ~ p, x_teps = alpha x0 + sigma eps (tiny variance).
    t0 = time.perf_counter()
    ref_flow = jax.jit(
        jax.vmap(
            lambda z: sd.decode(
                sde,
                score,
                z,
                stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
                t_eps=T_EPS,
                max_steps=4096,
            )
        )
    )
    x_ref = jax.block_until_ready(ref_flow(x_T))
    lp_ref = np.asarray(-logp(x_ref))
    a_eps, s_eps = sde.marginal(jnp.asarray(T_EPS, dtype))
    ce_vals = []
    for k in jax.random.split(k_ent, max(1, num_entropy // 2**18)):
        ka, kb = jax.random.split(k)
        x0 = gm.sample(ka, min(num_entropy, 2**18))
        xt = a_eps * x0 + s_eps * jax.random.normal(kb, x0.shape, dtype)
        ce_vals.append(np.asarray(-logp(xt) + logp(x0)))
    ce_vals = np.concatenate(ce_vals)
    flow_gap, flow_gap_se = float(ce_vals.mean()), float(ce_vals.std() / np.sqrt(ce_vals.size))
    direct_ref_gap = float(lp_ref.mean() - H)
    log(
        f"  [4] exact-flow reference in {time.perf_counter() - t0:.1f} s: CE(p_teps, p) - H(p) = "
        f"{flow_gap:.5f} +- {flow_gap_se:.5f}; direct MC of the reference samples "
        f"{direct_ref_gap:+.4f}"
    )

    results = {}
    for name, call in samplers.items():
        results[name] = {}
        t0 = time.perf_counter()
        for nfe in nfes:
            out = call(x_T, nfe)
            if out is None:
                continue
            x, used = out if isinstance(out, tuple) else (out, nfe)
            x = jax.block_until_ready(x)
            vals = np.asarray(-logp(x))
            if not np.isfinite(vals).all():
                results[name][nfe] = {
                    "nfe": used,
                    "gap": float("nan"),
                    "gap_se": float("nan"),
                    "mmd": float("nan"),
                }
                continue
            diff = vals - lp_ref
            gap = float(diff.mean() + flow_gap)
            se = float(np.sqrt(diff.var() / diff.size + flow_gap_se**2))
            results[name][nfe] = {"nfe": used, "gap": gap, "gap_se": se, "mmd": mmd(gm, x)}
        log(
            f"  [4] {name:34s} "
            + " ".join(f"{n}:{r['gap']:+.4f}" for n, r in results[name].items())
            + f"  ({time.perf_counter() - t0:.1f} s)"
        )
    missing = []
    if not dpm:
        missing.append("`sd.DPMSolver` (exponential integrator) is not in the library yet")
    if not analytic_ok:
        missing.append("`sd.analytic` (Analytic-DPM) is not in the library yet")
    mmd_floor = float(
        np.mean([mmd(gm, gm.sample(k, num_samples)) for k in jax.random.split(k_ref, 3)])
    )
    return {
        "results": results,
        "entropy": H,
        "entropy_se": H_se,
        "num_samples": num_samples,
        "num_entropy": int(ent_vals.size),
        "nfes": list(nfes),
        "missing": missing,
        "mmd_floor": mmd_floor,
        "flow_gap": flow_gap,
        "flow_gap_se": flow_gap_se,
        "direct_ref_gap": direct_ref_gap,
        "seconds": time.perf_counter() - t_start,
    }


def report(res: dict) -> str:
    nfes = res["nfes"]
    rows, rows_mmd = [], []
    for name, r in res["results"].items():
        cells, cells_mmd = [name], [name]
        for n in nfes:
            if n in r:
                e = r[n]
                mark = "" if e["nfe"] == n else f" ({e['nfe']})"
                cells.append(f"{e['gap']:+.4f}{mark}")
                cells_mmd.append(f"{1e3 * e['mmd']:.1f}{mark}")
            else:
                cells.append("—")
                cells_mmd.append("—")
        rows.append(cells)
        rows_mmd.append(cells_mmd)
    hdr = ["sampler"] + [f"NFE {n}" for n in nfes]
    ses = [
        e["gap_se"]
        for r in res["results"].values()
        for e in r.values()
        if np.isfinite(e["gap_se"]) and abs(e["gap"]) < 1.0
    ]
    lines = [
        "## 4. Quality per network evaluation (2-D mixture oracle, VP SDE, exact score)",
        "",
        "Cross-entropy gap $\\mathbb E_q[-\\log p(x)] - H(p)$ in nats, for "
        f"{res['num_samples']:,} samples $q$ of each sampler against the exact three-component "
        "2-D mixture $p$. All samplers start from the same prior draws $x_T$. Discrete samplers "
        "use "
        "the N = 1000 schedule sampled from the VP SDE ($\\beta \\in [0.1, 20]$), with uniform "
        "respacing unless stated; PF-ODE solvers integrate from $T = 1$ to "
        f"$t_\\epsilon = {T_EPS}$ ($= t_1$ of that schedule) with time-uniform steps. NFE in "
        "parentheses is what a solver used when the budget is not a multiple of its stages "
        "(Heun: 2 per step; Tsit5: 6 per step + 1).",
        "",
        "Estimator: the gap is computed as the paired difference $\\overline{\\log "
        "p(x_{\\mathrm{ref}}) "
        "- \\log p(x_q)}$ against the exact PF-ODE flow $x_{\\mathrm{ref}}$ of the same $x_T$ "
        "(adaptive "
        "Tsit5, tolerance $10^{-8}$), plus that flow's own gap $\\mathrm{CE}(p_{t_\\epsilon}, p) - "
        "H(p) = "
        f"{res['flow_gap']:.5f} \\pm {res['flow_gap_se']:.5f}$ (a paired Monte Carlo over "
        f"{res['num_entropy']:,} draws $x_0 \\sim p$). Unbiased either way, but the pairing makes "
        "the "
        "deterministic samplers' entries precise. Standard errors of the entries below 1 nat: "
        f"{min(ses):.4f} to {max(ses):.4f}. A negative gap means samples too concentrated on the "
        "modes (the last DDIM step outputs a posterior mean); since the gap can cross zero, read "
        "it "
        "with the MMD table below, which cannot cancel.",
        "",
        md_table(hdr, rows),
        "",
        f"MMD (Gaussian kernel, bandwidth {MMD_BANDWIDTH}, exact on $p$'s side) x 1000; an exact "
        f"sample of the same size scores {1e3 * res['mmd_floor']:.1f} (the noise floor):",
        "",
        md_table(hdr, rows_mmd),
        "",
    ]
    lines.append(
        "Targets: |gap| <= 0.03 at NFE 10 and <= 0.01 at NFE 20 (anchor, the best PyTorch "
        "samplers: 0.095 and 0.015). A sampler counts only if it *stays* within the target at "
        "every "
        "larger NFE of the table, so a gap that merely crosses zero does not count."
    )
    lines.append("")
    for n in (10, 20):
        cands = []
        for name, r in res["results"].items():
            if n not in r or r[n]["nfe"] > n or not np.isfinite(r[n]["gap"]):
                continue
            later = [abs(e["gap"]) for m, e in r.items() if m >= n]
            cands.append((abs(r[n]["gap"]), max(later), name, r[n]["mmd"]))
        if not cands:
            continue
        g, _, name, m = min(cands)
        ok = sorted((c for c in cands if c[1] <= TARGET[n]), key=lambda c: c[0])
        if ok:
            g2, _, name2, m2 = ok[0]
            status = f"met by {name2} (|gap| {g2:.4f}, MMD x 1000 = {1e3 * m2:.1f})"
        else:
            best_stable = min(cands, key=lambda c: c[1])
            status = (
                f"missed: the smallest |gap| is {g:.4f} ({name}, MMD x 1000 = {1e3 * m:.1f}); "
                f"the best sampler that stays converged from NFE {n} on, {best_stable[2]}, "
                f"misses by {best_stable[1] - TARGET[n]:.3f} nats"
            )
        lines.append(f"- NFE {n}, target {TARGET[n]} (anchor {ANCHOR[n]}): {status}.")
    for m in res["missing"]:
        lines.append(f"- Missing: {m}.")
    lines.append("")
    return "\n".join(lines)
