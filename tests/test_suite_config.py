"""The suite's own set-up: what makes `make test` fast is in force."""

import os

import pytest


@pytest.mark.xdist_group("suite-config")
def test_loadgroup_keeps_xdist_groups_together(request):
    """Under `--dist loadgroup` (Makefile) every test marked `xdist_group` carries its group
    in its node id, which is how pytest-xdist sends a group to one worker: the tests of a group
    share compiled programs (functools caches, module fixtures), and a silent split compiles them
    once per worker. pytest 9.2 with pytest-xdist 3.8 dropped the groups (pytest-xdist#1386)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under pytest-xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@suite-config"), (
        f"node id {request.node.nodeid!r} has no group: this pytest / pytest-xdist pair "
        "ignores xdist_group; install the versions pyproject.toml pins"
    )


def test_compile_settings_reach_jax():
    """conftest.py's XLA flags are in the environment that JAX read (LLVM at -O0 always; the
    classic fusion emitter where this jaxlib knows the flag)."""
    assert "--xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"]
    assert (
        os.environ.get("SCOREDYN_XLA_PROBED") == "1" or "fusion_emitters" in os.environ["XLA_FLAGS"]
    )


def test_collector_and_frame_filter_settings():
    """conftest.py's garbage-collector thresholds are in force, and its memoised frame filter
    answers as JAX's own rule does (a path under a JAX-excluded folder is not user code)."""
    import gc

    import jax
    from jax._src import traceback_util as tu

    import scoredyn

    assert gc.get_threshold() == (10_000, 10, 1_000)
    for path in (jax.__file__, tu.__file__, __file__, scoredyn.__file__, os.__file__):
        want = not any(tu._path_starts_with(path, p) for p in tu._exclude_paths)
        assert tu.include_filename(path) == want, path
        assert tu.include_filename(path) == want, path  # the cached answer
    assert not tu.include_filename(tu.__file__) and tu.include_filename(__file__)
