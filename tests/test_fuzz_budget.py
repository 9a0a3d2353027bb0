"""The fuzz profile's time budget (`vmo.testing.budget`): a long run of the suite's state
machines (``HYPOTHESIS_PROFILE=fuzz``) ends by itself after VMO_FUZZ_SECONDS and passes, where
the unbounded example count used to run into pytest-timeout and be reported as a failure."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase
from hypothesis.internal.conjecture.engine import ConjectureRunner

from vmo.testing.budget import generation_deadline

ROOT = Path(__file__).resolve().parent.parent


def test_generation_stops_at_the_deadline_and_passes() -> None:
    calls = 0

    @settings(max_examples=10**9, deadline=None, database=None)
    @given(st.integers())
    def endless(x: int) -> None:
        nonlocal calls
        calls += 1

    before = ConjectureRunner.should_generate_more
    start = time.monotonic()
    with generation_deadline(0.5):
        endless()
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 15
    assert calls > 10
    assert ConjectureRunner.should_generate_more is before


def test_the_target_phase_stops_at_the_deadline_too() -> None:
    # Machines call target() to steer towards deep trees; hypothesis's optimiser then runs
    # inside generation with a budget counted in examples, which the fuzz profile makes
    # endless. It must stop at the deadline as well.
    # (Without the stop in test_function this ran for more than a minute.)
    @settings(max_examples=10**9, deadline=None, database=None)
    @given(st.lists(st.integers(0, 1000)))
    def growing_score(xs: list[int]) -> None:
        target(float(sum(xs)))

    start = time.monotonic()
    with generation_deadline(1):
        growing_score()
    assert time.monotonic() - start < 20


def test_a_failure_found_within_the_budget_is_still_shrunk_and_reported() -> None:
    @settings(max_examples=10**9, deadline=None, database=InMemoryExampleDatabase())
    @given(st.integers(0, 10**6))
    def fails_above_1000(x: int) -> None:
        assert x <= 1000

    with generation_deadline(30), pytest.raises(AssertionError) as info:
        fails_above_1000()
    assert "x=1001" in "".join(getattr(info.value, "__notes__", [])) + str(info.value)


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_a_budget_must_be_positive(seconds: float) -> None:
    with pytest.raises(ValueError, match="must be positive"), generation_deadline(seconds):
        pass


def test_the_fuzz_profile_runs_a_machine_for_its_budget_and_passes(tmp_path: Path) -> None:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "fuzz", "VMO_FUZZ_SECONDS": "4",
           "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_pager_lifecycle_machine.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
    assert elapsed >= 4
