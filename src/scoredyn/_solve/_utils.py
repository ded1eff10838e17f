"""Input checks and small helpers shared by the solvers and the likelihood."""

import math

import diffrax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._checks import check_float_dtype, check_int, real_float
from .._misc import as_float, check_vector_field, is_concrete
from .._sde import VESDE, AbstractLinearSDE, AbstractSDE


def check_sde(sde, name: str = "sde", *, linear: bool = False) -> None:
    """Raise `TypeError` unless `sde` is a scoredyn SDE (a linear one when `linear`)."""
    want = AbstractLinearSDE if linear else AbstractSDE
    if not isinstance(sde, want):
        kind = "a linear SDE (AbstractLinearSDE)" if linear else "a scoredyn AbstractSDE"
        raise TypeError(f"`{name}` must be {kind}, got {type(sde).__name__}.")


def check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """A tuple of non-negative Python ints (lists are accepted and converted)."""
    if not isinstance(shape, tuple | list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise TypeError(
            f"`{name}` must be a tuple of non-negative ints (one example, no batch axis), "
            f"got {shape!r}."
        )
    return tuple(shape)


def check_dtype(dtype, name: str = "dtype"):
    """The default float when `dtype` is None; otherwise a floating dtype."""
    return check_float_dtype(dtype, name)


def check_num_steps(n, name: str = "num_steps") -> int:
    """A Python int >= 1 (it sets a loop length, so it must be static)."""
    return check_int(n, name)


def default_t_eps(sde: AbstractSDE, *, likelihood: bool = False) -> float:
    r"""Default end time $t_\epsilon$ of a sampler or of the likelihood integral.

    Following Song et al. (2021): $10^{-5}$ for likelihoods and for the VE SDE (whose
    $\sigma(t)$ is already tiny at $10^{-3}$), $10^{-3}$ for sampling the VP-type SDEs.
    """
    if likelihood or isinstance(sde, VESDE):
        return 1e-5
    return 1e-3


def check_t_eps(t_eps, sde: AbstractSDE, *, likelihood: bool = False, name: str = "t_eps"):
    """Resolve the default and check `0 < t_eps < T` when concrete."""
    if t_eps is None:
        return default_t_eps(sde, likelihood=likelihood)
    if is_concrete(t_eps, sde.T):
        v = real_float(t_eps, name)
        T = real_float(sde.T, "T")
        if not (0.0 < v < T) or math.isnan(v):
            raise ValueError(f"`{name}` must satisfy 0 < {name} < T = {T}, got {v}.")
    return t_eps


def check_state(x, name: str) -> Array:
    """A floating array (one example)."""
    return as_float(x, name)


def check_score(score, name: str, t, x: Array) -> None:
    """Raise unless `score` is callable and maps `(t, x)` to an array like `x`."""
    if not callable(score):
        raise TypeError(f"`{name}` must be callable (t, x) -> array like x, got {score!r}.")
    check_vector_field(score, name, t, x)


def check_solver(solver, name: str = "solver") -> None:
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"`{name}` must be a diffrax solver, got {solver!r}.")


def check_controller(controller, name: str = "stepsize_controller") -> None:
    if not isinstance(controller, diffrax.AbstractStepSizeController):
        raise TypeError(f"`{name}` must be a diffrax step-size controller, got {controller!r}.")


def check_progress_meter(meter, name: str = "progress_meter") -> None:
    if not isinstance(meter, diffrax.AbstractProgressMeter):
        raise TypeError(
            f"`{name}` must be a diffrax progress meter (e.g. diffrax.TextProgressMeter()), "
            f"got {meter!r}."
        )


def check_ts(ts, lo, hi, dtype, *, decreasing: bool, name: str = "ts"):
    """Save times: a 1-D array inside the integration interval, ordered along it."""
    if ts is None:
        return None
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 1:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D array of times, got shape {jnp.shape(ts)}."
        )
    if is_concrete(ts, lo, hi):
        arr = np.asarray(ts, dtype=np.float64)
        a, b = float(np.asarray(lo)), float(np.asarray(hi))
        lo_, hi_ = min(a, b), max(a, b)
        slack = 1e-6 * max(abs(lo_), abs(hi_), 1.0)
        if np.any((arr < lo_ - slack) | (arr > hi_ + slack)):
            raise ValueError(f"`{name}` must lie in [{lo_}, {hi_}], got {arr}.")
        steps = np.diff(arr)
        if np.any(steps > 0 if decreasing else steps < 0):
            order = "non-increasing" if decreasing else "non-decreasing"
            raise ValueError(f"`{name}` must be {order} along the integration, got {arr}.")
    return jnp.asarray(ts, dtype)


def evals_per_step(solver) -> tuple[int, int] | None:
    """(vector-field evaluations per step, extra evaluations at the start) of an explicit solver.

    Explicit Runge–Kutta methods with $s$ stages cost $s$ evaluations per step, or $s - 1$ plus
    one at the start when first-same-as-last (FSAL). `None` for other solvers.
    """
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if tableau is None or not isinstance(solver, diffrax.AbstractERK):
        return None
    stages = len(tableau.c) + 1
    return (stages - 1, 1) if tableau.fsal else (stages, 0)


def solution_stats(sol, solver) -> dict:
    """diffrax's step counts plus the number of vector-field evaluations (explicit solvers)."""
    stats = {
        "num_steps": sol.stats["num_steps"],
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
    }
    per = evals_per_step(solver)
    if per is not None:
        stats["nfe"] = per[0] * sol.stats["num_steps"] + per[1]
    return stats
