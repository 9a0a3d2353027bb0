"""The ``vmo`` command line: the parser, the command table and `main`; a module per command.

- ``vmo demo [STEP] [--pictures DIR]`` (`vmo.cli.demo`): a narrated, step-by-step tour of the
  core on a small in-process kernel; ``vmo --version`` prints the version.
- ``vmo fuzz`` (`vmo.cli.fuzz`): a fuzz campaign of the oracle state machine with a live
  display, the mutation check (``--mutants``) or the robustness campaign (``--robust``).
- ``vmo swap`` (`vmo.cli.swap`): the swap experiment (a VMO moved out and faulted back by a
  workload).
- ``vmo trace`` (`vmo.cli.trace`): run a program with the event trace on.
- ``vmo explore`` (`vmo.cli.explore`): the explorer, a local web page showing a live kernel
  (`vmo.explore`).

Each command module has an ``add_parser(subparsers)`` that declares its parser and sets
``func`` to a handler ``(args) -> int``; `COMMANDS` lists them in ``--help`` order. To add a
command (``vmo bench``, say), write its module and append its ``add_parser``. Handlers import
what they need themselves, so that ``vmo demo`` does not pay for the imports of a fuzzer.
`vmo.cli.output` is where the commands write (rich on a terminal, plain text otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import vmo.cli.explore as explore
import vmo.cli.fuzz as fuzz
import vmo.cli.swap as swap
import vmo.cli.trace as trace
from vmo.cli.demo import DEMO_STEPS, Demo, DemoStep, run_demo
from vmo.cli.demo import add_parser as _add_demo
from vmo.cli.output import PlainOutput, RichOutput, make_output

# Every command, in --help order: each adder declares a parser and sets ``func``.
COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    fuzz.add_parser,
    swap.add_parser,
    trace.add_parser,
    explore.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    from vmo import __version__

    parser = argparse.ArgumentParser(
        prog="vmo",
        description="Zircon's VMO model (copy-on-write hierarchy, pagers, swap) over real "
                    "memory.")
    parser.add_argument("--version", action="version",
                        version=f"vmo {__version__} (Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmo`` console script and of ``python -m vmo``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported by argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``vmo demo | head``): stop quietly, and keep the interpreter's
        # final flush from complaining about the same pipe.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1


__all__ = ["COMMANDS", "DEMO_STEPS", "Demo", "DemoStep", "PlainOutput", "RichOutput", "build_parser",
           "main", "make_output", "run_demo"]
