"""Fuzzing machinery for copy-on-write invariants, public so users can reuse it.

- `Oracle`: a naive model of VMOs that predicts every call's outcome.
- `VmoStateMachine`: a hypothesis ``RuleBasedStateMachine`` that runs a real `vmo.Kernel` and the
  oracle side by side, comparing contents and running `vmo.debug.validate` after every step.
  Subclass it to add rules or invariants, or write a machine of your own.
- `strategies`: offsets near page edges and limits, sizes, payloads.
- `run`: a fuzz campaign of any state machine for a time or a number of steps, in one or more
  processes sharing an example database; returns a `RunResult` with statistics (operation mix,
  coverage of the core's cases, see `COVERAGE_KEYS`) and the shrunk failing program if any
  (`Failure`), which `write_repro` saves as a pytest file. ``vmo fuzz`` is its command line.
- `vmo.testing.mutation`: deliberately broken variants of the core (`Mutant`) and the check
  that the machine kills them (``vmo fuzz --mutants``).
- `vmo.testing.decode`: byte strings to programs of a machine, for coverage-guided fuzzers
  (``fuzz/atheris_fuzz.py``).

See docs/fuzzing.md.
"""

import vmo.testing.strategies as strategies
from vmo.testing.machine import Mismatch, VmoStateMachine
from vmo.testing.oracle import Oracle, OVmo
from vmo.testing.run import (
    COVERAGE_KEYS,
    CoreProbes,
    Failure,
    Progress,
    RunResult,
    run,
    write_repro,
)

__all__ = [
    "COVERAGE_KEYS",
    "CoreProbes",
    "Failure",
    "Mismatch",
    "OVmo",
    "Oracle",
    "Progress",
    "RunResult",
    "VmoStateMachine",
    "run",
    "strategies",
    "write_repro",
]
