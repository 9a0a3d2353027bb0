"""The oracle state machine with mappings (`vmo.testing.mapping_machine.MappingMachine`):
loads and stores through several mappings of a VMO, of a snapshot child and of a slice,
interleaved with every VMO operation, compared with the oracle after every step."""

from __future__ import annotations

import pytest
from hypothesis import settings

from vmo.mmu.fault_handler import unavailable_reason
from vmo.testing.mapping_machine import MappingMachine

_REASON = unavailable_reason()

MappingMachine.TestCase.settings = settings(
    settings.default, max_examples=min(100, settings.default.max_examples),
    stateful_step_count=min(30, settings.default.stateful_step_count), deadline=None)
TestMappingStateMachine = pytest.mark.timeout(300, method="thread")(
    pytest.mark.skipif(_REASON is not None, reason=_REASON or "")(MappingMachine.TestCase))
