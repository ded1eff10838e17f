"""Running a per-example function over a batch sharded across devices."""

from collections.abc import Callable

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_mesh(axis_name: str = "batch", devices=None) -> Mesh:
    """A one-dimensional mesh over `devices` (default: every device of the default backend)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must name at least one device.")
    return Mesh(np.asarray(devices), (axis_name,))


def sharded_vmap(
    fn: Callable,
    *,
    mesh: Mesh | None = None,
    axis_name: str = "batch",
    in_axes: int | None | tuple[int | None, ...] | list[int | None] = 0,
) -> Callable:
    r"""`jax.vmap(fn)` over the leading batch axis, with the batch split across devices.

    Each device runs `vmap(fn)` on its own slice of the batch inside `jax.shard_map`, so an
    adaptive solver (e.g. [`sample_ode`][scoredyn.sample_ode]) stops on each device as soon as
    *that device's* examples are done, rather than when the slowest example of the whole batch
    is. A batch whose size is not a multiple of the number of devices is padded (by repeating its
    last example) and the padding is dropped from the result. The result equals `jax.vmap(fn)`
    on one device, up to floating-point reassociation.

    Args:
        fn: a function of one example; its batched arguments are selected by `in_axes` as in
            `jax.vmap` (`0` or `None` per positional argument).
        mesh: a one-dimensional mesh (default [`batch_mesh`][scoredyn.batch_mesh] over all devices).
        axis_name: the mesh axis that carries the batch.
        in_axes: as for `jax.vmap`; only `0` (batched) and `None` (broadcast) are supported.

    Returns:
        A function taking the same arguments with a leading batch axis on the batched ones. It
        runs one compiled program with no collective in it (each device computes its own slice
        of the padded batch) and waits for it to finish before it drops the padding. A run-time
        check that fails inside `fn` on one device (an `equinox.error_if`, e.g. one `t > T` in
        the batch) therefore reaches Python as a `JaxRuntimeError` naming the argument; no
        device is left waiting in a collective for the failed one (which XLA would abort after
        a timeout, killing the process). Called inside an outer `jax.jit`, the whole is one
        program and that guarantee is the outer program's (it must not gather the result
        across devices after a failed check): call it eagerly, as in the example.

    Example:
        ```python
        keys = jax.random.split(jax.random.key(0), 4096)
        draw = sd.sharded_vmap(lambda k: sd.sample_ode(k, sde, score, (2,)))
        x = draw(keys)          # (4096, 2), computed on every device at once
        ```

    See the "Scaling out" page of the documentation.
    """
    mesh = batch_mesh(axis_name) if mesh is None else mesh
    if axis_name not in mesh.axis_names:
        raise ValueError(f"`axis_name` {axis_name!r} is not an axis of `mesh` {mesh.axis_names}.")
    ndev = mesh.shape[axis_name]

    def _axes(args):
        axes = (in_axes,) * len(args) if not isinstance(in_axes, (tuple, list)) else tuple(in_axes)
        if len(axes) != len(args):
            raise ValueError(f"`in_axes` has {len(axes)} entries for {len(args)} arguments.")
        for a in axes:
            if a not in (0, None):
                raise ValueError(f"`in_axes` entries must be 0 or None, got {a!r}.")
        sizes = {jax.tree_util.tree_leaves(x)[0].shape[0] for x, a in zip(args, axes) if a == 0}
        if len(sizes) != 1:
            raise ValueError(f"batched arguments must share one leading size, got sizes {sizes}.")
        (n,) = sizes
        return axes, n

    @jax.jit
    def padded_run(*args):
        # no collective in this program: a failed check on one device cannot leave another
        # waiting for it (the padding is dropped afterwards, once every device is done)
        axes, n = _axes(args)
        pad = (-n) % ndev

        def _pad(x):
            return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x

        padded = [jax.tree_util.tree_map(_pad, x) if a == 0 else x for x, a in zip(args, axes)]
        specs = tuple(P(axis_name) if a == 0 else P() for a in axes)
        body = jax.shard_map(
            jax.vmap(fn, in_axes=axes),
            mesh=mesh,
            in_specs=specs,
            out_specs=P(axis_name),
            check_vma=False,
        )
        placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(padded, specs)]
        return body(*placed)

    def run(*args):
        _, n = _axes(args)
        out = padded_run(*args)
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
            # inside the caller's jit: one program (see Returns)
            return jax.tree_util.tree_map(lambda y: y[:n], out)
        # wait for every device: a failed run-time check on any shard raises here, before
        # anything gathers the shards
        out = jax.block_until_ready(out)
        if (-n) % ndev == 0:
            return out
        return jax.tree_util.tree_map(lambda y: y[:n], out)

    return run
