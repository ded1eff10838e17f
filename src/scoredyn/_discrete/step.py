r"""The generalised reverse step of the DDIM family, for any pair $n \to m$.

$$x_m = \underbrace{c_0\,\hat x_0 + c_n\,x_n}_{\text{mean of } q_\lambda(x_m\mid x_n, \hat x_0)}
  + \sqrt{v}\,z,\qquad \hat x_0 = \frac{x_n - \sigma_n\hat\varepsilon}{\alpha_n},$$

with $(c_0, c_n)$ from [`forward_posterior`][scoredyn.forward_posterior] for the forward
choice $\lambda^2$ and any reverse variance $v$. With $v = \lambda^2$ this is
$x_m = \alpha_m\hat x_0 + \sqrt{\sigma_m^2 - \lambda^2}\,\hat\varepsilon + \lambda z$.
See [the DDIM family](../derivations/ddim.md#the-reverse-step).
"""

from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import real_float, runtime_check
from .._custom_types import Key
from .._misc import as_float, is_concrete, safe_sqrt
from .posterior import (
    PairTerms,
    _check_pair,
    check_lam2,
    check_schedule,
    pair_terms,
    posterior_coefficients,
)
from .schedule import DiscreteSchedule, concrete_value

Prediction = Literal["eps", "score", "x0", "v"]
_PREDICTIONS = ("eps", "score", "x0", "v")


class StepCoeffs(NamedTuple):
    r"""Per-step constants, computed once outside any loop.

    Without clipping the step is $x_m = a x_n + b\hat\varepsilon + s z$ with
    $a = \alpha_m/\alpha_n$ and $b = -c_0\sigma_n/\alpha_n$.
    """

    a: Array
    b: Array
    coef_x0: Array
    coef_xn: Array
    inv_alpha_n: Array
    soa_n: Array
    alpha_n: Array
    sigma_n: Array


def step_coefficients(t: PairTerms, lam2) -> StepCoeffs:
    pc = posterior_coefficients(t, lam2)
    return StepCoeffs(
        a=t.alpha_m / t.alpha_n,
        b=-pc.coef_x0 * t.soa_n,
        coef_x0=pc.coef_x0,
        coef_xn=pc.coef_xn,
        inv_alpha_n=1.0 / t.alpha_n,
        soa_n=t.soa_n,
        alpha_n=t.alpha_n,
        sigma_n=t.sigma_n,
    )


def check_prediction(prediction) -> str:
    if prediction not in _PREDICTIONS:
        raise ValueError(f"`prediction` must be one of {_PREDICTIONS}, got {prediction!r}.")
    return prediction


def to_eps(prediction: str, alpha, sigma, x, pred):
    r"""Convert a prediction at $x_n = \alpha x_0 + \sigma\varepsilon$ (VP) to $\hat\varepsilon$."""
    if prediction == "eps":
        return pred
    if prediction == "score":
        return -sigma * pred
    if prediction == "x0":
        return (x - alpha * pred) / sigma
    return sigma * x + alpha * pred  # v-prediction, v = alpha eps - sigma x0


def check_clip(clip_x0):
    """None, a positive number c (clip to [-c, c]) or a pair (lo, hi) with lo < hi."""
    if clip_x0 is None:
        return None
    if isinstance(clip_x0, (str, bytes, complex)):
        raise TypeError(
            f"`clip_x0` must be None, a number c > 0 or a pair (lo, hi), got {clip_x0!r}."
        )
    if isinstance(clip_x0, (tuple, list)):
        if len(clip_x0) != 2:
            raise ValueError(
                f"`clip_x0` must be None, a number c > 0 or a pair (lo, hi), got {clip_x0!r}."
            )
        lo, hi = clip_x0
    else:
        lo, hi = -clip_x0, clip_x0
    lv, hv = concrete_value(lo), concrete_value(hi)
    if (
        lv is not None
        and hv is not None
        and not real_float(lo, "clip_x0") < real_float(hi, "clip_x0")
    ):
        raise ValueError(f"`clip_x0` must give lo < hi, got ({lo}, {hi}).")
    return lo, hi


def apply_step(c: StepCoeffs, x, eps, clip):
    """Mean of the reverse step (no noise), in x's dtype."""
    if clip is None:
        return c.a * x + c.b * eps
    x0 = jnp.clip(c.inv_alpha_n * x - c.soa_n * eps, clip[0], clip[1])
    return c.coef_x0 * x0 + c.coef_xn * x


def check_var(var, name: str = "var"):
    r"""A reverse variance $v \ge 0$, finite: `ValueError` at once when concrete, checked when
    the program runs when traced (a negative traced variance would otherwise be used as 0)."""
    val = concrete_value(var)
    var = as_float(var, name)
    if val is not None:
        val = val.astype(np.float64)
        if np.any(np.isnan(val) | (val < 0) | np.isinf(val)):
            raise ValueError(f"`{name}` must be >= 0 and finite, got {val}.")
        return var
    bad = ~jnp.all((var >= 0) & jnp.isfinite(var))
    return runtime_check(var, bad, f"`{name}` must be >= 0 and finite.")


class CheckedVarianceFn(eqx.Module):
    """A variance callable `(n, m, x_n, eps_hat) -> v` whose output is checked when the program
    runs: a negative or NaN variance raises, naming the argument, instead of being used as 0."""

    fn: Callable
    name: str = eqx.field(static=True, default="variances")

    def __call__(self, n, m, x_n, eps_hat):
        v = jnp.asarray(self.fn(n, m, x_n, eps_hat))
        if is_concrete(v):
            check_var(v, f"{self.name}(n, m, x_n, eps_hat)")
            return v
        bad = ~jnp.all(v >= 0)  # also catches NaN
        return runtime_check(
            v, bad, f"`{self.name}(n, m, x_n, eps_hat)` must return variances >= 0."
        )


def _known_zero(a) -> bool:
    val = concrete_value(a)
    return val is not None and bool(np.all(val == 0))


def reverse_step(
    key: Key | None,
    sched: DiscreteSchedule,
    n: Int[ArrayLike, ""],
    m: Int[ArrayLike, ""],
    x_n: Float[ArrayLike, "*shape"],
    eps_hat: Float[ArrayLike, "*shape"],
    *,
    lam2: Float[ArrayLike, ""] | None = None,
    var: Float[ArrayLike, "..."] | None = None,
    clip_x0: float | tuple[float, float] | None = None,
) -> Float[Array, "*shape"]:
    r"""One reverse step $x_n \to x_m$, $m < n$: mean from the forward $\lambda^2$, noise $v$.

    $$\hat x_0 = \frac{x_n - \sigma_n\hat\varepsilon}{\alpha_n},\qquad
      x_m = c_0\,\hat x_0 + c_n\,x_n + \sqrt{v}\,z,\quad z \sim \mathcal N(0, I),$$

    where $(c_0, c_n)$ are the coefficients of $q_\lambda(x_m\mid x_n, x_0)$
    ([`forward_posterior`][scoredyn.forward_posterior]). Without clipping this is evaluated
    as $x_m = \frac{\alpha_m}{\alpha_n}x_n - c_0\frac{\sigma_n}{\alpha_n}\hat\varepsilon
    + \sqrt v z$.

    - DDIM ($\eta = 0$): `lam2=0, var=0`.
    - DDPM: `lam2=None` ($\tilde\beta_{m|n}$), `var` $= \tilde\beta_{m|n}$ or $\beta_{n|m}$.
    - Analytic-DPM, SN-/NPR-DPM: `lam2` the forward choice, `var` their optimal variance
      (a scalar, or an array broadcastable to `x_n` for a diagonal covariance). A `var`
      larger than $1 - \bar a_m$ is fine: only $\lambda^2$ must lie in $[0, 1 - \bar a_m]$.

    Args:
        key: PRNG key; may be `None` only when `var` is zero.
        sched: the schedule.
        n: integer index of the current state, $1 \le n \le N$.
        m: integer index of the next state, $0 \le m < n$.
        x_n: the current state (one example).
        eps_hat: the noise prediction $\hat\varepsilon(t_n, x_n)$, shaped like `x_n`.
        lam2: $\lambda^2 \in [0, 1 - \bar a_m]$; `None` means $\tilde\beta_{m|n}$ (DDPM).
        var: reverse variance $v \ge 0$; `None` means $v = \lambda^2$.
        clip_x0: clip $\hat x_0$ to $[-c, c]$ (a number) or $[lo, hi]$ (a pair) before the mean.

    Returns:
        $x_m$, shaped and typed like `x_n`.
    """
    return _reverse_step(key, sched, n, m, x_n, eps_hat, lam2, var, clip_x0, "lam2")


def _reverse_step(key, sched, n, m, x_n, eps_hat, lam2, var, clip_x0, lam2_name: str):
    """`reverse_step`, with the name under which `lam2` is reported in errors (`ddim_step`'s
    single argument is `var`)."""
    sched = check_schedule(sched)
    n, m = _check_pair(sched, n, m)
    x_n = as_float(x_n, "x_n")
    eps_hat = jnp.asarray(eps_hat)
    if eps_hat.shape != x_n.shape:
        raise ValueError(f"`eps_hat` must be shaped like x_n {x_n.shape}, got {eps_hat.shape}.")
    if eps_hat.dtype != x_n.dtype:
        raise TypeError(f"`eps_hat` must have dtype {x_n.dtype} like x_n, got {eps_hat.dtype}.")
    clip = check_clip(clip_x0)
    t = pair_terms(sched, n, m)
    deterministic = (var is None and lam2 is not None and _known_zero(lam2)) or (
        var is not None and _known_zero(var)
    )
    lam2 = None if lam2 is None else check_lam2(lam2, t.sigma2_m, lam2_name)
    var = None if var is None else check_var(var)
    if key is None and not deterministic:
        raise ValueError("`key` may be None only for a deterministic step (var == 0).")
    return _step_kernel(key, sched, n, m, x_n, eps_hat, lam2, var, clip)


@eqx.filter_jit
def _step_kernel(key, sched, n, m, x_n, eps_hat, lam2, var, clip):
    # compiled whole, so an eager call and a call under the caller's jit run the same program
    # and give the same bits (XLA may fuse `a * x + b * eps` into an FMA only when compiled)
    t = pair_terms(sched, n, m)
    lam2 = t.beta_tilde if lam2 is None else lam2
    var = lam2 if var is None else var
    c = jax.tree_util.tree_map(lambda a: a.astype(x_n.dtype), step_coefficients(t, lam2))
    mean = apply_step(c, x_n, eps_hat, clip)
    if key is None:
        return mean
    std = safe_sqrt(jnp.asarray(var, x_n.dtype))
    return mean + std * jax.random.normal(key, x_n.shape, x_n.dtype)


def ddim_step(
    key: Key | None,
    sched: DiscreteSchedule,
    n: Int[ArrayLike, ""],
    m: Int[ArrayLike, ""],
    x_n: Float[ArrayLike, "*shape"],
    eps_hat: Float[ArrayLike, "*shape"],
    var: Float[ArrayLike, ""] = 0.0,
    *,
    clip_x0: float | tuple[float, float] | None = None,
) -> Float[Array, "*shape"]:
    r"""The DDIM-family step with $\lambda^2 = v$.

    $$x_m = \alpha_m\hat x_0 + \sqrt{\sigma_m^2 - v}\,\hat\varepsilon + \sqrt{v}\,z.$$


    `var = 0` is DDIM; `var` $= \eta^2\tilde\beta_{m|n}$ interpolates to DDPM ($\eta = 1$). A thin
    wrapper of [`reverse_step`][scoredyn.reverse_step] with `lam2 = var`; `var` must lie in
    $[0, 1 - \bar a_m]$.
    """
    return _reverse_step(key, sched, n, m, x_n, eps_hat, var, var, clip_x0, "var")
