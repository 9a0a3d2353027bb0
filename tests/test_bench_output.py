"""The benchmarks' reports: plain text when stdout is not a terminal, and ``--quick`` (a smoke
run) prints ratios without PASS/FAIL verdicts. The numbers themselves are not tested here
(speed targets live in the benchmarks, never in timed tests)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import vmo

BENCH = Path(vmo.__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
BOX = re.compile("[\u2500-\u257f]")  # box-drawing characters of a rich table
ANSI = re.compile(r"\x1b\[")
VERDICT = re.compile(r"\b(PASS|FAIL|MISSED)\b|\bok$", re.M)

sys.path.insert(0, str(BENCH))
import _report  # noqa: E402  (bench/_report.py)


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_starts(script: str) -> None:
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


@pytest.mark.parametrize("script", ["bench_core.py", "bench_tree.py"])
def test_quick_run_into_a_pipe_is_plain_and_unjudged(script: str) -> None:
    proc = _run(script, "--quick", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert not BOX.search(out) and not ANSI.search(out), out
    assert not VERDICT.search(out), out
    assert _report.SMOKE_NOTE in out
    assert "ratio" in out
    if script == "bench_core.py":
        # Rows are whole lines, never folded at 80 columns.
        assert re.search(r"^snapshot clone, 32 MiB committed +\S", out, re.M), out
        assert max(len(line) for line in out.splitlines()) > 80


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_follows_the_terminal() -> None:
    assert _report.plain(False, io.StringIO()) is True
    assert _report.plain(False, _Tty()) is False
    assert _report.plain(True, _Tty()) is True

    class Closed:
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert _report.plain(False, Closed()) is True


def test_smoke_drops_verdicts_only_when_quick() -> None:
    @dataclass
    class Row:
        name: str
        passed: bool | None

    rows = [Row("a", True), Row("b", False), Row("c", None)]
    assert _report.smoke(rows, False) == rows
    assert [r.passed for r in _report.smoke(rows, True)] == [None, None, None]
    assert [r.passed for r in rows] == [True, False, None], "the input is not changed"
    assert [_report.verdict(r.passed) for r in rows] == ["PASS", "FAIL", "-"]
