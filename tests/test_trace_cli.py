"""``vmo trace -- python script.py``: events printed or written as JSON lines, a per-VMO
summary, the program's exit status passed through."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vmo.cli import main

SCRIPT = """
import sys
import vmo
from vmo import ChildOptions
with vmo.Kernel(1 << 20) as k:
    v = k.vmo_create(2 * 4096)
    v.write(b"a" * 4096)
    c = v.create_child(ChildOptions.SNAPSHOT, 0, 2 * 4096)
    c.write(b"b")
    c.close()
print("script ran")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "script.py"
    p.write_text(SCRIPT)
    return p


def test_trace_prints_events_and_summary(script: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--", sys.executable, str(script), "0"]) == 0
    out = capfd.readouterr().out
    assert "script ran" in out
    kinds = [line.split()[2] for line in out.splitlines() if line.startswith("k1 #")]
    assert kinds == ["vmo_create", "vmo_create", "clone", "fork", "vmo_close", "merge",
                     "vmo_close"]
    assert "per-VMO summary (7 events, 2 VMOs)" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines()
            if line.strip().startswith("k1 ")}
    assert rows["1"][3] == "closed" and rows["2"][3] == "closed"


def test_trace_writes_json_lines_and_passes_the_exit_status(
        script: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "t.jsonl"
    assert main(["trace", "-o", str(out_file), "--", sys.executable, str(script), "3"]) == 3
    events = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [e["kind"] for e in events] == ["vmo_create", "vmo_create", "clone", "fork",
                                           "vmo_close", "merge", "vmo_close"]
    assert events[3] == {**events[3], "split": "right", "offset": 0, "kernel": 1}
    out = capfd.readouterr().out
    assert "7 events written to" in out and "k1 #" not in out


def test_trace_without_a_command_is_a_usage_error(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["trace"]) == 2
    assert "after --" in capfd.readouterr().err


def test_trace_of_a_missing_program(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--", "/nonexistent/program"]) == 127
    assert "cannot run" in capfd.readouterr().err
