r"""Trajectories: sub-sequences $0 = \tau_0 < \tau_1 < \dots < \tau_K = N$ of the $N$ steps.

A sampler with trajectory $\tau$ makes $K$ network calls; step $k = K, \dots, 1$ goes from
$n = \tau_k$ to $m = \tau_{k-1}$, and the last one ($\tau_1 \to 0$) is the decoder step.
See [respaced trajectories](../derivations/ddim.md#respaced-trajectories).
"""

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int

from .._misc import is_concrete
from .schedule import _check_num_steps

_KINDS = ("uniform", "quadratic")
_INT32_MAX = int(np.iinfo(np.int32).max)


def respace(
    num_steps: int, K: int, kind: Literal["uniform", "quadratic"] = "uniform"
) -> Int[Array, " num_points"]:
    r"""A trajectory of $K$ steps through $\{0, \dots, N\}$: shape `(K + 1,)`, from 0 up to $N$.

    - `"uniform"`: $\tau_k = \lfloor kN/K + \tfrac12\rfloor$ (evenly spaced, rounded half up, so
      strictly increasing whenever $K \le N$). The first noisy step is $\tau_1 \approx N/K$,
      not 1: the decoder then starts from a noisier $x_{\tau_1}$, which costs bits in
      [`variational_bound`][scoredyn.variational_bound] at small $K$ (Analytic-DPM's tables
      use trajectories through $n = 1$; for $2 \le K < N$, `tau.at[1].set(1)` gives one).
    - `"quadratic"`: $\tau_k = k + \lfloor (N - K)(k/K)^2 + \tfrac12\rfloor$: a unit step plus a
      quadratic share of the rest, so steps are short near $n = 0$ (where detail is decided)
      and long near $N$, as in the quadratic trajectories of Song et al. (DDIM) and
      Bao et al. (Analytic-DPM). It is strictly increasing and ends exactly at $N$.

    Integer arithmetic only: the result is exact for any $N$.

    Args:
        num_steps: $N \ge 1$ (a Python int).
        K: number of steps, a Python int with $1 \le K \le N$.
        kind: `"uniform"` or `"quadratic"`.

    Returns:
        `tau`, an int32 array of shape `(K + 1,)` with `tau[0] == 0` and `tau[-1] == N`.

    Raises:
        TypeError: if `num_steps` or `K` is not a Python int.
        ValueError: if $K < 1$, $K > N$, $N \ge 2^{31}$ (indices are int32) or `kind` is
            unknown.

    Example:
        ```python
        sd.respace(1000, 4)               # [0, 250, 500, 750, 1000]
        sd.respace(1000, 4, "quadratic")  # [0, 63, 251, 563, 1000]
        ```
    """
    num_steps = _check_num_steps(num_steps)
    K = _check_num_steps(K, "K")
    if num_steps > _INT32_MAX:
        raise ValueError(
            f"`num_steps` must be <= 2**31 - 1 = {_INT32_MAX} (trajectories are int32 step "
            f"indices), got {num_steps}."
        )
    if K > num_steps:
        raise ValueError(
            f"`K` must be <= num_steps = {num_steps} (at most one step per index), got {K}."
        )
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    # exact integer arithmetic: int64 where the products fit, Python ints beyond
    big = 2 * num_steps * K * K + K * K >= 2**62
    k = np.arange(K + 1, dtype=object if big else np.int64)
    if kind == "uniform":
        tau = (2 * k * num_steps + K) // (2 * K)
    else:
        tau = k + (2 * (num_steps - K) * k**2 + K**2) // (2 * K**2)
    return jnp.asarray(np.asarray(tau, dtype=np.int64).astype(np.int32))


def trajectory(
    indices: Int[ArrayLike, " num_points"] | Sequence[int], num_steps: int
) -> Int[Array, " num_points"]:
    r"""Validate a user trajectory and return it as an int32 array `tau` of shape `(K + 1,)`.

    `indices` must be strictly monotone, start at 0 and end at $N$ (or start at $N$ and end
    at 0: DDIM-style decreasing lists are reversed). Each step $\tau_k \to \tau_{k-1}$ is
    then a valid pair $n > m$.

    Args:
        indices: integer sequence, length $K + 1 \ge 2$, with $K \le N$.
        num_steps: $N \ge 1$.

    Returns:
        The increasing trajectory `tau` (int32), with `tau[0] == 0`, `tau[-1] == N`.

    Raises:
        TypeError: for non-integer indices.
        ValueError: for a list that is too short, longer than $N + 1$, not strictly monotone,
            outside $0..N$, not starting at 0 / ending at $N$, or with values outside the int32
            range (never truncated) (concrete values; traced values are checked at run time
            with `eqx.error_if`).
    """
    num_steps = _check_num_steps(num_steps)
    return check_tau(indices, num_steps, "indices", allow_reverse=True)


def check_tau(tau, num_steps: int, name: str = "tau", *, allow_reverse: bool = False) -> Array:
    """Validate a trajectory (see `trajectory`); concrete values raise, traced ones use error_if."""
    if isinstance(tau, (list, tuple)):
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in tau):
            raise TypeError(f"`{name}` must contain Python/NumPy ints, got {list(tau)!r}.")
        tau = np.asarray(tau, dtype=np.int64)
    arr = tau if isinstance(tau, jax.Array) else np.asarray(tau)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must be an integer array of step indices, got dtype {arr.dtype}."
        )
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"`{name}` must have shape (K + 1,) with K >= 1, got shape {arr.shape}.")
    K = arr.shape[0] - 1
    if K > num_steps:
        raise ValueError(
            f"`{name}` has K = {K} steps but N = {num_steps}: at most N steps (K <= N) are "
            "possible."
        )
    if is_concrete(arr):
        v = np.asarray(jax.device_get(arr)).astype(np.int64)
        if v.size and (v.max() > _INT32_MAX or v.min() < -_INT32_MAX - 1):
            raise ValueError(
                f"`{name}` must fit in int32 (step indices of a schedule), got values up to "
                f"{v.max()} (min {v.min()}); refusing to truncate them."
            )
        if allow_reverse and v[0] > v[-1]:
            v = v[::-1]
        d = np.diff(v)
        if not (d > 0).all():
            j = int(np.argmax(d <= 0))
            what = "a duplicate" if d[j] == 0 else "a decrease"
            raise ValueError(
                f"`{name}` must be strictly increasing (0 = tau[0] < ... < tau[K] = N), found "
                f"{what} at positions {j}, {j + 1}: {v[j]}, {v[j + 1]}."
            )
        if v[0] < 0 or v[-1] > num_steps:
            raise ValueError(
                f"`{name}` must lie inside 0..N = 0..{num_steps}, got range {v[0]}..{v[-1]}."
            )
        if v[0] != 0:
            raise ValueError(
                f"`{name}` must start at 0 (the last step tau[1] -> 0 is the decoder step), "
                f"got {v[0]}; prepend 0."
            )
        if v[-1] != num_steps:
            raise ValueError(f"`{name}` must end at N = {num_steps} (the prior), got {v[-1]}.")
        return jnp.asarray(v.astype(np.int32))
    arr = jnp.asarray(arr)
    if jnp.iinfo(arr.dtype).bits > 32:  # traced int64 (x64 on): no silent truncation either
        arr = eqx.error_if(
            arr,
            jnp.any((arr > _INT32_MAX) | (arr < -_INT32_MAX - 1)),
            f"`{name}` must fit in int32 (step indices of a schedule).",
        )
    arr = arr.astype(jnp.int32)
    if allow_reverse:  # a decreasing (DDIM-style) list is reversed, as for concrete input
        arr = jnp.where(arr[0] > arr[-1], arr[::-1], arr)
    bad = (arr[0] != 0) | (arr[-1] != num_steps) | jnp.any(jnp.diff(arr) <= 0)
    return eqx.error_if(arr, bad, f"`{name}` must be strictly increasing from 0 to N={num_steps}.")
