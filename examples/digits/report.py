"""Text outputs of the demo: the printed table, table.md, results.json and report.md."""

import json
import math
import pathlib
import platform

from . import flow as _flow, inpaint as _inpaint
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
from .extras import Extras


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


def console_summary(cfg: Config, data: Dataset, ev: Evaluation, ex: Extras | None = None) -> str:
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
    if ex is not None and ex.ran:
        for title, rows, notes in extra_tables(cfg, data, ex):
            parts += ["", title, text_rows(rows), *notes]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- extra stages
def text_rows(rows: list[list[str]]) -> str:
    """A header and rows as an aligned text table (first column left, the rest right)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown_rows(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.3f} ± {stats['stderr']:.3f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def extra_tables(cfg: Config, data: Dataset, ex: Extras) -> list[tuple[str, list, list[str]]]:
    """(title, rows, notes) of every extra stage that ran."""
    out = []
    n_test = data.test.shape[0]
    if ex.conditional is not None and ex.guidance is not None:
        c, g = ex.conditional, ex.guidance
        n = c["conditional"]["n"]
        rows = [
            ["class-conditional model, PF-ODE", "bits/dim"],
            ["given the true label (w = 1)", _pm(c["conditional"])],
            ["null label (the unconditional model)", _pm(c["null_label"])],
        ]
        notes = [
            f"{n} held-out digits, the same dequantisation noise and probes for both rows; "
            f"the label is worth {c['label_bits_per_digit']:.2f} ± "
            f"{c['label_bits_per_digit_stderr']:.2f} bits per digit, E[log2 p(x|c) - log2 "
            "p(x|null)]. Were the null-label density the average of the conditional ones, "
            f"this could not exceed log2 10 = {c['log2_num_classes']:.2f}; above it, the "
            "null-label model is the weaker one.",
            f"{cfg.cond_steps} training steps, label dropout {cfg.label_dropout} (null label "
            f"{data.num_classes}); {c['num_params']:,} parameters.",
        ]
        out.append(("Class-conditional model: held-out bits/dim", rows, notes))
        rows = [["guidance scale w", "classifier accuracy", "confidence", "diversity"]]
        for w in g.scales:
            rows.append(
                [f"{w:g}", _pct(g.accuracy[w]), f"{g.confidence[w]:.3f}", f"{g.diversity[w]:.3f}"]
            )
        notes = [
            f"{g.per_class} samples per digit and scale, DDIM (eta = 0) with K = {g.steps}, "
            "sd.ClassifierFreeGuidance (w = 0: unconditional, 1: conditional), x0 clipped "
            "to [-1, 1]. Accuracy and confidence (probability of the intended digit) are the "
            f"classifier's: logistic regression on the pixels, {_pct(ex.classifier_accuracy or 0)} "
            f"on the {n_test} real held-out digits. Diversity: per-pixel standard deviation "
            "across the samples of one digit (guidance trades it for accuracy).",
        ]
        out.append(("Classifier-free guidance", rows, notes))
    if ex.inpainting is not None:
        inp = ex.inpainting
        real = inp.bpd["real digits"]
        rows = [["method", "NFE", "MSE lower half", "classifier acc.", "PF-ODE bits/dim", "- real"]]
        rows.append(["real held-out digits", "", "", "", _pm(real), ""])
        for name in (_inpaint.REPAINT, _inpaint.REPLACEMENT, _inpaint.NEAREST):
            gap, gap_se = inp.bpd_gap[name]
            rows.append(
                [
                    name,
                    str(inp.nfe[name]) if inp.nfe[name] else "-",
                    f"{inp.mse[name]:.3f}",
                    _pct(inp.accuracy[name]),
                    _pm(inp.bpd[name]),
                    f"{gap:+.3f} ± {gap_se:.3f}",
                ]
            )
        n = inp.truth.shape[0]
        notes = [
            f"{n} held-out digits, lower half unobserved; {_inpaint.DRAWS} completions per digit "
            f"from the diffusion model (DDPM, K = {inp.steps}; RePaint: blocks of {inp.jump} "
            f"steps, {inp.resample} passes). MSE in [-1, 1] units over the 32 unobserved pixels "
            "(a sample, not the posterior mean: not 0 even for a perfect sampler). Bits/dim: "
            f"the first completion of the first {real['n']} digits, rounded to the grid, under "
            "the same model, paired with the real digits (same noise and probes). The "
            "nearest-neighbour rows copy pixels of training digits, which the model was "
            "trained on: a low bits/dim there says the model knows its training set, not that "
            "the completion is right.",
        ]
        out.append(("Inpainting the lower half", rows, notes))
    if ex.flow is not None and ex.flow_training is not None:
        fc = ex.flow
        rows = [["model", "PF-ODE bits/dim", *fc.settings]]
        for name in fc.samples:
            rows.append(
                [name, _pm(fc.bpd[name])] + [f"{fc.frechet[name][s]:.1f}" for s in fc.settings]
            )
        d, d_se = fc.bpd_difference
        steps = ex.flow_training["steps"]
        notes = [
            f"PF-ODE bits/dim on {fc.bpd[_flow.FLOW]['n']} held-out digits (flow - diffusion "
            f"= {d:+.3f} ± {d_se:.3f}, paired), both read as x_t/alpha(t) at sigma/alpha = "
            "bin/sqrt(12); the other columns: Fréchet distance in pixel space of "
            f"{cfg.num_flow_samples} samples to the {n_test} held-out digits (lower is "
            f"better; {cfg.num_flow_samples} training digits score {fc.frechet_floor:.1f}), "
            "from the same noise, sd.DPMSolver on sd.grids.log_snr of each process.",
            f"Same network (the grid head) for both; the flow model trained {steps} steps on "
            f"sd.flow_matching_loss (uniform t), the diffusion model {cfg.train_steps} on DDPM's "
            "eps-loss. DPM-Solver-1 is DDIM, which on the rectified flow is Euler's method.",
        ]
        out.append(("Diffusion and flow matching", rows, notes))
    return out


def extras_results(ex: Extras) -> dict:
    """The extra stages' numbers for results.json."""
    res: dict = {}
    if ex.classifier_accuracy is not None:
        res["classifier_test_accuracy"] = ex.classifier_accuracy
    if ex.conditional is not None:
        res["conditional"] = ex.conditional
    if ex.guidance is not None:
        g = ex.guidance
        res["guidance"] = {
            "scales": g.scales,
            "sampler": f"DDIM (eta = 0), K = {g.steps}",
            "samples_per_class": g.per_class,
            "classifier_accuracy": {f"{w:g}": g.accuracy[w] for w in g.scales},
            "classifier_confidence": {f"{w:g}": g.confidence[w] for w in g.scales},
            "diversity": {f"{w:g}": g.diversity[w] for w in g.scales},
        }
    if ex.inpainting is not None:
        inp = ex.inpainting
        res["inpainting"] = {
            "num_digits": int(inp.truth.shape[0]),
            "draws_per_digit": _inpaint.DRAWS,
            "steps": inp.steps,
            "jump": inp.jump,
            "resample": inp.resample,
            "nfe": inp.nfe,
            "mse_lower_half": inp.mse,
            "classifier_accuracy": inp.accuracy,
            "pf_ode_bits_per_dim": inp.bpd,
            "bits_per_dim_minus_real": {
                k: {"mean": m, "stderr": se} for k, (m, se) in inp.bpd_gap.items()
            },
        }
    if ex.flow is not None:
        fc = ex.flow
        res["flow_matching"] = {
            "training": ex.flow_training,
            "pf_ode_bits_per_dim": fc.bpd,
            "flow_minus_diffusion": {"mean": fc.bpd_difference[0], "stderr": fc.bpd_difference[1]},
            "pixel_frechet_distance": fc.frechet,
            "pixel_frechet_distance_training_digits": fc.frechet_floor,
            "settings": fc.settings,
        }
    return res


def write_results(
    folder: pathlib.Path,
    cfg: Config,
    data: Dataset,
    ev: Evaluation,
    training: dict,
    total_seconds: float,
    ex: Extras | None = None,
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
            **({} if ex is None else {k: round(v, 2) for k, v in ex.seconds.items()}),
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
    if ex is not None:
        res.update(extras_results(ex))
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
    ex: Extras | None = None,
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
    ]
    extra_seconds = {}
    if ex is not None and ex.ran:
        figures = {
            "Class-conditional model: held-out bits/dim": None,
            "Classifier-free guidance": "![guidance sweep](guidance.png)",
            "Inpainting the lower half": "![inpainting](inpainting.png)",
            "Diffusion and flow matching": "![flow matching and diffusion](flow_vs_diffusion.png)",
        }
        for title, rows, notes in extra_tables(cfg, data, ex):
            lines += [f"## {title}", "", markdown_rows(rows), "", *[f"{n}  " for n in notes], ""]
            if figures.get(title):
                lines += [str(figures[title]), ""]
        if ex.conditional is not None:
            extra_seconds["training (conditional)"] = ex.conditional["seconds"]
        if ex.flow_training is not None:
            extra_seconds["training (flow matching)"] = ex.flow_training["seconds"]
        extra_seconds.update(ex.seconds)
    lines += [
        "## Timing (seconds)",
        "",
        "| stage | s |",
        "|---|---|",
        f"| training | {training['seconds']:.1f} |",
        *[f"| {k} | {v:.1f} |" for k, v in ev.seconds.items()],
        *[f"| {k} | {v:.1f} |" for k, v in extra_seconds.items()],
        f"| total | {total_seconds:.1f} |",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
