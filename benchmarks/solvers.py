"""Section 7: the continuous-time solvers against the bare network, and compile cost against K.

Every solver runs `jax.vmap` of `sd.sample(key, sde, sd.EpsModel(net), solver, grid, x_T)` with
the 64-D MLP eps-network of section 1 (float32, jitted, the network an argument). Its floor is a
`lax.scan` of as many chained network evaluations as the solver makes (its NFE on that grid),
and nothing else, so the ratio is what the solver's own arithmetic, noise and bookkeeping add.
"""

import jax
import jax.numpy as jnp

import scoredyn as sd

from ._common import BenchMLP, compile_stats, fmt_bytes, md_table, min_ratio, time_interleaved
from .overhead import make_floor

DIM = 64
T_EPS = 1e-3
STEPS = 50
COMPILE_KS = (10, 100, 1000)


def solvers() -> dict:
    """`name -> solver`."""
    return {
        "DPM-Solver++(2M)": sd.DPMSolverPP(order=2),
        "DPM-Solver++(3M)": sd.DPMSolverPP(order=3),
        "SDE-DPM-Solver++(2M)": sd.DPMSolverPP(order=2, stochastic=True),
        "DPM-Solver-2 multistep": sd.DPMSolverMultistep(order=2),
        "DPM-Solver-2 singlestep": sd.DPMSolver(order=2),
        "UniPC-2 (bh2)": sd.UniPC(order=2),
        "EDM Heun": sd.EDMHeun(),
        "Euler-Maruyama": sd.EulerMaruyama(),
    }


def nfe(sde, grid, solver) -> int:
    """The network evaluations `solver` makes on `grid`, as its own statistics report them."""
    model = sd.EpsModel(lambda t, x: 0.1 * x)
    res = sd.sample(jax.random.key(0), sde, model, solver, grid, jnp.ones(2, grid.dtype))
    return int(res.stats["nfe"])


def make_solver_run(sde, grid, solver):
    """Deterministic solvers: `jax.vmap` of `sd.sample(None, ...)`. Stochastic ones:
    `sd.sample_batch(key, ...)`, one draw per step for the whole batch (section 6)."""
    if solver.is_stochastic(sde, grid):
        return lambda net, key, x_T: (
            sd.sample_batch(key, sde, sd.EpsModel(net), solver, grid, x_T).x
        )

    def run(net, key, x_T):
        f = lambda x: sd.sample(None, sde, sd.EpsModel(net), solver, grid, x).x
        return jax.vmap(f)(x_T)

    return run


def _grid(sde, name: str, K: int):
    if name == "EDM Heun":
        return sd.grids.karras(sde, K, t_eps=T_EPS, dtype=jnp.float32)
    if name == "Euler-Maruyama":
        return sd.grids.uniform(sde, K, t_eps=T_EPS, dtype=jnp.float32)
    return sd.grids.log_snr(sde, K, t_eps=T_EPS, dtype=jnp.float32)


def run(
    *,
    batches=(16, 512),
    repeats=5,
    budget_s=15.0,
    compile_ks=COMPILE_KS,
    names=None,
    log=print,
) -> dict:
    key = jax.random.key(0)
    net = BenchMLP(DIM, key=jax.random.key(1))
    sde = sd.VPSDE()
    table = {n: v for n, v in solvers().items() if names is None or n in names}
    # the programs do not depend on the batch: built once, compiled per batch shape
    fns, floors, nfes, base = {}, {}, {}, {}
    for name, solver in table.items():
        grid = _grid(sde, name, STEPS)
        nfes[name] = n = nfe(sde, grid, solver)
        fns[name] = jax.jit(make_solver_run(sde, grid, solver))
        noisy = solver.is_stochastic(sde, grid)
        base[name] = f"floor {n}{' + noise' if noisy else ''}"
        floors.setdefault(base[name], make_floor(n, noisy))
    allf = {**fns, **floors}
    rows = []
    for B in batches:
        x_T = jax.random.normal(jax.random.key(2), (B, DIM), jnp.float32)
        args = {n: (net, key, x_T) for n in allf}
        cpu: dict = {}
        times = time_interleaved(allf, args, repeats=repeats, budget_s=budget_s, cpu_out=cpu)
        row = {
            "B": B,
            "rounds": len(times[next(iter(fns))]),
            "nfe": nfes,
            "base": base,
            "floor_ms": {n: 1e3 * min(times[n]) for n in floors},
            "vs_floor": {n: min_ratio(times[n], times[base[n]]) for n in fns},
            "cpu_vs_floor": {n: min_ratio(cpu[n], cpu[base[n]]) for n in fns},
        }
        rows.append(row)
        log(f"  [7] B={B}: " + ", ".join(f"{n} x{v:.3f}" for n, v in row["vs_floor"].items()))
    # compile time and memory at batch 16 against K
    compiles: dict = {}
    x_T = jax.random.normal(jax.random.key(2), (16, DIM), jnp.float32)
    for name, solver in table.items():
        compiles[name] = {}
        for K in compile_ks:
            f = make_solver_run(sde, _grid(sde, name, K), solver)
            compiles[name][K] = compile_stats(f, net, key, x_T)
        log(
            f"  [7] {name}: compile "
            + ", ".join(f"K={K} {_tc(c):.2f}s" for K, c in compiles[name].items())
        )
    return {"rows": rows, "compiles": compiles, "steps": STEPS, "compile_ks": list(compile_ks)}


def _tc(c: dict) -> float:
    return c["trace_s"] + c["compile_s"]


def report(res: dict) -> str:
    rows, names = res["rows"], list(res["rows"][0]["vs_floor"])
    head = ["solver", "NFE", "floor"] + [f"B={r['B']} / floor (wall)" for r in rows]
    head += [f"B={r['B']} / floor (CPU)" for r in rows]
    body = [
        [n, rows[0]["nfe"][n], "+ noise" if "noise" in rows[0]["base"][n] else "network"]
        + [f"{r['vs_floor'][n]:.3f}" for r in rows]
        + [f"{r['cpu_vs_floor'][n]:.3f}" for r in rows]
        for n in names
    ]
    ks = res["compile_ks"]
    chead = ["solver"] + [f"K={k}" for k in ks] + [f"ratio K={ks[-1]} / K={ks[0]}"]
    ctime, cmem = [], []
    for n, by_k in res["compiles"].items():
        c = [by_k[k] if k in by_k else by_k[str(k)] for k in ks]
        ctime.append([n] + [f"{_tc(x):.2f}" for x in c] + [f"{_tc(c[-1]) / _tc(c[0]):.2f}"])
        cmem.append(
            [n]
            + [fmt_bytes(x["peak_bytes"]) for x in c]
            + [f"{c[-1]['peak_bytes'] / c[0]['peak_bytes']:.2f}"]
        )
    worst = {r["B"]: max(r["vs_floor"].items(), key=lambda kv: kv[1]) for r in rows}
    over = [
        f"{n} at B={r['B']} ({v:.3f} wall, {r['cpu_vs_floor'][n]:.3f} CPU)"
        for r in rows
        for n, v in r["vs_floor"].items()
        if v > 1.10
    ]
    lines = [
        "## 7. Continuous-time solvers against the floor",
        "",
        f"`jax.vmap` of `sd.sample(key, sde, sd.EpsModel(net), solver, grid, x_T)` for the 64-D "
        f"MLP of section 1 (float32, jitted, the network an argument), {res['steps']} steps on "
        "the VP SDE (log-SNR grid; Karras grid for EDM Heun, uniform for Euler–Maruyama), "
        "against the floor: a `lax.scan` of the same number of network evaluations (NFE) and "
        "nothing else. The stochastic solvers run as `sd.sample_batch` (one draw per step for "
        "the batch) and their floor adds one Gaussian draw of the batch's shape per "
        "evaluation, which no stochastic sampler can avoid. Fastest interleaved run over "
        "fastest run, by wall and by CPU time. Target: <= 1.10 at batch 16 and 512.",
        "",
        md_table(head, body),
        "",
        (
            "Every solver is within 1.10 of its floor."
            if not over
            else "Over 1.10: " + "; ".join(over) + "."
        )
        + " Largest ratio per batch: "
        + ", ".join(f"B={b}: {n} {v:.3f}" for b, (n, v) in worst.items())
        + ".",
        "",
        "Trace + compile seconds at batch 16 against K (flat: a `lax.scan` over the grid, no "
        "unrolled Python loop):",
        "",
        md_table(chead, ctime),
        "",
        "Peak memory (XLA temp + output) against K:",
        "",
        md_table(chead, cmem),
        "",
    ]
    return "\n".join(lines)
