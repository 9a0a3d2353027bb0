"""``vmo swap``: the swap experiment from the command line, and the swap step of ``vmo demo``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from vmo import cli
from vmo.cli import swap as swap_cli


def needs_uffd() -> None:
    from vmo.mmu.fault_handler import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def user_target(ctx: Any, name: str) -> str:
    """A user's workload target (``module:function``): sums a byte of every page."""
    view = ctx.mappings[name].memoryview()
    return f"sum {sum(view[i] for i in range(0, view.nbytes, 4096))}"


def test_json_report(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    needs_uffd()
    assert cli.main(["swap", "--size", "2", "--json", "--dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    pages = 2 * 2**20 // 4096
    assert report["pages"] == pages and report["moved_pages"] == pages
    assert report["arena_bytes_after"] < report["arena_bytes_before"]
    out = report["status_swapped_out"]
    assert out["state"] == "active" and out["metrics"]["swap_pages"] == pages
    status = report["status"]
    assert status["state"] == "ready"
    assert status["metrics"]["copied_from_file_pages"] == pages
    assert status["metrics"]["resident_pages"] == pages
    lat = report["latency_ns"]
    assert report["latency_source"] == "workload" and lat["count"] == pages
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert sum(n for _, n in report["latency_buckets"]) == pages
    assert {"move_to_staging", "swap_out", "fault_back"} <= set(report["phases_s"])
    assert os.listdir(tmp_path) == []


def test_table_with_swap_in_and_random(capsys: pytest.CaptureFixture[str]) -> None:
    needs_uffd()
    assert cli.main(["swap", "--size", "1", "--swap-in", "--workload", "random",
                     "--plain"]) == 0
    out = capsys.readouterr().out
    for phrase in ("state:", "metrics:", "phases:", "swap_in", "transitions:",
                   "fault latency (workload):", "p50", "p90", "p99", "max",
                   "swap_in_in_progress"):
        assert phrase in out, phrase
    assert "\x1b[" not in out


def test_user_target_falls_back_to_request_latencies(
        capsys: pytest.CaptureFixture[str]) -> None:
    needs_uffd()
    target = f"{__name__}:user_target"
    assert cli.main(["swap", "--size", "1", "--workload", target, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["latency_source"] == "page requests"
    assert report["latency_ns"]["count"] > 0


def test_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert cli.main(["swap", "--size", "0"]) == 2
    assert cli.main(["swap", "--workload", "nonsense"]) == 2
    assert cli.main(["swap", "--size", "1", "--dir", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "ERR_NOT_FOUND" in err and "--workload" in err
    assert cli.main(["swap", "--size", "x"]) == 2


def test_a_failing_user_target_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    needs_uffd()
    assert cli.main(["swap", "--size", "1", "--workload", f"{__name__}:missing", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "missing" in report["error"]


def test_percentiles_and_buckets() -> None:
    p = swap_cli.percentiles([5, 1, 4, 2, 3] * 20)
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["count"]) == (3, 5, 5, 5, 100)
    assert swap_cli.percentiles([])["count"] == 0
    assert swap_cli.log_buckets([500, 1500, 3000, 3000]) == [("<1us", 1), ("1-2us", 1),
                                                              ("2-4us", 2)]


def test_demo_has_a_swap_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert any(s.name == "swap" for s in cli.DEMO_STEPS)
    assert cli.main(["demo", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "swap.move_to_staging()" in out and "<SwapState.ACTIVE: 'active'>" in out


def test_python_dash_m_vmo_swap(tmp_path: Any) -> None:
    needs_uffd()
    r = subprocess.run([sys.executable, "-m", "vmo", "swap", "--size", "1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"]["state"] == "ready"
