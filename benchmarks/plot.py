"""One figure summarising the sections that ran."""

import math

import numpy as np


def plot(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if 1 in results:
        panels.append(("overhead", results[1]))
    if 2 in results:
        panels.append(("compile", results[2]))
        panels.append(("memory", results[2]))
    if 3 in results:
        panels.append(("ode", results[3]))
    if 4 in results:
        panels.append(("quality", results[4]))
    if 5 in results and "rows" in results[5]:
        panels.append(("peer", results[5]))
    n = max(len(panels), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (kind, res) in zip(axes.flat, panels):
        if kind == "overhead":
            labels = [f"B={r['B']}\nK={r['K']}" for r in res["rows"]]
            samplers = list(res["rows"][0]["vs_hand"])
            w = 0.8 / (2 * len(samplers))
            xs = np.arange(len(labels))
            for j, s in enumerate(samplers):
                ax.bar(
                    xs + (2 * j) * w, [r["vs_hand"][s] for r in res["rows"]], w, label=f"{s} / hand"
                )
                ax.bar(
                    xs + (2 * j + 1) * w,
                    [r["vs_floor"][s] for r in res["rows"]],
                    w,
                    label=f"{s} / floor",
                    alpha=0.6,
                )
            ax.axhline(1.05, color="k", ls="--", lw=0.8)
            ax.axhline(1.10, color="gray", ls=":", lw=0.8)
            ax.set_xticks(xs + 0.4 - w / 2, labels)
            ax.set_ylim(0.8, max(1.6, max(max(r["vs_floor"].values()) for r in res["rows"]) + 0.05))
            ax.set_title("1. sampler time / baseline")
            ax.legend(fontsize=6, ncol=2)
        elif kind in ("compile", "memory"):
            for name, r in res["results"].items():
                ks = sorted(r)
                if kind == "compile":
                    ys = [r[k]["trace_s"] + r[k]["compile_s"] for k in ks]
                else:
                    ys = [r[k].get("peak_bytes", np.nan) / 1024 for k in ks]
                ax.plot(ks, ys, "o-", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("K (steps)")
            ax.set_ylabel("trace + compile (s)" if kind == "compile" else "temp + output (KiB)")
            ax.set_title("2. compile time" if kind == "compile" else "2. peak memory")
            ax.legend(fontsize=6)
        elif kind == "ode":
            for name, pts in res["sampling"]["curves"].items():
                pts = sorted(pts)
                ax.plot(
                    [p[0] for p in pts], [max(p[1], 1e-12) for p in pts], "o-", ms=3, label=name
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel("RMS error of the flow map")
            ax.set_title("3. PF-ODE solvers (2-D oracle)")
            ax.legend(fontsize=6)
        elif kind == "quality":
            for j, (name, r) in enumerate(res["results"].items()):
                ns = sorted(r)
                ax.plot(
                    [r[k]["nfe"] for k in ns],
                    [max(abs(r[k]["gap"]), 1e-4) for k in ns],
                    marker="o" if j < 10 else "s",
                    ls="-" if j < 10 else "--",
                    ms=3,
                    label=name,
                )
            ax.axhline(0.03, color="k", ls="--", lw=0.8)
            ax.axhline(0.01, color="gray", ls=":", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 10)
            ax.set_xlabel("NFE")
            ax.set_ylabel("|cross-entropy gap| (nats)")
            ax.set_title("4. quality per evaluation")
            ax.legend(fontsize=5)
        elif kind == "peer":
            labels = [f"B={r['B']}" for r in res["rows"]]
            xs = np.arange(len(labels))
            for j, key in enumerate(("scoredyn", "diffusers", "jax floor", "torch floor")):
                ax.bar(xs + j * 0.2, [r["per_step_ms"][key] for r in res["rows"]], 0.2, label=key)
            ax.set_yscale("log")
            ax.set_xticks(xs + 0.3, labels)
            ax.set_ylabel("ms per step")
            ax.set_title("5. DDIM vs PyTorch + diffusers")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
