r"""Quadrature rules for perturb-and-argmax probabilities.

For one row of scores $\mu \in \mathbb R^n$ and i.i.d. noise with density $p$ and CDF $F$,

$$p_i = \int_{-\infty}^{\infty} p(e) \prod_{j \ne i} F(e + \mu_i - \mu_j)\,\mathrm de
      = \int_{-\infty}^{\infty} \exp L_i(e)\,\mathrm de,\qquad
  L_i(e) = \log p(e) + \sum_{j \ne i} \log F(e + \mu_i - \mu_j).$$

Everything here works on the log-integrand $L_i$ and returns $\log p_i$ *unnormalised*
(the quadrature value itself); normalising the row is the caller's job.

Three rules live here:

* `sinh_gl_log_integrals`: the default. Centre at the mode $e^\star$ of $L_i$, truncate where
  $L_i$ has dropped by `tail` (a bound that log-concavity makes rigorous), stretch with
  $e = e^\star + \bar\delta \sinh t$ and apply Gauss–Legendre in $t$, with panels split at the
  points where the noise is not smooth (Laplace).
* `midpoint_log_integrals`: the blog's baseline, the midpoint rule in the CDF variable
  $u = F(e)$ with nodes $u_k = k/(K + 1)$.
* `uniform_log_integrals`: exact for uniform noise, whose integrand is a piecewise polynomial.

All functions are written for one row and one dtype; callers `vmap`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

# --------------------------------------------------------------------------- small helpers


def safe_log(x: Array) -> Array:
    """`log(x)` for `x >= 0` that returns `-inf` at zero with a zero (not NaN) gradient."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)


def safe_logsumexp(a: Array, axis=None) -> Array:
    """`logsumexp` that returns `-inf` (with zero gradient) when every term is `-inf`."""
    empty = jnp.all(a == -jnp.inf, axis=axis, keepdims=True)
    out = logsumexp(jnp.where(empty, 0.0, a), axis=axis, keepdims=True)
    out = jnp.where(empty, -jnp.inf, out)
    return jnp.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def gauss_legendre(m: int, dtype) -> tuple[Array, Array]:
    """Gauss–Legendre nodes and weights on $[-1, 1]$ (computed once at trace time)."""
    x, w = np.polynomial.legendre.leggauss(m)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def default_tail(dtype) -> float:
    r"""Truncation depth $R = -\log(\mathrm{eps}) + 4$: 40 in float64, 20 in float32."""
    return float(-math.log(float(jnp.finfo(dtype).eps)) + 4.0)


def default_num_nodes(dtype, panels: bool) -> int:
    """Default Gauss–Legendre nodes per panel (from the measured error table)."""
    eps = float(jnp.finfo(dtype).eps)
    if eps < 1e-10:  # float64
        return 32 if panels else 64
    if eps < 1e-5:  # float32
        return 16 if panels else 32
    return 8 if panels else 16


def _bisect(f, lo: Array, hi: Array, iters: int) -> Array:
    """Point where `f` changes sign from positive (left) to non-positive (right)."""

    def body(_, c):
        a, b = c
        m = 0.5 * (a + b)
        pos = f(m) > 0
        return jnp.where(pos, m, a), jnp.where(pos, b, m)

    a, b = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (a + b)


# --------------------------------------------------------------------------- the default rule


def sinh_gl_log_integrals(
    log_pdf,
    log_cdf,
    quantile,
    kinks: Float[Array, " k"],
    mu: Float[Array, " n"],
    num_nodes: int,
    tail: float,
) -> Float[Array, " n"]:
    r"""Unnormalised $\log p_i$ for every class $i$ by mode-centred sinh–Gauss–Legendre.

    For each $i$ (all numbers below are held fixed under differentiation, so the gradient is
    the same rule applied to $\partial L_i/\partial\mu$):

    1. the mode $e^\star$ of $L_i$, by bisection on $L_i'$ over a bracket built from the noise
       quartiles and the largest score gap;
    2. the distances $r_\pm$ at which $L_i(e^\star \pm r_\pm) = L_i(e^\star) - R$ with
       $R$ = `tail`, and $\delta_\pm$ at which it has dropped by one, by bisection in
       $\log r$. If $L_i$ is concave (log-concave noise), the mass beyond $e^\star \pm r_\pm$ is
       at most $e^{-R}/(1 - e^{-1})$ of the total on each side;
    3. the map $e = e^\star + \bar\delta\sinh t$ with $\bar\delta = \min(\delta_-, \delta_+)$,
       $t \in [-\operatorname{asinh}(r_-/\bar\delta), \operatorname{asinh}(r_+/\bar\delta)]$,
       cut into panels at the images of the non-smooth points `kinks - (mu_i - mu_j)`, and
       `num_nodes` Gauss–Legendre nodes per panel;
    4. $\log p_i = \operatorname{logsumexp}_k\,[L_i(e_k) + \log(w_k\,\bar\delta\cosh t_k)]$.

    Args:
        log_pdf, log_cdf, quantile: the noise's functions (one scalar in, one scalar out).
        kinks: shape `(k,)`, points where `log_pdf` or `log_cdf` is not smooth (may be empty).
        mu: shape `(n,)`, one row of scores.
        num_nodes: Gauss–Legendre nodes per panel.
        tail: the truncation depth $R$.

    Returns:
        shape `(n,)`, the unnormalised quadrature values of $\log p_i$.
    """
    dtype = mu.dtype
    n = mu.shape[0]
    x_gl, w_gl = gauss_legendre(num_nodes, dtype)
    act, mu, mu_c = _mask_scores(mu)
    half = jnp.asarray(0.5, dtype)
    med = quantile(half)
    iqr = quantile(jnp.asarray(0.75, dtype)) - quantile(jnp.asarray(0.25, dtype))
    idx = jnp.arange(n)

    def log_integrand(e, d, mask):
        # the excluded class j = i is evaluated at the median (finite, with a finite
        # derivative) so that `where` cannot turn an infinite derivative into NaN
        arg = jnp.where(mask, e + d, med)
        return log_pdf(e) + jnp.sum(jnp.where(mask, log_cdf(arg), 0.0))

    def one(i):
        mask = (idx != i) & act  # a masked class (score -inf) never beats class i
        d = mu[i] - mu  # carries the gradient
        d_c = mu_c[i] - mu_c  # used to place the nodes
        L = lambda e: log_integrand(e, d_c, mask)
        gap = jnp.max(jnp.where(mask, -d_c, 0.0))
        lo = med - 20.0 * iqr
        hi = med + 20.0 * iqr + jnp.maximum(gap, 0.0)
        e_star = _bisect(jax.grad(L), lo, hi, 48)
        L_star = L(e_star)
        log_w = jnp.log(hi - lo)

        # the four distances r_-, r_+, delta_-, delta_+ in one vectorised bisection
        sign = jnp.array([-1.0, 1.0, -1.0, 1.0], dtype)
        amount = jnp.array([tail, tail, 1.0, 1.0], dtype)
        f = lambda log_r: jax.vmap(L)(e_star + sign * jnp.exp(log_r)) - L_star + amount
        ones = jnp.ones((4,), dtype)
        r_m, r_p, d_m, d_p = jnp.exp(_bisect(f, (log_w - 40.0) * ones, (log_w + 40.0) * ones, 32))
        dbar = jnp.minimum(d_m, d_p)
        t_lo, t_hi = -jnp.arcsinh(r_m / dbar), jnp.arcsinh(r_p / dbar)
        # panel edges: the ends and the images of the non-smooth points
        pts = jnp.where(act[None, :], kinks[:, None] - d_c[None, :], kinks[:, None]).reshape(-1)
        t_k = jnp.clip(jnp.arcsinh((pts - e_star) / dbar), t_lo, t_hi)
        edges = jnp.sort(jnp.concatenate([t_lo[None], t_k, t_hi[None]]))
        a, b = edges[:-1, None], edges[1:, None]
        t = 0.5 * (a + b) + 0.5 * (b - a) * x_gl[None, :]
        log_wts = safe_log(0.5 * (b - a) * w_gl[None, :]) + jnp.log(dbar * jnp.cosh(t))
        e = (e_star + dbar * jnp.sinh(t)).reshape(-1)
        e, log_wts = jax.lax.stop_gradient((e, log_wts.reshape(-1)))
        # every node lies where L_i >= L_i(e*) - R (for concave L_i), so no node underflows,
        # except when class i cannot win in this float format (a score gap of 1e30 in
        # float32): there L_i(e) = -inf and its derivative is NaN, which the logsumexp's zero
        # weight would turn into 0 * NaN. Such dead nodes see the held-fixed gaps instead, so
        # their (zero) contribution to the gradient stays zero.
        dead = jax.vmap(lambda ee: log_integrand(ee, d_c, mask))(e) == -jnp.inf
        vals = jax.vmap(lambda ee, dd: log_integrand(ee, jnp.where(dd, d_c, d), mask))(e, dead)
        return jnp.where(act[i], safe_logsumexp(vals + log_wts), -jnp.inf)

    return jax.vmap(one)(idx)


def _mask_scores(mu: Array) -> tuple[Array, Array, Array]:
    r"""Masked classes (score $-\infty$) for the quadrature rules.

    Returns `(active, mu_f, mu_c)`: `active[j]` is False where $\mu_j = -\infty$ (a NaN score
    counts as active, so that NaN propagates); `mu_f` replaces the masked scores by a finite
    placeholder (the largest active score) with a zero gradient, and `mu_c` is `mu_f` held
    fixed. A masked class gets $\log p = -\infty$ and drops out of every other class's product
    (its CDF factor is $F(+\infty) = 1$), so the rule sees only the active classes.
    """
    mu_c = jax.lax.stop_gradient(mu)
    act = mu_c != -jnp.inf
    top = jnp.max(jnp.where(act, mu_c, -jnp.inf))
    fill = jnp.where(top > -jnp.inf, top, jnp.zeros_like(top))
    return act, jnp.where(act, mu, fill), jnp.where(act, mu_c, fill)


# --------------------------------------------------------------------------- the baseline


def midpoint_log_integrals(
    log_cdf, quantile, mu: Float[Array, " n"], num_nodes: int
) -> Float[Array, " n"]:
    r"""Unnormalised $\log p_i$ by the blog's quantile-midpoint rule.

    $$p_i \approx \frac1K \sum_{k=1}^{K} \prod_{j\ne i}
      F\Big(\mu_i - \mu_j + F^{-1}\big(\tfrac{k}{K+1}\big)\Big),\qquad K = \text{num\_nodes}.$$

    The rule ignores the mass in $u < 1/(K+1)$ and $u > K/(K+1)$, so its rows do not sum to
    one; it is kept as the baseline that the default rule is measured against.
    """
    dtype = mu.dtype
    n = mu.shape[0]
    k = jnp.arange(1, num_nodes + 1, dtype=dtype)
    e = quantile(k / (num_nodes + 1))  # (K,)
    idx = jnp.arange(n)
    act, mu, _ = _mask_scores(mu)

    def one(i):
        mask = (idx != i) & act
        d = mu[i] - mu
        arg = jnp.where(mask[None, :], e[:, None] + d[None, :], e[:, None])
        vals = jnp.sum(jnp.where(mask[None, :], log_cdf(arg), 0.0), axis=1)
        return jnp.where(act[i], safe_logsumexp(vals) - math.log(num_nodes), -jnp.inf)

    return jax.vmap(one)(idx)


# --------------------------------------------------------------------------- uniform (exact)


def uniform_log_integrals(z: Float[Array, " n"]) -> Float[Array, " n"]:
    r"""Exact $\log p_i$ for uniform noise, given standardised scores $z = \mu / s$.

    With $u = e/s + \tfrac12 \in [0, 1]$ and $c(v) = \min(\max(v, 0), 1)$,

    $$p_i = \int_0^1 \prod_{j\ne i} c(u + z_i - z_j)\,\mathrm du .$$

    Between the sorted points $\{0, 1\} \cup \{c(z_j - z_i), c(1 + z_j - z_i)\}$ each factor is
    $0$, $1$ or linear in $u$, so the integrand is a polynomial of degree at most $n - 1$ and
    Gauss–Legendre with $\lfloor n/2\rfloor + 1$ nodes per panel is exact. Cost
    $O(n^4)$ per row: fine for tens of classes.
    """
    dtype = z.dtype
    n = z.shape[0]
    m = n // 2 + 1
    x_gl, w_gl = gauss_legendre(m, dtype)
    z_c = jax.lax.stop_gradient(z)
    idx = jnp.arange(n)
    zero, one_ = jnp.zeros((1,), dtype), jnp.ones((1,), dtype)

    def one(i):
        mask = idx != i
        d = z[i] - z
        d_c = z_c[i] - z_c
        pts = jnp.clip(jnp.concatenate([-d_c, 1.0 - d_c]), 0.0, 1.0)
        edges = jnp.sort(jnp.concatenate([zero, pts, one_]))
        a, b = edges[:-1, None], edges[1:, None]
        u = 0.5 * (a + b) + 0.5 * (b - a) * x_gl[None, :]  # (panels, m)
        log_wts = safe_log(0.5 * (b - a) * w_gl[None, :])
        u, log_wts = jax.lax.stop_gradient((u, log_wts))
        fac = jnp.clip(u[..., None] + d[None, None, :], 0.0, 1.0)  # (panels, m, n)
        vals = jnp.sum(jnp.where(mask[None, None, :], safe_log(fac), 0.0), axis=-1)
        return safe_logsumexp((vals + log_wts).reshape(-1))

    return jax.vmap(one)(idx)
