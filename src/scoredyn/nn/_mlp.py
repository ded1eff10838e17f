"""Residual MLP noise-prediction networks with a time embedding."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import as_float, default_float
from ._embedding import SinusoidalEmbedding

# softplus^{-1}(1): the second head starts at E[eps^2 | x] = 1, the value for pure noise.
_SOFTPLUS_INV_ONE = 0.5413248546129181


def _check_dim(data_dim, name="data_dim"):
    if not isinstance(data_dim, int) or data_dim < 1:
        raise ValueError(f"`{name}` must be a positive int, got {data_dim!r}.")


def _check_size(width: int, depth: int, time_dim: int):
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive int, got {width!r}.")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"`depth` must be a non-negative int, got {depth!r}.")
    if not isinstance(time_dim, int) or time_dim < 2 or time_dim % 2:
        raise ValueError(f"`time_dim` must be an even int >= 2, got {time_dim!r}.")


def _zero_linear(lin: eqx.nn.Linear, bias: float = 0.0) -> eqx.nn.Linear:
    """`lin` with zero weights and a constant bias (an output layer that starts at `bias`)."""
    assert lin.bias is not None, "_zero_linear needs a Linear with a bias"
    new_bias = jnp.full_like(lin.bias, bias)
    lin = eqx.tree_at(lambda m: m.weight, lin, jnp.zeros_like(lin.weight))
    return eqx.tree_at(lambda m: m.bias, lin, new_bias)


class TimeMLP(eqx.Module):
    r"""Sinusoidal features of $t$ followed by a two-layer SiLU MLP: $t \mapsto \tau(t) \in
    \mathbb R^{w}$, the time vector that every block of the networks adds to its activations."""

    embedding: SinusoidalEmbedding
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, time_dim: int, width: int, *, key: PRNGKeyArray, dtype=None, scale=1000.0):
        k1, k2 = jax.random.split(key)
        self.embedding = SinusoidalEmbedding(time_dim, scale=scale)
        self.lin1 = eqx.nn.Linear(time_dim, width, key=k1, dtype=dtype)
        self.lin2 = eqx.nn.Linear(width, width, key=k2, dtype=dtype)

    def __call__(self, t: Float[ArrayLike, ""]) -> Float[Array, " width"]:
        e = self.embedding(t, dtype=self.lin1.weight.dtype)
        return self.lin2(jax.nn.silu(self.lin1(e)))


class _ResBlock(eqx.Module):
    """Pre-norm residual block: h + W2 silu(W1 silu(LN h) + U tau(t))."""

    norm: eqx.nn.LayerNorm
    lin1: eqx.nn.Linear
    time: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, width: int, *, key, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.lin1 = eqx.nn.Linear(width, width, key=k1, dtype=dtype)
        self.time = eqx.nn.Linear(width, width, key=k2, dtype=dtype)
        self.lin2 = eqx.nn.Linear(width, width, key=k3, dtype=dtype)

    def __call__(self, h, temb):
        y = self.lin1(jax.nn.silu(self.norm(h))) + self.time(temb)
        return h + self.lin2(jax.nn.silu(y))


class _Trunk(eqx.Module):
    """Shared body: input projection, time MLP and residual blocks, ending in a final norm."""

    data_dim: int = eqx.field(static=True)
    time_mlp: TimeMLP
    inp: eqx.nn.Linear
    blocks: tuple[_ResBlock, ...]
    out_norm: eqx.nn.LayerNorm

    def __init__(self, data_dim, width, depth, time_dim, *, key, dtype, time_scale):
        _check_dim(data_dim)
        _check_size(width, depth, time_dim)
        kt, ki, *kb = jax.random.split(key, 2 + depth)
        self.data_dim = data_dim
        self.time_mlp = TimeMLP(time_dim, width, key=kt, dtype=dtype, scale=time_scale)
        self.inp = eqx.nn.Linear(data_dim, width, key=ki, dtype=dtype)
        self.blocks = tuple(_ResBlock(width, key=k, dtype=dtype) for k in kb)
        self.out_norm = eqx.nn.LayerNorm(width, dtype=dtype)

    def __call__(self, t, x):
        return self.features(t, x)[0]

    def features(self, t, x):
        r"""The final features $\mathrm{silu}(\mathrm{LN}(h_L))$ and the time vector $\tau(t)$."""
        if jnp.ndim(t) != 0:
            raise ValueError(f"`t` must be a scalar time, got shape {jnp.shape(t)}; use jax.vmap.")
        if jnp.shape(x) != (self.data_dim,):
            raise ValueError(
                f"`x` must have shape (data_dim,) = ({self.data_dim},), got {jnp.shape(x)}; "
                "the network is written for one example, use jax.vmap for a batch."
            )
        dtype = self.inp.weight.dtype
        temb = self.time_mlp(jnp.asarray(t, dtype))
        h = self.inp(jnp.asarray(x).astype(dtype)) + temb
        for block in self.blocks:
            h = block(h, temb)
        return jax.nn.silu(self.out_norm(h)), temb


class MLP(eqx.Module):
    r"""A residual MLP noise-prediction network $\hat\varepsilon_\theta(t, x)$ for vectors.

    The time $t \in [0, 1]$ enters through sinusoidal features and a small MLP,
    $\tau(t)$ (see [`SinusoidalEmbedding`][scoredyn.nn.SinusoidalEmbedding]). With
    $h_0 = W_{\mathrm{in}} x + \tau(t)$, each of the `depth` pre-norm residual blocks computes

    $$h_{i+1} = h_i
      + W_2\,\mathrm{silu}\big(W_1\,\mathrm{silu}(\mathrm{LN}(h_i)) + U_i\,\tau(t)\big),$$

    and the output is

    $$\hat\varepsilon = W_{\mathrm{out}}\,\mathrm{silu}(\mathrm{LN}(h_L))
      + g(t) \odot x, \qquad g(t) = G\,\tau(t) + c .$$

    The first term is bounded in $x$ (a layer norm sits before it). The second, a linear skip
    path with a time-dependent gain per coordinate, is not. It lets the network follow
    $\hat\varepsilon \approx x / \sigma(t)$ wherever the data density is negligible, which is
    what the exact noise prediction does at large $|x|$ and at $t = T$. A bounded head cannot
    do that: its error, amplified by $1/\alpha(T)$, throws deterministic samplers' samples far
    out. Both layers start at zero, so the untrained network predicts $\hat\varepsilon = 0$ (the
    optimum for pure data, $t = 0$) and its loss starts at $\mathbb E\|\varepsilon\|^2/d = 1$.
    The skip exists only when the output is an eps (`out_size` equal to `data_dim`).

    The call signature is the library's vector-field convention, `net(t, x) -> array like x`,
    for ONE example `x` of shape `(data_dim,)`; batch with `jax.vmap(net, (0, 0))` or
    `jax.vmap(net, (None, 0))`. Any sampler or bound that takes an `eps_fn` takes the network.
    For a discrete schedule the library calls it at $t = n / N$.

    Args:
        data_dim: $d$, the length of `x`.
        width: hidden width.
        depth: number of residual blocks.
        time_dim: number of sinusoidal time features (even).
        key: PRNG key for the initial weights.
        dtype: parameter dtype (default: float64 under x64, else float32). The output is cast
            to the dtype of `x`.
        time_scale: factor applied to $t$ before the sinusoidal features.
        out_size: length of the output (default $d$: an eps-network). Another size gives a
            general feature network, e.g. the level logits of
            [`GridEps`][scoredyn.nn.GridEps].

    Example:
        ```python
        net = sd.nn.MLP(2, width=128, depth=2, key=jax.random.key(0))
        net(0.5, jnp.zeros(2)).shape                      # (2,)
        jax.vmap(net)(ts, xs)                               # (batch, 2)
        ```
    """

    trunk: _Trunk
    out: eqx.nn.Linear
    skip_gain: eqx.nn.Linear | None

    def __init__(
        self,
        data_dim: int,
        *,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        key: PRNGKeyArray,
        dtype=None,
        time_scale: float = 1000.0,
        out_size: int | None = None,
    ):
        dtype = default_float() if dtype is None else dtype
        _check_dim(data_dim)
        out_size = data_dim if out_size is None else out_size
        _check_dim(out_size, "out_size")
        kt, ko, kg = jax.random.split(key, 3)
        self.trunk = _Trunk(
            data_dim, width, depth, time_dim, key=kt, dtype=dtype, time_scale=time_scale
        )
        self.out = _zero_linear(eqx.nn.Linear(width, out_size, key=ko, dtype=dtype))
        self.skip_gain = (
            _zero_linear(eqx.nn.Linear(width, data_dim, key=kg, dtype=dtype))
            if out_size == data_dim
            else None
        )

    @property
    def data_dim(self) -> int:
        """$d$, the length of `x`."""
        return self.trunk.data_dim

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " out"]:
        x = as_float(x, "x")  # integer data are promoted (the output is never truncated)
        h, temb = self.trunk.features(t, x)
        y = self.out(h)
        if self.skip_gain is not None:
            y = y + self.skip_gain(temb) * jnp.asarray(x).astype(y.dtype)
        return y.astype(jnp.result_type(x))


class TwoHeadMLP(eqx.Module):
    r"""An [`MLP`][scoredyn.nn.MLP] with two heads on one trunk: $\hat\varepsilon_\theta(t, x)$ and
    a positive second-moment head $h_\theta(t, x) > 0$, as used by SN-DPM and NPR-DPM.

    Extended Analytic-DPM (Bao et al. 2022) learns a per-dimension second moment next to the
    noise prediction: SN-DPM regresses $h \approx \mathbb E[\varepsilon^2 \mid x_n]$ and NPR-DPM
    regresses $h \approx \mathbb E[(\varepsilon - \hat\varepsilon(x_n))^2 \mid x_n]$ (squares
    elementwise). This class only supplies the architecture; the regression target and loss
    live in `scoredyn.analytic`. The second head is

    $$h_\theta(t, x) = \mathrm{softplus}\big(V_{\mathrm{out}}\,\mathrm{silu}(\mathrm{LN}(h_L))
        + b\big),$$

    with $V_{\mathrm{out}} = 0$ and $b = \mathrm{softplus}^{-1}(1)$ at initialisation, so it starts
    at $1$, the value of $\mathbb E[\varepsilon^2\mid x]$ for pure noise.

    Calling the module returns $\hat\varepsilon$ (so it is an `eps_fn`); `.eps(t, x)`,
    `.second(t, x)` and `.both(t, x)` give the heads separately or together (one trunk pass).
    `stop_gradient_trunk=True` in `.second` trains the second head alone on a frozen trunk, as
    the Extended-Analytic-DPM paper does with a pretrained noise network.

    Args:
        data_dim: $d$, the length of `x`.
        width: hidden width, as for [`MLP`][scoredyn.nn.MLP].
        depth: number of residual blocks.
        time_dim: number of sinusoidal time features (even).
        key: PRNG key.
        dtype: parameter dtype.
        time_scale: factor applied to $t$ before the sinusoidal features.

    Example:
        ```python
        net = sd.nn.TwoHeadMLP(2, key=jax.random.key(0))
        eps, h = net.both(0.3, x)        # both (2,), h > 0
        ```
    """

    trunk: _Trunk
    eps_out: eqx.nn.Linear
    second_out: eqx.nn.Linear

    def __init__(
        self,
        data_dim: int,
        *,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        key: PRNGKeyArray,
        dtype=None,
        time_scale: float = 1000.0,
    ):
        dtype = default_float() if dtype is None else dtype
        kt, ke, ks = jax.random.split(key, 3)
        self.trunk = _Trunk(
            data_dim, width, depth, time_dim, key=kt, dtype=dtype, time_scale=time_scale
        )
        self.eps_out = _zero_linear(eqx.nn.Linear(width, data_dim, key=ke, dtype=dtype))
        self.second_out = _zero_linear(
            eqx.nn.Linear(width, data_dim, key=ks, dtype=dtype), _SOFTPLUS_INV_ONE
        )

    @property
    def data_dim(self) -> int:
        """$d$, the length of `x`."""
        return self.trunk.data_dim

    def both(self, t, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        r"""$(\hat\varepsilon_\theta(t, x),\ h_\theta(t, x))$ from one trunk pass."""
        x = as_float(x, "x")
        h = self.trunk(t, x)
        dtype = jnp.result_type(x)
        return self.eps_out(h).astype(dtype), jax.nn.softplus(self.second_out(h)).astype(dtype)

    def eps(self, t, x: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""The noise prediction $\hat\varepsilon_\theta(t, x)$."""
        x = as_float(x, "x")
        return self.eps_out(self.trunk(t, x)).astype(jnp.result_type(x))

    def second(self, t, x: Float[Array, " d"], *, stop_gradient_trunk: bool = False):
        r"""The positive second-moment head $h_\theta(t, x)$, shape like `x`."""
        x = as_float(x, "x")
        h = self.trunk(t, x)
        if stop_gradient_trunk:
            h = jax.lax.stop_gradient(h)
        return jax.nn.softplus(self.second_out(h)).astype(jnp.result_type(x))

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.eps(t, x)
