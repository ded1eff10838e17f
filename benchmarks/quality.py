r"""Section 4: sample quality per network evaluation on exact Gaussian-mixture oracles.

Two oracles, both under the VP SDE ($\beta \in [0.1, 20]$) in float64: the 2-D three-component
mixture of the tests (`_common.mixture_2d`) and a 64-D four-component mixture with random means
and random full covariances (`mixture_64d`, fixed seed). Every sampler starts from the same
prior draws $x_T \sim \mathcal N(0, I)$ at $T = 1$ and is measured two ways:

- **RMS distance** to the converged probability-flow ODE solution from the same $x_T$, ending at
  the sampler's own end point: $\sqrt{\overline{\|x - x_{\mathrm{ref}}\|^2}/d}$ (per-example
  Euclidean distance, root mean square over the batch, divided by $\sqrt d$ so that the two
  mixtures share a scale: an RMS error per coordinate).
- **Cross-entropy gap** $\mathbb E_q[-\log p(x)] - H(p)$ against the exact data density $p$,
  estimated as the paired difference against the same reference plus the reference's own gap.

Deterministic solvers run on each continuous grid of `sd.grids` (log-SNR, time-quadratic,
time-uniform, EDM/karras with rho = 7), all ending at $t_\epsilon = 10^{-3}$ ($= t_1$ of the
N = 1000 schedule, diffusers' timestep 0). The discrete samplers (DDIM on respaced trajectories,
DDPM, Analytic-DPM) end at index 0, where sigma = 0; their reference is the same flow continued
to $t = 0$. Compilation: one program per (oracle, NFE) holding every solver, with the grids
(and trajectories) as traced arguments stacked along a `vmap` axis, so grids never recompile.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from ._common import cpu_seconds, md_table, mixture_2d

N = 1000
T_EPS = 1.0e-3  # = t_1 of the N = 1000 discrete schedule sampled from the same VP SDE
NFES = (5, 10, 15, 20, 50)
TARGET_NFE = 10
TARGET_GAP = 0.03  # |gap| <= 0.03 nats at every NFE >= 10 (issue 7, restated in issue 14)
TARGET_RMS_RATIO = 0.5  # RMS <= 1/2 of diffusers' DPM-Solver++(2M) at NFE 10 (issue 14)
GRIDS = ("log_snr", "quadratic", "uniform", "karras")
GRID_LABEL = {
    "log_snr": "log-SNR",
    "quadratic": "time-quadratic",
    "uniform": "time-uniform",
    "karras": "karras (rho 7)",
    "diffusers": "diffusers' timesteps",
}
REF_TOL = 1e-9  # adaptive Tsit5 tolerance of the reference flow
MMD_BANDWIDTH = 0.25
PEER_TARGET = "diffusers DPM-Solver++(2M)"

# `run(**QUICK)` is `python -m benchmarks.run --quick` and the smoke test: the 2-D oracle, one
# NFE, one solver, a small batch; about 10 CPU-seconds (most of it compiling the reference).
QUICK: dict[str, Any] = dict(
    num_samples={"2-D": 2**10},
    num_entropy={"2-D": 2**14},
    nfes=(10,),
    mixtures=("2-D",),
    solvers=("DPM-Solver++(2M)",),
    grids=("log_snr", "uniform"),
    discrete=False,
    stochastic=False,
    check_reference=False,
)


# ------------------------------------------------------------------------------------ oracles


def mixture_64d(dtype=jnp.float64, *, d: int = 64, k: int = 4, seed: int = 14):
    r"""The 64-D four-component mixture: weights from a Dirichlet(5) (0.37, 0.12, 0.23, 0.28
    with the default seed), means $0.5\,\mathcal N(0, I)$ (5.0 to 5.5 apart), covariances
    $U\operatorname{diag}(\ell)U^\top$ with a random rotation $U$ and eigenvalues $\ell$
    log-uniform in $[0.1, 1]$ (standard deviations 0.32 to 1 along random axes). Along the line
    joining two means, they are 7.7 to 8.9 of either component's standard deviations apart:
    separated, but the flow must still split the mass between them with the right weights and
    shape each one in 64 correlated directions. Seeded (NumPy), so the same on every machine."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(k, 5.0))
    m = 0.5 * rng.standard_normal((k, d))
    covs = []
    for _ in range(k):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))  # a Haar-distributed rotation
        ev = np.exp(rng.uniform(np.log(0.1), np.log(1.0), d))
        c = (q * ev) @ q.T
        covs.append(0.5 * (c + c.T))
    return sd.toy.GaussianMixture(
        jnp.asarray(w, dtype), jnp.asarray(m, dtype), jnp.asarray(np.stack(covs), dtype)
    )


MIXTURES = {"2-D": mixture_2d, "64-D": mixture_64d}


# ------------------------------------------------------------------------------------ samplers


@dataclass(frozen=True)
class Spec:
    """A deterministic continuous-time solver: `make()` is its solver value, and it costs
    `per_step` evaluations per grid interval (`K = nfe // per_step`)."""

    name: str
    make: Callable
    per_step: int = 1


SPECS = (
    Spec("DDIM (order-1 DPM-Solver++)", lambda: sd.DPMSolverPP(order=1)),
    Spec("DPM-Solver-2", lambda: sd.DPMSolver(order=2), 2),
    Spec("DPM-Solver-3", lambda: sd.DPMSolver(order=3), 3),
    Spec("DPM-Solver++(2M)", lambda: sd.DPMSolverPP(order=2)),
    Spec("DPM-Solver++(3M)", lambda: sd.DPMSolverPP(order=3)),
    Spec("UniPC-2 bh1", lambda: sd.UniPC(order=2, variant=sd.UniPC.BH1)),
    Spec("UniPC-2 bh2", lambda: sd.UniPC(order=2)),
    Spec("UniPC-3 bh2", lambda: sd.UniPC(order=3)),
    Spec("EDM Heun (churn 0)", lambda: sd.EDMHeun(), 2),
)
HEUN = "PF-ODE Heun (diffrax)"  # time-uniform steps only: one compilation for every NFE
# the scoredyn twins of the diffusers peers also run on diffusers' own timesteps
TWINS = {"DPM-Solver++(2M)": PEER_TARGET, "UniPC-2 bh2": "diffusers UniPC-2 bh2"}


def diffusers_grid(K: int, T: float = 1.0) -> np.ndarray:
    """diffusers' `timestep_spacing="linspace"` timesteps for K steps of N = 1000, as times of
    our schedule (timestep t is our index t + 1, time (t + 1) T / N), then `final_sigmas_type=
    "sigma_min"`: timestep 0, our t_eps."""
    steps = np.linspace(0, N - 1, K + 1).round()[::-1][:-1]
    return np.append((steps + 1) * (T / N), T_EPS)


def make_grids(sde, K: int, names=GRIDS, *, extra: bool = False) -> np.ndarray:
    fns = {
        "log_snr": sd.grids.log_snr,
        "quadratic": sd.grids.quadratic,
        "uniform": sd.grids.uniform,
        "karras": sd.grids.karras,
    }
    rows = [np.asarray(fns[g](sde, K, t_eps=T_EPS), np.float64) for g in names]
    if extra:
        rows.append(diffusers_grid(K, float(sde.T)))
    return np.stack(rows)


def _program(sde, sched, specs, model_c, model_d, stochastic):
    """One jitted function per oracle: every solver at one NFE (its shapes fix the step counts,
    so JAX compiles it once per NFE). Inputs are the prior draws, per-solver grid stacks
    `(G, K+1)`, the discrete trajectories, the keys and Analytic-DPM's Gamma."""
    spec_of = {s.name: s for s in specs}

    def prog(x_T, grids, taus, keys, est):
        out = {}
        for name, g in grids.items():
            spec = spec_of[name]

            def per_grid(grid, spec=spec):
                one = lambda z: sd.sample(None, sde, model_c, spec.make(), grid, z).x
                return jax.vmap(one)(x_T)

            out[name] = jax.vmap(per_grid)(g)
        if "DDIM" in taus:
            ddim = lambda tau: jax.vmap(
                lambda z: sd.sample(None, sched, model_d, sd.DDIM(), tau, z).x
            )(x_T)
            out["DDIM"] = jax.vmap(ddim)(taus["DDIM"])
        if stochastic:

            def noisy(solver, tau):
                f = lambda k, z: sd.sample(k, sched, model_d, solver, tau, z).x
                return jax.vmap(f)(keys, x_T)

            out["DDPM"] = noisy(sd.DDPM(), taus["DDPM"])[None]
            if est is not None:
                a_dpm = sd.analytic.AnalyticDPM(est)
                out["Analytic-DPM"] = jax.vmap(lambda tau: noisy(a_dpm, tau))(taus["Analytic"])
                out["Analytic-DDIM"] = noisy(sd.analytic.AnalyticDDIM(est), taus["DDPM"])[None]
        return out

    return jax.jit(prog)


# ------------------------------------------------------------------------------------ metrics


def _chunked(fn, x, size=2**14):
    return np.concatenate([np.asarray(fn(x[i : i + size])) for i in range(0, x.shape[0], size)])


def _compare_grids(xs, ref, grids) -> dict:
    """The best and second-best grid by mean squared distance to the reference, and the paired
    z-score of their difference (same draws on every grid, so the heavy tail mostly cancels)."""
    sq = np.sum((np.asarray(xs[: len(grids)]) - ref[None]) ** 2, -1)  # (G, B)
    ms = np.where(np.isfinite(sq).all(-1), sq.mean(-1), np.inf)
    order = np.argsort(ms)
    i, j = int(order[0]), int(order[1])
    diff = sq[j] - sq[i]
    se = diff.std() / np.sqrt(diff.size) if np.isfinite(diff).all() else 0.0
    z = float(diff.mean() / se) if se > 0 else float("inf")
    return {"best": grids[i], "second": grids[j], "z": z}


def _metrics(x, ref, lp_ref, logp, flow_gap, flow_gap_se) -> dict:
    x = np.asarray(x)
    if not np.isfinite(x).all():
        nan = float("nan")
        return {"rms": nan, "rms_se": nan, "gap": nan, "gap_se": nan}
    d = x.shape[1]
    sq = np.sum((x - ref) ** 2, -1) / d
    rms = float(np.sqrt(sq.mean()))
    rms_se = float(sq.std() / np.sqrt(sq.size) / (2 * rms)) if rms > 0 else 0.0
    diff = lp_ref - _chunked(logp, jnp.asarray(x))  # -log p(x) + log p(x_ref)
    return {
        "rms": rms,
        "rms_se": rms_se,
        "gap": float(diff.mean() + flow_gap),
        "gap_se": float(np.sqrt(diff.var() / diff.size + flow_gap_se**2)),
    }


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


# ------------------------------------------------------------------------------------ run


def run(
    *,
    num_samples=None,
    num_entropy=None,
    nfes=NFES,
    mixtures=("2-D", "64-D"),
    solvers=None,
    grids=GRIDS,
    discrete=True,
    stochastic=True,
    peers=True,
    check_reference=True,
    log=print,
) -> dict:
    """Run the section. `num_samples` / `num_entropy`: dicts by oracle name (defaults: 2-D
    2^15 / 2^21, 64-D 2^11 / 2^17). `solvers`: names from `SPECS` (default all). `stochastic`
    (DDPM, Analytic-DPM) runs on the 2-D oracle only; `peers` adds the diffusers loops of
    `quality_peers` when torch and diffusers import."""
    ns = {"2-D": 2**15, "64-D": 2**11} | (num_samples or {})
    ne = {"2-D": 2**21, "64-D": 2**17} | (num_entropy or {})
    specs = [s for s in SPECS if solvers is None or s.name in solvers]
    t_start = time.perf_counter()
    peer_status: dict = {"skipped": "not requested"}
    if peers:
        from . import quality_peers

        ok, why = quality_peers.available()
        peer_status = quality_peers.versions() if ok else {"skipped": why}
        if not ok:
            log(f"  [4] diffusers peers skipped: torch/diffusers not importable ({why})")
    out = {}
    with jax.enable_x64(True):
        for i, label in enumerate(mixtures):
            out[label] = _run_one(
                label,
                ns[label],
                ne[label],
                tuple(nfes),
                specs,
                solvers is None or HEUN in solvers,
                tuple(grids),
                discrete,
                stochastic and label == "2-D",
                peers and "skipped" not in peer_status,
                check_reference,
                jax.random.key(7 + i),
                log,
            )
            jax.clear_caches()
    res = {
        "mixtures": out,
        "nfes": list(nfes),
        "grids": list(grids),
        "peers": peer_status,
        "seconds": time.perf_counter() - t_start,
    }
    res["results"] = _plot_rows(res)
    return res


def _run_one(
    label,
    num_samples,
    num_entropy,
    nfes,
    specs,
    with_heun,
    grids,
    discrete,
    stochastic,
    peers,
    check_ref,
    key,
    log,
):
    t_start = time.perf_counter()
    dtype = jnp.float64
    gm = MIXTURES[label](dtype)
    d = gm.dim
    sde = sd.VPSDE(beta_min=0.1, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, N, dtype=dtype)
    eps_d = sd.toy.discrete_eps_fn(gm, sched)
    model_c = sd.EpsModel(gm.eps_fn(sde))
    model_d = sd.EpsModel(eps_d)
    logp = jax.jit(jax.vmap(gm.log_prob))

    k_ent, k_xT, k_gam, k_samp, _ = jax.random.split(key, 5)  # 5: the published draws
    x_T = jax.random.normal(k_xT, (num_samples, d), dtype)
    keys = jax.random.split(k_samp, num_samples)

    # entropy of p and the reference flow's own gap CE(p_teps, p) - H(p), one paired Monte
    # Carlo over x0 ~ p, x_teps = alpha x0 + sigma eps (small variance)
    chunk = min(num_entropy, 2**18 if d <= 8 else 2**14)
    a_eps, s_eps = sde.marginal(jnp.asarray(T_EPS, dtype))
    ent, ce = [], []
    for k in jax.random.split(k_ent, max(1, num_entropy // chunk)):
        ka, kb = jax.random.split(k)
        x0 = gm.sample(ka, chunk)
        xt = a_eps * x0 + s_eps * jax.random.normal(kb, x0.shape, dtype)
        lp0 = np.asarray(logp(x0))
        ent.append(-lp0)
        ce.append(np.asarray(-logp(xt)) + lp0)
    ent, ce = np.concatenate(ent), np.concatenate(ce)
    H, H_se = float(ent.mean()), float(ent.std() / np.sqrt(ent.size))
    flow_gap = {"t_eps": float(ce.mean()), "zero": 0.0}
    flow_gap_se = {"t_eps": float(ce.std() / np.sqrt(ce.size)), "zero": 0.0}

    # the reference: the exact PF-ODE flow of the same x_T (adaptive Tsit5, tolerance 1e-9,
    # per-example step control) to t_eps, then on to t = 0 (sigma = 0: a score model, since an
    # eps model divides by sigma there)
    t0 = time.perf_counter()
    score_model = sd.ScoreModel(gm.score_fn(sde))

    def flow(a, b, tol=REF_TOL, solver=None):
        ode = sd.ODE(
            solver=solver or diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            max_steps=2**15,
        )
        grid = jnp.array([a, b], dtype)
        return jax.jit(jax.vmap(lambda z: sd.sample(None, sde, score_model, ode, grid, z)))

    r1 = flow(float(sde.T), T_EPS)(x_T)
    ref = {"t_eps": np.asarray(jax.block_until_ready(r1.x))}
    ref_nfe = int(np.max(r1.stats["nfe"]))
    need_zero = discrete or stochastic or peers
    if need_zero:
        r0 = flow(T_EPS, 0.0)(jnp.asarray(ref["t_eps"]))
        ref["zero"] = np.asarray(jax.block_until_ready(r0.x))
        ref_nfe += int(np.max(r0.stats["nfe"]))
    lp_ref = {e: _chunked(logp, jnp.asarray(v)) for e, v in ref.items()}
    ref_seconds = time.perf_counter() - t0
    ref_err = None
    if check_ref:  # the reference against a tighter Dopri8 solve, on the first 128 draws
        m = min(128, num_samples)
        tight = flow(float(sde.T), T_EPS, 1e-11, diffrax.Dopri8())(x_T[:m]).x
        e = np.sqrt(np.mean(np.sum((np.asarray(tight) - ref["t_eps"][:m]) ** 2, -1) / d))
        ref_err = float(e)
    direct_ref_gap = float(-lp_ref["t_eps"].mean() - H)
    log(
        f"  [4] {label}: {num_samples:,} draws; reference flow in {ref_seconds:.1f} s (max "
        f"{ref_nfe} evaluations), CE(p_teps, p) - H(p) = {flow_gap['t_eps']:.5f} +- "
        f"{flow_gap_se['t_eps']:.5f}; direct MC of the reference {direct_ref_gap:+.4f} +- "
        f"{np.hypot(H_se, lp_ref['t_eps'].std() / np.sqrt(num_samples)):.4f}"
        + ("" if ref_err is None else f"; reference error ~{ref_err:.1e}")
    )

    # Gamma for Analytic-DPM (2-D only)
    est = None
    if stochastic:
        t0 = time.perf_counter()
        est = sd.analytic.estimate_gamma(k_gam, sched, eps_d, gm.sample(k_gam, 2048))
        jax.block_until_ready(est.ms_eps)
        log(f"  [4] {label}: Gamma from 2048 oracle samples in {time.perf_counter() - t0:.1f} s")

    prog = _program(sde, sched, specs, model_c, model_d, stochastic)

    @jax.jit
    def heun(x_T, dt0):  # dt0 traced: one compilation for every NFE
        ode = sd.ODE(
            solver=diffrax.Heun(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=dt0,
            max_steps=64,
        )
        grid = jnp.array([sde.T, T_EPS], dtype)
        r = jax.vmap(lambda z: sd.sample(None, sde, model_c, ode, grid, z))(x_T)
        return r.x, jnp.max(r.stats["nfe"])

    rows: dict = {}

    def row(name, **meta):
        if name not in rows:
            rows[name] = {**meta, "nfe": {}}
        return rows[name]

    twin_x, grid_cmp = {}, {}
    for nfe in nfes:
        t0 = time.perf_counter()
        grid_in, used = {}, {}
        for s in specs:
            K = nfe // s.per_step
            if K < 1:
                continue
            extra = s.name in TWINS
            grid_in[s.name] = jnp.asarray(make_grids(sde, K, grids, extra=extra), dtype)
            used[s.name] = K * s.per_step
        taus = {}
        if discrete:
            taus["DDIM"] = jnp.stack([sd.respace(N, nfe), sd.respace(N, nfe, "quadratic")])
        if stochastic:
            taus["DDPM"] = sd.respace(N, nfe)
            taus["Analytic"] = jnp.stack(
                [sd.respace(N, nfe), sd.analytic.optimal_trajectory(sched, est, nfe)]
            )
        c0 = cpu_seconds()
        outs = jax.block_until_ready(prog(x_T, grid_in, taus, keys, est))
        t_prog, c_prog = time.perf_counter() - t0, cpu_seconds() - c0

        def record(name, x, used_nfe, end, **meta):
            r = row(name, end=end, **meta)
            e = _metrics(x, ref[end], lp_ref[end], logp, flow_gap[end], flow_gap_se[end])
            e["nfe"] = used_nfe
            if meta.get("stochastic") and d <= 8:
                e["mmd"] = mmd(gm, jnp.asarray(x), num_pairs=2**13)
            r["nfe"][nfe] = e

        for s in specs:
            if s.name not in outs:
                continue
            xs = np.asarray(outs[s.name])
            for j, g in enumerate(grids):
                record(
                    f"{s.name}, {GRID_LABEL[g]}",
                    xs[j],
                    used[s.name],
                    "t_eps",
                    solver=s.name,
                    grid=g,
                )
            if s.name in TWINS:
                record(
                    f"{s.name}, {GRID_LABEL['diffusers']}",
                    xs[-1],
                    used[s.name],
                    "t_eps",
                    solver=s.name,
                    grid="diffusers",
                )
                twin_x[(s.name, nfe)] = xs[-1]
            if len(grids) > 1:
                grid_cmp.setdefault(s.name, {})[nfe] = _compare_grids(xs, ref["t_eps"], grids)
        if with_heun and nfe >= 2:
            steps = nfe // 2
            xh, used_h = heun(x_T, (float(sde.T) - T_EPS) / steps * (1 + 1e-12))
            record(HEUN, np.asarray(xh), int(used_h), "t_eps", solver=HEUN, grid="uniform")
        if "DDIM" in outs:
            xs = np.asarray(outs["DDIM"])
            for j, lab in enumerate(("uniform", "quadratic")):
                record(
                    f"DDIM (discrete, {lab} respacing)",
                    xs[j],
                    nfe,
                    "zero",
                    solver="DDIM (discrete)",
                    grid=lab,
                )
        if stochastic:
            record("DDPM", np.asarray(outs["DDPM"][0]), nfe, "zero", stochastic=True)
            if "Analytic-DPM" in outs:
                xs = np.asarray(outs["Analytic-DPM"])
                record("Analytic-DPM", xs[0], nfe, "zero", stochastic=True)
                record("Analytic-DPM (optimal trajectory)", xs[1], nfe, "zero", stochastic=True)
                record(
                    "Analytic-DDIM",
                    np.asarray(outs["Analytic-DDIM"][0]),
                    nfe,
                    "zero",
                    stochastic=True,
                )
        log(
            f"  [4] {label} NFE {nfe}: {len(outs)} solvers in one program, "
            f"{t_prog:.1f} s ({c_prog:.1f} CPU-s; compile + run), then metrics"
            f"{' and PF-ODE Heun' if with_heun else ''} {time.perf_counter() - t0 - t_prog:.1f} s"
        )

    peer_info = None
    if peers:
        from . import quality_peers

        t0 = time.perf_counter()
        eps_j = jax.jit(jax.vmap(eps_d, in_axes=(None, 0)))

        def eps_np(timestep, x):  # diffusers' timestep t is our index n = t + 1
            t = jnp.asarray((int(timestep) + 1) * float(sde.T) / N, dtype)
            return np.asarray(eps_j(t, jnp.asarray(x)))

        pres = quality_peers.run(
            betas=np.asarray(sched.betas[1:]),
            alpha_bar=np.asarray(jnp.exp(sched.log_alpha_bar[1:])),
            eps=eps_np,
            x_T=np.asarray(x_T),
            nfes=nfes,
            log=lambda msg: log(f"  [4] {label}: {msg}"),
        )
        for name, pr in pres["rows"].items():
            for nfe, x in pr["x"].items():
                r = row(name, end=pr["end"], peer=True, solver=name)
                e = _metrics(
                    x,
                    ref[pr["end"]],
                    lp_ref[pr["end"]],
                    logp,
                    flow_gap[pr["end"]],
                    flow_gap_se[pr["end"]],
                )
                e["nfe"] = nfe
                twin = pr.get("twin")
                if twin and (twin, nfe) in twin_x:
                    e["twin_max_abs"] = float(np.max(np.abs(x - twin_x[(twin, nfe)])))
                r["nfe"][nfe] = e
        peer_info = {k: v for k, v in pres.items() if k != "rows"}
        log(f"  [4] {label}: diffusers loops in {time.perf_counter() - t0:.1f} s")

    return {
        "dim": d,
        "components": gm.num_components,
        "num_samples": num_samples,
        "num_entropy": int(ent.size),
        "entropy": H,
        "entropy_se": H_se,
        "flow_gap": flow_gap["t_eps"],
        "flow_gap_se": flow_gap_se["t_eps"],
        "direct_ref_gap": direct_ref_gap,
        "ref_nfe": ref_nfe,
        "ref_error": ref_err,
        "ref_seconds": ref_seconds,
        "peer_info": peer_info,
        "rows": rows,
        "grid_cmp": grid_cmp,
        "seconds": time.perf_counter() - t_start,
    }


# ------------------------------------------------------------------------------------ analysis


def _deterministic(r) -> bool:
    return not r.get("stochastic", False)


def best_grids(res: dict) -> dict:
    """`{mixture: {solver: {nfe: (grid, rms)}}}`: the grid of least RMS distance per solver
    (solvers measured on more than one grid)."""
    out = {}
    for label, mres in res["mixtures"].items():
        per, seen = {}, {}
        for r in mres["rows"].values():
            if r.get("peer") or r.get("stochastic") or r.get("grid") in (None, "diffusers"):
                continue
            for nfe, e in r["nfe"].items():
                if not np.isfinite(e["rms"]):
                    continue
                cur = per.setdefault(r["solver"], {}).get(nfe)
                if cur is None or e["rms"] < cur[1]:
                    per[r["solver"]][nfe] = (r["grid"], e["rms"])
                seen.setdefault(r["solver"], set()).add(r["grid"])
        out[label] = {s: v for s, v in per.items() if len(seen[s]) > 1}
    return out


def rms_target(res: dict, nfe: int = TARGET_NFE) -> dict:
    """Against diffusers' DPM-Solver++(2M) (final sigma = sigma_min, same end point): the best
    scoredyn deterministic sampler at `nfe` (evaluations used <= nfe) per mixture, its ratio,
    and the scoredyn samplers that meet RMS <= 1/2 diffusers' on every mixture."""
    per, ok_sets = {}, []
    for label, mres in res["mixtures"].items():
        peer = mres["rows"].get(PEER_TARGET, {}).get("nfe", {}).get(nfe)
        if peer is None:
            return {}
        cands = {
            name: r["nfe"][nfe]["rms"]
            for name, r in mres["rows"].items()
            if not r.get("peer")
            and _deterministic(r)
            and nfe in r["nfe"]
            and r["nfe"][nfe]["nfe"] <= nfe
            and np.isfinite(r["nfe"][nfe]["rms"])
        }
        best = min(cands, key=cands.get)
        per[label] = {
            "peer_rms": peer["rms"],
            "best": best,
            "best_rms": cands[best],
            "ratio": cands[best] / peer["rms"],
        }
        ok_sets.append({n for n, v in cands.items() if v <= TARGET_RMS_RATIO * peer["rms"]})
        per[label]["ratios"] = {n: v / peer["rms"] for n, v in cands.items()}
    both = set.intersection(*ok_sets) if ok_sets else set()
    worst = {n: max(per[lab]["ratios"][n] for lab in per) for n in both}
    return {"per": per, "met_by": sorted(both, key=worst.get), "worst_ratio": worst}


def gap_target(mres: dict, nfe: int = TARGET_NFE) -> dict:
    """Deterministic scoredyn samplers whose |gap| stays <= TARGET_GAP at every NFE >= `nfe`
    of the table (evaluations used <= the column's NFE); the best one by |gap| at `nfe`."""
    cands = []
    for name, r in mres["rows"].items():
        if r.get("peer") or not _deterministic(r) or nfe not in r["nfe"]:
            continue
        e = r["nfe"][nfe]
        if e["nfe"] > nfe or not np.isfinite(e["gap"]):
            continue
        later = [abs(v["gap"]) for m, v in r["nfe"].items() if m >= nfe]
        cands.append((abs(e["gap"]), max(later), name, e["gap_se"]))
    if not cands:
        return {}
    ok = sorted(c for c in cands if c[1] <= TARGET_GAP)
    best_stay = min(cands, key=lambda c: c[1])
    return {"met": bool(ok), "best": ok[0] if ok else None, "best_stay": best_stay}


def _plot_rows(res: dict) -> dict:
    """The curve set for `plot.py` (2-D oracle): each solver on its best grid at NFE 10, the
    discrete DDIM and the peers, as `{name: {nfe: {"nfe", "gap"}}}`."""
    label = "2-D" if "2-D" in res["mixtures"] else next(iter(res["mixtures"]), None)
    if label is None:
        return {}
    rows = res["mixtures"][label]["rows"]
    best = best_grids(res).get(label, {})
    keep = {}
    for name, r in rows.items():
        g = best.get(r.get("solver"), {}).get(TARGET_NFE, (None,))[0]
        if (
            r.get("grid") is None
            or r.get("solver") not in best
            or r.get("peer")
            or "discrete" in r.get("solver", "")
            or r["grid"] == g
        ):
            keep[name] = {n: {"nfe": e["nfe"], "gap": e["gap"]} for n, e in r["nfe"].items()}
    return keep


# ------------------------------------------------------------------------------------ report


def _cell(e, key, nfe, fmt):
    if e is None or not np.isfinite(e[key]):
        return "—" if e is None else "nan"
    mark = "" if e["nfe"] == nfe else f" ({e['nfe']})"
    return fmt(e[key]) + mark


def report(res: dict) -> str:
    nfes = res["nfes"]
    hdr = ["sampler"] + [f"NFE {n}" for n in nfes]
    lines = [
        "## 4. Quality per network evaluation (exact Gaussian-mixture oracles, VP SDE)",
        "",
        "Every sampler starts from the same prior draws $x_T \\sim \\mathcal N(0, I)$ at $T = 1$ "
        "of the VP SDE ($\\beta \\in [0.1, 20]$), in float64, with the exact model: "
        "`gm.eps_fn(sde)` for the continuous-time solvers, `sd.toy.discrete_eps_fn(gm, sched)` "
        "on the N = 1000 `DiscreteSchedule.from_sde` schedule for the discrete samplers and the "
        "diffusers loops (diffusers' timestep $t$ is our index $n = t + 1$, time $n/N$; the "
        "two oracles agree there).",
        "",
        "- **RMS** is the distance to the converged probability-flow ODE solution from the same "
        "$x_T$: $\\sqrt{\\overline{\\lVert x - x_{\\mathrm{ref}}\\rVert^2}/d}$ (per-example "
        "Euclidean distance, root mean square over the batch, divided by $\\sqrt d$: an error "
        "per coordinate). The reference $x_{\\mathrm{ref}}$ is `sd.ODE` (adaptive Tsit5, "
        f"rtol = atol = {REF_TOL:g}, per-example step control) of the exact score from $T$ to "
        f"$t_\\epsilon = {T_EPS:g}$ ($= t_1$ of the schedule, diffusers' timestep 0), where every "
        'continuous solver and the diffusers loops with `final_sigmas_type="sigma_min"` end; '
        "for the samplers that end at sigma = 0 (the discrete DDIM, DDPM and Analytic-DPM, "
        "whose last step returns the data prediction, and diffusers with its default "
        '`final_sigmas_type="zero"`) the same flow continued from $t_\\epsilon$ to $t = 0$.',
        "- **Gap** is the cross-entropy gap $\\mathbb E_q[-\\log p(x)] - H(p)$ in nats against "
        "the data density $p$: the paired mean $\\overline{\\log p(x_{\\mathrm{ref}}) - \\log "
        "p(x)}$ against the reference with the same end point, plus that reference's own gap "
        "(0 for the flow to $t = 0$, which carries $p$ exactly; "
        "$\\mathrm{CE}(p_{t_\\epsilon}, p) - H(p)$ for the flow to $t_\\epsilon$, a paired "
        "Monte Carlo over $x_0 \\sim p$). That term is a floor for every sampler that ends at "
        "$t_\\epsilon$. A negative gap means samples too concentrated on the modes.",
        "- Grids (`sd.grids`, each from $T$ to $t_\\epsilon$): log-SNR (`log_snr`), "
        "time-quadratic (`quadratic`), time-uniform (`uniform`), karras (`karras`, rho = 7); "
        'diffusers\' timesteps is the `timestep_spacing="linspace"` grid of the peers, on which '
        "the scoredyn twins of the two diffusers schedulers also run. A solver that takes several "
        "evaluations per step gets $\\lfloor \\mathrm{NFE}/\\text{per step}\\rfloor$ steps; the "
        "evaluations it used are in parentheses when they differ from the column.",
        "",
    ]
    for label, m in res["mixtures"].items():
        lines.append(
            f"- {label} oracle: {m['components']} components in $d = {m['dim']}$; "
            f"{m['num_samples']:,} draws $x_T$; reference flow at most {m['ref_nfe']} "
            "evaluations"
            + (
                ""
                if m["ref_error"] is None
                else f", within {m['ref_error']:.0e} RMS of a Dopri8 solve at tolerance 1e-11"
            )
            + f"; $\\mathrm{{CE}}(p_{{t_\\epsilon}}, p) - H(p) = {m['flow_gap']:.4f} \\pm "
            f"{m['flow_gap_se']:.4f}$ ({m['num_entropy']:,} draws); {_se_text(m)}."
        )
    lines += ["", *_target_lines(res), ""]
    lines += _grid_summary(res)
    lines += _non_monotone(res)
    for label, m in res["mixtures"].items():
        names = list(m["rows"])
        for key, title, fmt in (
            ("rms", "RMS distance to the converged PF-ODE solution", lambda v: f"{v:.2e}"),
            ("gap", "cross-entropy gap (nats)", lambda v: f"{v:+.4f}"),
        ):
            lines += [f"**{label} oracle, {title}:**", ""]
            rows = []
            for name in names:
                r = m["rows"][name]
                cells = [_label(name, r)]
                cells += [_cell(r["nfe"].get(n), key, n, fmt) for n in nfes]
                rows.append(cells)
            lines += [md_table(hdr, rows), ""]
        mm = [
            (name, r)
            for name, r in m["rows"].items()
            if r.get("stochastic") and any("mmd" in e for e in r["nfe"].values())
        ]
        if mm:
            lines += [
                f"**{label} oracle, stochastic samplers:** MMD x 1000 (Gaussian kernel, bandwidth "
                f"{MMD_BANDWIDTH}, exact on $p$'s side). Their RMS is to the flow of the same "
                "$x_T$, which a stochastic sampler does not follow: it measures the noise it adds, "
                "not convergence.",
                "",
                md_table(
                    hdr,
                    [
                        [name]
                        + [
                            _cell(r["nfe"].get(n), "mmd", n, lambda v: f"{1e3 * v:.1f}")
                            for n in nfes
                        ]
                        for name, r in mm
                    ],
                ),
                "",
            ]
    lines += _peer_lines(res)
    return "\n".join(lines)


def _label(name, r):
    if r.get("peer"):
        return name + (" (ends at sigma = 0)" if r["end"] == "zero" else "")
    if r.get("stochastic"):
        return name + " (stochastic)"
    return name


def _se_text(m) -> str:
    """Standard errors of the deterministic entries that are not blown up (RMS < 1, |gap| < 1
    nat for the absolute figure) and of the stochastic samplers' gaps."""
    det = [
        e
        for r in m["rows"].values()
        if not r.get("stochastic")
        for e in r["nfe"].values()
        if np.isfinite(e["rms"]) and 0 < e["rms"] < 1
    ]
    if not det:
        return "no finite entries"
    rs = max(e["rms_se"] / e["rms"] for e in det)
    small = [e["gap_se"] for e in det if abs(e["gap"]) < 1]
    rel = max(e["gap_se"] / abs(e["gap"]) for e in det if abs(e["gap"]) >= 1e-3)
    text = f"standard errors of the deterministic samplers (RMS < 1): RMS at most {100 * rs:.1f} %"
    if small:
        text += f", gap at most {max(small):.1e} nats where |gap| < 1"
    text += f" and {100 * rel:.0f} % of |gap| overall"
    ss = [
        e["gap_se"]
        for r in m["rows"].values()
        if r.get("stochastic")
        for e in r["nfe"].values()
        if np.isfinite(e["gap_se"])
    ]
    if ss:
        text += f"; gap of the stochastic samplers {min(ss):.3f}-{max(ss):.3f} nats"
    return text


def _target_lines(res) -> list[str]:
    n = TARGET_NFE
    lines = [f"**Targets at NFE {n}** (issue 14):", ""]
    rt = rms_target(res, n)
    if not rt:
        why = res["peers"].get("skipped", "the diffusers rows are missing")
        lines.append(
            f"- RMS distance at most half that of diffusers' DPM-Solver++(2M) on the same model "
            f"and noise, on both mixtures: not measured (diffusers peers skipped: {why})."
        )
    else:
        per = rt["per"]
        figs = "; ".join(
            f"{lab}: diffusers {p['peer_rms']:.2e}, best scoredyn {p['best']} {p['best_rms']:.2e} "
            f"({p['ratio']:.2f}x)"
            for lab, p in per.items()
        )
        if rt["met_by"]:
            met = ", ".join(f"{b} ({rt['worst_ratio'][b]:.2f}x)" for b in rt["met_by"][:4])
            more = len(rt["met_by"]) - 4
            status = (
                f"**met** by {met}"
                + (f" and {more} more" if more > 0 else "")
                + " (in parentheses the larger of the mixtures' ratios to diffusers' RMS)"
            )
        else:
            status = (
                "**missed**: no scoredyn sampler reaches half of diffusers' RMS on every mixture"
            )
        lines.append(
            f"- RMS distance at most half that of diffusers' DPM-Solver++(2M) (same end point, "
            f'`final_sigmas_type="sigma_min"`) on the same model and noise, on both mixtures: '
            f"{status}. {figs}."
        )
    for label, m in res["mixtures"].items():
        gt = gap_target(m, n)
        if not gt:
            continue
        if gt["met"]:
            g, worst, name, se = gt["best"]
            status = (
                f"**met** by {name}: |gap| {g:.4f} +- {se:.4f} at NFE {n}, at most {worst:.4f} "
                f"at every larger NFE"
            )
        else:
            g, worst, name, _ = gt["best_stay"]
            status = (
                f"**missed**: the deterministic sampler that stays closest from NFE {n} on, "
                f"{name}, reaches |gap| {worst:.4f} (misses by {worst - TARGET_GAP:.4f} nats)"
            )
        lines.append(
            f"- {label}: the best |gap| among deterministic samplers that stays within "
            f"{TARGET_GAP} nats from NFE {n} on: {status}. The flow to $t_\\epsilon$ alone has "
            f"gap {m['flow_gap']:.4f}."
        )
    return lines


def _grid_summary(res) -> list[str]:
    bg = best_grids(res)
    labels = list(bg)
    solvers = []
    for per in bg.values():
        solvers += [s for s in per if s not in solvers]
    cols = [(lab, n) for lab in labels for n in (10, 20) if n in res["nfes"]]
    if not cols or not solvers:
        return []
    rows = []
    for s in solvers:
        cells = [s]
        for lab, n in cols:
            v = bg[lab].get(s, {}).get(n)
            c = res["mixtures"][lab].get("grid_cmp", {}).get(s, {}).get(n)
            if v is None:
                cells.append("—")
                continue
            tie = c is not None and c["best"] == v[0] and c["z"] < 2
            cells.append(
                f"{GRID_LABEL[v[0]]} ({v[1]:.1e})"
                + (f", ~ {GRID_LABEL[c['second']]} (z {c['z']:.1f})" if tie else "")
            )
        rows.append(cells)
    hdr = ["solver"] + [f"{lab}, NFE {n}" for lab, n in cols]
    return [
        "**Best grid per solver** (least RMS distance; the RMS in parentheses). `~ grid (z)` "
        "marks a runner-up that the same draws do not separate: paired z-score of the mean "
        "squared distances below 2 (the distances are heavy-tailed, a few draws near the "
        "boundaries between components dominate them):",
        "",
        md_table(hdr, rows),
        "",
    ]


def _non_monotone(res, factor: float = 1.2) -> list[str]:
    """Deterministic rows whose RMS at a larger NFE exceeds `factor` times the previous one."""
    out = []
    for label, m in res["mixtures"].items():
        for name, r in m["rows"].items():
            if r.get("stochastic"):
                continue
            es = [(n, e["rms"]) for n, e in sorted(r["nfe"].items()) if np.isfinite(e["rms"])]
            bad = [
                f"NFE {a} -> {b}: {ra:.1e} -> {rb:.1e}"
                for (a, ra), (b, rb) in zip(es, es[1:])
                if rb > factor * ra
            ]
            if bad:
                out.append(f"{name} ({label}; {'; '.join(bad)})")
    if not out:
        return []
    return [
        "RMS grows with NFE (by more than 20 %) for: " + ", ".join(out) + ". Where that is "
        "DPM-Solver++ on the time-uniform grid (or diffusers' timesteps) from NFE 10 to 15: its "
        "`lower_order_final` lowers the order of the last steps only below 15 steps (diffusers' "
        "rule), and from 15 steps on the long last step of that grid (from t = 0.07 to "
        "t_eps) extrapolates the earlier data predictions; UniPC (which lowers its last step at "
        "every K) and diffusers' default final step to sigma = 0 (always first order) do not "
        "show it.",
        "",
    ]


def _peer_lines(res) -> list[str]:
    p = res["peers"]
    if "skipped" in p:
        return [
            f"diffusers peers: skipped ({p['skipped']}). Install torch and diffusers "
            "(`pip install torch diffusers`) to add their DPM-Solver++(2M) and UniPC rows and "
            "the NFE-10 RMS target.",
            "",
        ]
    lines = [
        f"diffusers peers: torch {p['torch']}, diffusers {p['diffusers']}: "
        '`DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++")` and '
        '`UniPCMultistepScheduler(solver_order=2, solver_type="bh2")` with `trained_betas` = '
        'the schedule\'s betas, the default `timestep_spacing="linspace"` and '
        "`lower_order_final=True`, driven by a plain loop over `scheduler.timesteps` with float64 "
        "torch tensors (the eps oracle called through NumPy at every step)."
    ]
    for label, m in res["mixtures"].items():
        info = m.get("peer_info") or {}
        tw = [
            (
                name,
                max(e.get("twin_max_abs", 0.0) for e in r["nfe"].values()),
                r["nfe"].get(TARGET_NFE, {}).get("twin_max_abs", float("nan")),
            )
            for name, r in m["rows"].items()
            if r.get("peer") and any("twin_max_abs" in e for e in r["nfe"].values())
        ]
        if info.get("linear_betas_max_rel") is not None:
            lines.append(
                f'{label}: diffusers\' own `beta_schedule="linear"` (0.1/N to 20/N) differs from '
                f"the schedule's alphas_cumprod by up to {info['linear_betas_max_rel']:.1e} "
                "(relative), hence `trained_betas`"
                + (
                    "; largest |difference| from the scoredyn twin on the same timesteps, over "
                    f"all draws and NFEs (at NFE {TARGET_NFE}): "
                    + ", ".join(f"{n} {v:.1e} ({v10:.1e})" for n, v, v10 in tw)
                    + " (diffusers keeps its schedule and sigmas in float32 and computes "
                    "DPM-Solver++ updates in float32; at $T$ the data prediction divides by "
                    "alpha(T) = 0.0066)"
                    if tw
                    else ""
                )
                + "."
            )
    lines.append("")
    return [" ".join(lines[:1]), "", *lines[1:]]
