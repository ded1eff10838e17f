r"""The velocity model: a network that predicts the flow-matching velocity
$u = \dot\alpha x_0 + \dot\sigma\varepsilon$.

With the Wronskian $D = \alpha\dot\sigma - \dot\alpha\sigma$ of the path,

$$\hat\varepsilon = \frac{\alpha\hat u - \dot\alpha x}{D},\qquad
  \hat x_0 = \frac{\dot\sigma x - \sigma\hat u}{D},$$

exactly, for any interpolant (the inverse of $\hat u = \dot\alpha\hat x_0 +
\dot\sigma\hat\varepsilon$ with $x = \alpha\hat x_0 + \sigma\hat\varepsilon$).
See [the velocity](../derivations/flow-matching.md#the-velocity).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._convert import eps_from_velocity, x0_from_velocity
from .._model.base import AbstractModel, Net, _at, _check_net
from .._process import AbstractProcess
from .interpolant import AbstractInterpolant
from .rectified import RectifiedFlow
from .shift import TimeShift


class VelocityModel(AbstractModel):
    r"""A network that predicts the flow velocity: `net(t, x, *cond)` $= \hat u =
    \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon$, the time derivative of the path
    `path` at the network time $t$ (the flow-matching target; $\varepsilon - x_0$ on the
    rectified flow).

    The conversions need the path's rates $(\dot\alpha, \dot\sigma)$ at the network time, so the
    model holds the path it was trained on (default the
    [rectified flow][scoredyn.RectifiedFlow]); $(\alpha, \sigma)$ come from the process being
    sampled, as for every model. Sample on `path` itself, or on a
    [`TimeShift`][scoredyn.TimeShift] of it (which calls the network at the path's time):

    $$\hat\varepsilon = \frac{\alpha\hat u - \dot\alpha x}{\alpha\dot\sigma - \dot\alpha\sigma},
      \qquad \hat x_0 = \frac{\dot\sigma x - \sigma\hat u}{\alpha\dot\sigma - \dot\alpha\sigma},$$

    both finite at $t = 1$ ($\alpha = 0$; $\hat\varepsilon = x/\sigma$ there). The velocity is
    the probability-flow drift, $\hat u = f x - \tfrac12 g^2\hat s$, so the PF-ODE of the path
    is $\dot x = \hat u$.

    Args:
        net: `net(t, x, *cond) -> array like x`, the velocity for ONE example.
        path: the [`AbstractInterpolant`][scoredyn.AbstractInterpolant] whose velocity `net`
            predicts (not a `TimeShift`: the velocity is taken in the network's time).

    Raises:
        TypeError: if `net` is not callable, or `path` is not an interpolant.

    Example:
        ```python
        rf = sd.RectifiedFlow()
        model = sd.VelocityModel(net)                 # u = eps - x0
        model.eps(rf, 0.5, x)                         # (0.5 u + x) / 1
        res = sd.sample(None, rf, model, sd.ODE(), jnp.array([rf.T, 1e-3]), x_T)
        ```

    References:
        Lipman et al., *Flow Matching for Generative Modeling*, arXiv:2210.02747;
        Liu et al., *Flow Straight and Fast*, arXiv:2209.03003.
    """

    net: Net
    path: AbstractInterpolant = RectifiedFlow()

    def __check_init__(self):
        _check_net(self.net, "VelocityModel")
        if isinstance(self.path, TimeShift):
            raise TypeError(
                "`path` of VelocityModel must be the unshifted interpolant the network was "
                "trained on (the velocity is dx/dt in the network's time); sample on the "
                "TimeShift, which calls the network at the path's time."
            )
        if not isinstance(self.path, AbstractInterpolant):
            raise TypeError(
                "`path` of VelocityModel must be an sd.AbstractInterpolant (sd.RectifiedFlow(), "
                f"sd.Interpolant(alpha, sigma)), got {type(self.path).__name__}."
            )

    def _rates(self, t, x: Array):
        dalpha, dsigma = self.path.rates(t)
        return jnp.asarray(dalpha).astype(x.dtype), jnp.asarray(dsigma).astype(x.dtype)

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_velocity(alpha, sigma, *self._rates(t, x), x, self.net(t, x, *cond))

    def x0_at(self, alpha, sigma, t, x, *cond):
        return x0_from_velocity(alpha, sigma, *self._rates(t, x), x, self.net(t, x, *cond))

    def velocity_at(
        self, alpha, sigma, t, x: Float[Array, "*shape"], *cond
    ) -> Float[Array, "*shape"]:
        r"""$\hat u$ = `net(t, x, *cond)` (native; `alpha` and `sigma` unused)."""
        del alpha, sigma
        return self.net(t, x, *cond)

    def velocity(self, process: AbstractProcess, t, x: Float[ArrayLike, "*shape"], *cond) -> Array:
        r"""$\hat u$ at coordinate `t` of `process` (the network called at
        `process.model_time(t)`)."""
        x = jnp.asarray(x)
        return self.velocity_at(*_at(process, t, x), x, *cond)
