"""Training the demo's eps-network: a progress bar, checksummed settings-hashed checkpoints,
and resumption after an interruption."""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import scoredyn as sd

from . import checkpoint
from .config import SEGMENT, Config
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
    """The finished and the in-progress checkpoint of `cfg`'s training settings. They live in
    `OUT/checkpoints/`, shared by every run folder: the name carries a hash of every setting that
    determines the weights, so sharing them is safe."""
    folder = pathlib.Path(cfg.out) / "checkpoints"
    h = cfg.training_hash()
    return folder / f"checkpoint-{h}.eqx", folder / f"checkpoint-{h}.partial.eqx"


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
    """Train, resume or re-use; return `(state, losses, seconds, reused)`.

    - A finished checkpoint with these settings and a valid checksum is re-used.
    - Otherwise an in-progress checkpoint resumes training from its last segment.
    - A checkpoint that fails its checksum (or does not fit the network) is reported, set aside
      and trained again.
    `--retrain` ignores both.
    """
    k_init, k_train = jax.random.split(key)
    model = build_network(cfg, data, sde, k_init)
    opt = build_optimiser(cfg)
    state = sd.nn.init_train_state(model, opt)
    final, partial = checkpoint_paths(cfg)
    if not cfg.retrain:
        if final.exists():
            try:
                state, info = checkpoint.load(final, state)
                log(f"re-using checkpoint {final} (trained {info['train_steps']} steps)")
                return state, np.asarray(info["losses"], np.float32), float(info["seconds"]), True
            except checkpoint.CheckpointError as e:
                log(f"refusing checkpoint {final}: {e}; training afresh")
                _set_aside(final)
    done, losses, seconds = 0, [], 0.0
    if partial.exists() and not cfg.retrain:
        try:
            state, info = checkpoint.load(partial, state)
            done, losses, seconds = info["steps_done"], info["losses"], info["seconds"]
            log(f"resuming from checkpoint {partial} at step {done} of {cfg.train_steps}")
        except checkpoint.CheckpointError as e:
            log(f"refusing checkpoint {partial}: {e}; training afresh")
            _set_aside(partial)
            state = sd.nn.init_train_state(model, opt)

    step = sd.nn.make_train_step(build_loss(cfg, sched, sde), opt, ema_decay=cfg.ema_decay)
    train_x = jnp.asarray(data.train, jnp.float32)
    chunk = 50 if cfg.train_steps >= 500 else 25
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.train_steps,
            initial=done,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            leave=True,
        )
    running = list(losses[-5:])

    def callback(_, chunk_losses):
        running.append(float(jnp.mean(chunk_losses)))
        if bar is not None:
            bar.update(chunk_losses.shape[0])
            bar.set_postfix(loss=f"{np.mean(running[-5:]):.4f}")

    try:
        while done < cfg.train_steps:
            t0 = time.perf_counter()
            size = min(SEGMENT, cfg.train_steps - done)
            state, seg_losses = sd.nn.fit(
                jax.random.fold_in(k_train, done // SEGMENT),
                state,
                step,
                train_x,
                num_steps=size,
                batch_size=cfg.batch_size,
                chunk=min(chunk, size),
                callback=callback,
            )
            done += size
            losses += [round(float(v), 6) for v in np.asarray(seg_losses)]
            seconds += time.perf_counter() - t0
            if done < cfg.train_steps:
                record = {"steps_done": done, "losses": losses, "seconds": seconds}
                checkpoint.save(partial, state, {**cfg.training_settings(), **record})
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        where = f"step {done}" if done else "the start"
        log(f"\ninterrupted: rerun the same command to resume from {where}")
        raise
    if bar is not None:
        bar.close()
    record = {"seconds": seconds, "losses": losses}
    checkpoint.save(final, state, {**cfg.training_settings(), **record})
    checkpoint.remove(partial)
    return state, np.asarray(losses, np.float32), seconds, False


def _set_aside(path: pathlib.Path) -> None:
    """Keep a refused checkpoint under a `.corrupt` name rather than deleting it: it is the
    user's file, and a later run must not pick it up again."""
    for p in (path, checkpoint.record_path(path)):
        if p.exists():
            p.replace(p.with_name(p.name + ".corrupt"))
