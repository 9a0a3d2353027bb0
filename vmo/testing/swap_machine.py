"""The swap state machine: the swap source's moves interleaved with everything else.

`SwapStateMachine` drives a real `vmo.Kernel` with a `vmo.pager.swap.SwapSource` and a small
oracle of its own side by side. Its VMOs are the source's roots (resizable or not) and
at-least-on-write children of them; its rules are the swap steps -- ``move_to_staging`` (all
VMOs or some), ``swap_out`` and ``swap_in`` (everything, or a bounded run), ``trim`` (all, or a
bounded scan) -- and the operations that can race with them: writes, reads, COMMIT, DECOMMIT,
ZERO, resizes, children, closes, pins, and loads and stores through mappings.

After every step it checks that:

- every root shows exactly what the oracle says (no step changes content), checked where each
  page is -- frame, staged copy, swap-file copy -- without bringing any back; the ``read`` rule
  reads whole VMOs (children included) the ordinary way;
- each root's pages are in exactly one place: resident (a frame in its page list), staged, or
  in the swap file -- never two -- and the bytes staged or swapped are the page's content;
- the metrics add up: ``resident + staging + swap file`` equals the pages found in those three
  places, and the state names where the pages are;
- `vmo.debug.validate` (and the mappings' validator) holds.

The oracle models at-least-on-write children of a pager-backed root as Zircon builds them: a
child shows the pages it wrote itself and, elsewhere, its parent's current content inside the
window it can still see (a parent's shrink narrows that window for good).
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
    """The oracle's VMO: a root (``parent`` None) or an at-least-on-write child of one."""

    def __init__(self, real: Vmo, size: int, parent: OVmo | None = None, offset: int = 0) -> None:
        self.real = real
        self.size = size  # pages
        self.parent = parent
        self.offset = offset  # pages into the parent
        self.limit = 0 if parent is None else max(0, min(size, parent.size - offset))
        self.pages: dict[int, bytes] = {}  # root: content; child: the pages it forked
        self.children: list[OVmo] = []
        self.closed = False
        self.mappings: list[Mapping] = []

    def page(self, p: int) -> bytes:
        if p >= self.size:
            return _ZERO
        if p in self.pages or self.parent is None:
            return self.pages.get(p, _ZERO)
        if p < self.limit:
            return self.parent.page(self.offset + p)
        return _ZERO

    def content(self) -> bytes:
        return b"".join(self.page(p) for p in range(self.size))

    def write(self, offset: int, data: bytes) -> None:
        """Bytes ``data`` at byte ``offset`` (a child forks each page it touches)."""
        pos = 0
        while pos < len(data):
            p, inner = divmod(offset + pos, PAGE_SIZE)
            n = min(PAGE_SIZE - inner, len(data) - pos)
            page = bytearray(self.page(p))
            page[inner:inner + n] = data[pos:pos + n]
            self.pages[p] = bytes(page)
            pos += n
        if self.parent is None:
            self.pages = {p: b for p, b in self.pages.items() if b != _ZERO}

    def resize(self, size: int) -> None:
        if size < self.size:
            for p in [p for p in self.pages if p >= size]:
                del self.pages[p]
            for c in self.children:
                c.limit = min(c.limit, max(0, size - c.offset))
        if self.parent is not None:
            self.limit = min(self.limit, size)
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
        self.all_roots: list[OVmo] = []
        self.mappings_ok = self.use_mappings and _mappings_available()

    def teardown(self) -> None:
        try:
            self.swap.close()
        finally:
            self.k.close()

    # ------------------------------------------------------------------ helpers

    def _add(self, o: OVmo) -> OVmo:
        self.live.append(o)
        if o.parent is None:
            self.all_roots.append(o)
        return o

    @staticmethod
    def _source(o: OVmo) -> SwapVmoSource:
        root = o
        while root.parent is not None:
            root = root.parent
        src = root.real.cow.page_source if not root.real.closed else None
        assert isinstance(src, SwapVmoSource)
        return src

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

    @rule(target=vmos, r=roots, offset=st.integers(0, MAX_PAGES),
          npages=st.integers(0, MAX_PAGES))
    def create_child(self, r: OVmo, offset: int, npages: int) -> Any:
        self.steps["create_child"] += 1
        if r.closed:
            return multiple()
        child = r.real.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, offset * PAGE_SIZE,
                                    npages * PAGE_SIZE)
        o = OVmo(child, npages, r, offset)
        r.children.append(o)
        return self._add(o)

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

    @rule(r=roots, where=st.floats(0, 1), npages=st.integers(0, 4))
    def decommit(self, r: OVmo, where: float, npages: int) -> None:
        self.steps["decommit"] += 1
        first = int(where * r.size)
        npages = min(npages, r.size - first)
        if r.closed:
            return
        try:
            r.real.op_range(VmoOp.DECOMMIT, first * PAGE_SIZE, npages * PAGE_SIZE)
        except ZxError as e:
            assert e.status == Status.ERR_BAD_STATE  # a pinned page in the range
            return
        r.write(first * PAGE_SIZE, bytes(npages * PAGE_SIZE))

    @rule(v=vmos, first=st.integers(0, MAX_PAGES), npages=st.integers(0, 4))
    def commit(self, v: OVmo, first: int, npages: int) -> None:
        self.steps["commit"] += 1
        if v.closed or first + npages > v.size:
            return
        v.real.op_range(VmoOp.COMMIT, first * PAGE_SIZE, npages * PAGE_SIZE)

    @rule(r=roots, npages=st.integers(0, MAX_PAGES))
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

    @rule(target=pins, r=roots, first=st.integers(0, MAX_PAGES), npages=st.integers(1, 3))
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
    @rule(r=roots)
    def map(self, r: OVmo) -> None:
        self.steps["map"] += 1
        if r.closed or not r.size or len(r.mappings) >= 2:
            return
        r.mappings.append(r.real.map(0, r.size * PAGE_SIZE))

    @precondition(lambda self: self.mappings_ok)
    @rule(r=roots, offset=st.integers(0, MAX_PAGES * PAGE_SIZE), length=st.integers(1, PAGE_SIZE),
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
        roots = [r for r in self.live if r.parent is None]
        if which == "all" or not roots:
            self.swap.move_to_staging()
            return
        chosen = data.draw(st.lists(st.sampled_from(roots), max_size=3))
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
        """Every root's content, looked up where each page is without bringing any back (a
        read would undo the step just taken): the frame, zeros for a marker, else the staged
        copy, else the swap-file copy, else zeros."""
        pmm = self.k.pmm
        for r in self.live:
            if r.parent is not None:
                continue
            src = r.real.cow.page_source
            assert isinstance(src, SwapVmoSource)
            region = src.region
            node = region.node
            assert node.size == r.size
            with node.hier.lock:
                for p in range(r.size):
                    slot = node.page_list.get(p)
                    if slot > 0:
                        if pmm.coherence is not None:
                            pmm.coherence.before_read([slot])
                        got = bytes(pmm.view(slot))
                    elif slot == MARKER:
                        got = _ZERO
                    elif region.staging is not None and region.staging.present.is_present(p):
                        got = region.staging.read(p, p + 1)
                    elif region.file is not None and region.file.present.is_present(p):
                        got = region.file.read(p, p + 1)
                    else:
                        got = _ZERO
                    if got != r.page(p):
                        raise AssertionError(f"VMO koid {r.real.koid} page {p} differs from "
                                             f"the oracle")

    @invariant()
    def pages_in_one_place(self) -> None:
        resident = staged = swapped = 0
        for r in self.all_roots:
            src = r.real.cow.page_source
            assert isinstance(src, SwapVmoSource)
            region = src.region
            if region.closed:
                continue
            node = region.node
            with node.hier.lock:
                frames = {off for off, _ in node.page_list.pages(0, node.size)}
                st_ = set() if region.staging is None else {
                    p for s, e in region.staging.present.runs() for p in range(s, e)}
                sw = set() if region.file is None else {
                    p for s, e in region.file.present.runs() for p in range(s, e)}
                assert not frames & st_ and not frames & sw and not st_ & sw, \
                    f"a page of koid {r.real.koid} is in two places"
                for p in st_ | sw:
                    assert node.page_list.get(p) == 0, f"page {p} is out but has a slot"
                    where = region.staging if p in st_ else region.file
                    assert where is not None
                    assert where.read(p, p + 1) == r.page(p), f"page {p} out with other bytes"
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


def _mappings_available() -> bool:
    from vmo.mmu.fault_handler import unavailable_reason

    return unavailable_reason() is None


__all__ = ["OVmo", "SwapStateMachine"]
