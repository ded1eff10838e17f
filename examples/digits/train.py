"""Training the demo's eps-network, with a progress bar and settings-hashed checkpoints."""

import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import scoredyn as sd

from .config import Config
from .data import Dataset


def build_network(cfg: Config, data: Dataset, sde, key):
    """The eps-network for `cfg` (float32 weights, whatever the global x64 setting)."""
    if cfg.net == "grid":
        if data.levels is None or data.data_range is None:
            raise ValueError("the grid head needs data on a grid (--data digits)")
        logits = sd.nn.MLP(
            data.dim,
            width=cfg.width,
            depth=cfg.depth,
            key=key,
            dtype=jnp.float32,
            out_size=data.dim * data.levels,
        )
        return sd.nn.GridEps(logits, sde, data.levels, *data.data_range)
    if cfg.net == "conv":
        if data.image_shape is None:
            raise ValueError("the conv net needs image data")
        return sd.nn.ConvNet(
            data.image_shape,
            channels=max(cfg.width // 4, 8),
            depth=cfg.depth,
            key=key,
            dtype=jnp.float32,
        )
    return sd.nn.MLP(data.dim, width=cfg.width, depth=cfg.depth, key=key, dtype=jnp.float32)


def build_optimiser(cfg: Config) -> optax.GradientTransformation:
    """Adam with a linear warm-up and cosine decay to 5% of the peak rate."""
    warmup = min(200, max(cfg.train_steps // 10, 1))
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup, max(cfg.train_steps, warmup + 1), end_value=0.05 * cfg.lr
    )
    return optax.adam(sched)


def checkpoint_paths(cfg: Config) -> tuple[pathlib.Path, pathlib.Path]:
    folder = pathlib.Path(cfg.out) / cfg.run_name
    h = cfg.training_hash()
    return folder / f"checkpoint-{h}.eqx", folder / f"checkpoint-{h}.json"


def build_loss(cfg: Config, sched, sde):
    """The minibatch loss: DDPM's uniform eps-loss on the schedule, or the likelihood-weighted
    eps-loss on the SDE with times drawn uniformly in the log-SNR (Song et al. 2021b)."""
    if cfg.weighting == "likelihood":
        t_eps = 0.5 * float(sched.time(1))
        return sd.nn.diffusion_batch_loss(
            sde, weighting="likelihood", time_sampling="importance", t_eps=t_eps
        )
    return sd.nn.diffusion_batch_loss(sched)


def train(cfg: Config, data: Dataset, sched, sde, key, log=print):
    """Train (or re-use a checkpoint); return `(state, losses, seconds, reused)`.

    The checkpoint file name carries a hash of every setting that determines the weights
    (data, seed, network, optimiser, steps, schedule, library version), so a run with the same
    settings re-uses it and any change trains afresh.
    """
    k_init, k_train = jax.random.split(key)
    model = build_network(cfg, data, sde, k_init)
    opt = build_optimiser(cfg)
    state = sd.nn.init_train_state(model, opt)
    ckpt, meta = checkpoint_paths(cfg)
    if ckpt.exists() and meta.exists() and not cfg.retrain:
        try:
            state = eqx.tree_deserialise_leaves(ckpt, state)
            info = json.loads(meta.read_text())
            log(f"re-using checkpoint {ckpt} (trained {info['train_steps']} steps)")
            return state, np.asarray(info["losses"], np.float32), float(info["seconds"]), True
        except Exception as e:  # a stale or corrupt file: train again
            log(f"could not read {ckpt} ({e}); training afresh")

    step = sd.nn.make_train_step(build_loss(cfg, sched, sde), opt, ema_decay=cfg.ema_decay)
    train_x = jnp.asarray(data.train, jnp.float32)
    chunk = 50 if cfg.train_steps >= 500 else 25
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.train_steps, desc="training", unit="step", dynamic_ncols=True, leave=True
        )
    running = []

    def callback(done, losses):
        running.append(float(jnp.mean(losses)))
        if bar is not None:
            bar.update(losses.shape[0])
            bar.set_postfix(loss=f"{np.mean(running[-5:]):.4f}")

    t0 = time.perf_counter()
    state, losses = sd.nn.fit(
        k_train,
        state,
        step,
        train_x,
        num_steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        chunk=chunk,
        callback=callback,
    )
    losses = np.asarray(losses)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(ckpt, state)
    meta.write_text(
        json.dumps(
            {
                **cfg.training_settings(),
                "seconds": seconds,
                "losses": [round(float(v), 6) for v in losses],
            }
        )
    )
    return state, losses, seconds, False
