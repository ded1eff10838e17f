r"""Noise families for perturb-and-argmax: an abstract base and five location–scale families."""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr, ndtri
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_positive_param
from .._custom_types import Key
from .._misc import as_float, default_float
from . import _quadrature as quad

METHODS = ("auto", "exact", "quadrature", "midpoint")
_LOG2 = math.log(2.0)
_LOG4 = math.log(4.0)


def _check_method(method: str, num_nodes) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if num_nodes is not None:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 2:
            raise ValueError(f"`num_nodes` must be an integer >= 2 or None, got {num_nodes!r}.")


def _float_array(x: ArrayLike, name: str) -> Array:
    return as_float(x, name)


def _uniform01(key: Key, shape: tuple[int, ...], dtype) -> Array:
    """Uniform draws on [tiny, 1), the input of inverse-CDF sampling (one compiled kernel
    per shape, shared by every family that samples this way)."""
    dtype = default_float() if dtype is None else jnp.dtype(dtype)
    return jax.random.uniform(key, shape, dtype, minval=float(jnp.finfo(dtype).tiny), maxval=1.0)


class AbstractNoise(eqx.Module):
    r"""A noise distribution $\varepsilon$ with density $p$, CDF $F$ and quantile $F^{-1}$.

    Together with scores $\mu \in \mathbb R^n$ it defines the perturb-and-argmax distribution

    $$p_i = P\big[\arg\max_j (\mu_j + \varepsilon_j) = i\big]
          = \int p(e) \prod_{j \ne i} F(e + \mu_i - \mu_j)\,\mathrm de,$$

    computed by [`argmax_probs`][scoredyn.reparam.AbstractNoise.argmax_probs]. The map
    $\mu \mapsto p$ is shift-invariant and monotone for every continuous noise.

    To add a family, subclass and implement `sample`, `log_pdf`, `cdf` and `quantile`.
    Override `log_cdf` when $\log F$ can be computed more accurately than `log(cdf(x))`
    (deep left tails), and `kinks` when `log_pdf` or `log_cdf` has points where it is not
    smooth, so that the quadrature splits its panels there. The default quadrature is designed
    for log-concave noise (every built-in family), where its truncation bound is rigorous; see
    [the derivation](../derivations/perturb-max.md#quadrature). Heavy tails (Cauchy, Student)
    work but converge slowly: expect about 1e-4 with `num_nodes=128`.

    Families with closed forms set the class attributes `has_closed_form` (all $n$; override
    `_closed_form_row`) and `has_closed_form_diff` (override `log_diff_cdf`, used for
    $n = 2$).

    Example:
        ```python
        class HyperbolicSecant(sd.reparam.AbstractNoise):
            # p(x) = sech(x) / pi: log-concave, exponential tails

            def sample(self, key, shape=(), dtype=jnp.float32):
                return self.quantile(jax.random.uniform(key, shape, dtype))

            def log_pdf(self, x):
                return jnp.log(2 / jnp.pi) - jnp.logaddexp(x, -x)

            def cdf(self, x):
                return 2 / jnp.pi * jnp.arctan(jnp.exp(x))

            def quantile(self, u):
                return jnp.log(jnp.tan(jnp.pi * u / 2))

        p = HyperbolicSecant().argmax_probs(jnp.array([0.0, 1.0, 2.0]))  # (3,)
        ```
    """

    has_closed_form: ClassVar[bool] = False
    has_closed_form_diff: ClassVar[bool] = False

    @abc.abstractmethod
    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        r"""Draw i.i.d. noise of the given shape (dtype: the default float unless given)."""

    @abc.abstractmethod
    def log_pdf(self, x: ArrayLike) -> Array:
        r"""Log-density $\log p(x)$, elementwise."""

    @abc.abstractmethod
    def cdf(self, x: ArrayLike) -> Array:
        r"""CDF $F(x) = P[\varepsilon \le x]$, elementwise."""

    @abc.abstractmethod
    def quantile(self, u: ArrayLike) -> Array:
        r"""Quantile (inverse CDF, `icdf`) $F^{-1}(u)$ for $u \in (0, 1)$, elementwise."""

    def icdf(self, u: ArrayLike) -> Array:
        r"""Alias of [`quantile`][scoredyn.reparam.AbstractNoise.quantile]."""
        return self.quantile(u)

    def log_cdf(self, x: ArrayLike) -> Array:
        r"""$\log F(x)$; the default is `log(cdf(x))`, which underflows in the deep left tail."""
        return jnp.log(self.cdf(x))

    def kinks(self, dtype=None) -> Float[Array, " k"]:
        r"""Points where `log_pdf` or `log_cdf` is not smooth (default: none)."""
        return jnp.zeros((0,), default_float() if dtype is None else dtype)

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log P[\varepsilon_2 - \varepsilon_1 \le x]$ for i.i.d. $\varepsilon_1,\varepsilon_2$.

        This is $\log p_1$ for two classes with $\mu_1 - \mu_2 = x$. The base class computes
        it with the default quadrature; families with a closed form override it.
        """
        x = _float_array(x, "x")
        rows = jnp.stack([x.reshape(-1), jnp.zeros(x.size, x.dtype)], axis=-1)
        _, raw = _log_probs(self, rows, "quadrature", None)
        return raw[:, 0].reshape(x.shape)

    # ------------------------------------------------------------------ internals
    def _closed_form_row(self, mu: Float[Array, " n"]) -> Array:
        """Normalised log-probabilities in closed form (only when `has_closed_form`)."""
        raise NotImplementedError

    def _quadrature_row(self, mu: Float[Array, " n"], num_nodes: int | None) -> Array:
        """Unnormalised log-probabilities by the default quadrature rule."""
        dtype = mu.dtype
        kinks = self.kinks(dtype)
        if num_nodes is None:
            num_nodes = quad.default_num_nodes(dtype, panels=kinks.shape[0] > 0)
        return quad.sinh_gl_log_integrals(
            self.log_pdf,
            self.log_cdf,
            self.quantile,
            kinks,
            mu,
            num_nodes,
            quad.default_tail(dtype),
        )

    def _midpoint_row(self, mu: Float[Array, " n"], num_nodes: int | None) -> Array:
        return quad.midpoint_log_integrals(self.log_cdf, self.quantile, mu, num_nodes or 20000)

    def _resolve(self, n: int, method: str) -> str:
        """The computation `method` selects for `n` classes (a static choice)."""
        if method in ("auto", "exact"):
            if n == 1:
                return "one"
            if self.has_closed_form:
                return "closed"
            if n == 2 and self.has_closed_form_diff:
                return "diff"
            if method == "exact":
                raise ValueError(
                    f"`method='exact'`: {type(self).__name__} noise has no closed form for "
                    f"n = {n} classes; use method='auto' or 'quadrature'."
                )
            return "quadrature"
        return method

    def _raw_row(self, mu: Float[Array, " n"], path: str, num_nodes) -> Array:
        """Log-probabilities of one row, before normalisation, for a resolved `path`."""
        if path == "one":
            return jnp.zeros_like(mu)
        if path == "closed":
            return self._closed_form_row(mu)
        if path == "diff":
            return _two_class_row(self.log_diff_cdf, mu[0] - mu[1])
        if path == "quadrature":
            return self._quadrature_row(mu, num_nodes)
        return self._midpoint_row(mu, num_nodes)

    # ------------------------------------------------------------------ public maps
    def argmax_log_probs(
        self, mu: ArrayLike, *, method: str = "auto", num_nodes: int | None = None
    ) -> Float[Array, "*batch n"]:
        r"""$\log p_i$ for the perturb-and-argmax distribution with scores `mu`.

        Args:
            mu: shape `(*batch, n)`, floating point; classes on the last axis.
            method: `"auto"` (closed form where one exists, else quadrature), `"exact"`
                (closed form or `ValueError`), `"quadrature"` (always the numerical rule) or
                `"midpoint"` (the blog's baseline rule, for comparison).
            num_nodes: Gauss–Legendre nodes per panel (default 64 in float64, 32 in float32;
                32 / 16 per panel for noise with kinks), or $K$ for `"midpoint"`
                (default 20000).

        Returns:
            shape `(*batch, n)`: normalised log-probabilities (rows sum to one in probability).

        Raises:
            TypeError: if `mu` is not floating point.
            ValueError: for a bad `method`, `num_nodes` or shape.
        """
        mu = _check_scores(mu)
        _check_method(method, num_nodes)
        n = mu.shape[-1]
        path = self._resolve(n, method)
        out, _ = _log_probs(self, mu.reshape(-1, n), path, num_nodes)
        return out.reshape(mu.shape)

    def argmax_probs(
        self, mu: ArrayLike, *, method: str = "auto", num_nodes: int | None = None
    ) -> Float[Array, "*batch n"]:
        r"""$p_i = P[\arg\max_j(\mu_j + \varepsilon_j) = i]$; see `argmax_log_probs`."""
        return jnp.exp(self.argmax_log_probs(mu, method=method, num_nodes=num_nodes))


def _two_class_row(log_diff_cdf, x: Array) -> Array:
    r"""$(\log p_1, \log p_2)$ for two classes with $\mu_1 - \mu_2 = x$, exact at $x = \pm\infty$
    (a masked class) and NaN for NaN, whatever the family's `log_diff_cdf` does there."""
    finite = jnp.isfinite(x)
    xs = jnp.where(finite, x, jnp.zeros_like(x))  # gradient-safe: no inf reaches the formula
    row = jnp.stack([log_diff_cdf(xs), log_diff_cdf(-xs)])
    zero, ninf = jnp.zeros_like(x), jnp.full_like(x, -jnp.inf)
    limit = jnp.stack([jnp.where(x > 0, zero, ninf), jnp.where(x > 0, ninf, zero)])
    return jnp.where(finite, row, jnp.where(jnp.isnan(x), x, limit))


def _resolve_infinite_scores(mu: Array) -> Array:
    r"""Rows with a $+\infty$ score: those classes share the win, the others are masked.

    By shift invariance a row with scores $+\infty$ is the row $\mu - \infty$: $0$ for the
    $+\infty$ classes and $-\infty$ (masked) for every other one, so the $+\infty$ classes
    split the probability equally (one of them: probability 1). Rows without $+\infty$ are
    unchanged; a $-\infty$ score is a masked class, handled by every rule.
    """
    posinf = mu == jnp.inf
    any_pos = jnp.any(posinf, axis=-1, keepdims=True)
    # NaN stays NaN (NaN in, NaN out, row by row)
    shifted = jnp.where(posinf, jnp.zeros_like(mu), jnp.where(jnp.isnan(mu), mu, -jnp.inf))
    return jnp.where(any_pos, shifted, mu)


@eqx.filter_jit
def _log_probs(noise: AbstractNoise, mu: Array, path: str, num_nodes) -> tuple[Array, Array]:
    """Normalised and raw (unnormalised) log-probabilities of rows `mu`, shape `(batch, n)`.

    Compiled once per noise type, shape, dtype and path; the noise's scale is a traced leaf.
    """
    mu = _resolve_infinite_scores(mu)
    raw = jax.vmap(lambda row: noise._raw_row(row, path, num_nodes))(mu)
    return raw - quad.safe_logsumexp(raw, axis=-1)[:, None], raw


def _check_scores(mu: ArrayLike) -> Array:
    mu = jnp.asarray(mu)
    if not jnp.issubdtype(mu.dtype, jnp.floating):
        raise TypeError(
            f"`mu` must be a real floating-point array, got dtype {mu.dtype}; "
            "convert with jnp.asarray(mu, float)."
        )
    if mu.ndim < 1 or mu.shape[-1] < 1:
        raise ValueError(f"`mu` must have shape (*batch, n) with n >= 1, got shape {mu.shape}.")
    return mu


# --------------------------------------------------------------------------- location-scale


class _AbstractLocationScale(AbstractNoise):
    """Noise $s\\,\\varepsilon_0$ for a standard noise $\\varepsilon_0$: formulas in $z = x/s$."""

    scale: eqx.AbstractVar[Array]

    def _s(self, dtype) -> Array:
        return self.scale.astype(dtype)

    def _z(self, x: ArrayLike) -> tuple[Array, Array]:
        x = _float_array(x, "x")
        s = self._s(x.dtype)
        return x / s, s


def _init_scale(scale: ArrayLike) -> Array:
    scale = as_float(scale, "scale")
    if scale.ndim != 0:
        raise ValueError(f"`scale` must be a scalar, got shape {scale.shape}.")
    # concrete: ValueError now; traced (a learned or swept scale): checked when the program
    # runs, since a negative scale would silently reverse the distribution
    return check_positive_param(scale, "scale")


class Gumbel(_AbstractLocationScale):
    r"""Gumbel noise: $F(x) = \exp(-e^{-x/s})$, $p(x) = s^{-1}\exp(-x/s - e^{-x/s})$.

    With Gumbel noise perturb-and-argmax is exactly the softmax:
    $p_i = \operatorname{softmax}(\mu / s)_i$ (the Gumbel-max trick), used by `method="auto"`.

    Args:
        scale: $s > 0$.

    Raises:
        ValueError: if `scale <= 0` (at once when concrete, when the program runs when traced).
    """

    scale: Array
    has_closed_form: ClassVar[bool] = True
    has_closed_form_diff: ClassVar[bool] = True

    def __init__(self, scale: ArrayLike = 1.0):
        self.scale = _init_scale(scale)

    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        u = _uniform01(key, shape, dtype)
        return -self._s(u.dtype) * jnp.log(-jnp.log(u))

    def log_pdf(self, x: ArrayLike) -> Array:
        z, s = self._z(x)
        return -z - jnp.exp(-z) - jnp.log(s)

    def cdf(self, x: ArrayLike) -> Array:
        return jnp.exp(self.log_cdf(x))

    def log_cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return -jnp.exp(-z)

    def quantile(self, u: ArrayLike) -> Array:
        u = _float_array(u, "u")
        return -self._s(u.dtype) * jnp.log(-jnp.log(u))

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log\sigma(x/s)$: the difference of two Gumbels is logistic with scale $s$."""
        z, _ = self._z(x)
        return jax.nn.log_sigmoid(z)

    def _closed_form_row(self, mu):
        return jax.nn.log_softmax(mu / self._s(mu.dtype))


class Gaussian(_AbstractLocationScale):
    r"""Gaussian noise $\mathcal N(0, s^2)$: $F(x) = \Phi(x/s)$.

    For $n = 2$, $p_1 = \Phi\big((\mu_1 - \mu_2)/(\sqrt2\,s)\big)$ (a probit); for $n > 2$ the
    probabilities are computed by quadrature.

    Args:
        scale: the standard deviation $s > 0$.

    Raises:
        ValueError: if `scale <= 0` (at once when concrete, when the program runs when traced).
    """

    scale: Array
    has_closed_form_diff: ClassVar[bool] = True

    def __init__(self, scale: ArrayLike = 1.0):
        self.scale = _init_scale(scale)

    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        dtype = default_float() if dtype is None else dtype
        return jax.random.normal(key, shape, dtype) * self._s(dtype)

    def log_pdf(self, x: ArrayLike) -> Array:
        z, s = self._z(x)
        return -0.5 * z**2 - jnp.log(s) - 0.5 * math.log(2.0 * math.pi)

    def cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return ndtr(z)

    def log_cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return log_ndtr(z)

    def quantile(self, u: ArrayLike) -> Array:
        u = _float_array(u, "u")
        return self._s(u.dtype) * ndtri(u)

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log\Phi\big(x/(\sqrt2\,s)\big)$: the difference is $\mathcal N(0, 2s^2)$."""
        z, _ = self._z(x)
        return log_ndtr(z / math.sqrt(2.0))


class Logistic(_AbstractLocationScale):
    r"""Logistic noise: $F(x) = \sigma(x/s) = 1/(1 + e^{-x/s})$.

    The difference of two independent logistics is *not* logistic. With $x = |\mu_1-\mu_2|/s$
    and $a = e^{-x}$, the smaller of the two probabilities for $n = 2$ is

    $$q(x) = \frac{a\,(x - 1 + a)}{(1 - a)^2},\qquad q(0) = \tfrac12,$$

    (see [the derivation](../derivations/perturb-max.md#two-classes)); $n > 2$ uses quadrature.

    Args:
        scale: $s > 0$ (the variance is $\pi^2 s^2/3$).

    Raises:
        ValueError: if `scale <= 0` (at once when concrete, when the program runs when traced).
    """

    scale: Array
    has_closed_form_diff: ClassVar[bool] = True

    def __init__(self, scale: ArrayLike = 1.0):
        self.scale = _init_scale(scale)

    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        u = _uniform01(key, shape, dtype)
        return self._s(u.dtype) * (jnp.log(u) - jnp.log1p(-u))

    def log_pdf(self, x: ArrayLike) -> Array:
        z, s = self._z(x)
        return -jax.nn.softplus(z) - jax.nn.softplus(-z) - jnp.log(s)

    def cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return jax.nn.sigmoid(z)

    def log_cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return -jax.nn.softplus(-z)

    def quantile(self, u: ArrayLike) -> Array:
        u = _float_array(u, "u")
        return self._s(u.dtype) * (jnp.log(u) - jnp.log1p(-u))

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log P[\varepsilon_2 - \varepsilon_1 \le x]$ in closed form (see the class)."""
        z, _ = self._z(x)
        return _diff_cdf_limits(z, lambda a: _logistic_diff_log_q(a))


def _diff_cdf_limits(z: Array, log_q_fn) -> Array:
    r"""$\log P[\varepsilon_2 - \varepsilon_1 \le z]$ from the log of the smaller tail
    $\log q(|z|)$: $\log q$ for $z < 0$, $\log(1 - q)$ otherwise, with the limits $0$ at
    $z = +\infty$ and $-\infty$ at $z = -\infty$ (where $\log q$ itself is $\infty - \infty$)."""
    finite = jnp.isfinite(z)
    a = jnp.abs(jnp.where(finite, z, jnp.zeros_like(z)))
    log_q = log_q_fn(a)
    val = jnp.where(z < 0, log_q, jnp.log1p(-jnp.exp(log_q)))
    limit = jnp.where(z > 0, jnp.zeros_like(z), jnp.full_like(z, -jnp.inf))
    return jnp.where(finite, val, jnp.where(jnp.isnan(z), z, limit))


def _logistic_diff_log_q(x: Array) -> Array:
    r"""$\log q(x)$, $q(x) = e^{-x}(x - 1 + e^{-x})/(1 - e^{-x})^2$ for $x \ge 0$, stably.

    $q = e^{-x} A(x) / B(x)^2$ with $A = (x - 1 + e^{-x})/x^2$ and $B = (1 - e^{-x})/x$; both
    use their Taylor series below $x = 1/2$ (where the direct forms cancel) and the direct
    forms above.
    """
    small = x < 0.5
    xs = jnp.where(small, x, 0.25)
    xl = jnp.where(small, 1.0, x)
    # series: A = sum_{k>=2} (-x)^(k-2)/k!, B = sum_{k>=1} (-x)^(k-1)/k!
    a_ser = jnp.zeros_like(xs)
    b_ser = jnp.zeros_like(xs)
    for k in range(18, 1, -1):
        a_ser = a_ser * (-xs) + 1.0 / math.factorial(k)
    for k in range(18, 0, -1):
        b_ser = b_ser * (-xs) + 1.0 / math.factorial(k)
    log_a = jnp.where(small, jnp.log(a_ser), jnp.log(xl + jnp.expm1(-xl)) - 2.0 * jnp.log(xl))
    log_b = jnp.where(small, jnp.log(b_ser), jnp.log(-jnp.expm1(-xl)) - jnp.log(xl))
    return -x + log_a - 2.0 * log_b


class Laplace(_AbstractLocationScale):
    r"""Laplace noise: $p(x) = e^{-|x|/s}/(2s)$, $F(x) = \tfrac12 e^{x/s}$ for $x < 0$ and
    $1 - \tfrac12 e^{-x/s}$ for $x \ge 0$.

    The density has a kink at 0, so the quadrature splits its panels at $0$ and at every
    $\mu_j - \mu_i$ ($n + 1$ panels). For $n = 2$ the difference of two Laplace variables has
    density $(1 + |y|)e^{-|y|}/4$ (in units of $s$), so the smaller probability is
    $q(x) = (2 + x)e^{-x}/4$ with $x = |\mu_1 - \mu_2|/s$.

    Args:
        scale: $s > 0$ (the variance is $2s^2$).

    Raises:
        ValueError: if `scale <= 0` (at once when concrete, when the program runs when traced).
    """

    scale: Array
    has_closed_form_diff: ClassVar[bool] = True

    def __init__(self, scale: ArrayLike = 1.0):
        self.scale = _init_scale(scale)

    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        return self.quantile(_uniform01(key, shape, dtype))

    def log_pdf(self, x: ArrayLike) -> Array:
        z, s = self._z(x)
        return -jnp.abs(z) - jnp.log(2.0 * s)

    def cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        zn, zp = jnp.minimum(z, 0.0), jnp.maximum(z, 0.0)
        return jnp.where(z < 0, 0.5 * jnp.exp(zn), 1.0 - 0.5 * jnp.exp(-zp))

    def log_cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        zn, zp = jnp.minimum(z, 0.0), jnp.maximum(z, 0.0)
        return jnp.where(z < 0, zn - _LOG2, jnp.log1p(-0.5 * jnp.exp(-zp)))

    def quantile(self, u: ArrayLike) -> Array:
        u = _float_array(u, "u")
        lower = u < 0.5
        ul = jnp.where(lower, u, 0.25)
        uu = jnp.where(lower, 0.75, u)
        return self._s(u.dtype) * jnp.where(lower, jnp.log(2.0 * ul), -jnp.log(2.0 * (1.0 - uu)))

    def kinks(self, dtype=None) -> Float[Array, " k"]:
        return jnp.zeros((1,), default_float() if dtype is None else dtype)

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log P[\varepsilon_2 - \varepsilon_1 \le x]$ in closed form (see the class)."""
        z, _ = self._z(x)
        return _diff_cdf_limits(z, lambda a: jnp.log(2.0 + a) - a - _LOG4)


class Uniform(_AbstractLocationScale):
    r"""Uniform noise on $[-s/2, s/2]$ (width $s$).

    The integrand is a piecewise polynomial, so the probabilities are exact (Gauss–Legendre
    with $\lfloor n/2\rfloor + 1$ nodes on each of the $2n + 1$ panels; cost $O(n^4)$ per row).
    A class whose score is $s$ or more below the best has probability exactly zero
    (`log_prob = -inf`). For $n = 2$, $p_1 = 1 - (1 - x)_+^2/2$ with $x = (\mu_1-\mu_2)/s \ge 0$
    (the difference is triangular).

    Args:
        scale: the width $s > 0$ (the variance is $s^2/12$).

    Raises:
        ValueError: if `scale <= 0` (at once when concrete, when the program runs when traced).
    """

    scale: Array
    has_closed_form: ClassVar[bool] = True
    has_closed_form_diff: ClassVar[bool] = True

    def __init__(self, scale: ArrayLike = 1.0):
        self.scale = _init_scale(scale)

    def sample(self, key: Key, shape: tuple[int, ...] = (), dtype=None) -> Array:
        return self.quantile(_uniform01(key, shape, dtype))

    def log_pdf(self, x: ArrayLike) -> Array:
        z, s = self._z(x)
        inside = jnp.abs(z) <= 0.5
        return jnp.where(inside, -jnp.log(s), -jnp.inf)

    def cdf(self, x: ArrayLike) -> Array:
        z, _ = self._z(x)
        return jnp.clip(z + 0.5, 0.0, 1.0)

    def log_cdf(self, x: ArrayLike) -> Array:
        return quad.safe_log(self.cdf(x))

    def quantile(self, u: ArrayLike) -> Array:
        u = _float_array(u, "u")
        return self._s(u.dtype) * (u - 0.5)

    def kinks(self, dtype=None) -> Float[Array, " k"]:
        s = self._s(default_float() if dtype is None else dtype)
        return jnp.stack([-0.5 * s, 0.5 * s])

    def log_diff_cdf(self, x: ArrayLike) -> Array:
        r"""$\log P[\varepsilon_2 - \varepsilon_1 \le x]$: the triangular CDF on $[-s, s]$."""
        z, _ = self._z(x)
        a = jnp.minimum(jnp.abs(z), 1.0)
        log_q = 2.0 * quad.safe_log(1.0 - a) - _LOG2
        return jnp.where(z < 0, log_q, jnp.log1p(-jnp.exp(log_q)))

    def _closed_form_row(self, mu):
        return quad.uniform_log_integrals(mu / self._s(mu.dtype))

    def _quadrature_row(self, mu, num_nodes):
        # the piecewise-polynomial rule is itself an (exact) quadrature
        return quad.uniform_log_integrals(mu / self._s(mu.dtype))

    def _resolve(self, n: int, method: str) -> str:
        path = super()._resolve(n, method)
        return "closed" if path == "quadrature" else path
