r"""Shared pieces of the analytic layer: schedule access, trajectory checks, step coefficients.

For a step $n \to m$ ($n > m$) of a discrete schedule with cumulative $\bar\alpha$ (the code's
`alpha_bar`), the DDIM-family forward posterior with extra variance $\lambda^2$ is

$$q(x_m\mid x_n, x_0) = \mathcal N\Big(\gamma\,x_0 + \sqrt{1 - \bar\alpha_m - \lambda^2}\,
  \tfrac{x_n}{\sqrt{1 - \bar\alpha_n}},\ \lambda^2 I\Big),\qquad
  \gamma = \sqrt{\bar\alpha_m} - \sqrt{(1 - \bar\alpha_m - \lambda^2)\,\tfrac{\bar\alpha_n}{1 - \bar\alpha_n}}.$$

$\gamma$ is the coefficient that carries uncertainty about $x_0$ into $x_m$; it is the
Analytic-DPM paper's $\sqrt{\bar\alpha_{n-1}} - \sqrt{\bar\beta_{n-1} - \lambda_n^2}\sqrt{\bar\alpha_n/\bar\beta_n}$
and Su's $\gamma_t$.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._misc import as_float, is_concrete

Forward = Literal["ddpm", "ddim"]


def alpha_bar_of(sched) -> Float[Array, " N+1"]:
    """The `alpha_bar` array (shape `(N+1,)`) of a discrete schedule."""
    abar = getattr(sched, "alpha_bar", None)
    if abar is None:
        raise TypeError(
            f"`sched` must be a discrete schedule with an `alpha_bar` array (sd.DiscreteSchedule), "
            f"got {type(sched).__name__}."
        )
    abar = as_float(abar, "sched.alpha_bar")
    if abar.ndim != 1 or abar.shape[0] < 2:
        raise ValueError(f"`sched.alpha_bar` must have shape (N+1,) with N >= 1, got {abar.shape}.")
    return abar


def num_steps_of(sched) -> int:
    """$N$, the number of steps of a schedule (static)."""
    return alpha_bar_of(sched).shape[0] - 1


def check_forward(forward: str, eta) -> None:
    if forward not in ("ddpm", "ddim"):
        raise ValueError(f"`forward` must be 'ddpm' or 'ddim', got {forward!r}.")
    if is_concrete(eta):
        e = float(jnp.asarray(eta))
        if not (0.0 <= e <= 1.0):
            raise ValueError(f"`eta` must lie in [0, 1], got {e}.")


def check_trajectory(tau: ArrayLike, num_steps: int, name: str = "tau") -> Int[Array, " K+1"]:
    """Check a trajectory: 1-D int array, `tau[0] == 0`, `tau[-1] == N`, strictly increasing."""
    tau = jnp.asarray(tau)
    if not jnp.issubdtype(tau.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be an integer array, got dtype {tau.dtype}.")
    if tau.ndim != 1 or tau.shape[0] < 2:
        raise ValueError(f"`{name}` must have shape (K+1,) with K >= 1, got {tau.shape}.")
    if is_concrete(tau):
        t = jax.device_get(tau)
        if int(t[0]) != 0 or int(t[-1]) != num_steps or not (t[1:] > t[:-1]).all():
            raise ValueError(
                f"`{name}` must be strictly increasing from 0 to N={num_steps}, got {t.tolist()}."
            )
    return tau


def to_dtype(x, dtype):
    return jnp.asarray(x).astype(dtype)


def step_lam2(abar_n, abar_m, forward: Forward, eta) -> Array:
    r"""Forward-process variance $\lambda^2$ of $q(x_m\mid x_n, x_0)$.

    DDPM: $\lambda^2 = \tilde\beta_{m|n} = \frac{1 - \bar\alpha_m}{1 - \bar\alpha_n}
    \big(1 - \frac{\bar\alpha_n}{\bar\alpha_m}\big)$; DDIM family: $\eta^2\tilde\beta_{m|n}$.
    """
    beta_nm = -jnp.expm1(jnp.log(abar_n) - jnp.log(abar_m))  # 1 - abar_n / abar_m
    tilde = (1.0 - abar_m) / (1.0 - abar_n) * beta_nm
    if forward == "ddpm":
        return tilde
    return jnp.asarray(eta, tilde.dtype) ** 2 * tilde


def step_gamma(abar_n, abar_m, lam2) -> Array:
    r"""$\gamma = \sqrt{\bar\alpha_m} - \sqrt{(1 - \bar\alpha_m - \lambda^2)\bar\alpha_n/(1 - \bar\alpha_n)}$."""
    rest = jnp.maximum(1.0 - abar_m - lam2, 0.0)
    return jnp.sqrt(abar_m) - jnp.sqrt(rest * abar_n / (1.0 - abar_n))


def x0_cov_cap(abar_n, data_range) -> Array:
    r"""Largest admissible (average) variance of $x_0$ given $x_n$.

    $\min\big(\frac{1 - \bar\alpha_n}{\bar\alpha_n},\ ((b - a)/2)^2\big)$; the second term only
    when a data range $(a, b)$ is given.
    """
    cap = (1.0 - abar_n) / abar_n
    if data_range is not None:
        cap = jnp.minimum(cap, range_sq(data_range, cap.dtype))
    return cap


def range_sq(data_range, dtype) -> Array:
    lo, hi = data_range
    if is_concrete(lo, hi) and not float(lo) < float(hi):
        raise ValueError(f"`data_range` must be (a, b) with a < b, got {data_range!r}.")
    return jnp.asarray(((hi - lo) / 2.0) ** 2, dtype)


def check_data_range(data_range) -> None:
    if data_range is None:
        return
    try:
        lo, hi = data_range
    except (TypeError, ValueError):
        raise ValueError(f"`data_range` must be None or a pair (a, b), got {data_range!r}.") from None
    if is_concrete(lo, hi) and not (math.isfinite(float(lo)) and float(lo) < float(hi)):
        raise ValueError(f"`data_range` must be (a, b) with finite a < b, got {data_range!r}.")
