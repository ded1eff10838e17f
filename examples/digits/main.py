"""The demo's driver: data, training, evaluation, figures and report."""

import math
import pathlib
import shlex
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from .config import parse_config
from .data import load
from .evaluate import evaluate
from .extras import run_extras
from .plots import (
    plot_bounds,
    plot_flow,
    plot_guidance,
    plot_inpainting,
    plot_loss,
    plot_samples,
)
from .report import console_summary, write_report, write_results
from .train import train

# what a finished run leaves in its folder; a folder holding any of them is an earlier run's
RESULTS = ("results.json", "report.md", "table.md")


def run_folder(out: pathlib.Path, name: str, overwrite: bool) -> pathlib.Path:
    """`OUT/NAME`, or, when that holds an earlier run's results and `overwrite` is off, the first
    `OUT/NAME-2`, `OUT/NAME-3`, ... that does not: a rerun never replaces earlier results."""
    folder = out / name
    if overwrite:
        return folder
    n = 1
    while any((folder / f).exists() for f in RESULTS):
        n += 1
        folder = out / f"{name}-{n}"
    return folder


def main(argv: list[str] | None = None) -> pathlib.Path:
    """Run the demo with command-line arguments `argv` (default: `sys.argv[1:]`).

    Returns:
        The output folder: `OUT/NAME`, or the next free `OUT/NAME-2`, ... when `OUT/NAME`
        holds an earlier run's results (see `--overwrite`).
    """
    cfg = parse_config(argv)
    t_start = time.perf_counter()
    folder = run_folder(pathlib.Path(cfg.out), cfg.run_name, cfg.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else list(argv)
    command = "python -m examples.digits" + "".join(" " + shlex.quote(a) for a in args)

    def log(msg: str) -> None:
        print(msg, flush=True)

    data = load(cfg.data)
    log(f"scoredyn {sd.__version__} demo -> {folder}")
    if folder.name != cfg.run_name:
        log(
            f"({pathlib.Path(cfg.out) / cfg.run_name} holds an earlier run's results, kept; "
            "--overwrite replaces them)"
        )
    log(f"data: {data.description}")
    sde = sd.VPSDE(beta_min=cfg.beta_min, beta_max=20.0)
    sched = sd.DiscreteSchedule.from_sde(sde, cfg.num_steps, dtype=jnp.float32)
    k_train, k_eval = jax.random.split(jax.random.key(cfg.seed))

    state, losses, seconds, reused = train(cfg, data, sched, sde, k_train, log=log)
    net = state.ema
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array)))
    final = float(np.mean(losses[-max(len(losses) // 20, 1) :]))
    log(
        f"network: {cfg.net} with {num_params:,} parameters; training loss {final:.4f} "
        f"per dimension after {cfg.train_steps} steps ({seconds:.0f} s)"
    )
    training = {
        "steps": cfg.train_steps,
        "seconds": seconds,
        "reused": reused,
        "final_loss": final,
        "num_params": int(num_params),
        "checkpoint_hash": cfg.training_hash(),
    }

    ev = evaluate(cfg, data, sched, sde, net, k_eval, log=log)
    ex = run_extras(cfg, data, sched, sde, net, log=log)

    title = f"{data.name}: {ev.num_eval} held-out examples, N = {sched.num_steps}"
    figures = ["nll_vs_steps.png", "samples.png", "training_loss.png"]
    plot_bounds(ev, data, folder / "nll_vs_steps.png", title)
    plot_samples(ev, data, folder / "samples.png", f"samples of the trained model ({data.name})")
    plot_loss({"diffusion (eps-loss)": np.asarray(losses), **ex.losses}, folder / figures[2])
    shape = data.image_shape
    if ex.guidance is not None and shape is not None:
        figures.append("guidance.png")
        plot_guidance(
            ex.guidance,
            shape,
            folder / "guidance.png",
            f"classifier-free guidance: DDIM, K = {ex.guidance.steps}, same noise for every w",
        )
    if ex.inpainting is not None and shape is not None:
        figures.append("inpainting.png")
        plot_inpainting(
            ex.inpainting,
            shape,
            folder / "inpainting.png",
            "inpainting the lower half of held-out digits\n(pale blue: not observed)",
        )
    if ex.flow is not None and shape is not None:
        figures.append("flow_vs_diffusion.png")
        plot_flow(
            ex.flow,
            shape,
            folder / "flow_vs_diffusion.png",
            "diffusion and flow matching at equal network evaluations (same noise)",
        )
    total = time.perf_counter() - t_start
    write_results(folder, cfg, data, ev, training, total, ex)
    write_report(folder, cfg, data, ev, training, total, command, ex)
    log("")
    log(console_summary(cfg, data, ev, ex))
    log("")
    log(
        f"wrote {folder}/: report.md, results.json, table.md, {', '.join(figures)} "
        f"({total:.0f} s in all)"
    )
    if not all(math.isfinite(v) for d in ev.bounds.values() for v in d.values()):
        log("warning: some bounds are not finite")
    return folder
