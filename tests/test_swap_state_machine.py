"""The swap source proven by its state machine (`vmo.testing.swap_machine`)."""

from hypothesis import settings

from vmo.testing.swap_machine import SwapStateMachine

TestSwapStateMachine = SwapStateMachine.TestCase
TestSwapStateMachine.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None)
