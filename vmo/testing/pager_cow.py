"""The pager state machine narrowed to at-least-on-write hierarchies of pager-backed VMOs.

`PagerStateMachine` spreads its steps over anonymous VMOs, pager traffic, writeback and
eviction; at-least-on-write clones of pager-backed VMOs, clones of those clones, and resizes
of the VMOs they hang below are a small part of its programs. The rules of the core that only
such hierarchies reach (children hung below a visible parent: clipping their limits when the
parent shrinks, and when a clone is hung several levels up) then go untested for minutes.

`PagerCowMachine` keeps the pager machine's model and checks and its pager rules, switches off
the anonymous-VMO rules, starts every program with a resizable pager-backed VMO whose disk is
full, and adds rules that stay inside their VMO: window clones (of roots and of clones), whole
page writes, and resizes to any size. ``vmo fuzz --machine
vmo.testing.pager_cow:PagerCowMachine`` fuzzes with it; the mutants of those rules name it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, multiple, rule

from vmo.pmm import PAGE_SIZE
from vmo.testing import strategies as vs
from vmo.testing.machine import VmoStateMachine
from vmo.testing.pager_machine import PagerStateMachine, not_a_rule

# How hypothesis marks the functions it runs as rules and initialize rules.
_RULE_MARKERS = ("hypothesis_stateful_rule", "hypothesis_stateful_initialize_rule")

P = PAGE_SIZE

#: Every rule of the anonymous-VMO machine (`VmoStateMachine`), switched off here by
#: shadowing it with a plain method (so that the rules that remain can still call it): the
#: scenario rules added to that machine later are switched off too without being listed.
_ANONYMOUS_RULES = tuple(
    name for name, fn in vars(VmoStateMachine).items()
    if callable(fn) and any(hasattr(fn, marker) for marker in _RULE_MARKERS))


class PagerCowMachine(PagerStateMachine):
    for _name in _ANONYMOUS_RULES:
        if hasattr(PagerStateMachine, _name):
            locals()[_name] = not_a_rule(getattr(PagerStateMachine, _name))
    del _name

    pvmos = PagerStateMachine.pvmos

    @initialize(target=pvmos, npages=st.integers(2, 8), seed=vs.seeds)
    def pager_root(self, npages: int, seed: int) -> Any:
        """A resizable pager-backed VMO whose every page is on the disk."""
        return self.create_pager_vmo(npages=npages, trap=False, resizable=True, seed=seed,
                                     disk_pages=npages)

    @rule(target=pvmos, v=pvmos, permille=st.integers(0, 999), npages=st.integers(1, 8),
          resizable=st.sampled_from([True, True, False]))
    def clone_window(self, v: Any, permille: int, npages: int, resizable: bool) -> Any:
        """An at-least-on-write clone of a window that starts inside ``v`` (of a root, or of
        a clone: then it hangs at the first ancestor with pages in its window)."""
        return self.aow_child(v=v, at=(permille, 0), npages=npages, resizable=resizable)

    @rule(v=pvmos, permille=st.integers(0, 999), npages=st.integers(1, 3), seed=vs.seeds)
    def write_inside(self, v: Any, permille: int, npages: int, seed: int) -> None:
        """Whole pages inside ``v`` (forks into clones, dirties roots)."""
        offset = vs.resolve((permille, 0), v.size)
        length = max(0, min(npages * P, v.size - offset))
        self.p_write(v=v, at=(permille, 0), length=length, seed=seed, fail=None)

    @rule(v=pvmos, npages=st.integers(0, 10))
    def resize_any(self, v: Any, npages: int) -> None:
        """Any size, smaller or larger (children below must stop seeing a cut tail)."""
        self.p_resize(v=v, npages=npages)

    @rule(target=pvmos, v=pvmos, permille=st.integers(0, 999),
          write=st.sampled_from([True, True, False]), clone=st.booleans(), seed=vs.seeds)
    def truncate_and_regrow(self, v: Any, permille: int, write: bool, seed: int,
                            clone: bool = False) -> Any:
        """Truncate ``v`` and extend it back to its size (a file truncated and rewritten),
        then perhaps write the regrown tail. Clones below must read zeros there, not the new
        data; clones made of ``v`` later must not see what ``v`` no longer sees: with
        ``clone`` (and no write), a clone of a window across the cut follows at once. It
        hangs above ``v`` (``v`` has no pages there), so its limit must be clipped to what
        ``v`` sees on the way up."""
        v = self._pfit(v, resizable=True)
        if v.closed or not v.resizable:
            return multiple()
        pages = v.size // P
        keep = vs.resolve((permille, 0), v.size) // P
        self.p_resize(v=v, npages=keep)
        self.p_resize(v=v, npages=pages)
        if write and v.size == pages * P and pages > keep:
            self.p_write(v=v, at=(0, keep * P), length=(pages - keep) * P, seed=seed,
                         fail=None)
        elif clone and v.size == pages * P and pages > keep:
            start = max(0, keep - 1)
            return self.aow_child(v=v, at=(0, start * P), npages=pages - start,
                                  resizable=False)
        return multiple()
