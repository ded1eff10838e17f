"""The demo's extra stages on the digits: the class-conditional model with classifier-free
guidance, inpainting, and flow matching beside diffusion. Each trains (or re-uses) its own
checkpointed model and is skipped with `--cond-steps 0`, `--inpaint 0` or `--flow-steps 0`."""

import dataclasses
import time

import equinox as eqx
import jax
import numpy as np

import scoredyn as sd

from . import conditional as _cond, flow as _flow, inpaint as _inpaint
from .config import Config
from .data import Dataset


@dataclasses.dataclass
class Extras:
    """What the extra stages measured; a stage that did not run is `None`."""

    classifier_accuracy: float | None = None
    conditional: dict | None = None  # training record and held-out bits/dim
    guidance: _cond.Guidance | None = None
    inpainting: _inpaint.Inpainting | None = None
    flow_training: dict | None = None
    flow: _flow.FlowComparison | None = None
    losses: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return any(v is not None for v in (self.guidance, self.inpainting, self.flow))


def _record(losses, seconds: float, reused: bool, steps: int, net) -> dict:
    leaves = jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array))
    final = float(np.mean(losses[-max(len(losses) // 20, 1) :]))
    return {
        "steps": steps,
        "seconds": seconds,
        "reused": reused,
        "final_loss": final,
        "num_params": int(sum(x.size for x in leaves)),
    }


def run_extras(cfg: Config, data: Dataset, sched, sde, eps_net, log=print) -> Extras:
    """Run every enabled extra stage (digits only)."""
    ex = Extras()
    if data.image_shape is None or data.train_labels is None:
        return ex
    # keys of their own, so the main run's numbers do not move when a stage is switched off
    root = jax.random.fold_in(jax.random.key(cfg.seed), 20260101)
    k_cond, k_guide, k_cbpd, k_inp, k_flow, k_cmp = jax.random.split(root, 6)
    clf = None
    if cfg.cond_steps or cfg.num_inpaint:
        t0 = time.perf_counter()
        clf = _cond.Classifier(data)
        ex.classifier_accuracy = clf.test_accuracy
        ex.seconds["classifier"] = time.perf_counter() - t0
        log(
            f"classifier (logistic regression on the pixels): {100 * clf.test_accuracy:.1f}% "
            f"on the {data.test.shape[0]} held-out digits"
        )

    if cfg.cond_steps:
        assert clf is not None
        net, losses, secs, reused = _cond.train_conditional(cfg, data, sched, sde, k_cond, log=log)
        ex.conditional = _record(losses, secs, reused, cfg.cond_steps, net)
        ex.losses["class-conditional"] = losses
        t0 = time.perf_counter()
        ex.guidance = _cond.guidance_sweep(cfg, data, sched, net, k_guide, clf)
        ex.seconds["guidance"] = time.perf_counter() - t0
        g = ex.guidance
        log(
            "guidance: classifier accuracy "
            + ", ".join(f"w = {w:g}: {100 * g.accuracy[w]:.0f}%" for w in g.scales)
            + f" ({ex.seconds['guidance']:.1f} s)"
        )
        t0 = time.perf_counter()
        ex.conditional.update(_cond.conditional_bpd(cfg, data, sde, net, k_cbpd))
        ex.seconds["conditional_bpd"] = time.perf_counter() - t0
        c = ex.conditional
        log(
            f"conditional PF-ODE: {c['conditional']['mean']:.3f} bits/dim given the label, "
            f"{c['null_label']['mean']:.3f} with the null label "
            f"({ex.seconds['conditional_bpd']:.1f} s)"
        )

    if cfg.num_inpaint:
        assert clf is not None
        t0 = time.perf_counter()
        ex.inpainting = _inpaint.inpaint(cfg, data, sched, sde, eps_net, k_inp, clf)
        ex.seconds["inpainting"] = time.perf_counter() - t0
        inp = ex.inpainting
        log(
            "inpainting: lower-half MSE "
            + ", ".join(f"{k.split(' (')[0]} {v:.3f}" for k, v in inp.mse.items())
            + f" ({ex.seconds['inpainting']:.1f} s)"
        )

    if cfg.flow_steps:
        rf = sd.RectifiedFlow()
        net, losses, secs, reused = _flow.train_flow(cfg, data, rf, k_flow, log=log)
        ex.flow_training = _record(losses, secs, reused, cfg.flow_steps, net)
        ex.losses["flow matching"] = losses
        t0 = time.perf_counter()
        ex.flow = _flow.compare(cfg, data, sde, eps_net, rf, net, k_cmp)
        ex.seconds["flow_comparison"] = time.perf_counter() - t0
        b = ex.flow.bpd
        log(
            f"PF-ODE bits/dim: diffusion {b[_flow.DIFFUSION]['mean']:.3f}, flow matching "
            f"{b[_flow.FLOW]['mean']:.3f} ({ex.seconds['flow_comparison']:.1f} s with the samples)"
        )
    return ex
