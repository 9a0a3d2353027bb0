"""Fuzz campaigns: run a state machine for a time or a number of steps, and report.

`run` drives a hypothesis ``RuleBasedStateMachine`` (by default `VmoStateMachine`; any subclass,
or any machine of your own) through as many random programs as fit in ``seconds`` or ``steps``,
in one process or in ``jobs`` processes that share an example database. It counts what the
programs exercised (`RunResult.stats`: the operation mix, the deepest hierarchy, and coverage of
the core's interesting cases, gathered by `CoreProbes`), and when a program fails it returns
the shrunk program (`Failure.program`), which `write_repro` turns into a pytest file::

    from vmo.testing import run
    result = run(seconds=30, seed=1, progress=print)
    if result.failure:
        print(result.failure.program)

Programs are the ones hypothesis prints on failure: ``state = Machine()``, then one line per rule
call and per invariant check, then ``state.teardown()``. They are valid Python, so a failing
program becomes a regression test by wrapping it in a function (`write_repro`).

How the budget is kept: hypothesis has no time limit, so the runner subclasses the machine and,
after each step, stops the campaign (a `KeyboardInterrupt` subclass, which hypothesis passes
through without recording a failure) once the time or step budget is spent. Once a program has
failed, the budget no longer stops anything: hypothesis is left to shrink and report it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import multiprocessing
import os
import queue as queue_mod
import random
import re
import sys
import textwrap
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import attrs
from hypothesis import HealthCheck, Phase
from hypothesis import settings as Settings  # noqa: N812 - the class, not a profile
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import HypothesisException
from hypothesis.internal.reflection import function_digest
from hypothesis.reporting import with_reporter
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test

from vmo.testing.portable import scrub_paths

__all__ = [
    "COVERAGE_KEYS",
    "CoreProbes",
    "Failure",
    "Progress",
    "RunResult",
    "merge_stats",
    "operation_mix",
    "program_steps",
    "rule_shares",
    "run",
    "write_repro",
]

#: Counters `CoreProbes` fills, in display order, with what each one counts.
COVERAGE_KEYS: dict[str, str] = {
    "cov.fork_migrated": "fork levels where the page migrated (only one side could see it)",
    "cov.fork_copied": "fork levels where the page was copied (both sides could see it)",
    "cov.split_left": "split bits set for the left side",
    "cov.split_right": "split bits set for the right side",
    "cov.merge": "hidden nodes merged into their remaining child",
    "cov.merge_partial": "merges of a node marked partial_cow_release",
    "cov.merge_moved": "pages moved into the child by merges",
    "cov.merge_dropped": "pages freed by merges (covered by the child, or stale)",
    "cov.partial_cow_release": "releases that could only set split bits (a hole in the window)",
    "cov.release": "ReleaseCowParentPages calls on a non-empty range",
    "cov.release_freed": "parent pages freed because nobody could see them any more",
    "cov.zero_marker": "zero markers placed over a hidden page (CloneCowPageAsZero)",
    "cov.zero_marker_freed": "... where the hidden page was freed at once (uni-accessible)",
    "cov.discard": "discardable VMOs discarded by reclaim",
    "cov.dedup": "zero pages replaced by markers by the zero-page scanner",
}

#: Stats keys that are not operation counts.
_SPECIAL = {"steps", "programs", "max_depth", "max_width", "merges"}
#: Stats keys that are maxima over jobs, not sums.
_MAXIMA = {"max_depth", "max_width"}


# ---------------------------------------------------------------------------- results


@attrs.define
class Failure:
    """A program that failed: what it raised, and the shrunk program that raises it."""

    kind: str  #: exception class name, e.g. ``Mismatch`` or ``InvariantError``
    message: str
    program: str  #: the shrunk program, valid Python (``state = Machine()`` ... teardown)
    program_steps: int  #: rule calls in the program (invariant checks not counted)
    traceback: str
    seed: int  #: the seed of the job that found it
    found_after: float  #: seconds from the start of the campaign to the first failing program
    notes: list[str] = attrs.Factory(list)  #: hypothesis notes that are not program lines
    repro_path: Path | None = None
    #: Programs of its job that passed before the first failing one: 0 when the failure was
    #: the job's first program (a failure replayed from the example database).
    programs_before: int = 0

    def summary(self) -> str:
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.kind}: {first}"


@attrs.define
class RunResult:
    """What a campaign did. ``stats`` holds operation counts, ``steps``, ``programs``,
    ``max_depth`` and the `COVERAGE_KEYS` counters."""

    machine: str
    seed: int
    jobs: int
    elapsed: float
    stats: Counter[str]
    validate_seconds: float = 0.0
    failure: Failure | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def steps(self) -> int:
        return self.stats["steps"]

    @property
    def programs(self) -> int:
        return self.stats["programs"]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def validate_share(self) -> float:
        """Share of the machine's time spent in `vmo.debug.validate` (of wall time × jobs)."""
        total = self.elapsed * self.jobs
        return self.validate_seconds / total if total > 0 else 0.0


@attrs.define(frozen=True)
class Progress:
    """A snapshot handed to the progress callback while a campaign runs."""

    elapsed: float
    stats: Counter[str]
    jobs: int
    validate_seconds: float = 0.0
    failing: bool = False  #: a program failed; hypothesis is shrinking it
    done: bool = False

    @property
    def steps(self) -> int:
        return self.stats["steps"]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.elapsed if self.elapsed > 0 else 0.0


def merge_stats(parts: list[Counter[str]]) -> Counter[str]:
    """Sum per-job counters (``max_depth`` is a maximum, not a sum)."""
    out: Counter[str] = Counter()
    for p in parts:
        for k, v in p.items():
            if k in _MAXIMA:
                out[k] = max(out[k], v)
            else:
                out[k] += v
    return out


def operation_mix(stats: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """``(operation, calls, calls that failed with an error status)``, most frequent first."""
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for k, v in stats.items():
        if k in _SPECIAL or k.startswith(("cov.", "rule:", "bad:")):
            continue
        if ":ERR_" in k:
            errors[k.split(":ERR_")[0]] += v
        else:
            calls[k] += v
    return [(k, n, errors[k]) for k, n in calls.most_common()]


# ---------------------------------------------------------------------------- coverage probes


class CoreProbes:
    """Count the core's interesting cases by wrapping methods of `vmo.cow_pages.CowPages`.

    Nothing in the core is edited: while the context is active, a handful of methods are
    replaced by wrappers that call the original and look at what changed (which fork levels
    migrated a page and which copied it, which split bits were set, how many pages a merge
    moved, ...). Wrapping whatever is installed when the context opens means it also counts for
    a mutated core. Not thread-safe and not reentrant: one campaign per process at a time.
    """

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        self._saved: list[tuple[Any, str, Any]] = []
        # Stack of (context, records) for _is_uni_accessible_locked calls inside a fork.
        self._ctx: list[tuple[str, list[tuple[Any, int, int, bool]]]] = []

    def __enter__(self) -> CoreProbes:
        from vmo import cow_pages

        cp = cow_pages.CowPages
        self._patch(cp, "_is_uni_accessible_locked", self._wrap_uni)
        self._patch(cp, "_clone_cow_page_locked", self._wrap_ctx("fork"))
        self._patch(cp, "_clone_cow_page_as_zero_locked", self._wrap_ctx("zero"))
        self._patch(cp, "_merge_content_with_child_locked", self._wrap_merge)
        self._patch(cp, "_release_cow_parent_pages_locked", self._wrap_release)
        self._patch(cp, "_release_cow_parent_pages_helper_locked", self._wrap_helper)
        self._patch(cp, "discard_locked", self._wrap_discard)
        self._patch(cp, "scan_for_zero_pages_locked", self._wrap_scan)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__.get(name)
        if original is None:
            return  # the core changed shape; count what we still can
        wrapper = make(original)
        wrapper.__wrapped__ = original
        self._saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def _split_bits(self, before: int, after: int) -> None:
        from vmo.pmm import SPLIT_LEFT, SPLIT_RIGHT

        new = after & ~before
        if new & SPLIT_LEFT:
            self.stats["cov.split_left"] += 1
        if new & SPLIT_RIGHT:
            self.stats["cov.split_right"] += 1

    def _wrap_uni(self, original: Any) -> Any:
        probes = self

        def wrapper(node: Any, frame: int, off: int) -> bool:
            result = original(node, frame, off)
            if probes._ctx:
                probes._ctx[-1][1].append((node.pmm, frame, int(node.pmm.split[frame]), result))
            return result

        return wrapper

    def _wrap_ctx(self, kind: str) -> Callable[[Any], Any]:
        """Forks (``fork``) and CloneCowPageAsZero (``zero``): collect the uni-accessibility
        decisions made inside, then count migrations, copies and split bits."""
        probes = self
        stats = self.stats

        def make(original: Any) -> Any:
            def wrapper(node: Any, *args: Any, **kwargs: Any) -> Any:
                records: list[tuple[Any, int, int, bool]] = []
                probes._ctx.append((kind, records))
                try:
                    result = original(node, *args, **kwargs)
                finally:
                    probes._ctx.pop()
                for pmm, frame, split_before, uni in records:
                    if kind == "fork":
                        stats["cov.fork_migrated" if uni else "cov.fork_copied"] += 1
                    elif uni:
                        stats["cov.zero_marker_freed"] += 1
                    if not uni:
                        probes._split_bits(split_before, int(pmm.split[frame]))
                if kind == "zero":
                    stats["cov.zero_marker"] += 1
                return result

            return wrapper

        return make

    def _wrap_merge(self, original: Any) -> Any:
        stats = self.stats

        def wrapper(node: Any, removed: Any, removed_left: bool) -> Any:
            child = node.children[0] if node.children else None
            partial = node.partial_cow_release
            pages_before = child.page_list.count_pages() if child is not None else 0
            hidden_pages = node.page_list.count_pages()
            result = original(node, removed, removed_left)
            stats["cov.merge"] += 1
            if partial:
                stats["cov.merge_partial"] += 1
            if child is not None:
                moved = child.page_list.count_pages() - pages_before
                stats["cov.merge_moved"] += moved
                stats["cov.merge_dropped"] += max(0, hidden_pages - moved)
            return result

        return wrapper

    def _wrap_release(self, original: Any) -> Any:
        stats = self.stats

        def wrapper(node: Any, start: int, end: int, freed: list[int]) -> Any:
            if end <= start:
                return original(node, start, end, freed)
            before = len(freed)
            result = original(node, start, end, freed)
            stats["cov.release"] += 1
            stats["cov.release_freed"] += len(freed) - before
            return result

        return wrapper

    def _wrap_helper(self, original: Any) -> Any:
        probes = self
        stats = self.stats

        def wrapper(node: Any, start: int, end: int, sibling_visible: bool,
                    freed: list[int]) -> Any:
            # Mirrors the helper's own case analysis: neither limit can move, so split bits it is.
            partial = (sibling_visible and not node.parent_limit <= end
                       and start != node.parent_start_limit)
            bits: list[tuple[int, int]] = []
            parent = node.parent
            if partial and parent is not None:
                pmm = node.pmm
                bits = [(v, int(pmm.split[v])) for _, v in
                        parent.page_list.pages(start + node.parent_offset,
                                               end + node.parent_offset)]
            result = original(node, start, end, sibling_visible, freed)
            if partial:
                stats["cov.partial_cow_release"] += 1
                for v, before in bits:
                    if node.pmm.owner[v] is parent:
                        probes._split_bits(before, int(node.pmm.split[v]))
            return result

        return wrapper

    def _wrap_discard(self, original: Any) -> Any:
        stats = self.stats

        def wrapper(node: Any, *args: Any, **kwargs: Any) -> Any:
            before = node.discardable_state
            result = original(node, *args, **kwargs)
            if node.discardable_state != before:
                stats["cov.discard"] += 1
            return result

        return wrapper

    def _wrap_scan(self, original: Any) -> Any:
        stats = self.stats

        def wrapper(node: Any, reclaim: bool) -> Any:
            result = original(node, reclaim)
            if reclaim and result:
                stats["cov.dedup"] += int(result)
            return result

        return wrapper


# ---------------------------------------------------------------------------- one campaign


class _Stop(KeyboardInterrupt):
    """Raised after a step when the budget is spent. Hypothesis lets a KeyboardInterrupt
    through at once, without recording or shrinking anything."""


@attrs.define
class _Campaign:
    """The budget and the counters of one process's campaign."""

    stats: Counter[str]
    start: float
    deadline: float | None
    max_steps: int | None
    stop_event: Any = None  # a multiprocessing.Event set by the parent to stop every job
    progress: Callable[[Progress], None] | None = None
    progress_interval: float = 0.5
    jobs: int = 1
    failing_since: float | None = None
    #: Programs that had passed when the first one failed (0: the very first program, e.g. a
    #: failure replayed from the example database).
    programs_before_failure: int = 0
    #: Once a program failed, hypothesis normally shrinks and reports it; should it not (a
    #: failure that never replays, an error outside the program), stop after this long.
    give_up_after: float = 900.0
    validate_seconds: float = 0.0
    stopped: bool = False
    _last_progress: float = 0.0

    def after_step(self) -> None:
        self.stats["steps"] += 1
        now = time.monotonic()
        if self.progress is not None and now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            self.progress(self.snapshot(now))
        if self.failing_since is not None:
            if now - self.failing_since > self.give_up_after:
                self.stopped = True
                raise _Stop
            return  # let hypothesis shrink and report
        if ((self.deadline is not None and now >= self.deadline)
                or (self.max_steps is not None and self.stats["steps"] >= self.max_steps)
                or (self.stop_event is not None and self.stop_event.is_set())):
            self.stopped = True
            raise _Stop

    def snapshot(self, now: float | None = None, done: bool = False) -> Progress:
        now = time.monotonic() if now is None else now
        return Progress(elapsed=now - self.start, stats=Counter(self.stats), jobs=self.jobs,
                        validate_seconds=self.validate_seconds,
                        failing=self.failing_since is not None, done=done)


def _instrument(machine: type[RuleBasedStateMachine], campaign: _Campaign) -> type:
    """A subclass of ``machine`` (same name, so printed programs name the user's class) that
    counts steps, keeps the budget and notices the first failing program."""

    def check_invariants(self: Any, settings: Any, output: Any, runtimes: Any) -> None:
        machine.check_invariants(self, settings, output, runtimes)
        if self._vmo_run_started:
            campaign.after_step()
        self._vmo_run_started = True

    def teardown(self: Any) -> None:
        exc = sys.exc_info()[1]
        if (campaign.failing_since is None and isinstance(exc, Exception)
                and not isinstance(exc, HypothesisException)):
            campaign.failing_since = time.monotonic()
            campaign.programs_before_failure = campaign.stats["programs"]
            if campaign.progress is not None:
                campaign.progress(campaign.snapshot())
        campaign.stats["programs"] += 1
        campaign.validate_seconds += getattr(self, "step_time_validate", 0.0)
        try:
            machine.teardown(self)
        except Exception as e:
            # Machines may check at teardown (the end of the program): a failure there is the
            # program's, and the budget must not stop hypothesis from shrinking it.
            if campaign.failing_since is None and not isinstance(e, HypothesisException):
                campaign.failing_since = time.monotonic()
                campaign.programs_before_failure = campaign.stats["programs"] - 1
            raise

    ns: dict[str, Any] = _counted_rules(machine, campaign.stats)
    ns |= {
        "check_invariants": check_invariants,
        "teardown": teardown,
        "stats": campaign.stats,
        "_vmo_run_started": False,
        "__module__": machine.__module__,
        "__qualname__": machine.__qualname__,
        "__doc__": machine.__doc__,
    }
    return type(machine.__name__, (machine,), ns)


def _counted_rules(machine: type[RuleBasedStateMachine], stats: Counter[str]) -> dict[str, Any]:
    """Replacements for every rule of ``machine`` that count its calls (``rule:NAME``) and
    the calls that did real work (``rule:NAME:ok``): the machine sets ``rule_outcome`` to
    True or False at its first checked call of the step (`VmoStateMachine.expect` does), and
    a rule that never sets it is counted as a call that did nothing. Rules named in the
    machine's ``error_rules`` exist to make bad calls; they are counted as ``bad:NAME``
    (``:ok`` then means the call failed, as it should). The printed programs do not change:
    the replacements keep the rules' names and arguments."""
    import dataclasses

    from hypothesis.stateful import RULE_MARKER

    out: dict[str, Any] = {}
    if not hasattr(machine, "rule_outcome"):
        return out  # a machine that does not say which calls did real work
    error_rules = frozenset(getattr(machine, "error_rules", ()))
    for name, member in inspect.getmembers(machine):
        rule = getattr(member, RULE_MARKER, None)
        if rule is None:
            continue
        original = rule.function
        prefix = "bad" if name in error_rules else "rule"
        calls_key, ok_key = f"{prefix}:{name}", f"{prefix}:{name}:ok"
        want = prefix == "rule"

        def counted(self: Any, *args: Any, _f: Any = original, _calls: str = calls_key,
                    _ok: str = ok_key, _want: bool = want, **kwargs: Any) -> Any:
            if self.__dict__.get("_vmo_in_rule"):
                return _f(self, *args, **kwargs)  # a rule that calls another: count the outer
            self._vmo_in_rule = True
            self.rule_outcome = None
            try:
                return _f(self, *args, **kwargs)
            finally:
                self._vmo_in_rule = False
                stats[_calls] += 1
                if self.rule_outcome is _want:
                    stats[_ok] += 1

        functools.update_wrapper(counted, original)
        try:
            new_rule = dataclasses.replace(rule, function=counted)
        except (TypeError, ValueError):
            continue  # a hypothesis whose Rule changed shape: count nothing for this rule

        def proxy(self: Any, *args: Any, _f: Any = counted, **kwargs: Any) -> Any:
            return _f(self, *args, **kwargs)

        functools.update_wrapper(proxy, original)
        setattr(proxy, RULE_MARKER, new_rule)
        out[name] = proxy
    return out


def rule_shares(stats: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per rule: calls, calls that did real work and their share, most called first. Rules
    that exist to make bad calls (``error_rules``) have ``"bad": True`` and count the calls
    that failed as they should."""
    rows: list[dict[str, Any]] = []
    for key, calls in stats.items():
        prefix, _, name = key.partition(":")
        if prefix not in ("rule", "bad") or ":" in name or not calls:
            continue
        ok = stats.get(f"{key}:ok", 0)
        rows.append({"rule": name, "calls": calls, "ok": ok, "share": ok / calls,
                     "bad": prefix == "bad"})
    rows.sort(key=lambda r: (r["bad"], -r["calls"]))
    return rows


def _base_settings(database: ExampleDatabase | None) -> Settings:
    return Settings(
        max_examples=10**9, deadline=None, database=database, print_blob=False,
        # Under CI=true hypothesis's default profile derandomizes, which would also stop the
        # campaign from saving its finds: a campaign is random wherever it runs.
        derandomize=False,
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    )


def _make_settings(database: ExampleDatabase | None,
                   overrides: Mapping[str, Any] | Settings | None) -> Settings:
    base = _base_settings(database)
    if overrides is None:
        return base
    if isinstance(overrides, Settings):
        # Explicit settings win, but a campaign needs no deadline and no example cap.
        return Settings(overrides, deadline=None,
                        max_examples=max(overrides.max_examples, 10**9))
    return Settings(base, **dict(overrides))


def _open_database(database: str | os.PathLike[str] | ExampleDatabase | None
                   ) -> ExampleDatabase | None:
    if database is None or isinstance(database, ExampleDatabase):
        return database
    from vmo.testing.databases import is_redis_url, open_redis

    if is_redis_url(database):
        return open_redis(str(database))
    return DirectoryBasedExampleDatabase(os.fspath(database))


def _machine_name(machine: type) -> str:
    return f"{machine.__module__}:{machine.__qualname__}"


def _run_single(machine: type[RuleBasedStateMachine], *, seconds: float | None,
                steps: int | None, seed: int, settings: Mapping[str, Any] | Settings | None,
                database: Any, progress: Callable[[Progress], None] | None,
                progress_interval: float, stop_event: Any, start: float, jobs: int,
                probes: bool) -> dict[str, Any]:
    """One process's campaign. Returns a picklable dict (the fields of `RunResult` and of
    `Failure`), which job processes send to the parent as is."""
    stats: Counter[str] = Counter()
    campaign = _Campaign(
        stats=stats, start=start, deadline=None if seconds is None else start + seconds,
        max_steps=steps, stop_event=stop_event, progress=progress,
        progress_interval=progress_interval, jobs=jobs)
    factory = _instrument(machine, campaign)
    test = get_state_machine_test(factory, settings=_make_settings(_open_database(database),
                                                                    settings))
    # The database key follows the user's machine, not our per-run subclass, so that every
    # job and every later campaign of the same machine shares stored failures.
    test.hypothesis.inner_test._hypothesis_internal_add_digest = (  # type: ignore[attr-defined]
        function_digest(machine))
    test._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    failure: dict[str, Any] | None = None
    interrupted = False
    probe_ctx = CoreProbes(stats) if probes else contextlib.nullcontext()
    # What hypothesis reports outside the final replay (e.g. "stopped shrinking") goes with
    # the failure's notes rather than to stdout, which may be a live display or JSON.
    reports: list[str] = []
    try:
        with probe_ctx, with_reporter(lambda text: reports.append(str(text))):
            test()
    except _Stop:
        if campaign.failing_since is not None:
            failure = {
                "kind": "Unreported", "program": "", "program_steps": 0, "traceback": "",
                "message": f"a program failed but hypothesis did not report it within "
                           f"{campaign.give_up_after:g} s (not reproducible?)",
                "seed": seed, "found_after": campaign.failing_since - start, "notes": []}
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as e:  # noqa: BLE001 - whatever the program raised is the finding
        if isinstance(e, SystemExit) and not campaign.failing_since:
            raise
        failure = _failure_dict(e, machine, seed, campaign)
        failure["notes"] += [r for r in reports if r.strip()]
    return {
        "stats": dict(stats), "failure": failure, "interrupted": interrupted,
        "validate_seconds": campaign.validate_seconds, "seed": seed,
    }


def _failure_dict(e: BaseException, machine: type, seed: int,
                  campaign: _Campaign) -> dict[str, Any]:
    notes = list(getattr(e, "__notes__", []) or [])
    invariants = _invariant_names(machine)
    program, other_notes = _split_notes(notes)
    found = (campaign.failing_since or time.monotonic()) - campaign.start
    return {
        "kind": type(e).__name__,
        "message": str(e),
        "program": program,
        "program_steps": program_steps(program, invariants),
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
        "seed": seed,
        "found_after": found,
        "notes": other_notes,
        "programs_before": campaign.programs_before_failure,
    }


def _invariant_names(machine: type) -> set[str]:
    try:
        setup = cast(type[RuleBasedStateMachine], machine).setup_state()
        return {inv.function.__name__ for inv in setup.invariants}
    except Exception:  # noqa: BLE001 - a machine we cannot introspect: count every call
        return set()


def _is_program_line(note: str) -> bool:
    """Is this hypothesis note a step of the printed program (``state = Machine()``, a rule or
    invariant call, possibly assigning its results: ``a = b = state.rule(...)``, with extra
    assignment lines), rather than a ``note()`` of the machine?"""
    try:
        tree = ast.parse(note)
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[0], (ast.Assign, ast.Expr)):
        return False
    first = tree.body[0]
    if isinstance(first, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "state" for t in first.targets):
        return True  # state = Machine()
    call = first.value
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "state")


def _split_notes(notes: list[str]) -> tuple[str, list[str]]:
    """Separate hypothesis's printed program from other notes (``note()`` calls, hints)."""
    program: list[str] = []
    other: list[str] = []
    in_program = False
    for n in notes:
        # Hypothesis before 6.16x prints "Falsifying example:", later ones "Failing test case:".
        if n.startswith(("Falsifying example", "Failing test case")):
            in_program = True
            continue
        if in_program and _is_program_line(n):
            program.append(n)
            if n.strip() == "state.teardown()":
                in_program = False
            continue
        other.append(n)
    return "\n".join(program), other


def program_steps(program: str, invariants: set[str] | None = None) -> int:
    """Rule calls in a printed program: not the constructor, invariant checks or teardown."""
    invariants = invariants or set()
    n = 0
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return 0
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                and f.value.id == "state"):
            continue
        if f.attr == "teardown" or f.attr in invariants:
            continue
        n += 1
    return n


# ---------------------------------------------------------------------------- jobs


def _job_main(args: dict[str, Any], q: Any, stop_event: Any) -> None:
    """Entry point of a job process (forked): run, stream progress, send the result."""

    def progress(p: Progress) -> None:
        q.put(("progress", args["job"], dict(p.stats), p.validate_seconds, p.failing))

    try:
        result = _run_single(
            args["machine"], seconds=args["seconds"], steps=args["steps"], seed=args["seed"],
            settings=args["settings"], database=args["database"], progress=progress,
            progress_interval=args["progress_interval"], stop_event=stop_event,
            start=args["start"], jobs=args["jobs"], probes=args["probes"])
    except BaseException as e:  # noqa: BLE001 - report, never hang the parent
        result = {"stats": {}, "failure": {
            "kind": type(e).__name__, "message": f"job crashed: {e}", "program": "",
            "program_steps": 0, "traceback": traceback.format_exc(), "seed": args["seed"],
            "found_after": time.monotonic() - args["start"], "notes": []},
            "interrupted": False, "validate_seconds": 0.0, "seed": args["seed"]}
    q.put(("done", args["job"], result))


def _run_jobs(machine: type, *, jobs: int, seconds: float | None, steps: int | None,
              seed: int, settings: Any, database: Any,
              progress: Callable[[Progress], None] | None, progress_interval: float,
              start: float, probes: bool) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    stop_event = ctx.Event()
    per_job_steps = None if steps is None else -(-steps // jobs)
    procs = []
    for j in range(jobs):
        args = {"job": j, "machine": machine, "seconds": seconds, "steps": per_job_steps,
                "seed": seed + j, "settings": settings, "database": database,
                "progress_interval": progress_interval, "start": start, "jobs": jobs,
                "probes": probes}
        p = ctx.Process(target=_job_main, args=(args, q, stop_event), daemon=True)
        p.start()
        procs.append(p)
    latest: dict[int, tuple[Counter[str], float]] = {}
    failing = False
    results: dict[int, dict[str, Any]] = {}
    last = 0.0
    try:
        while len(results) < jobs:
            try:
                msg = q.get(timeout=progress_interval)
            except queue_mod.Empty:
                msg = None
                if all(not p.is_alive() for p in procs) and q.empty():
                    break  # a job died without a word (killed): stop waiting for it
            if msg is not None:
                if msg[0] == "progress":
                    _, job, stats, vsec, job_failing = msg
                    latest[job] = (Counter(stats), vsec)
                    if job_failing and not failing:
                        failing = True
                        stop_event.set()  # one failure is the campaign's answer
                else:
                    _, job, result = msg
                    results[job] = result
                    latest[job] = (Counter(result["stats"]), result["validate_seconds"])
                    if result["failure"] is not None:
                        stop_event.set()
            now = time.monotonic()
            if progress is not None and now - last >= progress_interval:
                last = now
                progress(Progress(
                    elapsed=now - start, stats=merge_stats([s for s, _ in latest.values()]),
                    jobs=jobs, validate_seconds=sum(v for _, v in latest.values()),
                    failing=failing))
    except KeyboardInterrupt:
        stop_event.set()
        for j in range(jobs):
            results.setdefault(j, {"stats": dict(latest.get(j, (Counter(), 0.0))[0]),
                                   "failure": None, "interrupted": True,
                                   "validate_seconds": latest.get(j, (None, 0.0))[1],
                                   "seed": seed + j})
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[j] for j in sorted(results)]


# ---------------------------------------------------------------------------- the entry point


def run(machine: type[RuleBasedStateMachine] | None = None, *, seconds: float | None = None,
        steps: int | None = None, jobs: int = 1, seed: int | None = None,
        settings: Mapping[str, Any] | Settings | None = None,
        progress: Callable[[Progress], None] | None = None, progress_interval: float = 0.5,
        database: str | os.PathLike[str] | ExampleDatabase | None = None,
        repro_dir: str | os.PathLike[str] | None = None,
        repro_context: tuple[str, str] | None = None, repro_name: str | None = None,
        probes: bool = True, shrink_seconds: float | None = None) -> RunResult:
    """Fuzz ``machine`` until ``seconds`` pass or ``steps`` rule calls ran (or a program fails).

    Arguments:
        machine: a ``RuleBasedStateMachine`` subclass (default `VmoStateMachine`). Its
            programs must be reproducible from hypothesis's choices alone (no wall-clock or
            global state deciding what a rule does).
        seconds, steps: the budget; give either or both (the first one spent stops the run).
            With neither, 60 seconds.
        jobs: processes (forked; Linux). Each runs the campaign with seed ``seed + i``; steps
            are split between them; the first failure stops them all.
        seed: hypothesis's seed; the same seed, machine and settings give the same programs
            (with no database, or an empty one). Default: a random seed, reported in the
            result.
        settings: hypothesis settings overrides, as a mapping of keyword arguments (e.g.
            ``{"stateful_step_count": 100}``) or a ``hypothesis.settings`` object. The
            defaults: no example cap, no deadline, no health checks, no explain phase.
        progress: called with a `Progress` about every ``progress_interval`` seconds, from this
            process (also when ``jobs > 1``).
        database: a directory path (``DirectoryBasedExampleDatabase``), a
            ``redis://HOST:PORT/DB`` URL (``RedisExampleDatabase``; see
            `vmo.testing.databases.open_database` for layering it with a local directory) or
            any hypothesis ``ExampleDatabase``, shared by every job; failures found earlier are
            replayed first. None: no database.
        repro_dir: when given and a program fails, `write_repro` saves it there as
            ``test_repro_<seed>.py`` (`Failure.repro_path`).
        repro_context: ``(import line, context manager expression)`` to wrap the repro in, for
            failures that need a setup (e.g. a mutant of the core applied).
        repro_name: the repro's test (and file) name instead of ``test_repro_<seed>``.
        probes: count the core's cases with `CoreProbes` (a few percent slower).
        shrink_seconds: stop shrinking a failing program after this long and report the
            smallest found so far (hypothesis's own limit, five minutes, by default).

    Returns a `RunResult`. Raises only for bad arguments and for errors of the runner itself: a
    failing program is a result, not an exception.
    """
    if machine is None:
        from vmo.testing.machine import VmoStateMachine

        machine = VmoStateMachine
    if not (isinstance(machine, type) and issubclass(machine, RuleBasedStateMachine)):
        raise TypeError(f"machine must be a RuleBasedStateMachine subclass, not {machine!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if seconds is None and steps is None:
        seconds = 60.0
    if seconds is not None and seconds < 0:
        raise ValueError(f"seconds must be non-negative, not {seconds}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be non-negative, not {steps}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    start = time.monotonic()
    with _shrink_limit(shrink_seconds):
        parts = _run_parts(machine, seconds=seconds, steps=steps, jobs=jobs, seed=seed,
                           settings=settings, database=database, progress=progress,
                           progress_interval=progress_interval, start=start, probes=probes)
    elapsed = time.monotonic() - start
    failures = [p["failure"] for p in parts if p["failure"] is not None]
    failure = None
    if failures:
        f = min(failures, key=lambda d: d["found_after"])
        failure = Failure(**f)
        if repro_dir is not None and failure.program:
            failure.repro_path = write_repro(failure, machine, repro_dir, name=repro_name,
                                             context=repro_context)
    result = RunResult(
        machine=_machine_name(machine), seed=seed, jobs=jobs, elapsed=elapsed,
        stats=merge_stats([Counter(p["stats"]) for p in parts]),
        validate_seconds=sum(p["validate_seconds"] for p in parts), failure=failure,
        interrupted=any(p["interrupted"] for p in parts))
    if progress is not None:
        progress(Progress(elapsed=elapsed, stats=result.stats, jobs=jobs,
                          validate_seconds=result.validate_seconds,
                          failing=failure is not None, done=True))
    return result


def _run_parts(machine: type, *, seconds: float | None, steps: int | None, jobs: int,
               seed: int, settings: Any, database: Any,
               progress: Callable[[Progress], None] | None, progress_interval: float,
               start: float, probes: bool) -> list[dict[str, Any]]:
    common = {"seconds": seconds, "settings": settings, "database": database,
              "progress": progress, "progress_interval": progress_interval, "start": start,
              "probes": probes}
    if jobs == 1:
        return [_run_single(machine, steps=steps, seed=seed, stop_event=None, jobs=1,
                            **common)]
    if isinstance(database, (str, os.PathLike)):
        from vmo.testing.databases import is_redis_url

        if is_redis_url(database):
            database = _open_database(database)  # once, and fail here if unreachable
        else:
            Path(database).mkdir(parents=True, exist_ok=True)
    return _run_jobs(machine, jobs=jobs, steps=steps, seed=seed, **common)


@contextlib.contextmanager
def _shrink_limit(seconds: float | None) -> Any:
    """Hypothesis stops shrinking after ``engine.MAX_SHRINKING_SECONDS`` (read when shrinking
    starts) and reports the smallest failure so far; lower it for the duration."""
    from hypothesis.internal.conjecture import engine

    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if seconds is None or old is None:
        yield
        return
    engine.MAX_SHRINKING_SECONDS = seconds  # type: ignore[assignment]
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = old


# ---------------------------------------------------------------------------- repro files


def write_repro(failure: Failure, machine: type, directory: str | os.PathLike[str], *,
                name: str | None = None, context: tuple[str, str] | None = None) -> Path:
    """Save ``failure.program`` as a pytest file that replays it; returns the path.

    The file imports ``machine`` by module and name (so the machine must be importable: not
    defined in ``__main__`` or inside a function), runs the program's steps and invariant
    checks as printed by hypothesis, and tears down in ``finally``. It passes once the bug is
    fixed: commit it next to your tests as a regression test.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"test_repro_{failure.seed}"
    path = directory / f"{name}.py"
    path.write_text(repro_source(failure, machine, name, context=context))
    return path


def repro_source(failure: Failure, machine: type, name: str = "test_repro", *,
                 context: tuple[str, str] | None = None) -> str:
    """The text of the pytest file `write_repro` saves."""
    module, qualname = machine.__module__, machine.__qualname__
    cls = machine.__name__
    importable = module != "__main__" and "<locals>" not in qualname
    lines = [line for line in failure.program.splitlines()]
    body = [ln for ln in lines]
    # Hypothesis prints ``state = Name()`` first and ``state.teardown()`` last; the test
    # builds the state itself and tears down in ``finally``.
    if body and re.match(r"^state\s*=\s*\w+\(\)\s*$", body[0]):
        body = body[1:]
    if body and body[-1].strip() == "state.teardown()":
        body = body[:-1]
    steps = textwrap.indent("\n".join(body) if body else "pass", " " * 8)
    # The file is committed and replayed elsewhere: no path of this machine goes in it.
    notes = "".join(f"#     {ln}\n" for n in failure.notes
                    for ln in scrub_paths(str(n)).splitlines()[:40])
    message = "\n".join(f"    {ln}" for ln in scrub_paths(failure.summary()).splitlines())
    head = [
        f'"""Regression test written by `vmo fuzz` (seed {failure.seed}).',
        "",
        f"Machine: {module}:{qualname}. The program below failed with",
        "",
        message.replace('"""', "'''").replace("\\", "\\\\"),
        "",
        "It replays the shrunk program hypothesis printed: rule calls and invariant checks in",
        "order. It fails while the bug is there and passes once it is fixed; commit it with your",
        "tests to keep it fixed.",
        '"""',
        "",
    ]
    imports = []
    if importable:
        imports.append(f"from {module} import {qualname.split('.')[0]}")
        if "." in qualname:
            imports.append(f"{cls} = {qualname}")
    else:
        imports.append(f"# {module}:{qualname} is not importable; import the machine as {cls}.")
    if context is not None:
        imports.append(context[0])
    out = "\n".join(head + imports) + "\n\n"
    if notes:
        out += "# Notes from the failing run:\n" + notes + "\n"
    out += f"\ndef {name}() -> None:\n"
    if context is not None:
        out += f"    with {context[1]}:\n"
        out += "        _replay()\n\n\ndef _replay() -> None:\n"
    out += f"    state = {cls}()\n    try:\n{steps}\n    finally:\n        state.teardown()\n"
    return out

