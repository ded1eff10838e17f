"""Grids as values (`sd.grids`): continuous time grids and discrete trajectories.

Each grid is checked against its definition (end points exact, monotone, equal steps in the
right coordinate) and against independent facts: the floats of the old DPM-Solver grids, a
plain-Python transcription of the official Analytic-DPM rule, and timestep lists printed by
diffusers' docs, tests and issues.
"""

import contextlib
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
from helpers import ALL_LINEAR_SDES, SDE_IDS, no_runtime_typecheck
from scoredyn import grids

CONTINUOUS = [grids.uniform, grids.quadratic, grids.log_snr, grids.karras]
CONT_IDS = ["uniform", "quadratic", "log_snr", "karras"]
# The grid lengths of this file: a grid is computed eagerly, op by op, and each op compiles once
# per shape, so the tests share these few lengths (and their compiled ops)
KS = [1, 2, 7, 40]
DISCRETE = [
    grids.uniform_trajectory,
    grids.quadratic_trajectory,
    grids.even,
    grids.leading,
    grids.trailing,
    grids.linspace,
]


def _typechecked_once(i: int, first: int):
    """jaxtyping's run-time check (`make test` runs with `--jaxtyping-packages`) on where
    `i == first` in a loop over thousands of (N, K), off elsewhere: it is most of those loops' CPU
    time (Python-side signature checks on every call) and checks nothing the loops do not: the
    annotations are the same for every K, and `_as_list` asserts the int32 `jax.Array`."""
    return contextlib.nullcontext() if i == first else no_runtime_typecheck()


def _as_list(tau):
    """A rule's output as a list, after checking it is an int32 `jax.Array`."""
    assert isinstance(tau, jax.Array) and tau.dtype == jnp.int32
    return np.asarray(tau).tolist()


def _span_uniform(c, rtol=1e-12):
    """Equal steps in the coordinate `c`, relative to its total span."""
    c = np.asarray(c)
    d = np.diff(c)
    assert np.ptp(d) <= rtol * abs(c[-1] - c[0]), (np.ptp(d), abs(c[-1] - c[0]))


def _noise_level(sde, t):
    """s = sigma / alpha = exp(-lambda / 2)."""
    return np.exp(-0.5 * np.asarray(_lam(sde, t)))


def _lam(sde, t):
    """lambda(t) at every node (the SDE methods take a scalar time)."""
    return jax.vmap(sde.log_snr)(jnp.atleast_1d(jnp.asarray(t)))


# ------------------------------------------------------------------------ continuous grids
@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("grid_fn", CONTINUOUS, ids=CONT_IDS)
@pytest.mark.parametrize("K", KS)
def test_continuous_end_points_and_monotone(grid_fn, sde, K):
    """Shape (K+1,), grid[0] == T and grid[-1] == t_eps exactly, strictly decreasing."""
    t_eps = 1e-3
    g = grid_fn(sde, K, t_eps=t_eps)
    assert isinstance(g, jax.Array) and g.shape == (K + 1,) and g.dtype == jnp.float64
    g = np.asarray(g)  # checked on the host: no eager jnp op compiled per shape
    assert g[0] == sde.T and g[-1] == t_eps
    assert np.all(np.diff(g) < 0)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_equal_steps_in_the_right_coordinate(sde):
    """uniform: t; quadratic: sqrt(t); log_snr: lambda(t); karras: s^(1/rho), s = sigma/alpha.

    Equal steps to 1e-12 of the coordinate's span (float64). The karras and log_snr grids
    pass through the process's `time_at_log_snr` and back through `log_snr`, so the check
    also covers that round trip."""
    K = 40
    _span_uniform(grids.uniform(sde, K))
    _span_uniform(np.sqrt(np.asarray(grids.quadratic(sde, K))))
    _span_uniform(_lam(sde, grids.log_snr(sde, K)))
    for rho in (1.0, 3.0, 7.0):
        s = _noise_level(sde, grids.karras(sde, K, rho=rho))
        _span_uniform(s ** (1.0 / rho))


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_karras_is_the_edm_formula(sde):
    """The noise levels s(t_i) equal EDM's Eq. 5 evaluated directly (power form, NumPy) with
    s_max = s(T), s_min = s(t_eps); to 1e-12 relative."""
    K, rho, t_eps = 40, 7.0, 1e-3
    s_max, s_min = float(_noise_level(sde, sde.T)[0]), float(_noise_level(sde, t_eps)[0])
    i = np.arange(K + 1)
    ref = (s_max ** (1 / rho) + i / K * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    s = _noise_level(sde, grids.karras(sde, K, rho=rho, t_eps=t_eps))
    np.testing.assert_allclose(s, ref, rtol=1e-12)


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
def test_karras_rho_limit_is_the_log_snr_grid(sde):
    """s_i^(1/rho) uniform tends to log s_i uniform as rho -> inf: the gap to the log_snr grid
    falls like 1/rho (ratio 10 +- 1% per decade from 1e4 to 1e6), and is < 1e-5 at 1e6."""
    ref = np.asarray(grids.log_snr(sde, 40))
    gaps = [float(np.max(np.abs(grids.karras(sde, 40, rho=r) - ref))) for r in (1e4, 1e5, 1e6)]
    assert gaps[0] / gaps[1] == pytest.approx(10.0, rel=1e-2)
    assert gaps[1] / gaps[2] == pytest.approx(10.0, rel=1e-2)
    assert gaps[2] < 1e-5


def test_karras_sigma_range():
    """Explicit sigma_min / sigma_max: the interior follows that curve, the ends stay T, t_eps."""
    sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    K, rho, t_eps, lo, hi = 7, 7.0, 1e-5, 0.02, 20.0
    g = np.asarray(grids.karras(sde, K, t_eps=t_eps, rho=rho, sigma_min=lo, sigma_max=hi))
    assert g[0] == sde.T and g[-1] == t_eps and np.all(np.diff(g) < 0)
    i = np.arange(1, K)
    ref = (hi ** (1 / rho) + i / K * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    np.testing.assert_allclose(_noise_level(sde, g[1:-1]), ref, rtol=1e-12)
    # the defaults, passed explicitly, give the default grid
    s_lo, s_hi = float(_noise_level(sde, t_eps)[0]), float(_noise_level(sde, sde.T)[0])
    np.testing.assert_allclose(
        grids.karras(sde, K, t_eps=t_eps, sigma_min=s_lo, sigma_max=s_hi),
        grids.karras(sde, K, t_eps=t_eps),
        rtol=1e-14,
    )


def _time_grid():
    try:
        from scoredyn._solve.dpm_solver import time_grid
    except ImportError:  # the old DPM-Solver may be retired by the sampling-layer redesign
        pytest.skip("scoredyn._solve.dpm_solver.time_grid is gone")
    return time_grid


@pytest.mark.parametrize("sde", ALL_LINEAR_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_same_floats_as_the_old_dpm_solver_grids(sde, dtype):
    """uniform and quadratic are bit for bit DPM-Solver's "time_uniform" / "time_quadratic"
    (eager against eager, jit against jit); log_snr is its "logSNR" grid (bisection there,
    `time_at_log_snr` here) to 1e-12 in float64 and 2e-6 in float32."""
    time_grid = _time_grid()
    t_eps = 1e-3
    jit_old = jax.jit(time_grid, static_argnums=(1, 3, 4))
    for K in (2, 40):
        for fn, skip in ((grids.uniform, "time_uniform"), (grids.quadratic, "time_quadratic")):
            new = fn(sde, K, t_eps=t_eps, dtype=dtype)
            assert new.dtype == dtype
            np.testing.assert_array_equal(new, time_grid(sde, K, t_eps, skip, dtype))
            new_jit = jax.jit(fn, static_argnums=1, static_argnames="dtype")(sde, K, dtype=dtype)
            np.testing.assert_array_equal(new_jit, jit_old(sde, K, t_eps, skip, dtype))
        tol = 1e-12 if dtype == jnp.float64 else 2e-6
        np.testing.assert_allclose(
            grids.log_snr(sde, K, t_eps=t_eps, dtype=dtype),
            time_grid(sde, K, t_eps, "logSNR", dtype),
            rtol=0,
            atol=tol,
        )


@pytest.mark.parametrize("grid_fn", CONTINUOUS, ids=CONT_IDS)
def test_dtype(grid_fn):
    """The grid follows `dtype` (float32 / float64); the default is float64 under x64."""
    sde = sd.VPSDE()
    g32 = grid_fn(sde, 7, dtype=jnp.float32)
    assert g32.dtype == jnp.float32
    g32 = np.asarray(g32)
    assert g32[0] == 1.0 and g32[-1] == np.float32(1e-3)
    assert np.all(np.diff(g32) < 0)
    np.testing.assert_allclose(g32, grid_fn(sde, 7), rtol=2e-6, atol=1e-7)
    assert grid_fn(sde, 7).dtype == jnp.float64
    with pytest.raises(TypeError, match="dtype"):
        grid_fn(sde, 7, dtype=jnp.int32)


@pytest.mark.parametrize("grid_fn", CONTINUOUS, ids=CONT_IDS)
def test_jit_and_vmap(grid_fn):
    """num_steps is static; t_eps (and karras' rho) may be traced: one jit(vmap) over t_eps
    (and rho) gives one grid per value, the first equal to the eager grid to 1e-15.

    (One compiled program checks both transforms; the grids with constant ends are also in
    the solvers' case of test_transforms.py.)"""
    sde = sd.SubVPSDE()  # log_snr and karras invert lambda by bisection here
    K = 7
    eager = grid_fn(sde, K, t_eps=1e-3)
    if grid_fn is grids.karras:
        f = lambda te, r: grid_fn(sde, K, t_eps=te, rho=r)
    else:
        f = lambda te, r: grid_fn(sde, K, t_eps=te)
    batch = jax.jit(jax.vmap(f))(jnp.array([1e-3, 1e-2]), jnp.array([7.0, 3.0]))
    assert batch.shape == (2, K + 1)
    np.testing.assert_allclose(batch[0], eager, rtol=1e-15, atol=1e-15)
    assert float(batch[1, -1]) == 1e-2 and float(batch[1, 0]) == sde.T
    if grid_fn is grids.karras:
        np.testing.assert_allclose(
            batch[1], grids.karras(sde, K, t_eps=1e-2, rho=3.0), rtol=1e-14, atol=1e-15
        )


@pytest.mark.parametrize("grid_fn", CONTINUOUS, ids=CONT_IDS)
def test_continuous_errors(grid_fn):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="num_steps"):
        grid_fn(sde, 0)
    for bad in (2.0, True, None):
        with pytest.raises(TypeError, match="num_steps"):
            grid_fn(sde, bad)
    for bad in (0.0, -1e-3, 1.0, 2.0, math.nan):
        with pytest.raises(ValueError, match="t_eps"):
            grid_fn(sde, 4, t_eps=bad)
    with pytest.raises(TypeError, match="process"):
        grid_fn(sd.DiscreteSchedule.linear(100), 4)
    with pytest.raises(TypeError, match="process"):
        grid_fn("vp", 4)


def test_karras_errors():
    sde = sd.VPSDE()
    for bad in (0.0, -7.0, math.inf):
        with pytest.raises(ValueError, match="rho"):
            grids.karras(sde, 4, rho=bad)
    with pytest.raises(ValueError, match="sigma_min"):
        grids.karras(sde, 4, sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_max"):
        grids.karras(sde, 4, sigma_max=-1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        grids.karras(sde, 4, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"\[s\(t_eps\), s\(T\)\]"):
        grids.karras(sde, 4, sigma_max=1e4)  # above s(T) ~ 152
    with pytest.raises(ValueError, match=r"\[s\(t_eps\), s\(T\)\]"):
        grids.karras(sde, 4, sigma_min=1e-4)  # below s(t_eps) ~ 0.01


# --------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("N", [1, 2, 7, 100, 1000])
def test_uniform_and_quadratic_trajectories_are_respace(N):
    for K in sorted(k for k in {1, 2, 3, N // 3, N // 2, N} if 1 <= k <= N):
        np.testing.assert_array_equal(grids.uniform_trajectory(N, K), sd.respace(N, K))
        np.testing.assert_array_equal(
            grids.quadratic_trajectory(N, K), sd.respace(N, K, "quadratic")
        )


def _official_even(N, K):
    """The official Analytic-DPM rule for its "linear" trajectory, transcribed in plain Python
    floats: a position starting at 1.0 has the stride (N - 1) / (K - 1) added to it, and each
    of the K positions is rounded with Python's round (half to even). Returns (nodes, ties):
    ties are the 1-based k whose position is exactly a half."""
    stride = (N - 1) / (K - 1)
    position, nodes, ties = 1.0, [], []
    for k in range(1, K + 1):
        if position - math.floor(position) == 0.5:
            ties.append(k)
        nodes.append(round(position))
        position = position + stride
    return nodes, ties


# K in 2..1000 for which some accumulated position of the official rule is exactly a half
# (N = 1000); where the exact value 1 + (k-1)(N-1)/(K-1) is a half but the accumulated float
# is not, the float decides.
EVEN_TIE_KS_N1000 = [
    3, 5, 7, 9, 11, 13, 17, 19, 25, 31, 33, 37, 49, 55, 65, 67, 73, 75, 91, 97, 109, 129, 145,
    149, 163, 193, 205, 217, 223, 257, 271, 289, 297, 325, 337, 371, 379, 385, 433, 445, 487,
    513, 519, 541, 559, 577, 593, 649, 667, 757, 769, 815, 865, 889, 919, 991,
]  # fmt: skip


def test_even_is_the_official_rule_for_every_k():
    """N = 1000, every K in 2..1000: `even` equals the official rule, ties included.

    Exact ties (an accumulated position exactly x.5, rounded to even) happen for the 56 values
    of K in `EVEN_TIE_KS_N1000`: 3, 5, 7, 9, 11, 13, 17, 19, 25, ..., 919, 991 (e.g. K = 3:
    position 500.5 -> 500; K = 7: 167.5 -> 168, 500.5 -> 500, 833.5 -> 834). Elsewhere the
    accumulated float can sit off a true half: K = 15 gives tau_8 = 501 (500.5000000000001),
    K = 21 gives tau_11 = 500 (500.49999999999994), where rounding the exact value would give
    500 (half to even) and 501 (half up)."""
    N = 1000
    tie_ks = []
    for K in range(2, N + 1):
        nodes, ties = _official_even(N, K)
        if ties:
            tie_ks.append(K)
        with _typechecked_once(K, 2):
            assert _as_list(grids.even(N, K)) == [0, *nodes], K
    assert tie_ks == EVEN_TIE_KS_N1000
    assert np.asarray(grids.even(N, 15))[8] == 501 and np.asarray(grids.even(N, 21))[11] == 500
    assert np.asarray(grids.even(N, 3)).tolist() == [0, 1, 500, 1000]
    assert np.asarray(grids.even(N, 7)).tolist() == [0, 1, 168, 334, 500, 667, 834, 1000]
    assert np.asarray(grids.even(N, 10)).tolist() == [0, 1, *range(112, 1001, 111)]
    assert np.asarray(grids.even(N, 1)).tolist() == [0, N]


def test_even_is_a_trajectory_through_one():
    """Every N in 1..60 and K in 1..N: a valid trajectory with tau_1 = 1 (K >= 2)."""
    for N in range(1, 61):
        for K in range(1, N + 1):
            with _typechecked_once(N, 60):  # checked for every K at N = 60
                tau = grids.even(N, K)
                np.testing.assert_array_equal(sd.trajectory(tau, N), tau)
            assert tau.dtype == jnp.int32 and tau.shape == (K + 1,)
            if K >= 2:  # read on the host (an eager index compiles once per shape)
                assert int(np.asarray(tau)[1]) == 1


def _tau(diffusers_timesteps):
    """diffusers' timesteps t (0-based, sampling order) to our tau: [0] + sorted(t + 1)."""
    return [0, *sorted(t + 1 for t in diffusers_timesteps)]


# diffusers' timestep lists (steps_offset = 0), as printed in its docs, tests and issues.
DIFFUSERS_FACTS = [
    # docs/source/en/using-diffusers/schedulers.md, "Timestep spacing" table; also
    # huggingface/diffusers#7401 (all three spacings, N = 1000, K = 10)
    ("leading", 1000, 10, list(range(900, -1, -100))),
    ("trailing", 1000, 10, list(range(999, 98, -100))),
    ("linspace", 1000, 10, list(range(999, -1, -111))),
    # huggingface/diffusers#9261: trailing, N = 1000, K = 13
    ("trailing", 1000, 13, [999, 922, 845, 768, 691, 614, 537, 461, 384, 307, 230, 153, 76]),
    # huggingface/diffusers#2585: leading with steps_offset = 0 ("Actual output"), K = 50,
    # and the list its reporter expected, which is what linspace spacing gives
    ("leading", 1000, 50, list(range(980, -1, -20))),
    (
        "linspace",
        1000,
        50,
        [
            999,
            979,
            958,
            938,
            917,
            897,
            877,
            856,
            836,
            816,
            795,
            775,
            754,
            734,
            714,
            693,
            673,
            652,
            632,
            612,
            591,
            571,
            550,
            530,
            510,
            489,
            469,
            449,
            428,
            408,
            387,
            367,
            347,
            326,
            306,
            285,
            265,
            245,
            224,
            204,
            183,
            163,
            143,
            122,
            102,
            82,
            61,
            41,
            20,
            0,
        ],
    ),  # fmt: skip
    # by hand: N / K = 20 exactly, so arange(1000, 0, -20) - 1
    ("trailing", 1000, 50, list(range(999, 0, -20))),
    # tests/schedulers/test_scheduler_ddim.py::test_steps_offset gives [801, 601, 401, 201, 1]
    # for steps_offset = 1 and K = 5; with offset 0 that is:
    ("leading", 1000, 5, [800, 600, 400, 200, 0]),
    # huggingface/diffusers#10003: linspace and trailing both give 999..0 at K = N = 1000
    ("linspace", 1000, 1000, list(range(999, -1, -1))),
    ("trailing", 1000, 1000, list(range(999, -1, -1))),
]


@pytest.mark.parametrize(("spacing", "N", "K", "timesteps"), DIFFUSERS_FACTS)
def test_diffusers_spacings_match_printed_lists(spacing, N, K, timesteps):
    assert len(timesteps) == K
    tau = getattr(grids, spacing)(N, K)
    assert tau.dtype == jnp.int32
    assert np.asarray(tau).tolist() == _tau(timesteps)


def _trailing_rule(N, K):
    """NumPy's float arange(N, 0, -N/K), transcribed: ceil(N / (N/K)) entries, entry j is
    N + j * delta with delta = (N + step) - N, step = -N/K; rounded half to even; minus 1."""
    step = -N / K
    delta = (N + step) - N
    return [round(N + j * delta) - 1 for j in range(math.ceil((0 - N) / step))]


def _linspace_rule(N, K):
    """NumPy's linspace(0, N - 1, K), transcribed: k * ((N - 1) / (K - 1)), last entry N - 1;
    rounded half to even."""
    if K == 1:
        return [0]
    stride = (N - 1) / (K - 1)
    return [round(k * stride) for k in range(K - 1)] + [N - 1]


@pytest.mark.parametrize("N", [1000, 999, 50])
def test_diffusers_rules_for_every_k(N):
    """Every K in 1..N against plain-Python transcriptions of the three rules. Trailing fails
    (K + 1 float entries, the last rounding to timestep -1) exactly where the transcription
    says so, and raises ValueError there; for N = 1000 that is 62 values of K, the first
    61, 103, 121, 122, 201."""
    bad_trailing = []
    for K in range(1, N + 1):
        lead = [k * (N // K) for k in range(K)]
        ts = _trailing_rule(N, K)
        with _typechecked_once(K, 10):
            assert _as_list(grids.leading(N, K)) == _tau(lead)
            assert _as_list(grids.linspace(N, K)) == _tau(_linspace_rule(N, K))
            if len(ts) == K:
                assert _as_list(grids.trailing(N, K)) == _tau(ts)
            else:
                assert len(ts) == K + 1 and ts[-1] == -1
                bad_trailing.append(K)
                with pytest.raises(ValueError, match="trailing"):
                    grids.trailing(N, K)
    if N == 1000:
        assert len(bad_trailing) == 62 and bad_trailing[:5] == [61, 103, 121, 122, 201]


def test_diffusers_end_points():
    """trailing ends at N; linspace ends at N for K >= 2; leading ends at (K-1)*(N//K) + 1,
    below N unless K = N (diffusers starts from noise there: Lin et al. 2023, Table 2)."""
    N = 1000
    for K in (2, 10, 37, 500, 999, 1000):
        assert int(grids.linspace(N, K)[-1]) == N and int(grids.linspace(N, K)[1]) == 1
        assert int(grids.trailing(N, K)[-1]) == N
        assert int(grids.leading(N, K)[-1]) == (K - 1) * (N // K) + 1
    assert np.asarray(grids.leading(N, N)).tolist() == list(range(N + 1))
    assert np.asarray(grids.linspace(N, 1)).tolist() == [0, 1]


@pytest.mark.parametrize("fn", DISCRETE, ids=lambda f: f.__name__)
def test_discrete_errors(fn):
    with pytest.raises(ValueError, match="`N`|'N'"):
        fn(0, 1)
    with pytest.raises(ValueError, match="`K`|'K'"):
        fn(10, 0)
    with pytest.raises(ValueError, match="`K`|'K'"):
        fn(10, 11)
    with pytest.raises(TypeError, match="`N`|'N'"):
        fn(10.0, 2)
    with pytest.raises(TypeError, match="`K`|'K'"):
        fn(10, True)


def test_discrete_under_jit():
    """N and K are static: the trajectories are constants inside a jitted function."""

    @jax.jit
    def f(x):
        return x[grids.even(100, 5)] + x[grids.trailing(100, 5)]

    x = jnp.arange(101.0)
    np.testing.assert_array_equal(f(x), x[grids.even(100, 5)] + x[grids.trailing(100, 5)])


# ---------------------------------------------------------------------------------- optimal
def test_optimal_wraps_the_analytic_dp():
    sched = sd.DiscreteSchedule.linear(50)
    ms = jnp.sort(jax.random.uniform(jax.random.key(3), (51,), minval=0.05, maxval=0.95))
    for K, free in itertools.product((1, 2, 6, 50), (False, True)):
        np.testing.assert_array_equal(
            grids.optimal(sched, ms, K, free_first=free),
            sd.analytic.optimal_trajectory(sched, ms, K, free_first=free),
        )
    with pytest.raises(ValueError, match="`K`|'K'"):
        grids.optimal(sched, ms, 51)
    with pytest.raises(TypeError, match="`K`|'K'"):
        grids.optimal(sched, ms, 5.0)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="free_first"):
        grids.optimal(sched, ms, 5, free_first=1)  # pyright: ignore[reportArgumentType]
