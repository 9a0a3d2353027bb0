"""``vmo fuzz`` as a user runs it: ``--mutant NAME`` on its own, repro files that carry no path
of the machine that wrote them, and ``--machine`` with the mapping state machine from
`vmo.testing` (not from the tests)."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmo
from vmo import cli
from vmo.mmu.fault_handler import unavailable_reason
from vmo.testing import mutation
from vmo.testing.mutation import MutantResult, default_catalog_dir
from vmo.testing.portable import scrub_paths
from vmo.testing.run import Failure, repro_source

ROOT = Path(vmo.__file__).resolve().parent.parent


def _machine_paths(tmp_path: Path) -> list[str]:
    return [p for p in {str(ROOT), str(tmp_path), str(tmp_path.resolve()), os.getcwd(),
                        os.path.expanduser("~"), sys.prefix, tempfile.gettempdir()}
            if p not in ("", "/")]


def _assert_portable(text: str, tmp_path: Path) -> None:
    for path in _machine_paths(tmp_path):
        assert path not in text, f"{path} in\n{text}"
    # No absolute path at all, but the operating system's own (/dev, /proc, /sys).
    for m in re.finditer(r"(?<![\w.<>~-])/[\w.-]+/", text):
        assert m.group(0) in ("/dev/", "/proc/", "/sys/"), f"{m.group(0)} in\n{text}"


# ---------------------------------------------------------------------------- --mutant NAME


def test_mutant_alone_prints_the_program_and_fails(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["fuzz", "--mutant", "fork_without_copy", "--time", "20", "--seed", "0",
                     "--failures-dir", str(tmp_path / "failures")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "fork_without_copy  yes" in out
    assert "Caught after" in out
    assert "state = VmoStateMachine()" in out and "state.teardown()" in out
    repro = tmp_path / "failures" / "mutants" / "test_mutant_fork_without_copy.py"
    assert f"Saved as {repro}" in out
    text = repro.read_text()
    _assert_portable(text, tmp_path)
    assert "load_catalog()" in text  # the default catalogue: found from the checkout
    # The repro replays: it fails with the mutant applied (the mutant is still there).
    with pytest.raises(AssertionError):
        runpy.run_path(str(repro))["test_mutant_fork_without_copy"]()


def test_repro_of_a_catalogue_elsewhere_finds_it_relatively(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(default_catalog_dir(), catalog,
                    ignore=shutil.ignore_patterns("__pycache__"))
    mutant = {m.name: m for m in mutation.load_catalog(catalog)}["fork_without_copy"]
    result = mutation.run_mutant(mutant, seconds=20, seed=0, shrink_seconds=5,
                                 repro_dir=tmp_path / "out" / "deep")
    assert result.killed and result.repro_path is not None
    assert result.program.startswith("state = VmoStateMachine()")
    text = Path(result.repro_path).read_text()
    _assert_portable(text, tmp_path)
    assert "Path(__file__).resolve().parent / '../../catalog'" in text
    with pytest.raises(AssertionError):
        runpy.run_path(result.repro_path)["test_mutant_fork_without_copy"]()


@pytest.mark.parametrize(("verdict", "killed", "code"), [
    ("killed", True, 1), ("false kill", False, 1), ("survived", False, 0), ("stale", False, 2),
    ("error: machine unavailable (x)", False, 2)])
def test_mutant_alone_exit_status(verdict: str, killed: bool, code: int,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    def fake_run_mutant(m: object, **kwargs: object) -> MutantResult:
        return MutantResult("fork_without_copy", killed, verdict, time_to_kill=0.5,
                            program_steps=1, failure="Mismatch: boom",
                            program="state = VmoStateMachine()\nstate.teardown()")

    monkeypatch.setattr(mutation, "run_mutant", fake_run_mutant)
    assert cli.main(["fuzz", "--mutant", "fork_without_copy", "--time", "1"]) == code
    out = capsys.readouterr().out
    assert ("state = VmoStateMachine()" in out) == killed


# ---------------------------------------------------------------------------- repro paths


def test_scrub_paths_examples(tmp_path: Path) -> None:
    home = os.path.expanduser("~")
    text = (f'File "{ROOT}/vmo/cow_pages.py", line 3\n'
            f"swap file {tmp_path}/swap-1 full; see {home}/notes.txt and /opt/x/y/z.py; "
            "fd /dev/userfaultfd, /proc/self/maps; 0x1000/2 pages; a/b")
    out = scrub_paths(text)
    assert '"<vmo>/vmo/cow_pages.py"' in out
    assert "<path>/z.py" in out
    assert "/dev/userfaultfd" in out and "/proc/self/maps" in out
    assert "0x1000/2 pages; a/b" in out
    _assert_portable(out, tmp_path)


@given(st.lists(st.sampled_from(["/home/someone/x.py", "/tmp/vmo-swap-1/f", " ", "\n", "'",
                                 '"', "=", "(", "word", "0x10", "/", "//", "a/b", "~"]),
                max_size=12))
def test_scrub_paths_never_leaves_an_absolute_path(parts: list[str]) -> None:
    out = scrub_paths("".join(parts))
    # What is left of those paths hangs off a placeholder, never off the root.
    assert not re.search(r"(?<![\w.<>~/-])/+(home|tmp)/", out), out


def test_repro_source_scrubs_message_and_notes(tmp_path: Path) -> None:
    failure = Failure(kind="ZxError", message=f"cannot open {tmp_path}/data/file.bin",
                      program="state = VmoStateMachine()\nstate.teardown()", program_steps=0,
                      traceback="", seed=7, found_after=0.1,
                      notes=[f'File "{ROOT}/vmo/kernel.py", line 1', f"{Path.home()}/x/y"])
    from vmo.testing import VmoStateMachine

    text = repro_source(failure, VmoStateMachine)
    _assert_portable(text, tmp_path)
    assert "<tmp>" in text or "<path>" in text
    assert "<vmo>/vmo/kernel.py" in text


# ---------------------------------------------------------------------------- --machine


@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
def test_fuzz_the_mapping_machine_from_the_package(tmp_path: Path) -> None:
    """From any directory, as from an install: the machine is part of `vmo.testing`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "vmo", "fuzz", "--machine",
         "vmo.testing.mapping_machine:MappingMachine", "--steps", "60", "--seed", "1",
         "--no-db", "--plain"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vmo.testing.mapping_machine:MappingMachine" in proc.stdout
    assert "no failure" in proc.stdout
    assert not (tmp_path / "fuzz").exists(), "nothing written without a failure"
