import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.internal.conjecture import engine as _hypothesis_engine

# "ci": minutes in CI. "fuzz": long campaigns (`HYPOTHESIS_PROFILE=fuzz`, or `vmo fuzz`).
settings.register_profile(
    "ci", max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz", max_examples=100_000_000, stateful_step_count=80, deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("dev", max_examples=40, stateful_step_count=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A stateful failure must be reported as a FAILED test with its program, never cut off by the
# per-test timeout (300 s in pyproject.toml) while hypothesis is still shrinking it: its own
# cap is 300 s ("monkeypatchable", says hypothesis). Runs that want the smallest program
# (`vmo fuzz`, the fuzz profile) keep hypothesis's cap.
FUZZ_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "fuzz"
if not FUZZ_PROFILE:
    _hypothesis_engine.MAX_SHRINKING_SECONDS = int(os.environ.get("VMO_SHRINK_SECONDS", "60"))

# The fuzz profile's example count is unbounded: each hypothesis test generates programs for
# VMO_FUZZ_SECONDS (default 20 minutes) and then passes if none failed. Its pytest timeout
# leaves room for that, hypothesis's 300 s of shrinking and the final replay.
FUZZ_SECONDS = float(os.environ.get("VMO_FUZZ_SECONDS", "1200"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FUZZ_PROFILE:
        for item in items:
            item.add_marker(pytest.mark.timeout(FUZZ_SECONDS + 600))


@pytest.fixture(autouse=True)
def _fuzz_budget():  # type: ignore[no-untyped-def]
    if not FUZZ_PROFILE:
        yield
        return
    from vmo.testing.budget import generation_deadline

    with generation_deadline(FUZZ_SECONDS):
        yield


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mutant", default=None, metavar="NAME",
        help="run the tests against a mutant of fuzz/mutants (to see which tests catch it, "
             "and that a stateful failure is reported with its program)")


@pytest.fixture(autouse=True, scope="session")
def _apply_mutant(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    name = request.config.getoption("--mutant")
    if name is None:
        yield
        return
    from vmo.testing.mutation import load_catalog

    by_name = {m.name: m for m in load_catalog()}
    if name not in by_name:
        raise pytest.UsageError(f"--mutant {name}: no such mutant; known: {sorted(by_name)}")
    with by_name[name].applied():
        yield
