#!/usr/bin/env python3
"""Benchmarks of the user pager and `FilePager`, each a ratio against a same-run baseline.

    python bench/bench_pager.py            # full sizes (~10 s, ~200 MiB of memory)
    python bench/bench_pager.py --quick    # smoke mode: small sizes, few rounds
    python bench/bench_pager.py --check    # exit 1 if a target is missed

Rows:

- page requests served per second, handler mode and queue mode with a serving thread, for
  single pages and 16-page batches; baseline: the same supplies and reads done directly
  (supply ahead, then read: no request, no wait, no retry). Reported, no target.
- pages per second `FilePager` reads from a file (loading every page of a cold VMO with
  PREFETCH, in sequential pieces of 16 and 256 pages, and cold ``vmo.read`` of the same
  pieces) and writes back to it (`FilePager.flush` of a fully dirty VMO, in chunks of 16 and
  256 pages). Two baselines, each run in the same process, rounds interleaved:

  * *like for like* (the target rows, at least 0.5): the same file read with ``os.preadv``
    into, or written with ``os.pwrite`` from, a resident buffer as large as the file, in the
    same pieces. That is what FilePager does: at the end the whole file is in memory (the
    VMO's pages), each byte copied once between the page cache and that memory.
  * *one reused buffer* (reported): ``os.pread`` / ``os.pwrite`` of the same pieces through
    one buffer of a piece's size, so that the data never leaves the CPU caches and nothing
    is kept. On this kind of machine that alone is 1.5-2x faster than copying into memory
    that holds the file (a cold destination), so these ratios show the cache effect as well
    as the pager's own cost.

Below the table, where the time of a FilePager read and flush goes, phase by phase (each phase
timed on its own, in microseconds per page), so that a missed target says what to speed up.
Timings are medians of several rounds (``time.perf_counter``), the garbage collector disabled
during each timed call, measured and baseline calls interleaved. On a shared, loaded machine a
long loop is preempted for a few milliseconds at a time, and the values move by up to a factor
of two between runs; the phase breakdown times single calls and is steadier.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

try:
    import vmo
except ImportError:  # run from a checkout without installing: the package is next door
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import vmo

import _report  # bench/_report.py, next to this script

from vmo import PAGE_SIZE, Kernel, PageRequest, PageRequestCommand, PagerOp, ZxError
from vmo.pager import FilePager

P = PAGE_SIZE
KiB, MiB = 1 << 10, 1 << 20
TARGET = 0.5


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
    requests: int  # single-page requests per round
    batches: int  # 16-page requests per round
    file: int  # bytes of the file FilePager serves


FULL = Sizes(rounds=5, requests=2000, batches=400, file=64 * MiB)
QUICK = Sizes(rounds=3, requests=200, batches=40, file=8 * MiB)


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def warm(k: Kernel) -> Kernel:
    """Touch every frame of the arena once. The first touch of memfd memory is a page fault
    in Linux; without this, whichever side of a comparison runs first pays for it."""
    free = k.memory_stats().free_pages
    v = k.vmo_create(free * P)
    v.op_range(vmo.VmoOp.COMMIT, 0, free * P)
    v.close()
    return k


def rate(n: float, seconds: float) -> str:
    if n / seconds >= 1e6:
        return f"{n / seconds / 1e6:.2f} M/s"
    return f"{n / seconds / 1e3:.1f} k/s"


# ---------------------------------------------------------------------------- page requests

PATTERN = bytes(range(256)) * (16 * P // 256)


def supply(pager: vmo.Pager, v: vmo.Vmo, aux: vmo.Vmo, offset: int, length: int) -> None:
    """What a pager does per request: fill aux, move its pages in."""
    aux.write(memoryview(PATTERN)[:length])
    pager.supply_pages(v, offset, length, aux, 0)


def supply_and_read(pager: vmo.Pager, v: vmo.Vmo, aux: vmo.Vmo, count: int,
                    length: int) -> None:
    for i in range(count):
        supply(pager, v, aux, i * length, length)
        v.read(length, i * length)


def read_pieces(v: vmo.Vmo, count: int, length: int) -> None:
    for i in range(count):
        v.read(length, i * length)


class Server:
    """Queue mode: a thread that serves every READ request of ``pager`` until it closes."""

    def __init__(self, k: Kernel, pager: vmo.Pager, length: int) -> None:
        self.pager = pager
        self.aux = k.vmo_create(length)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                req = self.pager.get_request()
            except ZxError:
                return
            if req.command == PageRequestCommand.READ:
                supply(self.pager, req.vmo, self.aux, req.offset, req.length)

    def stop(self) -> None:
        self.pager.close()
        self.thread.join(5)
        self.aux.close()


class Handler:
    """Handler mode: serves each request on the thread that needs the page."""

    def __init__(self, k: Kernel, length: int) -> None:
        self.aux = k.vmo_create(length)
        self.pager = k.pager_create(self)

    def __call__(self, req: PageRequest) -> None:
        supply(self.pager, req.vmo, self.aux, req.offset, req.length)


def bench_requests(s: Sizes) -> tuple[list[Result], list[str]]:
    """Requests served per second, handler and queue mode, 1 and 16 pages per request."""
    results = []
    notes = []
    per_mode: dict[tuple[str, int], float] = {}
    with warm(Kernel(memory=(s.requests + 16 * s.batches) * P * 3 + 16 * MiB,
                     page_request_timeout=30)) as k:
        for batch, count in ((1, s.requests), (16, s.batches)):
            pages = batch * count
            length = batch * P
            times: dict[str, list[float]] = {"direct": [], "handler": [], "queue": []}
            for _ in range(s.rounds):
                # Baseline: the same supplies and reads, without a request in between.
                pager = k.pager_create()
                v = pager.create_vmo(pages * P)
                aux = k.vmo_create(length)
                times["direct"].append(timed(partial(supply_and_read, pager, v, aux, count,
                                                     length)))
                pager.close()
                v.close()
                aux.close()
                # Handler mode: each read makes one request, served on the reading thread.
                h = Handler(k, length)
                hv = h.pager.create_vmo(pages * P)
                times["handler"].append(timed(partial(read_pieces, hv, count, length)))
                if h.pager.handler_errors:
                    raise AssertionError("the benchmark handler failed")
                h.pager.close()
                hv.close()
                h.aux.close()
                # Queue mode: a serving thread takes each request from the port.
                qp = k.pager_create()
                qv = qp.create_vmo(pages * P)
                server = Server(k, qp, length)
                times["queue"].append(timed(partial(read_pieces, qv, count, length)))
                server.stop()
                qv.close()
            base = statistics.median(times["direct"])
            for mode, label in (("handler", "handler mode"),
                                ("queue", "queue mode + serving thread")):
                t = statistics.median(times[mode])
                per_mode[(mode, batch)] = t
                results.append(Result(
                    f"requests served, {label}, {batch} page{'s' if batch > 1 else ''}",
                    f"{rate(count, t)} req, {rate(pages, t)} pages",
                    f"{rate(count, base)}: direct supply+read", base / t, "-", None))
    for batch in (1, 16):
        cost = per_mode[("queue", batch)] / per_mode[("handler", batch)]
        notes.append(f"queue mode costs {cost:.1f}x handler mode per {batch}-page request "
                     "(the wake-ups of the serving thread and of the reader)")
    return results, notes


# ---------------------------------------------------------------------------- FilePager


def make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, "bench.bin")
    with open(path, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
        f.write(block[:size % MiB])
    with open(path, "rb") as f:  # into the page cache, so both sides read from memory
        while f.read(8 * MiB):
            pass
    return path


def pread_pieces(fd: int, n: int, piece: int) -> None:
    for off in range(0, n, piece):
        os.pread(fd, piece, off)


def pread_into(fd: int, memory: memoryview, piece: int) -> None:
    """Read the file into ``memory`` (as large as the file), piece by piece."""
    for off in range(0, len(memory), piece):
        os.preadv(fd, [memory[off:off + piece]], off)


def pwrite_pieces(fd: int, data: bytes, n: int) -> None:
    for off in range(0, n, len(data)):
        os.pwrite(fd, data, off)


def pwrite_from(fd: int, memory: memoryview, piece: int) -> None:
    """Write ``memory`` (as large as the file) to the file, piece by piece."""
    for off in range(0, len(memory), piece):
        os.pwrite(fd, memory[off:off + piece], off)


def resident(size: int) -> memoryview:
    """A buffer of ``size`` bytes with every page touched (as the kernel's warmed arena is)."""
    buf = bytearray(size)
    for off in range(0, size, P):
        buf[off] = 1
    return memoryview(buf)


def vmo_read_pieces(v: vmo.Vmo, n: int, piece: int) -> None:
    for off in range(0, n, piece):
        v.read(piece, off)


def vmo_prefetch_pieces(v: vmo.Vmo, n: int, piece: int) -> None:
    for off in range(0, n, piece):
        v.op_range(vmo.VmoOp.PREFETCH, off, piece)


def bench_file_read(s: Sizes, path: str) -> list[Result]:
    """FilePager reading the file into the VMO, against reading the file directly.

    The load rows (PREFETCH: each byte is read from the file once, straight into the VMO's
    pages) carry the target against the like-for-like baseline; the cold ``vmo.read`` rows also
    copy every byte back out of the VMO, so they are reported without a target.
    """
    n = s.file
    results = []
    memory = resident(n)
    with warm(Kernel(memory=n * 2 + 32 * MiB, page_request_timeout=30)) as k:
        for piece_pages, how in ((16, "load"), (256, "load"), (16, "read"), (256, "read")):
            piece = piece_pages * P
            like_t: list[float] = []
            reused_t: list[float] = []
            fp_t: list[float] = []
            for _ in range(s.rounds):
                fd = os.open(path, os.O_RDONLY)
                like_t.append(timed(partial(pread_into, fd, memory, piece)))
                reused_t.append(timed(partial(pread_pieces, fd, n, piece)))
                os.close(fd)
                fp = FilePager(k, path)  # a cold VMO every round
                work = vmo_prefetch_pieces if how == "load" else vmo_read_pieces
                fp_t.append(timed(partial(work, fp.vmo, n, piece)))
                if fp.metrics().pages_read != n // P:
                    raise AssertionError("FilePager did not read every page once")
                fp.close(flush=False)
            like, reused, v = (statistics.median(t) for t in (like_t, reused_t, fp_t))
            what = (f"load {piece_pages}-page pieces (PREFETCH)" if how == "load"
                    else f"cold vmo.read, {piece_pages}-page pieces (+ copy out)")
            target = how == "load"
            results.append(Result(
                f"FilePager read: {what}", f"{rate(n // P, v)} pages",
                f"{rate(n // P, like)}: os.preadv into a {n // MiB} MiB buffer", like / v,
                f">= {TARGET}" if target else "-", like / v >= TARGET if target else None))
            results.append(Result(
                "  same, against one reused buffer", f"{rate(n // P, v)} pages",
                f"{rate(n // P, reused)}: os.pread, one {piece_pages}-page buffer", reused / v,
                "-", None))
    return results


def bench_file_write(s: Sizes, path: str) -> list[Result]:
    n = s.file
    results = []
    memory = resident(n)
    with warm(Kernel(memory=n * 2 + 32 * MiB, page_request_timeout=30)) as k:
        for chunk_pages in (16, 256):
            chunk = chunk_pages * P
            data = os.urandom(chunk)
            block = data * (MiB // chunk)
            for off in range(0, n, MiB):
                memory[off:off + MiB] = block
            like_t: list[float] = []
            reused_t: list[float] = []
            fp_t: list[float] = []
            for _ in range(s.rounds):
                fd = os.open(path, os.O_RDWR)
                like_t.append(timed(partial(pwrite_from, fd, memory, chunk)))
                reused_t.append(timed(partial(pwrite_pieces, fd, data, n)))
                os.close(fd)
                fp = FilePager(k, path, chunk_size=chunk)
                for off in range(0, n, MiB):  # every page Dirty
                    fp.vmo.write(block, off)
                fp_t.append(timed(fp.flush))
                if fp.metrics().pages_written_back != n // P:
                    raise AssertionError("flush did not write every page back")
                fp.close(flush=False)
            like, reused, v = (statistics.median(t) for t in (like_t, reused_t, fp_t))
            results.append(Result(
                f"FilePager write-back (flush), {chunk_pages}-page chunks",
                f"{rate(n // P, v)} pages",
                f"{rate(n // P, like)}: os.pwrite from a {n // MiB} MiB buffer", like / v,
                f">= {TARGET}", like / v >= TARGET))
            results.append(Result(
                "  same, against one reused buffer", f"{rate(n // P, v)} pages",
                f"{rate(n // P, reused)}: os.pwrite, one {chunk_pages}-page buffer",
                reused / v, "-", None))
    return results


# ---------------------------------------------------------------------------- where the time goes


def phases_read(s: Sizes, path: str) -> list[str]:
    """One 256-page FilePager load (PREFETCH with readahead off), phase by phase, each phase
    timed on its own."""
    chunk = 256 * P
    count = min(s.file // chunk, 32)
    whole, base = "whole request (cold PREFETCH)", "os.preadv into a resident buffer"
    t: dict[str, list[float]] = {name: [] for name in
                                 ("lseek SEEK_DATA (hole check)",
                                  "supply_pages_from_fd (preadv + supply)",
                                  "PREFETCH (present)", whole, base)}
    memory = resident(count * chunk)
    with warm(Kernel(memory=count * chunk * 4 + 32 * MiB)) as k:
        fd = os.open(path, os.O_RDONLY)
        for _ in range(max(s.rounds, 3)):
            pager = k.pager_create()
            v = pager.create_vmo(count * chunk)
            for i in range(count):
                off = i * chunk
                t[base].append(timed(partial(os.preadv, fd, [memory[off:off + chunk]], off)))
                t["lseek SEEK_DATA (hole check)"].append(
                    timed(partial(os.lseek, fd, off, os.SEEK_DATA)))
                t["supply_pages_from_fd (preadv + supply)"].append(timed(partial(
                    pager.supply_pages_from_fd, v, off, chunk, fd, off)))
                t["PREFETCH (present)"].append(timed(partial(v.op_range, vmo.VmoOp.PREFETCH,
                                                             off, chunk)))
            pager.close()
            v.close()
            fp = FilePager(k, path, readahead=0)
            for i in range(count):
                t[whole].append(timed(partial(fp.vmo.op_range, vmo.VmoOp.PREFETCH, i * chunk,
                                              chunk)))
            fp.close(flush=False)
        os.close(fd)
    return _phase_lines("FilePager load of 256 pages", t, whole, base, 256,
                        "rest (request, wait, retry)")


def flush_by_hand(pager: vmo.Pager, v: vmo.Vmo, fd: int, n: int, chunk: int,
                  t: dict[str, list[float]]) -> None:
    """What `FilePager.flush` does, each phase timed on its own."""
    t["query_dirty_ranges"].append(timed(partial(pager.query_dirty_ranges, v, 0, n)))
    t["WRITEBACK_BEGIN"].append(timed(partial(pager.op_range, PagerOp.WRITEBACK_BEGIN, v, 0,
                                              n)))
    t["read_to_fd (pwritev from pages)"].append(timed(
        lambda: [v.read_to_fd(fd, chunk, off, off) for off in range(0, n, chunk)]))
    t["WRITEBACK_END"].append(timed(partial(pager.op_range, PagerOp.WRITEBACK_END, v, 0, n)))


def phases_flush(s: Sizes, path: str) -> list[str]:
    """One flush of a fully dirty VMO, phase by phase (as `FilePager.flush` runs them)."""
    n = min(s.file, 16 * MiB)
    chunk = 256 * P
    whole, base = "whole flush", "os.pwrite baseline"
    t: dict[str, list[float]] = {name: [] for name in
                                 ("query_dirty_ranges", "WRITEBACK_BEGIN",
                                  "read_to_fd (pwritev from pages)", "WRITEBACK_END", whole,
                                  base)}
    data = os.urandom(chunk)
    with warm(Kernel(memory=n * 3 + 32 * MiB)) as k:
        fd = os.open(path, os.O_RDWR)
        for _ in range(max(s.rounds, 3)):
            fp = FilePager(k, path, size=n)
            for off in range(0, n, chunk):
                fp.vmo.write(data, off)
            flush_by_hand(fp.pager, fp.vmo, fd, n, chunk, t)
            for off in range(0, n, chunk):
                fp.vmo.write(data, off)
            t[whole].append(timed(fp.flush))
            t[base].append(timed(partial(pwrite_pieces, fd, data, n)))
            fp.close(flush=False)
        os.close(fd)
    return _phase_lines(f"FilePager.flush of {n // MiB} MiB", t, whole, base, n // P, "rest")


def _phase_lines(title: str, t: dict[str, list[float]], whole: str, base: str,
                 pages: int, rest_name: str) -> list[str]:
    med = {name: statistics.median(v) for name, v in t.items()}
    total = med[whole]
    lines = [f"where the time goes: {title} ({total / pages * 1e6:.2f} us/page; "
             f"{base}: {med[base] / pages * 1e6:.2f} us/page)"]
    accounted = 0.0
    for name, value in med.items():
        if name in (whole, base):
            continue
        accounted += value
        lines.append(f"  {name:<40} {value / pages * 1e6:6.2f} us/page  "
                     f"{100 * value / total:5.1f} %")
    rest = total - accounted
    if rest >= 0:
        lines.append(f"  {rest_name:<40} {rest / pages * 1e6:6.2f} us/page  "
                     f"{100 * rest / total:5.1f} %")
    else:  # each phase is timed on its own: their sum may exceed the whole by noise
        lines.append(f"  {rest_name:<40}   ~0 (the phases, timed apart, sum to "
                     f"{accounted / pages * 1e6:.2f} us/page)")
    return lines


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
    table = Table(title="vmo pager benchmarks", title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i in (1, 3) else "left",
                         no_wrap=i not in (0, 2), overflow="fold")
    for r in rows:
        style = {"PASS": "green", "FAIL": "bold red"}.get(r[-1], "")
        table.add_row(*r[:-1], f"[{style}]{r[-1]}[/]" if style else r[-1])
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (smoke test)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--plain", action="store_true",
                   help="plain text (the default when stdout is not a terminal)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    start = time.perf_counter()
    results, notes = bench_requests(s)
    with tempfile.TemporaryDirectory(prefix="vmo-bench-") as d:
        path = make_file(d, s.file)
        results += bench_file_read(s, path)
        results += bench_file_write(s, path)
        notes += phases_read(s, path)
        notes += phases_flush(s, path)
    notes.insert(0, f"{'quick' if args.quick else 'full'} mode, {s.rounds} rounds (medians); "
                    f"file {s.file // MiB} MiB (in the page cache); page size {P}; "
                    f"Python {sys.version.split()[0]}; {time.perf_counter() - start:.1f} s")
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
    except BrokenPipeError:  # `| head`: the reader left; do not complain about it at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
