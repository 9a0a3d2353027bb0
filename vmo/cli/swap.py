"""``vmo swap``: the swap experiment from the command line.

Create a VMO of ``--size`` MiB backed by a `SwapSource`, fill it, map it into a workload in
another process (`vmo.mmu.workload.Workload`) and let it touch every page once (so the pages
are resident), then enable swap: move the VMO to staging, trim, and swap it out. Then bring it
back, either by letting the workload fault it in (``--workload sequential``, ``random``, or a
``module:function`` of your own) or eagerly (``--swap-in``, before the workload runs again).
Finally print the state, the metrics, the time of each phase and a histogram of fault
latencies (p50, p90, p99, max) as a table, or everything as JSON (``--json``). A progress bar
follows the long phases when stdout is a terminal.

The workload targets here return the latency of each page's first touch in nanoseconds, as the
workload saw it (a touch that faults includes the whole trip: the fault, the handler, the swap
source reading the page back, the install). A ``module:function`` target is called as
``function(ctx, "data")`` with the mapping named ``"data"``; if it returns a list of numbers
they are taken as latencies in nanoseconds, otherwise the histogram is of the swap source's
own time per page request (host side).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from vmo.pmm import PAGE_SIZE

MiB = 1 << 20
STEP = 4 * MiB


# ---------------------------------------------------------------------------- workload targets


def touch_sequential(ctx: Any, name: str) -> list[int]:
    """Load one byte of every page in order; the nanoseconds each load took."""
    view = ctx.mappings[name].memoryview()
    now = time.perf_counter_ns
    out = []
    for off in range(0, view.nbytes, PAGE_SIZE):
        t0 = now()
        view[off]  # noqa: B018 - the load is the point
        out.append(now() - t0)
    return out


def touch_random(ctx: Any, name: str, seed: int = 1) -> list[int]:
    """Load one byte of every page in a random order; the nanoseconds each load took."""
    view = ctx.mappings[name].memoryview()
    pages = list(range(view.nbytes // PAGE_SIZE))
    random.Random(seed).shuffle(pages)
    now = time.perf_counter_ns
    out = []
    for p in pages:
        t0 = now()
        view[p * PAGE_SIZE]  # noqa: B018
        out.append(now() - t0)
    return out


_TARGETS = {"sequential": "vmo.cli.swap:touch_sequential",
            "random": "vmo.cli.swap:touch_random"}


# ---------------------------------------------------------------------------- statistics


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of ``values`` (nearest rank), and their count."""
    if not values:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(values)

    def rank(q: float) -> float:
        return float(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))])

    return {"count": len(s), "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99),
            "max": float(s[-1])}


def log_buckets(values_ns: Sequence[float]) -> list[tuple[str, int]]:
    """Counts per power-of-two bucket of microseconds ("<1us", "1-2us", "2-4us", ...)."""
    counts: dict[int, int] = {}
    for v in values_ns:
        us = v / 1000
        b = 0 if us < 1 else int(us).bit_length()
        counts[b] = counts.get(b, 0) + 1
    out = []
    for b in sorted(counts):
        label = "<1us" if b == 0 else f"{1 << (b - 1)}-{1 << b}us"
        out.append((label, counts[b]))
    return out


# ---------------------------------------------------------------------------- progress


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """``task(description, total)`` returns ``advance(n)``; a rich progress bar when enabled."""
    if not enabled:
        yield lambda description, total: (lambda n: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("pages"), TimeElapsedColumn(), transient=True) as bar:
        def task(description: str, total: int) -> Callable[[int], None]:
            tid = bar.add_task(description, total=total)
            return lambda n: bar.advance(tid, n)

        yield task


# ---------------------------------------------------------------------------- the experiment


def run_experiment(size: int, *, workload: str = "sequential", swap_in: bool = False,
                   directory: str | None = None, fault_around: int | None = None,
                   progress: bool = False, log: Callable[[str], None] = lambda s: None
                   ) -> dict[str, Any]:
    """Run the experiment (see the module docstring); returns its report as a dict."""
    from vmo import Kernel, ZxError
    from vmo.mmu.fault_handler import unavailable_reason
    from vmo.mmu.workload import RemoteError, Workload
    from vmo.pager.swap import SwapSource

    target = _TARGETS.get(workload, workload)
    pages = size // PAGE_SIZE
    phases: dict[str, float] = {}
    report: dict[str, Any] = {"size_bytes": size, "pages": pages, "workload": workload,
                              "swap_in": swap_in}
    uffd_reason = unavailable_reason()
    with Kernel(memory=size + 64 * MiB, page_request_timeout=60.0) as k, \
            SwapSource(k, directory) as swap, _progress(progress) as task:
        v = swap.create_vmo(size)
        v.name = "swap-experiment"
        t0 = time.perf_counter()
        advance = task("filling", pages)
        block = bytes(range(1, 256)) * (STEP // 255 + 1)
        for off in range(0, size, STEP):
            n = min(STEP, size - off)
            v.write(memoryview(block)[:n], off)
            advance(n // PAGE_SIZE)
        phases["fill"] = time.perf_counter() - t0
        w = None
        if uffd_reason is None:
            w = Workload(k, timeout=120.0)
        else:
            log(f"no userfaultfd here ({uffd_reason}): the host reads the pages instead")
        try:
            if w is not None:
                w.map(v, name="data", fault_around=fault_around)
                t0 = time.perf_counter()
                w.run(target, "data", timeout=600.0)  # first touch: every page resident
                phases["workload_warm"] = time.perf_counter() - t0
            arena_before = _arena_bytes(k)
            t0 = time.perf_counter()
            log("moving the VMO to staging")
            moved = swap.move_to_staging()
            phases["move_to_staging"] = time.perf_counter() - t0
            report["arena_bytes_before"] = arena_before
            report["arena_bytes_after"] = _arena_bytes(k)
            report["moved_pages"] = moved
            t0 = time.perf_counter()
            report["trimmed_pages"] = swap.trim()
            phases["trim"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            advance = task("swapping out", swap.status().metrics.staging_pages)
            while (n := swap.swap_out(STEP)) != 0:
                advance(n)
            phases["swap_out"] = time.perf_counter() - t0
            report["status_swapped_out"] = swap.status().to_dict()
            if swap_in:
                t0 = time.perf_counter()
                advance = task("swapping in", swap.status().metrics.swap_pages)
                while (n := swap.swap_in(STEP)) != 0:
                    advance(n)
                phases["swap_in"] = time.perf_counter() - t0
            sources = [s for s in swap._live_sources()]
            for s in sources:
                s.serve_latencies = []
            t0 = time.perf_counter()
            latencies: list[float] | None = None
            if w is not None:
                log(f"the workload touches every page ({workload})")
                result = w.run(target, "data", timeout=600.0)
                if isinstance(result, list) and all(isinstance(x, int | float) for x in result):
                    latencies = [float(x) for x in result]
            else:
                advance = task("reading back", pages)
                for off in range(0, size, PAGE_SIZE):
                    v.read(1, off)
                    advance(1)
            phases["fault_back"] = time.perf_counter() - t0
            served = [dt * 1e9 for s in sources for dt in (s.serve_latencies or [])]
            report["latency_source"] = "workload" if latencies is not None else "page requests"
            lat = latencies if latencies is not None else served
            report["latency_ns"] = percentiles(lat)
            report["latency_buckets"] = log_buckets(lat)
            report["request_service_ns"] = percentiles(served)
        except (ZxError, RemoteError) as e:
            report["error"] = str(e) or type(e).__name__
        finally:
            if w is not None:
                w.close()
        report["phases_s"] = phases
        report["status"] = swap.status().to_dict()
    return report


def _arena_bytes(k: Any) -> int:
    import os

    return int(os.fstat(k.pmm.fd).st_blocks * 512)


# ---------------------------------------------------------------------------- output


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


def report_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, columns, rows) tables."""
    status = report["status"]
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    tables.append(("state", ["field", "value"], [
        ["state", status["state"]], ["error", status["error"] or "-"],
        ["size", f"{report['size_bytes'] // MiB} MiB ({report['pages']} pages)"],
        ["workload", report["workload"] + (" after swap_in" if report["swap_in"] else "")],
        ["moved to staging", f"{report.get('moved_pages', 0)} pages"],
        ["trimmed", f"{report.get('trimmed_pages', 0)} pages"],
        ["arena memory", f"{report.get('arena_bytes_before', 0) // MiB} MiB -> "
                         f"{report.get('arena_bytes_after', 0) // MiB} MiB after the move"]]))
    tables.append(("metrics", ["metric", "value"],
                   [[k, str(v)] for k, v in status["metrics"].items()]))
    tables.append(("phases", ["phase", "seconds", "MiB/s"],
                   [[k, f"{v:.3f}", f"{report['size_bytes'] / MiB / v:.0f}" if v else "-"]
                    for k, v in report["phases_s"].items()]))
    tables.append(("transitions", ["from", "to", "pages", "ms"],
                   [[t["from"], t["to"], str(t["pages"]), f"{t['time_ms']:.1f}"]
                    for t in status["transitions"]]))
    if "latency_ns" in report:
        lat = report["latency_ns"]
        rows = [[q, _fmt_ns(lat[q])] for q in ("p50", "p90", "p99", "max")]
        rows.append(["count", str(lat["count"])])
        rows += [[f"  {label}", str(n)] for label, n in report["latency_buckets"]]
        tables.append((f"fault latency ({report['latency_source']})", ["", "value"], rows))
    return tables


def print_report(report: dict[str, Any], plain: bool) -> None:
    tables = report_tables(report)
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        for title, cols, rows in tables:
            print(f"{title}:")
            widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
                      for i, c in enumerate(cols)]
            for r in rows:
                print("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths,
                                                                          strict=True)).rstrip())
        if "error" in report:
            print(f"error: {report['error']}")
        return
    console = Console()
    for title, cols, rows in tables:
        table = Table(title=title, title_justify="left")
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*r)
        console.print(table)
    if "error" in report:
        console.print(f"[bold red]error:[/] {report['error']}")


# ---------------------------------------------------------------------------- argparse


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "swap", help="the swap experiment: move a VMO out, let a workload fault it back",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "))
    p.add_argument("--size", type=float, default=64.0, metavar="MIB",
                   help="size of the VMO in MiB (default 64)")
    p.add_argument("--workload", default="sequential", metavar="KIND",
                   help="sequential (default), random, or module:function")
    p.add_argument("--swap-in", action="store_true",
                   help="bring everything back eagerly (swap_in) before the workload runs")
    p.add_argument("--dir", default=None, help="directory for the swap file (default: a temp dir)")
    p.add_argument("--fault-around", type=int, default=None, metavar="N",
                   help="pages a fault installs at once (default: the mapping's default)")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--json", action="store_true", help="print the report as JSON")
    style.add_argument("--plain", action="store_true", help="plain text (default off a terminal)")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from vmo import ZxError

    size = int(args.size * MiB) // PAGE_SIZE * PAGE_SIZE
    if size <= 0:
        print("vmo swap: --size must be at least one page", file=sys.stderr)
        return 2
    if args.workload not in _TARGETS and ":" not in args.workload:
        print(f"vmo swap: --workload must be sequential, random or module:function, not "
              f"{args.workload!r}", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    plain = args.plain or not tty
    try:
        report = run_experiment(
            size, workload=args.workload, swap_in=args.swap_in, directory=args.dir,
            fault_around=args.fault_around, progress=tty and not args.json and not args.plain,
            log=(lambda s: None) if args.json or not tty else
            (lambda s: print(f"... {s}", file=sys.stderr)))
    except ZxError as e:
        print(f"vmo swap: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, plain)
    return 1 if "error" in report else 0
