"""Command-line options of the demo and their defaults."""

import argparse
import dataclasses
import hashlib
import json
import math

import scoredyn as sd

from .data import DATASETS, NUM_DIGITS_TEST

DEFAULT_KS = (10, 25, 50, 100, 200)
# Training runs in segments of this many steps, each with its own key `fold_in(key, segment)`,
# and a resumable checkpoint after each: an interrupted run loses at most one segment. The size
# is fixed (and part of the checkpoint hash) because it determines the keys, hence the weights.
SEGMENT = 500


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a demo run (the training ones are hashed into the checkpoint name)."""

    data: str = "digits"
    quick: bool = False
    seed: int = 0
    net: str = "mlp"
    width: int = 128
    depth: int = 2
    train_steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    ema_decay: float = 0.999
    num_steps: int = 1000
    beta_min: float = 0.1
    weighting: str = "uniform"
    ks: tuple[int, ...] = DEFAULT_KS
    num_eval: int = 297
    num_gamma: int = 1000
    num_ode: int = 128
    num_samples: int = 64
    sample_ks: tuple[int, ...] = (10, 100)
    # the extra stages (digits only; 0 steps or 0 digits skips a stage)
    cond_steps: int = 2000
    label_dropout: float = 0.2
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    guidance_per_class: int = 30
    guidance_k: int = 50
    num_inpaint: int = 48
    inpaint_k: int = 100
    inpaint_jumps: int = 4
    flow_steps: int = 3000
    flow_nfe: tuple[int, ...] = (10, 20)
    flow_orders: tuple[int, ...] = (1, 2)
    num_flow_samples: int = 297
    num_extra_ode: int = 64
    out: str = "runs"
    name: str = ""
    retrain: bool = False
    overwrite: bool = False
    progress: bool = True

    @property
    def run_name(self) -> str:
        return self.name or (self.data + ("-quick" if self.quick else ""))

    def training_settings(self) -> dict:
        """What determines the trained weights (and nothing else)."""
        keys = (
            "data",
            "seed",
            "net",
            "width",
            "depth",
            "train_steps",
            "batch_size",
            "lr",
            "ema_decay",
            "num_steps",
            "beta_min",
            "weighting",
        )
        out = {k: getattr(self, k) for k in keys}
        out["segment"] = SEGMENT
        out["scoredyn"] = sd.__version__
        return out

    def training_hash(self) -> str:
        return settings_hash(self.training_settings())

    def stage_settings(self, kind: str) -> dict:
        """What determines the weights of an extra model (`"conditional"` or `"flow"`)."""
        keys = ["data", "seed", "net", "width", "depth", "batch_size", "lr", "ema_decay"]
        if kind == "conditional":
            keys += ["num_steps", "beta_min", "label_dropout"]
            steps = self.cond_steps
        else:
            steps = self.flow_steps
        out = {k: getattr(self, k) for k in keys}
        out.update(kind=kind, train_steps=steps, segment=SEGMENT, scoredyn=sd.__version__)
        return out


def settings_hash(settings: dict) -> str:
    """The first 12 hex digits of the SHA-256 of `settings` as sorted JSON."""
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _quick_defaults(data: str) -> dict:
    base = dict(
        net="grid",
        width=128,
        depth=2,
        train_steps=600,
        batch_size=256,
        lr=3e-3,
        ema_decay=0.99,
        num_eval=48,
        num_gamma=64,
        num_ode=2,
        num_samples=36,
        ks=(10,),
        sample_ks=(10,),
        cond_steps=200,
        guidance_per_class=2,
        guidance_k=10,
        num_inpaint=4,
        inpaint_k=10,
        inpaint_jumps=2,
        flow_steps=200,
        flow_nfe=(10,),
        flow_orders=(1,),
        num_flow_samples=36,
        num_extra_ode=2,
    )
    if data != "digits":
        base.update(
            net="mlp", train_steps=1000, num_eval=256, num_gamma=1000, num_ode=256, num_samples=256
        )
        base.update(_NO_EXTRAS)
    return base


# the extra stages need labelled images (the digits)
_NO_EXTRAS = dict(cond_steps=0, num_inpaint=0, flow_steps=0)


def _full_defaults(data: str) -> dict:
    if data == "digits":
        return dict(net="grid")
    return dict(
        net="mlp",
        width=128,
        depth=3,
        train_steps=4000,
        num_eval=1000,
        num_gamma=4000,
        num_ode=1000,
        num_samples=1000,
        ema_decay=0.995,
        **_NO_EXTRAS,
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        # flags and options whose help already says their default get no "(default: ...)"
        if action.default in (None, False, "") or isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.digits",
        description=(
            "Train a small eps-prediction network on real data (scikit-learn's 8x8 digits by "
            "default), estimate Analytic-DPM's Gamma, and report held-out negative ELBOs in "
            "bits/dim for DDPM (beta, beta-tilde), DDIM, Analytic-DPM, Analytic-DDIM and the "
            "optimal trajectory at K = 10, 25, 50, 100, 200 and N steps, plus the PF-ODE "
            "likelihood. On the digits, also a class-conditional model with classifier-free "
            "guidance, inpainting of the lower half, and a flow-matching model beside the "
            "diffusion model. Writes tables, plots and a report to OUT/NAME/."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--data",
        choices=DATASETS,
        default="digits",
        help="data set: the 8x8 digits, or a 2-D toy set ('mixture' has an exact "
        "oracle score, so the trained model is compared with the truth)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer training steps, sampling steps and evaluation examples in every stage: "
        "a smoke test (the numbers are rougher)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="PRNG seed; the run is deterministic given it"
    )
    p.add_argument(
        "--net",
        choices=("grid", "mlp", "conv"),
        default=None,
        help="eps-network: 'grid' (digits default) = residual MLP giving level logits "
        "for each pixel, turned into eps by sd.nn.GridEps; 'mlp' (toy default) = "
        "residual MLP predicting eps; 'conv' = small conv net (digits; slower on CPU)",
    )
    p.add_argument(
        "--steps",
        dest="train_steps",
        type=int,
        default=None,
        help="training steps (default: 3000 digits, 4000 toy; 600 / 1000 with --quick)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 256)")
    p.add_argument(
        "--width", type=int, default=None, help="hidden width (MLP) or 4x channels (conv)"
    )
    p.add_argument("--depth", type=int, default=None, help="residual blocks")
    p.add_argument("--lr", type=float, default=None, help="peak Adam learning rate")
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="N, the steps of the discrete schedule (default 1000)",
    )
    p.add_argument(
        "--beta-min",
        type=float,
        default=None,
        help="beta_min of the VP SDE (beta_max = 20) that the schedule samples",
    )
    p.add_argument(
        "--weighting",
        choices=("uniform", "likelihood"),
        default=None,
        help="training loss: DDPM's uniform eps-loss, or likelihood weighting with "
        "log-SNR importance sampling",
    )
    p.add_argument(
        "--eval", dest="num_eval", type=int, default=None, help="held-out examples for the bounds"
    )
    p.add_argument(
        "--ode",
        dest="num_ode",
        type=int,
        default=None,
        help="held-out examples for the PF-ODE likelihood",
    )
    p.add_argument(
        "--cond-steps",
        type=int,
        default=None,
        help="training steps of the class-conditional model (label dropout, classifier-free "
        "guidance); 0 skips it (default: 2000; 200 with --quick; digits only)",
    )
    p.add_argument(
        "--flow-steps",
        type=int,
        default=None,
        help="training steps of the flow-matching model (rectified flow) compared with the "
        "diffusion model; 0 skips it (default: 3000, as the diffusion model; 200 with "
        "--quick; digits only)",
    )
    p.add_argument(
        "--inpaint",
        dest="num_inpaint",
        type=int,
        default=None,
        help="held-out digits whose lower half is inpainted; 0 skips it (default: 48; 4 with "
        "--quick; digits only)",
    )
    p.add_argument("--out", default="runs", help="output folder")
    p.add_argument("--name", default="", help="run name (default: the data set, plus -quick)")
    p.add_argument(
        "--retrain", action="store_true", help="ignore a matching (or half-finished) checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into OUT/NAME even if it holds an earlier run's results (by default the "
        "run goes to the next free OUT/NAME-2, OUT/NAME-3, ...)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def parse_config(argv=None) -> Config:
    args = build_parser().parse_args(argv)
    values = {}
    values.update(_quick_defaults(args.data) if args.quick else _full_defaults(args.data))
    for k, v in vars(args).items():
        if v is not None:
            values[k] = v
    if values.get("net") in ("conv", "grid") and args.data != "digits":
        raise SystemExit(f"--net {values['net']} needs the digits (--data digits)")
    if values.get("net") == "conv":
        values.setdefault("width", 128)
    if args.data != "digits":
        for key, flag in (("cond_steps", "--cond-steps"), ("flow_steps", "--flow-steps")):
            if values.get(key):
                raise SystemExit(f"{flag} needs the digits (--data digits)")
        if values.get("num_inpaint"):
            raise SystemExit("--inpaint needs the digits (--data digits)")
    cfg = Config(**values)
    _validate(cfg)
    if cfg.num_steps < max(cfg.ks):
        ks = tuple(k for k in cfg.ks if k < cfg.num_steps)
        cfg = dataclasses.replace(
            cfg, ks=ks, sample_ks=tuple(min(k, cfg.num_steps) for k in cfg.sample_ks)
        )
    return cfg


# the command-line flag of each validated setting
_FLAGS = {
    "train_steps": "--steps",
    "batch_size": "--batch-size",
    "num_steps": "--num-steps",
    "num_eval": "--eval",
    "num_ode": "--ode",
    "width": "--width",
    "depth": "--depth",
}
# settings where 0 is allowed (it skips a stage)
_COUNTS = {"cond_steps": "--cond-steps", "flow_steps": "--flow-steps", "num_inpaint": "--inpaint"}


def _validate(cfg: Config) -> None:
    """Refuse values that would fail later or silently give a meaningless run."""
    for name, flag in _FLAGS.items():
        if getattr(cfg, name) < 1:
            raise SystemExit(f"{flag} must be >= 1, got {getattr(cfg, name)}")
    for name, flag in _COUNTS.items():
        if getattr(cfg, name) < 0:
            raise SystemExit(f"{flag} must be >= 0 (0 skips the stage), got {getattr(cfg, name)}")
    if cfg.num_inpaint > NUM_DIGITS_TEST:
        raise SystemExit(f"--inpaint must be <= {NUM_DIGITS_TEST} (the held-out digits)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise SystemExit(f"--lr must be a finite positive learning rate, got {cfg.lr}")
    if not (math.isfinite(cfg.beta_min) and 0 < cfg.beta_min < 20):
        raise SystemExit(f"--beta-min must lie in (0, 20) (beta_max is 20), got {cfg.beta_min}")
    if cfg.num_eval < 2:
        raise SystemExit(f"--eval must be >= 2 (a standard error needs two), got {cfg.num_eval}")
    if any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise SystemExit(f"--name must be a plain folder name, got {cfg.name!r}")
