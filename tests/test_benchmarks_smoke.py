"""Cheap checks of the benchmark machinery (the full run is `make bench`)."""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import scoredyn as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    compile as bench_compile,
    ode as bench_ode,
    overhead,
    quality,
)
from benchmarks._common import BenchMLP, compile_stats  # noqa: E402
from benchmarks.quality import mmd  # noqa: E402


def test_ddim_peak_memory_does_not_store_states():
    """`sd.sample` with `sd.DDIM()` keeps only x in the scan: XLA's peak memory may grow with K by
    the per-step schedule constants (a few scalars per step) but not by stored states (B * d
    floats per step)."""
    d, K0, K1 = 8, 5, 200
    net = BenchMLP(d, width=16, depth=1, time_dim=4, key=jax.random.key(0))
    sched = sd.DiscreteSchedule.linear(K1, dtype=jnp.float32)
    model = sd.EpsModel(net)

    def peak(B, K):
        tau = sd.respace(K1, K)
        one = lambda z: sd.sample(None, sched, model, sd.DDIM(), tau, z).x
        return compile_stats(jax.vmap(one), jnp.zeros((B, d), jnp.float32))["peak_bytes"]

    B = 64
    growth = peak(B, K1) - peak(B, K0)
    state_bytes = B * d * 4  # 2 KiB: what storing one state per step would add
    assert 0 <= growth <= 64 * (K1 - K0) < state_bytes * (K1 - K0) / 10


def test_overhead_samplers_match_the_hand_loop():
    """The section-1 variants on the 0.2 API: scoredyn DDIM equals the hand-written loop, and
    DDPM / Analytic-DPM run and give finite samples of the right shape."""
    d, B, K = 8, 4, 5
    net = BenchMLP(d, width=16, depth=1, time_dim=4, key=jax.random.key(0))
    sched = sd.DiscreteSchedule.linear(overhead.N, dtype=jnp.float32)
    tau = sd.respace(overhead.N, K)
    key = jax.random.key(1)
    x_T = jax.random.normal(jax.random.key(2), (B, d), jnp.float32)
    ref = overhead.make_hand(overhead._coefficients(sched, tau, "ddim"), False)(net, key, x_T)
    ours = overhead.make_scoredyn(sched, tau, sd.DDIM())(net, key, x_T)
    assert float(jnp.max(jnp.abs(ours - ref))) <= 1e-5 * float(jnp.max(jnp.abs(ref)))
    analytic = overhead.analytic_solver(sched)
    assert analytic is not None
    for solver in (sd.DDPM(), analytic):
        x = overhead.make_scoredyn(sched, tau, solver)(net, key, x_T)
        assert x.shape == (B, d) and bool(jnp.all(jnp.isfinite(x)))


def test_compile_and_dpm_solver_builders_run():
    """Every section-2 builder traces and compiles at a tiny K, and the DPM-Solver callers of
    section 3 run on the 0.2 API with the advertised NFE."""
    d, B = 8, 2
    net = BenchMLP(d, width=16, depth=1, time_dim=4, key=jax.random.key(0))
    sched = sd.DiscreteSchedule.linear(bench_compile.N, dtype=jnp.float32)
    builders = bench_compile._samplers(net, sched, sd.VPSDE())
    assert "DPM-Solver-2 (sd.DPMSolver)" in builders
    x_T = jnp.zeros((B, d), jnp.float32)
    for build in builders.values():
        assert compile_stats(build(3), net, jax.random.key(0), x_T)["compile_s"] >= 0
    gm = sd.toy.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), 0.1 * jnp.eye(2)[None])
    sde = sd.VPSDE()
    z = jax.random.normal(jax.random.key(3), (B, 2))
    makers = bench_ode._dpm_solver_flow(sde, gm.eps_fn(sde))
    assert len(makers) == 3
    for make in makers.values():
        f, used = make(6)
        assert used == 6 and bool(jnp.all(jnp.isfinite(f(z))))


def test_mmd_matches_closed_form_for_shifted_gaussian():
    r"""For p = N(0, s^2 I) and q = N(mu, s^2 I) in d dims, with a Gaussian kernel of width h,
    MMD^2 = 2 c (1 - exp(-|mu|^2 / (2 (2 s^2 + h^2)))), c = (h^2 / (h^2 + 2 s^2))^{d/2}.
    Monte Carlo tolerance: 4096 samples give a relative error of a few per cent."""
    d, s2, h = 2, 0.3, 0.25
    gm = sd.toy.GaussianMixture(jnp.ones(1), jnp.zeros((1, d)), s2 * jnp.eye(d)[None])
    mu = jnp.array([0.3, -0.2])
    q = mu[None, :] + math.sqrt(s2) * jax.random.normal(jax.random.key(1), (4096, d))
    c = (h**2 / (h**2 + 2 * s2)) ** (d / 2)
    exact = math.sqrt(2 * c * (1 - math.exp(-float(mu @ mu) / (2 * (2 * s2 + h**2)))))
    assert mmd(gm, q, h=h, num_pairs=4096) == pytest.approx(exact, rel=0.1)
    # an exact sample sits at the noise floor, far below the shifted one
    p = math.sqrt(s2) * jax.random.normal(jax.random.key(2), (4096, d))
    assert mmd(gm, p, h=h, num_pairs=4096) < 0.3 * exact


def test_quality_section_quick_run_reports_targets_and_finite_distances(monkeypatch):
    """Section 4 in `--quick` mode (`quality.QUICK`: the 2-D oracle, NFE 10, DPM-Solver++(2M)).
    The report states both NFE-10 targets; the distances to the converged flow are finite and of
    a plausible size; the solver on diffusers' timesteps is close to the same solver on the
    time-uniform grid (the two grids differ only by rounding to integer timesteps); and the
    diffusers peers are either measured (and match their scoredyn twin) or reported as skipped.
    The 64-D oracle is built and its exact eps is finite (the full run samples it)."""
    gm = quality.mixture_64d()
    assert gm.dim == 64 and gm.num_components == 4
    eps = gm.eps_fn(sd.VPSDE(0.1, 20.0))(jnp.asarray(0.5), jnp.ones(64))
    assert eps.shape == (64,) and bool(jnp.all(jnp.isfinite(eps)))
    # `quality.run` frees compiled programs between oracles (jax.clear_caches, for the full
    # run's memory); here that would drop every program this worker's other tests share
    monkeypatch.setattr(jax, "clear_caches", lambda: None)
    res = quality.run(**quality.QUICK, log=lambda _: None)
    text = quality.report(res)
    assert "RMS distance at most half that of diffusers' DPM-Solver++(2M)" in text
    assert "stays within 0.03 nats from NFE 10 on" in text
    assert "Best grid per solver" in text
    m = res["mixtures"]["2-D"]
    assert 0.0 < m["flow_gap"] < 0.01  # the flow to t_eps alone: a small positive gap
    rows = m["rows"]
    for grid in ("log-SNR", "time-uniform", "diffusers' timesteps"):
        e = rows[f"DPM-Solver++(2M), {grid}"]["nfe"][10]
        assert e["nfe"] == 10 and math.isfinite(e["gap"])
        assert 1e-3 < e["rms"] < 0.5, (grid, e)
    twin = rows["DPM-Solver++(2M), diffusers' timesteps"]["nfe"][10]["rms"]
    uniform = rows["DPM-Solver++(2M), time-uniform"]["nfe"][10]["rms"]
    assert twin == pytest.approx(uniform, rel=0.05)
    if "skipped" in res["peers"]:
        assert "diffusers peers: skipped" in text and "not measured" in text
    else:
        e = rows[quality.PEER_TARGET]["nfe"][10]
        assert e["twin_max_abs"] < 1e-3  # diffusers' loop = its scoredyn twin (float32 updates)
