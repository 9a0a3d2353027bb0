#!/usr/bin/env python3
"""Benchmarks of the `vmo` core, each a ratio against a baseline measured in the same run.

    python bench/bench_core.py            # full sizes (a few seconds, ~400 MiB of memory)
    python bench/bench_core.py --quick    # smoke mode: small sizes, few rounds
    python bench/bench_core.py --check    # exit 1 if a target is missed

Every timing is the median of several rounds (``time.perf_counter``), with the garbage
collector run before and disabled during each timed call; measured and baseline calls are
interleaved so that drift (CPU frequency, other load) hits both alike. See bench/README.md for
what each number means.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import vmo
except ImportError:  # run from a checkout without installing: the package is next door
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import vmo

import _report  # bench/_report.py, next to this script

from vmo import PAGE_SIZE, ChildOptions, Kernel, VmoOp

KiB, MiB = 1 << 10, 1 << 20


@dataclass
class Result:
    name: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: reported only, no target


@dataclass
class Sizes:
    rounds: int
    big_clone: int
    chain_depth: int
    chain_read: int
    copy: int
    metadata: int


FULL = Sizes(rounds=9, big_clone=256 * MiB, chain_depth=64, chain_read=1 * MiB,
             copy=64 * MiB, metadata=64 * MiB)
QUICK = Sizes(rounds=3, big_clone=32 * MiB, chain_depth=64, chain_read=1 * MiB,
              copy=16 * MiB, metadata=16 * MiB)


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


# ---------------------------------------------------------------------------- benchmarks


def bench_clone(s: Sizes) -> list[Result]:
    """Snapshot clone of a big fully committed VMO vs of a 16 KiB one: O(1) means ratio ~1."""
    small_size = 16 * KiB
    with Kernel(memory=s.big_clone + small_size + 44 * MiB) as k:
        big = k.vmo_create(s.big_clone)
        big.op_range(VmoOp.COMMIT, 0, s.big_clone)
        small = k.vmo_create(small_size)
        small.op_range(VmoOp.COMMIT, 0, small_size)
        clone_t: dict[int, list[float]] = {s.big_clone: [], small_size: []}
        close_t: dict[int, list[float]] = {s.big_clone: [], small_size: []}

        def one_round(v: vmo.Vmo, size: int) -> None:
            clones: list[vmo.Vmo] = []
            clone_t[size].append(timed(
                lambda: clones.append(v.create_child(ChildOptions.SNAPSHOT, 0, size))))
            # Closing the clone merges the hidden node back into the original: that walk is
            # proportional to the pages, and is reported on its own row.
            close_t[size].append(timed(clones[0].close))

        for _ in range(max(s.rounds, 5)):
            one_round(small, small_size)
            one_round(big, s.big_clone)
    big_med = statistics.median(clone_t[s.big_clone])
    small_med = statistics.median(clone_t[small_size])
    ratio = big_med / small_med
    big_close = statistics.median(close_t[s.big_clone])
    small_close = statistics.median(close_t[small_size])
    return [
        Result(f"snapshot clone, {fmt_size(s.big_clone)} committed",
               fmt_time(big_med), f"{fmt_time(small_med)}: 16 KiB", ratio, "<= 1.5",
               ratio <= 1.5),
        Result(f"close that clone (merge {s.big_clone // PAGE_SIZE} pages)",
               fmt_time(big_close), f"{fmt_time(small_close)}: 16 KiB",
               big_close / small_close, "-", None),
    ]


def bench_chain(s: Sizes) -> list[Result]:
    """A read through a deep chain of snapshots vs the same read of the chain's root."""
    n = s.chain_read
    with Kernel(memory=n * 4 + 16 * MiB) as k:
        root = k.vmo_create(n)
        root.write(bytes(range(256)) * (n // 256))
        chain = [root]
        for _ in range(s.chain_depth):
            chain.append(chain[-1].create_child(ChildOptions.SNAPSHOT, 0, n))
        leaf = chain[-1]
        if leaf.read(n) != root.read(n):
            raise AssertionError("the deepest clone does not read the root's bytes")
        deep: list[float] = []
        shallow: list[float] = []
        for _ in range(s.rounds * 3):
            shallow.append(timed(lambda: root.read(n)))
            deep.append(timed(lambda: leaf.read(n)))
        for c in reversed(chain):
            c.close()
    d, r = statistics.median(deep), statistics.median(shallow)
    return [Result(f"read {fmt_size(n)}, {s.chain_depth} snapshot levels deep",
                   fmt_time(d), f"{fmt_time(r)}: root", d / r, "-", None)]


def bench_copy(s: Sizes) -> list[Result]:
    """vmo_create + write + read of n bytes vs the same copies in plain Python."""
    n = s.copy
    data = bytes(range(256)) * (n // 256)
    with Kernel(memory=n + 16 * MiB) as k:
        vmo_t: list[float] = []
        base_t: list[float] = []
        out: list[bytes] = []

        def with_vmo() -> None:
            w = k.vmo_create(n)
            w.write(data)
            out.append(w.read(n))
            holder.append(w)

        def baseline() -> None:
            buf = bytearray(n)
            buf[:] = data
            out.append(bytes(buf))

        for i in range(s.rounds):
            holder: list[vmo.Vmo] = []
            vmo_t.append(timed(with_vmo))
            if i == 0 and out[0] != data:
                raise AssertionError("the VMO did not read back what was written")
            holder[0].close()
            out.clear()
            base_t.append(timed(baseline))
            out.clear()
    v, b = statistics.median(vmo_t), statistics.median(base_t)
    ratio = b / v
    return [Result(f"create+write+read {fmt_size(n)} (base/vmo)",
                   fmt_time(v), f"{fmt_time(b)}: bytearray", ratio, ">= 0.5", ratio >= 0.5)]


def _page_list_bytes(k: Kernel) -> int:
    return sum(node.page_list.metadata_bytes()
               for hier in k.hierarchies() if hier.root is not None
               for node in hier.root.walk_subtree())


def bench_metadata(s: Sizes) -> tuple[list[Result], list[str]]:
    """Python-side metadata per committed page: by the model's own accounting, and by
    tracemalloc (everything Python allocated while committing)."""
    n = s.metadata
    with Kernel(memory=n + 16 * MiB) as k:
        v = k.vmo_create(n)
        v.op_range(VmoOp.COMMIT, 0, n)
        pages = v.get_info().committed_bytes // PAGE_SIZE
        columns = k.pmm.metadata_bytes_per_frame()
        nodes = _page_list_bytes(k) / pages
        model = columns + nodes
        v.close()
    # A fresh kernel, so that frame numbers and page-list nodes are all allocated under trace.
    with Kernel(memory=n + 16 * MiB) as k:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        start = tracemalloc.get_traced_memory()[0]
        v = k.vmo_create(n)
        v.op_range(VmoOp.COMMIT, 0, n)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - start
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        pages = v.get_info().committed_bytes // PAGE_SIZE
        traced = columns + growth / pages
        v.close()
    sites = []
    for stat in after.compare_to(before, "lineno")[:5]:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        sites.append(f"{where:<24} {stat.size_diff / pages:7.1f} B/page  "
                     f"({stat.count_diff:+d} blocks)")
    results = [
        Result("metadata B/committed page", f"{model:.1f} B",
               f"{columns:.1f} cols + {nodes:.1f} nodes", None, "<= 64", model <= 64),
        Result("  cross-check with tracemalloc", f"{traced:.1f} B",
               f"{columns:.1f} cols + {growth / pages:.1f} traced", None, "<= 64",
               traced <= 64),
    ]
    return results, sites


# ---------------------------------------------------------------------------- report


def print_table(results: list[Result], notes: list[str], plain: bool) -> None:
    rows = [[r.name, r.value, r.baseline, "" if r.ratio is None else f"{r.ratio:.2f}",
             r.target, _report.verdict(r.passed)] for r in results]
    header = ["benchmark", "value", "baseline", "ratio", "target", "result"]
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        print(line.format(*header))
        print(line.format(*("-" * w for w in widths)))
        for r in rows:
            print(line.format(*r).rstrip())
        for note in notes:
            print(note)
        return
    console = Console()
    t = Table(title="vmo core benchmarks", title_justify="left")
    for i, h in enumerate(header):
        # The name and the baseline may wrap; numbers and verdicts never.
        t.add_column(h, justify="right" if i in (1, 3) else "left", no_wrap=i not in (0, 2),
                     overflow="fold")
    for r in rows:
        style = {"PASS": "green", "FAIL": "bold red"}.get(r[-1], "")
        t.add_row(*r[:-1], f"[{style}]{r[-1]}[/]" if style else r[-1])
    console.print(t)
    for note in notes:
        console.print(note, highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (smoke test)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--plain", action="store_true",
                   help="plain text (the default when stdout is not a terminal)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    start = time.perf_counter()
    results: list[Result] = []
    results += bench_clone(s)
    results += bench_chain(s)
    results += bench_copy(s)
    meta, sites = bench_metadata(s)
    results += meta
    notes = [f"{'quick' if args.quick else 'full'} mode, {s.rounds} rounds (medians); "
             f"page size {PAGE_SIZE}; Python {sys.version.split()[0]}; "
             f"{time.perf_counter() - start:.1f} s",
             "tracemalloc growth per committed page, by allocation site:"]
    notes += ["  " + line for line in sites]
    results = _report.smoke(results, args.quick)
    if args.quick:
        notes.append(_report.SMOKE_NOTE)
    print_table(results, notes, _report.plain(args.plain))
    failed = [r.name.strip() for r in results if r.passed is False]
    if failed and args.check:
        print(f"targets missed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head`: the reader left; do not complain about it at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
