"""A small convolutional noise-prediction network for tiny images stored as flat vectors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import as_float, default_float
from ._mlp import TimeMLP, _zero_linear


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class _ConvBlock(eqx.Module):
    """Residual block: h + conv(silu(GN(conv(silu(GN h)) + U tau(t))))."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    time: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d

    def __init__(self, channels: int, width: int, *, key, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        g = _groups(channels)
        self.norm1 = eqx.nn.GroupNorm(g, channels, dtype=dtype)
        self.conv1 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k1, dtype=dtype)
        self.time = eqx.nn.Linear(width, channels, key=k2, dtype=dtype)
        self.norm2 = eqx.nn.GroupNorm(g, channels, dtype=dtype)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k3, dtype=dtype)

    def __call__(self, h, temb):
        y = self.conv1(jax.nn.silu(self.norm1(h))) + self.time(temb)[:, None, None]
        return h + self.conv2(jax.nn.silu(self.norm2(y)))


class ConvNet(eqx.Module):
    r"""A small residual convolutional $\hat\varepsilon_\theta(t, x)$ for tiny images (8x8 digits).

    The input is ONE flat vector of length $C H W$ (the library's convention), reshaped
    internally to `image_shape = (C, H, W)`. A $3\times3$ convolution lifts it to `channels`
    feature maps, `depth` residual blocks follow (GroupNorm, SiLU, $3\times3$ convolutions, the
    time vector $\tau(t)$ added per channel, as in the DDPM U-Net without down-sampling), and a
    zero-initialised $3\times3$ convolution maps back to $C$ channels, flattened to the input
    shape. As in [`MLP`][scoredyn.nn.MLP], a linear skip path with a time-dependent gain per
    channel, $g_c(t)\,x_c$, is added to that bounded output, so $\hat\varepsilon$ can follow
    $x/\sigma(t)$ where the data density is negligible. The untrained network predicts
    $\hat\varepsilon = 0$.

    Args:
        image_shape: `(C, H, W)`, or `(H, W)` for one channel.
        channels: feature maps in the hidden layers.
        depth: number of residual blocks.
        time_dim: sinusoidal time features.
        key: PRNG key.
        dtype: parameter dtype.
        time_scale: factor applied to $t$ before the sinusoidal features.

    Example:
        ```python
        net = sd.nn.ConvNet((8, 8), key=jax.random.key(0))
        net(0.1, jnp.zeros(64)).shape        # (64,)
        ```
    """

    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_mlp: TimeMLP
    conv_in: eqx.nn.Conv2d
    blocks: tuple[_ConvBlock, ...]
    out_norm: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    skip_gain: eqx.nn.Linear

    def __init__(
        self,
        image_shape: tuple[int, ...] = (1, 8, 8),
        *,
        channels: int = 32,
        depth: int = 2,
        time_dim: int = 64,
        key: PRNGKeyArray,
        dtype=None,
        time_scale: float = 1000.0,
    ):
        shape = tuple(image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(
                f"`image_shape` must be (C, H, W) or (H, W) of positive ints, got {image_shape!r}."
            )
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive int, got {channels!r}.")
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative int, got {depth!r}.")
        dtype = default_float() if dtype is None else dtype
        kt, ki, ko, kg, *kb = jax.random.split(key, 4 + depth)
        c = shape[0]
        width = 4 * channels
        self.image_shape = shape  # pyright: ignore
        self.time_mlp = TimeMLP(time_dim, width, key=kt, dtype=dtype, scale=time_scale)
        self.conv_in = eqx.nn.Conv2d(c, channels, 3, padding=1, key=ki, dtype=dtype)
        self.blocks = tuple(_ConvBlock(channels, width, key=k, dtype=dtype) for k in kb)
        self.out_norm = eqx.nn.GroupNorm(_groups(channels), channels, dtype=dtype)
        conv_out = eqx.nn.Conv2d(channels, c, 3, padding=1, key=ko, dtype=dtype)
        conv_out = eqx.tree_at(lambda m: m.weight, conv_out, jnp.zeros_like(conv_out.weight))
        assert conv_out.bias is not None
        self.conv_out = eqx.tree_at(lambda m: m.bias, conv_out, jnp.zeros_like(conv_out.bias))
        self.skip_gain = _zero_linear(eqx.nn.Linear(width, c, key=kg, dtype=dtype))

    @property
    def data_dim(self) -> int:
        """$C H W$, the length of the flat input."""
        return math.prod(self.image_shape)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        if jnp.ndim(t) != 0:
            raise ValueError(f"`t` must be a scalar time, got shape {jnp.shape(t)}; use jax.vmap.")
        if jnp.shape(x) != (self.data_dim,):
            raise ValueError(
                f"`x` must be one flat image of shape ({self.data_dim},) for image_shape "
                f"{self.image_shape}, got {jnp.shape(x)}; use jax.vmap for a batch."
            )
        x = as_float(x, "x")  # integer data are promoted (the output is never truncated)
        dtype = self.conv_in.weight.dtype
        temb = self.time_mlp(jnp.asarray(t, dtype))
        img = jnp.asarray(x).astype(dtype).reshape(self.image_shape)
        h = self.conv_in(img)
        for block in self.blocks:
            h = block(h, temb)
        out = self.conv_out(jax.nn.silu(self.out_norm(h)))
        out = out + self.skip_gain(temb)[:, None, None] * img
        return out.reshape(-1).astype(jnp.result_type(x))
