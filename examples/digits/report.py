"""Text outputs of the demo: the printed table, table.md, results.json and report.md."""

import json
import math
import pathlib
import platform

from .config import Config
from .data import Dataset
from .evaluate import (
    ANALYTIC_DDIM,
    ANALYTIC_DPM,
    ANALYTIC_DPM_OT,
    DDIM,
    DDPM_BETA,
    DDPM_TILDE,
    INFINITE_BOUND,
    PF_ODE,
    Evaluation,
)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def table_rows(ev: Evaluation) -> list[list[str]]:
    """Header and rows of the bound table (bits/dim); DDIM-forward rows are infinite."""
    header = ["sampler"] + [f"K={k}" for k in ev.ks]
    rows = [header]
    order = (DDPM_TILDE, DDPM_BETA, DDIM, ANALYTIC_DPM, ANALYTIC_DDIM, ANALYTIC_DPM_OT)
    for name in order:
        if name in INFINITE_BOUND:
            rows.append([name + " [a]"] + ["inf"] * len(ev.ks))
        else:
            rows.append([name] + [_fmt(ev.bounds[name][k]) for k in ev.ks])
    return rows


def text_table(ev: Evaluation) -> str:
    rows = table_rows(ev)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(ev: Evaluation) -> str:
    rows = table_rows(ev)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _max_se(ev: Evaluation) -> float:
    """Largest standard error among the entries below 10 bits/dim."""
    return max(
        (
            se
            for m, d in ev.stderr.items()
            for k, se in d.items()
            if math.isfinite(se) and ev.bounds[m][k] < 10
        ),
        default=0.0,
    )


def network_line(cfg: Config, data: Dataset, num_params: int) -> str:
    if cfg.net == "grid":
        return (
            f"residual MLP (width {cfg.width}, depth {cfg.depth}) giving {data.levels} level "
            f"logits per pixel, turned into an eps-prediction by sd.nn.GridEps "
            f"({num_params:,} parameters)"
        )
    if cfg.net == "conv":
        return f"small residual conv net ({num_params:,} parameters), eps-prediction"
    return (
        f"residual MLP eps-prediction (width {cfg.width}, depth {cfg.depth}, "
        f"{num_params:,} parameters)"
    )


def _footnotes(ev: Evaluation, data: Dataset) -> list[str]:
    notes = [
        "[a] DDIM's forward process (lambda = 0) has a deterministic posterior "
        "q(x_m | x_n, x_0), so its bound is +inf at every K, whatever the reverse "
        "variance (Analytic-DDIM's too); Bao et al. report likelihoods for the DDPM "
        "forward process only. DDIM's K -> infinity limit is the PF-ODE below; both "
        "appear in samples.png.",
        f"Finite rows: DDPM forward process (standard errors over the held-out examples "
        f"<= {_max_se(ev):.2f} for entries below 10, all in results.json); even trajectory "
        "tau_k = round(1 + (k-1)(N-1)/(K-1)) (the last step starts from x_1), or "
        "Analytic-DPM's optimal trajectory (same Gamma).",
    ]
    if data.levels is not None:
        notes.append(
            f"Bits/dim of a discrete distribution on the {data.levels}-level grid, discretised "
            f"Gaussian decoder on the last step; the uniform distribution scores "
            f"log2({data.levels}) = {math.log2(data.levels):.2f}."
        )
    else:
        notes.append(
            "Bits/dim of a continuous density (Gaussian decoder), so values can be negative."
        )
    return notes


def pf_line(ev: Evaluation, data: Dataset) -> str:
    pf = ev.pf_ode
    assert pf is not None
    kind = "uniformly dequantised, Hutchinson trace" if data.levels is not None else "exact trace"
    return (
        f"{PF_ODE} likelihood: {pf['mean']:.2f} +/- {pf['stderr']:.2f} bits/dim on {pf['n']} "
        f"held-out examples ({kind}, adaptive Tsit5, {pf['nfe']:.0f} function evaluations, "
        f"from t_eps = {pf['t_eps']:.4f} where sigma = {pf['sigma_t_eps']:.3f})"
    )


def console_summary(cfg: Config, data: Dataset, ev: Evaluation) -> str:
    what = "held-out digits" if data.levels is not None else "held-out points"
    head = (
        f"Negative ELBO, bits/dim, mean over {ev.num_eval} {what} "
        f"(lower is better; N = {ev.ks[-1]} steps)"
    )
    parts = [head, text_table(ev), *_footnotes(ev, data), pf_line(ev, data)]
    for label, v in ev.reference.items():
        parts.append(f"reference: {label} = {v:.3f}")
    if ev.oracle_bounds is not None:
        parts.append("same bounds with the exact eps of the mixture (oracle):")
        for m, d in ev.oracle_bounds.items():
            parts.append(f"  {m:<28s}" + "".join(f"{_fmt(d[k]):>8s}" for k in ev.ks))
    if ev.eps_error is not None:
        e = ev.eps_error
        parts.append(
            f"trained eps vs exact eps: mean squared error per dim {e['mse']:.4f} "
            f"(predicting zero: {e['mse_of_zero']:.4f})"
        )
    return "\n".join(parts)


def write_results(
    folder: pathlib.Path,
    cfg: Config,
    data: Dataset,
    ev: Evaluation,
    training: dict,
    total_seconds: float,
) -> dict:
    res = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "data": {
            "name": data.name,
            "description": data.description,
            "dim": data.dim,
            "levels": data.levels,
            "num_train": int(data.train.shape[0]),
            "num_test": int(data.test.shape[0]),
        },
        "training": training,
        "ks": ev.ks,
        "bounds_bits_per_dim": {m: {str(k): v for k, v in d.items()} for m, d in ev.bounds.items()},
        "bounds_stderr": {m: {str(k): v for k, v in d.items()} for m, d in ev.stderr.items()},
        "infinite_bounds": {
            m: "inf (DDIM forward process: deterministic posterior)" for m in INFINITE_BOUND
        },
        "pf_ode_bits_per_dim": ev.pf_ode,
        "reference": ev.reference,
        "gamma": ev.gamma,
        "optimal_trajectories": {str(k): v for k, v in ev.trajectories.items()},
        "seconds": {
            **{k: round(v, 2) for k, v in ev.seconds.items()},
            "total": round(total_seconds, 2),
        },
        "machine": machine(),
        "num_eval": ev.num_eval,
    }
    if ev.oracle_bounds is not None:
        res["oracle_bounds_bits_per_dim"] = {
            m: {str(k): v for k, v in d.items()} for m, d in ev.oracle_bounds.items()
        }
    if ev.eps_error is not None:
        res["eps_error"] = ev.eps_error
    (folder / "results.json").write_text(json.dumps(strict_json(res), indent=1, allow_nan=False))
    (folder / "table.md").write_text(markdown_table(ev) + "\n")
    return res


def strict_json(obj):
    """`obj` with every non-finite float replaced by `None` (JSON `null`): JSON has no NaN or
    infinity, and a file holding `NaN` is not valid JSON for any strict reader."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def machine() -> str:
    import os

    import jax

    cpus = os.cpu_count()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {cpus} CPU cores, JAX {jax.__version__} on {dev.platform}"


def write_report(
    folder: pathlib.Path,
    cfg: Config,
    data: Dataset,
    ev: Evaluation,
    training: dict,
    total_seconds: float,
    command: str,
) -> None:
    loss = (
        "the likelihood-weighted eps-loss" if cfg.weighting == "likelihood" else "DDPM's eps-loss"
    )
    lines = [
        f"# scoredyn demo: {data.name}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; wall time {total_seconds:.0f} s "
        f"(training {training['seconds']:.0f} s"
        f"{', re-used checkpoint' if training['reused'] else ''}).",
        "",
        "## Setup",
        "",
        f"- Data: {data.description}.",
        f"- Model: {network_line(cfg, data, training['num_params'])}; {cfg.train_steps} Adam "
        f"steps on {loss}, batch {cfg.batch_size}, EMA {cfg.ema_decay}; final training "
        f"loss {training['final_loss']:.4f} per dimension.",
        f"- Schedule: the VP SDE (beta from {cfg.beta_min} to 20) sampled at N = {ev.ks[-1]} steps "
        "(the continuous twin of DDPM's linear schedule); the network is called at t = n/N.",
        f"- Analytic-DPM's Gamma (ms_eps) estimated once at every step from "
        f"{ev.gamma['num_samples']} training examples, then re-used for every K and every sampler.",
        "- Even trajectories tau_k = round(1 + (k-1)(N-1)/(K-1)) as in Analytic-DPM and DDIM; the "
        "optimal trajectory solves Analytic-DPM's dynamic programme on the same Gamma.",
        "",
        "## Negative ELBO on held-out data (bits/dim, lower is better)",
        "",
        markdown_table(ev),
        "",
        *[f"{n}  " for n in _footnotes(ev, data)],
        "",
        pf_line(ev, data) + ".",
        "",
    ]
    if ev.reference:
        lines += ["References:", ""] + [f"- {k}: {v:.3f}" for k, v in ev.reference.items()] + [""]
    if ev.oracle_bounds is not None:
        lines += ["Same bounds with the exact (oracle) eps of the mixture:", ""]
        ks = ev.ks
        lines += [
            "| sampler | " + " | ".join(f"K={k}" for k in ks) + " |",
            "|" + "---|" * (len(ks) + 1),
        ]
        for m, d in ev.oracle_bounds.items():
            lines.append(f"| {m} | " + " | ".join(_fmt(d[k]) for k in ks) + " |")
        lines.append("")
    if ev.eps_error is not None:
        lines += [
            f"Trained eps against the exact eps: mean squared error per dimension "
            f"{ev.eps_error['mse']:.4f} (a network predicting zero: "
            f"{ev.eps_error['mse_of_zero']:.4f}).",
            "",
        ]
    lines += [
        "![negative ELBO against K](nll_vs_steps.png)",
        "",
        "## Samples",
        "",
        f"Same starting noise for every sampler; K = {', '.join(map(str, cfg.sample_ks))}. "
        + (
            "x0 predictions clipped to [-1, 1]; Analytic-DPM's step into tau_1 has its noise "
            "capped at one grid bin, as in the paper."
            if data.levels is not None
            else ""
        ),
        "",
        "![samples](samples.png)",
        "",
        "![training loss](training_loss.png)",
        "",
        "## Timing (seconds)",
        "",
        "| stage | s |",
        "|---|---|",
        f"| training | {training['seconds']:.1f} |",
        *[f"| {k} | {v:.1f} |" for k, v in ev.seconds.items()],
        f"| total | {total_seconds:.1f} |",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
