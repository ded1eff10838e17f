"""An optax training step for equinox score networks, with an EMA of the weights."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_data_rows, real_float
from .._discrete import diffusion_loss

LossFn = Callable[[PyTree, PRNGKeyArray, Array], Float[Array, ""]]


class TrainState(eqx.Module):
    """Everything a training run carries from step to step (a pytree: checkpoint it whole).

    Attributes:
        model: the network being trained.
        opt_state: the optax state of the optimiser, over the model's floating arrays.
        ema: an exponential moving average of `model` (same structure), or `None`.
        step: the number of optimiser steps taken (int array).
    """

    model: PyTree
    opt_state: PyTree
    ema: PyTree | None
    step: Array


def init_train_state(
    model: PyTree, optimiser: optax.GradientTransformation, *, ema: bool = True
) -> TrainState:
    """Start a [`TrainState`][scoredyn.nn.TrainState]: optimiser state over the floating arrays of
    `model`, an EMA copy of the model (when `ema`), and a zero step counter."""
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(model, opt_state, model if ema else None, jnp.zeros((), jnp.int32))


def ema_update(ema: PyTree, model: PyTree, decay: Float[ArrayLike, ""]) -> PyTree:
    r"""One step of the exponential moving average of the weights,
    $\bar\theta \leftarrow \delta\,\bar\theta + (1 - \delta)\,\theta$, on every floating array
    of `model` (other leaves are taken from `model`).

    Args:
        ema: the running average, a pytree like `model`.
        model: the current weights $\theta$.
        decay: $\delta \in [0, 1]$; $\delta = 0$ copies `model`, $\delta = 1$ freezes `ema`.

    Returns:
        The new average, structured like `model`.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    avg = eqx.filter(ema, eqx.is_inexact_array)
    new = jax.tree_util.tree_map(
        lambda a, p: (decay * a + (1 - decay) * p).astype(p.dtype), avg, params
    )
    return eqx.combine(new, static)


def make_train_step(
    loss_fn: LossFn,
    optimiser: optax.GradientTransformation,
    *,
    ema_decay: float | None = 0.999,
    ema_warmup: bool = True,
) -> Callable[[TrainState, PRNGKeyArray, Any], tuple[TrainState, Float[Array, ""]]]:
    r"""Build a jitted training step `step(state, key, batch) -> (state, loss)`.

    The step computes `loss, grads = eqx.filter_value_and_grad(loss_fn)(model, key, batch)`
    (gradients with respect to the floating arrays of the model only), applies the optax update,
    and, when `ema_decay` is given, updates the moving average of the weights with
    $\delta_k = \min\big(\delta, \tfrac{1 + k}{10 + k}\big)$ at step $k$ (the warm-up lets a short
    run's average forget the random initialisation; `ema_warmup=False` uses $\delta$ throughout).

    Args:
        loss_fn: `loss_fn(model, key, batch) -> scalar`, e.g. from
            [`diffusion_batch_loss`][scoredyn.nn.diffusion_batch_loss].
        optimiser: any `optax.GradientTransformation`.
        ema_decay: $\delta$, or `None` for no moving average (the state's `ema` is then kept as is).
        ema_warmup: use the warm-up schedule above.

    Returns:
        The step, wrapped in `eqx.filter_jit` (compiled once per batch shape). It is a pure
        function and can also be called inside `jax.lax.scan` (see [`fit`][scoredyn.nn.fit]).

    Example:
        ```python
        opt = optax.adam(1e-3)
        state = sd.nn.init_train_state(net, opt)
        step = sd.nn.make_train_step(sd.nn.diffusion_batch_loss(sched), opt)
        state, loss = step(state, key, batch)            # batch: (B, d)
        ```
    """
    if ema_decay is not None and not 0.0 <= real_float(ema_decay, "ema_decay") <= 1.0:
        raise ValueError(f"`ema_decay` must lie in [0, 1] or be None, got {ema_decay}.")

    @eqx.filter_jit
    def step(state: TrainState, key: PRNGKeyArray, batch) -> tuple[TrainState, Array]:
        loss, grads = eqx.filter_value_and_grad(loss_fn)(state.model, key, batch)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        updates, opt_state = optimiser.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        ema = state.ema
        if ema_decay is not None and ema is not None:
            k = state.step.astype(loss.dtype)
            decay = jnp.asarray(ema_decay, loss.dtype)
            if ema_warmup:
                decay = jnp.minimum(decay, (1.0 + k) / (10.0 + k))
            ema = ema_update(ema, model, decay)
        return TrainState(model, opt_state, ema, state.step + 1), loss

    return step


@eqx.filter_jit
def _run_chunk(step, batch_size: int, state: TrainState, keys, data):
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(carry, key):
        st = eqx.combine(carry, static)
        k_idx, k_loss = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        st, loss = step(st, k_loss, data[idx])
        return eqx.partition(st, eqx.is_array)[0], loss

    arrays, losses = jax.lax.scan(body, arrays, keys)
    return eqx.combine(arrays, static), losses


def fit(
    key: PRNGKeyArray,
    state: TrainState,
    step: Callable,
    data: Float[ArrayLike, "n ..."],
    *,
    num_steps: int,
    batch_size: int,
    chunk: int = 100,
    callback: Callable[[int, Array], None] | None = None,
) -> tuple[TrainState, Float[Array, " num_steps"]]:
    r"""Run `num_steps` training steps on minibatches drawn from `data`.

    Each step draws `batch_size` rows of `data` uniformly with replacement. Steps run in
    `jax.lax.scan` chunks of `chunk` steps per compiled call (the Python overhead is paid once per
    chunk, not per step); after each chunk `callback(steps_done, chunk_losses)` runs, e.g. to
    advance a progress bar. For a fixed `key` the run is deterministic.

    Args:
        key: PRNG key.
        state: from [`init_train_state`][scoredyn.nn.init_train_state].
        step: from [`make_train_step`][scoredyn.nn.make_train_step] (or any pure function
            `(state, key, batch) -> (state, loss)`).
        data: training set, one example per row.
        num_steps: number of steps ($\ge 1$).
        batch_size: examples per step ($\ge 1$).
        chunk: steps per compiled call.
        callback: optional `callback(steps_done, losses_of_this_chunk)`.

    Returns:
        `(state, losses)`, with the loss of every step.

    Raises:
        ValueError: for non-positive `num_steps`, `batch_size` or `chunk`, empty `data`, or
            `data` with a NaN or infinite entry (naming the first bad row).
    """
    for name, v in (("num_steps", num_steps), ("batch_size", batch_size), ("chunk", chunk)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    data = jnp.asarray(data)
    if data.ndim < 1 or data.shape[0] < 1:
        raise ValueError(f"`data` must have at least one row, got shape {data.shape}.")
    # a NaN row would turn the loss, and then every weight, into NaN without a word
    data = check_data_rows(data, "data")
    keys = jax.random.split(key, num_steps)
    losses = []
    done = 0
    while done < num_steps:
        size = min(chunk, num_steps - done)
        state, chunk_losses = _run_chunk(step, batch_size, state, keys[done : done + size], data)
        done += size
        losses.append(chunk_losses)
        if callback is not None:
            callback(done, chunk_losses)
    return state, jnp.concatenate(losses)


# --------------------------------------------------------------------------- losses
def diffusion_batch_loss(schedule, *, per_entry: bool = True, **loss_kwargs) -> LossFn:
    r"""The minibatch training loss `loss_fn(model, key, batch)` for a schedule or linear SDE.

    It averages [`sd.diffusion_loss`][scoredyn.diffusion_loss] over the rows of `batch` (each
    row gets its own key). With the default eps-prediction and uniform weighting this is the
    DDPM loss $\mathbb E_{n, \varepsilon}\,\|\varepsilon - \hat\varepsilon_\theta(t_n, x_n)\|^2$,
    $x_n = \alpha_n x_0 + \sigma_n\varepsilon$, $n \sim \mathcal U\{1..N\}$. With
    `per_entry=True` it is divided by the number of entries $d$ of one example, so an
    untrained network ($\hat\varepsilon = 0$) scores $\mathbb E\|\varepsilon\|^2/d = 1$
    whatever $d$ (Adam's updates do not depend on this constant factor).

    Args:
        schedule: a [`DiscreteSchedule`][scoredyn.DiscreteSchedule] or a linear SDE.
        per_entry: divide by the number of entries of one example.
        **loss_kwargs: passed to `sd.diffusion_loss` (`prediction`, `weighting`,
            `time_sampling`, `t_eps`, ...).

    Returns:
        `loss_fn(model, key, batch) -> scalar`, for
        [`make_train_step`][scoredyn.nn.make_train_step].
    """

    def per_example(key, model, x0):
        loss = diffusion_loss(key, schedule, model, x0, **loss_kwargs)
        return loss / x0.size if per_entry else loss

    def loss_fn(model, key, batch):
        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(per_example, (0, None, 0))(keys, model, batch))

    return loss_fn
