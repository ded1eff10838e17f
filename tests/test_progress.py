"""Opt-in progress on long work: `progress=` (bool or callable) on the lax loops, diffrax's
`progress_meter=` on the diffrax solves. Every option reports, with the right count and total,
and never changes a result (bit for bit against the default, which adds nothing)."""

from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoredyn as sd
import scoredyn._progress as progress_mod
from helpers import gaussian_1comp, no_runtime_typecheck

N = 20  # schedule steps
GM = gaussian_1comp(d=2)  # an exact, cheap oracle: short compiles
SCHED = sd.DiscreteSchedule.linear(N)
EPS = sd.toy.discrete_eps_fn(GM, SCHED)
DATA = GM.sample(jax.random.key(0), 16)
SDE = sd.VPSDE()
SCORE = sd.ScoreModel(GM.score_fn(SDE))


def assert_bitwise(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class Recorder:
    """A `progress(done, total)` callable that keeps its calls."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


@pytest.fixture
def no_tqdm(monkeypatch):
    """`progress=True` as on a machine without tqdm: text lines on stderr."""
    monkeypatch.setattr(progress_mod, "_find_tqdm", lambda: None)


# ---------------------------------------------------------------------- estimate_gamma
def _gamma(progress):
    # B = 16 samples per batch and P = chunk_size // B = 2 steps per chunk: 10 chunks
    return sd.analytic.estimate_gamma(
        jax.random.key(1), SCHED, EPS, DATA, chunk_size=32, progress=progress
    )


def test_estimate_gamma_callable_and_bits():
    rec = Recorder()
    got = _gamma(rec)
    jax.effects_barrier()
    assert rec.calls == [(n, N) for n in range(2, N + 1, 2)]  # one call per chunk, in order
    assert_bitwise(got, _gamma(False))


def test_estimate_gamma_text(capfd, no_tqdm):
    got = _gamma(True)
    jax.effects_barrier()
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"estimate_gamma: 2/{N} steps"
    assert lines[-1] == f"estimate_gamma: {N}/{N} steps"
    assert len(lines) == N // 2  # every chunk is another 10% (>= 5%), so each has a line
    assert_bitwise(got, _gamma(False))


def test_estimate_gamma_tqdm(capfd):
    pytest.importorskip("tqdm")
    _gamma(True)
    _gamma(True)  # the same compiled program: a fresh bar for the second run
    jax.effects_barrier()
    err = capfd.readouterr().err
    assert err.count(f"{N}/{N}") == 2 and "estimate_gamma" in err


def test_progress_type_error():
    chain = sd.DDPM().chain(SCHED, sd.respace(N, 4))
    with no_runtime_typecheck():  # scoredyn's own message, as without the test-time checks
        with pytest.raises(TypeError, match="`progress`"):
            _gamma("yes")
        with pytest.raises(TypeError, match="`progress`"):
            bad: Any = 1
            sd.variational_bound(
                jax.random.key(0),
                SCHED,
                sd.EpsModel(EPS),
                chain,
                DATA[0],
                levels=None,
                progress=bad,
            )


# ------------------------------------------------------------------- variational_bound
@pytest.mark.parametrize("K", [1, 5])
def test_variational_bound_over_a_data_set(K):
    """vmapped over a data set: one report per step for the whole batch, not per example (K = 1:
    the decoder alone, one report)."""
    # (built eagerly, outside the programs: with the chain traced inside them, the progress and
    # plain programs were measured to differ in the last bits at K = 5)
    chain = sd.DDPM().chain(SCHED, sd.respace(N, K))
    keys = jax.random.split(jax.random.key(2), DATA.shape[0])

    def bound(progress):
        one = lambda k, x: sd.variational_bound(
            k, SCHED, sd.EpsModel(EPS), chain, x, levels=None, progress=progress
        )
        return jax.vmap(one)(keys, DATA)

    rec = Recorder()
    got = jax.jit(lambda: bound(rec))()
    jax.effects_barrier()
    assert rec.calls == [(k, K) for k in range(min(2, K), K + 1)]  # k = 1 is the decoder
    assert_bitwise(got, jax.jit(lambda: bound(False))())


# ------------------------------------------------------------------- diffrax solves
# fixed steps keep the compiles short; the meters are the same for any solver
EULER: dict[str, Any] = dict(
    solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.05
)


def test_ode_progress_meter(capfd):
    """Over a batch (jax.vmap): ONE meter, following the slowest element."""
    grid = jnp.array([SDE.T, 1e-3])
    xs = jax.jit(  # one program (eagerly, each operation of the draw compiles on its own)
        lambda: jax.vmap(lambda k: SDE.prior_sample(k, (2,)))(
            jax.random.split(jax.random.key(4), 3)
        )
    )()
    ode = sd.ODE(**EULER, progress_meter=diffrax.TextProgressMeter())
    got = jax.vmap(lambda x: sd.sample(None, SDE, SCORE, ode, grid, x))(xs)
    jax.effects_barrier()
    out = capfd.readouterr().out.split()
    assert out[0] == "0.00%" and out[-1] == "100.00%" and out.count("0.00%") == 1
    plain = jax.vmap(lambda x: sd.sample(None, SDE, SCORE, sd.ODE(**EULER), grid, x))(xs)
    assert_bitwise(got, plain)


def test_diffrax_sde_progress_meter(capfd):
    pytest.importorskip("tqdm")
    # grid and start as one program (eagerly, each of their operations compiles on its own)
    grid, x_T = jax.jit(
        lambda: (sd.grids.uniform(SDE, 10), SDE.prior_sample(jax.random.key(5), (2,)))
    )()
    key = jax.random.key(6)
    plain = sd.sample(key, SDE, SCORE, sd.DiffraxSDE(), grid, x_T)
    bar = sd.DiffraxSDE(progress_meter=diffrax.TqdmProgressMeter(refresh_steps=2))
    got = sd.sample(key, SDE, SCORE, bar, grid, x_T)
    jax.effects_barrier()
    err = capfd.readouterr().err
    assert "100.00%" in err and err.count("\n") == 1  # one bar, closed once
    assert_bitwise(got, plain)


def test_likelihood_progress_meter(capfd):
    x = jnp.array([0.9, 0.1])
    score = GM.score_fn(SDE)
    kw: dict[str, Any] = dict(EULER, return_stats=True)
    plain = sd.log_likelihood(SDE, score, x, **kw)
    meter = diffrax.TextProgressMeter()
    got = sd.log_likelihood(SDE, score, x, progress_meter=meter, **kw)
    jax.effects_barrier()
    out = capfd.readouterr().out.split()
    assert out[0] == "0.00%" and out[-1] == "100.00%"
    assert_bitwise(got, plain)


@no_runtime_typecheck()
def test_progress_meter_type_error():
    with pytest.raises(TypeError, match="`progress_meter`"):
        sd.ODE(progress_meter=True)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="`progress_meter`"):
        sd.DiffraxSDE(progress_meter="tqdm")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="`progress_meter`"):
        sd.log_likelihood(
            SDE,
            GM.score_fn(SDE),
            jnp.zeros(2),
            progress_meter=print,  # pyright: ignore[reportArgumentType]
        )
