"""Progress bars (tqdm) for the demo's stages, or nothing with `--no-progress`."""

import contextlib
from collections.abc import Iterator


class _Silent:
    """What `progress_bar` yields when progress is off: a bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        del n

    def set_postfix_str(self, s: str) -> None:
        del s


class Ticks:
    """A callable `progress(done, total)` for the library's `progress=` option that advances
    `bar` by the units done since its last report (a new run starts when `done` falls)."""

    def __init__(self, bar):
        self.bar = bar
        self.last = 0

    def __call__(self, done: int, total: int) -> None:
        del total
        if done < self.last:
            self.last = 0
        self.bar.update(done - self.last)
        self.last = done


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Iterator:
    """A tqdm bar of `total` units (closed on exit, also after Ctrl-C), or a silent one."""
    if not enabled:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
    try:
        yield bar
    finally:
        bar.close()
