r"""Interpolants: Gaussian paths $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ on $t \in [0, 1]$
as linear SDEs, so every continuous-time solver runs on them unchanged.

A path with $\alpha$, $\sigma$ differentiable, $\alpha > 0$ on $[0, 1)$ and a decreasing
log-SNR is the marginal law of the linear SDE

$$f(t) = \frac{\dot\alpha}{\alpha},\qquad
  g(t)^2 = \frac{\mathrm d\sigma^2}{\mathrm dt} - 2f\sigma^2
         = \frac{2\sigma\,(\alpha\dot\sigma - \dot\alpha\sigma)}{\alpha}
         = -\sigma^2\dot\lambda,$$

and its flow velocity $u = \dot\alpha x_0 + \dot\sigma\varepsilon$ has conditional mean equal
to the probability-flow drift. See [interpolants](../derivations/flow-matching.md#interpolants).
"""

import abc
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._checks import check_callable, check_positive, is_concrete
from .._custom_types import Scalar, Time
from .._misc import as_float, check_times
from .._sde import AbstractLinearSDE

#: The time domain of every interpolant is [0, END]; `T <= END` is where sampling starts.
END = 1.0


def check_end_time(T, cls: str, *, inclusive: bool) -> None:
    """`0 < T < 1` (or `<= 1` when `inclusive`) on a concrete `T`."""
    check_positive(T, "T")
    if is_concrete(T):
        ok = float(T) <= END if inclusive else float(T) < END
        if not ok:
            bound = "<= 1" if inclusive else "< 1 (alpha(1) = 0, where the log-SNR is -inf)"
            raise ValueError(f"`T` of {cls} must be {bound}, got {T}.")


class AbstractInterpolant(AbstractLinearSDE):
    r"""A Gaussian path $x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$ on $t \in [0, 1]$, with
    its time derivatives $(\dot\alpha, \dot\sigma)$.

    Subclasses give [`marginal`][scoredyn.AbstractInterpolant.marginal] and
    [`rates`][scoredyn.AbstractInterpolant.rates]; the SDE coefficients follow,

    $$f = \frac{\dot\alpha}{\alpha},\qquad
      g^2 = \frac{2\sigma(\alpha\dot\sigma - \dot\alpha\sigma)}{\alpha},$$

    so the path is an [`AbstractLinearSDE`][scoredyn.AbstractLinearSDE] and every
    continuous-time solver, grid and the likelihood run on it. The path is defined on all of
    $[0, 1]$ (the flow-matching loss draws times there); `T` $\le 1$ is the time sampling
    starts from (the prior $\mathcal N(0, \sigma(T)^2 I)$). Paths that end in pure noise,
    $\alpha(1) = 0$, have $\lambda(1) = -\infty$ and $f(1) = -\infty$, so they need $T < 1$:
    the solvers read $\lambda$ (DPM-Solver) or $f, g$ (the PF-ODE, Euler–Maruyama) at
    `grid[0]` $= T$. A network is called at $t$ itself.

    See [interpolants](../derivations/flow-matching.md#interpolants).
    """

    @abc.abstractmethod
    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        r"""$(\alpha(t), \sigma(t))$ for $t \in [0, 1]$."""

    @abc.abstractmethod
    def rates(self, t: Time) -> tuple[Scalar, Scalar]:
        r"""The time derivatives $(\dot\alpha(t), \dot\sigma(t))$ for $t \in [0, 1]$."""

    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        r"""$f = \dot\alpha/\alpha$ and $g = \sqrt{2\sigma(\alpha\dot\sigma -
        \dot\alpha\sigma)/\alpha}$ (infinite where $\alpha = 0$)."""
        alpha, sigma = self.marginal(t)
        dalpha, dsigma = self.rates(t)
        f = dalpha / alpha
        g2 = 2.0 * sigma * (alpha * dsigma - dalpha * sigma) / alpha
        return f, jnp.sqrt(g2)

    def model_time(self, t: Time) -> Array:
        r"""A network is called at $t$ itself, $t \in [0, 1]$."""
        return check_times(t, END)


class Interpolant(AbstractInterpolant):
    r"""An interpolant from two user functions $\alpha(t)$, $\sigma(t)$ on $[0, 1]$; their
    derivatives come from automatic differentiation (`jax.jvp`).

    $$x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon,\qquad
      u_t = \dot\alpha(t)\,x_0 + \dot\sigma(t)\,\varepsilon.$$

    $\alpha$ and $\sigma$ must map a scalar time to a scalar, be differentiable, with
    $\alpha > 0$ on $[0, T]$ and a decreasing log-SNR $\lambda = \log(\alpha^2/\sigma^2)$.
    `time_at_log_snr` bisects $\lambda$ (the generic inverse of
    [`AbstractLinearSDE`][scoredyn.AbstractLinearSDE]).

    Args:
        alpha: $t \mapsto \alpha(t)$ (a JAX-traceable function).
        sigma: $t \mapsto \sigma(t)$.
        T: the time sampling starts from, $0 < T \le 1$; below 1 when $\alpha(1) = 0$.

    Raises:
        TypeError: if `alpha` or `sigma` is not callable or does not return a scalar.
        ValueError: if `T` is not in $(0, 1]$.

    Example:
        ```python
        # the "trigonometric" (cosine) interpolant
        path = sd.Interpolant(lambda t: jnp.cos(0.5 * jnp.pi * t),
                              lambda t: jnp.sin(0.5 * jnp.pi * t), T=0.999)
        path.rates(0.5)        # (-pi/2 sin(pi/4), pi/2 cos(pi/4))
        ```

    References:
        Albergo & Vanden-Eijnden, *Building Normalizing Flows with Stochastic Interpolants*,
        arXiv:2209.15571; Lipman et al., *Flow Matching for Generative Modeling*,
        arXiv:2210.02747.
    """

    alpha: Callable[[Array], Array]
    sigma: Callable[[Array], Array]
    T: float

    # explicit, because pyright would otherwise count the base's `T: AbstractVar` as a field
    def __init__(
        self, alpha: Callable[[Array], Array], sigma: Callable[[Array], Array], T: float = 0.999
    ):
        self.alpha = alpha
        self.sigma = sigma
        self.T = T

    def __check_init__(self):
        for name in ("alpha", "sigma"):
            fn = getattr(self, name)
            check_callable(fn, name, "t -> scalar")
            out = jax.eval_shape(fn, jnp.zeros((), float))
            if getattr(out, "shape", None) != ():
                raise TypeError(
                    f"`{name}` must map a scalar time to a scalar, got "
                    f"{getattr(out, 'shape', type(out).__name__)}."
                )
        check_end_time(self.T, "Interpolant", inclusive=True)

    def _eval(self, fn, t):
        t = as_float(check_times(t, END), "t")
        return jnp.vectorize(fn)(t)

    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        return self._eval(self.alpha, t), self._eval(self.sigma, t)

    def rates(self, t: Time) -> tuple[Scalar, Scalar]:
        t = as_float(check_times(t, END), "t")

        def rate(fn):
            return jnp.vectorize(lambda s: jax.jvp(fn, (s,), (jnp.ones_like(s),))[1])(t)

        return rate(self.alpha), rate(self.sigma)
