"""The pager oracle state machine: the test plays the pager (DESIGN.md, Testing)."""

from vmo.testing.pager_machine import PagerStateMachine

TestPagerStateMachine = PagerStateMachine.TestCase
