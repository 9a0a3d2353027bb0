"""The swap state machine: the swap source's moves interleaved with everything else.

`SwapStateMachine` drives a real `vmo.Kernel` with a `vmo.pager.swap.SwapSource` and a small
oracle of its own side by side. Its VMOs are the source's roots (resizable or not) and
snapshots of them -- SNAPSHOT or SNAPSHOT_AT_LEAST_ON_WRITE, which for a swap VMO is a snapshot
too -- and snapshots of those, at any offset; closing one merges hidden nodes, the source's
hidden root included. Its rules are the swap steps -- ``move_to_staging`` (all VMOs or some),
``swap_out`` and ``swap_in`` (everything, or a bounded run), ``trim`` (all, or a bounded
scan) -- and the operations that can race with them: writes, reads, COMMIT, DECOMMIT, ZERO,
resizes, snapshots, closes, pins, and loads and stores through mappings.

After every step it checks that:

- every live VMO shows exactly what the oracle says (no step changes content), checked where
  each page is -- a frame of the VMO or of an ancestor, a zero marker, or, for what its
  source root lacks, the staged copy, else the swap-file copy, else zeros -- without bringing
  any back; the ``read`` rule reads whole VMOs the ordinary way;
- each source root's pages are in exactly one place: resident (a frame in its page list),
  staged, or in the swap file -- never two;
- the metrics add up: ``resident + staging + swap file`` equals the pages found in those three
  places, and the state names where the pages are;
- `vmo.debug.validate` (and the mappings' validator) holds.

The oracle is naive: a snapshot copies its window of the parent's content when it is made.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from vmo import debug
from vmo.errors import Status, ZxError
from vmo.kernel import Kernel
from vmo.mmu.mapping import Mapping
from vmo.page_list import MARKER
from vmo.pager.swap import SwapSource, SwapState
from vmo.pager.swap.vmo_source import SwapVmoSource
from vmo.pmm import PAGE_SIZE
from vmo.types import ChildOptions, VmoOp, VmoOptions
from vmo.vm_object import PinnedRange, Vmo

MAX_PAGES = 12
_ZERO = bytes(PAGE_SIZE)


class OVmo:
    """The oracle's VMO: its whole content, page by page (a snapshot copies its window)."""

    def __init__(self, real: Vmo, size: int, created: bool = True) -> None:
        self.real = real
        self.size = size  # pages
        self.created = created  # made by the source (not a snapshot)
        self.pages: dict[int, bytes] = {}
        self.closed = False
        self.mappings: list[Mapping] = []

    def page(self, p: int) -> bytes:
        if p >= self.size:
            return _ZERO
        return self.pages.get(p, _ZERO)

    def content(self) -> bytes:
        return b"".join(self.page(p) for p in range(self.size))

    def write(self, offset: int, data: bytes) -> None:
        """Bytes ``data`` at byte ``offset``."""
        pos = 0
        while pos < len(data):
            p, inner = divmod(offset + pos, PAGE_SIZE)
            n = min(PAGE_SIZE - inner, len(data) - pos)
            page = bytearray(self.page(p))
            page[inner:inner + n] = data[pos:pos + n]
            if page.count(0) == PAGE_SIZE:
                self.pages.pop(p, None)
            else:
                self.pages[p] = bytes(page)
            pos += n

    def snapshot(self, real: Vmo, offset: int, size: int) -> OVmo:
        child = OVmo(real, size, created=False)
        child.pages = {p - offset: b for p, b in self.pages.items() if offset <= p < offset + size}
        return child

    def resize(self, size: int) -> None:
        for p in [p for p in self.pages if p >= size]:
            del self.pages[p]
        self.size = size


class SwapStateMachine(RuleBasedStateMachine):
    """See the module docstring. ``SwapStateMachine.TestCase`` is a ready test case."""

    kernel_memory = 16 * 2**20
    use_mappings = True

    roots = Bundle("roots")
    vmos = Bundle("vmos")
    pins = Bundle("pins")

    def __init__(self) -> None:
        super().__init__()
        self.steps: Counter[str] = Counter()
        self.k = Kernel(memory=self.kernel_memory, page_request_timeout=20.0)
        self.swap = SwapSource(self.k)
        self.live: list[OVmo] = []
        self.mappings_ok = self.use_mappings and _mappings_available()

    def teardown(self) -> None:
        try:
            self.swap.close()
        finally:
            self.k.close()

    # ------------------------------------------------------------------ helpers

    def _add(self, o: OVmo) -> OVmo:
        self.live.append(o)
        return o

    # ------------------------------------------------------------------ VMOs

    @rule(target=roots, npages=st.integers(0, MAX_PAGES), resizable=st.booleans(),
          seed=st.integers(0, 255))
    def create(self, npages: int, resizable: bool, seed: int) -> Any:
        self.steps["create"] += 1
        v = self.swap.create_vmo(npages * PAGE_SIZE,
                                 VmoOptions.RESIZABLE if resizable else VmoOptions(0))
        o = self._add(OVmo(v, npages))
        if npages:
            data = bytes([seed or 1]) * (npages * PAGE_SIZE // 2)
            v.write(data, 0)
            o.write(0, data)
        return o

    @rule(target=vmos, r=roots)
    def as_vmo(self, r: OVmo) -> OVmo:
        self.steps["as_vmo"] += 1
        return r

    @rule(target=vmos, v=vmos, offset=st.integers(0, MAX_PAGES),
          npages=st.integers(0, MAX_PAGES), kind=st.sampled_from(["snapshot", "at_least"]),
          resizable=st.booleans())
    def create_child(self, v: OVmo, offset: int, npages: int, kind: str,
                     resizable: bool) -> Any:
        """A snapshot (of a root, or of a snapshot); at-least-on-write is one as well."""
        self.steps["create_child"] += 1
        if v.closed:
            return multiple()
        opts = (ChildOptions.SNAPSHOT if kind == "snapshot"
                else ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE)
        if resizable:
            opts |= ChildOptions.RESIZABLE
        try:
            child = v.real.create_child(opts, offset * PAGE_SIZE, npages * PAGE_SIZE)
        except ZxError as e:
            assert e.status == Status.ERR_BAD_STATE  # pinned pages
            assert v.real.cow.pinned_pages
            return multiple()
        return self._add(v.snapshot(child, offset, npages))

    @rule(v=consumes(vmos))
    def close(self, v: OVmo) -> None:
        self.steps["close"] += 1
        if v.closed:
            return
        v.real.close()
        v.closed = True
        v.mappings.clear()
        self.live.remove(v)

    @rule(v=vmos, where=st.floats(0, 1), length=st.integers(0, 3 * PAGE_SIZE),
          byte=st.integers(0, 255))
    def write(self, v: OVmo, where: float, length: int, byte: int) -> None:
        self.steps["write"] += 1
        offset = int(where * v.size * PAGE_SIZE)
        if v.closed:
            return
        length = min(length, max(0, v.size * PAGE_SIZE - offset))
        data = bytes([byte]) * length
        if offset + length > v.size * PAGE_SIZE or not length:
            return
        v.real.write(data, offset)
        v.write(offset, data)

    @rule(v=vmos, where=st.floats(0, 1), length=st.integers(0, 3 * PAGE_SIZE))
    def zero(self, v: OVmo, where: float, length: int) -> None:
        self.steps["zero"] += 1
        offset = int(where * v.size * PAGE_SIZE)
        if v.closed or offset + length > v.size * PAGE_SIZE:
            return
        v.real.op_range(VmoOp.ZERO, offset, length)
        v.write(offset, bytes(length))

    @rule(r=vmos, where=st.floats(0, 1), npages=st.integers(0, 4))
    def decommit(self, r: OVmo, where: float, npages: int) -> None:
        self.steps["decommit"] += 1
        first = int(where * r.size)
        npages = min(npages, r.size - first)
        if r.closed:
            return
        # As for an anonymous VMO: a clone, or a VMO with a snapshot (its node is then below
        # the hidden node), cannot DECOMMIT.
        clone = r.real.cow.parent is not None
        try:
            r.real.op_range(VmoOp.DECOMMIT, first * PAGE_SIZE, npages * PAGE_SIZE)
        except ZxError as e:
            assert e.status == (Status.ERR_NOT_SUPPORTED if clone and npages
                                else Status.ERR_BAD_STATE), e  # else a pinned page
            return
        assert not clone or not npages
        r.write(first * PAGE_SIZE, bytes(npages * PAGE_SIZE))

    @rule(v=vmos, first=st.integers(0, MAX_PAGES), npages=st.integers(0, 4))
    def commit(self, v: OVmo, first: int, npages: int) -> None:
        self.steps["commit"] += 1
        if v.closed or first + npages > v.size:
            return
        v.real.op_range(VmoOp.COMMIT, first * PAGE_SIZE, npages * PAGE_SIZE)

    @rule(r=vmos, npages=st.integers(0, MAX_PAGES))
    def resize(self, r: OVmo, npages: int) -> None:
        self.steps["resize"] += 1
        if r.closed:
            return
        try:
            r.real.set_size(npages * PAGE_SIZE)
        except ZxError as e:
            assert e.status in (Status.ERR_UNAVAILABLE, Status.ERR_BAD_STATE)
            return
        r.resize(npages)
        for m in list(r.mappings):
            if m.unmapped or m.length > npages * PAGE_SIZE:
                r.mappings.remove(m)

    @rule(target=pins, r=vmos, first=st.integers(0, MAX_PAGES), npages=st.integers(1, 3))
    def pin(self, r: OVmo, first: int, npages: int) -> Any:
        self.steps["pin"] += 1
        if r.closed or first + npages > r.size:
            return multiple()
        return (r, r.real.pin(first * PAGE_SIZE, npages * PAGE_SIZE))

    @rule(p=consumes(pins))
    def unpin(self, p: tuple[OVmo, PinnedRange]) -> None:
        self.steps["unpin"] += 1
        with contextlib.suppress(ZxError):  # its VMO closed or shrank: released with it
            p[1].unpin()

    # ------------------------------------------------------------------ mappings

    @precondition(lambda self: self.mappings_ok)
    @rule(r=vmos)
    def map(self, r: OVmo) -> None:
        self.steps["map"] += 1
        if r.closed or not r.size or len(r.mappings) >= 2:
            return
        r.mappings.append(r.real.map(0, r.size * PAGE_SIZE))

    @precondition(lambda self: self.mappings_ok)
    @rule(r=vmos, offset=st.integers(0, MAX_PAGES * PAGE_SIZE), length=st.integers(1, PAGE_SIZE),
          byte=st.integers(0, 255), which=st.integers(0, 1))
    def store_through_mapping(self, r: OVmo, offset: int, length: int, byte: int,
                              which: int) -> None:
        self.steps["store_through_mapping"] += 1
        maps = [m for m in r.mappings if not m.unmapped]
        if r.closed or not maps:
            return
        m = maps[which % len(maps)]
        if offset + length > m.length:
            return
        data = bytes([byte]) * length
        m.write(data, offset)
        r.write(offset, data)
        assert m.read(length, offset) == data

    # ------------------------------------------------------------------ swap steps

    @rule(which=st.sampled_from(["all", "some"]), data=st.data())
    def move_to_staging(self, which: str, data: st.DataObject) -> None:
        self.steps["move_to_staging"] += 1
        if which == "all" or not self.live:
            self.swap.move_to_staging()
            return
        # Any VMO names its hierarchy's source root: a snapshot as well as the original.
        chosen = data.draw(st.lists(st.sampled_from(self.live), max_size=3))
        self.swap.move_to_staging([r.real for r in chosen])

    @rule(max_pages=st.one_of(st.none(), st.integers(0, 6)))
    def swap_out(self, max_pages: int | None) -> None:
        self.steps["swap_out"] += 1
        n = self.swap.swap_out(None if max_pages is None else max_pages * PAGE_SIZE)
        if max_pages is not None:
            assert n <= max_pages

    @rule(max_pages=st.one_of(st.none(), st.integers(0, 6)))
    def swap_in(self, max_pages: int | None) -> None:
        self.steps["swap_in"] += 1
        n = self.swap.swap_in(None if max_pages is None else max_pages * PAGE_SIZE)
        if max_pages is None:
            st_ = self.swap.status()
            assert st_.state == SwapState.READY, st_
            assert st_.metrics.staging_pages == st_.metrics.swap_pages == 0
        else:
            assert n <= max_pages

    @rule(max_pages=st.one_of(st.none(), st.integers(0, 6)))
    def trim(self, max_pages: int | None) -> None:
        self.steps["trim"] += 1
        self.swap.trim(max_pages)

    @rule(stop=st.sampled_from(["staged", "trimmed", "swapped", "back"]))
    def cycle(self, stop: str) -> None:
        """The experiment's cycle in one step, stopping at ``stop``."""
        self.steps["cycle"] += 1
        self.swap.move_to_staging()
        if stop == "staged":
            return
        self.swap.trim()
        if stop == "trimmed":
            return
        self.swap.swap_out()
        if stop == "back":
            self.swap.swap_in()

    # ------------------------------------------------------------------ invariants

    @rule(v=vmos)
    def read(self, v: OVmo) -> None:
        """Read a whole VMO (this brings its pages back: a read is an access like any other)."""
        self.steps["read"] += 1
        if v.closed:
            return
        got = v.real.read(v.size * PAGE_SIZE)
        if got != v.content():
            bad = next(p for p in range(v.size)
                       if got[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] != v.page(p))
            raise AssertionError(f"VMO koid {v.real.koid} page {bad} differs from the oracle")

    @invariant()
    def contents_match(self) -> None:
        """Every VMO's content, looked up where each page is without bringing any back (a
        read would undo the step just taken): a frame of the VMO or of the ancestor that
        shows it, zeros for a marker, else -- where the source root shows nothing -- the staged
        copy, else the swap-file copy, else zeros."""
        for r in self.live:
            with r.real.cow.hier.lock:
                for p in range(r.size):
                    if _page_in_place(r.real, p) != r.page(p):
                        raise AssertionError(f"VMO koid {r.real.koid} page {p} differs from "
                                             f"the oracle")

    @invariant()
    def pages_in_one_place(self) -> None:
        resident = staged = swapped = 0
        for src in self.swap._live_sources():
            region = src.region
            node = region.node
            with node.hier.lock:
                if region.closed:
                    continue
                assert node.parent is None and node.page_source is src, "region off its root"
                frames = {off for off, _ in node.page_list.pages(0, node.size)}
                st_ = set() if region.staging is None else {
                    p for s, e in region.staging.present.runs() for p in range(s, e)}
                sw = set() if region.file is None else {
                    p for s, e in region.file.present.runs() for p in range(s, e)}
                assert not frames & st_ and not frames & sw and not st_ & sw, \
                    f"a page of node #{node.id} is in two places"
                for p in st_ | sw:
                    assert node.page_list.get(p) == 0, f"page {p} is out but has a slot"
                    assert p < node.size, f"page {p} is out past the end"
                resident += len(frames)
                staged += len(st_)
                swapped += len(sw)
        status = self.swap.status()
        m = status.metrics
        assert (m.resident_pages, m.staging_pages, m.swap_pages) == (resident, staged, swapped)
        if status.state == SwapState.READY:
            assert staged == swapped == 0
        elif status.state == SwapState.PENDING:
            assert staged
        elif status.state == SwapState.ACTIVE:
            assert swapped and not staged

    @invariant()
    def valid(self) -> None:
        debug.validate(self.k)
        if self.mappings_ok:
            from vmo.mmu import mapping

            mapping.validate(self.k)


def _page_in_place(v: Vmo, p: int) -> bytes:
    """Page ``p`` of ``v`` as it is now, wherever it is (hierarchy lock held)."""
    pmm = v._kernel.pmm
    node = v.cow
    if p >= node.size:
        return _ZERO
    slot = node.page_list.get(p)
    owner, owner_off = node, p
    if slot == 0:
        owner, owner_off, slot = node.find_initial_content_locked(p)
    if slot > 0:
        if pmm.coherence is not None:
            pmm.coherence.before_read([slot])
        return bytes(pmm.view(slot))
    if slot == MARKER:
        return _ZERO
    src = owner.page_source
    if owner.parent is not None or src is None or owner_off >= owner.supply_zero_offset:
        return _ZERO
    assert isinstance(src, SwapVmoSource) and src.region.node is owner
    region = src.region
    if region.staging is not None and owner_off < region.staging.num_pages \
            and region.staging.present.is_present(owner_off):
        return region.staging.read(owner_off, owner_off + 1)
    if region.file is not None and owner_off < region.file.num_pages \
            and region.file.present.is_present(owner_off):
        return region.file.read(owner_off, owner_off + 1)
    return _ZERO


def _mappings_available() -> bool:
    from vmo.mmu.fault_handler import unavailable_reason

    return unavailable_reason() is None


__all__ = ["OVmo", "SwapStateMachine"]
