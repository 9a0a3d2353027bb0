"""The core proven by the oracle state machine (DESIGN.md, Testing)."""

from vmo.testing import VmoStateMachine

TestCoreStateMachine = VmoStateMachine.TestCase
