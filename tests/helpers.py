"""Shared fixtures for the test-suite: SDEs, small oracles and tree comparison."""

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np

import scoredyn as sd

_T = TypeVar("_T")

ALL_LINEAR_SDES = [
    sd.VPSDE(beta_min=0.1, beta_max=20.0),
    sd.SubVPSDE(beta_min=0.1, beta_max=20.0),
    sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    sd.CosineVPSDE(),
]
SDE_IDS = ["vp", "subvp", "ve", "cosine"]


def compiled_o3(fn, *args, level: str = "3"):
    """`fn` (a function, or one already under `jax.jit`) compiled for `args` with LLVM at
    `level` (-O3 by default) instead of the suite's -O0 (conftest).

    For the Monte Carlo programs whose cost is running them, not compiling: thousands of chains
    or Brownian-tree paths run several times faster above -O0. -O3 compiles small programs in
    about the suite's time, but large diffrax programs about twice as slowly as -O1, which runs
    within ~10 % of -O3 (`level="1"` there). The values are the same up to rounding (CPU code is
    compiled without fast-math at any level)."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return jitted.lower(*args).compile({"xla_backend_optimization_level": level})


def all_finite(*trees) -> bool:
    """Every leaf of `trees` is finite, checked in NumPy (an eager `jnp.isfinite`/`all` compiles
    small programs for every leaf shape and dtype)."""
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(trees))


def built_on_first_use(fn: Callable[[], _T]) -> Callable[[], _T]:
    """A module's constant, built by `fn()` at its first use instead of at import: every xdist
    worker imports every test module at collection, whether or not it runs its tests, and would
    compile the eager operations. Built once per process, and concrete even when the first use is
    inside a traced function."""

    @functools.cache
    def cached() -> _T:
        with jax.ensure_compile_time_eval():
            return fn()

    return cached


def mixture_2d(dtype=jnp.float64) -> sd.toy.GaussianMixture:
    """A 2-D three-component mixture with full, correlated covariances."""
    w = jnp.array([0.2, 0.5, 0.3], dtype)
    m = jnp.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype)
    c = jnp.array(
        [[[0.10, 0.03], [0.03, 0.05]], [[0.08, -0.02], [-0.02, 0.12]], [[0.05, 0.0], [0.0, 0.05]]],
        dtype,
    )
    return sd.toy.GaussianMixture(w, m, c)


def gaussian_1comp(d: int = 3, mean: float = 0.3, var: float = 0.25, dtype=jnp.float64):
    """A single isotropic Gaussian $\\mathcal N(m\\mathbf 1, s^2 I)$ as a one-component mixture."""
    return sd.toy.GaussianMixture(
        jnp.ones((1,), dtype), jnp.full((1, d), mean, dtype), var * jnp.eye(d, dtype=dtype)[None]
    )


def tree_allclose(a, b, *, rtol=1e-5, atol=1e-8) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol) for x, y in zip(la, lb)
    )


def refused_by_debug_nans(e: BaseException) -> bool:
    """Under `jax_debug_nans` JAX raises `FloatingPointError` on a NaN input, possibly before
    scoredyn's own check (which one comes first depends on JAX's dispatch state): a refusal too."""
    return bool(jax.debug_nans.value) and isinstance(e, FloatingPointError)


@contextlib.contextmanager
def no_runtime_typecheck() -> Iterator[None]:
    """Switch off jaxtyping's run-time checks (`make test` runs with `--jaxtyping-packages`) around
    a call that is ill-typed on purpose (a wrong shape or type), so that the test sees scoredyn's
    own error and message, as a user who runs without the checks would."""
    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


def old_bound(
    key,
    sched,
    eps_fn,
    x0,
    tau,
    *,
    lam2=None,
    variances=None,
    eta=None,
    decoder="discretized",
    levels=256,
    decoder_var=None,
    prediction="eps",
    clip_x0=None,
):
    """The 0.1 signature of `variational_bound`, mapped onto the 0.2 verb (a chain and a model),
    so the 0.1 tests keep checking the same facts through the new code path."""
    import scoredyn as sd
    from scoredyn._discrete.sampler import LegacyChain, legacy_model
    from scoredyn._misc import as_float, check_vector_field

    if not callable(eps_fn):  # 0.1 named the callable in its errors
        raise TypeError(f"`eps_fn` must be callable (t, x) -> array, got {eps_fn!r}.")
    else:
        check_vector_field(eps_fn, "eps_fn", jnp.asarray(sched.T, as_float(x0).dtype), x0)

    chain = LegacyChain(lam2, variances, eta, decoder_var=decoder_var).chain(sched, tau)
    model = legacy_model(eps_fn, prediction, clip_x0)
    if decoder not in ("discretized", "gaussian"):
        raise ValueError(f"`decoder` must be one of ('discretized', 'gaussian'), got {decoder!r}.")
    lv = levels if decoder == "discretized" else None
    return sd.variational_bound(key, sched, model, chain, x0, levels=lv)
