r"""`sample_discrete`, the 0.1 sampler: a deprecated alias of [`sample`][scoredyn.sample].

Its string options are mapped, here and only here, onto a reverse chain; the chain runs through
the one sampling verb. Removed in 0.3. See the migration table in the changelog.
"""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._custom_types import Key, VectorField
from .._misc import as_float, check_vector_field
from .._model import ClipX0, EpsModel, ScoreModel, VModel, X0Model
from .._solve.discrete import AbstractDiscreteSolver, make_chain
from .._solve.verbs import sample
from .posterior import PairTerms, check_eta, check_lam2, check_schedule, pair_terms
from .respace import check_tau
from .schedule import DiscreteSchedule, concrete_value
from .step import CheckedVarianceFn, check_clip, check_prediction, check_var

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
        # its output is checked when the program runs (a negative variance raises)
        return CheckedVarianceFn(variances, "variances")
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


class LegacyChain(eqx.Module):
    """The 0.1 options `lam2=` / `eta=` / `variances=` as a discrete solver (alias only)."""

    lam2: object = None
    variances: object = None
    eta: object = None
    final_noise: bool = eqx.field(static=True, default=False)
    decoder_var: object = None

    def chain(self, sched, tau):
        tau = check_tau(tau, sched.num_steps)
        K = tau.shape[0] - 1
        t = pair_terms(sched, tau[1:], tau[:-1])
        lam2 = resolve_lam2(t, self.lam2, self.eta, K)
        var = resolve_variances(t, self.variances, lam2, K)
        dec = None if self.decoder_var is None else check_var(self.decoder_var, "decoder_var")
        return make_chain(
            sched, tau, lam2, var, decoder_var=dec, final_noise=self.final_noise, terms=t
        )


def legacy_model(eps_fn, prediction: str, clip_x0):
    """The 0.1 `prediction=` / `clip_x0=` options as a model (alias only)."""
    wrap = {"eps": EpsModel, "score": ScoreModel, "x0": X0Model, "v": VModel}
    model = wrap[check_prediction(prediction)](eps_fn)
    clip = check_clip(clip_x0)
    return model if clip is None else ClipX0(model, clip[0], clip[1])


class LegacySolver(AbstractDiscreteSolver):
    """A discrete solver whose chain is given by the 0.1 options (alias only)."""

    spec: LegacyChain

    def chain(self, sched, tau):
        return self.spec.chain(sched, tau)

    def is_stochastic(self, process, grid) -> bool:
        sp = self.spec
        K = grid.shape[0] - 1
        return not (
            variances_are_zero(sp.lam2, sp.variances, sp.eta) or (K == 1 and not sp.final_noise)
        )


def sample_discrete(
    key: Key | None,
    sched: DiscreteSchedule,
    eps_fn: VectorField,
    x_T: Float[ArrayLike, "*shape"],
    tau: Int[ArrayLike, " num_points"],
    *,
    lam2: str | Float[ArrayLike, " K"] | None = None,
    variances: str | Float[ArrayLike, " K"] | VarianceFn | None = None,
    eta: float | None = None,
    clip_x0: float | tuple[float, float] | None = None,
    prediction: str = "eps",
    return_trajectory: bool = False,
    final_noise: bool = False,
) -> Float[Array, "*shape"] | tuple[Float[Array, "*shape"], Float[Array, " num_points *shape"]]:
    r"""Deprecated alias (removed in 0.3): use [`sd.sample`][scoredyn.sample] with a discrete
    solver.

    | 0.1 call | 0.2 solver |
    |---|---|
    | `lam2="ddim"` | [`sd.DDIM()`][scoredyn.DDIM] |
    | `eta=e` | `sd.DDIM(eta=e)` |
    | default (`lam2="ddpm"`) | [`sd.DDPM()`][scoredyn.DDPM] |
    | `variances="ddpm_beta"` | `sd.DDPM(large_variance=True)` |
    | `variances=` Analytic-DPM array | `sd.analytic.AnalyticDPM(gamma)` |
    | `variances=` SN/NPR callable | `sd.analytic.SNDPM(head)` / `NPRDPM(head)` |
    | `clip_x0=c` | model [`sd.ClipX0(model, -c, c)`][scoredyn.ClipX0] |
    | `prediction="x0"` | model [`sd.X0Model(fn)`][scoredyn.X0Model] (and `ScoreModel`, `VModel`) |
    | `return_trajectory=True` | `save_trajectory=True`, then `.trajectory` |

    Same outputs, bit for bit, as scoredyn 0.1 (checked against frozen fixtures), except with
    `prediction="v"`, now converted with the exact
    $(\sigma x + \alpha\hat v)/(\alpha^2 + \sigma^2)$.

    Returns:
        The sample $x_0$, or `(x_0, trajectory)` indexed like `tau`.
    """
    sched = check_schedule(sched)
    if not callable(eps_fn):
        raise TypeError(f"`eps_fn` must be callable (t, x) -> array, got {eps_fn!r}.")
    model = legacy_model(eps_fn, prediction, clip_x0)
    x_T = as_float(x_T, "x_T")
    tau = check_tau(tau, sched.num_steps)
    check_vector_field(eps_fn, "eps_fn", jnp.asarray(sched.T, x_T.dtype), x_T)
    spec = LegacyChain(lam2, variances, eta, final_noise)
    spec.chain(sched, tau)  # checks on concrete values, before anything is traced
    res = sample(key, sched, model, LegacySolver(spec), tau, x_T, save_trajectory=return_trajectory)
    if return_trajectory:
        assert res.trajectory is not None
        return res.x, res.trajectory
    return res.x
