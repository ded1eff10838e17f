"""Shared pieces: timing, machine description, the benchmark eps-network and the 2-D oracle."""

import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_tag() -> str:
    """A short file-name-safe tag such as ``x86_64-2cpu``."""
    return f"{platform.machine()}-{num_cpus()}cpu"


def machine_info() -> dict:
    import diffrax
    import equinox

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "arch": platform.machine(),
        "cpus": num_cpus(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "equinox": equinox.__version__,
        "diffrax": diffrax.__version__,
        "backend": jax.default_backend(),
        "loadavg": load,
    }


# ------------------------------------------------------------------------------------ timing


def block(x):
    return jax.block_until_ready(x)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (XLA's thread pool included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_once(fn: Callable, *args) -> float:
    t0 = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t0


def time_once_both(fn: Callable, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t0, cpu_seconds() - c0


def time_interleaved(
    fns: dict[str, Callable],
    args: dict[str, tuple],
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    max_repeats: int = 50,
    cpu_out: dict | None = None,
) -> dict[str, list[float]]:
    """Wall times of already-jitted functions, run A, B, C, A, B, C, ... (compile excluded).

    Interleaving exposes every variant to the same load from other processes. With `budget_s`,
    the number of rounds grows from `repeats` up to `max_repeats` while one round's measured
    time fits into the budget (short runs get many rounds, long runs `repeats`). If `cpu_out` is
    a dict, it receives the CPU seconds (all threads) of every run as well.
    """
    for _ in range(warmup):  # the first call also compiles, if that was not done yet
        for name, fn in fns.items():
            block(fn(*args[name]))
    t0 = time.perf_counter()
    for name, fn in fns.items():  # one more round, timed, to size the budget
        block(fn(*args[name]))
    round_s = time.perf_counter() - t0
    if budget_s is not None and round_s > 0:
        repeats = int(min(max_repeats, max(repeats, budget_s // round_s)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time_once_both(fn, *args[name])
            times[name].append(w)
            cpu[name].append(c)
    if cpu_out is not None:
        cpu_out.update(cpu)
    return times


def min_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Ratio of the fastest runs. Load from other processes only ever adds time, so the minimum
    over interleaved rounds is the least contaminated estimate of each variant's own cost."""
    return float(min(num) / min(den))


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of per-round ratios num[i] / den[i] (rounds are interleaved, so load cancels)."""
    return float(statistics.median([a / b for a, b in zip(num, den)]))


def compile_stats(fn: Callable, *args) -> dict:
    """Lower and compile `fn` for `args`; return compile seconds and XLA's memory analysis."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    out = {"trace_s": t1 - t0, "compile_s": t2 - t1}
    if mem is not None:
        out["temp_bytes"] = int(mem.temp_size_in_bytes)
        out["output_bytes"] = int(mem.output_size_in_bytes)
        out["argument_bytes"] = int(mem.argument_size_in_bytes)
        out["peak_bytes"] = out["temp_bytes"] + out["output_bytes"]
    return out


# ------------------------------------------------------------------------------------ network


def time_features(t, dim: int, dtype):
    """Sinusoidal features of t in [0, 1] (scaled by 1000, DDPM-style)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=dtype) / half)
    arg = 1000.0 * jnp.asarray(t, dtype) * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class BenchMLP(eqx.Module):
    """The benchmark eps-network: [x, e(t)] -> 3 hidden SiLU layers of `width` -> d.

    Plain (no normalisation, no residuals) so that the PyTorch twin in `peer.py` is the same
    computation. Written for one example, `(t, x) -> eps`, like every scoredyn network.
    """

    layers: tuple[eqx.nn.Linear, ...]
    time_dim: int = eqx.field(static=True)

    def __init__(self, dim: int = 64, width: int = 256, depth: int = 3, time_dim: int = 32, *, key):
        keys = jax.random.split(key, depth + 1)
        sizes = [dim + time_dim] + [width] * depth + [dim]
        layers = [
            eqx.nn.Linear(i, o, key=k, dtype=jnp.float32)
            for i, o, k in zip(sizes[:-1], sizes[1:], keys)
        ]
        # small output layer keeps the chains bounded with a random (untrained) network
        last = layers[-1]
        layers[-1] = eqx.tree_at(lambda lin: lin.weight, last, 0.1 * last.weight)
        self.layers = tuple(layers)
        self.time_dim = time_dim

    def __call__(self, t, x):
        h = jnp.concatenate([x, time_features(t, self.time_dim, x.dtype)])
        for lin in self.layers[:-1]:
            h = jax.nn.silu(lin(h))
        return self.layers[-1](h)


def numpy_weights(net: BenchMLP) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(lin.weight), np.asarray(lin.bias)) for lin in net.layers]


# ------------------------------------------------------------------------------------ oracle


def mixture_2d(dtype=jnp.float64):
    """The 2-D three-component mixture with full, correlated covariances (as in the tests)."""
    import scoredyn as sd

    w = jnp.array([0.2, 0.5, 0.3], dtype)
    m = jnp.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype)
    c = jnp.array(
        [[[0.10, 0.03], [0.03, 0.05]], [[0.08, -0.02], [-0.02, 0.12]], [[0.05, 0.0], [0.0, 0.05]]],
        dtype,
    )
    return sd.toy.GaussianMixture(w, m, c)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
