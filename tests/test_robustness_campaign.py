"""The robustness campaign's short form (`vmo.testing.robust`): every round at least once,
then the figures must show no corruption, no hang and no leak. The long form is
``vmo fuzz --robust --time N`` (docs/robustness.md)."""

from __future__ import annotations

import random

import pytest

from vmo.testing import robust

pytestmark = pytest.mark.timeout(300, method="thread")


def test_short_campaign_is_clean() -> None:
    report = robust.run(1.0, seed=11, short=True)
    print(report.summary())
    assert report.ok, report.summary()
    assert set(report.rounds) >= {"bad_input", "allocation", "pager", "threads"}
    assert report.inputs_tried > 100 and report.faults_injected > 10
    if robust.uffd_available():
        assert report.workloads_killed >= 3 and report.hosts_killed >= 1
        assert report.threads >= 10


def test_the_campaign_detects_what_it_claims_to() -> None:
    # A check that cannot fail is worth nothing: a leaked descriptor, a broken invariant and
    # a lost write are each reported.
    import os

    report = robust.Report()
    before = robust.Resources.now()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        robust.settle_and_check(before, report, "planted", timeout=0.2)
    finally:
        os.close(fd)
    assert report.leaks == 1
    k = robust.Kernel(memory=1 << 20)
    try:
        v = k.vmo_create(robust.PS)
        v.write(b"x")
        frame = v.cow.page_list.get(0)
        k.pmm.owner[frame] = None  # a frame whose owner is lost
        assert not robust.validate(k, report, "planted")
        assert report.corruptions == 1
    finally:
        k.pmm.owner[frame] = v.cow
        k.close()


def test_allocation_failures_are_injected_at_every_point() -> None:
    report = robust.Report()
    robust.allocation_failure_round(report, use_mapping=False)
    assert report.ok, report.summary()
    assert report.faults_injected >= 10


def test_workload_kills_at_random_points() -> None:
    if not robust.uffd_available():
        pytest.skip("userfaultfd unavailable")
    report = robust.Report()
    rng = random.Random(3)
    before = robust.Resources.now()
    for _ in range(3):
        robust.workload_kill_round(report, rng)
    robust.settle_and_check(before, report, "kills")
    assert report.ok, report.summary()
    assert report.workloads_killed == 3


def test_vmo_fuzz_robust_runs_the_campaign(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmo import cli

    calls: list[tuple[float, int | None]] = []
    monkeypatch.setattr(robust, "main", lambda seconds, seed=None: calls.append((seconds, seed))
                        or 0)
    assert cli.main(["fuzz", "--robust", "--time", "7", "--seed", "5"]) == 0
    assert cli.main(["fuzz", "--robust"]) == 0
    assert calls == [(7.0, 5), (60.0, None)]
