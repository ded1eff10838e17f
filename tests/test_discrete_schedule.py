"""Discrete schedules and trajectories: closed forms, the VP-SDE limit, float32 ends, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import no_runtime_typecheck


# ---------------------------------------------------------------------------- schedules
def test_linear_matches_cumprod_of_ho_betas():
    # Independent fact: Ho et al.'s alpha_bar = cumprod(1 - linspace(1e-4, 0.02, 1000)), in NumPy.
    sched = sd.DiscreteSchedule.linear(num_steps=1000, beta_start=1e-4, beta_end=0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    ref = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    assert sched.alpha_bar.shape == (1001,)
    assert sched.alpha_bar.dtype == jnp.float64  # x64 is on in the test-suite
    assert sched.num_steps == 1000 and isinstance(sched.num_steps, int)
    assert float(sched.alpha_bar[0]) == 1.0
    np.testing.assert_allclose(sched.alpha_bar, ref, rtol=1e-12)
    np.testing.assert_allclose(sched.betas[1:], betas, rtol=1e-10)
    assert float(sched.betas[0]) == 0.0
    # 1 - alpha_bar is exact near n = 0 (no 1 - (1 - 1e-4) cancellation)
    np.testing.assert_allclose(sched.one_minus_alpha_bar[1:], 1.0 - ref[1:], rtol=1e-9)
    # Ho et al.'s value: alpha_bar_T = 4.04e-5 for this schedule
    assert abs(float(sched.alpha_bar[-1]) - 4.0358e-5) < 1e-8


def test_cosine_matches_closed_form_and_clip():
    # Independent fact: without the clip, alpha_bar_n = f(n/N)/f(0), f(t) = cos^2((t+s)/(1+s) pi/2).
    N, s = 1000, 0.008
    sched = sd.DiscreteSchedule.cosine(N, s=s)
    t = np.arange(N + 1) / N
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    ref = f / f[0]
    betas = np.asarray(sched.betas)
    clipped = betas >= 0.999 - 1e-12
    first_clip = int(np.argmax(clipped))
    assert clipped[-1] and first_clip > 990  # only the last step(s) are clipped
    np.testing.assert_allclose(sched.alpha_bar[:first_clip], ref[:first_clip], rtol=1e-10)
    np.testing.assert_allclose(
        betas[1:first_clip], 1 - ref[1:first_clip] / ref[: first_clip - 1], rtol=1e-8
    )
    assert (betas <= 0.999).all()


@pytest.mark.parametrize("sde_name", ["vp", "cosine", "ve", "subvp"])
def test_from_sde_keeps_log_snr(sde_name):
    sde = {
        "vp": sd.VPSDE(0.1, 20.0),
        "cosine": sd.CosineVPSDE(),
        "ve": sd.VESDE(0.01, 50.0),
        "subvp": sd.SubVPSDE(0.1, 20.0),
    }[sde_name]
    N = 200
    sched = sd.DiscreteSchedule.from_sde(sde, N)
    t = np.arange(1, N + 1) * sde.T / N
    alpha, sigma = jax.vmap(sde.marginal)(jnp.asarray(t))
    # the discrete marginal has the SDE's signal-to-noise ratio alpha^2 / sigma^2
    ab = np.asarray(sched.alpha_bar[1:])
    np.testing.assert_allclose(ab / (1 - ab), (alpha / sigma) ** 2, rtol=1e-8)
    if sde_name in ("vp", "cosine"):
        np.testing.assert_allclose(ab, alpha**2, rtol=1e-10)
    assert float(sched.alpha_bar[0]) == 1.0
    assert sched.T == sde.T
    np.testing.assert_allclose(sched.time(N), sde.T)


def test_linear_converges_to_vp_sde_first_order():
    """DDPM's alpha_bar with beta = linspace(beta_min/N, beta_max/N) -> VP alpha(t)^2: rate 1/N."""
    sde = sd.VPSDE(0.1, 20.0)
    Ns = [100, 200, 400, 800, 1600]
    errs = []
    for N in Ns:
        sched = sd.DiscreteSchedule.linear(N, sde.beta_min / N, sde.beta_max / N)
        # VP: log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2 (NumPy, on the host)
        t = np.arange(N + 1) / N
        exact = np.exp(
            2.0 * (-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
        )
        errs.append(float(np.max(np.abs(np.asarray(sched.alpha_bar) - exact))))
    slope = np.polyfit(np.log(Ns), np.log(errs), 1)[0]
    print(
        f"\n[rate] linear schedule -> VP alpha^2: max error {errs}, slope {slope:.3f} (expected -1)"
    )
    assert -1.1 < slope < -0.9
    assert errs[-1] < 6e-4


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_float32_schedules_finite_at_both_ends(kind):
    make = getattr(sd.DiscreteSchedule, kind)
    s32 = make(1000, dtype=jnp.float32)
    s64 = make(1000, dtype=jnp.float64)
    assert s32.alpha_bar.dtype == jnp.float32
    for arr in (
        s32.alpha_bar,
        s32.log_alpha_bar,
        s32.one_minus_alpha_bar,
        s32.betas,
        s32.log_snr()[1:],
    ):
        assert arr.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(arr)))
    ab32 = np.asarray(s32.alpha_bar)  # checked on the host (eager jnp checks compile per op)
    assert np.all(ab32[1:] > 0) and np.all(np.diff(ab32) < 0)
    # near t = 0: 1 - alpha_bar_1 keeps full relative precision in float32
    np.testing.assert_allclose(
        s32.one_minus_alpha_bar[1:4], s64.one_minus_alpha_bar[1:4], rtol=1e-6
    )
    # near alpha_bar = 0 (cosine: alpha_bar_N ~ 2e-9): log alpha_bar stays accurate
    np.testing.assert_allclose(s32.log_alpha_bar[-3:], s64.log_alpha_bar[-3:], rtol=1e-5)
    a, sg = s32.marginal(1000)
    assert bool(jnp.isfinite(a)) and bool(jnp.isfinite(sg)) and float(a) > 0


def test_schedule_gradient_closed_form():
    """The gradient of alpha_bar_N in beta_end against its closed form, and the jitted value
    against the eager schedule's. (jit, vmap, grad with a finite-difference check, float32 and
    float64 of the constructors and methods: the DiscreteSchedule case of test_transforms.py;
    a schedule crossing a jit boundary as an argument: test_batched.py.)"""
    f = lambda b: sd.DiscreteSchedule.linear(100, 1e-4, b).alpha_bar[-1]  # noqa: E731
    value, g = jax.jit(jax.value_and_grad(f))(0.02)
    np.testing.assert_allclose(value, sd.DiscreteSchedule.linear(100, 1e-4, 0.02).alpha_bar[-1])
    # d alpha_bar_N / d beta_end = -alpha_bar_N * sum_n (dbeta_n/dbeta_end) / (1 - beta_n)
    betas = np.linspace(1e-4, 0.02, 100)
    frac = np.arange(100) / 99
    ref = -np.prod(1 - betas) * np.sum(frac / (1 - betas))
    np.testing.assert_allclose(g, ref, rtol=1e-8)


@no_runtime_typecheck()
def test_schedule_validation():
    with pytest.raises(ValueError, match="beta_end"):
        sd.DiscreteSchedule.linear(10, 0.02, 0.01)
    with pytest.raises(ValueError, match="beta_start"):
        sd.DiscreteSchedule.linear(10, 0.0, 0.01)
    with pytest.raises(ValueError, match="beta_end"):
        sd.DiscreteSchedule.linear(10, 0.01, 1.0)
    with pytest.raises(ValueError, match="beta_start"):
        sd.DiscreteSchedule.linear(10, float("nan"), 0.01)
    with pytest.raises(ValueError, match="num_steps"):
        sd.DiscreteSchedule.linear(0)
    with pytest.raises(TypeError, match="num_steps"):  # ill-typed on purpose
        sd.DiscreteSchedule.linear(10.0)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`s`"):
        sd.DiscreteSchedule.cosine(10, s=-1.0)
    with pytest.raises(ValueError, match="max_beta"):
        sd.DiscreteSchedule.cosine(10, max_beta=1.0)
    with pytest.raises(ValueError, match="betas"):
        sd.DiscreteSchedule.from_betas(jnp.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="alpha_bar\\[0\\]"):
        sd.DiscreteSchedule(jnp.array([0.9, 0.5]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sd.DiscreteSchedule(jnp.array([1.0, 0.5, 0.6]))
    with pytest.raises(TypeError, match="linear SDE"), no_runtime_typecheck():
        sd.DiscreteSchedule.from_sde(sd.SDE(lambda t, x: -x, lambda t, x: 1.0), 10)  # pyright: ignore[reportArgumentType]
    sched = sd.DiscreteSchedule.linear(10)
    with pytest.raises(ValueError, match="`n`"):
        sched.marginal(11)
    with pytest.raises(TypeError, match="`n`"):
        sched.marginal(1.5)


# ---------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("kind", ["uniform", "quadratic"])
@pytest.mark.parametrize(
    "N,K", [(1000, 10), (1000, 1000), (7, 3), (10, 1), (1000, 999), (4000, 25)]
)
def test_respace_is_a_valid_trajectory(kind, N, K):
    tau = np.asarray(sd.respace(N, K, kind))
    assert tau.shape == (K + 1,)
    assert tau[0] == 0 and tau[-1] == N
    assert (np.diff(tau) > 0).all()
    if K == N:
        np.testing.assert_array_equal(tau, np.arange(N + 1))
    if kind == "uniform":  # nearest integer to k N / K
        np.testing.assert_allclose(tau, np.floor(np.arange(K + 1) * N / K + 0.5))
    else:  # quadratic: short steps near 0, step lengths non-decreasing up to rounding
        assert (np.diff(np.diff(tau)) >= -1).all()
        assert tau[1] <= np.diff(tau)[-1]


def test_respace_known_values():
    np.testing.assert_array_equal(sd.respace(1000, 4), [0, 250, 500, 750, 1000])
    np.testing.assert_array_equal(sd.respace(1000, 4, "quadratic"), [0, 63, 251, 563, 1000])


@no_runtime_typecheck()
def test_trajectory_validation():
    np.testing.assert_array_equal(sd.trajectory([0, 3, 10], 10), [0, 3, 10])
    np.testing.assert_array_equal(sd.trajectory([10, 3, 0], 10), [0, 3, 10])  # DDIM-style
    with pytest.raises(ValueError, match="K"):
        sd.respace(10, 11)
    # the pyright-ignored calls below are ill-typed on purpose: scoredyn's own errors
    with pytest.raises(TypeError, match="K"):
        sd.respace(10, 2.0)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="K"):
        sd.respace(10, True)
    with pytest.raises(ValueError, match="kind"):
        sd.respace(10, 2, "cubic")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="duplicate"):
        sd.trajectory([0, 3, 3, 10], 10)
    with pytest.raises(ValueError, match="decrease"):
        sd.trajectory([0, 5, 3, 10], 10)
    with pytest.raises(ValueError, match="inside 0..N"):
        sd.trajectory([0, 5, 12], 10)
    with pytest.raises(ValueError, match="start at 0"):
        sd.trajectory([1, 5, 10], 10)
    with pytest.raises(ValueError, match="end at N"):
        sd.trajectory([0, 5, 9], 10)
    with pytest.raises(ValueError, match="K <= N"):
        sd.trajectory(list(range(12)), 10)
    with pytest.raises(TypeError, match="indices"):
        sd.trajectory([0.0, 5.0, 10.0], 10)  # pyright: ignore[reportArgumentType]
    # traced indices are checked at run time
    f = jax.jit(lambda idx: sd.trajectory(idx, 10))
    np.testing.assert_array_equal(f(jnp.array([0, 4, 10])), [0, 4, 10])
    with pytest.raises(Exception, match="strictly increasing"):
        f(jnp.array([0, 4, 4]))


def test_notation_map_su():
    """Su's abar_t = sqrt(DDPM alpha_bar) ~ exp(-5 s^2) at s = n / 1000 (approximately)."""
    sched = sd.DiscreteSchedule.linear(1000)
    s = np.arange(1001) / 1000
    abar_su = np.sqrt(np.asarray(sched.alpha_bar))
    assert np.max(np.abs(abar_su - np.exp(-5 * s**2))) < 0.01
    assert math.isclose(float(sched.marginal(1000)[0]), float(abar_su[-1]))
