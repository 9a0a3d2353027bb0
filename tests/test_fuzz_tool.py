"""The fuzzing tool: `vmo.testing.run`, repro files, the byte decoder, ``vmo fuzz``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from vmo import cli
from vmo.testing import COVERAGE_KEYS, Progress, VmoStateMachine, run
from vmo.testing.decode import ByteReader, decode, execute
from vmo.testing.mutation import replay
from vmo.testing.run import program_steps, write_repro

ROOT = Path(__file__).resolve().parents[1]

TINY = textwrap.dedent('''
    """A machine with a planted bug: the sum of two things must stay below 150."""
    from hypothesis import strategies as st
    from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule


    class Tiny(RuleBasedStateMachine):
        things = Bundle("things")

        def __init__(self):
            super().__init__()
            self.total = 0
            self.torn_down = False

        @rule(target=things, x=st.integers(0, 100))
        def make(self, x):
            return x

        @rule(t=things)
        def add(self, t):
            self.total += t

        @invariant()
        def small(self):
            assert self.total < 150, f"total {self.total}"

        def teardown(self):
            self.torn_down = True
''')


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths)])
    return env


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type:
    (tmp_path / "tinymachine.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinymachine", None)
    import tinymachine

    return tinymachine.Tiny


def test_run_for_a_few_seconds() -> None:
    seen: list[Progress] = []
    r = run(seconds=3, seed=1, progress=seen.append, progress_interval=0.2)
    assert r.ok, r.failure and r.failure.summary()
    assert r.seed == 1 and r.jobs == 1
    assert 2.5 < r.elapsed < 30
    assert r.steps > 0 and r.programs > 0  # a rate is the benchmark's business, not a test's
    assert r.stats["max_depth"] >= 1
    assert all(k in r.stats or r.stats[k] == 0 for k in COVERAGE_KEYS)
    assert r.stats["cov.merge"] + r.stats["cov.fork_copied"] + r.stats["cov.fork_migrated"] > 0
    assert 0 < r.validate_share < 1
    assert seen and seen[-1].done and seen[-1].steps == r.steps


def test_steps_budget_and_seed_reproduce() -> None:
    a = run(steps=120, seed=7, probes=False)
    b = run(steps=120, seed=7, probes=False)
    assert a.ok and b.ok
    assert 120 <= a.steps <= 125
    ops = lambda r: Counter({k: v for k, v in r.stats.items() if k != "validate"})  # noqa: E731
    assert ops(a) == ops(b)  # same seed, same programs


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        run(int, seconds=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run(seconds=1, jobs=0)


def test_jobs_share_a_database(tmp_path: Path) -> None:
    db = tmp_path / "db"
    r = run(seconds=3, jobs=2, seed=11, database=db)
    assert r.ok and r.jobs == 2
    assert r.steps > 50
    assert db.is_dir()


def test_campaigns_stay_random_under_ci(tmp_path: Path) -> None:
    """With CI=true hypothesis's default profile derandomizes (and drops the database); a
    campaign and the HypoFuzz targets must not inherit that (CI once failed on it)."""
    probe = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from vmo.testing.run import _base_settings
        campaign = _base_settings(None).derandomize
        import fuzz.test_targets as t  # (loads its own profile as the default)
        print(campaign, t._SETTINGS.derandomize)
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True,
                         text=True, env=dict(os.environ, CI="true",
                                             VMO_FUZZ_DB=str(tmp_path / "db")),
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_failing_machine_gives_a_repro_that_fails(tiny: type, tmp_path: Path) -> None:
    out = tmp_path / "failures"
    r = run(tiny, seconds=20, seed=3, repro_dir=out)
    f = r.failure
    assert f is not None
    assert f.kind == "AssertionError" and "total" in f.message
    assert r.elapsed < 20  # the first failure ends the campaign (once shrunk)
    assert f.program.startswith("state = Tiny()") and f.program.endswith("state.teardown()")
    assert 2 <= f.program_steps <= 4  # make, add, add (shrunk)
    assert f.repro_path == out / "test_repro_3.py"
    source = f.repro_path.read_text()
    ast.parse(source)
    assert "from tinymachine import Tiny" in source and "def test_repro_3()" in source
    # pytest collects it, and it fails for the planted bug.
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", str(f.repro_path)],
                             capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path))
    assert "1 test collected" in collect.stdout, collect.stdout + collect.stderr
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(f.repro_path)], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(tmp_path))
    assert ran.returncode == 1
    assert "AssertionError: total" in ran.stdout
    # And replaying the program in-process raises the same.
    assert isinstance(replay(f.program, tiny), AssertionError)


def test_program_lines_are_told_from_notes() -> None:
    """Rules with two targets print ``a = b = state.rule(...)``; a note of the machine (a
    dump) is not a program line (a campaign once dropped the former and kept nothing else)."""
    from vmo.testing.run import _split_notes

    notes = ["Falsifying example:", "state = VmoStateMachine()",
             "vmos_2 = discardables_0 = state.create_discardable(npages=0, seed=1)",
             "vmos_3, vmos_4 = state.rule_with_two_results()\nother_0, other_1 = vmos_3, vmos_4",
             "#1 hidden size 0x2000 pages 2\n    0x0: frame 1 (L.)",
             "state.lock_discardable(d=discardables_0, op='LOCK')", "state.hierarchy_valid()",
             "state.teardown()", "Explanation: ..."]
    program, other = _split_notes(notes)
    assert program.splitlines()[1].startswith("vmos_2 = discardables_0 = state.")
    assert len(program.splitlines()) == 7
    assert other == [notes[4], notes[-1]]
    assert program_steps(program, {"hierarchy_valid"}) == 3


def test_repro_of_a_passing_program_passes(tmp_path: Path) -> None:
    """A repro of the real machine, once "fixed" (here: a program that never failed), passes."""
    from vmo.testing.run import Failure

    program = "\n".join([
        "state = VmoStateMachine()",
        "vmos_0 = state.filled(npages=3, resizable=True, seed=5)",
        "state.contents_match()",
        "vmos_1 = state.snapshot_inside(at=(0, 0), npages=2, resizable=True, v=vmos_0)",
        "state.cow_step(action='zero', at=(500, 0), npages=1, seed=2, v=vmos_1)",
        "state.close(v=vmos_0)",
        "state.hierarchy_valid()",
        "state.structure_matches()",
        "state.teardown()",
    ])
    f = Failure(kind="Mismatch", message="example", program=program,
                program_steps=program_steps(program, {"contents_match", "hierarchy_valid",
                                                      "structure_matches"}),
                traceback="", seed=42, found_after=1.0)
    assert f.program_steps == 4
    path = write_repro(f, VmoStateMachine, tmp_path)
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(path)], capture_output=True, text=True, cwd=tmp_path,
                         env=_env())
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_structure_check_accepts_marker_only_nodes() -> None:
    """A leaf that holds only a zero marker has no committed pages (found by the decoder: the
    attribution check compared a 0 entry with a missing one)."""
    state = VmoStateMachine()
    try:
        v = state.filled(npages=2, resizable=False, seed=1)
        c = state.snapshot_inside(v=v, at=(0, 0), npages=2, resizable=False)
        state.zero_inside(v=c, at=(0, 0), npages=1, tail=0)  # page 0: a marker
        assert state.real[c.koid].cow.page_list.count_pages() == 0
        assert not state.real[c.koid].cow.page_list.is_empty()
        state.contents_match()
        state.hierarchy_valid()
        state.structure_matches()
    finally:
        state.teardown()


def test_decoder_maps_bytes_to_programs() -> None:
    r = ByteReader(b"\x05")
    assert r.integer(0, 9) == 5 and r.integer(0, 9) == 0 and r.exhausted
    assert ByteReader(b"\x01\x02").integer(0, 1000) == 258
    data = bytes(range(7, 250, 3))
    p1, p2 = decode(data), decode(data)
    assert p1.calls and p1.calls[0].rule == "filled"  # initialize rules come first
    assert p1.text() == p2.text()
    assert decode(b"").calls[0].rule == "filled"
    text = p1.text()
    assert text.startswith("state = VmoStateMachine()") and text.endswith("state.teardown()")
    ast.parse(text)
    # Every byte string is a program, and what execute runs is what the text says.
    for seed in range(5):
        data = bytes((seed * 37 + i * 11) % 256 for i in range(150))
        prog = decode(data, max_steps=20)
        try:
            execute(prog)
            failed: BaseException | None = None
        except Exception as e:  # noqa: BLE001
            failed = e
        again = replay(prog.text(), VmoStateMachine)
        assert type(again) is type(failed)


def test_cli_fuzz_steps_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fuzz", "--steps", "60", "--plain", "--no-db", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "no failure" in out and "seed 1" in out and "deepest hierarchy" in out
    assert "split bits set: left" in out and "operation mix" in out
    assert cli.main(["fuzz", "--list-mutants"]) == 0
    assert "split_bit_not_set" in capsys.readouterr().out


def test_cli_fuzz_rich_live(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fuzz", "--steps", "40", "--rich", "--no-db", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "coverage of the core" in out and "operation mix" in out


def test_cli_fuzz_failure_saves_repro(tiny: type, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["fuzz", "--machine", "tinymachine:Tiny", "--time", "20", "--plain",
                     "--no-db", "--seed", "4", "--failures-dir", str(tmp_path / "f")])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "state.add(" in out
    assert (tmp_path / "f" / "test_repro_4.py").is_file()
    assert "--seed 4" in out


# ---------------------------------------------------------------------------- found by vmo fuzz


def test_found_partial_release_then_sibling_shrink_keeps_unseen_pages() -> None:
    """A core bug `vmo fuzz` found (mutant check, seed 0; fixed in 8cc4d1d): a release in the
    middle of a hidden child's window was recorded on that child's parent only, so a later
    release by its sibling kept the grandparent's pages that no leaf saw any more."""
    state = VmoStateMachine()
    try:
        vmos_0 = state.filled(npages=13, resizable=True, seed=1)
        state.snapshot_inside(at=(0, 0), npages=1, resizable=False, v=vmos_0)
        vmos_2 = state.snapshot_inside(at=(0, 0), npages=13, resizable=True, v=vmos_0)
        state.snapshot_inside(at=(1000, 0), npages=1, resizable=False, v=vmos_2)
        state.set_size(size=4096, v=vmos_2)  # a hole [1, 12) in the middle of a window
        state.hierarchy_valid()
        state.set_size(size=24576, v=vmos_0)  # the sibling stops seeing [6, 13)
        state.contents_match()
        state.hierarchy_valid()
        state.structure_matches()
    finally:
        state.teardown()


def test_found_merge_after_partial_release_keeps_unseen_page() -> None:
    """A core bug `vmo fuzz` found (seed 5; fixed in a314281): a merge after a partial release
    kept an ancestor's page that no leaf saw (the hole was only in the merged node's
    children's limits)."""
    state = VmoStateMachine()
    try:
        a = state.filled(npages=3, resizable=False, seed=1)
        state.snapshot_inside(at=(0, 0), npages=1, resizable=False, v=a)
        c = state.snapshot_inside(at=(0, 0), npages=3, resizable=True, v=a)
        state.snapshot_inside(at=(667, 0), npages=1, resizable=False, v=c)
        state.set_size(size=4096, v=c)  # a hole [1, 2) in the middle of a window
        state.hierarchy_valid()
        state.close(v=a)  # merge: page 1 of the top hidden node is seen by no one
        state.contents_match()
        state.hierarchy_valid()
        state.structure_matches()
    finally:
        state.teardown()


def test_decoded_programs_unpack_multiple_results() -> None:
    """Regression: a rule returning ``multiple(x)`` was printed ``vmos_2 = state.rule(...)``,
    so the replayed text bound the MultipleResults, not ``x``, and failed where the decoded
    run had passed (seen with hypothesis 6.170 in a fresh venv). It is printed unpacked now."""
    seen = 0
    for seed in range(40):
        data = bytes((seed * 37 + i * 11) % 256 for i in range(150))
        prog = decode(data, max_steps=20)
        text = prog.text()
        if ",) = state." not in text:
            continue
        seen += 1
        try:
            execute(prog)
            failed: BaseException | None = None
        except Exception as e:  # noqa: BLE001
            failed = e
        assert type(replay(text, VmoStateMachine)) is type(failed)
    assert seen  # some of these programs do go through such a rule
