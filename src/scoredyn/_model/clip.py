r"""Clipping of $\hat x_0$ as a model transform.

$$\hat x_0^{c} = \operatorname{clip}(\hat x_0, lo, hi),\qquad
  \hat\varepsilon^{c} = \frac{x - \alpha\hat x_0^{c}}{\sigma},$$

so every solver that reads $\hat\varepsilon$ (DDIM, DPM-Solver, the PF-ODE) sees the clipped
denoiser. For DDIM-family steps this is exactly "clip $\hat x_0$, then take the posterior mean",
because the step is linear in $(\hat x_0, x)$.
See [models and conversions](../derivations/sampling-layer.md#model-transforms).
"""

import jax.numpy as jnp

from .._convert import eps_from_x0
from .._misc import is_concrete
from .base import AbstractModel, check_model


class ClipX0(AbstractModel):
    r"""The model whose $\hat x_0$ is `model`'s clipped to $[lo, hi]$ (elementwise).

    Args:
        model: the [`AbstractModel`][scoredyn.AbstractModel] to wrap.
        lo: lower bound (default $-1$, data scaled to $[-1, 1]$).
        hi: upper bound, $hi > lo$ (default $1$).

    Example:
        ```python
        clipped = sd.ClipX0(sd.EpsModel(net), -1.0, 1.0)
        ```
    """

    model: AbstractModel
    lo: float = -1.0
    hi: float = 1.0

    def __check_init__(self):
        check_model(self.model, "model")
        if is_concrete(self.lo, self.hi) and not float(self.lo) < float(self.hi):
            raise ValueError(f"`lo` must be < `hi`, got lo={self.lo}, hi={self.hi}.")

    def x0_at(self, alpha, sigma, t, x, *cond):
        x0 = self.model.x0_at(alpha, sigma, t, x, *cond)
        return jnp.clip(x0, jnp.asarray(self.lo, x.dtype), jnp.asarray(self.hi, x.dtype))

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_x0(alpha, sigma, x, self.x0_at(alpha, sigma, t, x, *cond))
