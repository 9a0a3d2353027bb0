"""Fuzzing machinery for copy-on-write invariants, public so users can reuse it.

- `Oracle`: a naive model of VMOs that predicts every call's outcome.
- `VmoStateMachine`: a hypothesis ``RuleBasedStateMachine`` that runs a real `vmo.Kernel` and the
  oracle side by side, comparing contents and running `vmo.debug.validate` after every step.
- `strategies`: offsets near page edges and limits, sizes, payloads.
"""

from vmo.testing import strategies
from vmo.testing.machine import Mismatch, VmoStateMachine
from vmo.testing.oracle import Oracle, OVmo

__all__ = ["Mismatch", "OVmo", "Oracle", "VmoStateMachine", "strategies"]
