"""Sampling by the probability-flow ODE (any diffrax ODE solver)."""

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Key, ScoreFn
from .._model import ScoreModel
from .._sde import AbstractLinearSDE, AbstractSDE, probability_flow
from ._utils import (
    check_controller,
    check_dtype,
    check_score,
    check_sde,
    check_shape,
    check_solver,
    check_t_eps,
    check_ts,
    solution_stats,
)
from .ode_solver import ODE, integrate_flow
from .verbs import sample


def solve_flow(
    sde: AbstractSDE,
    score: ScoreFn,
    x: Array,
    t0,
    t1,
    *,
    solver,
    stepsize_controller,
    dt0,
    max_steps,
    throw,
    ts,
    return_stats,
    name: str,
):
    """Integrate the PF-ODE of `sde` from `t0` to `t1` (either direction) starting at `x`."""
    check_solver(solver)
    check_controller(stepsize_controller)
    check_score(score, "score", t0, x)
    if dt0 is None and isinstance(stepsize_controller, diffrax.ConstantStepSize):
        raise ValueError(
            "`dt0` must be given (e.g. dt0=-0.01 when integrating towards t=0) with a constant "
            "step size; got dt0=None with stepsize_controller=ConstantStepSize()."
        )
    dtype = x.dtype
    ts = check_ts(ts, t0, t1, dtype, decreasing=name == "decode")
    saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=ts)
    sol = integrate_flow(
        probability_flow(sde, score),
        x,
        t0,
        t1,
        solver=solver,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        max_steps=max_steps,
        throw=throw,
        saveat=saveat,
    )
    ys = sol.ys
    assert ys is not None
    out = ys[0] if ts is None else ys
    if return_stats:
        return out, solution_stats(sol, solver)
    return out


def sample_ode(
    key: Key,
    sde: AbstractLinearSDE,
    score: ScoreFn,
    shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.PIDController(
        rtol=1e-5, atol=1e-5
    ),
    dt0: float | None = None,
    t_eps: float | None = None,
    max_steps: int | None = 4096,
    throw: bool = True,
    dtype=None,
    ts: Float[ArrayLike, " n"] | None = None,
    return_stats: bool = False,
):
    r"""Draw one sample by integrating the probability-flow ODE from the prior.

    Draws $x_T \sim \mathcal N(0, \sigma(T)^2 I)$ (`sde.prior_sample`) and integrates

    $$\frac{\mathrm{d}x}{\mathrm{d}t} = f(t)\,x - \tfrac12 g(t)^2\,s(t, x)$$

    from $t = T$ down to $t = t_\epsilon$ with a diffrax ODE solver, where $s$ = `score`.
    This is `sd.sample(key, sde, sd.ScoreModel(score), sd.ODE(solver, stepsize_controller,
    dt0, max_steps, throw), jnp.array([T, t_eps]), sde.prior_sample(key, shape, dtype))`
    compiled as one program ([`ODE`][scoredyn.ODE]); with `ts`, the grid is
    `[T, *ts, t_eps]` and the trajectory without its two ends is returned.

    With the exact score the result is distributed as $p_{t_\epsilon}$, which tends to the data
    distribution as $t_\epsilon \to 0$. The map $x_T \mapsto x_{t_\epsilon}$ is
    [`decode`][scoredyn.decode]. See
    [the probability-flow ODE](../derivations/probability-flow.md#the-probability-flow-ode).

    Args:
        key: PRNG key for the prior draw.
        sde: a linear SDE (it supplies the prior).
        score: $(t, x) \mapsto \nabla_x \log p_t(x)$, returning an array shaped and typed like x.
        shape: shape of ONE example (a tuple of ints); `jax.vmap` over keys for a batch.
        solver: any diffrax ODE solver.
        stepsize_controller: a diffrax step-size controller (adaptive PID by default).
        dt0: initial step (negative: time runs backwards); `None` lets diffrax choose, which
            requires an adaptive controller.
        t_eps: end time $0 < t_\epsilon < T$; default $10^{-3}$ ($10^{-5}$ for the VE SDE).
        max_steps: diffrax's step budget.
        throw: raise when the solver fails (diffrax's `throw`).
        dtype: floating dtype of the sample (default float: float64 under x64).
        ts: optional times in $[t_\epsilon, T]$, non-increasing, at which to return the
            trajectory; the output then has shape `(len(ts), *shape)`.
        return_stats: also return a dict with `num_steps`, `num_accepted_steps`,
            `num_rejected_steps` and `nfe` (score evaluations, for explicit solvers).

    Returns:
        An array of shape `shape` (or the trajectory at `ts`); with `return_stats`,
        a pair `(sample, stats)`.

    Raises:
        TypeError: if `shape` is not a tuple of ints, `sde` is not linear, or `score` returns
            the wrong shape or dtype.
        ValueError: if `t_eps` is not in $(0, T)$ or `dt0` is missing with a constant step size.

    Example:
        ```python
        keys = jax.random.split(jax.random.key(0), 512)
        x0 = jax.vmap(lambda k: sd.sample_ode(k, sde, score, (2,)))(keys)   # (512, 2)
        ```

    References:
        Song et al., *Score-Based Generative Modeling through SDEs*, arXiv:2011.13456.
    """
    check_sde(sde, linear=True)
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    t_eps = check_t_eps(t_eps, sde)
    # checks on concrete values first; the kernel below sees tracers
    check_solver(solver)
    check_controller(stepsize_controller)
    check_score(score, "score", sde.T, jnp.zeros(shape, dtype))
    check_ts(ts, sde.T, t_eps, dtype, decreasing=True)
    if dt0 is None and isinstance(stepsize_controller, diffrax.ConstantStepSize):
        raise ValueError(
            "`dt0` must be given (e.g. dt0=-0.01 when integrating towards t=0) with a constant "
            "step size; got dt0=None with stepsize_controller=ConstantStepSize()."
        )
    ode = ODE(solver, stepsize_controller, dt0, max_steps, throw)
    return _sample_ode_kernel(key, sde, score, shape, dtype, t_eps, ode, ts, return_stats)


@eqx.filter_jit
def _sample_ode_kernel(key, sde, score, shape, dtype, t_eps, ode, ts, return_stats):
    """The prior draw and `sd.sample(key, sde, sd.ScoreModel(score), ode, grid, x_T)`, compiled
    whole (eager and jitted calls give the same bits). The grid is `[T, t_eps]`, or
    `[T, *ts, t_eps]` when `ts` is given (the ODE's interior grid points are save points only,
    so the solve is the same and the trajectory at `ts` is `trajectory[1:-1]`)."""
    x_T = sde.prior_sample(key, shape, dtype)
    T = jnp.asarray(sde.T, dtype)[None]
    te = jnp.asarray(t_eps, dtype)[None]
    if ts is None:
        grid = jnp.concatenate([T, te])
    else:
        grid = jnp.concatenate([T, jnp.asarray(ts, dtype), te])
    res = sample(key, sde, ScoreModel(score), ode, grid, x_T, save_trajectory=ts is not None)
    if ts is None:
        out = res.x
    else:
        assert res.trajectory is not None
        out = res.trajectory[1:-1]
    if return_stats:
        return out, res.stats
    return out
