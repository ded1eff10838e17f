"""Simulating SDEs with diffrax, and sampling by the reverse-time SDE."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._custom_types import Key, ScoreFn
from .._misc import check_time, check_vector_field, is_concrete
from .._model import ScoreModel
from .._sde import AbstractLinearSDE, AbstractSDE, reverse_sde
from ._utils import (
    check_controller,
    check_dtype,
    check_num_steps,
    check_score,
    check_sde,
    check_shape,
    check_solver,
    check_state,
    check_t_eps,
    check_ts,
)
from .diffrax_sde import DiffraxSDE, simulate_kernel
from .euler_maruyama import EulerMaruyama
from .verbs import sample


def simulate_sde(
    key: Key,
    sde: AbstractSDE,
    x: Float[ArrayLike, "*shape"],
    t0: float,
    t1: float,
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int | None = 1000,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    brownian_tol: float | None = None,
    max_steps: int | None = 65_536,
    throw: bool = True,
    ts: Float[ArrayLike, " n"] | None = None,
    return_stats: bool = False,
):
    r"""Simulate $\mathrm{d}x = b(t, x)\,\mathrm{d}t + g(t, x)\,\mathrm{d}W$ from `t0` to `t1`.

    Any [`AbstractSDE`][scoredyn.AbstractSDE] with diagonal noise, in either time direction.
    When `t1 < t0` the SDE is read in reverse time, as a
    [`ReverseSDE`][scoredyn.ReverseSDE] is: $x(t - h) \approx x(t) - b(t, x)\,h + g\sqrt{h}\,z$.
    Internally time is always run forward through $s = |t - t_0|$:

    $$y(s) = x(t_0 + \varsigma s),\qquad
      \mathrm{d}y = \varsigma\, b(t_0 + \varsigma s, y)\,\mathrm{d}s
      + g(t_0 + \varsigma s, y)\,\mathrm{d}B_s,\qquad \varsigma = \operatorname{sign}(t_1 - t_0),$$

    where $B$ is a standard Brownian motion in $s$ (a `diffrax.VirtualBrownianTree`), so that any
    diffrax SDE solver applies. `diffrax.Euler()` is Euler–Maruyama (Itô). For the additive
    noise of a linear SDE Itô and Stratonovich agree, so `diffrax.Heun()` is also valid there.

    Args:
        key: PRNG key for the Brownian motion.
        sde: the SDE.
        x: initial state at `t0` (one example, any shape).
        t0: start time (a Python float or concrete scalar).
        t1: end time; `t1 < t0` integrates in reverse time.
        solver: a diffrax SDE solver; the Lévy area it needs is provided.
        num_steps: number of equal steps (the constant step is $|t_1 - t_0|/N$). With an
            adaptive `stepsize_controller` it only sets the initial step.
        stepsize_controller: `None` for fixed steps, or a diffrax controller (adaptive SDE
            stepping needs a solver with an error estimate and a small `brownian_tol`).
        brownian_tol: tolerance of the Brownian tree; default half a step.
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        ts: optional times between `t0` and `t1`, ordered from `t0` to `t1`, at which to return
            the path; the output then has shape `(len(ts), *x.shape)`.
        return_stats: also return the solver statistics.

    Returns:
        $x(t_1)$ shaped like `x` (or the path at `ts`); with `return_stats`, `(x, stats)`.

    Raises:
        ValueError: if `num_steps < 1`, `t0 == t1`, `t0` or `t1` lies outside $[0, T]$, or the
            drift (diffusion) is not shaped like (broadcastable to) `x`.
        TypeError: for a non-SDE `sde`, a drift of another dtype than `x`, or a non-diffrax
            `solver`.

    Example:
        ```python
        xt = sd.simulate_sde(key, sde, x0, 0.0, 0.5, num_steps=200)   # forward
        ```
    """
    check_sde(sde)
    x = check_state(x, "x")
    if not is_concrete(t0, t1):
        raise ValueError("`t0` and `t1` must be concrete (their order sets the time direction).")
    if float(t0) == float(t1):
        raise ValueError(f"`t0` and `t1` must differ, got t0 = t1 = {float(t0)}.")
    check_time(t0, sde.T, "t0")
    check_time(t1, sde.T, "t1")
    check_vector_field(sde.drift, "sde.drift", t0, x)
    g = jax.eval_shape(sde.diffusion, jnp.asarray(t0, x.dtype), x)
    try:
        jnp.broadcast_shapes(g.shape, x.shape)
    except ValueError:
        raise ValueError(
            f"`sde.diffusion(t, x)` must broadcast against x {x.shape}, got shape {g.shape}."
        ) from None
    sign = 1.0 if float(t1) > float(t0) else -1.0
    return _simulate(
        key,
        sde,
        x,
        t0,
        t1,
        sign,
        solver=solver,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        brownian_tol=brownian_tol,
        max_steps=max_steps,
        throw=throw,
        ts=ts,
        return_stats=return_stats,
    )


def _simulate(
    key,
    sde,
    x,
    t0,
    t1,
    sign: float,
    *,
    solver,
    num_steps,
    stepsize_controller,
    brownian_tol,
    max_steps,
    throw,
    ts,
    return_stats,
):
    """`simulate_sde` once the direction `sign` of time is known: checks, then the kernel."""
    stepsize_controller, num_steps, ts = _check_simulation(
        solver, stepsize_controller, num_steps, brownian_tol, ts, t0, t1, x.dtype, sign
    )
    return simulate_kernel(
        key,
        sde,
        x,
        t0,
        t1,
        sign,
        solver,
        num_steps,
        stepsize_controller,
        brownian_tol,
        max_steps,
        throw,
        ts,
        return_stats,
    )


def _check_simulation(
    solver, stepsize_controller, num_steps, brownian_tol, ts, t0, t1, dtype, sign
):
    check_solver(solver)
    if stepsize_controller is None:
        stepsize_controller = diffrax.ConstantStepSize()
        num_steps = check_num_steps(num_steps)
    else:
        check_controller(stepsize_controller)
        if num_steps is not None:
            num_steps = check_num_steps(num_steps)
    ts = check_ts(ts, t0, t1, dtype, decreasing=sign < 0)
    if brownian_tol is None and num_steps is None:
        raise ValueError("`brownian_tol` must be given when `num_steps` is None.")
    return stepsize_controller, num_steps, ts


def sample_sde(
    key: Key,
    sde: AbstractLinearSDE,
    score: ScoreFn,
    shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver | EulerMaruyama | None = None,
    num_steps: int = 1000,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    t_eps: float | None = None,
    brownian_tol: float | None = None,
    max_steps: int | None = 65_536,
    throw: bool = True,
    dtype=None,
    ts: Float[ArrayLike, " n"] | None = None,
    return_stats: bool = False,
):
    r"""Draw one sample by integrating the reverse-time SDE from the prior.

    Draws $x_T \sim \mathcal N(0, \sigma(T)^2 I)$ and integrates, from $t = T$ down to
    $t_\epsilon$,

    $$\mathrm{d}x = \big[f(t)\,x - g(t)^2\,s(t, x)\big]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar W$$

    with `num_steps` equal steps. By default (fixed steps, no save times) this is
    Euler–Maruyama without a Brownian tree:
    $x_{t-h} = x_t - h\,[f x_t - g^2 s(t, x_t)] + g\sqrt h\,z$, one Gaussian draw $z$ per step,
    and no noise on the last step (its output is the mean of the last transition, as in
    score_sde's `noise_removal`). That is `sd.sample(k_bm, sde, sd.ScoreModel(score),
    sd.EulerMaruyama(), grid, x_T)` with `k_prior, k_bm = jax.random.split(key)`,
    `x_T = sde.prior_sample(k_prior, shape, dtype)` and `grid` the `num_steps` equal steps from
    $T$ to $t_\epsilon$, compiled as one program, as cheap as a hand-written `lax.scan`. See
    [sampling the reverse SDE](../derivations/reverse-sde.md#sampling).

    **Diffrax solvers.** A diffrax SDE solver (`diffrax.Euler()`, `Heun()`, `ShARK()`, ...)
    integrates with a `VirtualBrownianTree` through [`simulate_sde`][scoredyn.simulate_sde]
    (time substituted $s = T - t$ so that diffrax runs forwards), as
    [`sd.DiffraxSDE`][scoredyn.DiffraxSDE]; it is what a `stepsize_controller`, a
    `brownian_tol` or save times `ts` need, and it is the default when one of them is given
    (then `diffrax.Euler()`). `solver=diffrax.Euler()` with fixed steps reproduces scoredyn
    0.1's `sample_sde` bit for bit (its default until 0.2; noise on every step, the last
    included, and 3.6-5.3x the cost of the tree-free path, `docs/performance.md`).
    `sd.EulerMaruyama(final_noise=True)` samples that same distribution without the tree
    (other bits).

    Args:
        key: PRNG key (split into the prior draw and the Brownian motion).
        sde: a linear SDE.
        score: $(t, x) \mapsto \nabla_x\log p_t(x)$, returning an array like x.
        shape: shape of ONE example (tuple of ints).
        solver: `None` (the default): [`sd.EulerMaruyama()`][scoredyn.EulerMaruyama] for
            fixed steps, `diffrax.Euler()` when `stepsize_controller`, `brownian_tol` or `ts`
            is given; or a diffrax SDE solver (`Euler`, `Heun`, `ShARK`, ...); or an
            `sd.EulerMaruyama(...)` (then `stepsize_controller`, `brownian_tol` and `ts` must
            be `None`).
        num_steps: number of equal steps from $T$ to $t_\epsilon$ (initial step when adaptive).
        stepsize_controller: `None` (fixed steps) or a diffrax controller.
        t_eps: end time $0 < t_\epsilon < T$; default $10^{-3}$ ($10^{-5}$ for VE).
        brownian_tol: tolerance of the Brownian tree (default half a step).
        max_steps: diffrax's step budget.
        throw: raise when the solver fails.
        dtype: floating dtype (default float).
        ts: optional non-increasing times in $[t_\epsilon, T]$ at which to return the path.
        return_stats: also return the solver statistics.

    Returns:
        A sample of shape `shape` (or the path at `ts`); with `return_stats`, `(x, stats)`.

    Raises:
        TypeError: for a bad `shape`, a non-linear `sde` or a wrong-shaped `score`.
        ValueError: for `t_eps` outside $(0, T)$ or `num_steps < 1`; with
            `sd.EulerMaruyama()`, for a `stepsize_controller`, `brownian_tol` or `ts`.

    Example:
        ```python
        x = sd.sample_sde(key, sde, score, (2,), num_steps=200)
        ```

    References:
        Anderson, *Reverse-time diffusion equation models*, 1982; Song et al., arXiv:2011.13456.
    """
    check_sde(sde, linear=True)
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    num_steps = check_num_steps(num_steps)
    t_eps = check_t_eps(t_eps, sde)
    check_score(score, "score", sde.T, jnp.zeros(shape, dtype))
    method: DiffraxSDE | EulerMaruyama
    if solver is None:
        # the tree-free path unless something only the Brownian tree can do is asked for
        needs_tree = any(v is not None for v in (stepsize_controller, brownian_tol, ts))
        solver = diffrax.Euler() if needs_tree else EulerMaruyama()
    if isinstance(solver, EulerMaruyama):
        given = {"stepsize_controller": stepsize_controller, "brownian_tol": brownian_tol, "ts": ts}
        bad = [name for name, v in given.items() if v is not None]
        if bad:
            raise ValueError(
                f"sd.EulerMaruyama() takes fixed steps on the grid and no Brownian tree: "
                f"{', '.join(f'`{b}`' for b in bad)} must be None (use a diffrax solver, e.g. "
                "the default diffrax.Euler(), for adaptive steps or save times off the grid)."
            )
        method = solver
    else:
        _, _, ts = _check_simulation(
            solver, stepsize_controller, num_steps, brownian_tol, ts, sde.T, t_eps, dtype, -1.0
        )
        method = DiffraxSDE(solver, stepsize_controller, brownian_tol, max_steps, throw)
    return _sample_sde_kernel(
        key, sde, score, shape, dtype, t_eps, method, num_steps, ts, return_stats
    )


def _uniform_grid(T, t_eps, num_steps: int, dtype):
    """`num_steps` equal steps from T to t_eps, ends exact. A NumPy array when both are concrete,
    so that it is a literal of the compiled program: XLA then folds the step-size arithmetic as
    it did when scoredyn 0.1's kernel had `T` and `t_eps` as Python constants (same bits)."""
    if is_concrete(T, t_eps):
        grid = np.linspace(float(T), float(t_eps), num_steps + 1).astype(dtype)
        grid[0], grid[-1] = T, t_eps
        return grid
    T, te = jnp.asarray(T, dtype), jnp.asarray(t_eps, dtype)
    return jnp.linspace(T, te, num_steps + 1).at[0].set(T).at[-1].set(te)


@eqx.filter_jit
def _sample_sde_kernel(key, sde, score, shape, dtype, t_eps, solver, num_steps, ts, return_stats):
    """The prior draw and the reverse-time simulation, compiled whole (eager and jitted calls
    give the same bits): `sd.sample(k_bm, sde, sd.ScoreModel(score), solver, grid, x_T)` on the
    uniform grid of `num_steps` steps, with `k_prior, k_bm = jax.random.split(key)`. Save times
    `ts` need not be grid points, so that case runs the same diffrax kernel directly, saving at
    `ts`."""
    k_prior, k_bm = jax.random.split(key)
    x_T = sde.prior_sample(k_prior, shape, dtype)
    if ts is not None:
        assert isinstance(solver, DiffraxSDE)
        return simulate_kernel(
            k_bm,
            reverse_sde(sde, score),
            x_T,
            sde.T,
            t_eps,
            -1.0,
            solver.solver,
            num_steps,
            solver.controller(),
            solver.brownian_tol,
            solver.max_steps,
            solver.throw,
            ts,
            return_stats,
        )
    grid = _uniform_grid(sde.T, t_eps, num_steps, dtype)
    res = sample(k_bm, sde, ScoreModel(score), solver, grid, x_T)
    if return_stats:
        return res.x, res.stats
    return res.x
