"""The pager machine narrowed to at-least-on-write hierarchies of pager-backed VMOs
(`vmo.testing.pager_cow`): the only machine whose programs reach the rules of children hung
below visible parents, clipped limits and hangs several levels up."""

from vmo.testing.pager_cow import PagerCowMachine

TestPagerCowMachine = PagerCowMachine.TestCase
