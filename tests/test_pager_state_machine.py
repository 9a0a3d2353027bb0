"""The pager oracle state machine: the test plays the pager (DESIGN.md, Testing)."""

from vmo.testing.pager_machine import PagerStateMachine

TestPagerStateMachine = PagerStateMachine.TestCase


def test_zero_of_a_page_supplied_as_zero_marker_may_stay_clean() -> None:
    """Found by `vmo fuzz` once the test pager also supplied from a file: a page past the end
    of the file is supplied as a zero marker, a partial ZERO of it changes nothing (Zircon's
    PageWouldReadZeroLocked), so the page stays Clean. The model had required every zeroed page
    to be reported dirty; only pages whose bytes change must be."""
    state = PagerStateMachine()
    try:
        # The handler serves every other READ from the file; two VMOs first so that this
        # one's READ is served that way.
        for _ in range(2):
            v = state.create_pager_vmo(disk_pages=0, npages=1, resizable=False, seed=1,
                                       trap=False)
            state.p_close(v=v)
        v = state.create_pager_vmo(disk_pages=0, npages=1, resizable=False, seed=1, trap=False)
        state.p_op(at=(0, 0), fail=None, length=1, op="ZERO", v=v)
        state.pager_contents_match()
        state.contents_match()
        state.hierarchy_valid()
    finally:
        state.teardown()
