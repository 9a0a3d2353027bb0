"""HypoFuzz runs the state machines: ``hypothesis fuzz -- fuzz/test_targets.py``.

The test runs HypoFuzz briefly on the core machine, with the example database in a temporary
directory (``VMO_FUZZ_DB``), and reads HypoFuzz's own progress reports from it (what its
dashboard shows) until they count programs that ran to the end. HypoFuzz traces coverage,
so programs run far slower than under ``vmo fuzz``: the first report comes after some tens
of seconds on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("hypofuzz", reason="HypoFuzz is not installed (pip install hypofuzz)")


def _programs_run(db_dir: Path) -> int:
    """Valid test cases (programs run to their end) in HypoFuzz's reports of the core
    machine's target."""
    from hypofuzz.database import HypofuzzDatabase
    from hypothesis.database import DirectoryBasedExampleDatabase
    from hypothesis.internal.reflection import function_digest
    from hypothesis.stateful import get_state_machine_test

    from vmo.testing.machine import VmoStateMachine

    key = function_digest(get_state_machine_test(VmoStateMachine).hypothesis.inner_test)
    db = HypofuzzDatabase(DirectoryBasedExampleDatabase(str(db_dir)))
    reports = db.reports.fetch(key)
    return max((sum(n for status, n in r.status_counts.items() if status.name == "VALID")
                for r in reports), default=0)


@pytest.mark.timeout(400)
def test_hypofuzz_executes_programs_of_the_core_machine(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VMO_FUZZ_DB=str(db_dir),
               VMO_FUZZ_LOCAL_DB=str(tmp_path / "local"))
    # The ``hypothesis`` command (hypothesis.extra.cli), run by this interpreter.
    cmd = [sys.executable, "-c", "from hypothesis.extra.cli import main; main()", "fuzz", "-n", "1", "--no-dashboard", "--",
           str(ROOT / "fuzz" / "test_targets.py"), "-k", "TestCoreMachine", "-p",
           "no:cacheprovider"]
    log = (tmp_path / "hypofuzz.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    programs = 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            if db_dir.exists():
                programs = _programs_run(db_dir)
                if programs >= 1:
                    break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    output = (tmp_path / "hypofuzz.log").read_text()
    assert "using 1 process to fuzz 1 test" in output, output
    assert programs >= 1, f"HypoFuzz ran no program of the core machine:\n{output}"
