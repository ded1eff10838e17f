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


# pixels between two digits of a mosaic, drawn in GAP_GREY: white-background digits whose
# strokes reach the border would otherwise run into their neighbours
GAP = 2
GAP_GREY = "#b0b0b0"


def _mosaic(x: np.ndarray, shape: tuple[int, int], cols: int | None = None) -> np.ndarray:
    """Images `x` (n, h*w) in a grid of `cols` columns (default: square), NaN between them."""
    n = x.shape[0]
    cols = int(math.ceil(math.sqrt(n))) if cols is None else cols
    rows = int(math.ceil(n / cols))
    h, w = shape
    g = GAP
    img = np.full((rows * (h + g) + g, cols * (w + g) + g), np.nan)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = g + r * (h + g), g + c * (w + g)
        img[top : top + h, left : left + w] = x[i].reshape(h, w)
    return img


def _show_digits(ax, x: np.ndarray, shape: tuple[int, int], cols: int | None = None) -> None:
    """A mosaic of digits (ink dark on white, grey gaps) on `ax`, without ticks."""
    plt = _plt()
    cmap = plt.get_cmap("gray_r").with_extremes(bad=GAP_GREY)
    ax.imshow(
        _mosaic(np.clip(x, -1, 1), shape, cols),
        cmap=cmap,
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])


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
                _show_digits(ax, x, data.image_shape)
            else:
                ax.scatter(
                    data.test[:, 0],
                    data.test[:, 1],
                    s=2,
                    color="0.8",
                    rasterized=True,
                    label="held-out data",
                )
                ax.scatter(
                    x[:, 0],
                    x[:, 1],
                    s=2,
                    color=_STYLE.get(name, {}).get("color", "k"),
                    rasterized=True,
                    label="samples",
                )
                ax.legend(fontsize=7, loc="lower left", markerscale=4, framealpha=0.8)
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


def plot_loss(losses: dict[str, np.ndarray], path: pathlib.Path) -> None:
    """Training loss per step (light) and its running mean over 100 steps, one colour per
    model (`losses`: model name -> loss of every step)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    for i, (name, loss) in enumerate(losses.items()):
        loss = np.asarray(loss)
        steps = np.arange(1, loss.shape[0] + 1)
        ax.plot(steps, loss, color=f"C{i}", lw=0.4, alpha=0.25)
        w = min(100, max(loss.shape[0] // 10, 1))
        run = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], run, color=f"C{i}", lw=1.5, label=f"{name} (mean of {w} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss per dimension")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_guidance(g, shape: tuple[int, int], path: pathlib.Path, title: str) -> None:
    """One panel per guidance scale: a row of samples per digit class (same noise)."""
    plt = _plt()
    cols = min(g.per_class, 10)
    width = max(0.27 * cols + 0.4, 1.9)
    fig, axes = plt.subplots(
        1, len(g.scales), figsize=(width * len(g.scales), 3.6), squeeze=False, layout="constrained"
    )
    for ax, w in zip(axes[0], g.scales):
        x = g.samples[w][:, :cols].reshape(-1, g.samples[w].shape[-1])
        _show_digits(ax, x, shape, cols)
        what = {0.0: " (unconditional)", 1.0: " (conditional)"}.get(w, "")
        ax.set_title(f"w = {w:g}{what}\nclassifier accuracy {100 * g.accuracy[w]:.0f}%", fontsize=9)
    axes[0][0].set_ylabel("digit 0 (top) to 9 (bottom)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rgb_rows(rows: list[list[np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """RGB mosaic of rows of digits (ink dark on white, grey gaps); NaN pixels (the unmeasured
    half) are drawn pale blue."""
    h, w = shape
    g = GAP
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    gap = np.asarray([int(GAP_GREY[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    img = np.ones((n_rows * (h + g) + g, n_cols * (w + g) + g, 3)) * gap
    for r, row in enumerate(rows):
        for c, x in enumerate(row):
            tile = x.reshape(h, w)
            rgb = np.repeat((1.0 - (np.clip(tile, -1, 1) + 1.0) / 2.0)[..., None], 3, -1)
            rgb[np.isnan(tile)] = (0.78, 0.87, 1.0)
            top, left = g + r * (h + g), g + c * (w + g)
            img[top : top + h, left : left + w] = rgb
    return img


def plot_inpainting(inp, shape: tuple[int, int], path: pathlib.Path, title: str) -> None:
    """Columns: held-out digits; rows: the truth, the measured upper half, then completions."""
    plt = _plt()
    k = min(12, inp.truth.shape[0])
    observed = np.where(inp.mask, inp.truth[:k], np.nan)
    labels, rows = ["truth", "observed"], [list(inp.truth[:k]), list(observed)]
    for name, x in inp.completions.items():
        for j in range(x.shape[1]):
            labels.append(name.split(" (")[0] + (f" #{j + 1}" if x.shape[1] > 1 else ""))
            rows.append(list(x[:k, j]))
    img = _rgb_rows(rows, shape)
    fig, ax = plt.subplots(
        figsize=(max(0.55 * k + 1.8, 5.0), 0.55 * len(rows) + 0.6), layout="constrained"
    )
    ax.imshow(img, interpolation="nearest")
    h = shape[0] + GAP
    ax.set_yticks([GAP + h * i + shape[0] / 2 - 0.5 for i in range(len(rows))], labels, fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flow(fc, shape: tuple[int, int], path: pathlib.Path, title: str) -> None:
    """Rows: the diffusion and the flow-matching model; columns: solver and NFE (same noise)."""
    plt = _plt()
    names = list(fc.samples)
    fig, axes = plt.subplots(
        len(names),
        len(fc.settings),
        figsize=(2.4 * len(fc.settings) + 0.4, 2.6 * len(names) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for i, name in enumerate(names):
        for j, setting in enumerate(fc.settings):
            ax = axes[i, j]
            _show_digits(ax, fc.samples[name][setting][:36], shape, 6)
            ax.set_title(f"{setting}\npixel FD {fc.frechet[name][setting]:.1f}", fontsize=8)
            if j == 0:
                b = fc.bpd[name]
                ax.set_ylabel(f"{name.split(' (')[0]}\n{b['mean']:.2f} bits/dim", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
