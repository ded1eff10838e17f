"""Training the demo's networks (the eps-network here, the conditional and flow-matching models
through `train_checkpointed` too): a progress bar, checksummed settings-hashed checkpoints, and
resumption after an interruption."""

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


def build_optimiser(cfg: Config, steps: int | None = None) -> optax.GradientTransformation:
    """Adam with a linear warm-up and cosine decay to 5% of the peak rate `cfg.lr` over `steps`
    (default: the main network's `cfg.train_steps`)."""
    steps = cfg.train_steps if steps is None else steps
    warmup = min(200, max(steps // 10, 1))
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup, max(steps, warmup + 1), end_value=0.05 * cfg.lr
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
    """Train, resume or re-use the main eps-network; return `(state, losses, seconds, reused)`.

    See `train_checkpointed` for what happens to checkpoints; `--retrain` ignores them.
    """
    k_init, k_train = jax.random.split(key)
    model = build_network(cfg, data, sde, k_init)
    opt = build_optimiser(cfg)
    step = sd.nn.make_train_step(build_loss(cfg, sched, sde), opt, ema_decay=cfg.ema_decay)
    return train_checkpointed(
        checkpoint_paths(cfg),
        cfg.training_settings(),
        sd.nn.init_train_state(model, opt),
        step,
        jnp.asarray(data.train, jnp.float32),
        k_train,
        num_steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        retrain=cfg.retrain,
        progress=cfg.progress,
        desc="training",
        log=log,
    )


def train_checkpointed(
    paths: tuple[pathlib.Path, pathlib.Path],
    settings: dict,
    state,
    step,
    train_x,
    key,
    *,
    num_steps: int,
    batch_size: int,
    retrain: bool = False,
    progress: bool = True,
    desc: str = "training",
    log=print,
):
    """Run `num_steps` of `step` from `state`, or resume or re-use a checkpoint of the same
    settings; return `(state, losses, seconds, reused)`. Every trained model of the demo goes
    through here.

    - A finished checkpoint (`paths[0]`) with a valid checksum is re-used.
    - Otherwise an in-progress checkpoint (`paths[1]`) resumes training from its last segment.
    - A checkpoint that fails its checksum (or does not fit the network) is reported, set aside
      and trained again.
    `retrain` ignores both. Training runs in segments of `SEGMENT` steps, the segment `s` with
    the key `fold_in(key, s)`, so a resumed run ends with the weights of an uninterrupted one.
    `settings` (what determines the weights) is stored in the checkpoint's record.
    """
    final, partial = paths
    fresh = state
    if not retrain:
        if final.exists():
            try:
                state, info = checkpoint.load(final, state)
                steps = info.get("train_steps", num_steps)
                log(f"re-using checkpoint {final} (trained {steps} steps)")
                return state, np.asarray(info["losses"], np.float32), float(info["seconds"]), True
            except checkpoint.CheckpointError as e:
                log(f"refusing checkpoint {final}: {e}; training afresh")
                _set_aside(final)
    done, losses, seconds = 0, [], 0.0
    if partial.exists() and not retrain:
        try:
            state, info = checkpoint.load(partial, state)
            done, losses, seconds = info["steps_done"], info["losses"], info["seconds"]
            log(f"resuming from checkpoint {partial} at step {done} of {num_steps}")
        except checkpoint.CheckpointError as e:
            log(f"refusing checkpoint {partial}: {e}; training afresh")
            _set_aside(partial)
            state = fresh

    chunk = 50 if num_steps >= 500 else 25
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=num_steps,
            initial=done,
            desc=desc,
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
        while done < num_steps:
            t0 = time.perf_counter()
            size = min(SEGMENT, num_steps - done)
            state, seg_losses = sd.nn.fit(
                jax.random.fold_in(key, done // SEGMENT),
                state,
                step,
                train_x,
                num_steps=size,
                batch_size=batch_size,
                chunk=min(chunk, size),
                callback=callback,
            )
            done += size
            losses += [round(float(v), 6) for v in np.asarray(seg_losses)]
            seconds += time.perf_counter() - t0
            if done < num_steps:
                record = {"steps_done": done, "losses": losses, "seconds": seconds}
                checkpoint.save(partial, state, {**settings, **record})
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        where = f"step {done}" if done else "the start"
        log(f"\ninterrupted: rerun the same command to resume from {where}")
        raise
    if bar is not None:
        bar.close()
    record = {"seconds": seconds, "losses": losses}
    checkpoint.save(final, state, {**settings, **record})
    checkpoint.remove(partial)
    return state, np.asarray(losses, np.float32), seconds, False


def _set_aside(path: pathlib.Path) -> None:
    """Keep a refused checkpoint under a `.corrupt` name rather than deleting it: it is the
    user's file, and a later run must not pick it up again."""
    for p in (path, checkpoint.record_path(path)):
        if p.exists():
            p.replace(p.with_name(p.name + ".corrupt"))
