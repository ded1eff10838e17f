"""The deterministic flow map of the probability-flow ODE: data to latents and back."""

from typing import Any

import diffrax
from jaxtyping import ArrayLike, Float

from .._checks import check_finite_data
from .._custom_types import ScoreFn
from .._model import AbstractModel
from .._sde import AbstractSDE
from . import verbs
from ._utils import check_sde, check_state, check_t_eps
from .ode import solve_flow

_DEFAULT_SOLVER = diffrax.Tsit5()
_DEFAULT_CONTROLLER = diffrax.PIDController(rtol=1e-5, atol=1e-5)


def _encode_flow(
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
    r"""The 0.1 form of [`encode`][scoredyn.encode]: see its docstring."""
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


def _decode_flow(
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
    r"""The 0.1 form of [`decode`][scoredyn.decode]: see its docstring."""
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


def encode(process: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    r"""Map data to a latent: integrate the probability-flow ODE from $t_\epsilon$ up to $T$.

    **Two call forms.** With a model (an [`AbstractModel`][scoredyn.AbstractModel]) as the
    second argument it is the sampling layer's verb,
    `encode(process, model, solver, grid, x0, *, cond=(), save_trajectory=False)`,
    returning an [`sd.Sample`][scoredyn.Sample]: a solver that can run its grid backwards
    ([`sd.ODE`][scoredyn.ODE], any diffrax ODE solver and controller) on any grid, run
    backwards from `x0` at `grid[-1]` to `grid[0]` (a saved trajectory is indexed like `grid`:
    `trajectory[-1]` is `x0`). With a score function $(t, x) \mapsto \nabla_x \log p_t(x)$
    in that place it is scoredyn 0.1's flow map, documented below: the probability-flow ODE
    with a diffrax solver from $t_\epsilon$ up to $T$.

    Solves $\mathrm{d}x/\mathrm{d}t = f(t, x) - \tfrac12\nabla\cdot(g g^\top)
    - \tfrac12 g g^\top s(t, x)$ with $x(t_\epsilon)$ = `x0` and returns $z = x(T)$. With the
    exact score, the map pushes $p_{t_\epsilon}$ to $p_T \approx$ the prior, and it is a
    bijection whose inverse is [`decode`][scoredyn.decode]. See
    [the flow map](../derivations/probability-flow.md#the-flow-map).

    Args:
        process: the process; in the 0.1 form any [`AbstractSDE`][scoredyn.AbstractSDE].
        model: an [`AbstractModel`][scoredyn.AbstractModel] (the verb), or the score
            $(t, x) \mapsto \nabla_x\log p_t(x)$, returning an array like x (the 0.1 form).
        *args: the verb: `solver, grid, x0`. The 0.1 form: `x0`, one example (any shape;
            `jax.vmap` for a batch).
        **kwargs: the verb: `cond`, `save_trajectory`. The 0.1 form: `solver` (a diffrax ODE
            solver), `stepsize_controller`, `dt0` (initial step, positive; `None` lets an
            adaptive controller choose), `t_eps` (start time $0 < t_\epsilon < T$, default as
            in [`sample_ode`][scoredyn.sample_ode]), `max_steps`, `throw` (raise when the
            solver fails), `ts` (non-decreasing times in $[t_\epsilon, T]$: the trajectory at
            `ts`, shape `(len(ts), *x0.shape)`, is returned) and `return_stats` (also return
            `num_steps`, `nfe`, ...).

    Returns:
        The verb: an [`sd.Sample`][scoredyn.Sample] whose `x` is the latent at `grid[0]`. The
        0.1 form: the latent $z$, shaped like `x0` (or the trajectory); with `return_stats`,
        `(z, stats)`.

    Raises:
        TypeError: for a non-SDE `sde` or a `score` of the wrong shape or dtype.
        ValueError: for `t_eps` outside $(0, T)$ or badly ordered `ts`; in the verb, for a
            solver that adds noise on `grid` or cannot run backwards.

    Example:
        ```python
        z = sd.encode(sde, score, x0)          # x0.shape == z.shape
        x0_again = sd.decode(sde, score, z)
        # the verb: sd.ODE (any diffrax solver) on any grid; decode takes any deterministic
        # solver
        model, grid = sd.ScoreModel(score), sd.grids.log_snr(sde, 20)
        z2 = sd.encode(sde, model, sd.ODE(), grid, x0).x
        x2 = sd.decode(sde, model, sd.DPMSolver(order=2), grid, z2).x
        ```
    """
    # one verb, two documented forms: the model wrapper's type says which (a score
    # function is a plain callable, never an AbstractModel)
    if isinstance(model, AbstractModel):
        return verbs.encode(process, model, *args, **kwargs)
    return _encode_flow(process, model, *args, **kwargs)


def decode(process: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    r"""Map a latent to data: integrate the probability-flow ODE from $T$ down to $t_\epsilon$.

    **Two call forms.** With a model (an [`AbstractModel`][scoredyn.AbstractModel]) as the
    second argument it is the sampling layer's verb,
    `decode(process, model, solver, grid, z, *, cond=(), save_trajectory=False)`,
    returning an [`sd.Sample`][scoredyn.Sample]: any deterministic solver (`sd.ODE`,
    `sd.DPMSolver`, `sd.DDIM`, ...) on any grid, from `z` at `grid[0]`: that is
    [`sample`][scoredyn.sample] with no key. With a score function
    $(t, x) \mapsto \nabla_x \log p_t(x)$ in that place it is scoredyn 0.1's flow map,
    documented below: the probability-flow ODE with a diffrax solver from $T$ down to
    $t_\epsilon$.

    The inverse of [`encode`][scoredyn.encode]: starts at $x(T)$ = `z` and returns
    $x(t_\epsilon)$. [`sample_ode`][scoredyn.sample_ode] is `decode` applied to a prior draw.
    See [the flow map](../derivations/probability-flow.md#the-flow-map).

    Args:
        process: the process; in the 0.1 form any [`AbstractSDE`][scoredyn.AbstractSDE].
        model: an [`AbstractModel`][scoredyn.AbstractModel] (the verb), or the score
            $(t, x) \mapsto \nabla_x\log p_t(x)$ (the 0.1 form).
        *args: the verb: `solver, grid, z`. The 0.1 form: `z`, one latent (any shape).
        **kwargs: the verb: `cond`, `save_trajectory`. The 0.1 form: `solver` (a diffrax ODE
            solver), `stepsize_controller`, `dt0` (initial step, negative; `None` lets an
            adaptive controller choose), `t_eps` (end time $0 < t_\epsilon < T$), `max_steps`,
            `throw`, `ts` (non-increasing times in $[t_\epsilon, T]$ at which to return the
            trajectory) and `return_stats`.

    Returns:
        The verb: an [`sd.Sample`][scoredyn.Sample] whose `x` is the data at `grid[-1]`. The
        0.1 form: $x(t_\epsilon)$ shaped like `z` (or the trajectory); with `return_stats`,
        `(x, stats)`.

    Raises:
        TypeError: for a non-SDE `sde` or a `score` of the wrong shape or dtype.
        ValueError: for `t_eps` outside $(0, T)$ or badly ordered `ts`.
    """
    # one verb, two documented forms: the model wrapper's type says which (a score
    # function is a plain callable, never an AbstractModel)
    if isinstance(model, AbstractModel):
        return verbs.decode(process, model, *args, **kwargs)
    return _decode_flow(process, model, *args, **kwargs)
