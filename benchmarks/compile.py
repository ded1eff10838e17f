"""Section 2: compile time and peak memory against the number of steps K."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from ._common import BenchMLP, compile_stats, fmt_bytes, md_table

N = 1000
DIM = 64
BATCH = 16
KS = (10, 30, 100, 300, 1000)
UNROLLED_MAX_K = 100


def _samplers(net, sched, sde):
    def discrete(solver, save_trajectory=False):
        def build(K):
            tau = sd.respace(N, K)
            stochastic = solver.is_stochastic(sched, tau)

            def f(net, key, x_T):
                keys = jax.random.split(key, x_T.shape[0])
                model = sd.EpsModel(net)

                def g(k, x):
                    k = k if stochastic else None
                    res = sd.sample(
                        k, sched, model, solver, tau, x, save_trajectory=save_trajectory
                    )
                    return (res.x, res.trajectory) if save_trajectory else res.x

                return jax.vmap(g)(keys, x_T)

            return f

        return build

    def ode(K):
        def f(net, key, x_T):
            g = lambda z: sd.decode(
                sde,
                net,
                z,
                solver=diffrax.Euler(),
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=-(1.0 - 1e-3) / K,
                t_eps=1e-3,
                max_steps=K + 1,
            )
            return jax.vmap(g)(x_T)

        return f

    def unrolled(K):
        # what a naive Python for-loop costs: the trace grows with K
        tau = np.asarray(sd.respace(N, K))
        ab = np.asarray(sched.alpha_bar, np.float64)

        def f(net, key, x_T):
            batched = jax.vmap(net, in_axes=(None, 0))
            x = x_T
            for k in range(K, 0, -1):
                n, m = tau[k], tau[k - 1]
                a = np.sqrt(ab[m] / ab[n])
                b = np.sqrt(1 - ab[m]) - a * np.sqrt(1 - ab[n])
                x = a * x + b * batched(jnp.float32(n / N), x)
            return x

        return f

    out = {
        "DDIM": discrete(sd.DDIM()),
        "DDPM": discrete(sd.DDPM()),
        "DDIM, save_trajectory=True": discrete(sd.DDIM(), save_trajectory=True),
        "PF-ODE Euler (diffrax)": ode,
    }
    if hasattr(sd, "DPMSolver"):

        def dpm(K):
            grid = sd.grids.log_snr(sde, K, t_eps=1e-3)  # concrete: built once, outside jit

            def f(net, key, x_T):
                model = sd.EpsModel(net)
                g = lambda z: sd.sample(None, sde, model, sd.DPMSolver(order=2), grid, z).x
                return jax.vmap(g)(x_T)

            return f

        out["DPM-Solver-2 (sd.DPMSolver)"] = dpm
    out["naive Python loop (unrolled DDIM)"] = unrolled
    return out


def run(*, ks=KS, log=print) -> dict:
    net = BenchMLP(DIM, key=jax.random.key(1))
    sched = sd.DiscreteSchedule.linear(N, dtype=jnp.float32)
    sde = sd.VPSDE()
    key = jax.random.key(0)
    x_T = jax.random.normal(jax.random.key(2), (BATCH, DIM), jnp.float32)
    results = {}
    for name, build in _samplers(net, sched, sde).items():
        results[name] = {}
        for K in ks:
            if name.startswith("naive") and K > UNROLLED_MAX_K:
                continue
            st = compile_stats(build(K), net, key, x_T)
            results[name][K] = st
        log(
            f"  [2] {name:36s} "
            + " ".join(
                f"K={K}: {v['trace_s'] + v['compile_s']:.2f}s/{fmt_bytes(v.get('peak_bytes', 0))}"
                for K, v in results[name].items()
            )
        )
    return {"results": results, "ks": list(ks), "batch": BATCH}


def report(res: dict) -> str:
    ks = res["ks"]
    hdr = ["sampler"] + [f"K={k}" for k in ks] + [f"ratio K={ks[-1]} / K={ks[0]}"]
    rows_t, rows_m = [], []
    for name, r in res["results"].items():
        t = [r[k]["trace_s"] + r[k]["compile_s"] if k in r else None for k in ks]
        m = [r[k].get("peak_bytes") if k in r else None for k in ks]
        last = max(k for k in ks if k in r)
        rt = (r[last]["trace_s"] + r[last]["compile_s"]) / (
            r[ks[0]]["trace_s"] + r[ks[0]]["compile_s"]
        )
        rm = r[last].get("peak_bytes", 0) / max(r[ks[0]].get("peak_bytes", 1), 1)
        lab = f"{rt:.2f}" + ("" if last == ks[-1] else f" (K={last})")
        labm = f"{rm:.2f}" + ("" if last == ks[-1] else f" (K={last})")
        rows_t.append([name] + [f"{v:.2f}" if v is not None else "—" for v in t] + [lab])
        rows_m.append([name] + [fmt_bytes(v) if v is not None else "—" for v in m] + [labm])
    return "\n".join(
        [
            "## 2. Compile time and peak memory against K",
            "",
            f"Batch {res['batch']} of the 64-D MLP, `jax.jit(f).lower(...).compile()`: trace + "
            "compile "
            "seconds, and XLA's `memory_analysis()` peak = temp + output bytes (arguments, the "
            "network's weights included, excluded; the "
            "CPU backend has no device memory statistics). Flat rows mean no unrolled Python loops "
            "and "
            "no stored trajectories; `save_trajectory=True` stores K + 1 states by request, and "
            "the "
            "naive Python loop is shown for contrast (only up to "
            f"K = {UNROLLED_MAX_K}).",
            "",
            "Trace + compile time (s):",
            "",
            md_table(hdr, rows_t),
            "",
            "Peak memory (temp + output):",
            "",
            md_table(hdr, rows_m),
            "",
        ]
    )
