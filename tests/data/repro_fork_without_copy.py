"""Regression test written by `vmo fuzz` (seed 0).

Machine: vmo.testing.machine:VmoStateMachine. The program below failed with

    Mismatch: koid 2 content differs from the oracle at byte 100

It replays the shrunk program hypothesis printed: rule calls and invariant checks in
order. It fails while the bug is there and passes once it is fixed; commit it with your
tests to keep it fixed.
"""

from vmo.testing.machine import VmoStateMachine
from vmo.testing.mutation import load_catalog

MUTANT = {m.name: m for m in load_catalog('fuzz/mutants')}['fork_without_copy']


def test_mutant_fork_without_copy() -> None:
    with MUTANT.applied():
        _replay()


def _replay() -> None:
    state = VmoStateMachine()
    try:
        vmos_0 = state.create(discardable=False, resizable=False, size=12288)
        state.write(at=(0, 0), length=8192, seed=1, v=vmos_0)
        state.contents_match()
        vmos_1 = state.snapshot(at=(0, 0), resizable=False, size=12288, v=vmos_0)
        state.contents_match()
        state.write(at=(0, 0), length=100, seed=2, v=vmos_1)
        state.contents_match()
        state.write(at=(0, 0), length=100, seed=3, v=vmos_0)
        state.contents_match()
    finally:
        state.teardown()
