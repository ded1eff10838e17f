r"""A flow-matching model beside the diffusion model: same data, same network, same solvers.

The rectified flow `sd.RectifiedFlow()` ($x_t = (1 - t)x_0 + t\varepsilon$) is trained with
`sd.flow_matching_loss` (uniform $t$, target $u = \varepsilon - x_0$) and sampled as
`sd.VelocityModel(net)`. With `--net grid` (the digits' default) the velocity comes from the same
grid head as the diffusion model's eps: `sd.nn.GridEps` on the rectified flow gives
$\hat x_0(t, x)$, and $\hat u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon$ with
$\hat\varepsilon = (x - \alpha\hat x_0)/\sigma$, which is $(x - \hat x_0)/t$ on this path. Then
the two models differ only in the process and the loss's weighting, not in the architecture.

Both are compared by the PF-ODE bits/dim (`likelihood.bits_per_dim`, one convention for both)
and by samples at equal network evaluations: `sd.DPMSolver` of order 1 (DDIM; on the rectified
flow it is exactly Euler's method on $\dot x = \hat u$) and order 2, on the grids
`sd.grids.log_snr` of each process, from the same standard normal noise. A crude sample-quality
number is the Fréchet distance of the samples to the held-out digits in pixel space.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

from . import likelihood
from .conditional import stage_paths
from .config import Config
from .data import Dataset
from .progress import progress_bar
from .train import build_optimiser, train_checkpointed

#: the grid head's time floor: at t = 0 exactly (a draw of the uniform loss time) sigma = 0
T_MIN = 1e-4
#: where the samplers stop (both processes were trained down to it)
T_EPS = 1e-3


class GridVelocity(eqx.Module):
    r"""$\hat u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon$ from the grid head on `path`,
    with $t$ floored at `T_MIN`."""

    grid: sd.nn.GridEps
    path: sd.AbstractInterpolant

    def __call__(self, t, x):
        t = jnp.maximum(jnp.asarray(t, x.dtype), T_MIN)
        x0 = self.grid.x0(t, x)
        alpha, sigma = self.path.marginal(t)
        dalpha, dsigma = self.path.rates(t)
        eps = (x - alpha * x0) / sigma
        return (dalpha * x0 + dsigma * eps).astype(x.dtype)


def build_flow(cfg: Config, data: Dataset, rf, key):
    """The velocity network (float32 weights): the grid head with `--net grid`, else a residual
    MLP that predicts the velocity."""
    if cfg.net == "grid" and data.levels is not None:
        logits = sd.nn.MLP(
            data.dim,
            width=cfg.width,
            depth=cfg.depth,
            key=key,
            dtype=jnp.float32,
            out_size=data.dim * data.levels,
        )
        return GridVelocity(sd.nn.GridEps(logits, rf, data.levels), rf)
    return sd.nn.MLP(data.dim, width=cfg.width, depth=cfg.depth, key=key, dtype=jnp.float32)


def flow_loss(rf):
    """`sd.flow_matching_loss` per entry, averaged over a batch (uniform t)."""

    def loss_fn(model, key, batch):
        keys = jax.random.split(key, batch.shape[0])
        one = lambda k, x0: sd.flow_matching_loss(k, rf, model, x0) / x0.size
        return jnp.mean(jax.vmap(one)(keys, batch))

    return loss_fn


def train_flow(cfg: Config, data: Dataset, rf, key, log=print):
    """Train (resume, re-use) the flow-matching model; `(net, losses, seconds, reused)`."""
    k_init, k_train = jax.random.split(key)
    net = build_flow(cfg, data, rf, k_init)
    opt = build_optimiser(cfg, cfg.flow_steps)
    step = sd.nn.make_train_step(flow_loss(rf), opt, ema_decay=cfg.ema_decay)
    state, losses, seconds, reused = train_checkpointed(
        stage_paths(cfg, "flow"),
        cfg.stage_settings("flow"),
        sd.nn.init_train_state(net, opt),
        step,
        jnp.asarray(data.train, jnp.float32),
        k_train,
        num_steps=cfg.flow_steps,
        batch_size=cfg.batch_size,
        retrain=cfg.retrain,
        progress=cfg.progress,
        desc="training (flow matching)",
        log=log,
    )
    return state.ema, losses, seconds, reused


@eqx.filter_jit
def _draw(process, model, order: int, grid, z):
    """DPM-Solver samples from `sigma(T) z`, clipped to the data's box."""
    x_T = jnp.asarray(process.marginal(process.T)[1], z.dtype) * z
    solver = sd.DPMSolver(order=order)
    x = jax.vmap(lambda x: sd.sample(None, process, model, solver, grid, x).x)(x_T)
    return jnp.clip(x, -1.0, 1.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    r"""$\|\mu_a - \mu_b\|^2 + \operatorname{tr}(S_a + S_b - 2(S_a^{1/2}S_bS_a^{1/2})^{1/2})$ of
    two sets of rows (the FID formula, here on raw pixels). The trace of the square root is
    taken from the eigenvalues of the symmetric $S_a^{1/2}S_bS_a^{1/2}$, which stays exact
    where a covariance is singular (the digits' always-blank corner pixels)."""

    def sqrt_psd(s):
        w, v = np.linalg.eigh(s)
        return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrt_psd(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0.0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross)


SOLVERS = {1: "DPM-Solver-1 (DDIM; Euler on the flow)", 2: "DPM-Solver-2"}


@dataclasses.dataclass
class FlowComparison:
    """Diffusion against flow matching (Python numbers for JSON, arrays for the figure)."""

    bpd: dict[str, dict]  # model -> likelihood stats
    bpd_difference: tuple[float, float]  # flow - diffusion, paired mean and stderr
    samples: dict[str, dict[str, np.ndarray]]  # model -> setting -> (n, d)
    frechet: dict[str, dict[str, float]]  # model -> setting -> pixel FD to the held-out digits
    frechet_floor: float  # FD of as many training digits to the held-out digits
    settings: list[str]  # "DPM-Solver-2, NFE 10", ...


DIFFUSION, FLOW = "diffusion (VP SDE, eps-loss)", "flow matching (rectified flow)"
SHORT = {DIFFUSION: "diffusion", FLOW: "flow matching"}


def compare(cfg: Config, data: Dataset, sde, eps_net, rf, flow_net, key) -> FlowComparison:
    """Bits/dim and samples at equal NFE of the diffusion model and the flow-matching model."""
    assert data.levels is not None
    k_bpd, k_z = jax.random.split(key)
    models = {DIFFUSION: (sde, sd.EpsModel(eps_net)), FLOW: (rf, sd.VelocityModel(flow_net))}
    n = min(cfg.num_extra_ode, data.test.shape[0])
    bpd = {
        name: likelihood.bits_per_dim(
            proc,
            model,
            data.test[:n],
            k_bpd,
            levels=data.levels,
            desc=f"PF-ODE ({SHORT[name]})",
            progress=cfg.progress,
        )
        for name, (proc, model) in models.items()
    }
    diff = likelihood.paired(bpd[DIFFUSION], bpd[FLOW])

    z = jax.random.normal(k_z, (cfg.num_flow_samples, data.dim), jnp.float32)
    runs = [(o, nfe) for nfe in cfg.flow_nfe for o in cfg.flow_orders if nfe % o == 0]
    settings = [f"{SOLVERS[o].split(' (')[0]}, NFE {nfe}" for o, nfe in runs]
    samples: dict[str, dict[str, np.ndarray]] = {name: {} for name in models}
    frechet: dict[str, dict[str, float]] = {name: {} for name in models}
    total = len(runs) * len(models)
    with progress_bar(total, "samples at equal NFE", "run", cfg.progress) as bar:
        for (order, nfe), label in zip(runs, settings):
            for name, (proc, model) in models.items():
                grid = sd.grids.log_snr(proc, nfe // order, t_eps=T_EPS, dtype=jnp.float32)
                x = np.asarray(_draw(proc, model, order, grid, z))
                samples[name][label] = x
                frechet[name][label] = frechet_distance(x, data.test)
                bar.update(1)
    m = min(cfg.num_flow_samples, data.train.shape[0])
    floor = frechet_distance(data.train[:m], data.test)
    return FlowComparison(
        {k: likelihood.public(v) for k, v in bpd.items()}, diff, samples, frechet, floor, settings
    )
