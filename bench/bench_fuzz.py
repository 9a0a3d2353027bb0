#!/usr/bin/env python3
"""Steps per second of the oracle state machine, with every check after every step.

    python bench/bench_fuzz.py            # depths 1..8 x VMOs of 16..256 pages, + a campaign
    python bench/bench_fuzz.py --quick    # smoke mode: fewer steps, small VMOs
    python bench/bench_fuzz.py --plain    # plain-text table

A fuzz campaign's speed is the speed of its steps, and a step is cheap next to the checks that
follow it: `contents_match` reads every live VMO whole and compares it with the oracle,
`hierarchy_valid` runs `vmo.debug.validate`, `structure_matches` recounts attribution. This
benchmark builds a hierarchy of a given depth over a VMO of a given size (a filled root, then
a chain of snapshots with a write between each) and runs a fixed, seeded mix of steps on its
VMOs (whole-page and ragged writes, ZERO, COMMIT, reads, resizes of the chain's ends), each
followed by the invariants as hypothesis runs them. It reports:

- steps/s with every check (what ``vmo fuzz`` gets per process),
- the share of that time spent in `validate` (the machine's ``step_time_validate``) and in
  the content comparison,
- the baseline: the same steps with no checks (``validate_every_step`` and
  ``compare_every_step`` off), measured in the same run, and the ratio;
- the same steps with incremental checks (``incremental_checks``: after most steps only the
  hierarchies whose generation moved are validated and compared, everything every
  ``full_check_every`` steps and after pins, lock ops and reclaim), and its speed-up over
  checking everything after every step.

The last row is three real ``vmo.testing.run`` campaigns of the same seed and the same number
of rule calls, so the same programs: with no checks (the ceiling: hypothesis and the rules
alone), with every check in full after every step, and with incremental checks.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import vmo  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _report  # bench/_report.py, next to this script

from vmo.pmm import PAGE_SIZE
from vmo.testing import VmoStateMachine, run


@dataclass
class Row:
    depth: int
    pages: int
    steps: int
    checked: float  # seconds, all checks
    validate: float  # seconds inside validate
    compare: float  # seconds inside contents_match
    bare: float  # seconds, no checks
    incremental: float  # seconds, incremental checks

    @property
    def sps(self) -> float:
        return self.steps / self.checked

    @property
    def sps_bare(self) -> float:
        return self.steps / self.bare

    @property
    def sps_incremental(self) -> float:
        return self.steps / self.incremental


class _Timed(VmoStateMachine):
    """Times `contents_match` too (validate is timed by the machine itself)."""

    compare_seconds = 0.0

    def contents_match(self) -> None:  # not a new invariant: called by `_check` below
        t0 = time.perf_counter()
        VmoStateMachine.contents_match(self)
        self.compare_seconds += time.perf_counter() - t0


def _build(state: VmoStateMachine, depth: int, pages: int, rng: random.Random) -> list:
    root = state.filled(npages=pages, resizable=True, seed=rng.randrange(1, 2**32))
    chain = [root]
    for _ in range(depth):
        child = state.snapshot_inside(v=chain[-1], at=(0, 0), npages=pages, resizable=True)
        # A write on each side, so that hidden nodes keep pages and leaves own some.
        state.write_pages(v=chain[-1], at=(rng.randrange(0, 1000), 0), npages=2,
                          seed=rng.randrange(1, 2**32))
        chain.append(child)
    return chain


def _step(state: VmoStateMachine, chain: list, rng: random.Random) -> None:
    v = rng.choice(chain)
    seed = rng.randrange(1, 2**32)
    at = (rng.randrange(0, 1000), rng.choice([0, 0, 1, -1, 7]))
    action = rng.randrange(8)
    if action <= 1:
        state.write_pages(v=v, at=(at[0], 0), npages=rng.randint(1, 4), seed=seed)
    elif action == 2:
        state.write(v=v, at=at, length=rng.randint(1, 3 * PAGE_SIZE), seed=seed)
    elif action == 3:
        state.zero_inside(v=v, at=at, npages=rng.randint(0, 3), tail=rng.choice([0, 1, 100]))
    elif action == 4:
        state.cow_step(v=v, action="commit", at=(at[0], 0), npages=rng.randint(1, 4),
                       seed=seed)
    elif action == 5:
        state.read(v=v, at=at, length=rng.randint(0, 2 * PAGE_SIZE))
    elif action == 6 and v is chain[-1]:
        # Resize the newest leaf within its size (releases parent pages, grows to zeros).
        state.set_size(v=v, size=rng.randint(1, v.size // PAGE_SIZE or 1) * PAGE_SIZE)
    else:
        state.write(v=v, at=at, length=rng.randint(1, 64), seed=seed)


def _check(state: VmoStateMachine) -> None:
    state.contents_match()
    state.hierarchy_valid()
    state.structure_matches()


def measure(depth: int, pages: int, steps: int, seed: int = 1) -> Row:
    times: dict[str, float] = {}
    validate = compare = 0.0
    for mode in ("full", "bare", "incremental"):
        checked = mode != "bare"
        rng = random.Random(seed)
        state = _Timed()
        state.validate_every_step = checked
        state.compare_every_step = checked
        state.incremental_checks = mode == "incremental"
        try:
            chain = _build(state, depth, pages, rng)
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(steps):
                _step(state, chain, rng)
                _check(state)
            times[mode] = time.perf_counter() - t0
            if mode == "full":
                validate, compare = state.step_time_validate, state.compare_seconds
        finally:
            state.teardown()
    return Row(depth, pages, steps, times["full"], validate, compare, times["bare"],
               times["incremental"])


class FullChecks(VmoStateMachine):
    """The machine as it was: every check in full after every step."""

    incremental_checks = False


class NoChecks(VmoStateMachine):
    """The same programs with no invariant doing any work: the ceiling of a campaign's
    rate, set by hypothesis (drawing programs) and the rules themselves (oracle and core)."""

    validate_every_step = False
    compare_every_step = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode")
    ap.add_argument("--plain", action="store_true",
                    help="plain text (the default when stdout is not a terminal)")
    ap.add_argument("--campaign-steps", type=int, default=None,
                    help="rule calls of each campaign (default 2000, 300 with --quick)")
    args = ap.parse_args(argv)
    depths = (1, 2, 4, 8)
    sizes = (16, 64) if args.quick else (16, 64, 256)
    steps = 60 if args.quick else 300
    rows = [measure(d, p, steps) for p in sizes for d in depths]
    # The same seed and the same number of rule calls: hypothesis generates the same programs
    # whatever the checks cost, so the three campaigns differ only in their checks.
    budget = args.campaign_steps or (300 if args.quick else 2000)
    camps = {}
    for name, machine in (("no checks", NoChecks), ("full", FullChecks),
                          ("incremental", VmoStateMachine)):
        t0 = time.perf_counter()
        result = run(machine, steps=budget, seed=1, database=None)
        camps[name] = (result, result.steps / (time.perf_counter() - t0))
    (bare, bare_sps), (full, full_sps), (camp, camp_sps) = camps.values()
    header = ("depth", "pages", "steps/s checked", "validate", "compare", "steps/s bare",
              "bare/checked", "steps/s incremental", "incremental/checked")
    table = [(str(r.depth), str(r.pages), f"{r.sps:,.0f}", f"{r.validate / r.checked:.0%}",
              f"{r.compare / r.checked:.0%}", f"{r.sps_bare:,.0f}",
              f"{r.sps_bare / r.sps:.1f}x", f"{r.sps_incremental:,.0f}",
              f"{r.sps_incremental / r.sps:.2f}x") for r in rows]
    table.append(("campaign", "<=16", f"{full_sps:,.0f}", f"{full.validate_share:.0%}", "-",
                  f"{bare_sps:,.0f}", f"{bare_sps / full_sps:.1f}x", f"{camp_sps:,.0f}",
                  f"{camp_sps / full_sps:.2f}x"))
    caption = (f"{steps} steps per row after building the chain; every check after every step "
               f"(contents_match, validate, structure_matches), or incremental checks. "
               f"Campaigns: vmo.testing.run, seed 1, {budget:,} rule calls each (the same "
               f"{camp.programs:,} programs: deepest hierarchy {camp.stats['max_depth']}, "
               f"widest {camp.stats['max_width']} live VMOs) with no checks, full checks and "
               f"incremental checks; steps/s counts the whole campaign, hypothesis included.")
    try:
        if _report.plain(args.plain):
            raise ImportError
        from rich.console import Console
        from rich.table import Table

        t = Table(title="oracle state machine: steps per second", caption=caption,
                  caption_justify="left", title_justify="left")
        for i, h in enumerate(header):
            t.add_column(h, justify="right" if i else "left")
        for r in table:
            t.add_row(*r)
        Console().print(t)
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for r in table:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        print(caption)
    return 0


if __name__ == "__main__":
    sys.exit(main())
