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


def test_partial_zero_of_a_child_makes_the_page_private() -> None:
    """Issue 15: a partial ZERO of an at-least-on-write child over a page that reads as zero
    was skipped because of the bytes, so the child kept tracking its parent (ZERO byte 0 of the
    child, write the parent, the child read the parent's write). The seed decides by the page
    list (``PageWouldReadZeroLocked``): the child sees its parent's page there, so the zeros
    are written and the page becomes the child's, as a write of a zero byte would."""
    state = PagerStateMachine()
    try:
        # Two VMOs first, so that the next READ is served from the (empty) disk file as the
        # fuzzer's program was: the page is supplied and reads zeros.
        for _ in range(2):
            v = state.create_pager_vmo(disk_pages=0, npages=1, resizable=False, seed=1,
                                       trap=False)
            state.p_close(v=v)
        root = state.create_pager_vmo(disk_pages=0, npages=1, resizable=False, seed=1,
                                      trap=False)
        child = state.aow_child(v=root, at=(0, 0), npages=1, resizable=False)
        state.p_op(v=child, op="ZERO", at=(0, 0), length=1, fail=None)
        state.p_write(v=root, at=(0, 0), length=1, seed=7, fail=None)
        state.p_read(v=child, at=(0, 0), length=1, fail=None)
        state.pager_contents_match()
        state.contents_match()
        state.hierarchy_valid()
    finally:
        state.teardown()


def test_no_rule_makes_a_discardable_vmo_the_evict_model_would_miss() -> None:
    """Found by the 50-runs loop (session 4): once `reclaim_order` could make its own
    discardable VMOs, the pager machine's EVICT (`Kernel.reclaim`, which discards unlocked
    discardable VMOs after evicting pager pages) discarded one the oracle still read. The
    pager machines make no discardable VMOs."""
    from vmo.testing.pager_cow import PagerCowMachine

    for machine in (PagerStateMachine, PagerCowMachine):
        state = machine()
        try:
            names = {r.function.__name__ for r in state.rules}
        finally:
            state.teardown()
        assert not names & {"create_discardable", "reclaim_order", "lock_cycle",
                            "lock_discardable", "reclaim_aged"}, machine
