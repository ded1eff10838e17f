r"""PF-ODE bits/dim of any model on any process, one convention for the demo's extra stages.

The conditional model, the inpainted digits and the flow-matching model are all scored here, so
their numbers compare with each other and with the diffusion model scored the same way.

For grid data with bin $\Delta$ the model of $x_0$ is $x_{t_\epsilon}/\alpha(t_\epsilon)$: the
PF-ODE density $p_{t_\epsilon}$ read in data units, with the noise level
$\sigma(t_\epsilon)/\alpha(t_\epsilon) = \Delta/\sqrt{12}$ of uniform dequantisation (the log-SNR
$\lambda(t_\epsilon) = -2\log(\Delta/\sqrt{12})$, found by `process.time_at_log_snr`). Its
log-density at a dequantised $x + \Delta u$ is
$\log p_{t_\epsilon}(\alpha(x + \Delta u)) + d\log\alpha$; `sd.bits_per_dim` with
`dequantize=False` gives the rest. On the VP SDE $\alpha(t_\epsilon) = 0.9993$ and this is the main
table's PF-ODE number to 0.001 bits/dim; on the rectified flow $\alpha(t_\epsilon) = 0.965$, and
leaving out the $\alpha$ would score it 0.05 bits/dim too low.
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from .progress import progress_bar

#: examples per compiled PF-ODE call (the progress bar advances once per batch)
BATCH = 32
RTOL = 1e-4


class ModelScore(eqx.Module):
    """`model.score(process, t, x, *cond)` as a score function `(t, x)`."""

    model: sd.AbstractModel
    process: Any
    cond: tuple = ()

    def __call__(self, t, x):
        return self.model.score(self.process, t, x, *self.cond)


def matched_t_eps(process, levels: int, data_range=(-1.0, 1.0)) -> float:
    r"""$t_\epsilon$ with $\sigma/\alpha = \Delta/\sqrt{12}$ (the dequantisation noise)."""
    width = (data_range[1] - data_range[0]) / (levels - 1)
    lam = -2.0 * math.log(width / math.sqrt(12.0))
    return float(process.time_at_log_snr(jnp.asarray(lam, jnp.float32)))


@eqx.filter_jit
def _bpd_batch(process, model, xs, conds, keys, t_eps, levels: int):
    width = 2.0 / (levels - 1)

    def one(key, x, cond):
        k_u, k_probe = jax.random.split(key)
        u = jax.random.uniform(k_u, x.shape, x.dtype, minval=-0.5, maxval=0.5)
        alpha = jnp.asarray(process.marginal(t_eps)[0], x.dtype)
        score = ModelScore(model, process, cond)
        bpd, stats = sd.bits_per_dim(
            process,
            score,
            alpha * (x + width * u),
            key=k_probe,
            levels=levels,
            dequantize=False,
            t_eps=t_eps,
            rtol=RTOL,
            atol=RTOL,
            return_stats=True,
        )
        return bpd - jnp.log2(alpha), stats["nfe"]

    return jax.vmap(one)(keys, xs, conds)


def bits_per_dim(
    process, model, xs, key, *, levels: int, cond=None, desc: str = "PF-ODE", progress=True
) -> dict:
    """Bits/dim of every row of `xs` (on the grid) under `model` on `process`, in batches of
    `BATCH` with a progress bar; `cond` is `None` or an int array of one label per row. The
    keys are `split(key, n)`, so two calls with the same key and rows draw the same
    dequantisation noise and probes: their difference is paired.

    Returns:
        `{"mean", "stderr", "nfe", "n", "t_eps", "values"}` (`values`: per-example bits/dim).
    """
    xs = jnp.asarray(xs, jnp.float32)
    n = xs.shape[0]
    keys = jax.random.split(key, n)
    labels = jnp.zeros((n,), jnp.int32) if cond is None else jnp.asarray(cond, jnp.int32)
    t_eps = matched_t_eps(process, levels)
    out, nfe = [], []
    with progress_bar(n, desc, "digit", progress) as bar:
        size = min(BATCH, n)
        for lo in range(0, n, size):
            idx = np.minimum(np.arange(lo, lo + size), n - 1)  # pad with the last row
            conds = () if cond is None else (labels[idx],)
            b, f = _bpd_batch(process, model, xs[idx], conds, keys[idx], t_eps, levels)
            k = min(size, n - lo)
            out.append(np.asarray(b)[:k])
            nfe.append(np.asarray(f)[:k])
            bar.update(k)
    values = np.concatenate(out).astype(np.float64)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "mean": float(values.mean()),
        "stderr": se,
        "nfe": float(np.mean(np.concatenate(nfe))),
        "n": int(n),
        "t_eps": t_eps,
        "values": values,
    }


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Mean and standard error of `b - a` per example (same rows, same keys)."""
    d = np.asarray(b["values"]) - np.asarray(a["values"])
    se = float(d.std(ddof=1) / math.sqrt(d.shape[0])) if d.shape[0] > 1 else float("nan")
    return float(d.mean()), se


def public(stats: dict) -> dict:
    """`stats` without the per-example values (for results.json)."""
    return {k: v for k, v in stats.items() if k != "values"}
