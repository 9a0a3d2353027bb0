"""The command line: ``vmo demo`` in-process and as ``python -m vmo``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vmo
from vmo import cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")

# What a reader of the tour must see: each concept of the core, named where it happens.
KEY_NARRATION = [
    "Step 1/",
    "committed_bytes",
    ">>> snap = v.create_child(ChildOptions.SNAPSHOT, 0, v.get_size())",
    "hidden",
    "(L.)",
    "(.R)",
    "split bits",
    "merges",
    "migrated",
    "upgrades it to a full snapshot",
    "IS_COW_CLONE",
    "b'via slice'",
    "b'via parent'",
    "k.reclaim_discardable(target_pages=3)",
    "ERR_NOT_FOUND",
    "discarded_size=16384",
    "k.memory_stats(): vmo_pages=",
    "vmo.debug.validate(k): every invariant holds",
    "Tour done",
]


def test_demo_plain_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    assert cli.main(["demo", "--plain"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    for phrase in KEY_NARRATION:
        assert phrase in out, phrase
    assert not ANSI.search(out), "plain output must not contain escape sequences"
    assert out.isascii()
    # validate runs, and is reported, after every step.
    assert out.count("[ok] vmo.debug.validate(k)") == len(cli.DEMO_STEPS)
    assert elapsed < 2.0, f"vmo demo took {elapsed:.2f} s"


def test_demo_defaults_to_plain_when_stdout_is_not_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert "Tour done" in out


def test_demo_rich(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--rich"]) == 0
    out = capsys.readouterr().out
    assert ANSI.search(out), "--rich styles even when stdout is not a terminal"
    text = ANSI.sub("", out)
    for phrase in ("hidden", "(L.)", "(.R)", "ERR_NOT_FOUND", "Tour done"):
        assert phrase in text, phrase


def test_demo_step_ignored_without_a_terminal(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_input(*args: object) -> str:
        raise AssertionError("--step must not wait when stdin is not a terminal")

    monkeypatch.setattr("builtins.input", no_input)
    assert cli.main(["demo", "--plain", "--step"]) == 0
    assert "Tour done" in capsys.readouterr().out


def test_demo_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    names = [s.name for s in cli.DEMO_STEPS]
    assert len(set(names)) == len(names)
    for name in names:
        assert name in out


def test_a_step_the_core_disagrees_with_fails_the_tour(
        capsys: pytest.CaptureFixture[str]) -> None:
    def wrong(demo: cli.Demo) -> None:
        demo.run("""
            from vmo import Kernel, PAGE_SIZE
            k = Kernel(memory=1 << 20)
            v = k.vmo_create(PAGE_SIZE)
            """)
        demo.expect(v_committed(demo) == 4096, "an untouched VMO has a page committed")

    def v_committed(demo: cli.Demo) -> int:
        return int(demo["v"].get_info().committed_bytes)

    steps = [cli.DemoStep("skipped", "Needs a machine we are not", lambda d: None,
                          available=lambda: "no such machine"),
             cli.DemoStep("wrong", "A wrong claim", wrong)]
    assert cli.run_demo(cli.PlainOutput(), steps=steps) == 1
    out = capsys.readouterr().out
    assert "skipped: no such machine" in out
    assert "an untouched VMO has a page committed" in out


def test_unexpected_zx_error_in_a_snippet_fails_the_tour(
        capsys: pytest.CaptureFixture[str]) -> None:
    def bad(demo: cli.Demo) -> None:
        demo.run("""
            from vmo import Kernel
            k = Kernel(memory=1 << 20)
            k.vmo_create(4096).read(8192)
            """)

    assert cli.run_demo(cli.PlainOutput(), steps=[cli.DemoStep("bad", "Bad", bad)]) == 1
    assert "ERR_OUT_OF_RANGE" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert cli.main(["no-such-command"]) == 2


def test_python_dash_m_vmo_demo() -> None:
    root = str(Path(vmo.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "vmo", "demo", "--plain"], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for phrase in ("hidden", "(L.)", "(.R)", "upgrades it to a full snapshot", "Tour done"):
        assert phrase in proc.stdout, phrase
