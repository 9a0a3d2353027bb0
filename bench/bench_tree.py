#!/usr/bin/env python3
"""Big trees of snapshot clones: how the core's costs grow with the number of clones.

    python bench/bench_tree.py            # N = 100, 400, 1600; 10,000 snapshots; targets
    python bench/bench_tree.py --quick    # smoke mode: small trees, no targets
    python bench/bench_tree.py --check    # exit 1 if a target is missed

Trees of N snapshot clones of a 1024-page VMO (every page written) in three shapes: *fan* (N
snapshots of the one VMO), *chain* (each clone a snapshot of the one before) and *random*
(each a snapshot of a VMO of the tree picked at random, seeded). In each tree it times one
fork of a shared page (a one-byte write to a page the clone never wrote), one ``get_info``,
one close, one ZERO of the tail half (on another clone), and ``get_info`` of every VMO of the
tree. Each size is compared with the smallest tree of the same shape measured in the same run:
Zircon's walks are linear in the depth at worst, so fan(1600)/fan(100) must stay within 20 for
fork, close and get_info. Also: ``get_info`` of every VMO of a 1600-fan in under 10 s; 10,000
snapshots of one VMO work (a write, get_info, close, ``vmo.debug.validate``); a one-page read
through 64 levels of snapshots within 4x a read of the root.

A call that fails (``RecursionError`` on a deep tree, a ``ZxError``) is reported in its cell
and fails its target; the benchmark goes on. Timings are medians over rounds, the garbage
collector run before and disabled during each timed call. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

try:
    import vmo
except ImportError:  # run from a checkout without installing: the package is next door
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import vmo

import _report  # bench/_report.py, next to this script

from vmo import PAGE_SIZE, ChildOptions, Kernel, VmoOp, ZxError
from vmo.debug import validate

PAGES = 1024  # pages of the VMO every tree starts from
OPS = ("fork", "get_info", "close", "zero tail")
TARGET_RATIO = 20.0  # fan(1600) / fan(100) for fork, close, get_info
INFO_ALL_LIMIT = 10.0  # seconds for get_info of every VMO of a 1600-fan
READ_RATIO = 4.0  # one-page read through 64 snapshot levels / read of the root


@dataclass
class Sizes:
    ns: tuple[int, ...]
    rounds: int
    budget: float  # seconds of timed calls per tree before rounds stop early
    info_all_budget: float  # get_info of every VMO gives up (extrapolates) after this
    big_fan: int
    read_levels: int
    read_reps: int
    targets: bool


FULL = Sizes(ns=(100, 400, 1600), rounds=5, budget=20.0, info_all_budget=30.0, big_fan=10_000,
             read_levels=64, read_reps=200, targets=True)
QUICK = Sizes(ns=(10, 40), rounds=2, budget=2.0, info_all_budget=2.0, big_fan=100,
              read_levels=64, read_reps=50, targets=False)

# What a cell holds: a time in seconds, or the failure that stopped the call.
Cell = float | str


@dataclass
class TreeResult:
    shape: str
    n: int
    build: Cell
    ops: dict[str, Cell] = field(default_factory=dict)
    info_all: Cell = "-"
    info_all_note: str = ""


@dataclass
class Target:
    name: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: reported only


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def attempt(fn: Callable[[], object]) -> Cell:
    """The time of ``fn()``, or the name of what it raised (the core's failure, reported)."""
    try:
        return timed(fn)
    except RecursionError:
        return "RecursionError"
    except ZxError as e:
        return e.status.name
    except Exception as e:  # noqa: BLE001 - any failure of the core is a result here
        return type(e).__name__


def fmt(cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    if cell < 1e-3:
        return f"{cell * 1e6:.0f} us"
    if cell < 1:
        return f"{cell * 1e3:.2f} ms"
    return f"{cell:.2f} s"


def median_cell(cells: list[Cell]) -> Cell:
    failures = [c for c in cells if isinstance(c, str)]
    if failures:
        return failures[0]
    return statistics.median(c for c in cells if not isinstance(c, str))


def new_kernel(n: int, rounds: int) -> Kernel:
    # The 1024 pages, and for each round a fork that may copy the page once per level.
    frames = PAGES + 2 * rounds * (n + 8) + 4096
    return Kernel(memory=max(64 << 20, frames * PAGE_SIZE))


def release(k: Kernel) -> None:
    """Free the kernel's arena at once. Teardown is not what is measured, and closing the
    VMOs of a big tree one by one can take far longer than the benchmark (or fail with a
    RecursionError); the bench makes no mappings, so the arena (memfd and mmap) is all there
    is to release, and every VMO handle is dead with the kernel."""
    k.closed = True
    k.pmm.close()


def make_root(k: Kernel) -> vmo.Vmo:
    root = k.vmo_create(PAGES * PAGE_SIZE)
    root.write(b"\xa5" * (PAGES * PAGE_SIZE))
    return root


def build(root: vmo.Vmo, shape: str, n: int) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
    """``n`` snapshot clones grown from ``root`` in ``shape``."""
    clones: list[vmo.Vmo] = []
    rng = random.Random(n)
    for _ in range(n):
        if shape == "fan":
            parent = root
        elif shape == "chain":
            parent = clones[-1] if clones else root
        else:
            parent = rng.choice([root, *clones])
        clones.append(parent.create_child(ChildOptions.SNAPSHOT, 0, PAGES * PAGE_SIZE))
    return root, clones


def bench_tree(shape: str, n: int, s: Sizes) -> TreeResult:
    k = new_kernel(n, s.rounds)
    try:
        made: list[tuple[vmo.Vmo, list[vmo.Vmo]]] = []
        root0 = make_root(k)
        built = attempt(lambda: made.append(build(root0, shape, n)))
        result = TreeResult(shape, n, built if isinstance(built, str) else built / n)
        if isinstance(built, str):
            result.ops = {op: f"build: {built}" for op in OPS}
            result.info_all = f"build: {built}"
            return result
        root, clones = made[0]
        result.info_all, result.info_all_note = info_of_all([root, *clones], s.info_all_budget)
        cells: dict[str, list[Cell]] = {op: [] for op in OPS}
        spent = 0.0
        for r in range(min(s.rounds, n // 2)):
            # Two clones per round, newest first: one is forked, queried and closed, the
            # other has its tail zeroed (each call sees a clone nothing was done to yet).
            a, b = clones[-(2 * r + 1)], clones[-(2 * r + 2)]
            page = 1 + r  # a page `a` never wrote: it still shares it
            round_cells = {
                "fork": attempt(partial(a.write, b"\x01", page * PAGE_SIZE)),
                "get_info": attempt(a.get_info),
                "zero tail": attempt(partial(b.op_range, VmoOp.ZERO, PAGES // 2 * PAGE_SIZE,
                                             PAGES // 2 * PAGE_SIZE)),
                "close": attempt(a.close),
            }
            for op, cell in round_cells.items():
                cells[op].append(cell)
                spent += cell if not isinstance(cell, str) else 0.0
            if any(isinstance(c, str) for c in round_cells.values()) or spent > s.budget:
                break  # a failure leaves the tree in an unknown state; or out of time
        result.ops = {op: median_cell(cells[op]) if cells[op] else "-" for op in OPS}
        return result
    finally:
        release(k)


def info_of_all(vmos: list[vmo.Vmo], budget: float) -> tuple[Cell, str]:
    """``get_info`` of every VMO; past ``budget`` seconds, the rest is extrapolated."""
    gc.collect()
    t0 = time.perf_counter()
    done = 0
    try:
        for v in vmos:
            v.get_info()
            done += 1
            if time.perf_counter() - t0 > budget:
                break
    except RecursionError:
        return "RecursionError", ""
    except ZxError as e:
        return e.status.name, ""
    elapsed = time.perf_counter() - t0
    if done < len(vmos):
        estimate = elapsed / done * len(vmos)
        return estimate, f"extrapolated from {done} of {len(vmos)} in {elapsed:.0f} s"
    return elapsed, ""


def bench_big_fan(s: Sizes) -> list[Target]:
    """Snapshots of one VMO by the ten thousand: each step must simply work."""
    n = s.big_fan
    k = new_kernel(n, 1)
    rows: list[Target] = []

    def row(step: str, cell: Cell) -> None:
        ok = not isinstance(cell, str)
        rows.append(Target(f"{n:,} snapshots of one VMO: {step}", fmt(cell), "-", None,
                           "works" if s.targets else "-", ok if s.targets else None))

    try:
        made: list[tuple[vmo.Vmo, list[vmo.Vmo]]] = []
        root0 = make_root(k)
        built = attempt(lambda: made.append(build(root0, "fan", n)))
        row("create", built)
        if isinstance(built, str):
            return rows
        root, clones = made[0]
        newest = clones[-1]
        steps: list[tuple[str, Callable[[], object]]] = [
            ("one-byte write (fork)", lambda: newest.write(b"\x02", PAGE_SIZE)),
            ("one-byte write to the original", lambda: root.write(b"\x03", 0)),
            ("get_info", newest.get_info),
            ("close", newest.close),
            ("vmo.debug.validate", lambda: validate(k)),
        ]
        for step, fn in steps:
            cell = attempt(fn)
            row(step, cell)
            if isinstance(cell, str):
                break
        return rows
    finally:
        release(k)


def bench_deep_read(s: Sizes) -> Target:
    """A one-page read through ``read_levels`` nested snapshots against a read of the root."""
    k = new_kernel(s.read_levels, 1)
    try:
        made: list[tuple[vmo.Vmo, list[vmo.Vmo]]] = []
        root0 = make_root(k)
        built = attempt(lambda: made.append(build(root0, "chain", s.read_levels)))
        name = f"one-page read, {s.read_levels} snapshot levels deep"
        if isinstance(built, str):
            return Target(name, built, "-", None, f"<= {READ_RATIO:g}", False)
        root, clones = made[0]
        deep = clones[-1]
        at = (PAGES // 2) * PAGE_SIZE
        assert deep.read(PAGE_SIZE, at) == root.read(PAGE_SIZE, at)
        deep_t: list[Cell] = []
        root_t: list[Cell] = []
        for _ in range(max(s.rounds, 5)):
            root_t.append(attempt(lambda: [root.read(PAGE_SIZE, at) for _ in range(s.read_reps)]))
            deep_t.append(attempt(lambda: [deep.read(PAGE_SIZE, at) for _ in range(s.read_reps)]))
        d, r = median_cell(deep_t), median_cell(root_t)
        if isinstance(d, str) or isinstance(r, str):
            return Target(name, fmt(d), fmt(r), None, f"<= {READ_RATIO:g}", False)
        ratio = d / r
        return Target(name, fmt(d / s.read_reps), f"{fmt(r / s.read_reps)}: the root", ratio,
                      f"<= {READ_RATIO:g} (goal)", ratio <= READ_RATIO if s.targets else None)
    finally:
        release(k)


def growth_targets(results: list[TreeResult], s: Sizes) -> list[Target]:
    out: list[Target] = []
    by = {(r.shape, r.n): r for r in results}
    small, big = s.ns[0], s.ns[-1]
    for shape in ("fan", "chain", "random"):
        lo, hi = by[(shape, small)], by[(shape, big)]
        for op in OPS:
            a, b = hi.ops.get(op, "-"), lo.ops.get(op, "-")
            targeted = s.targets and shape == "fan" and op in ("fork", "close", "get_info")
            name = f"{shape}({big}) / {shape}({small}): {op}"
            if isinstance(a, str) or isinstance(b, str):
                out.append(Target(name, fmt(a), fmt(b), None,
                                  f"<= {TARGET_RATIO:g}" if targeted else "-",
                                  False if targeted else None))
                continue
            ratio = a / b
            out.append(Target(name, fmt(a), f"{fmt(b)}: N={small}", ratio,
                              f"<= {TARGET_RATIO:g}" if targeted else "-",
                              ratio <= TARGET_RATIO if targeted else None))
    fan = by[("fan", big)]
    cell = fan.info_all
    ok = not isinstance(cell, str) and cell < INFO_ALL_LIMIT and not fan.info_all_note
    value = fmt(cell) + (f" ({fan.info_all_note})" if fan.info_all_note else "")
    out.append(Target(f"get_info of all {big + 1} VMOs of a {big}-fan", value, "-", None,
                      f"< {INFO_ALL_LIMIT:g} s" if s.targets else "-",
                      ok if s.targets else None))
    return out


# ---------------------------------------------------------------------------- output


def print_tables(results: list[TreeResult], targets: list[Target], notes: list[str],
                 plain: bool) -> None:
    header1 = ["tree", "build/clone", *OPS, "get_info of all"]
    rows1 = [[f"{r.shape} N={r.n}", fmt(r.build), *(fmt(r.ops.get(op, "-")) for op in OPS),
              fmt(r.info_all) + (" *" if r.info_all_note else "")] for r in results]
    header2 = ["benchmark", "value", "baseline", "ratio", "target", "result"]
    rows2 = [[t.name, t.value, t.baseline, "" if t.ratio is None else f"{t.ratio:.2f}",
              t.target, _report.verdict(t.passed)] for t in targets]
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        for header, rows in ((header1, rows1), (header2, rows2)):
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            line = "  ".join(f"{{:<{w}}}" for w in widths)
            print(line.format(*header))
            print(line.format(*("-" * w for w in widths)))
            for r in rows:
                print(line.format(*r).rstrip())
            print()
        for note in notes:
            print(note)
        return
    console = Console()
    t1 = Table(title="trees of snapshot clones: time of one call", title_justify="left")
    for i, h in enumerate(header1):
        t1.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows1:
        t1.add_row(*r)
    console.print(t1)
    t2 = Table(title="growth and targets", title_justify="left")
    for i, h in enumerate(header2):
        t2.add_column(h, justify="right" if i in (1, 3) else "left", no_wrap=i not in (0, 2),
                      overflow="fold")
    for r in rows2:
        style = {"PASS": "green", "FAIL": "bold red"}.get(r[-1], "")
        t2.add_row(*r[:-1], f"[{style}]{r[-1]}[/]" if style else r[-1])
    console.print(t2)
    for note in notes:
        console.print(note, highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small trees, no targets (smoke test)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--plain", action="store_true", help="plain text tables, even with rich")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    plain = _report.plain(args.plain)
    start = time.perf_counter()
    results = [bench_tree(shape, n, s) for shape in ("fan", "chain", "random") for n in s.ns]
    targets = growth_targets(results, s)
    targets += bench_big_fan(s)
    targets.append(bench_deep_read(s))
    targets = _report.smoke(targets, args.quick)  # no targets in quick mode anyway
    notes = [f"{'quick' if args.quick else 'full'} mode: medians of up to {s.rounds} rounds "
             f"(fewer past {s.budget:g} s of calls per tree, or after a failure); "
             f"{PAGES}-page VMOs; Python {sys.version.split()[0]}; "
             f"recursion limit {sys.getrecursionlimit()}; "
             f"{time.perf_counter() - start:.1f} s",
             "* get_info of all: extrapolated from the VMOs done within "
             f"{s.info_all_budget:g} s"]
    if args.quick:
        notes.append(_report.SMOKE_NOTE)
    print_tables(results, targets, notes, plain)
    failed = [t.name for t in targets if t.passed is False]
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
