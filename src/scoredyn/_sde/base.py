"""Abstract SDEs: the general Itô SDE and the linear (Gaussian) diffusion."""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Key, Scalar, Time
from .._misc import as_float, check_times
from .._process import AbstractProcess


class AbstractSDE(eqx.Module):
    r"""An Itô SDE $\mathrm{d}x = f(t, x)\,\mathrm{d}t + g(t, x)\,\mathrm{d}W$ on $[0, T]$.

    The diffusion is diagonal: `diffusion(t, x)` returns a scalar or an array that broadcasts
    against `x`. Subclasses whose diffusion depends on `x` set
    `state_dependent_diffusion = True` so that the reverse-time SDE and the probability-flow
    ODE add the divergence correction $\nabla\cdot(g g^\top)$.

    See [the forward SDE](../derivations/linear-sde.md#the-forward-sde).
    """

    T: eqx.AbstractVar[float]

    @property
    def state_dependent_diffusion(self) -> bool:
        return False

    @abc.abstractmethod
    def drift(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        r"""The drift $f(t, x)$."""

    @abc.abstractmethod
    def diffusion(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "..."]:
        r"""The (diagonal) diffusion $g(t, x)$, broadcastable against `x`."""


class AbstractLinearSDE(AbstractSDE, AbstractProcess):
    r"""A linear (Gaussian) diffusion $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$.

    Subclasses give $\alpha$, $\sigma$ and the SDE coefficients in closed form:

    $$f(t) = \frac{\mathrm{d}\log\alpha}{\mathrm{d}t},\qquad
      g(t)^2 = \frac{\mathrm{d}\sigma^2}{\mathrm{d}t} - 2 f(t)\,\sigma(t)^2,$$

    so that $\mathrm{d}x = f(t)\,x\,\mathrm{d}t + g(t)\,\mathrm{d}W$ has exactly these marginals.
    The log-SNR is $\lambda(t) = \log(\alpha^2/\sigma^2)$, decreasing in $t$.

    Every method of time (`marginal`, `coefficients`, `log_snr`, `drift`, `diffusion`) accepts
    $t \in [0, T]$ (up to a few float ulps): a concrete `t` outside it, or NaN, raises
    `ValueError` at once; a traced one raises at run time (`equinox.error_if`). Parameters may be
    arrays, and traced, so an SDE can be vmapped over or differentiated in its parameters.

    See [linear-SDE marginals](../derivations/linear-sde.md#linear-sde-marginals).
    """

    @abc.abstractmethod
    def marginal(self, t: Time) -> tuple[Scalar, Scalar]:
        r"""The marginal coefficients $(\alpha(t), \sigma(t))$ of $x_t \mid x_0$."""

    @abc.abstractmethod
    def coefficients(self, t: Time) -> tuple[Scalar, Scalar]:
        r"""The SDE coefficients $(f(t), g(t))$: drift $f(t)\,x$, diffusion $g(t)$."""

    def log_snr(self, t: Time) -> Scalar:
        r"""The log signal-to-noise ratio $\lambda(t) = 2\log\alpha(t) - 2\log\sigma(t)$."""
        alpha, sigma = self.marginal(t)
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def time_at_log_snr(self, lam: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""The time $t \in [0, T]$ with $\lambda(t)$ equal to `lam`: the inverse of
        [`log_snr`][scoredyn.AbstractLinearSDE.log_snr].

        This generic version bisects $\lambda$ (decreasing in $t$) on $[0, T]$ for 60 halvings
        (bracket width $T\,2^{-60}$, below float64 resolution); a `lam` outside
        $[\lambda(T), \lambda(0)]$ returns the nearer end. Subclasses with a closed form
        override it ([`VPSDE`][scoredyn.VPSDE], [`VESDE`][scoredyn.VESDE],
        [`CosineVPSDE`][scoredyn.CosineVPSDE]).
        """
        lam = jnp.asarray(lam)
        dtype = jnp.result_type(lam.dtype, float)
        lam = lam.astype(dtype)
        lo = jnp.zeros(lam.shape, dtype)
        hi = jnp.full(lam.shape, self.T, dtype)

        def body(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            later = jnp.vectorize(self.log_snr)(mid) > lam  # lambda(mid) > lam: root after mid
            return jnp.where(later, mid, lo), jnp.where(later, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
        t0 = jax.lax.stop_gradient(0.5 * (lo + hi))
        # one Newton step from the root: same value, and the implicit-function gradient
        # d t / d lam = 1 / lambda'(t) (bisection alone has a zero gradient)
        lam_t0, dlam = jax.jvp(jnp.vectorize(self.log_snr), (t0,), (jnp.ones_like(t0),))
        return t0 - (lam_t0 - lam) / jax.lax.stop_gradient(dlam)

    def model_time(self, t: Time) -> Float[Array, "..."]:
        r"""Networks of a continuous process are called at $t$ itself."""
        return check_times(t, self.T)

    def drift(self, t: Time, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        f, _ = self.coefficients(t)
        return f.astype(x.dtype) * x

    def diffusion(self, t: Time, x: Float[Array, "*shape"]) -> Scalar:
        _, g = self.coefficients(t)
        return g.astype(x.dtype)

    def prior_std(self) -> Scalar:
        r"""Standard deviation $\sigma(T)$ of the prior $\mathcal N(0, \sigma(T)^2 I)$."""
        return self.marginal(self.T)[1]

    def prior_sample(self, key: Key, shape: tuple[int, ...], dtype=None) -> Float[Array, "*shape"]:
        r"""Draw from the prior $\mathcal N(0, \sigma(T)^2 I)$ (the term $\alpha(T) x_0$ is
        dropped)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.prior_std().astype(dtype) * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x: Float[ArrayLike, "*shape"]) -> Scalar:
        r"""$\log \mathcal N(x; 0, \sigma(T)^2 I)$, summed over all entries of `x`."""
        x = as_float(x, "x")
        s = self.prior_std().astype(x.dtype)
        return -0.5 * jnp.sum((x / s) ** 2) - x.size * (jnp.log(s) + 0.5 * math.log(2 * math.pi))
