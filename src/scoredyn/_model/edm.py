r"""EDM's preconditioning (Karras et al. 2022, Table 1) as a model: a raw network $F$ wrapped
into a denoiser.

In EDM's coordinates $\tilde x = x/\alpha$ at the noise level $s = \sigma/\alpha$ (any
process: see [EDM](../derivations/edm.md#preconditioning)),

$$D(\tilde x; s) = c_{\rm skip}(s)\,\tilde x + c_{\rm out}(s)\,
  F\big(c_{\rm noise}(s),\ c_{\rm in}(s)\,\tilde x\big),$$
$$c_{\rm skip} = \frac{\sigma_d^2}{s^2 + \sigma_d^2},\quad
  c_{\rm out} = \frac{s\,\sigma_d}{\sqrt{s^2 + \sigma_d^2}},\quad
  c_{\rm in} = \frac{1}{\sqrt{s^2 + \sigma_d^2}},\quad
  c_{\rm noise} = \tfrac14\log s.$$
"""

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array

from .._checks import check_positive
from .._convert import eps_from_x0
from .._custom_types import ScalarLike
from .base import AbstractModel, _check_net

Net = Callable[..., Array]


class EDMPrecond(AbstractModel):
    r"""A raw network $F$ made a data predictor by EDM's preconditioning.

    $$\hat x_0 = D(\tilde x; s) = c_{\rm skip}(s)\,\tilde x
      + c_{\rm out}(s)\,F\big(c_{\rm noise}(s),\ c_{\rm in}(s)\,\tilde x, \ldots\big),\qquad
      \tilde x = x/\alpha,\ s = \sigma/\alpha,$$

    with the coefficients of [`coefficients`][scoredyn.EDMPrecond.coefficients]. The network is
    called as `net(c_noise, c_in * x_tilde, *cond)`: its first argument is EDM's
    $c_{\rm noise} = \tfrac14\log s$ in place of the process's network time. For data of
    variance $\sigma_d^2$ (per coordinate), $F$'s input and its ideal training target
    $(x_0 - c_{\rm skip}\tilde x)/c_{\rm out}$ both have unit variance at every $s$, and
    $c_{\rm skip}\tilde x$ alone is the ideal denoiser of a centred Gaussian of that variance
    ($F = 0$). Because the formulas read only $s = \sigma/\alpha$, the same network serves
    every process (VE, VP, ...): see [preconditioning](../derivations/edm.md#preconditioning).

    Args:
        net: the raw network $F$, `net(c_noise, x, *cond) -> array like x` for ONE example.
        sigma_data: $\sigma_d > 0$, the data's standard deviation (EDM: 0.5).

    Example:
        ```python
        model = sd.EDMPrecond(F, sigma_data=0.5)
        model.x0(sde, t, x)   # c_skip x/alpha + c_out F(log(s)/4, c_in x/alpha)
        ```

    References:
        Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
        arXiv:2206.00364, Table 1 and App. B.6.
    """

    net: Net
    sigma_data: ScalarLike = 0.5

    def __check_init__(self):
        _check_net(self.net, "EDMPrecond")
        check_positive(self.sigma_data, "sigma_data")

    def coefficients(self, s) -> tuple[Array, Array, Array, Array]:
        r"""$(c_{\rm skip}, c_{\rm out}, c_{\rm in}, c_{\rm noise})$ at the noise level
        $s = \sigma/\alpha$ (EDM's $\sigma$)."""
        s = jnp.asarray(s)
        sd = jnp.asarray(self.sigma_data, s.dtype)
        r = jnp.sqrt(s**2 + sd**2)
        return sd**2 / r**2, s * sd / r, 1.0 / r, 0.25 * jnp.log(s)

    def x0_at(self, alpha, sigma, t, x, *cond):
        s = sigma / alpha
        xt = x / alpha
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        return c_skip * xt + c_out * self.net(c_noise, c_in * xt, *cond)

    def eps_at(self, alpha, sigma, t, x, *cond):
        return eps_from_x0(alpha, sigma, x, self.x0_at(alpha, sigma, t, x, *cond))
