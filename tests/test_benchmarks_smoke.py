"""Cheap checks of the benchmark machinery (the full run is `make bench`)."""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import scoredyn as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BenchMLP, compile_stats  # noqa: E402
from benchmarks.quality import mmd  # noqa: E402


def test_ddim_peak_memory_does_not_store_states():
    """`sample_discrete` keeps only x in the scan: XLA's peak memory may grow with K by the
    per-step schedule constants (a few scalars per step) but not by stored states (B * d floats
    per step)."""
    d, K0, K1 = 8, 5, 200
    net = BenchMLP(d, width=16, depth=1, time_dim=4, key=jax.random.key(0))
    sched = sd.DiscreteSchedule.linear(K1, dtype=jnp.float32)

    def peak(B, K):
        tau = sd.respace(K1, K)
        f = lambda x: jax.vmap(lambda z: sd.sample_discrete(None, sched, net, z, tau, lam2="ddim"))(
            x
        )
        return compile_stats(f, jnp.zeros((B, d), jnp.float32))["peak_bytes"]

    B = 64
    growth = peak(B, K1) - peak(B, K0)
    state_bytes = B * d * 4  # 2 KiB: what storing one state per step would add
    assert 0 <= growth <= 64 * (K1 - K0) < state_bytes * (K1 - K0) / 10


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
