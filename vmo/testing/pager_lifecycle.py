"""`PagerCowMachine` plus three rules about the life of a pager-backed file.

- ``close_root_under_pressure``: the root's handle closes while at-least-on-write clones still
  read through it, then memory pressure evicts every clean page, then each clone is read
  whole. The page source must stay open until the last clone goes (seed: the root's
  ``fbl_recycle``), so those reads reach the pager as READ requests.
- ``supply_from_shared_aux``: the pager supplies from an aux VMO that shares its pages (it
  has a slice or a snapshot child, or is a clone): ERR_BAD_STATE, and nothing moves (seed:
  ``TakePagesLocked``).
- ``rewrite_trap_root``: a new file longer than one lookup (``LookupInfo::kMaxPages``, 16
  pages), trapping dirtying, read whole and then rewritten whole: the pager must see DIRTY
  requests of at most 16 pages each.

All three happen in `PagerCowMachine`'s programs only by the chance meeting of several rules (a
root closed, an eviction, then a read of a clone whose pages were all evicted; a long
trap-dirty root and a whole write of it; a supply from a shared aux, one kind of one error
rule); `source_closes_with_handle`, ``dirty_request_not_batched`` and
``supply_accepts_shared_aux`` survived 60 s campaigns there. ``vmo fuzz --machine
vmo.testing.pager_lifecycle:PagerLifecycleMachine`` fuzzes with it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule

from vmo.cow_pages import LOOKUP_MAX_PAGES
from vmo.pmm import PAGE_SIZE
from vmo.testing import strategies as vs
from vmo.testing.pager_cow import PagerCowMachine
from vmo.testing.pager_machine import PNode

P = PAGE_SIZE


class PagerLifecycleMachine(PagerCowMachine):
    pvmos = PagerCowMachine.pvmos
    # Its supplies from an aux VMO that shares its pages must be refused: counted apart.
    error_rules = PagerCowMachine.error_rules | {"supply_from_shared_aux"}

    @rule(v=PagerCowMachine.pvmos)
    def close_root_under_pressure(self, v: Any) -> None:
        """Close ``v``'s root while clones of it live, evict every clean page, read each
        clone whole (checked against the model). When ``v``'s root is closed, detached or has
        no open clone, the next root that has one is taken, else a new root with a clone of
        all of it."""
        root = self._root_with_clones(v)
        if root is None:
            root = self._fresh_root(v, resizable=False)
            self.clone_window(v=root, permille=0, npages=4, resizable=False)
        clones = self._open_clones(root)
        if not clones:  # the fresh root's clone was refused
            return
        self.p_close(v=root)
        self.expect("pager:reclaim", None, lambda: self.k.reclaim(1 << 20))
        for clone in clones:
            self._p_read_at(clone, 0, clone.size, None)

    def _open_clones(self, root: PNode) -> list[PNode]:
        return [n for n in self.pnodes
                if not n.closed and not n.is_root and n.the_root() is root]

    def _root_with_clones(self, v: Any) -> PNode | None:
        """``v``'s root if it is open, not detached and has an open clone, else the next such
        root by koid; None if there is none."""
        def fits(n: PNode) -> bool:
            return (n.is_root and not n.closed and not n.detached
                    and bool(self._open_clones(n)))

        root = v.the_root()
        if fits(root):
            return root
        return self._next_fitting(root.real.koid, fits)

    @rule(v=PagerCowMachine.pvmos, seed=vs.seeds)
    def supply_from_shared_aux(self, v: Any, seed: int) -> None:
        """A supply to ``v``'s root (or the next open one) from an aux VMO that shares its
        pages: refused, and the aux and its relatives read as before."""
        self._supply_from_bad_aux(v, seed)

    @rule(target=PagerCowMachine.pvmos,
          npages=st.integers(LOOKUP_MAX_PAGES + 1, LOOKUP_MAX_PAGES + 4), seed=vs.seeds)
    def rewrite_trap_root(self, npages: int, seed: int) -> Any:
        """A new trap-dirty file longer than one lookup, read whole, then written whole."""
        root = self.create_pager_vmo(npages=npages, trap=True, resizable=False, seed=seed,
                                     disk_pages=npages)
        assert isinstance(root, PNode)
        self._p_read_at(root, 0, root.size, None)
        self._p_write_at(root, 0, root.size, seed, None)
        return root
