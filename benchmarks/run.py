"""Entry point: ``python -m benchmarks.run [--quick] [--sections 1,2,3,4,5,6,7] [--out DIR]``.

Writes ``<out>/<date>-<machine>.md`` (the tables), ``.png`` (the plot) and ``.json`` (raw numbers).
"""

import argparse
import datetime
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import jax

from . import _common

SECTIONS = {
    1: "overhead",
    2: "compile",
    3: "ode",
    4: "quality",
    5: "peer",
    6: "batched",
    7: "solvers",
}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, about a minute)")
    p.add_argument("--sections", default="1,2,3,4,5,6,7", help="comma-separated subset of 1..7")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (sections 1, 5, 6, 7)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p.parse_args(argv)


def _run_section(i: int, quick: bool, repeats, log):
    if i == 1:
        from . import overhead as m

        kw = dict(batches=(16,), steps=(50,), budget_s=3.0) if quick else {}
        if repeats:
            kw["repeats"] = repeats
        return m, m.run(log=log, **kw)
    if i == 2:
        from . import compile as m

        return m, m.run(ks=(10, 100) if quick else m.KS, log=log)
    if i == 3:
        from . import ode as m

        return m, m.run(quick=quick, log=log)
    if i == 4:
        from . import quality as m

        kw = dict(m.QUICK) if quick else {}
        return m, m.run(log=log, **kw)
    if i == 6:
        from . import batched as m

        kw: dict = {}
        if quick:
            kw = dict(batches=(16,), ode_batches=(64,), cheap_batches=(16,), budget_s=2.0)
        if repeats:
            kw["repeats"] = repeats
        return m, m.run(log=log, **kw)
    if i == 7:
        from . import solvers as m

        kw = dict(batches=(16,), budget_s=2.0, compile_ks=(10, 100)) if quick else {}
        if repeats:
            kw["repeats"] = repeats
        return m, m.run(log=log, **kw)
    from . import peer as m

    kw = dict(batches=(16,), budget_s=3.0) if quick else {}
    if repeats:
        kw["repeats"] = repeats
    return m, m.run(log=log, **kw)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not callable(v)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    sections = sorted({int(s) for s in args.sections.split(",") if s.strip()})
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"--sections: unknown section(s) {bad}; choose from 1..7.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    stem = out / f"{stamp}-{_common.machine_tag()}{'-quick' if args.quick else ''}"
    info = _common.machine_info()
    t_all = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    log(
        f"scoredyn benchmarks -> {stem}.md  ({info['cpu_model']}, {info['cpus']} CPUs, jax "
        f"{info['jax']})"
    )
    reports, results, seconds = [], {}, {}
    for i in sections:
        log(f"[{i}] {SECTIONS[i]} ...")
        t0 = time.perf_counter()
        mod, res = _run_section(i, args.quick, args.repeats, log)
        seconds[i] = time.perf_counter() - t0
        log(f"[{i}] done in {seconds[i]:.0f} s")
        results[i] = res
        reports.append(mod.report(res))
        jax.clear_caches()
    total = time.perf_counter() - t_all
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime + ru_kids.ru_stime
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3

    head = [
        f"# scoredyn benchmarks, {stamp}{' (quick)' if args.quick else ''}",
        "",
        f"- Machine: {info['arch']}, {info['cpus']} CPUs ({info['cpu_model']}), JAX backend "
        f"`{info['backend']}`; Python {info['python']}, jax {info['jax']}, equinox "
        f"{info['equinox']}, diffrax {info['diffrax']}.",
        f"- Load average (1, 5, 15 min) at start {', '.join(f'{v:.1f}' for v in info['loadavg'])}; "
        f"at end {', '.join(f'{v:.1f}' for v in load_end)}. Absolute times are only comparable "
        "within one run; ratios are measured against baselines in the same run.",
        f"- Total wall time {total:.0f} s ("
        + ", ".join(f"section {i}: {s:.0f} s" for i, s in seconds.items())
        + f"); CPU time {cpu_total:.0f} s (all threads), an upper bound on the wall time of the "
        "same run on an otherwise idle machine. Command: "
        f"`{' '.join(['python -m benchmarks.run', *(sys.argv[1:] if argv is None else argv)])}`.",
        "",
    ]
    text = "\n".join(head) + "\n" + "\n".join(reports)
    if not args.no_plot:
        try:
            from .plot import plot

            png = plot(results, f"{stem}.png")
            text += f"\n![benchmark plot]({Path(png).name})\n"
            log(f"plot -> {png}")
        except Exception as e:  # the tables matter more than the figure
            log(f"plot failed: {type(e).__name__}: {e}")
    Path(f"{stem}.md").write_text(text)
    Path(f"{stem}.json").write_text(
        json.dumps(_jsonable({"info": info, "seconds": seconds, "results": results}), indent=1)
    )
    log(f"wrote {stem}.md in {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
