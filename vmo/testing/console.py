"""What ``vmo fuzz`` shows: the live campaign display, the failure report, the mutant table.

`fuzz_command` is the handler behind ``vmo fuzz`` (declared in `vmo.cli`); it reads the
argparse namespace, runs `vmo.testing.run.run` (or `vmo.testing.mutation.run_mutants`) and
renders progress with rich (a ``Live`` panel redrawn a few times a second) or as plain lines
for logs and pipes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmo.testing.run import (
    COVERAGE_KEYS,
    Failure,
    Progress,
    RunResult,
    operation_mix,
    rule_shares,
    run,
)

#: Short names of the coverage counters for the display.
_COVERAGE_LABELS = {
    "cov.fork_migrated": "fork: migrated",
    "cov.fork_copied": "fork: copied",
    "cov.split_left": "split bits set: left",
    "cov.split_right": "split bits set: right",
    "cov.merge": "merges",
    "cov.merge_partial": "merges after partial_cow_release",
    "cov.merge_moved": "merge: pages moved",
    "cov.merge_dropped": "merge: pages freed",
    "cov.partial_cow_release": "partial_cow_release",
    "cov.release": "release of parent pages",
    "cov.release_freed": "release: pages freed",
    "cov.zero_marker": "zero markers (CloneCowPageAsZero)",
    "cov.zero_marker_freed": "... hidden page freed at once",
    "cov.discard": "discards",
    "cov.dedup": "zero pages deduplicated",
}
assert set(_COVERAGE_LABELS) == set(COVERAGE_KEYS)

DEFAULT_MACHINE = "vmo.testing.machine:VmoStateMachine"


def _import_machine(spec: str) -> type:
    from vmo.testing.mutation import _import_object

    if ":" not in spec:
        raise SystemExit(f"vmo fuzz: --machine wants MODULE:CLASS, not {spec!r}")
    try:
        return _import_object(spec)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"vmo fuzz: cannot import the machine {spec}: {e}") from e


def _fmt_n(n: float) -> str:
    return f"{n:,.0f}"


# ---------------------------------------------------------------------------- displays


class PlainDisplay:
    """A status line every few seconds: for logs, pipes and ``--plain``."""

    def __init__(self, out: Any = None, every: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.every = every
        self._last = 0.0
        self._failing = False

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if p.failing and not self._failing:
            self._failing = True
            self.print(f"{p.elapsed:7.1f}s  a program failed; shrinking it ...")
        if p.done or now - self._last < self.every:
            return
        self._last = now
        s = p.stats
        self.print(
            f"{p.elapsed:7.1f}s  steps {_fmt_n(p.steps)} ({p.steps_per_second:,.0f}/s)  "
            f"programs {_fmt_n(s['programs'])}  depth {s['max_depth']}  "
            f"forks {s['cov.fork_migrated']}m/{s['cov.fork_copied']}c  "
            f"splits {s['cov.split_left']}L/{s['cov.split_right']}R  merges {s['cov.merge']}  "
            f"partial {s['cov.partial_cow_release']}  markers {s['cov.zero_marker']}  "
            f"discards {s['cov.discard']}")

    def summary(self, result: RunResult, header: str) -> None:
        self.print(header)
        for label, value in _summary_rows(result.stats, result.elapsed, result.jobs,
                                          result.validate_seconds):
            self.print(f"  {label:<34} {value}")
        self.print("  coverage:")
        for key, label in _COVERAGE_LABELS.items():
            self.print(f"    {label:<34} {_fmt_n(result.stats[key])}")
        self.print("  rules (calls, share that did real work; bad calls: share that failed):")
        for r in rule_shares(result.stats):
            name = ("bad: " if r["bad"] else "") + r["rule"]
            self.print(f"    {name:<34} {_fmt_n(r['calls']):>9} {r['share']:>8.0%}")
        self.print("  operation mix (calls, of which errors):")
        for op, n, err in operation_mix(result.stats)[:20]:
            self.print(f"    {op:<34} {_fmt_n(n):>9} {_fmt_n(err):>9}")

    def failure(self, f: Failure) -> None:
        self.print()
        self.print(f"FAILED after {f.found_after:.1f}s: {f.summary()}")
        self.print(f"Shrunk program ({f.program_steps} steps):")
        self.print()
        self.print(f.program)
        if f.repro_path is not None:
            self.print()
            self.print(f"Saved as {f.repro_path}; replay it with: python -m pytest "
                       f"{f.repro_path}")


def _summary_rows(stats: Mapping[str, int], elapsed: float, jobs: int,
                  validate_seconds: float) -> list[tuple[str, str]]:
    steps = stats.get("steps", 0)
    share = validate_seconds / (elapsed * jobs) if elapsed > 0 else 0.0
    return [
        ("elapsed", f"{elapsed:.1f} s" + (f" x {jobs} jobs" if jobs > 1 else "")),
        ("steps (rule calls)", _fmt_n(steps)),
        ("steps/s", f"{steps / elapsed:,.0f}" if elapsed > 0 else "-"),
        ("programs", _fmt_n(stats.get("programs", 0))),
        ("deepest hierarchy", str(stats.get("max_depth", 0))),
        ("widest hierarchy (live VMOs)", str(stats.get("max_width", 0))),
        ("time in validate", f"{share:.0%}"),
    ]


class RichDisplay:
    """A ``rich.live.Live`` panel: counters, coverage, operation mix."""

    def __init__(self, title: str, budget: str, force_terminal: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(force_terminal=force_terminal, highlight=False)
        self.title = title
        self.budget = budget
        self.live: Any = None
        self._last: Progress | None = None

    def __enter__(self) -> RichDisplay:
        from rich.live import Live

        self.live = Live(self._render(None), console=self.console, refresh_per_second=4,
                         transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def print(self, text: str = "") -> None:
        self.console.print(text, markup=False)

    def progress(self, p: Progress) -> None:
        self._last = p
        if self.live is not None:
            self.live.update(self._render(p))

    def _render(self, p: Progress | None) -> Any:
        from rich.columns import Columns
        from rich.panel import Panel
        from rich.table import Table

        stats = p.stats if p is not None else {}
        elapsed = p.elapsed if p is not None else 0.0
        jobs = p.jobs if p is not None else 1
        vsec = p.validate_seconds if p is not None else 0.0
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column(justify="right")
        for label, value in _summary_rows(stats, elapsed, jobs, vsec):
            head.add_row(label, value)
        cov = Table(title="coverage of the core", title_justify="left", box=None,
                    padding=(0, 1))
        cov.add_column("case")
        cov.add_column("count", justify="right")
        for key, label in _COVERAGE_LABELS.items():
            n = stats.get(key, 0)
            cov.add_row(label, f"[red]{n}[/]" if n == 0 else _fmt_n(n))
        mix = Table(title="operation mix", title_justify="left", box=None, padding=(0, 1))
        mix.add_column("operation")
        mix.add_column("calls", justify="right")
        mix.add_column("errors", justify="right", style="dim")
        for op, n, err in operation_mix(stats)[:16]:
            mix.add_row(op, _fmt_n(n), _fmt_n(err))
        rules = Table(title="rules: real work", title_justify="left", box=None, padding=(0, 1))
        rules.add_column("rule")
        rules.add_column("calls", justify="right")
        rules.add_column("ok", justify="right")
        for r in rule_shares(stats)[:24]:
            share = f"{r['share']:.0%}"
            if not r["bad"] and r["share"] < 0.7:
                share = f"[red]{share}[/]"
            rules.add_row(("bad: " if r["bad"] else "") + r["rule"], _fmt_n(r["calls"]), share)
        status = "[bold red]a program failed: shrinking it ...[/]" if p is not None and \
            p.failing else ("[green]done[/]" if p is not None and p.done else "running")
        body = Table.grid()
        body.add_row(head)
        body.add_row("")
        body.add_row(Columns([cov, rules, mix], padding=(0, 4)))
        return Panel(body, title=f"[bold]{self.title}[/] ({self.budget}) {status}",
                     title_align="left", border_style="red" if p and p.failing else "cyan")

    def summary(self, result: RunResult, header: str) -> None:
        self.console.print(f"[bold]{header}[/]")

    def failure(self, f: Failure) -> None:
        from rich.panel import Panel
        from rich.syntax import Syntax

        self.console.print(f"[bold red]FAILED[/] after {f.found_after:.1f}s: "
                           f"{f.summary()}", markup=True, highlight=False)
        self.console.print(Panel(Syntax(f.program, "python", theme="ansi_dark",
                                        background_color="default", word_wrap=True),
                                 title=f"shrunk program ({f.program_steps} steps)",
                                 title_align="left", border_style="red"))
        if f.repro_path is not None:
            self.console.print(f"Saved as [bold]{f.repro_path}[/]; replay it with: "
                               f"python -m pytest {f.repro_path}")


def _make_display(args: argparse.Namespace, title: str, budget: str) -> Any:
    from vmo.cli.output import isatty

    if args.plain or args.json:
        return PlainDisplay(out=sys.stderr if args.json else sys.stdout)
    if args.rich or isatty(sys.stdout):
        try:
            return RichDisplay(title, budget, force_terminal=True if args.rich else None)
        except ImportError:
            pass
    return PlainDisplay()


# ---------------------------------------------------------------------------- the command


def fuzz_command(args: argparse.Namespace) -> int:
    """The handler of ``vmo fuzz``."""
    if args.list_mutants:
        return _list_mutants(args)
    if args.mutants:
        return _mutant_table(args)
    if args.mutant:
        if len(args.mutant) != 1:
            raise SystemExit("vmo fuzz: without --mutants, give one --mutant NAME to fuzz")
        return _one_mutant(args, args.mutant[0])
    return _campaign(args)


def _settings(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.program_steps is None:
        return None
    return {"stateful_step_count": args.program_steps}


def _budget_text(seconds: float | None, steps: int | None) -> str:
    parts = []
    if seconds is not None:
        parts.append(f"{seconds:g} s")
    if steps is not None:
        parts.append(f"{steps:,} steps")
    return " or ".join(parts)


def _database(args: argparse.Namespace, *, default: bool) -> tuple[Any, str]:
    """The example database of ``--db``/``--local-db``/``--db-readonly``/``--no-db`` and a line
    describing it. ``default``: use the local directory when no ``--db`` is given. An
    unreachable Redis server ends the command here, with the reason."""
    from vmo.testing.databases import DatabaseUnavailable, describe_database, open_database

    spec = None if args.no_db else (args.db or (args.local_db if default else None))
    readonly = list(getattr(args, "db_readonly", []) or [])
    try:
        db = open_database(spec, local=args.local_db, readonly=readonly)
    except DatabaseUnavailable as e:
        raise SystemExit(f"vmo fuzz: {e}") from e
    return db, describe_database(spec, local=args.local_db, readonly=readonly)


def _campaign(args: argparse.Namespace) -> int:
    machine = _import_machine(args.machine or DEFAULT_MACHINE)
    seconds = args.time
    if seconds is None and args.steps is None:
        seconds = 60.0
    import random

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    database, db_text = _database(args, default=True)
    title = (f"vmo fuzz {machine.__name__}, seed {seed}"
             + (f", {args.jobs} jobs" if args.jobs > 1 else ""))
    display = _make_display(args, title, _budget_text(seconds, args.steps))
    display.print(f"vmo fuzz: {machine.__module__}:{machine.__qualname__}, seed {seed}, "
                  f"{_budget_text(seconds, args.steps)}, {args.jobs} job(s), database "
                  f"{db_text}")
    with display:
        result = run(machine, seconds=seconds, steps=args.steps, jobs=args.jobs, seed=seed,
                     settings=_settings(args), database=database,
                     progress=display.progress, repro_dir=args.failures_dir)
    verdict = "no failure" if result.ok else "FAILED"
    if result.interrupted:
        verdict = "interrupted"
    display.summary(result, f"{verdict}: {_fmt_n(result.steps)} steps in "
                            f"{result.elapsed:.1f} s ({result.steps_per_second:,.0f}/s), "
                            f"{_fmt_n(result.programs)} programs, seed {seed}")
    if args.json:
        print(json.dumps(result_json(result)), flush=True)
    if result.failure is not None:
        display.failure(result.failure)
        display.print(f"Reproduce the campaign: vmo fuzz --seed {result.failure.seed} "
                      f"--no-db {_budget_flags(seconds, args.steps)}")
        return 1
    return 130 if result.interrupted else 0


def result_json(result: RunResult) -> dict[str, Any]:
    """What ``vmo fuzz --json`` prints for a campaign: the totals, the per-rule success
    shares, the coverage counters and the failure, if any."""
    f = result.failure
    return {
        "machine": result.machine, "seed": result.seed, "jobs": result.jobs,
        "elapsed": result.elapsed, "steps": result.steps, "programs": result.programs,
        "steps_per_second": result.steps_per_second, "validate_share": result.validate_share,
        "max_depth": result.stats["max_depth"], "max_width": result.stats["max_width"],
        "rules": rule_shares(result.stats),
        "operations": [{"operation": op, "calls": n, "errors": err}
                       for op, n, err in operation_mix(result.stats)],
        "coverage": {k: result.stats[k] for k in COVERAGE_KEYS},
        "stats": dict(result.stats),
        "failure": None if f is None else {
            "kind": f.kind, "message": f.message, "program": f.program,
            "program_steps": f.program_steps, "seed": f.seed, "found_after": f.found_after,
            "programs_before": f.programs_before,
            "repro_path": str(f.repro_path) if f.repro_path else None},
        "interrupted": result.interrupted,
    }


def _budget_flags(seconds: float | None, steps: int | None) -> str:
    out = []
    if seconds is not None:
        out.append(f"--time {seconds:g}")
    if steps is not None:
        out.append(f"--steps {steps}")
    return " ".join(out)


# ---------------------------------------------------------------------------- mutants


def _list_mutants(args: argparse.Namespace) -> int:
    from vmo.testing.mutation import load_catalog

    for m in load_catalog(args.mutants_dir):
        machine = f" [{m.machine}]" if m.machine else ""
        print(f"{m.name}{machine}\n    {m.target}\n    {' '.join(m.description.split())}")
    return 0


def _one_mutant(args: argparse.Namespace, name: str) -> int:
    """Fuzz the core with one mutant applied (what each ``--mutants`` subprocess runs)."""
    from vmo.testing.mutation import load_catalog, run_mutant

    mutants = {m.name: m for m in load_catalog(args.mutants_dir)}
    if name not in mutants:
        raise SystemExit(f"vmo fuzz: no mutant named {name!r}; see vmo fuzz --list-mutants")
    m = mutants[name]
    seconds = args.time if args.time is not None else 60.0
    machine = _import_machine(args.machine) if args.machine else None
    found = False

    def progress(p: Progress) -> None:
        nonlocal found
        if p.failing and not found:
            found = True
            if args.json:
                print(json.dumps({"event": "found", "t": p.elapsed}), flush=True)

    if args.json:
        print(json.dumps({"event": "started", "name": name}), flush=True)
    repro_dir = Path(args.failures_dir) / "mutants" if args.failures_dir else None
    database, _ = _database(args, default=False)
    result = run_mutant(m, seconds=seconds, seed=args.seed, machine=machine,
                        settings=_settings(args), repro_dir=repro_dir, progress=progress,
                        database=database)
    if args.json:
        print(json.dumps({"event": "result", **_asdict(result)}), flush=True)
    else:
        display = PlainDisplay()
        _print_mutant_table([result], display, seconds)
        if result.killed:
            display.print()
            display.print(f"Caught after {result.time_to_kill:.1f} s by a program of "
                          f"{result.program_steps} steps that fails with the mutant and passes "
                          f"without it ({result.failure}):")
            display.print()
            display.print(result.program)
            if result.repro_path is not None:
                display.print()
                display.print(f"Saved as {result.repro_path}; replay it with: python -m pytest "
                              f"{result.repro_path}")
    # As a fuzz campaign: non-zero when a program failed (the mutant is caught, or the core
    # fails without it too), 2 when the mutant could not be judged.
    if result.killed or result.verdict == "false kill":
        return 1
    return 0 if result.verdict == "survived" else 2


def _asdict(x: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(x)


def _mutant_table(args: argparse.Namespace) -> int:
    from vmo.testing.mutation import load_catalog, run_mutants

    seconds = args.time if args.time is not None else 60.0
    mutants = load_catalog(args.mutants_dir)
    names = args.mutant or [m.name for m in mutants]
    display = _make_display(args, "vmo fuzz --mutants", f"{seconds:g} s each")
    display.print(f"vmo fuzz --mutants: {len(names)} mutants, {seconds:g} s each, "
                  f"{args.jobs} at a time, seed {args.seed or 0}")
    start = time.monotonic()

    def on_event(name: str, event: dict[str, Any]) -> None:
        t = time.monotonic() - start
        kind = event.get("event")
        if kind == "found":
            display.print(f"{t:7.1f}s  {name}: a program failed after {event['t']:.1f} s")
        elif kind == "result":
            display.print(f"{t:7.1f}s  {name}: {event['verdict']}")

    results = run_mutants(names, seconds=seconds, jobs=args.jobs, seed=args.seed or 0,
                          catalog=args.mutants_dir,
                          repro_dir=args.failures_dir, machine=args.machine,
                          on_event=on_event)
    _print_mutant_table(results, display, seconds)
    survivors = [r.name for r in results
                 if not r.killed and r.verdict not in ("equivalent", "false kill")]
    false_kills = [r.name for r in results if r.verdict == "false kill"]
    if false_kills:
        display.print(f"{len(false_kills)} false kill(s): {', '.join(false_kills)}. Their shrunk "
                      "programs fail on the unmutated core too: the core (or the machine) has a "
                      "bug of its own that hides these mutants; fix it and run again.")
    if survivors:
        display.print(f"{len(survivors)} mutant(s) not killed: {', '.join(survivors)}. "
                      "The state machine is too weak for them: strengthen it.")
    if survivors or false_kills:
        return 1
    equivalent = [r.name for r in results if r.verdict == "equivalent"]
    killed = len(results) - len(equivalent)
    display.print(f"All {killed} mutants killed within {seconds:g} s each"
                  + (f" ({len(equivalent)} equivalent, not run: {', '.join(equivalent)})."
                     if equivalent else "."))
    return 0


def _print_mutant_table(results: list[Any], display: Any, seconds: float) -> None:
    rows = []
    for r in results:
        ttk = f"{r.time_to_kill:.1f} s" if r.time_to_kill is not None else "-"
        length = str(r.program_steps) if r.program_steps is not None else "-"
        killed = "yes" if r.killed else ("n/a" if r.verdict == "equivalent" else "NO")
        rows.append((r.name, killed, ttk, length,
                     r.verdict if r.verdict not in ("killed", "survived") else "",
                     r.failure[:100]))
    columns = ("mutant", "killed", "time to kill", "program", "verdict", "caught by")
    if isinstance(display, RichDisplay):
        from rich.table import Table

        t = Table(title=f"mutants ({seconds:g} s budget each)", title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if i in (2, 3) else "left",
                         no_wrap=i < 4, overflow="fold")
        for row in rows:
            style = {"yes": None, "n/a": "dim"}.get(row[1], "bold red")
            t.add_row(*row, style=style)
        display.console.print(t)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns[:5])]
    display.print("  ".join(c.ljust(w) for c, w in zip(columns[:5], widths, strict=True))
                  + "  " + columns[5])
    for row in rows:
        display.print("  ".join(v.ljust(w) for v, w in zip(row[:5], widths, strict=True))
                      + "  " + row[5])
