"""Section 5: against a peer: the same MLP and schedule in PyTorch with the diffusers DDIM loop.

Optional: skipped with a message when torch or diffusers is not importable.
"""

import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from ._common import BenchMLP, md_table, num_cpus, numpy_weights, time_interleaved
from .overhead import make_floor, make_scoredyn

N = 1000
DIM = 64
K = 50


def available() -> tuple[bool, str]:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def _torch_net(net: BenchMLP):
    import torch

    weights = [
        (torch.from_numpy(w.copy()), torch.from_numpy(b.copy())) for w, b in numpy_weights(net)
    ]
    half = net.time_dim // 2
    freqs = torch.exp(-np.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)

    def forward(x, t: float):
        arg = 1000.0 * t * freqs
        temb = torch.cat([torch.sin(arg), torch.cos(arg)]).expand(x.shape[0], -1)
        h = torch.cat([x, temb], dim=1)
        for w, b in weights[:-1]:
            h = torch.nn.functional.silu(torch.addmm(b, h, w.T))
        w, b = weights[-1]
        return torch.addmm(b, h, w.T)

    return forward


def run(*, batches=(16, 512), repeats=5, budget_s=15.0, log=print) -> dict:
    ok, why = available()
    if not ok:
        log(f"  [5] skipped: torch/diffusers not importable ({why})")
        return {"skipped": why}
    import diffusers
    import torch
    from diffusers import DDIMScheduler

    torch.set_num_threads(num_cpus())
    net = BenchMLP(DIM, key=jax.random.key(1))
    fwd = _torch_net(net)
    sched = sd.DiscreteSchedule.linear(N, dtype=jnp.float32)
    dsched = DDIMScheduler(
        num_train_timesteps=N,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    dsched.set_timesteps(K)
    steps = [int(t) for t in dsched.timesteps]  # diffusers' 0-based t  <->  our n = t + 1
    tau = sd.trajectory([0] + [t + 1 for t in reversed(steps)], N)

    def diffusers_loop(x):
        with torch.inference_mode():
            for t in steps:
                eps = fwd(x, (t + 1) / N)
                x = dsched.step(eps, t, x, eta=0.0).prev_sample
        return x

    def torch_floor(x):
        with torch.inference_mode():
            for t in steps:
                x = fwd(x, (t + 1) / N)
        return x

    rows = []
    key = jax.random.key(0)
    for B in batches:
        x_np = np.asarray(jax.random.normal(jax.random.key(2), (B, DIM), jnp.float32))
        x_j = jnp.asarray(x_np)
        x_t = torch.from_numpy(x_np.copy())
        ours = make_scoredyn(sched, tau, sd.DDIM())
        jfloor = make_floor(K)
        # equivalence: the same trajectory, the same network, the same DDIM update
        diff = float(np.max(np.abs(np.asarray(ours(net, key, x_j)) - diffusers_loop(x_t).numpy())))
        scale = float(np.max(np.abs(np.asarray(ours(net, key, x_j)))))

        def threads(n, f):
            def g():
                torch.set_num_threads(n)
                return f()

            return g

        # PyTorch runs with 1 thread and with all cores; the faster is kept (its OpenMP threads
        # spin-wait, which a shared machine punishes; XLA's thread pool does not)
        fns = {
            "scoredyn": lambda: jax.block_until_ready(ours(net, key, x_j)),
            "jax floor": lambda: jax.block_until_ready(jfloor(net, key, x_j)),
        }
        for n in sorted({1, num_cpus()}):
            fns[f"diffusers@{n}"] = threads(n, lambda: diffusers_loop(x_t))
            fns[f"torch floor@{n}"] = threads(n, lambda: torch_floor(x_t))
        times = time_interleaved(
            fns, {k: () for k in fns}, repeats=repeats, budget_s=budget_s, max_repeats=40
        )
        torch.set_num_threads(num_cpus())
        best = {}
        for base in ("diffusers", "torch floor"):
            cands = {k: min(v) for k, v in times.items() if k.startswith(base + "@")}
            kbest = min(cands, key=cands.get)
            best[base] = int(kbest.split("@")[1])
            times[base] = times[kbest]
        per_step = {k: 1e3 * min(v) / K for k, v in times.items() if "@" not in k}
        ratio = min(times["scoredyn"]) / min(times["diffusers"])
        rows.append(
            {
                "B": B,
                "per_step_ms": per_step,
                "ratio": ratio,
                "max_abs_diff": diff,
                "scale": scale,
                "torch_threads": best["diffusers"],
            }
        )
        log(
            f"  [5] B={B:4d}: per step scoredyn {per_step['scoredyn']:.3f} ms, diffusers "
            f"{per_step['diffusers']:.3f} ms (ratio {ratio:.2f}); torch net alone "
            f"{per_step['torch floor']:.3f} ms, jax net alone {per_step['jax floor']:.3f} ms; "
            f"max |diff| {diff:.1e} of {scale:.1f}"
        )
    return {
        "rows": rows,
        "K": K,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def report(res: dict) -> str:
    head = "## 5. Against a peer: PyTorch + diffusers DDIM"
    if "skipped" in res:
        return (
            f"{head}\n\nSkipped: torch or diffusers is not importable ({res['skipped']}). Install "
            "them (`pip install torch==2.13.0 diffusers`) to run this section.\n"
        )
    rows = [
        [
            r["B"],
            f"{r['per_step_ms']['scoredyn']:.3f}",
            f"{r['per_step_ms']['diffusers']:.3f}",
            f"{r['ratio']:.2f}",
            f"{r['per_step_ms']['jax floor']:.3f}",
            f"{r['per_step_ms']['torch floor']:.3f}",
            r["torch_threads"],
            f"{r['max_abs_diff']:.1e}",
        ]
        for r in res["rows"]
    ]
    return "\n".join(
        [
            head,
            "",
            f"The same MLP (weights copied) and the same linear schedule in PyTorch {res['torch']} "
            "(`inference_mode`; timed with 1 thread and with all cores, the faster kept) with the "
            f"diffusers {res['diffusers']} `DDIMScheduler` loop (eta = 0, {res['K']} steps, "
            "`trailing` timesteps, which end at t = N - 1 like our trajectory), against "
            "`jax.vmap` of `sd.sample(None, sched, sd.EpsModel(net), sd.DDIM(), tau, x_T).x` on "
            "the "
            "same trajectory "
            "(diffusers' timestep t is our n = t + 1). Time per step in ms (fastest of the "
            "interleaved rounds); ratio < 1 means "
            "scoredyn is faster. The two outputs agree to the last column (float32).",
            "",
            md_table(
                [
                    "batch",
                    "scoredyn (ms/step)",
                    "diffusers (ms/step)",
                    "scoredyn / diffusers",
                    "JAX net alone",
                    "torch net alone",
                    "torch threads",
                    "max abs diff",
                ],
                rows,
            ),
            "",
        ]
    )
