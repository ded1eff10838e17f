"""Numerical reliability: finiteness and monotonicity at both ends of every interval, finite
gradients, float64 honoured end to end, float32 without overflow, and determinism.

The facts checked are structural and independent of the formulas' implementation: alpha is
non-increasing and sigma non-decreasing in t, the log-SNR is strictly decreasing, DDPM
posterior variances lie in [0, 1 - alpha_bar_m], and float64 inputs give a program (jaxpr)
with no float32 value anywhere in it.
"""

import functools
import hashlib
import os
import subprocess
import sys
import textwrap
from typing import Any, cast

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import (
    ALL_LINEAR_SDES,
    SDE_IDS,
    all_finite,
    mixture_2d,
    no_runtime_typecheck,
    old_bound,
)

DTYPES = [jnp.float32, jnp.float64]


def _on_interval(sde, n=257, dtype=jnp.float64):
    """Times 0 = t_0 < ... < t_n = T, both ends included, in `dtype` (a NumPy grid: an argument
    of the test's one compiled program)."""
    t = np.linspace(0.0, sde.T, n).astype(dtype)
    t[-1] = np.asarray(sde.T, dtype)
    return t


# ------------------------------------------------------------------ continuous SDEs
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_sde_quantities_finite_and_monotone_on_closed_interval(sde, dtype):
    """alpha, sigma, f, g finite on [0, T] (both ends); log-SNR finite on (0, T] and +inf at 0
    (sigma(0) = 0 exactly); alpha non-increasing, sigma non-decreasing, lambda decreasing."""
    with jax.enable_x64(dtype == jnp.float64):

        @jax.jit  # one program for every quantity; the checks in NumPy
        def quantities(t, x):
            alpha, sigma = jax.vmap(sde.marginal)(t)
            f, g = jax.vmap(sde.coefficients)(t)
            lam = jax.vmap(sde.log_snr)(t)
            tail = sde.prior_log_prob(x), sde.drift(sde.T, x), sde.diffusion(0.0, x)
            return (alpha, sigma, f, g, lam), tail

        t = _on_interval(sde, dtype=dtype)
        out, (prior, drift, diffusion) = quantities(t, np.ones((2,), dtype))
        for a in out:
            assert a.dtype == dtype
        alpha, sigma, f, g, lam = (np.asarray(a) for a in out)
        assert all_finite(alpha, sigma, f, g, lam[1:])
        assert float(sigma[0]) == 0.0 and float(lam[0]) == np.inf
        # g > 0 except sub-VP's g(0) = 0 (its sigma^2 = (1 - alpha^2)^2 starts quadratically)
        assert bool(np.all(alpha > 0)) and bool(np.all(g[1:] > 0)) and float(g[0]) >= 0
        assert bool(np.all(np.diff(alpha) <= 0)) and bool(np.all(np.diff(sigma) >= 0))
        dlam = np.diff(lam[1:])
        # strictly decreasing in float64; in float32 rounding may tie adjacent values
        assert bool(np.all(dlam < 0)) if dtype == jnp.float64 else bool(np.all(dlam <= 0))
        # the prior is finite and the drift/diffusion follow the state's dtype
        assert np.isfinite(float(prior))
        assert drift.dtype == dtype and diffusion.dtype == dtype


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_sde_gradients_finite(sde):
    """d/dt of alpha and f is finite on the closed interval [0, T]; d/dt of sigma, sigma^2, g
    and lambda is finite on (0, T]. (At t = 0, sigma ~ sqrt(t) and lambda ~ -log t have
    infinite slope, and autodiff of sigma^2 = sqrt(v)^2 gives 0 * inf there.)"""

    def rough(s):
        a, sig = sde.marginal(s)
        return sig + sig**2 + sde.coefficients(s)[1] + sde.log_snr(s)

    @jax.jit  # both gradients in one program
    def grads(t):
        closed = jax.vmap(jax.grad(lambda s: sde.marginal(s)[0] + sde.coefficients(s)[0]))(t)
        return closed, jax.vmap(jax.grad(rough))(t[1:])

    closed, open_ = grads(_on_interval(sde, n=65))
    assert all_finite(closed)
    assert all_finite(open_)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_exact_score_finite_at_both_ends(sde):
    """The mixture oracle's score and eps are finite at t = T and at the smallest t_eps used by
    the samplers (1e-5), in float32 and float64."""
    for dtype in DTYPES:
        with jax.enable_x64(dtype == jnp.float64):
            gm = mixture_2d(dtype)
            x = jnp.array([0.4, -0.3], dtype)
            for t in (1e-5, sde.T):
                tt = jnp.asarray(t, dtype)
                assert all_finite(gm.score_fn(sde)(tt, x), gm.eps_fn(sde)(tt, x))


# ------------------------------------------------------------------ discrete schedules
@functools.cache
def _schedules(dtype):
    """The six 1000-step schedules in `dtype` (built once per process: shared by the two tests
    below, which run in one xdist group)."""
    with jax.enable_x64(dtype == jnp.float64):
        out = {
            "linear": sd.DiscreteSchedule.linear(1000, dtype=dtype),
            "cosine": sd.DiscreteSchedule.cosine(1000, dtype=dtype),
        }
        for name, sde in zip(SDE_IDS, ALL_LINEAR_SDES):
            out["from_" + name] = sd.DiscreteSchedule.from_sde(sde, 1000, dtype=dtype)
        return out


SCHEDULES_GROUP = pytest.mark.xdist_group("reliability-schedules")


@jax.jit
def _derived(s):
    """log-SNR table, betas and the marginal at every index: one program per dtype (the six
    schedules share their shapes)."""
    n = jnp.arange(s.num_steps + 1)
    return s.log_snr(), s.betas, jax.vmap(s.marginal)(n)


@SCHEDULES_GROUP
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_discrete_schedules_finite_and_monotone(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        for name, s in _schedules(dtype).items():
            lam, betas, alpha, sigma = (np.asarray(a) for a in jax.tree.leaves(_derived(s)))
            assert s.alpha_bar.dtype == dtype, name
            ab, log_ab, om = (
                np.asarray(a) for a in (s.alpha_bar, s.log_alpha_bar, s.one_minus_alpha_bar)
            )
            assert float(ab[0]) == 1.0 and all_finite(ab, betas, lam[1:]), name
            # stored as log(alpha_bar), strictly decreasing; alpha_bar itself may round to 1 in
            # float32 for the first steps (1 - alpha_bar ~ 1e-8 for sub-VP), so non-increasing
            assert bool(np.all(np.diff(log_ab) < 0)), name
            assert bool(np.all(np.diff(ab) <= 0)) and bool(np.all(ab[1:] > 0)), name
            assert bool(np.all(om[1:] > 0)), name
            assert bool(np.all((betas[1:] > 0) & (betas[1:] < 1))), name
            assert bool(np.all(np.diff(lam[1:]) < 0)), name
            assert all_finite(alpha, sigma) and float(sigma[0]) == 0.0, name


@SCHEDULES_GROUP
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_posterior_coefficients_and_variances_finite_for_all_pairs(dtype):
    """Every pair m < n of a 1000-step schedule, including m = 0 and n = N: coefficients finite,
    0 <= tilde beta_{m|n} <= 1 - alpha_bar_m, and the DDPM/DDIM variances sandwich it."""
    N = 1000
    kinds = ("ddim", "ddpm", "ddpm_beta", "eta")
    with jax.enable_x64(dtype == jnp.float64):
        n = jnp.array([1, 2, 10, 500, 999, N, N, N, N, 700])
        m = jnp.array([0, 1, 0, 499, 0, 0, N - 1, 1, 500, 300])
        tau = sd.respace(N, 50, "quadratic")
        gamma = np.linspace(0.0, 1.0, N + 1).astype(dtype)

        @jax.jit  # one program per dtype for the six schedules (same shapes)
        def run(s):
            c0, cn, var = sd.forward_posterior(s, n, m)
            ddim = sd.forward_posterior(s, n, m, jnp.zeros_like(var))
            rev = [sd.reverse_variances(s, tau, kind, eta=0.5) for kind in kinds]
            lo, hi = sd.analytic.variance_bounds(s, tau)
            opt = sd.analytic.optimal_variances(s, tau, gamma)
            return (c0, cn, var), ddim, rev, (lo, hi, opt)

        for name, s in _schedules(dtype).items():
            assert s.num_steps == N
            out = run(s)
            assert out[0][0].dtype == dtype
            (c0, cn, var), ddim, rev, (lo, hi, opt) = jax.tree.map(np.asarray, out)
            om_m = np.asarray(s.one_minus_alpha_bar)[np.asarray(m)]
            assert all_finite(c0, cn, var), name
            tol = 64 * float(jnp.finfo(dtype).eps)
            assert bool(np.all((var >= 0) & (var <= om_m * (1 + tol)))), name
            # DDIM (lam2 = 0) coefficients, and the eta sweep of the reverse variances
            assert all_finite(*ddim), name
            for kind, v in zip(kinds, rev):
                assert all_finite(v) and bool(np.all(v >= 0)), (name, kind)
            assert all_finite(lo, hi, opt), name
            assert bool(np.all((opt >= lo * (1 - tol)) & (opt <= hi * (1 + tol)))), name


# ------------------------------------------------------------------ float64 end to end
def _float_dtypes_in(jaxpr, found=None):
    """Every floating dtype of every value in a (closed) jaxpr, sub-jaxprs included."""
    found = set() if found is None else found
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for v in list(jaxpr.invars) + list(jaxpr.constvars):
        dt = getattr(v.aval, "dtype", None)
        if dt is not None and jnp.issubdtype(dt, jnp.floating):
            found.add(jnp.dtype(dt).name)
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            dt = getattr(v.aval, "dtype", None)
            if dt is not None and jnp.issubdtype(dt, jnp.floating):
                found.add(jnp.dtype(dt).name)
        for p in eqn.params.values():
            for q in p if isinstance(p, (tuple, list)) else (p,):
                if hasattr(q, "eqns") or hasattr(getattr(q, "jaxpr", None), "eqns"):
                    _float_dtypes_in(q, found)
    return found


def test_float64_honoured_end_to_end_in_every_public_function():
    """For every case of the composability registry, the float64 program contains no float32
    (or lower) value anywhere: no constant, intermediate or sub-computation is silently
    downcast. Checked on the traced program (`jax.make_jaxpr`), so nothing is compiled."""
    from test_transforms import REGISTRY

    offenders, done = {}, {}
    for name, case in sorted(REGISTRY.items()):
        if case in done:  # names sharing a case were traced together
            continue
        fn, a1, _ = case.build(jnp.float64)
        found = _float_dtypes_in(jax.make_jaxpr(fn)(*a1))
        done[case] = found
        low = found - {"float64"}
        if low:
            offenders[name] = sorted(low)
    print(
        f"\nfloat64 end to end: {len(REGISTRY)} public callables traced in {len(done)} "
        f"programs, offenders {offenders}"
    )
    assert not offenders, offenders


def test_float64_pipeline_accuracy():
    """A float64 pipeline reaches float64 accuracy (a float32 step would cap it near 1e-7):
    encode then decode with a tight-tolerance solver returns the point to 1e-9."""
    gm = mixture_2d()
    sde = sd.VPSDE()
    score = gm.score_fn(sde)
    x = jnp.array([0.3, -0.2])
    tight: dict[str, Any] = dict(
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11), max_steps=100_000
    )
    z = cast(jax.Array, sd.encode(sde, score, x, **tight))
    back = cast(jax.Array, sd.decode(sde, score, z, **tight))
    assert back.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(back - x))) < 1e-9


# ------------------------------------------------------------------ determinism
@functools.cache
def _samplers():
    """Functions `f(key, x)` drawing something with every random public entry point."""
    gm = mixture_2d()
    vp = sd.VPSDE()
    score, eps = gm.score_fn(vp), gm.eps_fn(vp)
    sched = sd.DiscreteSchedule.linear(100, 1e-3, 0.1)
    deps = sd.toy.discrete_eps_fn(gm, sched)
    tau = sd.respace(100, 10)
    pm = sd.reparam.PerturbMax(jnp.array([0.3, -0.2, 0.5]), sd.reparam.Gaussian())
    loose = diffrax.PIDController(rtol=1e-3, atol=1e-3)
    return {
        "sample_ode": lambda k, x: sd.sample_ode(
            k, vp, score, (2,), solver=diffrax.Heun(), stepsize_controller=loose
        ),
        "sample_sde": lambda k, x: sd.sample_sde(k, vp, score, (2,), num_steps=8),
        "sample_pc": lambda k, x: sd.sample_pc(k, vp, score, (2,), num_steps=4),
        "sample_dpm_solver": lambda k, x: sd.sample_dpm_solver(k, vp, eps, (2,), num_steps=5),
        "simulate_sde": lambda k, x: sd.simulate_sde(k, vp, x, 0.0, 1.0, num_steps=8),
        "sample_discrete": lambda k, x: sd.sample_discrete(k, sched, deps, x, tau),
        "perturb": lambda k, x: sd.perturb(k, vp, x, 0.5),
        "gm.sample": lambda k, x: gm.sample(k, 4),
        "diffusion_loss": lambda k, x: sd.diffusion_loss(k, vp, eps, x, time_sampling="importance"),
        "variational_bound": lambda k, x: (
            old_bound(k, sched, deps, x, tau, decoder="gaussian").total
        ),
        "PerturbMax.relaxed_sample": lambda k, x: pm.relaxed_sample(k, 0.5, (2,)),
    }


X_DET = (0.3, -0.2)


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


KEY_SEED = 1234


@functools.cache
def _jitted_digest(name: str) -> str:
    """The digest of `name`'s draw under jax.jit (cached: shared by the two determinism tests,
    which run in one xdist group)."""
    key, x = jax.random.key(KEY_SEED), jnp.asarray(X_DET)
    return _digest(jax.jit(_samplers()[name])(key, x))


DETERMINISM_GROUP = pytest.mark.xdist_group("reliability-determinism")


@DETERMINISM_GROUP
def test_same_key_bit_identical_jitted_and_eager():
    """Every sampler gives bit-identical draws from the same key, eager and under jax.jit
    (with the data as an argument of the jitted function, as in a training or sampling loop).

    jaxtyping's run-time checks run on the jitted call (traced with the same argument types);
    the eager call, the same function on the same types, runs without them (they were ~20 % of
    the test's CPU and check nothing the jitted call has not)."""
    key, x = jax.random.key(KEY_SEED), jnp.asarray(X_DET)
    for name, f in _samplers().items():
        jitted = _jitted_digest(name)
        with no_runtime_typecheck():
            eager = _digest(f(key, x))
        assert eager == jitted, name


_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    from test_reliability import _draw_digests
    print(json.dumps(_draw_digests({names!r})))
    """
)

# a cheap subset for the second process (the PRNG is counter-based; what matters is that
# nothing in the library draws from hidden state, e.g. a seed taken from the clock)
CROSS_PROCESS = (
    "perturb",
    "sample_discrete",
    "gm.sample",
    "PerturbMax.relaxed_sample",
)


def _draw_digests(names) -> dict:
    key, x = jax.random.key(KEY_SEED), jnp.asarray(X_DET)
    fs = _samplers()
    return {n: _digest(fs[n](key, x)) for n in names}


@DETERMINISM_GROUP
def test_same_key_bit_identical_across_processes():
    """A fresh Python process draws exactly the same bits from the same key."""
    import json

    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(tests=here, names=CROSS_PROCESS)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child == {n: _jitted_digest(n) for n in CROSS_PROCESS}


# ------------------------------------------------------------------ jax_debug_nans
def test_debug_nans_subset():
    """`jax_debug_nans` in the ordinary run: the flag is live (a compiled NaN raises), and the
    four SDEs' coefficients and their t-gradients, evaluated eagerly under it, produce no NaN in
    any primitive, masked or not (the VE SDE's log-space branch once gave a NaN gradient at a
    finite value: a `sqrt(0)` in an unselected `where` branch). The library's pipelines run
    under the flag in `make test-debug-nans`, the whole suite with the flag on."""
    with jax.debug_nans(True):
        with pytest.raises(FloatingPointError):
            jax.jit(jnp.log)(jnp.array([-1.0]))
        for sde in ALL_LINEAR_SDES:
            t = jnp.linspace(0.0, sde.T, 9)[1:]
            jax.vmap(lambda s: (sde.marginal(s), sde.coefficients(s), sde.log_snr(s)))(t)
            jax.vmap(jax.grad(lambda s: sum(sde.marginal(s)) + sde.log_snr(s)))(t)


def test_suite_runs_with_debug_nans():
    """`make test-debug-nans` (SCOREDYN_DEBUG_NANS=1) runs every test file with jax_debug_nans
    on; this sentinel proves the flag is live in that run (a compiled NaN raises)."""
    if os.environ.get("SCOREDYN_DEBUG_NANS", "0") != "1":
        pytest.skip("the debug-nans run is `make test-debug-nans`")
    assert jax.debug_nans.value
    with pytest.raises(FloatingPointError):
        jax.jit(jnp.log)(jnp.array([-1.0]))
