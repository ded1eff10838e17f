r"""Monte Carlo estimation of the score moment $\Gamma_n$ (equivalently `ms_eps[n]`), with a
variance-reduced (control-variate) estimator.

For every step $n$ of the schedule, with
$x_n = \sqrt{\bar a_n}\,x_0 + \sqrt{1 - \bar a_n}\,\varepsilon$,

$$\texttt{ms\_eps}_n = \frac1d\,\mathbb E\,\|\hat\varepsilon(x_n, n)\|^2
  = (1 - \bar a_n)\,\Gamma_n.$$
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_data_rows, runtime_check
from .._custom_types import Key
from .._discrete import DiscreteSchedule
from .._misc import as_float, check_vector_field, default_float, is_concrete
from .._progress import Progress, check_progress, report
from ._common import check_schedule


class GammaEstimate(eqx.Module):
    r"""Monte Carlo estimate of the score moment at every step of a schedule.

    All arrays have shape `(N+1,)`, indexed by the step $n$; index 0 is a placeholder
    (`ms_eps[0] = 0`, standard errors 0) because no reverse step starts at $n = 0$.

    Attributes:
        ms_eps: the estimate of $\frac1d\mathbb E\|\hat\varepsilon(x_n, n)\|^2$ that downstream
            functions use: the control-variate estimate when it was requested, else the plain one.
        stderr: its Monte Carlo standard error.
        ms_eps_plain: the plain sample mean $\frac1S\sum_i\|\hat\varepsilon_i\|^2/d$.
        stderr_plain: its standard error, $\sqrt{\widehat{\mathrm{Var}}(f)/S}$.
        ms_eps_cv: the cross-fitted control-variate estimate (see
            [`estimate_gamma`][scoredyn.analytic.estimate_gamma]).
        stderr_cv: its standard error.
        cv_coef: shape `(N+1, 2)`, the control-variate coefficients $(c_n, c'_n)$ of $g$ and
            $g'$ (average of the two folds' values).
        gamma: the paper's $\Gamma_n = \texttt{ms\_eps}_n/(1 - \bar a_n)$ (0 at $n = 0$).
        num_samples: $S$, the number of $(x_0, \varepsilon)$ pairs used per step.
    """

    # `num_times` = N + 1 (n = 0..N; jaxtyping binds no arithmetic in a field's shape)
    ms_eps: Float[Array, " num_times"]
    stderr: Float[Array, " num_times"]
    ms_eps_plain: Float[Array, " num_times"]
    stderr_plain: Float[Array, " num_times"]
    ms_eps_cv: Float[Array, " num_times"]
    stderr_cv: Float[Array, " num_times"]
    cv_coef: Float[Array, "num_times 2"]
    gamma: Float[Array, " num_times"]
    num_samples: int = eqx.field(static=True)


# ---------------------------------------------------------------------------- running moments
# Per fold we keep (count, mean, centred comoment matrix) of v = (f, u, h) with
# f = ||eps_hat||^2 / d, g = ||eps||^2 / d - 1, u = f - g and h = <eps, x0 - xbar> / d. Batches
# are merged with the pairwise update of Chan, Golub & LeVeque (1979), which stays accurate when
# a variance is tiny compared with the mean (as for u at large n).

_NV = 3


def _batch_moments(v, w):
    """Per-fold (count (F,), mean (F, 3), comoment (F, 3, 3)) of rows of v (B, 3); w (F, B)."""
    cnt = jnp.sum(w, 1)
    mean = (w @ v) / jnp.maximum(cnt, 1.0)[:, None]
    dev = (v[None, :, :] - mean[:, None, :]) * w[:, :, None]  # (F, B, 3)
    return cnt, mean, jnp.einsum("fbi,fbj->fij", dev, dev)


def _merge(a, b):
    na, ma, ca = a
    nb, mb, cb = b
    n = na + nb
    delta = mb - ma
    frac = nb / jnp.maximum(n, 1.0)
    mean = ma + delta * frac
    com = ca + cb + jnp.outer(delta, delta) * na * frac
    return n, mean, com


# v = (f, u, h) -> regressors (g, h) = T v, and f - c_g g - c_h h = w(c) . v
_T = ((1.0, -1.0, 0.0), (0.0, 0.0, 1.0))


def _solve2(a, b):
    """Solve the 2x2 symmetric systems a (F, 2, 2) c = b (F, 2); ill-conditioned -> least norm."""
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    scale = a[:, 0, 0] * a[:, 1, 1]
    ok = det > 1e-10 * jnp.maximum(scale, jnp.finfo(a.dtype).tiny)
    safe = jnp.where(ok, det, 1.0)
    c0 = (a[:, 1, 1] * b[:, 0] - a[:, 0, 1] * b[:, 1]) / safe
    c1 = (a[:, 0, 0] * b[:, 1] - a[:, 1, 0] * b[:, 0]) / safe
    # fall back to the single regressor g when h is (nearly) collinear or constant
    g_only = jnp.where(a[:, 0, 0] > 0, b[:, 0] / jnp.where(a[:, 0, 0] > 0, a[:, 0, 0], 1.0), 0.0)
    return jnp.stack([jnp.where(ok, c0, g_only), jnp.where(ok, c1, 0.0)], -1)


def _finalise(stats):
    """From per-fold moments (count (2,), mean (2, 3), comoment (2, 3, 3)) to the estimates."""
    cnt, mean, com = stats
    n_all, m_all, c_all = _merge((cnt[0], mean[0], com[0]), (cnt[1], mean[1], com[1]))
    plain = m_all[0]
    se_plain = jnp.sqrt(jnp.maximum(c_all[0, 0], 0.0) / (n_all - 1.0) / n_all)

    cov = com / (cnt[:, None, None] - 1.0)  # (2, 3, 3) per-fold covariances of v
    T = jnp.asarray(_T, cov.dtype)
    s_gg = jnp.einsum("ai,bij,cj->bac", T, cov, T)  # (2, 2, 2) covariance of the regressors
    s_gf = jnp.einsum("ai,bi->ba", T, cov[:, :, 0])  # (2, 2) covariance with f
    coef = _solve2(s_gg, s_gf)  # OLS slopes per fold
    c = coef[::-1]  # fold b uses the coefficients fitted on the other fold
    # f - c_g g - c_h h = (1 - c_g) f + c_g u - c_h h : no cancellation when c_g is near 1
    w = jnp.stack([1.0 - c[:, 0], c[:, 0], -c[:, 1]], -1)  # (2, 3)
    est_fold = jnp.sum(w * mean, -1)
    var_res = jnp.einsum("bi,bij,bj->b", w, cov, w)
    cv = jnp.sum(cnt * est_fold) / n_all
    se_cv = jnp.sqrt(jnp.maximum(jnp.sum(cnt * var_res), 0.0)) / n_all
    return plain, se_plain, cv, se_cv, 0.5 * (coef[0] + coef[1])


def estimate_gamma(
    key: Key,
    sched: DiscreteSchedule,
    eps_fn: Callable,
    data: Float[ArrayLike, " M *shape"],
    *,
    num_noise: int = 1,
    chunk_size: int = 8192,
    control_variate: bool = True,
    progress: Progress = False,
) -> GammaEstimate:
    r"""Estimate $\texttt{ms\_eps}_n = \frac1d\mathbb E\|\hat\varepsilon(x_n, n)\|^2$ for every $n$.

    For each $n = 1..N$ and each of the $S = M\cdot$`num_noise` pairs
    $(x_0^{(i)}, \varepsilon^{(i)})$
    ($x_0^{(i)}$ cycles through `data`, $\varepsilon^{(i)}\sim\mathcal N(0, I)$ fresh for every
    $(n, i)$), form $x_n^{(i)} = \sqrt{\bar a_n}x_0^{(i)} + \sqrt{1 - \bar a_n}\varepsilon^{(i)}$
    and

    $$f_i = \tfrac1d\|\hat\varepsilon(x_n^{(i)}, n)\|^2,\qquad
      g_i = \tfrac1d\|\varepsilon^{(i)}\|^2 - 1 .$$

    **Plain estimator** (Analytic-DPM, Eq. 8): $\bar f = \frac1S\sum_i f_i$.

    **Control variates.** Two functions of the draws have known mean zero:

    $$g_i = \tfrac1d\|\varepsilon^{(i)}\|^2 - 1,\qquad
      g'_i = \tfrac1d\big\langle\varepsilon^{(i)},\ x_0^{(i)} - \bar x\big\rangle$$

    ($\|\varepsilon\|^2\sim\chi^2_d$ has mean $d$; $\varepsilon$ is independent of the data and
    centred; $\bar x$ is the mean of `data`). At large $n$,
    $\hat\varepsilon = \varepsilon + \frac{\alpha_n}{\sigma_n}(x_0 - \hat x_0)$ with
    $\hat x_0\approx\mathbb E x_0$, so
    $f_i = 1 + g_i + 2\frac{\alpha_n}{\sigma_n}g'_i + O(\alpha_n^2/\sigma_n^2)$: the two control
    variates remove the $O(1)$ and $O(\alpha_n)$ fluctuations, exactly where the plain estimator,
    fluctuating around a value just below 1, overshoots the theoretical bound
    $\texttt{ms\_eps}_n\le 1$. The estimator is

    $$\hat m_{\mathrm{cv}} = \frac1S\sum_{b\in\{0,1\}}\ \sum_{i\in\mathcal F_b}
      \big(f_i - c_{1-b}\,g_i - c'_{1-b}\,g'_i\big),$$

    where the samples are split into two folds $\mathcal F_0, \mathcal F_1$ (even and odd $i$) and
    $(c_{1-b}, c'_{1-b})$ are the least-squares coefficients of $f$ on $(g, g')$ fitted on the
    *other* fold (cross-fitting). It is **exactly unbiased**: the coefficients are independent
    of the noise draws $\varepsilon^{(i)}, i\in\mathcal F_b$, and $g_i, g'_i$ have conditional
    mean zero given everything but $\varepsilon^{(i)}$, so $\mathbb E[c_{1-b}g_i] =
    \mathbb E[c'_{1-b}g'_i] = 0$. (Fitting the coefficients on the same sample biases the estimate
    by $O(1/S)$; fixed $c = 1$, $c' = 0$ is also unbiased but adds variance $\approx 2/d$ at small
    $n$, where $\hat\varepsilon$ and $\varepsilon$ are nearly uncorrelated.) Its variance is that
    of the optimal control variate up to $O(1/S)$, never much above the plain one.

    Work is vectorised over a chunk of (steps $\times$ samples) of at most `chunk_size` network
    calls at a time (`lax.map` over step chunks, `lax.scan` over sample batches); the noise of a
    step is drawn at once, so memory is $O(\max(\texttt{chunk\_size}, S)\cdot d)$. Statistics are
    accumulated in the default float (float64 when x64 is on) with a numerically stable pairwise
    update. The results do not depend on `chunk_size`, nor on `progress`.

    Args:
        key: PRNG key.
        sched: the [`DiscreteSchedule`][scoredyn.DiscreteSchedule] ($N$ steps).
        eps_fn: noise prediction $(t, x)\mapsto\hat\varepsilon$, called at the schedule's time
            $t_n = nT/N$ (`sched.time(n)`) with one unbatched example $x$ of shape
            `data.shape[1:]`.
        data: training examples, shape `(M, *shape)`.
        num_noise: noise draws per example (per step).
        chunk_size: maximum number of `eps_fn` evaluations vectorised at once.
        control_variate: whether `ms_eps`/`stderr` are the control-variate values (default) or
            the plain ones. Both are always returned.
        progress: report the steps $n$ done of $N$ on the host after each chunk of steps:
            `True` for a tqdm bar (text lines on stderr without tqdm), or a callable
            `progress(done, total)`; `False` (default) adds nothing to the program. See
            [progress on long work](sampling.md#progress-on-long-work).

    Returns:
        A [`GammaEstimate`][scoredyn.analytic.GammaEstimate].

    Raises:
        ValueError: if `data` has fewer than 1 example or a row with NaN or $\pm\infty$ (at
            once when concrete, when the program runs when traced: one such row would make
            every entry NaN), $S < 8$, or `num_noise`/`chunk_size` are not positive ints;
            TypeError if `eps_fn` does not return an array like `x`, or `progress` is neither
            a bool nor callable.

    References:
        Bao et al., *Analytic-DPM*, arXiv:2201.06503, Eq. 8-9.

    Example:
        ```python
        est = sd.analytic.estimate_gamma(key, sched, eps_fn, x_train[:1000])
        est.ms_eps.shape        # (N + 1,)
        ```
    """
    sched = check_schedule(sched)
    data = as_float(data, "data")
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (M, *shape) with M >= 1, got {data.shape}.")
    data = check_data_rows(data, "data")
    for name, v in (("num_noise", num_noise), ("chunk_size", chunk_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    S = data.shape[0] * num_noise
    if S < 8:
        raise ValueError(f"need at least 8 samples (M * num_noise), got {S}.")
    progress = check_progress(progress)
    check_vector_field(eps_fn, "eps_fn", jnp.asarray(sched.T, data.dtype), data[0])
    plain, se_plain, cv, se_cv, coef = _estimate(
        key, sched, eps_fn, data, num_noise, chunk_size, progress
    )
    ms, se = (cv, se_cv) if control_variate else (plain, se_plain)
    bbar = sched.one_minus_alpha_bar.astype(ms.dtype)
    gamma = jnp.where(bbar > 0, ms / jnp.where(bbar > 0, bbar, 1.0), 0.0)
    return GammaEstimate(
        ms_eps=ms,
        stderr=se,
        ms_eps_plain=plain,
        stderr_plain=se_plain,
        ms_eps_cv=cv,
        stderr_cv=se_cv,
        cv_coef=coef,
        gamma=gamma,
        num_samples=S,
    )


@eqx.filter_jit
def _estimate(
    key, sched, eps_fn, data, num_noise: int, chunk_size: int, progress: Progress = False
):
    M = data.shape[0]
    shape = data.shape[1:]
    d = math.prod(shape)
    S = M * num_noise
    N = sched.num_steps
    dtype = data.dtype
    acc = jnp.promote_types(default_float(), dtype)
    B = min(S, chunk_size)  # samples per batch
    num_batches = -(-S // B)
    P = max(1, min(N, chunk_size // B))  # steps vectorised together
    alphas = jnp.exp(0.5 * sched.log_alpha_bar).astype(dtype)
    sigmas = jnp.sqrt(sched.one_minus_alpha_bar).astype(dtype)
    times = sched.time(jnp.arange(N + 1)).astype(dtype)
    centred = data - jnp.mean(data, 0)[None]
    axes = tuple(range(1, data.ndim))

    def one_step(n):
        kn = jax.random.fold_in(key, n)
        a, s, t = alphas[n], sigmas[n], times[n]

        # one draw of all S noises of this step (same stream whatever chunk_size), padded
        noise = jax.random.normal(kn, (S,) + shape, dtype)
        noise = jnp.concatenate([noise, jnp.zeros((num_batches * B - S,) + shape, dtype)])
        noise = noise.reshape((num_batches, B) + shape)

        def batch(j, eps):
            idx = j * B + jnp.arange(B)
            valid = idx < S
            x0 = data[idx % M]
            eps_hat = jax.vmap(eps_fn, in_axes=(None, 0))(t, a * x0 + s * eps)
            f = jnp.sum(eps_hat.astype(acc) ** 2, axes) / d
            g = jnp.sum(eps.astype(acc) ** 2, axes) / d - 1.0
            h = jnp.sum(eps.astype(acc) * centred[idx % M].astype(acc), axes) / d
            v = jnp.stack([f, f - g, h], -1)
            fold = (idx % 2)[None, :] == jnp.arange(2)[:, None]
            return _batch_moments(v, (valid[None, :] & fold).astype(acc))

        if num_batches == 1:
            return batch(0, noise[0])

        def body(carry, xs):
            return jax.vmap(_merge)(carry, batch(*xs)), None

        init = (jnp.zeros((2,), acc), jnp.zeros((2, _NV), acc), jnp.zeros((2, _NV, _NV), acc))
        stats, _ = jax.lax.scan(body, init, (jnp.arange(num_batches), noise))
        return stats

    # pad the steps 1..N to whole chunks of P (repeating step N), so one body is compiled
    num_chunks = -(-N // P)
    steps = jnp.minimum(jnp.arange(1, num_chunks * P + 1), N).reshape(num_chunks, P)

    def chunk(ns):
        out = jax.vmap(one_step)(ns)
        report(progress, "estimate_gamma", "steps", ns, N, out)  # adds nothing when False
        return out

    stats = jax.lax.map(chunk, steps)
    stats = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:N], stats)
    out = jax.vmap(_finalise)(stats)
    return jax.tree.map(lambda x: jnp.concatenate([jnp.zeros((1,) + x.shape[1:], x.dtype), x]), out)


def as_ms_eps(
    gamma_or_ms_eps: "GammaEstimate | ArrayLike", num_steps: int
) -> Float[Array, " {num_steps}+1"]:
    """Accept a `GammaEstimate` or an `ms_eps` array of shape `(N+1,)`."""
    ms = gamma_or_ms_eps.ms_eps if isinstance(gamma_or_ms_eps, GammaEstimate) else gamma_or_ms_eps
    ms = as_float(ms, "ms_eps")
    if ms.shape != (num_steps + 1,):
        raise ValueError(
            f"`ms_eps` must have shape (N+1,) = ({num_steps + 1},), got {ms.shape} "
            "(pass the GammaEstimate or its `ms_eps`)."
        )
    # a NaN would pass every comparison of the dynamic programme and give a non-trajectory
    # (or NaN variances): refuse it, at once when concrete, when the program runs when traced
    if is_concrete(ms):
        bad = np.flatnonzero(np.isnan(np.asarray(ms)))
        if bad.size:
            raise ValueError(
                f"`ms_eps` (Gamma) must not contain NaN, got NaN at n = {bad[:5].tolist()} "
                "(an estimate from data with NaN rows, or an overflow in the network)."
            )
        return ms
    return runtime_check(ms, jnp.any(jnp.isnan(ms)), "`ms_eps` (Gamma) must not contain NaN.")
