r"""Samplers over a trajectory: one `lax.scan` of the generalised reverse step.

All per-step constants are computed once, outside the loop; the loop carries only $x$, so
compile time and memory do not grow with the number of steps $K$.
See [the DDIM family](../derivations/ddim.md#sampling).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int

from .._custom_types import Key, VectorField
from .._misc import as_float, check_vector_field, safe_sqrt
from .posterior import PairTerms, check_eta, check_lam2, check_schedule, pair_terms
from .respace import check_tau
from .schedule import DiscreteSchedule, concrete_value
from .step import apply_step, check_clip, check_prediction, check_var, step_coefficients, to_eps

_LAM2 = ("ddim", "ddpm")
_VARS = ("ddim", "ddpm", "ddpm_beta")

VarianceFn = Callable[[Array, Array, Array, Array], Array]


def resolve_lam2(t: PairTerms, lam2, eta, K: int) -> Array:
    """The (K,) array of forward variances lambda^2 from a name, an eta or an array."""
    if eta is not None:
        if lam2 is not None:
            raise ValueError(
                "pass either `lam2` or `eta`, not both (`eta` sets lam2 = eta^2 beta_tilde)."
            )
        eta = check_eta(eta)
        return jnp.asarray(eta, t.beta_tilde.dtype) ** 2 * t.beta_tilde
    if lam2 is None or (isinstance(lam2, str) and lam2 == "ddpm"):
        return t.beta_tilde
    if isinstance(lam2, str):
        if lam2 == "ddim":
            return jnp.zeros_like(t.beta_tilde)
        raise ValueError(
            f"`lam2` must be one of {_LAM2}, an array of shape (K,) or None, got {lam2!r}."
        )
    lam2 = as_float(lam2, "lam2")
    if lam2.shape != (K,):
        raise ValueError(f"`lam2` must have shape (K,) = ({K},) (one per step), got {lam2.shape}.")
    return check_lam2(lam2, t.sigma2_m).astype(t.beta_tilde.dtype)


def resolve_variances(t: PairTerms, variances, lam2_arr: Array, K: int):
    """(K,) array of reverse variances, or a callable (n, m, x_n, eps_hat) -> var."""
    if variances is None:
        return lam2_arr
    if isinstance(variances, str):
        if variances == "ddim":
            return jnp.zeros_like(lam2_arr)
        if variances == "ddpm":
            return t.beta_tilde
        if variances == "ddpm_beta":
            return t.beta_nm
        raise ValueError(
            f"`variances` must be None, one of {_VARS}, an array of shape (K,) or a callable, "
            f"got {variances!r}."
        )
    if callable(variances):
        return variances
    v = check_var(variances, "variances")
    if v.shape != (K,):
        raise ValueError(
            f"`variances` must have shape (K,) = ({K},) (entry k-1 for step tau[k] -> tau[k-1]), "
            f"got {v.shape}."
        )
    return v.astype(lam2_arr.dtype)


def _is_zero(a) -> bool:
    val = concrete_value(a)
    return val is not None and bool(np.all(val == 0))


def variances_are_zero(lam2, variances, eta) -> bool:
    """Whether the reverse variances are known to be zero from the arguments alone (static)."""
    if variances is None:
        if eta is not None:
            return _is_zero(eta)
        if isinstance(lam2, str):
            return lam2 == "ddim"
        return lam2 is not None and _is_zero(lam2)
    if isinstance(variances, str):
        return variances == "ddim"
    if callable(variances):
        return False
    return _is_zero(variances)


def sample_discrete(
    key: Key | None,
    sched: DiscreteSchedule,
    eps_fn: VectorField,
    x_T: Float[ArrayLike, "*shape"],
    tau: Int[ArrayLike, " K+1"],
    *,
    lam2: str | Float[ArrayLike, " K"] | None = None,
    variances: str | Float[ArrayLike, " K"] | VarianceFn | None = None,
    eta: float | None = None,
    clip_x0: float | tuple[float, float] | None = None,
    prediction: str = "eps",
    return_trajectory: bool = False,
    final_noise: bool = False,
) -> Float[Array, "*shape"] | tuple[Float[Array, "*shape"], Float[Array, " K+1 *shape"]]:
    r"""Sample by the generalised DDIM/DDPM reverse chain along a trajectory, with `lax.scan`.

    For $k = K, \dots, 1$, with $n = \tau_k$, $m = \tau_{k-1}$ and $\hat\varepsilon =$
    `eps_fn`$(t_n, x_n)$ at $t_n = nT/N$:

    $$x_m = c_0(\lambda^2_k)\,\hat x_0 + c_n(\lambda^2_k)\,x_n + \sqrt{v_k}\,z_k,\qquad
      \hat x_0 = (x_n - \sigma_n\hat\varepsilon)/\alpha_n,$$

    the step of [`reverse_step`][scoredyn.reverse_step]. The forward choice $\lambda^2$ sets the
    mean and $v$ the noise:

    | call | sampler |
    |---|---|
    | `lam2="ddim"` | DDIM ($\eta = 0$), deterministic |
    | `eta=e` | DDIM($\eta$): $\lambda^2 = v = \eta^2\tilde\beta_{m|n}$ |
    | `lam2="ddpm"` (default) | DDPM ancestral, $v = \tilde\beta_{m|n}$ |
    | `lam2="ddpm", variances="ddpm_beta"` | DDPM with $v = \beta_{n|m}$ |
    | `lam2=..., variances=array (K,)` | Analytic-DPM |
    | `lam2=..., variances=fn(n, m, x_n, eps_hat)` | SN-/NPR-DPM (diagonal $v$) |

    No noise is added on the last step $\tau_1 \to 0$ unless `final_noise=True` (Ho et al.;
    Bao et al.). All per-step coefficients are computed before the scan, whose body is one
    network call and one fused update, so compile time and memory are independent of $K$.

    Args:
        key: PRNG key (may be `None` for a deterministic sampler).
        sched: the [`DiscreteSchedule`][scoredyn.DiscreteSchedule].
        eps_fn: $(t, x) \mapsto \hat\varepsilon$, shaped and typed like `x`. Another
            parameterisation is accepted with `prediction`.
        x_T: the starting point at $n = N$, usually $\mathcal N(0, I)$ (one example).
        tau: trajectory, shape `(K + 1,)` (see [`respace`][scoredyn.respace]).
        lam2: forward variances $\lambda^2$: `"ddpm"`, `"ddim"` or an array `(K,)`.
        variances: reverse variances $v$: `None` ($v = \lambda^2$), `"ddim"`, `"ddpm"`,
            `"ddpm_beta"`, an array `(K,)`, or a callable `(n, m, x_n, eps_hat) -> var`
            broadcastable to `x` (a diagonal covariance).
        eta: DDIM's $\eta \ge 0$ (sets `lam2` $= \eta^2\tilde\beta$; exclusive with `lam2`).
        clip_x0: clip $\hat x_0$ to $[-c, c]$ or $[lo, hi]$ at each step.
        prediction: what `eps_fn` returns: `"eps"`, `"score"`, `"x0"` or `"v"` (converted
            with the schedule's $\alpha_n, \sigma_n$).
        return_trajectory: also return all states, shape `(K + 1, *x.shape)`, indexed like
            `tau`: `traj[k]` is $x_{\tau_k}$ (`traj[K]` is `x_T`, `traj[0]` the sample).
        final_noise: add noise $\sqrt{v_1}z$ on the last step too.

    Returns:
        The sample $x_0$, or `(x_0, trajectory)`.

    Raises:
        ValueError, TypeError: for an invalid trajectory, variances of the wrong length or
            sign, `lam2` outside $[0, 1 - \bar a_m]$, or an `eps_fn` whose output is not
            shaped and typed like `x_T`.

    Example:
        ```python
        sched = sd.DiscreteSchedule.linear(1000)
        tau = sd.respace(1000, 50)
        x0 = sd.sample_discrete(key, sched, eps_net, jax.random.normal(k2, (2,)), tau, lam2="ddim")
        ```
    """
    sched = check_schedule(sched)
    if not callable(eps_fn):
        raise TypeError(f"`eps_fn` must be callable (t, x) -> array, got {eps_fn!r}.")
    prediction = check_prediction(prediction)
    x_T = as_float(x_T, "x_T")
    tau = check_tau(tau, sched.num_steps)
    K = tau.shape[0] - 1
    check_vector_field(eps_fn, "eps_fn", jnp.asarray(sched.T, x_T.dtype), x_T)
    clip = check_clip(clip_x0)

    # validation on concrete values (the kernel below sees tracers)
    t = pair_terms(sched, tau[1:], tau[:-1])
    resolve_variances(t, variances, resolve_lam2(t, lam2, eta, K), K)
    stochastic = not (variances_are_zero(lam2, variances, eta) or (K == 1 and not final_noise))
    if stochastic and key is None:
        raise ValueError("`key` is None but the sampler adds noise (some variance is non-zero).")
    return _sample_discrete_kernel(
        key,
        sched,
        eps_fn,
        x_T,
        tau,
        lam2,
        variances,
        eta,
        clip,
        prediction,
        return_trajectory,
        final_noise,
        stochastic,
    )


@eqx.filter_jit
def _sample_discrete_kernel(
    key,
    sched,
    eps_fn,
    x_T,
    tau,
    lam2,
    variances,
    eta,
    clip,
    prediction,
    return_trajectory,
    final_noise,
    stochastic,
):
    """Coefficients and the scan, compiled whole: eager and jitted calls draw the same bits."""
    K = tau.shape[0] - 1
    n_arr, m_arr = tau[1:], tau[:-1]
    t = pair_terms(sched, n_arr, m_arr)
    lam2_arr = resolve_lam2(t, lam2, eta, K)
    var = resolve_variances(t, variances, lam2_arr, K)
    dtype = x_T.dtype
    coeffs = step_coefficients(t, lam2_arr)
    # keep only what the loop body reads (None leaves are empty pytrees)
    needed = {"a", "b"} if clip is None else {"coef_x0", "coef_xn", "inv_alpha_n", "soa_n"}
    if prediction != "eps":
        needed |= {"alpha_n", "sigma_n"}
    coeffs = coeffs._replace(**{f: None for f in coeffs._fields if f not in needed})
    coeffs = jax.tree_util.tree_map(lambda a: a.astype(dtype), coeffs)
    times = sched.time(n_arr).astype(dtype)
    # noise mask: no noise on the decoder step tau[1] -> 0 unless final_noise
    mask = np.ones((K,), np.float64)
    if not final_noise:
        mask[0] = 0.0
    mask = jnp.asarray(mask, dtype)

    var_fn = var if callable(var) else None
    if var_fn is None:
        std = safe_sqrt(var.astype(dtype)) * mask  # d/dv sqrt(v) at v = 0 would be inf * 0
    else:
        std = mask

    xs = {"c": coeffs, "t": times}
    if stochastic:
        xs["std"] = std
        # fold the step index into the key inside the loop: O(1) keys per example, not O(K)
        xs["k"] = jnp.arange(K, dtype=jnp.int32)
    if var_fn is not None:
        xs["n"], xs["m"] = n_arr, m_arr
    xs = jax.tree_util.tree_map(lambda a: a[::-1], xs)  # scan from k = K down to 1
    shape = x_T.shape

    def body(x, s):
        pred = eps_fn(s["t"], x)
        eps = (
            pred
            if prediction == "eps"
            else to_eps(prediction, s["c"].alpha_n, s["c"].sigma_n, x, pred)
        )
        x_new = apply_step(s["c"], x, eps, clip)
        if stochastic:
            z = jax.random.normal(jax.random.fold_in(key, s["k"]), shape, dtype)
            if var_fn is None:
                x_new = x_new + s["std"] * z
            else:
                v = jnp.asarray(var_fn(s["n"], s["m"], x, eps), dtype)
                x_new = x_new + s["std"] * safe_sqrt(v) * z
        return x_new, (x_new if return_trajectory else None)

    x0, ys = lax.scan(body, x_T, xs)
    if not return_trajectory:
        return x0
    traj = jnp.concatenate([ys[::-1], x_T[None]], axis=0)
    return x0, traj
