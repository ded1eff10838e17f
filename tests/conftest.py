"""Test configuration: x64 on, strict promotion, a hypothesis CI profile, a key fixture."""

import functools
import gc
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

# Two compile-time settings for the suite's many small programs (XLA compile time is most of
# the suite's CPU time; run time is negligible at these shapes). Set before JAX creates its CPU
# client; xdist workers and subprocess tests inherit them through the environment.
# - LLVM at -O0: compile time drops by a quarter to a half. Results are unchanged: XLA's HLO
#   simplification still runs, and CPU code is compiled without fast-math either way.
# - XLA:CPU's classic elemental fusion emitter instead of the MLIR fusion emitters: another
#   30-50 % off each compile (measured per composability case). The bit-for-bit fixture tests
#   pass under both. Only where this jaxlib knows the flag (XLA aborts on unknown flags), which
#   one short subprocess finds out once per session.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _FLAGS and not os.environ.get("SCOREDYN_XLA_PROBED"):
    _probe = _FLAGS + " --xla_cpu_use_fusion_emitters=false"
    _ok = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; (jnp.ones(2) + 1).block_until_ready()"],
        env={**os.environ, "XLA_FLAGS": _probe, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        timeout=120,
    )
    if _ok.returncode == 0:
        _FLAGS = _probe
    os.environ["SCOREDYN_XLA_PROBED"] = "1"  # the workers inherit the answer
os.environ["XLA_FLAGS"] = _FLAGS.strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# `SCOREDYN_DEBUG_NANS=1` (`make test-debug-nans`) runs the whole suite with jax_debug_nans on:
# any compiled call or eager operation whose output holds a NaN raises FloatingPointError.
jax.config.update("jax_debug_nans", os.environ.get("SCOREDYN_DEBUG_NANS", "0") == "1")

# Python's cyclic garbage collector: JAX's tracing allocates millions of short-lived objects, and
# at the default thresholds (700, 10, 10) a full collection, which walks every object the
# imported libraries and the compile caches hold (~0.25 s each), ran about every 70,000
# allocations: 8 % of the CPU of a test file (measured with gc.callbacks on test_guidance and
# test_likelihood: 5.8 of 72 CPU-s, 4.8 of it in 20 full collections). Young objects are still
# collected (every 10,000 allocations); full collections now come after ~100 million.
gc.set_threshold(10_000, 10, 1_000)


def _cache_jax_frame_filter() -> None:
    """Memoise JAX's "is this source file user code?" test (`include_filename`).

    Every `eqx.error_if` traced with a value-dependent predicate (the library's run-time checks)
    walks the whole Python stack and asks this of each frame; the answer costs `abspath`,
    `commonpath` and `samefile` per JAX-excluded path. Under pytest's ~80-frame stacks that was
    up to 60 % of tracing in check-heavy tests (test_trajectory_dp: 21 -> 15 CPU-s). The answer
    is a pure function of the file name and the excluded paths (packages add paths at import, so
    they are part of the key). Left out if a JAX version renames these."""
    from jax._src import traceback_util as tu

    original = getattr(tu, "include_filename", None)
    if original is None or not isinstance(getattr(tu, "_exclude_paths", None), list):
        return

    @functools.cache
    def cached(filename: str, excluded: tuple[str, ...]) -> bool:
        return original(filename)

    tu.include_filename = lambda filename: cached(filename, tuple(tu._exclude_paths))


_cache_jax_frame_filter()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    # what is alive after collection (the libraries, the test modules) lives until the end:
    # moved out of the collector's generations, so that a full collection skips it
    gc.collect()
    gc.freeze()


settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def getkey():
    """Return a function that yields fresh, deterministic PRNG keys."""
    state = {"key": jax.random.key(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey


# `SCOREDYN_TEST_CPU_LOG=path` appends each test's CPU seconds (process time, all threads:
# XLA compiles in worker threads) to `path`: a suite profile independent of the machine's load.
_CPU_LOG = os.environ.get("SCOREDYN_TEST_CPU_LOG")
if _CPU_LOG:
    import time

    _CPU_LOG_PATH: str = _CPU_LOG

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        t0 = time.process_time()
        yield
        with open(_CPU_LOG_PATH, "a") as f:
            f.write(f"{time.process_time() - t0:.3f}\t{item.nodeid}\n")
