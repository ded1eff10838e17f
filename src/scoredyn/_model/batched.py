r"""A network written for batches, used where scoredyn expects a network for one example.

Research code usually writes its networks for a batch, `net(t_batch, x_batch, *cond_batch)`
with `t_batch` of shape `(B,)`. scoredyn's models call `net(t, x, *cond)` for ONE example and
batch by `jax.vmap`. [`BatchedNet`][scoredyn.BatchedNet] bridges the two: called on one
example it calls `net` on a batch of one; under `jax.vmap` (so in
[`sample_batch`][scoredyn.sample_batch] or `jax.vmap(sd.sample)`) it calls `net` ONCE on the
whole batch, through a custom batching rule (`jax.custom_batching.custom_vmap`), instead of
letting `vmap` trace it with an extra batch axis. See
[batching](../performance.md#batches-which-path).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jaxtyping import Array


def _lead(a):
    return jnp.asarray(a)[None]


def _check_out(out, x: Array, what: str) -> Array:
    if jnp.shape(out) != x.shape:
        raise ValueError(
            f"BatchedNet: `net(t_batch, x_batch, *cond_batch)` must return an array shaped like "
            f"x_batch {x.shape} ({what}), got shape {jnp.shape(out)}."
        )
    return out


def _call(net, t, x, cond: tuple) -> Array:
    """`net` on one example, as a batch of one: `net(t[None], x[None], *cond[None])[0]`."""
    xb = x[None]
    out = net(_lead(t), xb, *jax.tree_util.tree_map(_lead, cond))
    return _check_out(out, xb, "a batch of one")[0]


class BatchedNet(eqx.Module):
    r"""A network for batches as a network for one example: `BatchedNet(net)(t, x, *cond)`.

    `net(t_batch, x_batch, *cond_batch)` takes the times as shape `(B,)`, the states as
    `(B, *shape)` and each condition leaf with a leading `B`, and returns `(B, *shape)`: the
    usual signature of research code. Wrapped, it is a one-example network for any model
    ([`EpsModel`][scoredyn.EpsModel], [`X0Model`][scoredyn.X0Model], ...):

    - called on one example, it calls `net` on a batch of one, `net(t[None], x[None], ...)[0]`;
    - under `jax.vmap` over `x` (and optionally `t` or `cond`), it calls `net` ONCE on the
      whole batch, with the unbatched arguments broadcast to the batch: the batched call of
      the research code, not a `vmap` trace of it. This is what
      [`sample_batch`][scoredyn.sample_batch] and `jax.vmap(sd.sample)` then run.

    The maths is unchanged as long as `net` treats the examples of a batch independently (no
    batch statistics; a network in evaluation mode). If the network's own arrays vary over the
    vmapped axis (an ensemble), the one-example call is vmapped instead. Differentiable in
    forward and reverse mode; under differentiation the derivative (and the value) come from
    the one-example call under `vmap`, so only the undifferentiated call is the whole-batch
    call.

    Args:
        net: the batched network, `(t_batch, x_batch, *cond_batch) -> (B, *shape)`; an
            `eqx.Module` if it carries arrays (so that they stay inputs of the program).

    Raises:
        ValueError: if `net` returns an array not shaped like its `x_batch`.

    Example:
        ```python
        def batch_net(t, x):                     # t: (B,), x: (B, 2)
            return jnp.tanh(x) * t[:, None]
        model = sd.EpsModel(sd.BatchedNet(batch_net))
        model.eps(sd.VPSDE(), 0.5, jnp.ones(2))  # one example: a batch of one
        ```
    """

    net: Callable[..., Array]

    def __check_init__(self):
        if not callable(self.net):
            raise TypeError(
                f"`net` of BatchedNet must be callable (t_batch, x_batch, *cond) -> array, "
                f"got {self.net!r}."
            )

    def __call__(self, t, x, *cond):
        dyn, static = eqx.partition(self.net, eqx.is_array)

        def one(dyn, t, x, cond):
            return _call(eqx.combine(dyn, static), t, x, cond)

        f = custom_vmap(one)

        @f.def_vmap
        def _rule(axis_size, in_batched, dyn, t, x, cond):
            dyn_b, t_b, x_b, cond_b = in_batched
            if any(jax.tree_util.tree_leaves(dyn_b)):
                # the network itself varies over this axis (an ensemble): vmap the one call
                axes = jax.tree_util.tree_map(lambda b: 0 if b else None, in_batched)
                return jax.vmap(one, in_axes=tuple(axes))(dyn, t, x, cond), True

            def full(a, batched):
                a = jnp.asarray(a)
                return a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))

            t, x = full(t, t_b), full(x, x_b)
            cond = jax.tree_util.tree_map(full, cond, cond_b)
            out = eqx.combine(dyn, static)(t, x, *cond)
            return _check_out(out, x, "the batch"), True

        # Differentiation sees the plain one-example call (custom_vmap has no reverse mode):
        # under AD the batch is `vmap`ped, not passed to `net` whole; the values are the same.
        g = jax.custom_jvp(f)
        g.defjvp(lambda primals, tangents: jax.jvp(one, primals, tangents))
        return g(dyn, jnp.asarray(t), jnp.asarray(x), tuple(cond))
