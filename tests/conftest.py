"""Test configuration: x64 on, strict promotion, a hypothesis CI profile, a key fixture."""

import os

# LLVM at -O0 for the suite's many small programs: XLA compile time dominates the suite and
# drops by a quarter to a half; run time is negligible at these shapes, results are unchanged
# (XLA's HLO simplification still runs, and CPU code is compiled without fast-math either way).
# Set before JAX creates its CPU client; subprocess tests inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# `SCOREDYN_DEBUG_NANS=1` (`make test-debug-nans`) runs the whole suite with jax_debug_nans on:
# any compiled call or eager operation whose output holds a NaN raises FloatingPointError.
jax.config.update("jax_debug_nans", os.environ.get("SCOREDYN_DEBUG_NANS", "0") == "1")

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
