r"""The perturb-and-argmax distribution over classes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._custom_types import Key
from .._misc import is_concrete
from ._noise import (
    AbstractNoise,
    Gaussian,
    _check_method,
    _check_scores,
    _resolve_infinite_scores,
)


def _check_temperature(temperature: ArrayLike, dtype) -> Array:
    t = jnp.asarray(temperature)
    if jnp.issubdtype(t.dtype, jnp.complexfloating) or not (
        jnp.issubdtype(t.dtype, jnp.floating) or jnp.issubdtype(t.dtype, jnp.integer)
    ):
        raise TypeError(f"`temperature` must be a real number, got dtype {t.dtype}.")
    if t.ndim != 0:
        raise ValueError(f"`temperature` must be a scalar, got shape {t.shape}.")
    t = t.astype(dtype)
    # subnormal temperatures are flushed to zero by XLA on CPU: require a normal number
    tiny = float(jnp.finfo(dtype).tiny)
    if is_concrete(t):
        v = float(t)
        if not v >= tiny:  # also catches NaN
            raise ValueError(
                f"`temperature` must be > 0 (at least the smallest normal {dtype} {tiny:g}), "
                f"got {v}."
            )
        return t
    return eqx.error_if(t, ~(t >= tiny), "`temperature` must be > 0 (and a normal float).")


def _tempered_softmax(z: Array, tau: Array) -> Array:
    r"""$\operatorname{softmax}(z/\tau)$ computed as $\operatorname{softmax}((z - \max z)/\tau)$.

    The shift leaves the value and the derivative unchanged, and keeps $z/\tau$ from
    overflowing to $\infty - \infty = $ NaN for tiny temperatures (e.g. $\tau = 10^{-308}$).
    """
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return jax.nn.softmax(z / tau, axis=-1)


def _check_score_values(mu: Array) -> None:
    r"""Concrete scores of a distribution: no NaN, and at least one class not masked per row.

    $-\infty$ masks a class (probability 0) and $+\infty$ classes share the win; a row whose
    classes are all masked has no distribution. Traced scores are not checked (NaN in, NaN out,
    row by row), as for the maps of `AbstractNoise`.
    """
    if not is_concrete(mu):
        return
    v = np.asarray(mu).reshape(-1, mu.shape[-1])
    nan_rows = np.isnan(v).any(axis=-1)
    if nan_rows.any():
        r = int(np.argmax(nan_rows))
        raise ValueError(
            f"`mu` must not contain NaN, got {v[r]} in row {r} (use -inf to mask a class)."
        )
    dead = (v == -np.inf).all(axis=-1)
    if dead.any():
        r = int(np.argmax(dead))
        raise ValueError(
            f"`mu` masks every class (all scores -inf) in row {r}: no class can be drawn."
        )


@eqx.filter_jit
def _relaxed(pm: "PerturbMax", key, shape: tuple[int, ...], tau):
    # compiled whole, so an eager call and a call under the caller's jit run the same program
    # and give the same bits (XLA may fuse `(mu + eps - max) / tau` differently otherwise)
    return _tempered_softmax(pm._perturbed(key, shape), tau)


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"`shape` must be a tuple of ints, got {shape!r}.") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape` must have non-negative entries, got {shape}.")
    return shape


class PerturbMax(eqx.Module):
    r"""The distribution of $\arg\max_j(\mu_j + \varepsilon_j)$ for i.i.d. noise $\varepsilon_j$.

    $$p_i = P\big[\arg\max_j (\mu_j + \varepsilon_j) = i\big]
          = \int p(e) \prod_{j \ne i} F(e + \mu_i - \mu_j)\,\mathrm de .$$

    Gumbel noise gives $\operatorname{softmax}(\mu/s)$; every other noise gives another
    shift-invariant, monotone map from scores to the simplex. `probs` is exact where a closed
    form exists (Gumbel; uniform; any family for $n = 2$) and otherwise uses the mode-centred
    sinh–Gauss–Legendre quadrature (rows normalised, computed in log space, differentiable in
    `mu` and in the noise's `scale`). See
    [the derivation](../derivations/perturb-max.md).

    Args:
        mu: shape `(*batch, n)`, floating point scores with the classes on the last axis.
        noise: an [`AbstractNoise`][scoredyn.reparam.AbstractNoise] (default `Gaussian()`).
        method: `"auto"`, `"exact"`, `"quadrature"` or `"midpoint"`; see
            [`AbstractNoise.argmax_log_probs`][scoredyn.reparam.AbstractNoise.argmax_log_probs].
        num_nodes: quadrature nodes per panel (or $K$ for `"midpoint"`); `None` for the default.

    A score of $-\infty$ masks its class (probability exactly 0, gradient 0), as with every
    noise family; classes scored $+\infty$ share the probability equally.

    Raises:
        TypeError: if `mu` is not floating point or `noise` is not an `AbstractNoise`.
        ValueError: for an empty class axis, an unknown `method`, `num_nodes < 2`,
            `method="exact"` where no closed form exists, or concrete scores with a NaN or a
            row whose classes are all masked.

    Example:
        ```python
        pm = sd.reparam.PerturbMax(jnp.array([0.3, -1.2, 2.0, 0.5]), sd.reparam.Gaussian())
        pm.probs                         # ≈ [0.0892, 0.0046, 0.7844, 0.1219]
        pm.sample(key, (1000,))          # (1000,) class indices
        y = pm.relaxed_sample(key, 0.5)  # (4,) a point of the simplex
        ```
    """

    mu: Float[Array, "*batch n"]
    noise: AbstractNoise
    method: str = eqx.field(static=True)
    num_nodes: int | None = eqx.field(static=True)

    def __init__(
        self,
        mu: ArrayLike,
        noise: AbstractNoise | None = None,
        *,
        method: str = "auto",
        num_nodes: int | None = None,
    ):
        mu = _check_scores(mu)
        _check_score_values(mu)
        noise = Gaussian() if noise is None else noise
        if not isinstance(noise, AbstractNoise):
            raise TypeError(
                f"`noise` must be a scoredyn.reparam.AbstractNoise, got {type(noise).__name__}."
            )
        _check_method(method, num_nodes)
        noise._resolve(mu.shape[-1], method)  # raises for method="exact" without a closed form
        self.mu = mu
        self.noise = noise
        self.method = method
        self.num_nodes = num_nodes

    # ------------------------------------------------------------------ shapes
    @property
    def num_classes(self) -> int:
        """Number of classes $n$ (the last axis of `mu`)."""
        return self.mu.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading (batch) shape of `mu`."""
        return self.mu.shape[:-1]

    # ------------------------------------------------------------------ probabilities
    @property
    def log_probs(self) -> Float[Array, "*batch n"]:
        r"""Normalised $\log p_i$ for every class, shape `(*batch, n)`."""
        return self.noise.argmax_log_probs(self.mu, method=self.method, num_nodes=self.num_nodes)

    @property
    def probs(self) -> Float[Array, "*batch n"]:
        r"""$p_i$ for every class, shape `(*batch, n)`; each row sums to one."""
        return jnp.exp(self.log_probs)

    def log_prob(self, i: ArrayLike) -> Float[Array, "..."]:
        r"""$\log p_i$ for class indices `i`.

        Args:
            i: integer array broadcastable against `batch_shape`.

        Returns:
            $\log p_i$ with the broadcast shape; `-inf` where `i` is outside `[0, n)`.

        Raises:
            TypeError: if `i` is not an integer array.
        """
        i = jnp.asarray(i)
        if not jnp.issubdtype(i.dtype, jnp.integer):
            raise TypeError(f"`i` must be an integer class index, got dtype {i.dtype}.")
        lp = self.log_probs
        n = self.num_classes
        shape = jnp.broadcast_shapes(i.shape, self.batch_shape)
        ib = jnp.broadcast_to(i, shape)
        lpb = jnp.broadcast_to(lp, shape + (n,))
        valid = (ib >= 0) & (ib < n)
        got = jnp.take_along_axis(lpb, jnp.where(valid, ib, 0)[..., None], axis=-1)[..., 0]
        return jnp.where(valid, got, -jnp.inf)

    def prob(self, i: ArrayLike) -> Float[Array, "..."]:
        r"""$p_i$ for class indices `i` (zero outside `[0, n)`)."""
        return jnp.exp(self.log_prob(i))

    def entropy(self) -> Float[Array, "*batch"]:
        r"""Shannon entropy $H = -\sum_i p_i \log p_i$ (nats), with $0 \log 0 = 0$."""
        lp = self.log_probs
        p = jnp.exp(lp)
        return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, lp, 0.0), 0.0), axis=-1)

    def mode(self) -> Int[Array, "*batch"]:
        r"""The most probable class, $\arg\max_i \mu_i$ (the map is monotone)."""
        return jnp.argmax(self.mu, axis=-1)

    # ------------------------------------------------------------------ sampling
    def _perturbed(self, key: Key, shape) -> Array:
        shape = _check_shape(shape)
        eps = self.noise.sample(key, shape + self.mu.shape, self.mu.dtype)
        # +inf scores share the win (as in `probs`); -inf (masked) classes never win
        return jnp.broadcast_to(_resolve_infinite_scores(self.mu), eps.shape) + eps

    def sample(self, key: Key, shape: tuple[int, ...] = ()) -> Int[Array, "..."]:
        r"""Draw classes by perturb-and-argmax: $\arg\max_j(\mu_j + \varepsilon_j)$.

        Args:
            key: a PRNG key.
            shape: sample shape, prepended to `batch_shape`.

        Returns:
            integer class indices of shape `(*shape, *batch)`.
        """
        return jnp.argmax(self._perturbed(key, shape), axis=-1)

    def relaxed_sample(
        self, key: Key, temperature: ArrayLike, shape: tuple[int, ...] = ()
    ) -> Float[Array, "... n"]:
        r"""A relaxed one-hot sample $y = \operatorname{softmax}\big((\mu + \varepsilon)/\tau\big)$.

        For Gumbel noise this is the Gumbel-softmax (Concrete) sample. With the same `key`,
        $y \to$ `one_hot(sample(key))` as $\tau \to 0$. $y$ is differentiable in `mu` (the
        noise is reparameterised: $\varepsilon$ does not depend on $\mu$).

        Args:
            key: a PRNG key (the same draw as `sample(key, shape)`).
            temperature: $\tau > 0$.
            shape: sample shape, prepended to `mu.shape`.

        Returns:
            shape `(*shape, *batch, n)`, rows on the simplex.

        Raises:
            ValueError: if `temperature <= 0` (at trace time when concrete, else at run time).
        """
        tau = _check_temperature(temperature, self.mu.dtype)
        return _relaxed(self, key, _check_shape(shape), tau)

    def straight_through_sample(
        self, key: Key, temperature: ArrayLike, shape: tuple[int, ...] = ()
    ) -> Float[Array, "... n"]:
        r"""A one-hot sample whose gradient is that of the relaxed sample.

        $$y_{\text{st}} = h + \big(y - \operatorname{stop\_gradient}(y)\big),\qquad
          h = \operatorname{one\_hot}\big(\arg\max_j(\mu_j + \varepsilon_j)\big),$$

        with $y$ the [`relaxed_sample`][scoredyn.reparam.PerturbMax.relaxed_sample]: the
        forward value is exactly $h$ and the Jacobian with respect to `mu` is that of $y$.

        Args:
            key: a PRNG key (the same draw as `sample(key, shape)`).
            temperature: $\tau > 0$ of the surrogate gradient.
            shape: sample shape, prepended to `mu.shape`.

        Returns:
            shape `(*shape, *batch, n)`, exactly one-hot in value.

        Raises:
            ValueError: if `temperature <= 0`.
        """
        tau = _check_temperature(temperature, self.mu.dtype)
        z = self._perturbed(key, shape)
        y = _tempered_softmax(z, tau)
        h = jax.nn.one_hot(jnp.argmax(z, axis=-1), self.num_classes, dtype=y.dtype)
        return h + (y - jax.lax.stop_gradient(y))  # exactly h in value
