"""Figures of the demo: the bound table as a plot, sample grids, the training loss."""

import math
import pathlib
from typing import Any

import numpy as np

from .data import Dataset
from .evaluate import PF_ODE, SAMPLERS, Evaluation

_STYLE: dict[str, dict[str, Any]] = {
    "DDPM, beta-tilde": dict(color="#d62728", marker="v"),
    "DDPM, beta": dict(color="#ff7f0e", marker="^"),
    "DDIM (eta = 0)": dict(color="#8c564b", marker="x"),
    "Analytic-DPM": dict(color="#1f77b4", marker="o"),
    "Analytic-DDIM": dict(color="#2ca02c", marker="s"),
    "Analytic-DPM, optimal traj.": dict(color="#9467bd", marker="D"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bounds(ev: Evaluation, data: Dataset, path: pathlib.Path, title: str) -> None:
    """Negative ELBO (bits/dim) against the number of steps K, one line per sampler."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    ks = np.asarray(ev.ks)
    lo, hi = math.inf, -math.inf
    for name, vals in ev.bounds.items():
        y = np.asarray([vals[k] for k in ev.ks])
        e = np.asarray([ev.stderr[name][k] for k in ev.ks])
        ax.errorbar(
            ks,
            y,
            yerr=np.nan_to_num(e),
            label=name,
            capsize=2,
            lw=1.6,
            ms=5,
            **_STYLE.get(name, {}),
        )
        lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    if ev.oracle_bounds is not None:
        for name, vals in ev.oracle_bounds.items():
            y = np.asarray([vals[k] for k in ev.ks])
            ax.plot(ks, y, ls=":", lw=1.2, color=_STYLE.get(name, {}).get("color", "k"), alpha=0.8)
        ax.plot([], [], ls=":", color="k", label="dotted: same, with the exact eps (oracle)")
    if ev.pf_ode is not None:
        ax.axhline(
            ev.pf_ode["mean"],
            color="k",
            ls="--",
            lw=1.2,
            label=f"{PF_ODE}, {ev.pf_ode['nfe']:.0f} NFE",
        )
        lo, hi = min(lo, ev.pf_ode["mean"]), max(hi, ev.pf_ode["mean"])
    for label, v in ev.reference.items():
        if label.startswith("PF-ODE"):
            continue
        ax.axhline(v, color="0.5", ls="-.", lw=1.0, label=label)
        lo, hi = min(lo, v), max(hi, v)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    if lo > 0 and hi / lo > 8:
        ax.set_yscale("log")
    ax.set_xlabel("K (network evaluations)")
    unit = "bits/dim" if data.levels is not None else "bits/dim (continuous density)"
    ax.set_ylabel(f"negative ELBO, {unit}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mosaic(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = x.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    h, w = shape
    img = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, cols)
        img[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = x[i].reshape(h, w)
    return img


def plot_samples(ev: Evaluation, data: Dataset, path: pathlib.Path, title: str) -> None:
    """One panel per (sampler, K): digit mosaics for images, scatter plots for points."""
    plt = _plt()
    ks = sorted({k for s in ev.samples.values() for k in s})
    names = [n for n in SAMPLERS if n in ev.samples]
    image = data.image_shape is not None
    size = 2.3 if image else 2.2
    fig, axes = plt.subplots(
        len(ks),
        len(names),
        figsize=(size * len(names), size * len(ks) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    lim = None
    if not image:
        ref = data.test
        span = np.abs(ref).max() * 1.35
        lim = (-span, span)
    for i, K in enumerate(ks):
        for j, name in enumerate(names):
            ax = axes[i, j]
            x = ev.samples[name][K]
            if data.image_shape is not None:
                ax.imshow(
                    _mosaic(np.clip(x, -1, 1), data.image_shape),
                    cmap=cmap,
                    vmin=-1,
                    vmax=1,
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.scatter(data.test[:, 0], data.test[:, 1], s=2, color="0.8", rasterized=True)
                ax.scatter(
                    x[:, 0],
                    x[:, 1],
                    s=2,
                    color=_STYLE.get(name, {}).get("color", "k"),
                    rasterized=True,
                )
                ax.set_xlim(lim)
                ax.set_ylim(lim)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"K = {K}", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(losses: np.ndarray, path: pathlib.Path) -> None:
    """Training loss per step (light) and its running mean over 100 steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.0), layout="constrained")
    steps = np.arange(1, losses.shape[0] + 1)
    ax.plot(steps, losses, color="0.75", lw=0.5)
    w = min(100, max(losses.shape[0] // 10, 1))
    run = np.convolve(losses, np.ones(w) / w, mode="valid")
    ax.plot(steps[w - 1 :], run, color="C0", lw=1.5, label=f"mean of {w} steps")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(r"loss $\|\varepsilon - \hat\varepsilon\|^2 / d$")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
