"""``vmo trace [-o FILE.jsonl] -- python script.py``: run a program with every kernel traced.

The program runs as a child process with ``VMO_TRACE_FILE`` set (`vmo.trace.TRACE_FILE_ENV`):
each `Kernel` it creates then records every event, as one JSON object per line with its
``kind`` and the kernel's number in the process (``kernel``), into that file. A child
process keeps the traced program's own ``__main__``, arguments, exit status and signals
exactly as without tracing, and lets any command line be traced (``python -m pkg``, a script
with a shebang). When it ends, the events are printed one per line (unless ``-o`` names a
file to keep them in, or ``--summary-only``), then a per-VMO summary: for each VMO, its size
and how many events of each kind concerned it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from vmo.trace import TRACE_FILE_ENV

# Summary columns: event kinds, in the order a VMO's life usually shows them.
SUMMARY_KINDS = ("clone", "fork", "migrate", "marker", "release", "merge", "page_request",
                 "supply", "dirty", "writeback", "evict", "discard", "fault", "swap")


def read_events(path: str) -> Iterator[dict[str, Any]]:
    """The events of a JSON-lines trace file; lines that are not events are skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and isinstance(d.get("kind"), str):
                yield d


def format_event(d: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={v}" for k, v in d.items()
                      if k not in ("kind", "seq", "time", "kernel"))
    return f"k{d.get('kernel', 1)} #{d.get('seq', '?'):<5} {d['kind']:<12} {fields}"


class Summary:
    """Events per VMO (kernel, koid), attributing node-only events through the nodes each
    VMO stood for (its own node, and the left node a snapshot gave it)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], collections.Counter[str]] = {}
        self.size: dict[tuple[int, int], int] = {}
        self.closed: set[tuple[int, int]] = set()
        self.node_koid: dict[tuple[int, int], int] = {}
        self.total = 0

    def add(self, d: dict[str, Any]) -> None:
        self.total += 1
        kernel = d.get("kernel", 1)
        kind = d["kind"]
        if kind == "vmo_create":
            key = (kernel, d.get("koid", 0))
            self.size[key] = d.get("size", 0)
            self.counts.setdefault(key, collections.Counter())
            self.node_koid[(kernel, d.get("node", 0))] = key[1]
            return
        if kind == "vmo_close":
            self.closed.add((kernel, d.get("koid", 0)))
            return
        if kind == "clone" and d.get("left"):
            self.node_koid[(kernel, d["left"])] = d.get("koid", 0)
        koid = d.get("child_koid") or d.get("koid") or self.node_koid.get(
            (kernel, d.get("node", 0)), 0)
        if koid:
            self.counts.setdefault((kernel, koid), collections.Counter())[kind] += 1

    def rows(self) -> list[list[str]]:
        out = []
        for key in sorted(self.counts):
            c = self.counts[key]
            state = "closed" if key in self.closed else "open"
            out.append([f"k{key[0]}", str(key[1]), str(self.size.get(key, "?")), state]
                       + [str(c[k]) if c[k] else "." for k in SUMMARY_KINDS])
        return out

    def write(self, stream: TextIO) -> None:
        header = ["kernel", "koid", "pages", "state", *SUMMARY_KINDS]
        rows = self.rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        stream.write(f"\nper-VMO summary ({self.total} events, {len(rows)} VMOs):\n")
        for r in [header, *rows]:
            stream.write("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + "\n")


def summarize(events: Iterable[dict[str, Any]]) -> Summary:
    s = Summary()
    for d in events:
        s.add(d)
    return s


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "trace", help="run a Python program with the kernel event trace on",
        description="Run COMMAND (e.g. python script.py) with every vmo.Kernel it creates "
                    "traced; print the events (or write them as JSON lines with -o) and a "
                    "per-VMO summary.")
    p.add_argument("-o", "--output", metavar="FILE.jsonl",
                   help="write the events here, one JSON object per line, instead of "
                        "printing them")
    p.add_argument("--summary-only", action="store_true", help="print only the summary")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the program to run, after --")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("vmo trace: give the program to run after --, e.g. "
              "vmo trace -- python script.py", file=sys.stderr)
        return 2
    tmp = None
    if args.output:
        path = args.output
    else:
        fd, tmp = tempfile.mkstemp(prefix="vmo-trace-", suffix=".jsonl")
        os.close(fd)
        path = tmp
    try:
        try:
            open(path, "w").close()  # a fresh file: kernels append to it
        except OSError as e:
            print(f"vmo trace: cannot write {path}: {e.strerror}", file=sys.stderr)
            return 2
        env = dict(os.environ, **{TRACE_FILE_ENV: os.path.abspath(path)})
        try:
            status = subprocess.call(cmd, env=env)
        except OSError as e:
            print(f"vmo trace: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
            return 127
        summary = Summary()
        for d in read_events(path):
            if not args.output and not args.summary_only:
                sys.stdout.write(format_event(d) + "\n")
            summary.add(d)
        summary.write(sys.stdout)
        if args.output:
            print(f"{summary.total} events written to {args.output}")
        sys.stdout.flush()
        return status if status >= 0 else 128 - status
    finally:
        if tmp is not None:
            os.unlink(tmp)
