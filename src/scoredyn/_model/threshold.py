r"""Dynamic thresholding of $\hat x_0$ (Saharia et al. 2022) as a model transform.

Per example, $s = \max\big(Q_p(|\hat x_0|), 1\big)$ with $Q_p$ the $p$-quantile over all
elements, then

$$\hat x_0^{d} = \operatorname{clip}(\hat x_0, -s, s)/s,\qquad
  \hat\varepsilon^{d} = \frac{x - \alpha\hat x_0^{d}}{\sigma},$$

so every solver that reads $\hat\varepsilon$ sees the thresholded denoiser, as with
[`ClipX0`][scoredyn.ClipX0]. See
[dynamic thresholding](../derivations/guidance.md#dynamic-thresholding).
"""

import math

import jax.numpy as jnp

from .._checks import concrete_value
from .._convert import eps_from_x0
from .._custom_types import ScalarLike
from .base import AbstractModel, check_model


class DynamicThreshold(AbstractModel):
    r"""The model whose $\hat x_0$ is `model`'s dynamically thresholded (Imagen).

    For ONE example, $s = \max(Q_p(|\hat x_0|), 1)$, where $Q_p$ is the $p$-quantile of the
    absolute values of all elements (linear interpolation between order statistics, as
    `numpy.quantile`), and $\hat x_0^{d} = \operatorname{clip}(\hat x_0, -s, s)/s \in [-1, 1]$.
    When $|\hat x_0| \le 1$ everywhere, $s = 1$ and the model is unchanged (exactly). With
    $p = 1$, $s = \max(\max|\hat x_0|, 1)$ and no element is clipped, only divided. Use it
    under guidance, e.g. `sd.DynamicThreshold(sd.ClassifierFreeGuidance(...))`, where large
    $w$ pushes $\hat x_0$ out of the data range.

    Args:
        model: the [`AbstractModel`][scoredyn.AbstractModel] to wrap.
        p: the quantile level, $0 < p \le 1$ (default 0.995, diffusers'
            `dynamic_thresholding_ratio`).

    Raises:
        ValueError: for `p` outside $(0, 1]$.

    Example:
        ```python
        model = sd.DynamicThreshold(sd.ClassifierFreeGuidance(sd.EpsModel(net), 5.0, null=10))
        ```

    References:
        Saharia et al., *Photorealistic Text-to-Image Diffusion Models with Deep Language
        Understanding*, arXiv:2205.11487.
    """

    model: AbstractModel
    p: ScalarLike = 0.995

    def __check_init__(self):
        check_model(self.model, "model")
        value = concrete_value(self.p)
        if value is not None:
            p = float(value)
            if not (math.isfinite(p) and 0.0 < p <= 1.0):
                raise ValueError(f"`p` must be in (0, 1], got {self.p!r}.")

    def x0_at(self, alpha, sigma, t, x, *cond):
        x0 = self.model.x0_at(alpha, sigma, t, x, *cond)
        q = jnp.quantile(jnp.abs(x0), jnp.asarray(self.p, x0.dtype))
        s = jnp.maximum(q, jnp.ones((), x0.dtype))
        return jnp.clip(x0, -s, s) / s

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_x0(alpha, sigma, x, self.x0_at(alpha, sigma, t, x, *cond))
