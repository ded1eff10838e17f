"""The deterministic flow map of the probability-flow ODE: data to latents and back."""

import diffrax
from jaxtyping import ArrayLike, Float

from .._checks import check_finite_data
from .._custom_types import ScoreFn
from .._sde import AbstractSDE
from ._utils import check_sde, check_state, check_t_eps
from .ode import solve_flow

_DEFAULT_SOLVER = diffrax.Tsit5()
_DEFAULT_CONTROLLER = diffrax.PIDController(rtol=1e-5, atol=1e-5)


def encode(
    sde: AbstractSDE,
    score: ScoreFn,
    x0: Float[ArrayLike, "*shape"],
    *,
    solver: diffrax.AbstractSolver = _DEFAULT_SOLVER,
    stepsize_controller: diffrax.AbstractStepSizeController = _DEFAULT_CONTROLLER,
    dt0: float | None = None,
    t_eps: float | None = None,
    max_steps: int | None = 4096,
    throw: bool = True,
    ts: Float[ArrayLike, " n"] | None = None,
    return_stats: bool = False,
):
    r"""Map data to a latent: integrate the probability-flow ODE from $t_\epsilon$ up to $T$.

    Solves $\mathrm{d}x/\mathrm{d}t = f(t, x) - \tfrac12\nabla\cdot(g g^\top)
    - \tfrac12 g g^\top s(t, x)$ with $x(t_\epsilon)$ = `x0` and returns $z = x(T)$. With the
    exact score, the map pushes $p_{t_\epsilon}$ to $p_T \approx$ the prior, and it is a
    bijection whose inverse is [`decode`][scoredyn.decode]. See
    [the flow map](../derivations/probability-flow.md#the-flow-map).

    Args:
        sde: any [`AbstractSDE`][scoredyn.AbstractSDE].
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$, returning an array like x.
        x0: one example (any shape); `jax.vmap` for a batch.
        solver: a diffrax ODE solver.
        stepsize_controller: a diffrax step-size controller.
        dt0: initial step (positive); `None` lets an adaptive controller choose.
        t_eps: start time $0 < t_\epsilon < T$ (default as in
            [`sample_ode`][scoredyn.sample_ode]).
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        ts: optional non-decreasing times in $[t_\epsilon, T]$; then the trajectory at `ts`,
            shape `(len(ts), *x0.shape)`, is returned.
        return_stats: also return the solver statistics (`num_steps`, `nfe`, ...).

    Returns:
        The latent $z$, shaped like `x0` (or the trajectory); with `return_stats`, `(z, stats)`.

    Raises:
        TypeError: for a non-SDE `sde` or a `score` of the wrong shape or dtype.
        ValueError: for `t_eps` outside $(0, T)$ or badly ordered `ts`.

    Example:
        ```python
        z = sd.encode(sde, score, x0)          # x0.shape == z.shape
        x0_again = sd.decode(sde, score, z)
        ```
    """
    check_sde(sde)
    x0 = check_finite_data(check_state(x0, "x0"), "x0")
    t_eps = check_t_eps(t_eps, sde)
    return solve_flow(
        sde,
        score,
        x0,
        t_eps,
        sde.T,
        solver=solver,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        max_steps=max_steps,
        throw=throw,
        ts=ts,
        return_stats=return_stats,
        name="encode",
    )


def decode(
    sde: AbstractSDE,
    score: ScoreFn,
    z: Float[ArrayLike, "*shape"],
    *,
    solver: diffrax.AbstractSolver = _DEFAULT_SOLVER,
    stepsize_controller: diffrax.AbstractStepSizeController = _DEFAULT_CONTROLLER,
    dt0: float | None = None,
    t_eps: float | None = None,
    max_steps: int | None = 4096,
    throw: bool = True,
    ts: Float[ArrayLike, " n"] | None = None,
    return_stats: bool = False,
):
    r"""Map a latent to data: integrate the probability-flow ODE from $T$ down to $t_\epsilon$.

    The inverse of [`encode`][scoredyn.encode]: starts at $x(T)$ = `z` and returns
    $x(t_\epsilon)$. [`sample_ode`][scoredyn.sample_ode] is `decode` applied to a prior draw.
    See [the flow map](../derivations/probability-flow.md#the-flow-map).

    Args:
        sde: any [`AbstractSDE`][scoredyn.AbstractSDE].
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$.
        z: one latent (any shape).
        solver: a diffrax ODE solver.
        stepsize_controller: a diffrax step-size controller.
        dt0: initial step (negative); `None` lets an adaptive controller choose.
        t_eps: end time $0 < t_\epsilon < T$.
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        ts: optional non-increasing times in $[t_\epsilon, T]$ at which to return the trajectory.
        return_stats: also return the solver statistics.

    Returns:
        $x(t_\epsilon)$ shaped like `z` (or the trajectory); with `return_stats`, `(x, stats)`.

    Raises:
        TypeError: for a non-SDE `sde` or a `score` of the wrong shape or dtype.
        ValueError: for `t_eps` outside $(0, T)$ or badly ordered `ts`.
    """
    check_sde(sde)
    z = check_finite_data(check_state(z, "z"), "z")
    t_eps = check_t_eps(t_eps, sde)
    return solve_flow(
        sde,
        score,
        z,
        sde.T,
        t_eps,
        solver=solver,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        max_steps=max_steps,
        throw=throw,
        ts=ts,
        return_stats=return_stats,
        name="decode",
    )
