r"""Diffusion posterior sampling (Chung et al. 2023) for a differentiable measurement operator.

For $y = A(x_0) + n$, $n\sim\mathcal N(0, \sigma_y^2 I)$, the score of the posterior at a noisy
point is $\nabla\log p_t(x) + \nabla_x\log p(y\mid x_t = x)$. The likelihood of a noisy point
is intractable; DPS replaces it by the likelihood of the posterior mean,

$$p(y\mid x_t) \approx p\big(y\mid x_0 = \hat x_0(x_t)\big)
  = \mathcal N\big(y;\ A(\hat x_0(x_t)),\ \sigma_y^2 I\big),$$

and differentiates through the denoiser. Two forms: [`DPSGuidance`][scoredyn.DPSGuidance], a
model transform adding $w\nabla_x\log\mathcal N(y; A(\hat x_0), \sigma_y^2 I)$ to the score
(any solver runs it), and [`DPS`][scoredyn.DPS], a solver wrapper taking the paper's
normalised gradient step after each step of any solver. See
[inverse problems](../derivations/inverse-problems.md#dps).
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import as_float, check_positive, is_concrete, real_float
from .._convert import eps_from_score, x0_from_eps
from .._custom_types import ScalarLike
from .._model import AbstractModel, check_model
from .._process import AbstractProcess
from .._solve.base import AbstractSolver, AbstractState, Sample, SolverKey
from .replacement import base_nfe, check_solver, grid_trajectory, scan_carry, visit_coords, with_x


def check_scale(value, name: str) -> None:
    """A finite real scalar when concrete (a traced one may be swept under `jit`)."""
    if is_concrete(value) and not math.isfinite(real_float(value, name)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")


def check_operator(operator) -> None:
    if not callable(operator):
        raise TypeError(
            f"`operator` must be callable x0 -> measurement (A, for ONE example), got {operator!r}."
        )


def residual(operator, y: Array, x0: Array) -> Array:
    r"""$y - A(\hat x_0)$, with A's output checked against `y` (at trace time)."""
    out = operator(x0)
    if jnp.shape(out) != y.shape:
        raise ValueError(
            f"`operator(x0)` must return an array shaped like the measurement `y` {y.shape}, "
            f"got shape {jnp.shape(out)}."
        )
    return y.astype(x0.dtype) - jnp.asarray(out).astype(x0.dtype)


# Each prediction of the guided model: the base model's method, its conversion to x0-hat, and
# the guidance term added to it when the score gains w * g (score = -eps / sigma).
def _to_x0(kind: str, alpha, sigma, x, pred):
    if kind == "x0":
        return pred
    eps = pred if kind == "eps" else eps_from_score(alpha, sigma, x, pred)
    return x0_from_eps(alpha, sigma, x, eps)


def _shift(kind: str, alpha, sigma, wg):
    if kind == "score":
        return wg
    if kind == "eps":
        return -sigma * wg
    return sigma**2 / alpha * wg  # x0 = (x - sigma eps) / alpha


class DPSGuidance(AbstractModel):
    r"""Diffusion posterior sampling as a model transform: the score plus $w$ times the gradient
    of the DPS approximation to $\log p(y\mid x_t)$,

    $$\nabla\log p_w(x) = \nabla\log p_t(x) + w\,\nabla_x\Big(-\frac{\lVert y -
      A(\hat x_0(x))\rVert^2}{2\sigma_y^2}\Big),\qquad
      \hat\varepsilon_w = \hat\varepsilon - w\,\sigma\,\nabla_x\log
      \mathcal N\big(y;\ A(\hat x_0(x)),\ \sigma_y^2 I\big),$$

    where $\hat x_0(x)$ is the wrapped model's posterior-mean prediction at $x$, differentiated
    through (one forward and one backward pass of the network per evaluation). $w = 1$ is the
    DPS approximation $p(y\mid x_t)\approx p(y\mid x_0 = \hat x_0(x_t))$ itself; Chung et al.
    tune a step size instead ([`DPS`][scoredyn.DPS] takes their normalised step). The guided
    predictions of every parameterisation ($\hat\varepsilon$, $\hat x_0$, score) are formed from
    one evaluation of the wrapped model in that parameterisation.

    The approximation ignores the spread of $x_0$ given $x_t$ (exact:
    $p(y\mid x_t) = \mathcal N(y; A\hat x_0, \sigma_y^2 I + A\operatorname{Cov}[x_0\mid x_t]A^\top)$
    for linear $A$ and a Gaussian prior), so it over-weights the measurement at high noise
    ([derivation and measured error](../derivations/inverse-problems.md#dps)).

    Args:
        model: the [`AbstractModel`][scoredyn.AbstractModel] to guide (called with the
            sample's `cond`).
        operator: the measurement operator $A$, `operator(x0) -> array shaped like y`, for ONE
            example; differentiable.
        y: the measurement $y$.
        noise_std: the measurement noise $\sigma_y > 0$.
        scale: the guidance weight $w$ (default 1; may be traced).

    Raises:
        TypeError: for a `model` that is not an `AbstractModel` or an `operator` that is not
            callable.
        ValueError: for `noise_std` not positive and finite, a non-finite `scale`; at trace
            time, for an `operator` whose output is not shaped like `y`.

    Example:
        ```python
        A = lambda x0: x0[:2]                     # observe the first two coordinates
        guided = sd.DPSGuidance(sd.EpsModel(net), A, y, noise_std=0.1)
        res = sd.sample(key, sched, guided, sd.DDPM(), sd.grids.even(1000, 200), x_T)
        ```

    References:
        Chung et al., *Diffusion Posterior Sampling for General Noisy Inverse Problems*,
        arXiv:2209.14687.
    """

    model: AbstractModel
    operator: Callable[[Array], Array]
    y: Float[Array, "..."]
    noise_std: ScalarLike
    scale: ScalarLike

    def __init__(
        self,
        model: AbstractModel,
        operator: Callable[[Array], Array],
        y: Float[ArrayLike, "..."],
        noise_std: ScalarLike,
        scale: ScalarLike = 1.0,
    ):
        self.model = check_model(model, "model")
        check_operator(operator)
        self.operator = operator
        self.y = as_float(y, "y")
        check_positive(noise_std, "noise_std")
        self.noise_std = noise_std
        check_scale(scale, "scale")
        self.scale = scale

    def _guided(self, kind: str, alpha, sigma, t, x, cond):
        alpha = jnp.asarray(alpha, x.dtype)
        sigma = jnp.asarray(sigma, x.dtype)
        method = {"eps": self.model.eps_at, "x0": self.model.x0_at, "score": self.model.score_at}

        def log_lik(x):
            pred = method[kind](alpha, sigma, t, x, *cond)
            r = residual(self.operator, self.y, _to_x0(kind, alpha, sigma, x, pred))
            std = jnp.asarray(self.noise_std, x.dtype)
            return -0.5 * jnp.sum(r**2) / std**2, pred

        g, pred = jax.grad(log_lik, has_aux=True)(x)
        wg = jnp.asarray(self.scale, x.dtype) * g.astype(x.dtype)
        return pred + _shift(kind, alpha, sigma, wg)

    def eps_at(self, alpha, sigma, t, x, *cond):
        return self._guided("eps", alpha, sigma, t, x, cond)

    def x0_at(self, alpha, sigma, t, x, *cond):
        return self._guided("x0", alpha, sigma, t, x, cond)

    def score_at(self, alpha, sigma, t, x, *cond):
        return self._guided("score", alpha, sigma, t, x, cond)


class DPSState(AbstractState):
    r"""State of [`DPS`][scoredyn.DPS]: `x` at `coords[i]`, the wrapped solver's state, and
    what the gradient step needs (process, model, condition, measurement)."""

    x: Array
    i: Array
    base: AbstractState
    coords: Array
    process: AbstractProcess
    model: AbstractModel
    cond: tuple
    y: Array


class DPS(AbstractSolver):
    r"""Diffusion posterior sampling (Chung et al. 2023, Algorithm 1) around any solver: after
    each step, a normalised gradient step on the measurement residual of $\hat x_0$.

    With $x_i$ the state before step $i$ (at grid point $t_i$), $x'_{i+1}$ the base solver's
    step from it, $\hat x_0(x_i)$ = `model.x0(process, t_i, x_i, *cond)` and
    $r(x) = \lVert y - A(\hat x_0(x))\rVert$,

    $$x_{i+1} = x'_{i+1} - \frac{\zeta}{r(x_i)}\,\nabla_{x_i}r(x_i)^2,$$

    the paper's step size $\zeta_i = \zeta/\lVert y - A(\hat x_0(x_i))\rVert$ (for Gaussian
    noise). The step does not involve $\sigma_y$: the normalisation makes its length
    $2\zeta\lVert\nabla r\rVert$, independent of the residual's scale, and $\zeta$ is tuned
    (the paper uses $\zeta \in [0.1, 1]$ with DDPM on 1000 steps).
    [`DPSGuidance`][scoredyn.DPSGuidance] is the unnormalised, $\sigma_y$-weighted form as a
    model transform.

    The gradient costs one more forward and backward pass of the model per step (it is not
    shared with the base solver's evaluation). Stochastic exactly when the base solver is.

    Args:
        solver: the [`AbstractSolver`][scoredyn.AbstractSolver] to wrap.
        operator: the measurement operator $A$, `operator(x0) -> array shaped like y`, for ONE
            example; differentiable.
        y: the measurement $y$.
        step_size: $\zeta \ge 0$ (may be traced).

    Raises:
        TypeError: for a `solver` that is not an `AbstractSolver` or an `operator` that is not
            callable.
        ValueError: for a negative or non-finite `step_size`; at trace time, for an `operator`
            whose output is not shaped like `y`.

    Example:
        ```python
        solver = sd.DPS(sd.DDPM(), lambda x0: x0[:2], y, step_size=0.5)
        res = sd.sample(key, sched, model, solver, sd.grids.even(1000, 1000), x_T)
        ```

    References:
        Chung et al., *Diffusion Posterior Sampling for General Noisy Inverse Problems*,
        arXiv:2209.14687.
    """

    solver: AbstractSolver
    operator: Callable[[Array], Array]
    y: Float[Array, "..."]
    step_size: ScalarLike

    def __init__(
        self,
        solver: AbstractSolver,
        operator: Callable[[Array], Array],
        y: Float[ArrayLike, "..."],
        step_size: ScalarLike = 1.0,
    ):
        self.solver = check_solver(solver)
        check_operator(operator)
        self.operator = operator
        self.y = as_float(y, "y")
        check_positive(step_size, "step_size", strict=False)
        self.step_size = step_size

    def num_steps(self, grid) -> int:
        return self.solver.num_steps(grid)

    def nfe(self, num_steps: int) -> int:
        """The base solver's count plus one (differentiated) evaluation per step."""
        return self.solver.nfe(num_steps) + num_steps

    def is_stochastic(self, process, grid) -> bool:
        return self.solver.is_stochastic(process, grid)

    def grid_order(self, trajectory):
        return self.solver.grid_order(trajectory)

    def batch_noise(self) -> bool:
        return self.solver.batch_noise()

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> DPSState:
        r"""The base solver's state at the first grid point, plus the grid in visiting order."""
        base = self.solver.init(process, model, grid, x_T, cond)
        x = jnp.asarray(base.x)
        coords = visit_coords(self.solver, grid, x.dtype)
        model = check_model(model)
        y = self.y.astype(x.dtype)
        return DPSState(x, jnp.zeros((), jnp.int32), base, coords, process, model, tuple(cond), y)

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[DPSState, Any]:
        r"""The gradient of $r(x_i)^2$ at the current state, the base solver's step (with `key`),
        then $x_{i+1} = x'_{i+1} - \zeta\nabla r^2/r$ ($0$ where $r = 0$). The info is the base
        solver's."""
        assert isinstance(state, DPSState)
        t = state.coords[state.i]

        def sq_residual(x):
            x0 = state.model.x0(state.process, t, x, *state.cond)
            return jnp.sum(residual(self.operator, state.y, x0) ** 2)

        r2, g = jax.value_and_grad(sq_residual)(state.x)
        r = jnp.sqrt(r2)
        zeta = jnp.asarray(self.step_size, state.x.dtype)
        update = zeta * g / jnp.where(r > 0, r, 1.0)
        base, info = self.solver.step(key, state.base)
        x = base.x - update.astype(base.x.dtype)
        new = eqx.tree_at(lambda s: (s.x, s.i, s.base), state, (x, state.i + 1, with_x(base, x)))
        return new, info

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` with the keys `fold_in(key, i)` (`None` for a deterministic
        base solver)."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def body(st, i):
            k = None if key is None else self.step_key(key, i, K)
            st = self.step(k, st)[0]
            return st, (st.x if save_trajectory else None)

        state, xs = scan_carry(body, state, jnp.arange(K, dtype=jnp.int32))
        traj = grid_trajectory(self.solver, x_T, xs) if save_trajectory else None
        nfe = base_nfe(self.solver, K, state.base) + K
        return Sample(state.x, traj, {"nfe": nfe, "num_steps": K})
