r"""Opt-in progress reports from compiled loops (`progress=`), one convention for scoredyn.

A function with a long `lax.scan` / `lax.map` loop takes `progress: bool | Callable = False`:

- `False` (the default): nothing is added to the program, so it is the program without the
  argument, bit for bit and at the same cost;
- `True`: a host-side printer, a tqdm bar on stderr when `tqdm` can be imported, else a text
  line on stderr at the first report and then per 5% of the work (`estimate_gamma: 40/100
  steps`);
- a callable `progress(done, total)`: called on the host with Python ints after each unit of
  work (every call, unthrottled).

The loop body reports through `jax.debug.callback(..., ordered=True)` with the unit's result
as an argument, so a report is made only once that unit is computed, and in order. Batch
dimensions of the user's `jax.vmap` are stripped first (`equinox.internal.unvmap_max`), so a
vmapped call reports once per unit of work for the whole batch, not once per example. JAX
refuses ordered effects in programs over several devices (`sharded_vmap` on more than one), so
progress is for one device. The printer and the callable are values of the traced program: a
compiled program reuses them (pass the same callable to reuse the compiled program; a new one
retraces). The diffrax solves take diffrax's own `progress_meter` instead. User docs:
`docs/api/sampling.md`, "Progress on long work".
"""

import importlib.util
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

#: `False`, `True` or a host callable `progress(done, total)`.
Progress: TypeAlias = bool | Callable[[int, int], Any]

# the text printer writes a line each time another 1/_TEXT_LINES of the work is done
_TEXT_LINES = 20


def check_progress(progress, name: str = "progress") -> Progress:
    """`progress` if it is a bool or a callable; TypeError otherwise (at trace time)."""
    if isinstance(progress, bool) or callable(progress):
        return progress
    raise TypeError(
        f"`{name}` must be False, True or a callable progress(done, total), got {progress!r}."
    )


def _find_tqdm():
    """The `tqdm.tqdm` class, or None when tqdm is not installed (it is not a dependency)."""
    if importlib.util.find_spec("tqdm") is None:
        return None
    from tqdm import tqdm

    return tqdm


class _Printer:
    """Host side of `progress=True`: a tqdm bar, or text lines on stderr without tqdm.

    One printer serves every run of the compiled program that holds it: a run starts when a
    report does not exceed the last one (or after a finished run) and ends at `done == total`.
    Whether to use tqdm is decided at the start of each run.
    """

    def __init__(self, label: str, unit: str):
        self.label = label
        self.unit = unit
        self.bar = None
        self.last = 0

    def _close(self):
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.last = 0

    def _next_line(self, done: int, total: int) -> bool:
        return _TEXT_LINES * done // total > _TEXT_LINES * self.last // total

    def __call__(self, done: int, total: int) -> None:
        if done <= self.last:  # a new run of the same program (the last one stopped early)
            self._close()
        if self.last == 0:
            tqdm = _find_tqdm()
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=sys.stderr)
        if self.bar is not None:
            self.bar.update(done - self.last)
        elif self.last == 0 or done >= total or self._next_line(done, total):
            print(f"{self.label}: {done}/{total} {self.unit}", file=sys.stderr, flush=True)
        self.last = done
        if done >= total:
            self._close()


class _HostReport:
    """The function `jax.debug.callback` runs: `fn(done, total)` with Python ints."""

    def __init__(self, fn: Callable[[int, int], Any], total: int):
        self.fn = fn
        self.total = total

    def __call__(self, done, _after) -> None:
        self.fn(int(done), self.total)


def report(progress: Progress, label: str, unit: str, done, total: int, after: Any) -> None:
    """Inside a loop body being traced: report `done` of `total` units to the host once the
    arrays `after` are computed. Does nothing (adds nothing to the program) when `progress`
    is False. `done` is an int array, maybe traced, whose maximum (over its entries and any
    batch dimensions) is the number of units done."""
    if progress is False:
        return
    fn = _Printer(label, unit) if progress is True else progress
    leaves = [x for x in jax.tree.leaves(after) if eqx.is_array(x) and x.size > 0]
    # one entry of the unit's result: a data dependency, so the report waits for the unit
    dep = eqxi.unvmap_any(jnp.isnan(jnp.ravel(leaves[0])[0])) if leaves else None
    done = eqxi.unvmap_max(jnp.asarray(done))
    jax.debug.callback(_HostReport(fn, total), done, dep, ordered=True)
