r"""EDM's sampler (Karras et al. 2022, Algorithm 2): Heun's method on the probability-flow ODE in
the noise level, with optional churn.

Any Gaussian process $x = \alpha x_0 + \sigma\varepsilon$ maps to EDM's coordinates
$\tilde x = x/\alpha$ at the noise level $s = \sigma/\alpha$, where
$\tilde x = x_0 + s\,\varepsilon$ and the probability-flow ODE is

$$\frac{\mathrm d\tilde x}{\mathrm ds} = \frac{\tilde x - D(\tilde x; s)}{s},\qquad
  D(\tilde x; s) = \mathbb E[x_0 \mid \tilde x],$$

the same for every process: $D$ is the model's data prediction at the time $t$ with
$\sigma(t)/\alpha(t) = s$. See [EDM](../derivations/edm.md).
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._checks import check_positive, concrete_value
from .._custom_types import ScalarLike
from .._misc import check_vector_field
from .._sde import AbstractLinearSDE
from ._continuous import check_grid, check_linear_process, scan_states, with_start
from .base import AbstractSolver, AbstractState, Sample, SolverKey
from .unipc import ModelX0

_GAMMA_MAX = math.sqrt(2.0) - 1.0


def _known_zero(a) -> bool:
    val = concrete_value(a)
    return val is not None and bool((val == 0).all())


class EDMInfo(NamedTuple):
    r"""Per-step info of [`EDMHeun`][scoredyn.EDMHeun]: the step's start and end times, the
    churned noise level $\hat s_i$ the step starts from, and the denoiser's output there."""

    t: Array
    t_next: Array
    s_hat: Array
    x0: Array


class EDMState(AbstractState):
    r"""State of [`EDMHeun`][scoredyn.EDMHeun]: `x` at `grid[i]` (the process's coordinates,
    $x = \alpha\tilde x$), the grid, its noise levels $s = \sigma/\alpha$ and scales $\alpha$,
    the per-step churn $\gamma_i$, the top level $s(T)$, the process and the model's data
    prediction."""

    x: Array
    i: Array
    grid: Array
    s: Array
    alpha: Array
    gamma: Array
    s_top: Array
    sde: AbstractLinearSDE
    x0_fn: ModelX0


class EDMHeun(AbstractSolver):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on any linear SDE: Heun's
    method in the noise level $s = \sigma/\alpha$, with churn.

    In EDM's coordinates $\tilde x = x/\alpha$ (see [the mapping](../derivations/edm.md)), step
    $i$ from $s_i$ to $s_{i+1}$ reads

    $$\gamma_i = \begin{cases}\min(S_{\rm churn}/K,\ \sqrt2 - 1) &
        S_{t\min} \le s_i \le S_{t\max}\\ 0 & \text{otherwise}\end{cases},\qquad
      \hat s_i = s_i(1 + \gamma_i),$$
    $$\hat x_i = \tilde x_i + \sqrt{\hat s_i^2 - s_i^2}\,S_{\rm noise}\,z_i,\qquad
      d_i = \frac{\hat x_i - D(\hat x_i; \hat s_i)}{\hat s_i},\qquad
      x'_{i+1} = \hat x_i + (s_{i+1} - \hat s_i)\,d_i,$$

    and, unless $s_{i+1} = 0$ (then the Euler value $x'_{i+1}$ is kept, the final step of
    EDM and k-diffusion), the trapezoidal correction
    $\tilde x_{i+1} = \hat x_i + (s_{i+1} - \hat s_i)\tfrac12\big(d_i + d'_{i+1}\big)$,
    $d'_{i+1} = (x'_{i+1} - D(x'_{i+1}; s_{i+1}))/s_{i+1}$. $D(\tilde x; s)$ =
    `model.x0(process, t, alpha(t) * x_tilde, *cond)` at the time $t$ of noise level $s$
    (`process.time_at_log_snr(-2 log s)`); $z_i$ is one Gaussian draw for the whole `x`
    per step, from the step's key. $K$ is the number of steps.

    **Grids.** EDM's $\rho$-grid is [`sd.grids.karras`][scoredyn.grids.karras]: with
    `grid = jnp.append(sd.grids.karras(process, n - 1, t_eps=...), 0.0)` (the noise levels of
    k-diffusion's `get_sigmas_karras(n, s(t_eps), s(T))`, then $t = 0$, where $\sigma = 0$ for
    every SDE here), the last step is EDM's Euler step to $\sigma = 0$: $2n - 1$ evaluations.
    On a grid ending at $t_\epsilon > 0$ every step is Heun ($2K$ evaluations, second order).
    `Sample.stats["nfe"]` counts them.

    **Churn above $s(T)$.** The churned level $\hat s_i$ is capped at $s(T)$, the top of the
    process (no time beyond $T$ exists to evaluate the model at). EDM and k-diffusion have no
    cap; the two agree whenever $s_i(1 + \gamma_i) \le s(T)$, e.g. with $S_{t\max} < s(T)/(1 +
    \gamma)$ or a grid starting below $T$.

    With `churn = 0` the solver is deterministic (no key needed) and is Heun's method on the
    probability-flow ODE: tested against k-diffusion's `sample_heun` to $10^{-12}$, with and
    without churn (same draws), and of order 2 on the exact mixture oracle.

    Args:
        churn: $S_{\rm churn} \ge 0$ (0: deterministic).
        churn_min: $S_{t\min} \ge 0$, the lowest noise level $s_i$ that churns.
        churn_max: $S_{t\max}$, the highest (default $\infty$).
        churn_noise: $S_{\rm noise} \ge 0$, the scale of the added noise (EDM uses 1.003 to
            1.007).

    Raises:
        ValueError: at construction, for negative or non-finite options (concrete values) or
            `churn_max < churn_min`; in [`sample`][scoredyn.sample], for a grid that is not
            strictly decreasing inside $[0, T]$, or a missing key when `churn` is not 0.
        TypeError: for a `process` that is not a linear SDE.

    Example:
        ```python
        grid = jnp.append(sd.grids.karras(sde, 17), 0.0)        # 18 levels, then sigma = 0
        res = sd.sample(None, sde, sd.EpsModel(eps), sd.EDMHeun(), grid, x_T)
        res.stats["nfe"]   # 35
        ```

    References:
        Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
        arXiv:2206.00364, Algorithm 2.
    """

    churn: ScalarLike = 0.0
    churn_min: ScalarLike = 0.0
    churn_max: ScalarLike = math.inf
    churn_noise: ScalarLike = 1.0

    def __check_init__(self):
        check_positive(self.churn, "churn", strict=False)
        check_positive(self.churn_noise, "churn_noise", strict=False)
        check_positive(self.churn_min, "churn_min", strict=False)
        lo, hi = concrete_value(self.churn_min), concrete_value(self.churn_max)
        if hi is not None and (math.isnan(float(hi)) or (lo is not None and float(hi) < lo)):
            raise ValueError(
                f"`churn_max` must be >= `churn_min` = {self.churn_min}, got {self.churn_max}."
            )

    def nfe(self, num_steps: int) -> int:
        """$2K$: two evaluations per step; one fewer when the grid ends at $\\sigma = 0$ (the
        last step is then Euler), which `Sample.stats["nfe"]` counts."""
        return 2 * num_steps

    def is_stochastic(self, process, grid) -> bool:
        check_grid(grid, check_linear_process(process, self), float)
        return not _known_zero(self.churn)

    def batch_noise(self) -> bool:
        return True

    def init(self, process, model, grid, x_T, cond: tuple = ()) -> EDMState:
        sde = check_linear_process(process, self)
        dtype = x_T.dtype
        grid, x_T = check_grid(grid, sde, dtype, x=x_T)
        x0_fn = ModelX0(model, sde, tuple(cond))
        check_vector_field(x0_fn, "model.x0", grid[0], x_T)
        K = grid.shape[0] - 1
        alpha, sigma = jax.vmap(sde.marginal)(grid)
        alpha, sigma = alpha.astype(dtype), sigma.astype(dtype)
        s = sigma / alpha
        a_T, s_T = sde.marginal(jnp.asarray(sde.T, dtype))
        s_top = (s_T / a_T).astype(dtype)
        g = jnp.minimum(jnp.asarray(self.churn, dtype) / K, _GAMMA_MAX)
        window = (jnp.asarray(self.churn_min, dtype) <= s[:-1]) & (
            s[:-1] <= jnp.asarray(self.churn_max, dtype)
        )
        gamma = jnp.where(window, g, jnp.zeros_like(g))
        i = jnp.zeros((), jnp.int32)
        return EDMState(x_T, i, grid, s, alpha, gamma, s_top, sde, x0_fn)

    def step(self, key: SolverKey | None, state: AbstractState) -> tuple[EDMState, EDMInfo]:
        r"""One step $s_i \to s_{i+1}$: churn (one draw from `key`, unless `churn` is 0), an
        Euler step, and Heun's correction unless $s_{i+1} = 0$."""
        assert isinstance(state, EDMState)
        z = None
        if not _known_zero(self.churn):
            if key is None:
                raise ValueError("EDMHeun with churn > 0 adds noise: `step` needs a key.")
            z = self.draw_noise(key, state.x)
        return _heun_step(self, state, z)

    def solve(self, key, process, model, grid, x_T, cond, save_trajectory) -> Sample:
        r"""A `lax.scan` of `step` with the keys `fold_in(key, i)`; `stats["nfe"]` is $2K$, or
        $2K - 1$ when the grid ends at $\sigma = 0$."""
        state = self.init(process, model, grid, x_T, cond)
        K = self.num_steps(grid)

        def body(st, i):
            k = None if key is None else self.step_key(key, i, K)
            return self.step(k, st)[0]

        final_s = state.s[-1]
        state, xs = scan_states(body, state, jnp.arange(K, dtype=jnp.int32), save_trajectory)
        traj = with_start(x_T, xs) if save_trajectory else None
        nfe = 2 * K - (final_s == 0).astype(jnp.int32)
        return Sample(state.x, traj, {"nfe": nfe, "num_steps": K})


def _heun_step(solver: EDMHeun, state: EDMState, z: Array | None) -> tuple[EDMState, EDMInfo]:
    """The step with its Gaussian draw `z` given (None: no churn)."""
    i, sde = state.i, state.sde
    dtype = state.x.dtype
    t, t_next = state.grid[i], state.grid[i + 1]
    s, s_next = state.s[i], state.s[i + 1]
    a, a_next = state.alpha[i], state.alpha[i + 1]
    xt = state.x / a
    if z is None:
        s_hat, x_hat, t_hat, a_hat = s, xt, t, a
    else:
        gamma = state.gamma[i]
        s_hat = jnp.minimum(s * (1.0 + gamma), state.s_top)
        # sqrt(s_hat^2 - s^2) as a product: never negative (an fma of s_hat^2 - s^2 can be)
        noise = jnp.sqrt((s_hat - s) * (s_hat + s)) * jnp.asarray(solver.churn_noise, dtype) * z
        x_hat = xt + noise
        churned = s_hat > s
        s_safe = jnp.where(churned, s_hat, s)
        t_c = sde.time_at_log_snr(-2.0 * jnp.log(s_safe)).astype(dtype)
        t_hat = jnp.where(churned, t_c, t)
        a_hat = jnp.where(churned, sde.marginal(t_hat)[0].astype(dtype), a)
    d0 = state.x0_fn(t_hat, a_hat * x_hat)
    d = (x_hat - d0) / s_hat
    dt = s_next - s_hat
    x_euler = x_hat + d * dt

    def heun(_):
        end = s_next == 0  # only reached under vmap's select: keep the point valid
        s_n = jnp.where(end, s_hat, s_next)
        t_n = jnp.where(end, t_hat, t_next)
        a_n = jnp.where(end, a_hat, a_next)
        d2 = (x_euler - state.x0_fn(t_n, a_n * x_euler)) / s_n
        return x_hat + (d + d2) / 2 * dt

    xt_next = lax.cond(s_next == 0, lambda _: x_euler, heun, None)
    x_next = a_next * xt_next
    new = eqx.tree_at(lambda st: (st.x, st.i), state, (x_next, i + 1))
    return new, EDMInfo(t, t_next, s_hat, d0)
