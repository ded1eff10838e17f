"""Property-based fuzzing with hypothesis: schedules, mixtures, trajectories and inputs,
adversarial ones included (tiny and huge scales, near-singular covariances, NaN/inf params).

Invariants: (1) valid input gives no NaN and the bounds hold; (2) invalid input raises the
library's own `ValueError`/`TypeError` naming the offending argument in backticks, never a
JAX-internal error or a silent NaN. Array shapes are fixed and parameters are traced, so each
property compiles once; `test_fuzz_counts` prints how many inputs were tried.
"""

import functools
import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import scoredyn as sd
from helpers import all_finite, refused_by_debug_nans
from scoredyn._misc import time_slack

TRIED = {"valid": 0, "invalid": 0}
NAMED = re.compile(r"`[A-Za-z_][\w.\[\]]*`")


def _library_error(e: Exception, *names: str) -> None:
    """`e` is scoredyn's own input error, naming one of `names` (the argument at fault).

    Under `jax_debug_nans` JAX's own FloatingPointError on a NaN input is a refusal too."""
    if refused_by_debug_nans(e):
        return
    assert type(e) in (ValueError, TypeError), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert NAMED.search(msg), f"no argument named in: {msg}"
    if names:
        assert any(f"`{n}" in msg for n in names), f"none of {names} in: {msg}"


def _logfloat(lo, hi):
    """Log-uniform positive floats in [10^lo, 10^hi] (tiny and huge scales alike)."""
    return st.floats(lo, hi).map(lambda e: 10.0**e)


ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-300, 1e300]),
)


# ------------------------------------------------------------------ continuous schedules
@eqx.filter_jit
def _sde_quantities(sde, t):
    a, s = sde.marginal(t)
    f, g = sde.coefficients(t)
    return a, s, f, g, sde.log_snr(t)


def _check_sde(sde, u):
    t = jnp.asarray(u * sde.T)
    a, s, f, g, lam = _sde_quantities(sde, t)
    assert all_finite(a, s, f, g), (sde, u)
    assert 0.0 < float(a) <= 1.0 and float(s) >= 0.0 and float(g) >= 0.0, (sde, u, a, s, g)
    assert not math.isnan(float(lam)), (sde, u)
    if float(s) > 0:
        assert math.isfinite(float(lam))
    TRIED["valid"] += 1


UNIT = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 1e-12, 1.0 - 1e-12]))


@settings(max_examples=40)
@given(beta_min=_logfloat(-4, 1), spread=_logfloat(-3, 2.5), u=UNIT, sub=st.booleans())
def test_vp_schedules_finite(beta_min, spread, u, sub):
    cls = sd.SubVPSDE if sub else sd.VPSDE
    # parameters as arrays: traced by the jitted check, so it compiles once
    _check_sde(cls(beta_min=jnp.asarray(beta_min), beta_max=jnp.asarray(beta_min + spread)), u)


@settings(max_examples=30)
@given(sigma_min=_logfloat(-5, 0), ratio=_logfloat(0.01, 5), u=UNIT)
def test_ve_schedules_finite(sigma_min, ratio, u):
    _check_sde(
        sd.VESDE(sigma_min=jnp.asarray(sigma_min), sigma_max=jnp.asarray(sigma_min * ratio)), u
    )


@settings(max_examples=30)
@given(s=_logfloat(-4, -0.3), u=UNIT)
def test_cosine_schedules_finite(s, u):
    _check_sde(sd.CosineVPSDE(s=jnp.asarray(s)), u)


@given(a=ANY_FLOAT, b=ANY_FLOAT, kind=st.sampled_from(["vp", "subvp", "ve"]))
def test_any_sde_parameters_valid_or_named_error(a, b, kind):
    """Arbitrary (NaN, inf, negative, tiny, huge) parameters: a valid SDE with finite
    marginals, or an error naming the parameter."""
    cls, names = {
        "vp": (sd.VPSDE, ("beta_min", "beta_max")),
        "subvp": (sd.SubVPSDE, ("beta_min", "beta_max")),
        "ve": (sd.VESDE, ("sigma_min", "sigma_max")),
    }[kind]
    try:
        sde = cls(a, b)
    except Exception as e:
        _library_error(e, *names)
        TRIED["invalid"] += 1
        return
    assert a > 0 and b > a and math.isfinite(b)
    alpha, sigma = sde.marginal(0.5)
    # huge rates underflow alpha to 0 and overflow VE's sigma to inf; never NaN
    assert not (math.isnan(float(alpha)) or math.isnan(float(sigma)))
    TRIED["valid"] += 1


@given(t=st.one_of(ANY_FLOAT, st.floats(-1e-15, 1e-15), st.floats(1 - 1e-15, 1 + 1e-15)))
def test_any_time_valid_or_named_error(t):
    """Any float: inside [0, T] up to a few ulps (the documented slack) gives finite
    coefficients, anything else names `t`."""
    sde = sd.VPSDE()
    slack = time_slack(sde.T, jnp.float64)
    try:
        a, s = sde.marginal(t)
    except Exception as e:
        _library_error(e, "t")
        assert not (-slack <= t <= sde.T + slack)
        TRIED["invalid"] += 1
        return
    assert -slack <= t <= sde.T + slack
    assert all_finite(a, s) and 0 < float(a) <= 1 and 0 <= float(s) <= 1
    TRIED["valid"] += 1


# ------------------------------------------------------------------ discrete schedules
N_FUZZ = 16
BETAS = st.lists(
    st.one_of(_logfloat(-9, -0.0005), st.floats(1e-6, 0.999)), min_size=N_FUZZ, max_size=N_FUZZ
)


@jax.jit
def _discrete_quantities(betas, lam_frac):
    s = sd.DiscreteSchedule.from_betas(betas)
    n = jnp.arange(1, N_FUZZ + 1)
    m = jnp.concatenate([jnp.zeros((1,), int), jnp.arange(1, N_FUZZ) // 2])
    post = sd.forward_posterior(s, n, m)
    lam2 = lam_frac * (1.0 - s.alpha_bar[m])
    ddim_like = sd.forward_posterior(s, n, m, lam2)
    x = jnp.linspace(-1.0, 1.0, 2)
    steps = jax.vmap(lambda nn, mm, v: sd.reverse_step(None, s, nn, mm, x, -x, var=0.0, lam2=v))(
        n, m, lam2
    )
    return s.alpha_bar, s.log_snr(), post, ddim_like, steps


@settings(max_examples=40)
@given(betas=BETAS, lam_frac=st.floats(0.0, 1.0))
def test_discrete_schedule_from_any_betas(betas, lam_frac):
    """Betas from 1e-9 to 0.999: alpha_bar strictly decreasing in (0, 1]; posterior
    coefficients and DDIM-family steps finite; 0 <= variance <= 1 - alpha_bar_m."""
    b = jnp.asarray(betas)
    sched = sd.DiscreteSchedule.from_betas(b)  # concrete: validated
    ab, lam, post, ddim_like, steps = _discrete_quantities(b, lam_frac)
    ab, lam, var = (np.asarray(a) for a in (ab, lam, post.var))
    # the bound 1 - alpha_bar_m from the betas in NumPy, without cancellation: computed as
    # 1.0 - alpha_bar[m] its relative error is ~1e-16 / beta (1e-7 at beta = 1e-9), far above
    # the 1e-12 tolerance, and examples with a tiny first beta failed on the rounding
    m = np.concatenate([[0], np.arange(1, N_FUZZ) // 2])
    om_m = np.concatenate([[0.0], -np.expm1(np.cumsum(np.log1p(-np.asarray(betas))))])[m]
    assert bool(np.all(np.diff(np.asarray(sched.log_alpha_bar)) < 0))
    assert bool(np.all((ab[1:] > 0) & (ab[1:] < 1)))
    assert not bool(np.any(np.isnan(lam)))
    assert all_finite(post, ddim_like, steps)
    assert bool(np.all((var >= 0) & (var <= om_m * (1 + 1e-12))))
    TRIED["valid"] += 1


@given(betas=st.lists(ANY_FLOAT, min_size=1, max_size=4))
def test_any_betas_valid_or_named_error(betas):
    try:
        s = sd.DiscreteSchedule.from_betas(np.asarray(betas))
    except Exception as e:
        _library_error(e, "betas", "log_alpha_bar")
        TRIED["invalid"] += 1
        return
    assert all(0 < b < 1 for b in betas)
    assert all_finite(s.alpha_bar)
    TRIED["valid"] += 1


@given(b0=ANY_FLOAT, b1=ANY_FLOAT, n=st.integers(-2, 50))
def test_any_linear_schedule_valid_or_named_error(b0, b1, n):
    try:
        s = sd.DiscreteSchedule.linear(n, b0, b1)
    except Exception as e:
        _library_error(
            e, "num_steps", "beta_start", "beta_end", "betas", "alpha_bar", "log_alpha_bar"
        )
        TRIED["invalid"] += 1
        return
    assert n >= 1 and 0 < b0 <= b1 < 1
    assert all_finite(s.alpha_bar) and bool(np.all(np.diff(np.asarray(s.alpha_bar)) < 0))
    TRIED["valid"] += 1


# ------------------------------------------------------------------ trajectories
@given(idx=st.lists(st.integers(-3, 13), min_size=0, max_size=14))
def test_any_trajectory_valid_or_named_error(idx):
    N = 10
    try:
        tau = sd.trajectory(np.asarray(idx, dtype=np.int64), N)
    except Exception as e:
        _library_error(e, "indices")
        TRIED["invalid"] += 1
        return
    tau = np.asarray(tau)
    assert tau[0] == 0 and tau[-1] == N and np.all(np.diff(tau) > 0)
    assert list(tau) in (list(idx), list(idx)[::-1])
    TRIED["valid"] += 1


@given(N=st.integers(-1, 3000), K=st.integers(-1, 3001), quad=st.booleans())
def test_any_respace_valid_or_named_error(N, K, quad):
    try:
        tau = sd.respace(N, K, "quadratic" if quad else "uniform")
    except Exception as e:
        _library_error(e, "num_steps", "K")
        assert not (1 <= K <= N)
        TRIED["invalid"] += 1
        return
    tau = np.asarray(tau)
    assert tau.shape == (K + 1,) and tau[0] == 0 and tau[-1] == N and np.all(np.diff(tau) > 0)
    TRIED["valid"] += 1


# ------------------------------------------------------------------ mixtures
D, KC = 2, 3


def _mixture_params(draw):
    w = np.asarray(draw(st.lists(_logfloat(-6, 0), min_size=KC, max_size=KC)))
    w = w / w.sum()
    scale = draw(_logfloat(-3, 3))
    means = scale * np.asarray(
        draw(st.lists(st.floats(-1, 1), min_size=KC * D, max_size=KC * D))
    ).reshape(KC, D)
    covs = []
    for _ in range(KC):
        angle = draw(st.floats(0, math.pi))
        ev = [draw(_logfloat(-4, 2)) * scale**2, draw(_logfloat(-8, 0))]  # condition up to ~1e10
        ev[1] = ev[1] * ev[0]
        U = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        C = U @ np.diag(ev) @ U.T
        covs.append(0.5 * (C + C.T))
    return w, means, np.stack(covs), scale


@eqx.filter_jit
def _mixture_quantities(gm, x, alpha, sigma):
    return dict(
        lp=gm.log_prob_at(alpha, sigma, x),
        score=gm.score_at(alpha, sigma, x),
        eps=gm.eps_at(alpha, sigma, x),
        mom=gm.posterior_moments(alpha, sigma, x),
        em=gm.eps_moments(alpha, sigma, x),
    )


@settings(max_examples=40)
@given(
    data=st.data(), u=st.floats(1e-3, 1.0), xs=st.lists(st.floats(-3, 3), min_size=D, max_size=D)
)
def test_mixture_oracle_finite_for_adversarial_mixtures(data, u, xs):
    """Scales 1e-3..1e3, weights down to 1e-6, covariances with condition number up to ~1e10:
    log-density, score, eps and posterior moments are finite at every (alpha, sigma) of the
    VP SDE on [1e-3, 1], and the posterior covariance is positive semi-definite."""
    w, means, covs, scale = _mixture_params(data.draw)
    try:
        gm = sd.toy.GaussianMixture(w, means, covs)
    except ValueError as e:  # the eigen-solver may see a ~1e-10-conditioned matrix as singular
        _library_error(e, "covs")
        TRIED["invalid"] += 1
        return
    alpha, sigma = sd.VPSDE().marginal(u)
    x = alpha * jnp.asarray(xs) * scale
    out = _mixture_quantities(gm, x, alpha, sigma)
    assert all_finite(out), out
    cov = np.asarray(out["mom"][1])
    assert np.linalg.eigvalsh(cov).min() >= -1e-8 * max(1.0, np.abs(cov).max())
    TRIED["valid"] += 1


@given(
    w=st.lists(ANY_FLOAT, min_size=KC, max_size=KC),
    c=st.lists(st.floats(-2, 2), min_size=KC * D * D, max_size=KC * D * D),
)
def test_any_mixture_valid_or_named_error(w, c):
    covs = np.asarray(c).reshape(KC, D, D)
    covs = 0.5 * (covs + np.swapaxes(covs, 1, 2))  # symmetric, maybe indefinite
    try:
        gm = sd.toy.GaussianMixture(jnp.asarray(w), jnp.zeros((KC, D)), jnp.asarray(covs))
    except Exception as e:
        _library_error(e, "weights", "covs")
        TRIED["invalid"] += 1
        return
    assert min(w) >= 0 and abs(sum(w) - 1) <= 1e-5
    assert np.linalg.eigvalsh(covs).min() > 0
    assert all_finite(gm.log_prob(jnp.zeros(D)))
    TRIED["valid"] += 1


# ------------------------------------------------------------------ inputs to the samplers
@functools.cache
def _sampler_inputs_fn():
    """The jitted state check, with its mixture built (eagerly) on first use, not at import in
    every xdist worker; the mixture is a constant of the program, as before."""
    gm = sd.toy.GaussianMixture(
        jnp.array([0.5, 0.5]),
        jnp.array([[-1.0, 0.0], [1.0, 0.5]]),
        jnp.stack([jnp.eye(2) * 0.1, jnp.array([[0.2, 0.05], [0.05, 0.1]])]),
    )

    @jax.jit
    def run(x, t):
        sde = sd.VPSDE()
        return dict(
            xt=sd.perturb(jax.random.key(0), sde, x, t),
            vf=sd.probability_flow(sde, gm.score_fn(sde))(t, x),
            rev=sd.reverse_sde(sde, gm.score_fn(sde)).drift(t, x),
            eps=sd.convert(sde, gm.eps_fn(sde), "eps", "v")(t, x),
        )

    return run


@settings(max_examples=40)
@given(
    mag=_logfloat(-30, 6),
    direction=st.lists(st.floats(-1, 1), min_size=2, max_size=2),
    t=st.floats(1e-4, 1.0),
)
def test_vector_fields_finite_for_tiny_and_huge_states(mag, direction, t):
    """States from 1e-30 to 1e6 in magnitude: perturbation, PF-ODE field, reverse drift and
    the v-prediction converter stay finite."""
    x = mag * jnp.asarray(direction)
    assert all_finite(_sampler_inputs_fn()(x, jnp.asarray(t)))
    TRIED["valid"] += 1


# ------------------------------------------------------------------ perturb-and-argmax
_NOISES = {
    "gumbel": sd.reparam.Gumbel,
    "gaussian": sd.reparam.Gaussian,
    "logistic": sd.reparam.Logistic,
    "laplace": sd.reparam.Laplace,
}


@eqx.filter_jit
def _pm_quantities(noise, mu, key, tau):
    pm = sd.reparam.PerturbMax(mu, noise)
    return pm.probs, pm.relaxed_sample(key, tau)


@settings(max_examples=30)
@given(
    kind=st.sampled_from(sorted(_NOISES)),
    scale=_logfloat(-3, 3),
    spread=_logfloat(-6, 3),
    z=st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    tau=_logfloat(-3, 3),
)
def test_perturb_max_probs_on_simplex(kind, scale, spread, z, tau):
    """Noise scales 1e-3..1e3, score spreads 1e-6..1e3, temperatures 1e-3..1e3: the class
    probabilities and relaxed samples are finite points of the simplex."""
    noise = _NOISES[kind](jnp.asarray(scale))
    mu = spread * jnp.asarray(z)
    p, y = _pm_quantities(noise, mu, jax.random.key(0), jnp.asarray(tau))
    assert all_finite(p, y)
    pn, yn = np.asarray(p), np.asarray(y)
    assert bool(np.all((pn >= 0) & (pn <= 1))) and abs(float(jnp.sum(p)) - 1.0) < 1e-6
    assert bool(np.all(yn >= 0)) and abs(float(jnp.sum(y)) - 1.0) < 1e-9
    TRIED["valid"] += 1


@given(tau=ANY_FLOAT)
def test_any_temperature_valid_or_named_error(tau):
    pm = sd.reparam.PerturbMax(jnp.array([0.1, 0.4, -0.2]), sd.reparam.Gumbel())
    try:
        y = pm.relaxed_sample(jax.random.key(0), tau)
    except Exception as e:
        _library_error(e, "temperature")
        assert not tau >= np.finfo(np.float64).tiny  # subnormals are flushed to zero by XLA
        TRIED["invalid"] += 1
        return
    assert tau > 0
    assert not bool(np.any(np.isnan(np.asarray(y))))
    TRIED["valid"] += 1


def test_tiny_temperatures():
    """Found by the fuzzer: softmax((mu + eps) / tau) overflowed to inf - inf = NaN for
    tau = 3e-308, and a subnormal tau (flushed to zero by XLA) gave 0 / 0."""
    pm = sd.reparam.PerturbMax(jnp.array([0.1, 0.4, -0.2]), sd.reparam.Gumbel())
    y = pm.relaxed_sample(jax.random.key(0), 3e-308)
    assert not bool(jnp.any(jnp.isnan(y))) and float(jnp.sum(y)) == 1.0
    with pytest.raises(ValueError, match="`temperature`"):
        pm.relaxed_sample(jax.random.key(0), 2.2e-311)


def test_fuzz_counts():
    print(
        f"\nfuzz: {TRIED['valid']} valid and {TRIED['invalid']} invalid inputs tried "
        "(counts are per worker under pytest-xdist)"
    )
