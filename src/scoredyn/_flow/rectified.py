r"""The rectified flow: the straight path $x_t = (1 - t)\,x_0 + t\,\varepsilon$."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Scalar, Time
from .._misc import as_float, check_times
from .interpolant import END, AbstractInterpolant, check_end_time


class RectifiedFlow(AbstractInterpolant):
    r"""The rectified flow (Liu et al. 2022; Lipman et al.'s optimal-transport path with
    $\sigma_{\min} = 0$; Esser et al.'s SD3 forward process), data at $t = 0$, noise at $t = 1$:

    $$\alpha(t) = 1 - t,\qquad \sigma(t) = t,\qquad
      u = \dot\alpha x_0 + \dot\sigma\varepsilon = \varepsilon - x_0,$$
    $$\lambda(t) = 2\log\frac{1 - t}{t},\qquad
      f(t) = -\frac{1}{1 - t},\qquad g(t)^2 = \frac{2t}{1 - t}.$$

    The inverse of $\lambda$ is closed form, $t = \operatorname{sigmoid}(-\lambda/2)$. At
    $t = 1$, $\alpha = 0$ and $\lambda = -\infty$, so sampling starts at `T` $< 1$ (default
    $0.999$, $\lambda(T) \approx -13.8$, the mirror image of the grids' default
    $t_\epsilon = 10^{-3}$); the prior $\mathcal N(0, \sigma(T)^2 I)$ drops the term
    $\alpha(T)x_0 = 10^{-3}x_0$. The path itself, and the flow-matching loss, use all of
    $[0, 1]$. See [the rectified flow](../derivations/flow-matching.md#the-rectified-flow).

    Args:
        T: the time sampling starts from, $0 < T < 1$.

    Raises:
        ValueError: if `T` is not in $(0, 1)$.

    Example:
        ```python
        rf = sd.RectifiedFlow()
        rf.marginal(0.25)                      # (0.75, 0.25)
        grid = sd.grids.log_snr(rf, 10)        # from T = 0.999 to t_eps = 1e-3
        x = sd.sample(None, rf, sd.VelocityModel(net), sd.DPMSolver(order=2), grid, x_T).x
        ```

    References:
        Liu et al., *Flow Straight and Fast*, arXiv:2209.03003; Lipman et al., *Flow Matching
        for Generative Modeling*, arXiv:2210.02747; Esser et al., *Scaling Rectified Flow
        Transformers for High-Resolution Image Synthesis*, arXiv:2403.03206.
    """

    T: float = 0.999

    def __check_init__(self):
        check_end_time(self.T, "RectifiedFlow", inclusive=False)

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        t = check_times(t, END)
        return 1.0 - t, t

    def rates(self, t: Time) -> tuple[Scalar, Scalar]:
        t = check_times(t, END)
        return -jnp.ones_like(t), jnp.ones_like(t)

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        t = check_times(t, END)
        return -1.0 / (1.0 - t), jnp.sqrt(2.0 * t / (1.0 - t))

    def log_snr(self, t: Time) -> Scalar:
        t = check_times(t, END)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""Closed form: $(1 - t)/t = e^{\lambda/2}$, so
        $t = \operatorname{sigmoid}(-\lambda/2)$."""
        return jax.nn.sigmoid(-0.5 * as_float(lam, "lam"))
