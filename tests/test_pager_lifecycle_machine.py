"""The pager machine with a file's life cycle (`vmo.testing.pager_lifecycle`): the root closed
under pressure while clones read through it, and whole rewrites of long trap-dirty files."""

from vmo.testing.pager_lifecycle import PagerLifecycleMachine

TestPagerLifecycleMachine = PagerLifecycleMachine.TestCase
