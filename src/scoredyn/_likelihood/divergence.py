r"""Divergence of a vector field: exact (Jacobian trace) and Hutchinson's estimator."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Key, Scalar
from .._misc import as_float, default_float

_PROBES = ("rademacher", "gaussian")


def _flat(fn, shape):
    return lambda y: fn(y.reshape(shape)).reshape(-1)


def value_and_divergence(fn: Callable, x: Array) -> tuple[Array, Scalar]:
    r"""$(F(x), \nabla\cdot F(x))$ with the exact trace, from $d$ forward-mode JVPs under vmap."""
    flat = x.reshape(-1)
    g = _flat(fn, x.shape)
    basis = jnp.eye(flat.size, dtype=flat.dtype)
    out, cols = jax.vmap(lambda e: jax.jvp(g, (flat,), (e,)), out_axes=(None, 0))(basis)
    # cols[i] = J e_i is the i-th column of the Jacobian, so J_ii = cols[i, i].
    return out.reshape(x.shape), jnp.trace(cols)


def value_and_hutchinson(fn: Callable, x: Array, probes: Array) -> tuple[Array, Scalar]:
    r"""$(F(x), \frac1K\sum_k v_k^\top J_F(x) v_k)$ for probes $v_k$ of shape `(K, *x.shape)`."""
    out, jv = jax.vmap(lambda v: jax.jvp(fn, (x,), (v,)), out_axes=(None, 0))(probes)
    return out, jnp.mean(jnp.sum((probes * jv).reshape(probes.shape[0], -1), axis=-1))


def _check_field(fn, x: Array) -> None:
    """`fn(x)` must be an array shaped like `x` (checked abstractly, without running `fn`)."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable x -> array like x, got {fn!r}.")
    out = jax.eval_shape(fn, x)
    if getattr(out, "shape", None) != x.shape:
        raise ValueError(
            f"`fn(x)` must return an array shaped like x {x.shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def divergence(fn: Callable, x: Float[ArrayLike, "*shape"]) -> Scalar:
    r"""Exact divergence $\nabla\cdot F(x) = \operatorname{tr} J_F(x) = \sum_i \partial_i F_i(x)$.

    Computed from $d$ Jacobian–vector products $J_F e_i$ (batched with `jax.vmap`), so it costs
    about $d$ evaluations of $F$ and $O(d^2)$ memory: use it for small $d$ and
    [`hutchinson_divergence`][scoredyn.hutchinson_divergence] otherwise. See
    [the divergence](../derivations/probability-flow.md#computing-the-divergence).

    Args:
        fn: a function $x \mapsto F(x)$ with output shaped like `x`.
        x: the point (any shape).

    Returns:
        The scalar $\nabla\cdot F(x)$.

    Raises:
        TypeError: if `fn` is not callable.
        ValueError: if `fn(x)` is not shaped like `x` (checked abstractly, before any work).
    """
    x = as_float(x, "x")
    _check_field(fn, x)
    return value_and_divergence(fn, x)[1]


def hutchinson_probes(
    key: Key,
    shape: tuple[int, ...],
    *,
    num_probes: int = 1,
    probe: str = "rademacher",
    dtype=None,
) -> Float[Array, " num_probes *shape"]:
    r"""Draw `num_probes` probe vectors $v$ with $\mathbb E[v v^\top] = I$.

    `"rademacher"`: independent $\pm 1$ entries; `"gaussian"`: standard normal entries.

    Args:
        key: PRNG key.
        shape: shape of one probe (the shape of $x$).
        num_probes: $K \ge 1$.
        probe: `"rademacher"` or `"gaussian"`.
        dtype: floating dtype (default float).

    Returns:
        An array of shape `(num_probes, *shape)`.
    """
    if probe not in _PROBES:
        raise ValueError(f"`probe` must be one of {_PROBES}, got {probe!r}.")
    if not isinstance(num_probes, int) or isinstance(num_probes, bool) or num_probes < 1:
        raise ValueError(f"`num_probes` must be a Python int >= 1, got {num_probes!r}.")
    dtype = default_float() if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
    full = (num_probes, *shape)
    if probe == "gaussian":
        return jax.random.normal(key, full, dtype)
    return jax.random.rademacher(key, full, dtype)


def hutchinson_divergence(
    fn: Callable, x: Float[ArrayLike, "*shape"], probes: Float[ArrayLike, " num_probes *shape"]
) -> Scalar:
    r"""Hutchinson's unbiased estimate $\frac1K\sum_k v_k^\top J_F(x)\,v_k$ of $\nabla\cdot F(x)$.

    Since $\mathbb E[v^\top J v] = \operatorname{tr}(J\,\mathbb E[v v^\top]) = \operatorname{tr} J$
    for any probe with identity second moment, each term is unbiased; one JVP per probe. For a
    symmetric $J$ the variance of one term is $2\lVert J\rVert_F^2$ for Gaussian probes and
    $2(\lVert J\rVert_F^2 - \sum_i J_{ii}^2)$ for Rademacher probes. See
    [the divergence](../derivations/probability-flow.md#computing-the-divergence).

    Args:
        fn: $x \mapsto F(x)$, output shaped like `x`.
        x: the point.
        probes: shape `(K, *x.shape)`, e.g. from [`hutchinson_probes`][scoredyn.hutchinson_probes].

    Returns:
        The scalar estimate.

    References:
        Hutchinson, 1990; Grathwohl et al., *FFJORD*, arXiv:1810.01367.
    """
    x = as_float(x, "x")
    _check_field(fn, x)
    probes = as_float(probes, "probes").astype(x.dtype)
    if probes.ndim != x.ndim + 1 or probes.shape[1:] != x.shape:
        raise ValueError(
            f"`probes` must have shape (K, *x.shape) = (K, {', '.join(map(str, x.shape))}), "
            f"got {probes.shape}."
        )
    return value_and_hutchinson(fn, x, probes)[1]
