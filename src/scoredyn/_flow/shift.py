r"""The time shift of Esser et al. (2024) as a process transform.

$$\tau_s(t) = \frac{s\,t}{1 + (s - 1)\,t},\qquad
  \frac{\tau_s}{1 - \tau_s} = s\,\frac{t}{1 - t}:$$

the shift multiplies the odds $t/(1 - t)$ by $s$, so shifts compose by multiplying
($\tau_a\circ\tau_b = \tau_{ab}$, $\tau_s^{-1} = \tau_{1/s}$) and, on the rectified flow, the
log-SNR $\lambda = -2\log\frac{t}{1-t}$ moves by $-2\log s$ at every $t$.
See [the time shift](../derivations/flow-matching.md#the-time-shift).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_positive, is_concrete
from .._custom_types import Scalar, Time
from .._misc import check_times
from .._sde import AbstractLinearSDE
from .interpolant import END, AbstractInterpolant


def _unwarp(u, s):
    r"""$\tau_s^{-1}(u) = u/(s - (s - 1)u) = \tau_{1/s}(u)$."""
    return u / (s - (s - 1.0) * u)


class TimeShift(AbstractLinearSDE):
    r"""The process `process` read at the shifted time $\tau_s(t) = st/(1 + (s - 1)t)$
    (Esser et al. 2024, "resolution-dependent shifting"; diffusers' `shift`).

    $$\alpha_s(t) = \alpha(\tau_s(t)),\quad \sigma_s(t) = \sigma(\tau_s(t)),\qquad
      f_s(t) = f(\tau_s)\,\tau_s'(t),\quad g_s(t)^2 = g(\tau_s)^2\,\tau_s'(t),$$

    with $\tau_s'(t) = s/(1 + (s - 1)t)^2$, and $\lambda_s(t) = \lambda(\tau_s(t))$. The network
    is called at the *base* time, `process.model_time(tau_s(t))`, as a model trained on the
    unshifted process expects (SD3 trains on the rectified flow and samples on a shifted
    schedule). So with `shifted = sd.TimeShift(rf, 3.0)`, `sd.sample(key, shifted, model,
    solver, sd.grids.uniform(shifted, K), x_T)` is SD3's shifted schedule for a model trained
    on `rf`, and a [`flow_matching_loss`][scoredyn.flow_matching_loss] on the shifted process draws
    shifted training times.

    $s > 1$ moves every time towards noise; on the
    [rectified flow][scoredyn.RectifiedFlow] it lowers the log-SNR by exactly $2\log s$
    (Esser et al. take $s = \sqrt{m/n}$ when going from $n$ to $m$ pixels). $s = 1$ is the
    identity, $\tau_a\circ\tau_b = \tau_{ab}$. The shifted process starts sampling from
    $T_s = \tau_s^{-1}(T)$, where the base's `T` is reached; the base's times must lie in
    $[0, 1]$ ($T \le 1$).

    Args:
        process: the base process, a linear SDE on times in $[0, 1]$ (usually a
            [`RectifiedFlow`][scoredyn.RectifiedFlow] or an
            [`Interpolant`][scoredyn.Interpolant]).
        shift: $s > 0$.

    Raises:
        TypeError: if `process` is not a linear SDE.
        ValueError: if `shift` is not positive and finite, or the base's `T` exceeds 1.

    Example:
        ```python
        rf = sd.RectifiedFlow()
        shifted = sd.TimeShift(rf, 3.0)
        shifted.log_snr(0.5) - rf.log_snr(0.5)   # -2 log 3
        ```

    References:
        Esser et al., *Scaling Rectified Flow Transformers for High-Resolution Image
        Synthesis*, arXiv:2403.03206 (resolution-dependent shifting of timestep schedules).
    """

    process: AbstractLinearSDE
    shift: float | Scalar

    # explicit, because pyright would otherwise count the base's `T: AbstractVar` as a field
    def __init__(self, process: AbstractLinearSDE, shift: float | Scalar):
        self.process = process
        self.shift = shift

    def __check_init__(self):
        if not isinstance(self.process, AbstractLinearSDE):
            raise TypeError(
                "`process` of TimeShift must be a linear SDE on times in [0, 1] (e.g. "
                f"sd.RectifiedFlow()), got {type(self.process).__name__}."
            )
        check_positive(self.shift, "shift")
        if is_concrete(self.process.T) and not float(self.process.T) <= END:
            raise ValueError(
                f"`process` of TimeShift must have T <= 1 (the shift maps [0, 1] onto itself), "
                f"got T = {self.process.T}."
            )

    @property
    def T(self) -> float:  # pyright: ignore[reportIncompatibleMethodOverride]
        r"""$T_s = \tau_s^{-1}(T) = T/(s - (s - 1)T)$ (a Python float for a float shift)."""
        return _unwarp(self.process.T, self.shift)  # pyright: ignore[reportReturnType]

    def warp(self, t: Time) -> Array:
        r"""$\tau_s(t) = st/(1 + (s - 1)t)$, the base process's time at $t$ ($t \in [0, 1]$)."""
        t = check_times(t, END)
        s = self.shift
        return s * t / (1.0 + (s - 1.0) * t)

    def warp_rate(self, t: Time) -> Array:
        r"""$\tau_s'(t) = s/(1 + (s - 1)t)^2$."""
        t = check_times(t, END)
        s = self.shift
        return s / (1.0 + (s - 1.0) * t) ** 2

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        return self.process.marginal(self.warp(t))

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        f, g = self.process.coefficients(self.warp(t))
        d = self.warp_rate(t)
        return f * d, g * jnp.sqrt(d)

    def log_snr(self, t: Time) -> Scalar:
        return self.process.log_snr(self.warp(t))

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""$\tau_s^{-1}$ of the base's `time_at_log_snr` (closed form when the base has one)."""
        return _unwarp(self.process.time_at_log_snr(lam), self.shift)

    def model_time(self, t: Time) -> Array:
        r"""The base's network time at the shifted time, `process.model_time(warp(t))`."""
        return self.process.model_time(self.warp(t))


def velocity_frame(process, t):
    r"""$(\alpha, \sigma, \dot\alpha, \dot\sigma, \tau)$ at coordinate `t` of a flow process, the
    derivatives taken in the network's time $\tau$ (what a velocity network predicts).

    An [`AbstractInterpolant`][scoredyn.AbstractInterpolant] is called at its own time; a
    [`TimeShift`][scoredyn.TimeShift] of one at the base's time $\tau_s(t)$ (chain rule not
    applied: the velocity is $\mathrm dx/\mathrm d\tau$).
    """
    if isinstance(process, TimeShift):
        return velocity_frame(process.process, process.warp(t))
    if isinstance(process, AbstractInterpolant):
        alpha, sigma = process.marginal(t)
        dalpha, dsigma = process.rates(t)
        return alpha, sigma, dalpha, dsigma, process.model_time(t)
    raise TypeError(
        "`process` must be a flow (sd.RectifiedFlow(), sd.Interpolant(alpha, sigma), or an "
        f"sd.TimeShift of one) to define a velocity, got {type(process).__name__}."
    )
