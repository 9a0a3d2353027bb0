#!/usr/bin/env python3
"""Benchmarks of the swap source (`vmo.pager.swap`), each a ratio against a same-run baseline.

    python bench/bench_swap.py            # 256 MiB (~20 s, ~1 GiB of memory and disk)
    python bench/bench_swap.py --quick    # smoke mode: 16 MiB
    python bench/bench_swap.py --check    # exit 1 if a target is missed

Rows (a VMO of 256 MiB filled with non-zero bytes, swap files in a temporary directory):

- ``move_to_staging``: MiB/s against copying the same bytes from one memfd to another
  (``pwritev`` of a mapped memfd into a second one, the copy move_to_staging makes). Reported.
- ``swap_out``: MiB/s against writing the same bytes to a file in the same directory
  (``pwrite`` from memory, 4 MiB at a time, the file then unlinked). Target: at least 0.8.
- ``swap_in``: MiB/s against reading them back from such a file (``preadv``, 4 MiB at a
  time) into fresh memory -- a new memfd mapping, allocated by the read, which is swap-in's
  case: moving out gave the arena's memory back to the host, so bringing pages back allocates
  it again. Target: at least 0.8. Also reported against reading into a resident buffer
  (memory allocated beforehand), which shows what re-allocating costs on this host.
- ``trim``: of a prepared mix staged again (a quarter zero pages, a quarter faulted back from
  the swap file unchanged, half changed), the zero and clean pages trim finds, against those
  present. Target: all of them.
- fault service through a mapping: pages/s loading every page of a mapping of a swapped-out
  VMO, against loading a mapping of a `vmo.pager.FilePager` VMO of a file of the same size.
  Reported.
- the memory returned: the arena memfd's allocated blocks (``st_blocks``) before and after the
  VMO is moved out.

Timings are medians of a few rounds (``time.perf_counter``, the garbage collector off during each
timed call), measured and baseline calls interleaved. Plain text when stdout is not a terminal.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import vmo
except ImportError:  # run from a checkout without installing: the package is next door
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import vmo

import _report  # bench/_report.py, next to this script

from vmo import PAGE_SIZE, Kernel, VmoOp
from vmo.pager import FilePager
from vmo.pager.swap import SwapSource

P = PAGE_SIZE
MiB = 1 << 20
CHUNK = 4 * MiB
TARGET = 0.8


@dataclass
class Result:
    name: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: reported only


def timed(fn: Callable[[], object]) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def mibs(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else float("inf")


def fill_vmo(v: vmo.Vmo, size: int) -> None:
    block = bytes(range(1, 256)) * (CHUNK // 255 + 1)
    for off in range(0, size, CHUNK):
        v.write(memoryview(block)[:min(CHUNK, size - off)], off)


# ---------------------------------------------------------------------------- baselines


def memfd_copy(src: memoryview, size: int) -> float:
    dst = os.memfd_create("bench-copy", os.MFD_CLOEXEC)
    try:
        os.ftruncate(dst, size)
        return timed(lambda: [os.pwritev(dst, [src[o:o + CHUNK]], o)
                              for o in range(0, size, CHUNK)])
    finally:
        os.close(dst)


def file_write_read(directory: str, src: memoryview, size: int) -> tuple[float, float, float]:
    """Seconds to write ``src`` to a new file, to read it back into fresh memory (a new shared
    memfd mapping, allocated by the read: swap-in's case, since moving out gave the arena's
    memory back to the host), and into a resident buffer (memory allocated beforehand)."""
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    try:
        w = timed(lambda: [os.pwrite(fd, src[o:o + CHUNK], o) for o in range(0, size, CHUNK)])
        reads = []
        for resident in (False, True):
            mfd = os.memfd_create("bench-read", os.MFD_CLOEXEC)
            os.ftruncate(mfd, size)
            buf = mmap.mmap(mfd, size)
            view = memoryview(buf)
            if resident:
                view[::P] = bytes(size // P)
            reads.append(timed(lambda v=view: [os.preadv(fd, [v[o:o + CHUNK]], o)
                                               for o in range(0, size, CHUNK)]))
            view.release()
            buf.close()
            os.close(mfd)
        return w, reads[0], reads[1]
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- rounds


def round_trip(k: Kernel, directory: str, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with SwapSource(k, directory) as swap:
        v = swap.create_vmo(size)
        fill_vmo(v, size)
        out["blocks_before"] = os.fstat(k.pmm.fd).st_blocks * 512
        out["move"] = timed(swap.move_to_staging)
        out["blocks_after"] = os.fstat(k.pmm.fd).st_blocks * 512
        out["swap_out"] = timed(swap.swap_out)
        # The bytes are in the swap file's page cache, as the baseline's are.
        out["swap_in"] = timed(swap.swap_in)
        assert swap.status().metrics.resident_pages == size // P
        v.close()
    return out


def trim_mix(k: Kernel, directory: str, size: int) -> tuple[int, int, int]:
    """Returns (expected zero + clean, found, staged)."""
    n = size // P
    with SwapSource(k, directory) as swap:
        v = swap.create_vmo(size)
        fill_vmo(v, size)
        swap.move_to_staging()
        swap.swap_out()
        q = n // 4
        v.read(q * P, q * P)  # a quarter faulted back unchanged: clean
        v.op_range(VmoOp.ZERO, 0, q * P)  # a quarter zero (committed zero pages)
        v.op_range(VmoOp.COMMIT, 0, q * P)
        v.write(b"\x07" * (n // 2 * P), 2 * q * P)  # half changed: faulted back and written
        staged = swap.move_to_staging()
        found = swap.trim()
        v.close()
    return 2 * q, found, staged


def fault_service(k: Kernel, directory: str, size: int) -> tuple[float, float]:
    """Seconds to load every page of a mapping: of a swapped-out VMO, of a FilePager VMO."""
    with SwapSource(k, directory) as swap:
        v = swap.create_vmo(size)
        fill_vmo(v, size)
        swap.move_to_staging()
        swap.swap_out()
        with v.map() as m:
            t_swap = timed(lambda: [m.read(P, o) for o in range(0, size, P)])
        v.close()
    path = os.path.join(directory, "bench-file-pager.bin")
    with open(path, "wb") as f:
        block = bytes(range(1, 256)) * (CHUNK // 255 + 1)
        for off in range(0, size, CHUNK):
            f.write(block[:min(CHUNK, size - off)])
    try:
        with FilePager(k, path, readahead=0) as fp, fp.vmo.map() as m:
            t_file = timed(lambda: [m.read(P, o) for o in range(0, size, P)])
    finally:
        os.unlink(path)
    return t_swap, t_file


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
    table = Table(title="vmo swap benchmarks", title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i in (1, 3) else "left")
    for r in rows:
        style = {"PASS": "green", "FAIL": "bold red"}.get(r[-1], "")
        table.add_row(*r[:-1], f"[{style}]{r[-1]}[/]" if style else r[-1])
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 MiB, one round (smoke test)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--plain", action="store_true", help="plain text table, even on a terminal")
    p.add_argument("--dir", default=None, help="where the swap files go (default: a temp dir)")
    args = p.parse_args(argv)
    size = 16 * MiB if args.quick else 256 * MiB
    fault_size = size if args.quick else 64 * MiB
    rounds = 1 if args.quick else 3
    start = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vmo-bench-swap-", dir=args.dir) as d, \
            Kernel(memory=size + 64 * MiB) as k:
        src_buf = mmap.mmap(-1, size)
        src = memoryview(src_buf)
        src[:] = (bytes(range(1, 256)) * (size // 255 + 1))[:size]
        trips, copies, writes, reads, resident_reads = [], [], [], [], []
        for _ in range(rounds):
            trips.append(round_trip(k, d, size))
            copies.append(memfd_copy(src, size))
            w, r, rr = file_write_read(d, src, size)
            writes.append(w)
            reads.append(r)
            resident_reads.append(rr)
        src.release()
        src_buf.close()

        def med(key: str) -> float:
            return statistics.median(t[key] for t in trips)

        base_copy = statistics.median(copies)
        base_w, base_r = statistics.median(writes), statistics.median(reads)
        base_rr = statistics.median(resident_reads)
        for name, t, base, bname, target in [
                ("move_to_staging", med("move"), base_copy, "memfd copy", None),
                ("swap_out", med("swap_out"), base_w, "file write", TARGET),
                ("swap_in", med("swap_in"), base_r, "file read, fresh memory", TARGET),
                ("swap_in", med("swap_in"), base_rr, "file read, resident buffer", None)]:
            ratio = base / t
            results.append(Result(
                name, f"{mibs(size, t):.0f} MiB/s", f"{mibs(size, base):.0f} MiB/s ({bname})",
                ratio, "-" if target is None else f">= {target}",
                None if target is None else ratio >= target))
        want, found, staged = trim_mix(k, d, size)
        results.append(Result("trim (zero + clean found)", f"{found} pages",
                              f"{want} present (of {staged} staged)", found / want,
                              "= 1.0", found == want))
        t_swap, t_file = fault_service(k, d, fault_size)
        pages = fault_size // P
        results.append(Result("faults from the swap file", f"{pages / t_swap:.0f} pages/s",
                              f"{pages / t_file:.0f} pages/s (FilePager)", t_file / t_swap,
                              "-", None))
        before = statistics.median(t["blocks_before"] for t in trips)
        after = statistics.median(t["blocks_after"] for t in trips)
        results.append(Result("arena memory returned", f"{(before - after) / MiB:.0f} MiB",
                              f"{before / MiB:.0f} MiB allocated before", (before - after) /
                              size, "-", None))
    notes = [f"{'quick' if args.quick else 'full'} mode: {size // MiB} MiB VMO, {rounds} "
             f"round(s) (medians), faults over {fault_size // MiB} MiB; page size {P}; "
             f"Python {sys.version.split()[0]}; {time.perf_counter() - start:.1f} s"]
    results = _report.smoke(results, args.quick)
    if args.quick:
        notes.append(_report.SMOKE_NOTE)
    print_table(results, notes, _report.plain(args.plain))
    failed = [r.name for r in results if r.passed is False]
    if failed and args.check:
        print(f"targets missed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
