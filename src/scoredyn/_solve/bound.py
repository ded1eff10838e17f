r"""The bound verb: the variational bound (negative ELBO) of a reverse [`Chain`][scoredyn.Chain].

$$-\log p(x_0) \le
  \mathrm{KL}\big(q(x_N\mid x_0)\,\|\,\mathcal N(0, I)\big)
  + \sum_{k=2}^{K}\mathbb E_q\,\mathrm{KL}\big(q_{\lambda}(x_m\mid x_n, x_0)\,\|\,
  p(x_m\mid x_n)\big) - \mathbb E_q\log p(x_0\mid x_{\tau_1}),$$

with $p(x_m\mid x_n) = \mathcal N(c_0\hat x_0 + c_n x_n, v_k)$ read from the same chain a
sampler runs. See [the variational bound](../derivations/variational-bound.md).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import ArrayLike, Float

from .._custom_types import Key
from .._discrete.posterior import check_schedule, pair_terms, posterior_coefficients
from .._discrete.schedule import DiscreteSchedule, concrete_value
from .._discrete.vlb import (
    VariationalBound,
    _check_levels,
    _gaussian_nll,
    _kl_terms,
    discretized_gaussian_log_likelihood,
)
from .._misc import as_float, log1mexp
from .._model import check_model, check_model_output
from .._progress import Progress, check_progress, report
from .discrete import Chain


def variational_bound(
    key: Key,
    sched: DiscreteSchedule,
    model,
    chain: Chain,
    x0: Float[ArrayLike, "*shape"],
    *,
    levels: int | None = 256,
    cond: tuple = (),
    progress: Progress = False,
) -> VariationalBound:
    r"""One-sample Monte Carlo estimate of the negative ELBO of one example under `chain`.

    With $n = \tau_k$, $m = \tau_{k-1}$ and independent draws
    $x_n = \alpha_n x_0 + \sigma_n\varepsilon_k$ per step:

    - prior: $\frac12\sum_i\big(\bar a_N x_{0,i}^2 - \bar a_N - \log(1 - \bar a_N)\big)$, exactly;
    - step $k \ge 2$: the Gaussian KL divergence from $\mathcal N(\mu_q, \lambda_{q,k}^2 I)$ to
      $\mathcal N(\mu_p, v_k I)$,
      $\frac12\sum_i\big(\log(v_k/\lambda_{q,k}^2) + (\lambda_{q,k}^2 + d_i^2)/v_k - 1\big)$
      with $d = \mu_q - \mu_p$, where $\mu_q$ is the
      mean of $q_{\lambda_q}(x_m\mid x_n, x_0)$ (the variational posterior, `chain.forward_lam2`
      or else `chain.lam2`) and $\mu_p$ the sampler's mean, built from `chain.lam2` and
      $\hat x_0$; when the two $\lambda$ agree, $\mu_q - \mu_p = c_0(x_0 - \hat x_0)$ with
      $x_0 - \hat x_0 = \frac{\sigma_n}{\alpha_n}(\hat\varepsilon - \varepsilon_k)$;
    - decoder ($k = 1$): $-\log p(x_0\mid x_{\tau_1})$ with mean $\hat x_0$ and variance
      `chain.decoder_var` (or the chain's variance function at the last step): the
      discretised Gaussian of
      [`discretized_gaussian_log_likelihood`][scoredyn.discretized_gaussian_log_likelihood]
      for data on `levels` grid points in $[-1, 1]$, or a Gaussian density (`levels=None`).

    Each term depends on one marginal $q(x_n\mid x_0)$ only, so independent draws per step give
    an unbiased estimate; average over keys (and `vmap` over data). The bound is $+\infty$ when
    some $\lambda_{q,k}^2 = 0$ for $k \ge 2$ (DDIM's deterministic forward process). The loop
    is a `lax.scan`, memory independent of $K$.

    Over a data set, `jax.vmap` this function (in batches for a large set); with `progress`,
    a vmapped call reports the steps $k$ done of $K$ once for the whole batch, not per
    example.

    Args:
        key: PRNG key for the $K$ draws.
        sched: the [`DiscreteSchedule`][scoredyn.DiscreteSchedule].
        model: an [`AbstractModel`][scoredyn.AbstractModel] (a transform such as
            [`ClipX0`][scoredyn.ClipX0] is scored as it samples).
        chain: the reverse chain, `solver.chain(sched, tau)`.
        x0: one data example.
        levels: grid size $L$ of the discretised decoder, or `None` for continuous data.
        cond: extra model arguments.
        progress: report the steps $k$ done of $K$ on the host as the `lax.scan` runs: `True`
            for a tqdm bar (text lines on stderr without tqdm), or a callable
            `progress(done, total)`; `False` (default) adds nothing to the program, and the
            bound is the same, bit for bit, either way. See
            [progress on long work](sampling.md#progress-on-long-work).

    Returns:
        A [`VariationalBound`][scoredyn.VariationalBound].

    Raises:
        TypeError: for a `sched` that is not a schedule, a `model` that is not an
            [`AbstractModel`][scoredyn.AbstractModel] (or whose output is not shaped like
            `x0`), a `chain` that is not an [`sd.Chain`][scoredyn.Chain], or a `progress`
            that is neither a bool nor callable.
        ValueError: for `levels` that is not an int $\ge 2$, or concrete `x0` outside
            $[-1, 1]$ with `levels`.

    Example:
        ```python
        chain = sd.DDPM().chain(sched, tau)
        nelbo = sd.variational_bound(key, sched, sd.EpsModel(net), chain, x0, levels=17)
        ```
    """
    sched = check_schedule(sched)
    model = check_model(model)
    if not isinstance(chain, Chain):
        raise TypeError(
            f"`chain` must be an sd.Chain (e.g. sd.DDPM().chain(sched, tau)), got "
            f"{type(chain).__name__}."
        )
    x0v = concrete_value(x0)
    x0 = as_float(x0, "x0")
    if levels is not None:
        levels = _check_levels(levels)
        if x0v is not None and bool(np.any(np.abs(x0v) > 1.0 + 0.5 / (levels - 1))):
            raise ValueError("`x0` must lie in [-1, 1] (a grid of `levels` points) for `levels`.")
    check_model_output(model, sched, sched.num_steps, x0, tuple(cond))
    progress = check_progress(progress)
    return _bound(key, sched, model, chain, x0, levels, tuple(cond), progress)


def _bound(
    key, sched, model, chain: Chain, x0, levels, cond, progress: Progress = False
) -> VariationalBound:
    tau = chain.tau
    K = chain.num_steps
    dtype = x0.dtype
    n_arr, m_arr = tau[1:], tau[:-1]
    t = pair_terms(sched, n_arr, m_arr)
    var = chain.variances
    var_fn = var if callable(var) else None
    var_arr = None if callable(var) else var
    d_x0 = d_xn = None
    cast = lambda a: jnp.asarray(a).astype(dtype)
    pc_p = posterior_coefficients(t, chain.lam2)
    alpha_n, sigma_n, soa_n = map(cast, (t.alpha_n, t.sigma_n, t.soa_n))
    coef_x0 = cast(pc_p.coef_x0)
    lam2_q = cast(chain.lam2 if chain.forward_lam2 is None else chain.forward_lam2)
    if chain.forward_lam2 is not None:
        pc_q = posterior_coefficients(t, chain.forward_lam2)
        d_x0, d_xn = cast(pc_q.coef_x0 - pc_p.coef_x0), cast(pc_q.coef_xn - pc_p.coef_xn)
    times = cast(sched.time(n_arr))
    keys = jax.random.split(key, K)

    def draw(k):
        eps = jax.random.normal(keys[k], x0.shape, dtype)
        return eps, alpha_n[k] * x0 + sigma_n[k] * eps

    def predict(k, eps, x_n):
        eps_hat = model.eps_at(alpha_n[k], sigma_n[k], times[k], x_n, *cond)
        # x0_hat - x0 = (sigma/alpha)(eps - eps_hat): no cancellation of x0 against x0_hat
        return eps_hat, soa_n[k] * (eps - eps_hat)

    # ---- prior KL, closed form: KL(N(a x0, 1 - abar) || N(0, 1))
    la_N = sched.log_alpha_bar[-1]
    abar_N = jnp.exp(la_N)
    prior = jnp.sum((0.5 * (abar_N * x0**2 - abar_N - log1mexp(la_N))).astype(dtype))

    # ---- decoder, step tau[1] -> 0: mean x0_hat, variance decoder_var
    eps1, x1 = draw(0)
    eps_hat1, err1 = predict(0, eps1, x1)
    if chain.decoder_var is not None:
        v_dec = cast(chain.decoder_var)
    else:
        v_dec = cast(var_fn(n_arr[0], m_arr[0], x1, eps_hat1))  # pyright: ignore
    if levels is None:
        dec = jnp.sum(jnp.broadcast_to(_gaussian_nll(err1**2, v_dec), x0.shape))
    else:
        dec = -discretized_gaussian_log_likelihood(x0, x0 + err1, v_dec, levels)

    # ---- Gaussian KL terms, steps k = 2..K
    def body(_, k):
        eps, x_n = draw(k)
        eps_hat, err = predict(k, eps, x_n)
        if var_arr is not None:
            v = var_arr[k].astype(dtype)
        else:
            v = cast(var_fn(n_arr[k], m_arr[k], x_n, eps_hat))  # pyright: ignore[reportOptionalCall]
        if chain.forward_lam2 is None:
            dmean2 = coef_x0[k] ** 2 * err**2
        else:  # mu_q - mu_p = c0_p (x0 - x0_hat) + (c0_q - c0_p) x0 + (cn_q - cn_p) x_n
            assert d_x0 is not None and d_xn is not None
            dmean2 = (d_x0[k] * x0 + d_xn[k] * x_n - coef_x0[k] * err) ** 2
        el = _kl_terms(dmean2, lam2_q[k], v)
        kl_k = jnp.sum(jnp.broadcast_to(el, x0.shape))
        report(progress, "variational_bound", "steps", k + 1, K, kl_k)  # nothing when False
        return None, kl_k

    if K >= 2:
        _, kls = lax.scan(body, None, jnp.arange(1, K))
    else:
        kls = jnp.zeros((0,), dtype)
        report(progress, "variational_bound", "steps", 1, 1, dec)
    kl = jnp.sum(kls)
    total = prior + kl + dec
    bpd = total / (x0.size * math.log(2.0))
    terms = jnp.concatenate([dec[None], kls])
    return VariationalBound(
        total=total, bits_per_dim=bpd, prior=prior, kl=kl, decoder=dec, terms=terms
    )
