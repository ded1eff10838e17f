"""Time embeddings for score networks."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


class SinusoidalEmbedding(eqx.Module):
    r"""Fixed sinusoidal features of a scalar time $t$ (Vaswani et al. 2017; Ho et al. 2020).

    With $h$ = `dim // 2` frequencies $\omega_i = P^{-i/h}$, $i = 0, \dots, h - 1$, and the
    time rescaled to $s = c\,t$ (so $t \in [0, 1]$ covers the usual integer range
    $s \in [0, 1000]$ of DDPM),

    $$e(t) = \big(\sin(\omega_0 s), \dots, \sin(\omega_{h-1} s),\
                  \cos(\omega_0 s), \dots, \cos(\omega_{h-1} s)\big).$$

    The features have no parameters; a small MLP after them (as in
    [`MLP`][scoredyn.nn.MLP]) learns what to do with them.

    Args:
        dim: number of features, even and at least 2.
        scale: $c$, the factor applied to $t$ (1000 for a DDPM-like time $t = n / N$).
        max_period: $P$, the longest period in units of $s$.

    Example:
        ```python
        emb = sd.nn.SinusoidalEmbedding(64)
        emb(0.5).shape   # (64,)
        ```
    """

    dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True, default=1000.0)
    max_period: float = eqx.field(static=True, default=10_000.0)

    def __check_init__(self):
        if not isinstance(self.dim, int) or self.dim < 2 or self.dim % 2:
            raise ValueError(f"`dim` must be an even int >= 2, got {self.dim!r}.")
        if not self.scale > 0 or not self.max_period > 1:
            raise ValueError(
                f"`scale` must be > 0 and `max_period` > 1, got scale={self.scale}, "
                f"max_period={self.max_period}."
            )

    def __call__(self, t: Float[ArrayLike, ""], dtype=None) -> Float[Array, " dim"]:
        t = jnp.asarray(t, dtype if dtype is not None else jnp.result_type(t, float))
        if t.ndim != 0:
            raise ValueError(f"`t` must be a scalar time, got shape {t.shape}; use jax.vmap.")
        half = self.dim // 2
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=t.dtype) / half)
        arg = self.scale * t * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
