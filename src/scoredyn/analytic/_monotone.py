r"""Monte Carlo `ms_eps` projected onto what theory allows: a posterior variance growing in $n$."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import real_float
from .._discrete import DiscreteSchedule
from .._misc import is_concrete
from ._common import check_schedule, snr_inv
from ._gamma import GammaEstimate, as_ms_eps


def monotone_ms_eps(
    sched: DiscreteSchedule,
    ms_eps: GammaEstimate | Float[ArrayLike, " n"],
    *,
    cap: float = 1.0 - 1e-5,
) -> Float[Array, " n"]:
    r"""Project `ms_eps` so that the posterior variance of $x_0$ it implies is non-decreasing.

    `ms_eps` fixes Analytic-DPM's average posterior variance of the data (see
    [`x0_variance`][scoredyn.analytic.x0_variance]),

    $$\kappa_n = \frac{1 - \bar a_n}{\bar a_n}\big(1 - \texttt{ms\_eps}_n\big).$$

    For $m < n$, $x_0 \to x_m \to x_n$ is a Markov chain, so conditioning on $x_n$ tells less
    about $x_0$ than conditioning on $x_m$:
    $\mathbb E\operatorname{Var}[x_0\mid x_n] \ge \mathbb E\operatorname{Var}[x_0\mid x_m]$, and
    the exact $\kappa_n$ is non-decreasing in $n$. A Monte Carlo estimate need not be: at large
    $n$ the factor $(1 - \bar a_n)/\bar a_n$ multiplies the noise of $1 - \texttt{ms\_eps}_n$ (a
    few $10^{-5}$ at $n = N$ for a linear schedule) by up to $10^4$, and an estimate that touches
    1 claims $x_0$ is known exactly from pure noise; the optimal-trajectory dynamic programme
    then jumps from there straight to $n = 1$. This function replaces $\kappa_n$ (after
    clipping `ms_eps` into $[0, 1]$) by its running maximum

    $$\kappa^\uparrow_n = \max_{1 \le m \le n}\kappa_m,$$

    which only ever raises a variance and leaves a non-decreasing profile unchanged, and maps
    back, $\texttt{ms\_eps}^\uparrow_n = 1 - \frac{\bar a_n}{1 - \bar a_n}\kappa^\uparrow_n$,
    clipped to $[0, \texttt{cap}]$. The cap (default $1 - 10^{-5}$) keeps the dynamic
    programme's $\log(1 - \beta_{n|m}\Gamma_n)$ finite in float32. Entry 0 is 0.

    See [monotone ms_eps](../derivations/analytic-dpm.md#a-monotone-ms_eps).

    Args:
        sched: discrete schedule.
        ms_eps: a [`GammaEstimate`][scoredyn.analytic.GammaEstimate] or its `ms_eps`,
            shape `(N+1,)`.
        cap: the largest value returned, $\le 1$.

    Returns:
        Shape `(N+1,)`, in $[0, \texttt{cap}]$, with the dtype of `ms_eps` (promoted with the
        schedule's).

    Raises:
        TypeError: if `sched` is not a `DiscreteSchedule`.
        ValueError: if `ms_eps` does not have shape `(N+1,)`, or `cap` is not in $[0, 1]$.

    Example:
        ```python
        est = sd.analytic.estimate_gamma(key, sched, eps_fn, x_train)
        ms = sd.analytic.monotone_ms_eps(sched, est)           # (N+1,)
        tau = sd.analytic.optimal_trajectory(sched, ms, 10)
        ```
    """
    sched = check_schedule(sched)
    if is_concrete(cap) and not 0.0 <= real_float(cap, "cap") <= 1.0:
        raise ValueError(f"`cap` must lie in [0, 1], got {cap}.")
    ms = as_ms_eps(ms_eps, sched.num_steps)
    ratio = snr_inv(sched, jnp.arange(sched.num_steps + 1))  # (1 - abar) / abar, 0 at n = 0
    dtype = jnp.result_type(ratio, ms)
    ratio, ms = ratio.astype(dtype), ms.astype(dtype)
    kappa = jax.lax.cummax(ratio * (1.0 - jnp.clip(ms, 0.0, 1.0)))
    positive = ratio > 0
    out = jnp.where(positive, 1.0 - kappa / jnp.where(positive, ratio, 1.0), 0.0)
    return jnp.clip(out, 0.0, jnp.asarray(cap, dtype))
