r"""Log-likelihood through the probability-flow ODE, and bits per dimension."""

import math
from collections.abc import Callable
from typing import cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_finite_data, concrete_value, real_float
from .._custom_types import Key, Scalar, ScoreFn
from .._misc import is_concrete
from .._sde import AbstractLinearSDE, AbstractSDE, ProbabilityFlow, probability_flow
from .._solve._utils import (
    check_controller,
    check_progress_meter,
    check_score,
    check_sde,
    check_solver,
    check_state,
    check_t_eps,
    solution_stats,
)
from .divergence import hutchinson_probes, value_and_divergence, value_and_hutchinson

#: `estimator="auto"` uses the exact divergence up to this many dimensions (or without a key).
EXACT_MAX_DIM = 32

_ESTIMATORS = ("auto", "exact", "hutchinson")


class _Augmented(eqx.Module):
    r"""The augmented field $(t, (x, \ell)) \mapsto (v(t, x), \nabla\cdot v(t, x))$."""

    flow: ProbabilityFlow
    exact: bool = eqx.field(static=True)

    def __call__(self, t, state, probes):
        x, _ = state
        t = jnp.asarray(t, x.dtype)
        fn = lambda y: self.flow(t, y)
        if self.exact:
            v, div = value_and_divergence(fn, x)
        else:
            v, div = value_and_hutchinson(fn, x, probes)
        return v, div.astype(x.dtype)


def _resolve_estimator(estimator, key, d):
    if estimator not in _ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {_ESTIMATORS}, got {estimator!r}.")
    if estimator == "hutchinson" and key is None:
        raise ValueError("`key` must be given with estimator='hutchinson' (it draws the probes).")
    if estimator == "auto":
        return key is None or d <= EXACT_MAX_DIM
    return estimator == "exact"


def log_likelihood(
    sde: AbstractSDE,
    score: ScoreFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: Key | None = None,
    estimator: str = "auto",
    probe: str = "rademacher",
    num_probes: int = 1,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    t_eps: float | None = None,
    max_steps: int | None = 4096,
    throw: bool = True,
    prior_log_prob: Callable[[Array], Scalar] | None = None,
    return_stats: bool = False,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
):
    r"""Log-density $\log p_{t_\epsilon}(x)$ in nats by the instantaneous change of variables.

    Along the probability-flow ODE $\dot x = v(t, x) = f(t, x) - \tfrac12 g^2 s(t, x)$ the
    density obeys $\frac{\mathrm{d}}{\mathrm{d}t}\log p_t(x(t)) = -\nabla\cdot v(t, x(t))$, so
    integrating the augmented system $(\dot x, \dot\ell) = (v, \nabla\cdot v)$ from
    $(x, 0)$ at $t_\epsilon$ to $T$ gives

    $$\log p_{t_\epsilon}(x) = \log p_T(x(T))
      + \int_{t_\epsilon}^T \nabla\cdot v(t, x(t))\,\mathrm{d}t,$$

    with $\log p_T$ taken as `sde.prior_log_prob` unless `prior_log_prob` is given. The
    divergence is exact (a trace of the Jacobian, $d$ JVPs per evaluation) or Hutchinson's
    estimate $v^\top J v$ with probes drawn once from `key` and held fixed along the trajectory,
    which keeps the estimate unbiased. See
    [likelihood](../derivations/probability-flow.md#the-instantaneous-change-of-variables).

    With the exact score the result is the log-density of $p_{t_\epsilon}$ (data blurred by
    $\sigma(t_\epsilon)$), not of $p_0$; the error from the prior is
    $\log\mathcal N(x_T; 0, \sigma(T)^2) - \log p_T(x_T)$, small when $\alpha(T)\approx 0$.

    Args:
        sde: any [`AbstractSDE`][scoredyn.AbstractSDE] (a linear one unless `prior_log_prob`
            is given).
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$.
        x: one data point (any shape).
        key: PRNG key for Hutchinson probes (unused by the exact estimator).
        estimator: `"exact"`, `"hutchinson"` (needs `key`) or `"auto"`: exact when
            `key is None` or `x.size <= 32` (`EXACT_MAX_DIM`), Hutchinson otherwise.
        probe: `"rademacher"` or `"gaussian"` probes for Hutchinson.
        num_probes: probes averaged per divergence evaluation.
        solver: a diffrax ODE solver.
        rtol: relative tolerance of the default `diffrax.PIDController`; it also controls
            the error of the log-determinant component.
        atol: absolute tolerance of the default controller.
        stepsize_controller: overrides the PID controller built from `rtol`, `atol`.
        dt0: initial step; `None` lets an adaptive controller choose.
        t_eps: start time $0 < t_\epsilon < T$; default $10^{-5}$.
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        prior_log_prob: optional $z \mapsto \log p_T(z)$ replacing the Gaussian prior.
        return_stats: also return a dict with `latent` $x(T)$, `prior_log_prob`,
            `delta_log_prob` (the integral) and the solver counts (`num_steps`, `nfe`).
        progress_meter: diffrax's progress meter for the solve from $t_\epsilon$ to $T$:
            `diffrax.TextProgressMeter()` prints percentages to stdout,
            `diffrax.TqdmProgressMeter()` draws a bar (needs tqdm). Over a data set
            (`jax.vmap`) diffrax shows ONE meter for the batch, following its slowest
            example. The default `diffrax.NoProgressMeter()` adds nothing, and a meter does
            not change the result. See
            [progress on long work](sampling.md#progress-on-long-work).

    Returns:
        The scalar $\log p_{t_\epsilon}(x)$; with `return_stats`, `(log_prob, stats)`.

    Raises:
        TypeError: for a non-SDE `sde`, a wrong-shaped `score`, a non-linear `sde` without
            `prior_log_prob`, or a `progress_meter` that is not a diffrax progress meter.
        ValueError: for a bad `estimator`, `probe`, `num_probes` or `t_eps`, Hutchinson
            without `key`, or an `x` with a NaN or infinite entry (at once when concrete, when
            the program runs when traced).

    Example:
        ```python
        lp = jax.vmap(lambda x: sd.log_likelihood(sde, score, x))(xs)   # (n,)
        ```

    References:
        Chen et al., *Neural ODEs*, arXiv:1806.07366; Grathwohl et al., *FFJORD*,
        arXiv:1810.01367; Song et al., arXiv:2011.13456, App. D.2.
    """
    check_sde(sde)
    x = check_state(x, "x")
    # NaN policy: a NaN data point is refused here (blaming `x`), not left to the adaptive
    # solver, whose step size would turn NaN and then blame the time `t`
    x = check_finite_data(x, "x")
    if t_eps is not None and concrete_value(t_eps) is not None:
        real_float(t_eps, "t_eps")  # a complex t_eps gets an error naming it
    if prior_log_prob is None:
        check_sde(sde, linear=True)
        prior_log_prob = cast(AbstractLinearSDE, sde).prior_log_prob
    elif not callable(prior_log_prob):
        raise TypeError(f"`prior_log_prob` must be callable z -> scalar, got {prior_log_prob!r}.")
    exact = _resolve_estimator(estimator, key, x.size)
    check_solver(solver)
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
    check_controller(stepsize_controller)
    check_progress_meter(progress_meter)
    t_eps = check_t_eps(t_eps, sde, likelihood=True)
    check_score(score, "score", sde.T, x)
    dtype = x.dtype
    if exact:
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"`probe` must be one of ('rademacher', 'gaussian'), got {probe!r}.")
        probes = None
    else:
        assert key is not None  # `_resolve_estimator` refuses Hutchinson without a key
        probes = hutchinson_probes(key, x.shape, num_probes=num_probes, probe=probe, dtype=dtype)
    term = diffrax.ODETerm(_Augmented(probability_flow(sde, score), exact))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        jnp.asarray(t_eps, dtype),
        jnp.asarray(sde.T, dtype),
        None if dt0 is None else jnp.asarray(dt0, dtype),
        (x, jnp.zeros((), dtype)),
        probes,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=throw,
        progress_meter=progress_meter,
    )
    assert sol.ys is not None  # the default SaveAt(t1=True) saves the end state
    z, delta = sol.ys[0][0], sol.ys[1][0]
    prior = jnp.asarray(prior_log_prob(z), dtype)
    lp = prior + delta
    if return_stats:
        stats = {"latent": z, "prior_log_prob": prior, "delta_log_prob": delta}
        stats.update(solution_stats(sol, solver))
        return lp, stats
    return lp


def bits_per_dim(
    sde: AbstractSDE,
    score: ScoreFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: Key | None = None,
    levels: int = 256,
    dequantize: bool = True,
    **kwargs,
):
    r"""Bits per dimension of quantised data under the PF-ODE model, with uniform dequantisation.

    The data lie on the grid $x = k\Delta - 1$, $k \in \{0, \dots, L-1\}$, $\Delta = 2/(L - 1)$
    ($L$ = `levels`; images scaled to $[-1, 1]$). The discrete model gives bin $k$ the mass of a
    cube of side $\Delta$ centred on the grid point, and with $u \sim \mathcal U(-\tfrac12,
    \tfrac12)^d$ Jensen's inequality gives the dequantisation bound

    $$\log P(x) = \log \mathbb E_u\big[p(x + \Delta u)\big] + d\log\Delta
      \ \ge\ \mathbb E_u\big[\log p(x + \Delta u)\big] + d\log\Delta .$$

    One draw of $u$ (from `key`) gives the single-sample estimate returned here,

    $$\mathrm{bpd} = -\frac{\log p(x + \Delta u) + d\log\Delta}{d\log 2},$$

    an upper bound on $-\log_2 P(x)/d$ in expectation. This is the same number for any affine
    rescaling of the grid (e.g. $\{0, \dots, 255\}$ with unit bins). See
    [bits per dimension](../derivations/probability-flow.md#bits-per-dimension).

    Args:
        sde: the SDE.
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$.
        x: one quantised example with entries on the grid (any shape).
        key: PRNG key for the dequantisation noise (and Hutchinson probes); needed when
            `dequantize`.
        levels: number of levels $L \ge 2$ per entry.
        dequantize: add $\Delta u$ (True) or treat `x` as already dequantised (False).
        **kwargs: passed to [`log_likelihood`][scoredyn.log_likelihood] (`estimator`,
            `t_eps`, `rtol`, `progress_meter`, ...).

    Returns:
        The scalar bits/dim; with `return_stats=True`, `(bpd, stats)`.

    Raises:
        ValueError: for `levels < 2`, a missing `key`, (concrete) `x` off the grid, or `x` with
            a NaN or infinite entry.
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise ValueError(f"`levels` must be a Python int >= 2, got {levels!r}.")
    width = 2.0 / (levels - 1)
    if dequantize and key is None:
        raise ValueError("`key` must be given to draw the dequantisation noise.")
    if is_concrete(x):  # NaN data blame `x` (checked before the grid test, which NaN passes)
        check_finite_data(check_state(x, "x"), "x")
    if dequantize and is_concrete(x):
        k = (np.asarray(x, dtype=np.float64) + 1.0) / width
        off = np.abs(k - np.round(k))
        if np.any(off > 1e-3) or np.any((k < -1e-3) | (k > levels - 1 + 1e-3)):
            raise ValueError(
                f"`x` must lie on the grid k * 2/(levels - 1) - 1, k = 0..{levels - 1} "
                f"(levels={levels}); got values off the grid."
            )
    x = check_state(x, "x")
    if dequantize:
        assert key is not None  # checked above
        k_u, key = jax.random.split(key)
        u = jax.random.uniform(k_u, x.shape, x.dtype, minval=-0.5, maxval=0.5)
        x = x + width * u
    return_stats = kwargs.pop("return_stats", False)
    lp, stats = log_likelihood(sde, score, x, key=key, return_stats=True, **kwargs)
    d = x.size
    bpd = -(lp + d * math.log(width)) / (d * math.log(2.0))
    return (bpd, stats) if return_stats else bpd
