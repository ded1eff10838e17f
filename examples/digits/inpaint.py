r"""Inpainting: the lower half of held-out digits, completed by the unconditional model.

The upper half (rows 0-3) is measured; the library's solver wrappers fill in the rest:
`sd.Inpaint(sd.DDPM(), mask, y)` (replacement: after every step the measured pixels are
overwritten by a forward-noised copy of the measurement) and `sd.RePaint(...)` (the same with
resampling: each block of steps is re-noised and run again, so the unmeasured pixels can come
to agree with the measured ones). Both run on the main eps-network through `sd.sample`.

How good are the completions? Three yardsticks:

- the mean squared error of the lower half against the truth (a completion is one sample of
  many plausible ones, so the error of a good sampler is not zero; the best single guess, the
  posterior mean, would do better on this measure but looks blurred);
- the classifier's accuracy on the completed digits against the true label;
- the exact PF-ODE likelihood of the completed digits (rounded to the 17-level grid) under the
  same model, in bits/dim, beside that of the real held-out digits: a completion the model finds
  plausible scores like a real digit, a pasted-together one scores worse.

A nearest-neighbour baseline (the lower half of the training digit whose upper half is closest)
gives the numbers a scale.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from . import likelihood
from .conditional import Classifier
from .config import Config
from .data import Dataset
from .progress import progress_bar

#: completions drawn per digit (the figure shows them side by side)
DRAWS = 3
REPLACEMENT, REPAINT, NEAREST = (
    "replacement (sd.Inpaint)",
    "RePaint (sd.RePaint)",
    "nearest neighbour",
)
#: digits per compiled call (the progress bar advances once per batch)
BATCH = 48


def lower_half_mask(shape: tuple[int, int]) -> np.ndarray:
    """True on the measured upper half of an image, flattened."""
    h, w = shape
    m = np.zeros((h, w), bool)
    m[: h // 2] = True
    return m.reshape(-1)


@eqx.filter_jit
def _complete(net, sched, tau, mask, ys, keys, jump: int, resample: int):
    """One completion per row of `ys`: `sd.RePaint` around DDPM (`resample == 1`: replacement,
    `sd.Inpaint`), with x0 clipped to [-1, 1]."""
    model = sd.ClipX0(sd.EpsModel(net), -1.0, 1.0)

    def one(key, y):
        k_start, k_solve = jax.random.split(key)
        if resample == 1:
            solver = sd.Inpaint(sd.DDPM(), mask, y)
        else:
            solver = sd.RePaint(sd.DDPM(), mask, y, jump=jump, resample=resample)
        x_T = jax.random.normal(k_start, y.shape, y.dtype)
        return sd.sample(k_solve, sched, model, solver, tau, x_T).x

    return jax.vmap(one)(keys, ys)


def to_grid(x: np.ndarray, levels: int) -> np.ndarray:
    """Round to the nearest of the `levels` grid points in [-1, 1]."""
    half = (levels - 1) / 2.0
    return (np.round((np.clip(x, -1.0, 1.0) + 1.0) * half) / half - 1.0).astype(np.float32)


def nearest_neighbour(data: Dataset, ys: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's lower half from the training digit whose upper half is closest."""
    d2 = ((ys[:, None, mask] - data.train[None, :, mask]) ** 2).sum(-1)
    out = ys.copy()
    out[:, ~mask] = data.train[np.argmin(d2, 1)][:, ~mask]
    return out


@dataclasses.dataclass
class Inpainting:
    """Completions and their scores (Python numbers for JSON, arrays for the figure)."""

    truth: np.ndarray  # (n, d)
    mask: np.ndarray  # (d,)
    completions: dict[str, np.ndarray]  # method -> (n, DRAWS, d) (nearest neighbour: DRAWS = 1)
    mse: dict[str, float]  # method -> mean squared error of the lower half, [-1, 1] units
    accuracy: dict[str, float]  # method -> classifier accuracy against the true label
    bpd: dict[str, dict]  # "real digits" / method -> PF-ODE bits/dim stats
    bpd_gap: dict[str, tuple[float, float]]  # method -> (mean, stderr) of bpd - real bpd
    nfe: dict[str, int]
    steps: int
    jump: int
    resample: int


def inpaint(cfg: Config, data: Dataset, sched, sde, net, key, clf: Classifier) -> Inpainting:
    """Complete the lower half of the first `cfg.num_inpaint` held-out digits."""
    assert data.image_shape is not None and data.levels is not None
    assert data.test_labels is not None
    n = cfg.num_inpaint
    truth = data.test[:n]
    mask = lower_half_mask(data.image_shape)
    K = min(cfg.inpaint_k, sched.num_steps)
    tau = sd.grids.even(sched.num_steps, K)
    jump = max(K // 10, 1)
    while K % jump:
        jump -= 1
    resample = cfg.inpaint_jumps
    k_draw, k_bpd = jax.random.split(key)
    # every digit DRAWS times: rows (digit 0 draw 0, digit 0 draw 1, ...)
    ys = np.repeat(np.where(mask, truth, 0.0), DRAWS, axis=0).astype(np.float32)
    methods = {REPLACEMENT: 1, REPAINT: resample}
    completions = {}
    total = len(methods) * ys.shape[0]
    with progress_bar(total, "inpainting", "digit", cfg.progress) as bar:
        for name, r in methods.items():
            keys = jax.random.split(jax.random.fold_in(k_draw, r), ys.shape[0])
            parts = []
            size = min(BATCH, ys.shape[0])
            for lo in range(0, ys.shape[0], size):
                idx = np.minimum(np.arange(lo, lo + size), ys.shape[0] - 1)
                x = _complete(net, sched, tau, jnp.asarray(mask), ys[idx], keys[idx], jump, r)
                parts.append(np.asarray(x)[: min(size, ys.shape[0] - lo)])
                bar.update(parts[-1].shape[0])
            x = np.concatenate(parts)
            x[:, mask] = ys[:, mask]  # the measured half exactly (it is, up to rounding)
            completions[name] = np.clip(x, -1.0, 1.0).reshape(n, DRAWS, data.dim)
    completions[NEAREST] = nearest_neighbour(data, truth, mask)[:, None, :]

    labels = data.test_labels[:n]
    mse, acc = {}, {}
    for name, x in completions.items():
        err = (x[:, :, ~mask] - truth[:, None, ~mask]) ** 2
        mse[name] = float(err.mean())
        flat = x.reshape(-1, data.dim)
        acc[name] = clf.accuracy(flat, np.repeat(labels, x.shape[1]))

    model = sd.EpsModel(net)
    common: dict = dict(levels=data.levels, progress=cfg.progress)
    m = min(n, cfg.num_extra_ode)
    real = likelihood.bits_per_dim(sde, model, truth[:m], k_bpd, desc="PF-ODE (real)", **common)
    bpd = {"real digits": real}
    gap = {}
    for name in (REPAINT, REPLACEMENT, NEAREST):
        first = to_grid(completions[name][:m, 0], data.levels)
        short = name.split(" (")[0]
        bpd[name] = likelihood.bits_per_dim(
            sde, model, first, k_bpd, desc=f"PF-ODE ({short})", **common
        )
        gap[name] = likelihood.paired(real, bpd[name])
    return Inpainting(
        truth=truth,
        mask=mask,
        completions=completions,
        mse=mse,
        accuracy=acc,
        bpd={k: likelihood.public(v) for k, v in bpd.items()},
        bpd_gap=gap,
        nfe={REPLACEMENT: K, REPAINT: K * resample, NEAREST: 0},
        steps=K,
        jump=jump,
        resample=resample,
    )
