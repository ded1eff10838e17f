"""Bad input is refused with the library's own error, naming the argument and the value.

Each row of `BAD` is one bad input to one public entry point. Concrete (trace-time) errors
must be `ValueError`/`TypeError` whose message names the argument in backticks and shows the
value received; errors that only run-time values decide (inside `jax.jit`) come from
`equinox.error_if` and must name the argument. `test_counts` prints how many entry points and
bad inputs are covered.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scoredyn as sd
from helpers import mixture_2d, no_runtime_typecheck, old_bound, refused_by_debug_nans

K0 = jax.random.key(0)
VP = sd.VPSDE()
GM = mixture_2d()
SCORE = GM.score_fn(VP)
EPS = GM.eps_fn(VP)
SCHED = sd.DiscreteSchedule.linear(10, 0.01, 0.2)
DEPS = sd.toy.discrete_eps_fn(GM, SCHED)
X = jnp.array([0.3, -0.4])
TAU = sd.respace(10, 5)
PM = sd.reparam.PerturbMax(jnp.array([0.1, 0.5, -0.3]), sd.reparam.Gumbel())

# vector fields that break the contract `fn(t, x) -> array shaped and typed like x`
WRONG_SHAPE = lambda t, x: jnp.zeros((3,), x.dtype)
WRONG_DTYPE = lambda t, x: x.astype(jnp.float32)
FAST: dict[str, Any] = dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize())


@dataclasses.dataclass(frozen=True)
class Bad:
    entry: str  # the public entry point
    what: str  # what is wrong
    call: Callable
    exc: type | tuple
    arg: str  # the argument the message must name
    value: str | None = None  # a rendering of the bad value the message must contain
    runtime: bool = False  # decided by run-time values under jit (equinox.error_if)
    xfail: str | None = None  # a known gap in a layer whose owner is still working


BAD: list[Bad] = []


def bad(entry, what, call, exc, arg, value=None, runtime=False, xfail=None):
    BAD.append(Bad(entry, what, call, exc, arg, value, runtime, xfail))


def jit_call(fn, *args):
    """Call `fn` under `jax.jit`, so that `args` are tracers and only run-time checks can act.

    Rows that pass the same `fn` object (bad values of the same shape and dtype) share its
    compiled program: JAX caches it by function and argument types."""
    return lambda: jax.block_until_ready(jax.jit(fn)(*args))


# ------------------------------------------------------------------ score / eps functions
_VF_ENTRIES = {
    "sample_ode": lambda f: sd.sample_ode(K0, VP, f, (2,), dt0=-0.5, **FAST),
    "sample_sde": lambda f: sd.sample_sde(K0, VP, f, (2,), num_steps=2),
    "sample_pc": lambda f: sd.sample_pc(K0, VP, f, (2,), num_steps=2),
    "dpm_solver": lambda f: sd.dpm_solver(VP, f, X, num_steps=2),
    "sample_dpm_solver": lambda f: sd.sample_dpm_solver(K0, VP, f, (2,), num_steps=2),
    "decode": lambda f: sd.decode(VP, f, X, dt0=-0.5, **FAST),
    "encode": lambda f: sd.encode(VP, f, X, dt0=0.5, **FAST),
    "log_likelihood": lambda f: sd.log_likelihood(VP, f, X, dt0=0.5, **FAST),
    "bits_per_dim": lambda f: sd.bits_per_dim(
        VP, f, jnp.array([1.0, -1.0]), key=K0, dt0=0.5, **FAST
    ),
    "sample_discrete": lambda f: sd.sample_discrete(K0, SCHED, f, X, TAU),
    "variational_bound": lambda f: old_bound(K0, SCHED, f, X, TAU, decoder="gaussian"),
    "diffusion_loss": lambda f: sd.diffusion_loss(K0, VP, f, X),
    "analytic.estimate_gamma": lambda f: sd.analytic.estimate_gamma(K0, SCHED, f, GM.sample(K0, 8)),
}
_VF_ARG = {
    "sample_ode": "score",
    "sample_sde": "score",
    "sample_pc": "score",
    "decode": "score",
    "encode": "score",
    "log_likelihood": "score",
    "bits_per_dim": "score",
    "dpm_solver": "eps_fn",
    "sample_dpm_solver": "eps_fn",
    "sample_discrete": "eps_fn",
    "variational_bound": "eps_fn",
    "diffusion_loss": "model_fn",
    "analytic.estimate_gamma": "eps_fn",
}
for _e, _call in _VF_ENTRIES.items():
    _a = _VF_ARG[_e]
    bad(_e, "score returns the wrong shape", lambda c=_call: c(WRONG_SHAPE), ValueError, _a, "(3,)")
    bad(
        _e,
        "score returns the wrong dtype",
        lambda c=_call: c(WRONG_DTYPE),
        TypeError,
        _a,
        "float32",
    )
    bad(_e, "score is not callable", lambda c=_call: c(jnp.ones(2)), TypeError, _a)

bad(
    "analytic.sn_dpm_loss",
    "model returns one array, not (eps, h)",
    lambda: sd.analytic.sn_dpm_loss(K0, SCHED, lambda t, x: x, X),
    (TypeError, ValueError),
    "model_fn",
)
bad(
    "analytic.sn_variance_fn",
    "head returns the wrong shape",
    lambda: sd.analytic.sn_variance_fn(SCHED, WRONG_SHAPE)(5, 3, X, X),
    ValueError,
    "head_fn",
    "(3,)",
)
bad(
    "simulate_sde",
    "drift returns the wrong shape",
    lambda: sd.simulate_sde(K0, sd.SDE(WRONG_SHAPE, lambda t, x: 1.0), X, 0.0, 1.0, num_steps=2),
    ValueError,
    "sde.drift",
    "(3,)",
)
bad(
    "divergence",
    "fn returns the wrong shape",
    lambda: sd.divergence(lambda y: jnp.zeros(3), X),
    ValueError,
    "fn",
    "(3,)",
)
bad(
    "hutchinson_divergence",
    "fn returns the wrong shape",
    lambda: sd.hutchinson_divergence(lambda y: jnp.zeros(3), X, jnp.ones((1, 2))),
    ValueError,
    "fn",
    "(3,)",
)
bad(
    "probability_flow",
    "score is not callable",
    lambda: sd.probability_flow(VP, 3.0),  # pyright: ignore[reportArgumentType]
    TypeError,
    "score",
    "3.0",
)
bad(
    "reverse_sde",
    "score is not callable",
    lambda: sd.reverse_sde(VP, None),  # pyright: ignore[reportArgumentType]
    TypeError,
    "score",
    "None",
)
bad("convert", "fn is not callable", lambda: sd.convert(VP, 1, "eps", "score"), TypeError, "fn")  # pyright: ignore[reportArgumentType]
bad(
    "convert",
    "unknown kind",
    lambda: sd.convert(VP, EPS, "eps", "noise"),  # pyright: ignore[reportArgumentType]
    ValueError,
    "target",
    "'noise'",
)

# ------------------------------------------------------------------ times outside [0, T]
for _t in (-0.1, 1.5, float("nan")):
    bad("perturb", f"t = {_t}", lambda t=_t: sd.perturb(K0, VP, X, t), ValueError, "t", str(_t))
    bad("VPSDE.marginal", f"t = {_t}", lambda t=_t: VP.marginal(t), ValueError, "t", str(_t))
    bad(
        "toy.GaussianMixture.marginal",
        f"t = {_t}",
        lambda t=_t: GM.marginal(VP, t),
        ValueError,
        "t",
        str(_t),
    )
bad("CosineVPSDE.log_snr", "t > T", lambda: sd.CosineVPSDE().log_snr(1.0), ValueError, "t", "1.0")
bad("VESDE.coefficients", "t < 0", lambda: sd.VESDE().coefficients(-1.0), ValueError, "t", "-1.0")
bad("SubVPSDE.marginal", "t > T", lambda: sd.SubVPSDE().marginal(2.0), ValueError, "t", "2.0")
bad(
    "perturb",
    "t > T under jit",
    jit_call(lambda t: sd.perturb(K0, VP, X, t), 1.5),
    RuntimeError,
    "t",
    runtime=True,
)
bad(
    "VPSDE.marginal", "t > T under jit", jit_call(VP.marginal, 1.5), RuntimeError, "t", runtime=True
)
bad(
    "toy.MixtureScore",
    "t > T under jit",
    jit_call(lambda t, x: SCORE(t, x), 1.5, X),
    RuntimeError,
    "t",
    runtime=True,
)
for _e, _call, _a in (
    ("sample_ode", lambda v: sd.sample_ode(K0, VP, SCORE, (2,), t_eps=v), "t_eps"),
    ("sample_sde", lambda v: sd.sample_sde(K0, VP, SCORE, (2,), t_eps=v), "t_eps"),
    ("sample_pc", lambda v: sd.sample_pc(K0, VP, SCORE, (2,), t_eps=v), "t_eps"),
    ("sample_dpm_solver", lambda v: sd.sample_dpm_solver(K0, VP, EPS, (2,), t_eps=v), "t_eps"),
    ("decode", lambda v: sd.decode(VP, SCORE, X, t_eps=v), "t_eps"),
    ("encode", lambda v: sd.encode(VP, SCORE, X, t_eps=v), "t_eps"),
    ("log_likelihood", lambda v: sd.log_likelihood(VP, SCORE, X, t_eps=v), "t_eps"),
    ("diffusion_loss", lambda v: sd.diffusion_loss(K0, VP, EPS, X, t_eps=v), "t_eps"),
):
    bad(_e, "t_eps = 0", lambda c=_call: c(0.0), ValueError, _a, "0.0")
    bad(_e, "t_eps = T", lambda c=_call: c(1.0), ValueError, _a, "1.0")
bad(
    "sample_ode",
    "ts outside [t_eps, T]",
    lambda: sd.sample_ode(K0, VP, SCORE, (2,), ts=jnp.array([1.0, 2.0])),
    ValueError,
    "ts",
    "2.",
)
bad(
    "sample_ode",
    "ts increasing (integration runs T -> t_eps)",
    lambda: sd.sample_ode(K0, VP, SCORE, (2,), ts=jnp.array([0.5, 0.9])),
    ValueError,
    "ts",
)
bad(
    "sample_sde",
    "ts outside [t_eps, T]",
    lambda: sd.sample_sde(K0, VP, SCORE, (2,), num_steps=2, ts=jnp.array([-1.0])),
    ValueError,
    "ts",
    "-1.",
)
bad(
    "simulate_sde",
    "t0 == t1",
    lambda: sd.simulate_sde(K0, VP, X, 0.5, 0.5),
    ValueError,
    "t0",
    "0.5",
)
bad("simulate_sde", "t1 > T", lambda: sd.simulate_sde(K0, VP, X, 0.0, 1.5), ValueError, "t1", "1.5")
bad(
    "simulate_sde",
    "t0 < 0",
    lambda: sd.simulate_sde(K0, VP, X, -0.5, 1.0),
    ValueError,
    "t0",
    "-0.5",
)

# ------------------------------------------------------------------ trajectories and K
_TRAJ_BAD = {
    "not increasing": ([0, 5, 3, 10], "decrease"),
    "duplicate": ([0, 5, 5, 10], "duplicate"),
    "leaves 0..N": ([0, 5, 11], "11"),
    "negative": ([-1, 5, 10], "-1"),
    "does not start at 0": ([2, 5, 10], "2"),
    "does not end at N": ([0, 5, 9], "9"),
}
for _what, (_idx, _val) in _TRAJ_BAD.items():
    bad("trajectory", _what, lambda i=_idx: sd.trajectory(i, 10), ValueError, "indices", _val)
    bad(
        "sample_discrete",
        _what,
        lambda i=_idx: sd.sample_discrete(K0, SCHED, DEPS, X, jnp.array(i)),
        ValueError,
        "tau",
        _val,
    )
    bad(
        "variational_bound",
        _what,
        lambda i=_idx: old_bound(K0, SCHED, DEPS, X, jnp.array(i)),
        ValueError,
        "tau",
        _val,
    )
    bad(
        "reverse_variances",
        _what,
        lambda i=_idx: sd.reverse_variances(SCHED, jnp.array(i)),
        ValueError,
        "tau",
        _val,
    )
    bad(
        "analytic.optimal_variances",
        _what,
        lambda i=_idx: sd.analytic.optimal_variances(SCHED, jnp.array(i), jnp.full(11, 0.5)),
        ValueError,
        "tau",
        _val,
    )
    bad(
        "analytic.variance_bounds",
        _what,
        lambda i=_idx: sd.analytic.variance_bounds(SCHED, jnp.array(i)),
        ValueError,
        "tau",
        _val,
    )
bad(
    "trajectory",
    "float indices",
    lambda: sd.trajectory(jnp.array([0.0, 5.0, 10.0]), 10),
    TypeError,
    "indices",
    "float",
)
bad(
    "trajectory",
    "2-D indices",
    lambda: sd.trajectory(jnp.zeros((2, 2), int), 10),
    ValueError,
    "indices",
    "(2, 2)",
)
bad(
    "sample_discrete",
    "tau not increasing under jit",
    jit_call(lambda t: sd.sample_discrete(K0, SCHED, DEPS, X, t), jnp.array([0, 5, 3, 10])),
    RuntimeError,
    "tau",
    runtime=True,
)
bad(
    "trajectory",
    "not increasing under jit",
    jit_call(lambda t: sd.trajectory(t, 10), jnp.array([0, 5, 3, 10])),
    RuntimeError,
    "indices",
    runtime=True,
)
bad("respace", "K > N", lambda: sd.respace(10, 11), ValueError, "K", "11")
bad("respace", "K = 0", lambda: sd.respace(10, 0), ValueError, "K", "0")
bad("respace", "K not an int", lambda: sd.respace(10, 2.5), TypeError, "K", "2.5")  # pyright: ignore[reportArgumentType]
bad("respace", "unknown kind", lambda: sd.respace(10, 2, "cubic"), ValueError, "kind", "'cubic'")  # pyright: ignore[reportArgumentType]
bad(
    "trajectory",
    "K > N (too many indices)",
    lambda: sd.trajectory(np.arange(12), 10),
    ValueError,
    "indices",
    "11",
)
bad(
    "analytic.optimal_trajectory",
    "K > N",
    lambda: sd.analytic.optimal_trajectory(SCHED, jnp.full(11, 0.5), 11),
    ValueError,
    "num_evals",
    "11",
)
bad(
    "analytic.optimal_trajectories",
    "K > N",
    lambda: sd.analytic.optimal_trajectories(SCHED, jnp.full(11, 0.5), [2, 12]),
    ValueError,
    "num_evals",
    "12",
)
bad(
    "reverse_step", "m >= n", lambda: sd.reverse_step(K0, SCHED, 3, 5, X, X), ValueError, "m", "n=3"
)
bad("reverse_step", "n > N", lambda: sd.reverse_step(K0, SCHED, 11, 5, X, X), ValueError, "n", "11")
bad(
    "reverse_step",
    "float step index",
    lambda: sd.reverse_step(K0, SCHED, 5.0, 3, X, X),
    TypeError,
    "n",
    "5.0",
)
bad(
    "reverse_step",
    "m >= n under jit",
    jit_call(lambda n, m: sd.reverse_step(K0, SCHED, n, m, X, X), 3, 5),
    RuntimeError,
    "m",
    runtime=True,
)
bad(
    "ddim_step",
    "var > 1 - alpha_bar[m]",
    lambda: sd.ddim_step(K0, SCHED, 5, 3, X, X, 2.0),
    ValueError,
    "var",
    "2.0",
)
bad(
    "forward_posterior",
    "lam2 < 0",
    lambda: sd.forward_posterior(SCHED, 5, 3, -0.1),
    ValueError,
    "lam2",
    "-0.1",
)
bad(
    "posterior_variance",
    "n < 0",
    lambda: sd.posterior_variance(SCHED, -1, 0),
    ValueError,
    "n",
    "-1",
)
bad("DiscreteSchedule.marginal", "n > N", lambda: SCHED.marginal(11), ValueError, "n", "11")

# ------------------------------------------------------------------ schedule parameters
_INF, _NAN = float("inf"), float("nan")
for _cls in (sd.VPSDE, sd.SubVPSDE):
    _e = _cls.__name__
    bad(
        _e,
        "beta_max < beta_min",
        lambda c=_cls: c(beta_min=1.0, beta_max=0.5),
        ValueError,
        "beta_min",
        "0.5",
    )
    bad(
        _e,
        "beta_min = beta_max",
        lambda c=_cls: c(beta_min=1.0, beta_max=1.0),
        ValueError,
        "beta_min",
        "1.0",
    )
    bad(_e, "beta_min < 0", lambda c=_cls: c(beta_min=-0.1), ValueError, "beta_min", "-0.1")
    bad(_e, "beta_min NaN", lambda c=_cls: c(beta_min=_NAN), ValueError, "beta_min", "nan")
    bad(_e, "beta_max inf", lambda c=_cls: c(beta_max=_INF), ValueError, "beta_max", "inf")
    bad(_e, "T <= 0", lambda c=_cls: c(T=0.0), ValueError, "T", "0.0")
bad("VESDE", "sigma_min = 0", lambda: sd.VESDE(sigma_min=0.0), ValueError, "sigma_min", "0.0")
bad("VESDE", "sigma_min < 0", lambda: sd.VESDE(sigma_min=-1.0), ValueError, "sigma_min", "-1.0")
bad(
    "VESDE",
    "sigma_max < sigma_min",
    lambda: sd.VESDE(sigma_min=1.0, sigma_max=0.5),
    ValueError,
    "sigma_max",
    "0.5",
)
bad("VESDE", "sigma_max NaN", lambda: sd.VESDE(sigma_max=_NAN), ValueError, "sigma_max", "nan")
bad("CosineVPSDE", "s <= 0", lambda: sd.CosineVPSDE(s=0.0), ValueError, "s", "0.0")
bad("CosineVPSDE", "T >= 1", lambda: sd.CosineVPSDE(T=1.0), ValueError, "T", "1.0")
bad(
    "SDE", "T NaN", lambda: sd.SDE(lambda t, x: x, lambda t, x: 1.0, T=_NAN), ValueError, "T", "nan"
)
bad("SDE", "drift not callable", lambda: sd.SDE(1.0, lambda t, x: 1.0), TypeError, "drift_fn")  # pyright: ignore[reportArgumentType]
bad(
    "DiscreteSchedule.linear",
    "beta_end < beta_start",
    lambda: sd.DiscreteSchedule.linear(10, 0.02, 0.01),
    ValueError,
    "beta_end",
    "0.01",
)
bad(
    "DiscreteSchedule.linear",
    "beta_start <= 0",
    lambda: sd.DiscreteSchedule.linear(10, 0.0),
    ValueError,
    "beta_start",
    "0.0",
)
bad(
    "DiscreteSchedule.linear",
    "beta_end >= 1",
    lambda: sd.DiscreteSchedule.linear(10, 0.1, 1.0),
    ValueError,
    "beta_end",
    "1.0",
)
bad(
    "DiscreteSchedule.linear",
    "beta_start NaN",
    lambda: sd.DiscreteSchedule.linear(10, _NAN),
    ValueError,
    "beta_start",
    "nan",
)
bad(
    "DiscreteSchedule.linear",
    "num_steps = 0",
    lambda: sd.DiscreteSchedule.linear(0),
    ValueError,
    "num_steps",
    "0",
)
bad(
    "DiscreteSchedule.linear",
    "num_steps float",
    lambda: sd.DiscreteSchedule.linear(10.0),  # pyright: ignore[reportArgumentType]
    TypeError,
    "num_steps",
    "10.0",
)
bad(
    "DiscreteSchedule.linear",
    "integer dtype",
    lambda: sd.DiscreteSchedule.linear(10, dtype=jnp.int32),
    TypeError,
    "dtype",
    "int32",
)
bad(
    "DiscreteSchedule.cosine",
    "s <= 0",
    lambda: sd.DiscreteSchedule.cosine(10, s=-0.1),
    ValueError,
    "s",
    "-0.1",
)
bad(
    "DiscreteSchedule.cosine",
    "max_beta >= 1",
    lambda: sd.DiscreteSchedule.cosine(10, max_beta=1.5),
    ValueError,
    "max_beta",
    "1.5",
)
bad(
    "DiscreteSchedule.from_betas",
    "beta out of (0, 1)",
    lambda: sd.DiscreteSchedule.from_betas(jnp.array([0.1, 1.2])),
    ValueError,
    "betas",
    "1.2",
)
bad(
    "DiscreteSchedule.from_sde",
    "not a linear SDE",
    lambda: sd.DiscreteSchedule.from_sde(sd.SDE(lambda t, x: x, lambda t, x: 1.0), 10),  # pyright: ignore[reportArgumentType]
    TypeError,
    "sde",
    "SDE",
)
bad(
    "DiscreteSchedule",
    "alpha_bar[0] != 1",
    lambda: sd.DiscreteSchedule(jnp.array([0.9, 0.5])),
    ValueError,
    "alpha_bar",
    "0.9",
)
bad(
    "DiscreteSchedule",
    "alpha_bar increasing",
    lambda: sd.DiscreteSchedule(jnp.array([1.0, 0.5, 0.6])),
    ValueError,
    "alpha_bar",
    "alpha_bar[2]",
)
bad(
    "DiscreteSchedule",
    "alpha_bar NaN",
    lambda: sd.DiscreteSchedule(jnp.array([1.0, _NAN])),
    ValueError,
    "alpha_bar",
)
bad(
    "DiscreteSchedule",
    "alpha_bar > 1 / negative",
    lambda: sd.DiscreteSchedule(jnp.array([1.0, -0.5])),
    ValueError,
    "alpha_bar",
)
bad(
    "reverse_variances",
    "eta < 0",
    lambda: sd.reverse_variances(SCHED, TAU, "eta", -1.0),
    ValueError,
    "eta",
    "-1.0",
)
bad(
    "sample_discrete",
    "variances < 0",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, variances=-jnp.ones(5)),
    ValueError,
    "variances",
    "-1.",
)
bad(
    "sample_discrete",
    "variances of the wrong length",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, variances=jnp.ones(4)),
    ValueError,
    "variances",
    "(4,)",
)
bad(
    "sample_discrete",
    "clip_x0 lo >= hi",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, clip_x0=(1.0, -1.0)),
    ValueError,
    "clip_x0",
    "1.0",
)
bad(
    "sample_pc",
    "snr <= 0",
    lambda: sd.sample_pc(K0, VP, SCORE, (2,), snr=0.0),
    ValueError,
    "snr",
    "0.0",
)
bad(
    "sample_pc",
    "num_steps = 0",
    lambda: sd.sample_pc(K0, VP, SCORE, (2,), num_steps=0),
    ValueError,
    "num_steps",
    "0",
)
bad(
    "sample_dpm_solver",
    "order 4",
    lambda: sd.sample_dpm_solver(K0, VP, EPS, (2,), order=4),
    ValueError,
    "order",
    "4",
)
bad(
    "diffusion_loss",
    "snr_gamma <= 0",
    lambda: sd.diffusion_loss(K0, VP, EPS, X, weighting="min_snr", snr_gamma=-1.0),
    ValueError,
    "snr_gamma",
    "-1.0",
)
bad(
    "analytic.optimal_variance",
    "eta > 1",
    lambda: sd.analytic.optimal_variance(SCHED, 5, 3, 0.5, forward="ddim", eta=2.0),
    ValueError,
    "eta",
    "2.0",
)
bad(
    "analytic.x0_variance",
    "data_range a >= b",
    lambda: sd.analytic.x0_variance(SCHED, jnp.full(11, 0.5), data_range=(1.0, -1.0)),
    ValueError,
    "data_range",
    "1.0",
)
bad(
    "analytic.x0_variance",
    "ms_eps of the wrong length",
    lambda: sd.analytic.x0_variance(SCHED, jnp.full(5, 0.5)),
    ValueError,
    "ms_eps",
    "(5,)",
)

# ------------------------------------------------------------------ mixtures
_W, _M, _C = GM.weights, GM.means, GM.covs
bad(
    "toy.GaussianMixture",
    "negative weight",
    lambda: sd.toy.GaussianMixture(jnp.array([-0.2, 0.7, 0.5]), _M, _C),
    ValueError,
    "weights",
    "-0.2",
)
bad(
    "toy.GaussianMixture",
    "weights sum to 0.9",
    lambda: sd.toy.GaussianMixture(jnp.array([0.2, 0.4, 0.3]), _M, _C),
    ValueError,
    "weights",
    "0.9",
)
bad(
    "toy.GaussianMixture",
    "NaN weight",
    lambda: sd.toy.GaussianMixture(jnp.array([_NAN, 0.5, 0.5]), _M, _C),
    ValueError,
    "weights",
    "nan",
)
bad(
    "toy.GaussianMixture",
    "covariance not positive definite",
    lambda: sd.toy.GaussianMixture(_W, _M, _C.at[1].set(jnp.array([[1.0, 2.0], [2.0, 1.0]]))),
    ValueError,
    "covs[1]",
    "-1.",
)
bad(
    "toy.GaussianMixture",
    "singular covariance",
    lambda: sd.toy.GaussianMixture(_W, _M, _C.at[0].set(jnp.zeros((2, 2)))),
    ValueError,
    "covs[0]",
    "0.0",
)
bad(
    "toy.GaussianMixture",
    "covariance not symmetric",
    lambda: sd.toy.GaussianMixture(_W, _M, _C.at[0, 0, 1].set(0.5)),
    ValueError,
    "covs",
)
bad(
    "toy.GaussianMixture",
    "means of the wrong shape",
    lambda: sd.toy.GaussianMixture(_W, _M[:2], _C),
    ValueError,
    "means",
    "(2, 2)",
)
bad(
    "toy.GaussianMixture",
    "covs of the wrong shape",
    lambda: sd.toy.GaussianMixture(_W, _M, _C[:, :1]),
    ValueError,
    "covs",
    "(3, 1, 2)",
)
bad(
    "toy.GaussianMixture.log_prob",
    "x of the wrong shape",
    lambda: GM.log_prob(jnp.ones(3)),
    ValueError,
    "x",
    "(3,)",
)
bad("toy.GaussianMixture.sample", "n negative", lambda: GM.sample(K0, -1), ValueError, "n", "-1")

# ------------------------------------------------------------------ integer / complex inputs
_CPLX = jnp.array([1.0 + 1j, 0.5])
bad("perturb", "complex x0", lambda: sd.perturb(K0, VP, _CPLX, 0.5), TypeError, "x0", "complex")
bad("perturb", "complex t", lambda: sd.perturb(K0, VP, X, 0.5 + 0.1j), TypeError, "t", "complex")
bad(
    "VPSDE.marginal",
    "complex t",
    lambda: VP.marginal(jnp.asarray(0.5 + 0j)),
    TypeError,
    "t",
    "complex",
)
bad(
    "toy.GaussianMixture",
    "complex means",
    lambda: sd.toy.GaussianMixture(_W, _M.astype(complex), _C),
    TypeError,
    "means",
    "complex",
)
bad(
    "toy.GaussianMixture.log_prob",
    "complex x",
    lambda: GM.log_prob(_CPLX),
    TypeError,
    "x",
    "complex",
)
bad(
    "log_likelihood",
    "complex x",
    lambda: sd.log_likelihood(VP, SCORE, _CPLX),
    TypeError,
    "x",
    "complex",
)
bad(
    "gaussian_kl",
    "complex mean",
    lambda: sd.gaussian_kl(_CPLX, 1.0, X, 1.0),
    TypeError,
    "mean_q",
    "complex",
)
bad(
    "sample_discrete",
    "complex x_T",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, _CPLX, TAU),
    TypeError,
    "x_T",
    "complex",
)
bad(
    "reparam.PerturbMax",
    "integer scores",
    lambda: sd.reparam.PerturbMax(jnp.array([1, 2, 3])),
    TypeError,
    "mu",
    "int",
)
bad(
    "reparam.PerturbMax",
    "complex scores",
    lambda: sd.reparam.PerturbMax(_CPLX),
    TypeError,
    "mu",
    "complex",
)
for _e, _call in (
    ("sample_ode", lambda: sd.sample_ode(K0, VP, SCORE, (2,), dtype=jnp.int32)),
    ("sample_sde", lambda: sd.sample_sde(K0, VP, SCORE, (2,), dtype=jnp.int32)),
    ("sample_pc", lambda: sd.sample_pc(K0, VP, SCORE, (2,), dtype=jnp.int32)),
    ("sample_dpm_solver", lambda: sd.sample_dpm_solver(K0, VP, EPS, (2,), dtype=jnp.int32)),
):
    bad(_e, "integer dtype", _call, TypeError, "dtype", "int32")
bad(
    "dpm_solver",
    "integer x_T",
    lambda: sd.dpm_solver(VP, EPS, jnp.array([1, 2])),
    TypeError,
    "x_T",
    "int",
)
bad(
    "sample_ode",
    "shape not a tuple of ints",
    lambda: sd.sample_ode(K0, VP, SCORE, 2),  # pyright: ignore[reportArgumentType]
    TypeError,
    "shape",
    "2",
)
bad(
    "hutchinson_probes",
    "integer dtype",
    lambda: sd.hutchinson_probes(K0, (2,), dtype=jnp.int32),
    TypeError,
    "dtype",
    "int32",
)

# ------------------------------------------------------------------ temperatures, noise, nn
for _meth in ("relaxed_sample", "straight_through_sample"):
    _e = f"reparam.PerturbMax.{_meth}"
    for _tau in (0.0, -1.0, _NAN, 2.2e-311):  # a subnormal is flushed to 0 by XLA
        bad(
            _e,
            f"temperature {_tau}",
            lambda m=_meth, t=_tau: getattr(PM, m)(K0, t),
            ValueError,
            "temperature",
            str(_tau),
        )
    bad(
        _e,
        "temperature <= 0 under jit",
        jit_call(lambda t, m=_meth: getattr(PM, m)(K0, t), -1.0),
        RuntimeError,
        "temperature",
        runtime=True,
    )
    bad(
        _e,
        "complex temperature",
        lambda m=_meth: getattr(PM, m)(K0, 1j),
        TypeError,
        "temperature",
        "complex",
    )
for _cls in (
    sd.reparam.Gaussian,
    sd.reparam.Gumbel,
    sd.reparam.Laplace,
    sd.reparam.Logistic,
    sd.reparam.Uniform,
):
    bad("reparam." + _cls.__name__, "scale <= 0", lambda c=_cls: c(0.0), ValueError, "scale", "0.0")
    bad("reparam." + _cls.__name__, "scale NaN", lambda c=_cls: c(_NAN), ValueError, "scale", "nan")
bad(
    "reparam.PerturbMax",
    "unknown method",
    lambda: sd.reparam.PerturbMax(jnp.ones(3), method="magic"),
    ValueError,
    "method",
    "'magic'",
)
bad(
    "reparam.PerturbMax",
    "noise not an AbstractNoise",
    lambda: sd.reparam.PerturbMax(jnp.ones(3), noise="gumbel"),  # pyright: ignore[reportArgumentType]
    TypeError,
    "noise",
    "str",
)
bad(
    "reparam.PerturbMax.log_prob",
    "float class index",
    lambda: PM.log_prob(1.0),
    TypeError,
    "i",
    "float",
)
bad("nn.MLP", "data_dim = 0", lambda: sd.nn.MLP(0, key=K0), ValueError, "data_dim", "0")
bad("nn.MLP", "odd time_dim", lambda: sd.nn.MLP(2, time_dim=3, key=K0), ValueError, "time_dim", "3")
bad(
    "nn.SinusoidalEmbedding",
    "odd dim",
    lambda: sd.nn.SinusoidalEmbedding(3),
    ValueError,
    "dim",
    "3",
)
bad(
    "nn.GridEps",
    "levels = 1",
    lambda: sd.nn.GridEps(lambda t, x: x, VP, 1),
    ValueError,
    "levels",
    "1",
)
bad(
    "nn.make_train_step",
    "ema_decay > 1",
    lambda: sd.nn.make_train_step(lambda m, k, b: jnp.zeros(()), optax.sgd(0.1), ema_decay=1.5),
    ValueError,
    "ema_decay",
    "1.5",
)
bad(
    "nn.fit",
    "num_steps = 0",
    lambda: sd.nn.fit(K0, None, None, jnp.ones((2, 2)), num_steps=0, batch_size=1),  # pyright: ignore[reportArgumentType]
    ValueError,
    "num_steps",
    "0",
)
bad(
    "log_likelihood",
    "unknown estimator",
    lambda: sd.log_likelihood(VP, SCORE, X, estimator="magic"),
    ValueError,
    "estimator",
    "'magic'",
)
bad(
    "log_likelihood",
    "hutchinson without key",
    lambda: sd.log_likelihood(VP, SCORE, X, estimator="hutchinson"),
    ValueError,
    "key",
)
bad(
    "hutchinson_probes",
    "num_probes = 0",
    lambda: sd.hutchinson_probes(K0, (2,), num_probes=0),
    ValueError,
    "num_probes",
    "0",
)
bad(
    "hutchinson_probes",
    "unknown probe",
    lambda: sd.hutchinson_probes(K0, (2,), probe="sphere"),
    ValueError,
    "probe",
    "'sphere'",
)
bad(
    "bits_per_dim",
    "levels = 1",
    lambda: sd.bits_per_dim(VP, SCORE, X, key=K0, levels=1),
    ValueError,
    "levels",
    "1",
)
bad(
    "bits_per_dim",
    "x off the grid",
    lambda: sd.bits_per_dim(VP, SCORE, X, key=K0, levels=4),
    ValueError,
    "x",
    "levels=4",
)
bad(
    "discretized_gaussian_log_likelihood",
    "levels = 1",
    lambda: sd.discretized_gaussian_log_likelihood(X, X, 1.0, 1),
    ValueError,
    "levels",
    "1",
)
bad(
    "sharded_vmap",
    "in_axes = 1",
    lambda: sd.sharded_vmap(jnp.sin, in_axes=1)(jnp.ones((2, 2))),
    ValueError,
    "in_axes",
    "1",
)
bad(
    "sharded_vmap",
    "unknown axis_name",
    lambda: sd.sharded_vmap(jnp.sin, mesh=sd.batch_mesh("data"), axis_name="batch"),
    ValueError,
    "axis_name",
    "'batch'",
)
bad(
    "perturb",
    "sde not linear",
    lambda: sd.perturb(K0, sd.SDE(lambda t, x: x, lambda t, x: 1.0), X, 0.5),  # pyright: ignore[reportArgumentType]
    TypeError,
    "sde",
    "SDE",
)
bad(
    "sample_ode",
    "sde not an SDE",
    lambda: sd.sample_ode(K0, "vp", SCORE, (2,)),  # pyright: ignore[reportArgumentType]
    TypeError,
    "sde",
    "str",
)
bad(
    "sample_ode",
    "solver not a diffrax solver",
    lambda: sd.sample_ode(K0, VP, SCORE, (2,), solver="tsit5"),  # pyright: ignore[reportArgumentType]
    TypeError,
    "solver",
    "tsit5",
)


# ------------------------------------------------------------------ the tests
def _ids():
    return [f"{b.entry}: {b.what}" for b in BAD]


def _params():
    return [
        pytest.param(b, marks=pytest.mark.xfail(strict=False, reason=b.xfail)) if b.xfail else b
        for b in BAD
    ]


@pytest.mark.parametrize("b", _params(), ids=_ids())
def test_bad_input_is_refused(b: Bad):
    excs = b.exc if isinstance(b.exc, tuple) else (b.exc,)
    # jaxtyping's run-time checks (`make test`) would refuse many of these first, with their
    # own TypeError: switched off here, as the errors tested are scoredyn's own
    with no_runtime_typecheck(), pytest.raises((*excs, FloatingPointError)) as info:
        b.call()
    if refused_by_debug_nans(info.value) and not isinstance(info.value, excs):
        return
    assert isinstance(info.value, excs), f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    if not b.runtime:
        # trace-time errors are the library's own ValueError/TypeError, not a JAX internal one
        assert type(info.value) in (ValueError, TypeError), type(info.value)
    assert f"`{b.arg}" in msg, f"message does not name `{b.arg}`: {msg[:300]}"
    if b.value is not None:
        assert b.value in msg, f"message does not show the value {b.value!r}: {msg[:300]}"


def test_counts():
    entries = {
        b.entry.split(".")[0]
        if not b.entry.startswith(("toy.", "analytic.", "reparam.", "nn."))
        else ".".join(b.entry.split(".")[:2])
        for b in BAD
    }
    print(
        f"\nvalidation: {len(BAD)} bad inputs over {len(entries)} public entry points "
        f"({sum(b.runtime for b in BAD)} of them run-time checks under jit)"
    )
    assert len(BAD) >= 200


# ------------------------------------------------------------------ good input is accepted
def test_integer_data_is_promoted_not_refused():
    """Integer data (not dtypes) are promoted to the default float, by design (`as_float`)."""
    xt = sd.perturb(K0, VP, jnp.array([1, 2]), 0.5)
    assert xt.dtype == jnp.float64
    assert sd.gaussian_kl(jnp.array([1, 2]), 1, jnp.array([0, 0]), 2).dtype == jnp.float64


def test_time_check_tolerates_rounding_of_T():
    """`T` rounded to float32 (e.g. the cosine SDE's 0.9946) is still inside [0, T]."""
    cos = sd.CosineVPSDE()
    t32 = jnp.float32(cos.T)
    assert float(t32) != cos.T  # the rounding this test is about
    a, s = cos.marginal(t32)
    assert np.isfinite(float(a)) and np.isfinite(float(s))
    sd.perturb(K0, cos, jnp.zeros(2, jnp.float32), t32)
    GM.marginal(cos, t32)


# ================================================================== round two (issue 12)
# Adversarial inputs of the second reliability pass, one block per class of failure. Each row
# must raise the library's own error naming the argument; `runtime=True` rows are decided by
# traced values inside `jax.jit` (equinox.error_if), where the old code gave NaN or a wrong
# answer. The value-side cases of the same classes (+inf, masked classes, ...) are in
# `test_reliability_round2.py`.
ROUND2_START = len(BAD)
_G11 = jnp.full(11, 0.5)
# NumPy (no JAX operation compiled at import, in every xdist worker)
_M2, _C2 = np.zeros((2, 2)), np.stack([np.eye(2)] * 2)
_W2 = np.array([0.5, 0.5])
_UNUSED: Any = None  # an argument the check under test refuses before reading it


def _with(a, idx, v):
    """A NumPy copy of `a` with `a[idx] = v`: built without a JAX operation, so that a NaN
    constant does not trip `jax_debug_nans` when the module is imported."""
    out = np.array(a)
    out[idx] = v
    return out


# ---- NaN turned into a wrong answer: Gamma and data sets
bad(
    "analytic.optimal_trajectory",
    "NaN in Gamma",
    lambda: sd.analytic.optimal_trajectory(SCHED, _with(_G11, (3), _NAN), 4),
    ValueError,
    "ms_eps",
    "n = [3]",
)
bad(
    "analytic.optimal_trajectory",
    "NaN in Gamma, free first node",
    lambda: sd.analytic.optimal_trajectory(SCHED, _with(_G11, (10), _NAN), 4, free_first=True),
    ValueError,
    "ms_eps",
    "n = [10]",
)
bad(
    "analytic.optimal_trajectory",
    "NaN in Gamma under jit",
    jit_call(lambda g: sd.analytic.optimal_trajectory(SCHED, g, 4), _with(_G11, (3), _NAN)),
    RuntimeError,
    "ms_eps",
    runtime=True,
)
bad(
    "analytic.optimal_trajectories",
    "NaN in Gamma",
    lambda: sd.analytic.optimal_trajectories(SCHED, _with(_G11, (5), _NAN), [2, 3]),
    ValueError,
    "ms_eps",
)
bad(
    "analytic.trajectory_cost",
    "NaN in Gamma",
    lambda: sd.analytic.trajectory_cost(SCHED, _with(_G11, (5), _NAN), TAU),
    ValueError,
    "ms_eps",
)
bad(
    "analytic.optimal_variances",
    "NaN in Gamma",
    lambda: sd.analytic.optimal_variances(SCHED, TAU, _with(_G11, (4), _NAN)),
    ValueError,
    "ms_eps",
)
bad(
    "analytic.AnalyticDPM.chain",
    "NaN in Gamma",
    lambda: sd.analytic.AnalyticDPM(jnp.asarray(_with(_G11, (4), _NAN))).chain(SCHED, TAU),
    ValueError,
    "ms_eps",
)


@functools.cache
def _data8():
    """Eight mixture draws, drawn on first use (not at import, in every xdist worker)."""
    return GM.sample(K0, 8)


bad(
    "analytic.estimate_gamma",
    "one NaN data row",
    lambda: sd.analytic.estimate_gamma(K0, SCHED, DEPS, _with(_data8(), (2, 0), _NAN)),
    ValueError,
    "data",
    "row 2",
)
bad(
    "analytic.estimate_gamma",
    "one inf data row",
    lambda: sd.analytic.estimate_gamma(K0, SCHED, DEPS, _with(_data8(), (5, 1), -_INF)),
    ValueError,
    "data",
    "row 5",
)
bad(
    "analytic.estimate_gamma",
    "one NaN data row under jit",
    lambda: jit_call(
        lambda d: sd.analytic.estimate_gamma(K0, SCHED, DEPS, d).ms_eps, _with(_data8(), (2), _NAN)
    )(),
    RuntimeError,
    "data",
    runtime=True,
)

# ---- traced parameters: run-time checks where a wrong value changes the answer
_T5 = jnp.asarray(0.5)
for _cls, _lo, _hi in ((sd.VPSDE, "beta_min", "beta_max"), (sd.SubVPSDE, "beta_min", "beta_max")):
    bad(
        _cls.__name__,
        "beta_min < 0 under jit",
        jit_call(lambda b, c=_cls: c(beta_min=b).marginal(_T5), -1.0),
        RuntimeError,
        "beta_min",
        runtime=True,
    )
    bad(
        _cls.__name__,
        "beta_max < beta_min under jit",
        jit_call(lambda b, c=_cls: c(beta_min=0.5, beta_max=b).marginal(_T5), 0.1),
        RuntimeError,
        "beta_max",
        runtime=True,
    )
    bad(
        _cls.__name__,
        "beta_max NaN under vmap",
        jit_call(
            lambda b, c=_cls: jax.vmap(lambda bb: c(beta_max=bb).marginal(_T5))(b),
            np.array([20.0, _NAN]),
        ),
        RuntimeError,
        "beta_max",
        runtime=True,
    )
bad(
    "VESDE",
    "sigma_min < 0 under jit",
    jit_call(lambda s: sd.VESDE(sigma_min=s).marginal(_T5), -0.01),
    RuntimeError,
    "sigma_min",
    runtime=True,
)
bad(
    "VESDE",
    "sigma_max inf under jit",
    jit_call(lambda s: sd.VESDE(sigma_max=s).marginal(_T5), _INF),
    RuntimeError,
    "sigma_max",
    runtime=True,
)
bad(
    "CosineVPSDE",
    "s < 0 under jit",
    jit_call(lambda s: sd.CosineVPSDE(s=s).marginal(_T5), -0.008),
    RuntimeError,
    "s",
    runtime=True,
)
bad(
    "VPSDE",
    "beta_min < 0 under grad",
    jit_call(jax.grad(lambda b: sd.VPSDE(beta_min=b).marginal(_T5)[0]), -1.0),
    RuntimeError,
    "beta_min",
    runtime=True,
)


def _from_betas(b):  # one function: the three rows share its compiled program
    return sd.DiscreteSchedule.from_betas(b).alpha_bar


for _b, _what in (([0.1, 1.0], "beta = 1"), ([0.0, 0.1], "beta = 0"), ([0.1, 1.5], "beta > 1")):
    bad(
        "DiscreteSchedule.from_betas",
        f"{_what} under jit",
        jit_call(_from_betas, jnp.array(_b)),
        RuntimeError,
        "betas",
        runtime=True,
    )
bad(
    "DiscreteSchedule.linear",
    "beta_start < 0 under jit",
    jit_call(lambda b: sd.DiscreteSchedule.linear(10, b, 0.02).alpha_bar, -0.01),
    RuntimeError,
    "betas",
    runtime=True,
)
bad(
    "DiscreteSchedule",
    "alpha_bar increasing under jit",
    jit_call(lambda a: sd.DiscreteSchedule(a).alpha_bar, jnp.array([1.0, 0.5, 0.6])),
    RuntimeError,
    "alpha_bar",
    runtime=True,
)


def _mixture_weights(w):  # one function: the two weight rows share its compiled program
    return sd.toy.GaussianMixture(w, _M2, _C2).log_prob(X)


bad(
    "toy.GaussianMixture",
    "negative weight under jit",
    jit_call(_mixture_weights, jnp.array([-0.5, 1.5])),
    RuntimeError,
    "weights",
    runtime=True,
)
bad(
    "toy.GaussianMixture",
    "weights sum to 0.4 under jit",
    jit_call(_mixture_weights, jnp.array([0.2, 0.2])),
    RuntimeError,
    "weights",
    runtime=True,
)
bad(
    "toy.GaussianMixture",
    "covariance not positive definite under jit",
    jit_call(lambda c: sd.toy.GaussianMixture(_W2, _M2, c).log_prob(X), -_C2),
    RuntimeError,
    "covs",
    runtime=True,
)
bad(
    "toy.GaussianMixture",
    "NaN mean under jit",
    jit_call(lambda m: sd.toy.GaussianMixture(_W2, m, _C2).log_prob(X), _with(_M2, (0, 0), _NAN)),
    RuntimeError,
    "means",
    runtime=True,
)
for _cls in (
    sd.reparam.Gumbel,
    sd.reparam.Gaussian,
    sd.reparam.Logistic,
    sd.reparam.Laplace,
    sd.reparam.Uniform,
):
    bad(
        "reparam." + _cls.__name__,
        "scale = -1 under jit",
        jit_call(lambda s, c=_cls: sd.reparam.PerturbMax(jnp.array([0.0, 1.0]), c(s)).probs, -1.0),
        RuntimeError,
        "scale",
        runtime=True,
    )
bad(
    "reparam.Gumbel",
    "scale NaN under jit (sampling)",
    jit_call(lambda s: sd.reparam.PerturbMax(jnp.zeros(3), sd.reparam.Gumbel(s)).sample(K0), _NAN),
    RuntimeError,
    "scale",
    runtime=True,
)


def _reverse_step_var(v):  # one function: the two `var` rows share its compiled program
    return sd.reverse_step(K0, SCHED, 5, 3, X, X, var=v)


bad(
    "reverse_step",
    "var < 0 under jit",
    jit_call(_reverse_step_var, -1.0),
    RuntimeError,
    "var",
    runtime=True,
)
bad(
    "reverse_step",
    "var NaN under jit",
    jit_call(_reverse_step_var, _NAN),
    RuntimeError,
    "var",
    runtime=True,
)
bad(
    "reverse_variances",
    "eta < 0 under jit",
    jit_call(lambda e: sd.reverse_variances(SCHED, TAU, "eta", e), -1.0),
    RuntimeError,
    "eta",
    runtime=True,
)
bad(
    "sample_discrete",
    "variances < 0 under jit",
    jit_call(lambda v: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, variances=v), -np.ones(5)),
    RuntimeError,
    "variances",
    runtime=True,
)
bad(
    "sample_discrete",
    "variance callable returns a negative",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, variances=lambda n, m, x, e: -0.1 * x**2),
    RuntimeError,
    "variances",
    runtime=True,
)
bad(
    "sample_discrete",
    "variance callable returns NaN",
    lambda: sd.sample_discrete(
        K0, SCHED, DEPS, X, TAU, variances=lambda n, m, x, e: jnp.full_like(x, _NAN)
    ),
    RuntimeError,
    "variances",
    runtime=True,
)

# ---- precision and range
bad(
    "CosineVPSDE",
    "T rounds to 1 in float32",
    lambda: sd.CosineVPSDE(T=0.99999999),
    ValueError,
    "T",
    "0.99999999",
)
bad("respace", "N = 2**40", lambda: sd.respace(2**40, 3), ValueError, "num_steps", str(2**40))
bad(
    "respace",
    "N = 2**31 (quadratic)",
    lambda: sd.respace(2**31, 5, "quadratic"),
    ValueError,
    "num_steps",
)
bad(
    "trajectory",
    "int64 indices beyond int32",
    lambda: sd.trajectory(np.array([0, 2**33, 2**34], dtype=np.int64), 2**34),
    ValueError,
    "indices",
    str(2**34),
)
bad(
    "sample_discrete",
    "int64 tau beyond int32",
    lambda: sd.sample_discrete(K0, SCHED, DEPS, X, np.array([0, 2**32 + 5, 10], dtype=np.int64)),
    ValueError,
    "tau",
)
bad(
    "trajectory",
    "int64 indices beyond int32 under jit",
    jit_call(lambda i: sd.trajectory(i, 10), jnp.array([0, 2**32 + 5, 10], dtype=jnp.int64)),
    RuntimeError,
    "indices",
    runtime=True,
)

# ---- wrong or missing names in errors
bad("ddim_step", "var < 0", lambda: sd.ddim_step(K0, SCHED, 5, 3, X, X, -0.5), ValueError, "var")
for _e, _call, _a in (
    ("VPSDE", lambda v: sd.VPSDE(beta_min=v), "beta_min"),
    ("VESDE", lambda v: sd.VESDE(sigma_max=v), "sigma_max"),
    ("CosineVPSDE", lambda v: sd.CosineVPSDE(T=v), "T"),  # pyright: ignore[reportArgumentType]
    ("log_likelihood", lambda v: sd.log_likelihood(VP, SCORE, X, t_eps=v), "t_eps"),
    ("diffusion_loss", lambda v: sd.diffusion_loss(K0, VP, EPS, X, t_eps=v), "t_eps"),
    (
        "diffusion_loss",
        lambda v: sd.diffusion_loss(K0, VP, EPS, X, weighting="min_snr", snr_gamma=v),
        "snr_gamma",
    ),
    ("reverse_variances", lambda v: sd.reverse_variances(SCHED, TAU, "eta", v), "eta"),
    ("DDIM", lambda v: sd.DDIM(eta=v), "eta"),
    ("sample_discrete", lambda v: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, eta=v), "eta"),
    (
        "analytic.optimal_variance",
        lambda v: sd.analytic.optimal_variance(SCHED, 5, 3, 0.5, forward="ddim", eta=v),
        "eta",
    ),
    (
        "analytic.x0_variance",
        lambda v: sd.analytic.x0_variance(SCHED, _G11, data_range=(v, 1.0)),
        "data_range",
    ),
    (
        "analytic.AnalyticDPM",
        lambda v: sd.analytic.AnalyticDPM(_G11, data_range=(-1.0, v)),
        "data_range",
    ),
    ("analytic.monotone_ms_eps", lambda v: sd.analytic.monotone_ms_eps(SCHED, _G11, cap=v), "cap"),
    ("DiscreteSchedule.linear", lambda v: sd.DiscreteSchedule.linear(10, v), "beta_start"),
    ("DiscreteSchedule.cosine", lambda v: sd.DiscreteSchedule.cosine(10, s=v), "s"),
    (
        "sample_discrete",
        lambda v: sd.sample_discrete(K0, SCHED, DEPS, X, TAU, clip_x0=v),
        "clip_x0",
    ),
    (
        "nn.make_train_step",
        lambda v: sd.nn.make_train_step(lambda m, k, b: jnp.zeros(()), optax.sgd(0.1), ema_decay=v),
        "ema_decay",
    ),
    ("reparam.Gumbel", lambda v: sd.reparam.Gumbel(v), "scale"),
):
    bad(_e, f"complex {_a}", lambda c=_call: c(0.5 + 1j), TypeError, _a, "1j")
    bad(_e, f"string {_a}", lambda c=_call: c("0.5"), TypeError, _a, "'0.5'")
bad(
    "sample_ode",
    "complex t_eps",
    lambda: sd.sample_ode(K0, VP, SCORE, (2,), t_eps=1e-3 + 1j),  # pyright: ignore[reportArgumentType]
    TypeError,
    "t_eps",
)

# ---- solver-layer follow-ups of round two: traced eta, a user's variance rule, NaN at encode
bad(
    "DDIM",
    "traced eta < 0",
    jit_call(
        lambda e: sd.sample(K0, SCHED, sd.EpsModel(DEPS), sd.DDIM(eta=e), TAU, X).x,
        -0.5,
    ),
    RuntimeError,
    "eta",
    runtime=True,
)
bad(
    "make_chain",
    "variance callable returning < 0",
    jit_call(
        lambda x: sd.make_chain(SCHED, TAU, 1.0, lambda n, m, x_n, e: jnp.full((), -0.1)).variances(  # pyright: ignore
            jnp.int32(4), jnp.int32(2), x, x
        ),
        X,
    ),
    RuntimeError,
    "variances",
    runtime=True,
)
bad(
    "encode",
    "NaN in x0",
    lambda: sd.encode(VP, SCORE, X.at[0].set(jnp.nan)),
    ValueError,
    "x0",
    "nan",
)

# ---- NaN data at the data-set boundaries: the error blames `x` / `data`, not `t`
_XN = np.array([_NAN, 0.0])
bad("log_likelihood", "NaN in x", lambda: sd.log_likelihood(VP, SCORE, _XN), ValueError, "x", "nan")
bad(
    "log_likelihood",
    "inf in x",
    lambda: sd.log_likelihood(VP, SCORE, np.array([0.0, _INF])),
    ValueError,
    "x",
    "inf",
)
bad(
    "log_likelihood",
    "NaN in x under jit",
    jit_call(lambda x: sd.log_likelihood(VP, SCORE, x, dt0=0.5, **FAST), _XN),
    RuntimeError,
    "x",
    runtime=True,
)
bad(
    "bits_per_dim",
    "NaN in x",
    lambda: sd.bits_per_dim(VP, SCORE, np.array([_NAN, 1.0]), key=K0),
    ValueError,
    "x",
    "nan",
)
bad(
    "nn.fit",
    "NaN data row",
    lambda: sd.nn.fit(
        K0, _UNUSED, _UNUSED, _with(np.ones((4, 2)), (1, 1), _NAN), num_steps=1, batch_size=1
    ),
    ValueError,
    "data",
    "row 1",
)
bad(
    "toy.GaussianMixture",
    "NaN mean",
    lambda: sd.toy.GaussianMixture(_W2, _with(_M2, (1, 0), _NAN), _C2),
    ValueError,
    "means",
    "row 1",
)
bad(
    "reparam.PerturbMax",
    "every class masked (all scores -inf)",
    lambda: sd.reparam.PerturbMax(np.array([[0.0, 1.0], [-_INF, -_INF]])),
    ValueError,
    "mu",
    "row 1",
)
bad(
    "reparam.PerturbMax",
    "NaN score",
    lambda: sd.reparam.PerturbMax(np.array([0.0, _NAN, 1.0])),
    ValueError,
    "mu",
    "nan",
)


@pytest.mark.parametrize(
    "b",
    _params()[ROUND2_START:],
    ids=[f"round2 {i}" for i in _ids()[ROUND2_START:]],
)
def test_round2_bad_input_is_refused(b: Bad):
    """The round-two rows, with the same requirements as `test_bad_input_is_refused` (whose
    parameters were fixed before this section was added)."""
    test_bad_input_is_refused(b)


def test_round2_counts():
    rows = BAD[ROUND2_START:]
    print(
        f"\nround two: {len(rows)} adversarial inputs refused with a named error "
        f"({sum(b.runtime for b in rows)} decided at run time under jit, "
        f"{sum(b.xfail is not None for b in rows)} known gap(s) outside this layer)"
    )
    assert len(rows) >= 80
