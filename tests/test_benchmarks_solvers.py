"""Section 7 of `make bench` (benchmarks/solvers.py) on a tiny problem: its floor makes as many
network evaluations as each solver reports, the solver runs agree with `sd.sample`, and the
report renders."""

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scoredyn as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import solvers  # noqa: E402
from benchmarks._common import BenchMLP  # noqa: E402


def test_floor_counts_and_solver_runs():
    sde = sd.VPSDE()
    calls = []

    class Counting(eqx.Module):
        def __call__(self, t, x):
            jax.debug.callback(lambda: calls.append(1))
            return 0.1 * x

    floor = solvers.make_floor(7)
    floor(Counting(), jax.random.key(0), jnp.ones((1, 2), jnp.float32))
    jax.effects_barrier()
    assert len(calls) == 7
    # EDM Heun on a grid that ends at t_eps > 0 takes Heun steps only: 2 per step
    grid = solvers._grid(sde, "EDM Heun", 4)
    assert solvers.nfe(sde, grid, sd.EDMHeun()) == 8
    assert solvers.nfe(sde, solvers._grid(sde, "x", 4), sd.DPMSolverPP(order=2)) == 4
    net = BenchMLP(4, width=8, depth=1, time_dim=4, key=jax.random.key(1))
    x_T = jax.random.normal(jax.random.key(2), (3, 4), jnp.float32)
    grid = solvers._grid(sde, "x", 4)
    ours = jax.jit(solvers.make_solver_run(sde, grid, sd.UniPC()))(net, jax.random.key(0), x_T)
    ref = jax.vmap(lambda z: sd.sample(None, sde, sd.EpsModel(net), sd.UniPC(), grid, z).x)(x_T)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_section_runs_and_reports():
    names = ("DPM-Solver++(2M)", "EDM Heun")
    res = solvers.run(batches=(2,), repeats=1, budget_s=0.5, compile_ks=(2, 4), names=names)
    text = solvers.report(res)
    assert "## 7." in text and all(n in text for n in names)
    for n in names:
        assert np.isfinite(res["rows"][0]["vs_floor"][n])
        assert set(res["compiles"][n]) == {2, 4}
