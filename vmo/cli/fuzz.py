"""``vmo fuzz``: a fuzz campaign of the oracle state machine with a live display, the mutation
check (``--mutants``), or the robustness campaign (``--robust``). The work is in
`vmo.testing.console` and `vmo.testing.robust`; this module declares the command.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fuzz", help="fuzz the core against the oracle state machine; --mutants checks that "
                     "the fuzzer catches deliberately broken cores",
        description="Run the oracle state machine (vmo.testing) for a time or a number of "
                    "steps with a live display of what it exercised. On failure the shrunk "
                    "program is printed and saved as a pytest file. With --mutants, run a "
                    "campaign against each deliberately broken core in fuzz/mutants/ and "
                    "print which were killed. See docs/fuzzing.md.")
    p.add_argument("--time", type=float, metavar="SECONDS",
                   help="run for SECONDS (default 60 unless --steps is given; with --mutants, "
                        "the budget of each mutant)")
    p.add_argument("--steps", type=int, metavar="N", help="stop after N rule calls")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="processes sharing the example database (with --mutants: mutants run "
                        "at a time)")
    p.add_argument("--seed", type=int, help="hypothesis seed (default: random, printed)")
    p.add_argument("--db", metavar="PATH|URL",
                   help="example database shared by jobs and later runs: a directory "
                        "(default: .hypothesis/vmo-fuzz), or redis://HOST:PORT/DB to share it "
                        "with other machines (layered with --local-db)")
    p.add_argument("--local-db", metavar="PATH", default=".hypothesis/vmo-fuzz",
                   help="with --db redis://...: the local directory layered with it "
                        "(default: %(default)s)")
    p.add_argument("--db-readonly", metavar="PATH|URL", action="append", default=[],
                   help="also replay the programs of this database (a directory or a Redis "
                        "URL) but never write to it (repeat for several)")
    p.add_argument("--no-db", action="store_true", help="use no writable example database")
    p.add_argument("--machine", metavar="MODULE:CLASS",
                   help="the state machine to fuzz (default vmo.testing.machine:VmoStateMachine)")
    p.add_argument("--program-steps", type=int, metavar="N",
                   help="rule calls per program (hypothesis stateful_step_count; default 50)")
    p.add_argument("--failures-dir", metavar="DIR", default="fuzz/failures",
                   help="where a failing program is saved as test_repro_<seed>.py "
                        "(default: %(default)s)")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--plain", action="store_true", help="plain status lines, no live panel")
    style.add_argument("--rich", action="store_true",
                       help="the live panel even when stdout is not a terminal")
    p.add_argument("--mutants", action="store_true",
                   help="run a campaign against every mutant of fuzz/mutants/ (one subprocess "
                        "each) and print the table")
    p.add_argument("--mutant", metavar="NAME", action="append",
                   help="with --mutants: only these (repeat); alone: fuzz with this mutant "
                        "applied")
    p.add_argument("--list-mutants", action="store_true", help="list the mutants and exit")
    p.add_argument("--mutants-dir", metavar="DIR",
                   help="the mutant catalogue (default: fuzz/mutants of this checkout)")
    p.add_argument("--robust", action="store_true",
                   help="run the robustness campaign instead (bad input, injected faults, "
                        "threads, killed workloads, leaks) for --time seconds; see "
                        "docs/robustness.md")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (the live display goes to stderr)")
    p.set_defaults(func=_cmd_fuzz)


def _cmd_fuzz(args: argparse.Namespace) -> int:
    if args.robust:
        import vmo.testing.robust as robust

        return robust.main(60.0 if args.time is None else args.time, args.seed)
    from vmo.testing.console import fuzz_command

    return fuzz_command(args)

