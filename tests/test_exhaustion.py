"""Running out of physical memory: every allocating call fails cleanly with ERR_NO_MEMORY.

A tiny arena (``Kernel(memory=16 * PAGE_SIZE)``: 15 usable frames, frame 0 is the zero page) is
filled, then each operation that needs a frame (write, COMMIT, a copy-on-write fork after a
snapshot, ZERO of part of a page, pin, writes through new children) must raise
``ZxError(ERR_NO_MEMORY)``, leave `vmo.debug.validate` passing and leave every byte that was
written readable. Freeing memory (close, DECOMMIT, ZERO, shrinking, dedup, discarding) must make
allocation work again. A hypothesis state machine then runs random operations on a tiny arena
against a naive content model.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from vmo import (
    PAGE_SIZE,
    ChildOptions,
    Kernel,
    Status,
    VmoOp,
    VmoOptions,
    ZxError,
)
from vmo.debug import validate

P = PAGE_SIZE
C = ChildOptions
FRAMES = 16  # arena pages; one is the zero page


def no_memory(k: Kernel, fn, *readers) -> None:
    """``fn()`` fails with ERR_NO_MEMORY; validate passes; the given VMOs read as before."""
    before = [(v, v.read(v.get_size())) for v in readers]
    with pytest.raises(ZxError) as e:
        fn()
    assert e.value.status == Status.ERR_NO_MEMORY, e.value
    validate(k)
    for v, data in before:
        assert v.read(v.get_size()) == data, v


def free(k: Kernel) -> int:
    return k.memory_stats().free_pages


def fill(k: Kernel, leave: int = 0):
    """A VMO holding every free frame but ``leave``; returns it."""
    n = free(k) - leave
    v = k.vmo_create(max(n, 1) * P)
    if n:
        v.write(b"\xf1" * (n * P))
    assert free(k) == leave
    return v


@pytest.fixture
def k():
    kernel = Kernel(memory=FRAMES * P)
    yield kernel
    kernel.close()


def test_arena_geometry(k):
    st_ = k.memory_stats()
    assert st_.total_pages == FRAMES
    assert st_.free_pages == FRAMES - 1
    assert st_.vmo_pages == 0


# ---------------------------------------------------------------------------- write


def test_write_fills_the_arena_then_fails(k):
    v = k.vmo_create(32 * P)
    data = bytes(range(256)) * (15 * P // 256)
    v.write(data)
    assert free(k) == 0
    no_memory(k, lambda: v.write(b"x", 15 * P), v)
    # Spanning committed and uncommitted pages: all or nothing, the committed part untouched.
    no_memory(k, lambda: v.write(b"y" * (2 * P), 14 * P), v)
    assert v.read(P, 14 * P) == data[14 * P:]
    # Writing over committed pages needs no memory.
    v.write(b"overwrite", 3)
    assert v.read(12) == data[:3] + b"overwrite"
    validate(k)


def test_write_many_pages_is_all_or_nothing(k):
    v = k.vmo_create(64 * P)
    v.write(b"a" * (10 * P))
    used = k.pmm.used_frames
    no_memory(k, lambda: v.write(b"b" * (10 * P), 20 * P), v)
    assert k.pmm.used_frames == used
    assert v.get_info().committed_bytes == 10 * P
    v.write(b"c" * (5 * P), 20 * P)
    assert free(k) == 0


def test_smallest_arena():
    with Kernel(memory=2 * P) as k:
        v = k.vmo_create(2 * P)
        v.write(b"one")
        no_memory(k, lambda: v.write(b"two", P), v)
        v.op_range(VmoOp.DECOMMIT, 0, P)
        v.write(b"two", P)
        assert v.read(3, P) == b"two"
        validate(k)


# ---------------------------------------------------------------------------- COMMIT


def test_commit_root(k):
    v = k.vmo_create(32 * P)
    v.write(b"keep", 0)
    filler = fill(k, leave=3)
    no_memory(k, lambda: v.op_range(VmoOp.COMMIT, 0, 8 * P), v)
    assert v.read(4) == b"keep"
    # COMMIT counts the pages it needs before it changes anything (seed: CommitRangeLocked):
    # nothing was committed, the page written before is still the only one.
    assert v.get_info().committed_bytes == P
    filler.close()
    v.op_range(VmoOp.COMMIT, 0, 8 * P)
    assert v.get_info().committed_bytes == 8 * P
    assert v.read(4) == b"keep"
    validate(k)


def test_commit_child(k):
    root = k.vmo_create(4 * P)
    root.write(b"R" * (4 * P))
    child = root.create_child(C.SNAPSHOT, 0, 4 * P)
    filler = fill(k, leave=2)
    no_memory(k, lambda: child.op_range(VmoOp.COMMIT, 0, 4 * P), root, child)
    assert child.get_info().committed_bytes == 0  # all or nothing, as for a root
    assert free(k) == 2
    filler.op_range(VmoOp.DECOMMIT, 0, filler.get_size())
    child.op_range(VmoOp.COMMIT, 0, 4 * P)
    assert child.get_info().committed_bytes == 4 * P
    assert child.read(4 * P) == root.read(4 * P) == b"R" * (4 * P)
    validate(k)


# ---------------------------------------------------------------------------- copy-on-write


def test_snapshot_then_write_forks_fail(k):
    root = k.vmo_create(4 * P)
    root.write(b"A" * (4 * P))
    filler = fill(k)
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)  # a snapshot needs no frames
    assert snap.read(4 * P) == b"A" * (4 * P)
    no_memory(k, lambda: snap.write(b"s", P), root, snap)
    # The parent's pages are shared now: writing them needs a copy too.
    no_memory(k, lambda: root.write(b"r", P), root, snap)
    no_memory(k, lambda: snap.write(b"s" * (3 * P)), root, snap)
    filler.close()
    snap.write(b"s", P)
    root.write(b"r", 2 * P)
    assert snap.read(3, P - 1) == b"AsA"
    assert root.read(3, P - 1) == b"AAA"
    assert root.read(2, 2 * P) == b"rA"
    assert snap.read(2, 2 * P) == b"AA"
    validate(k)


def test_fork_through_a_deep_chain(k):
    root = k.vmo_create(4 * P)
    root.write(b"0" * (4 * P))
    chain = [root]
    for i in range(1, 5):
        child = chain[-1].create_child(C.SNAPSHOT, 0, 4 * P)
        child.write(str(i).encode(), i * 10)
        chain.append(child)
    for leave in range(0, 3):
        filler = fill(k, leave=leave)
        no_memory(k, lambda: chain[-1].write(b"leaf", P), *chain)
        no_memory(k, lambda: chain[2].write(b"mid", 2 * P), *chain)
        filler.close()
    chain[-1].write(b"leaf", P)
    chain[2].write(b"mid", 2 * P)
    assert chain[-1].read(4, P) == b"leaf"
    assert chain[3].read(4, P) == b"0000"
    assert chain[2].read(3, 2 * P) == b"mid"
    assert chain[1].read(3, 2 * P) == b"000"
    assert chain[4].read(3, 2 * P) == b"000"
    validate(k)


def test_close_of_a_sibling_frees_and_migrates(k):
    root = k.vmo_create(4 * P)
    root.write(b"Z" * (4 * P))
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    snap.write(b"s" * P)  # one forked page
    filler = fill(k)
    no_memory(k, lambda: root.write(b"r", 2 * P), root, snap)
    snap.close()  # merging needs no memory and frees the forked page
    validate(k)
    assert free(k) == 1
    root.write(b"r" * (4 * P))  # the pages are root's alone now: no copies
    assert root.read(4 * P) == b"r" * (4 * P)
    filler.close()
    validate(k)


# ---------------------------------------------------------------------------- ZERO


def test_zero_partial_page_of_child(k):
    root = k.vmo_create(4 * P)
    root.write(b"Q" * (4 * P))
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    filler = fill(k)
    no_memory(k, lambda: snap.op_range(VmoOp.ZERO, 10, 100), root, snap)
    no_memory(k, lambda: snap.op_range(VmoOp.ZERO, P - 5, 10), root, snap)
    # Whole pages need no memory: the child stops seeing them.
    snap.op_range(VmoOp.ZERO, P, 2 * P)
    assert snap.read(2 * P, P) == bytes(2 * P)
    assert root.read(2 * P, P) == b"Q" * (2 * P)
    validate(k)
    filler.close()
    snap.op_range(VmoOp.ZERO, 10, 100)
    assert snap.read(120) == b"Q" * 10 + bytes(100) + b"Q" * 10
    assert root.read(120) == b"Q" * 120
    validate(k)


def test_zero_whole_pages_of_root_frees(k):
    v = k.vmo_create(4 * P)
    v.write(b"W" * (4 * P))
    fill(k)
    v.op_range(VmoOp.ZERO, P, 2 * P)
    assert free(k) == 2
    assert v.read(4 * P) == b"W" * P + bytes(2 * P) + b"W" * P
    validate(k)


def test_zero_head_and_tail_is_all_or_nothing(k):
    root = k.vmo_create(8 * P)
    root.write(b"\x11" * (8 * P))
    snap = root.create_child(C.SNAPSHOT, 0, 8 * P)
    fill(k, leave=1)  # one frame: enough for the head, not for the tail
    no_memory(k, lambda: snap.op_range(VmoOp.ZERO, 2 * P + 10, 2 * P), root, snap)


def test_zero_whole_pages_of_grandchild_may_stop_part_way(k):
    # Documented partial effect (README, "Partial effects"): whole-page ZERO of a clone forks
    # page by page, as Zircon's does, so ERR_NO_MEMORY can leave a prefix of the range zeroed.
    # Every page reads either its old bytes or zeros, the other VMOs are untouched, and the
    # hierarchy stays valid; retrying once memory is back finishes the job.
    root = k.vmo_create(8 * P)
    root.write(b"\x11" * (8 * P))
    s1 = root.create_child(C.SNAPSHOT, 0, 8 * P)
    s2 = s1.create_child(C.SNAPSHOT, 0, 8 * P)
    filler = fill(k, leave=1)
    with pytest.raises(ZxError) as e:
        s2.op_range(VmoOp.ZERO, 0, 4 * P)
    assert e.value.status == Status.ERR_NO_MEMORY
    validate(k)
    for page in range(4):
        assert s2.read(P, page * P) in (b"\x11" * P, bytes(P))
    assert s2.read(4 * P, 4 * P) == b"\x11" * (4 * P)
    assert s1.read(8 * P) == root.read(8 * P) == b"\x11" * (8 * P)
    filler.close()
    s2.op_range(VmoOp.ZERO, 0, 4 * P)
    assert s2.read(8 * P) == bytes(4 * P) + b"\x11" * (4 * P)
    validate(k)


def test_zero_whole_pages_of_grandchild_frees_and_reads_zero(k):
    root = k.vmo_create(8 * P)
    root.write(b"\x11" * (8 * P))
    s1 = root.create_child(C.SNAPSHOT, 0, 8 * P)
    s2 = s1.create_child(C.SNAPSHOT, 0, 8 * P)
    s2.op_range(VmoOp.ZERO, 0, 4 * P)
    assert s2.read(8 * P) == bytes(4 * P) + b"\x11" * (4 * P)
    assert s1.read(8 * P) == root.read(8 * P) == b"\x11" * (8 * P)
    validate(k)


def test_zero_partial_page_that_reads_zero_needs_no_memory(k):
    v = k.vmo_create(32 * P)
    v.write(b"data")
    fill(k)
    v.op_range(VmoOp.ZERO, 20 * P + 10, 100)
    assert v.get_info().committed_bytes == P
    validate(k)


# ---------------------------------------------------------------------------- pin


def test_pin_uncommitted_fails_and_pins_nothing(k):
    v = k.vmo_create(8 * P)
    v.write(b"p" * (2 * P))
    filler = fill(k, leave=1)
    no_memory(k, lambda: v.pin(0, 4 * P), v)
    assert k.memory_stats().pinned_pages == 0
    # Nothing is pinned: the range can be decommitted.
    v.op_range(VmoOp.DECOMMIT, 2 * P, 6 * P)
    pin = v.pin(0, 2 * P)  # committed already: no memory needed
    assert k.memory_stats().pinned_pages == 2
    filler.close()
    pin2 = v.pin(2 * P, 4 * P)
    assert k.memory_stats().pinned_pages == 6
    pin.unpin()
    pin2.unpin()
    assert k.memory_stats().pinned_pages == 0
    validate(k)


def test_pin_of_shared_pages_of_a_child(k):
    root = k.vmo_create(4 * P)
    root.write(b"D" * (4 * P))
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    filler = fill(k)
    no_memory(k, lambda: snap.pin(0, P), root, snap)
    no_memory(k, lambda: snap.pin(0, 4 * P, writable=False), root, snap)
    assert k.memory_stats().pinned_pages == 0
    filler.close()
    p = snap.pin(0, P)
    assert k.memory_stats().pinned_pages == 1
    p.unpin()
    validate(k)


def test_pin_through_a_slice(k):
    root = k.vmo_create(8 * P)
    root.write(b"S" * P)
    sl = root.create_child(C.SLICE, 0, 8 * P)
    filler = fill(k)
    no_memory(k, lambda: sl.pin(P, P), root, sl)
    p = sl.pin(0, P)
    filler.close()
    p.unpin()
    validate(k)


# ---------------------------------------------------------------------------- children


def test_children_then_writes(k):
    root = k.vmo_create(8 * P)
    root.write(b"x" * (4 * P))
    sl = root.create_child(C.SLICE, 2 * P, 4 * P)
    filler = fill(k)
    # The slice shares root's pages both ways: uncommitted ones need a frame.
    no_memory(k, lambda: sl.write(b"slice", 2 * P), root, sl)
    sl.write(b"slice", 0)  # a committed page of root: no memory needed
    assert root.read(5, 2 * P) == b"slice"
    snap = root.create_child(C.SNAPSHOT, P, 6 * P)
    alow = root.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    resz = root.create_child(C.SNAPSHOT | C.RESIZABLE, 0, P)
    for child in (snap, alow, resz):
        no_memory(k, lambda c=child: c.write(b"c"), root, sl, snap, alow, resz)
    # Past the parent's committed pages a child's page is still a fresh frame.
    no_memory(k, lambda: snap.write(b"c", 5 * P), root, snap)
    resz.set_size(4 * P)  # growing needs no memory
    no_memory(k, lambda: resz.write(b"c", 3 * P), resz)
    filler.close()
    snap.write(b"c", 5 * P)
    resz.write(b"c", 3 * P)
    alow.write(b"c")
    assert root.read(1) == b"x"
    validate(k)


def test_resizable_grow_then_write(k):
    v = k.vmo_create(P, VmoOptions.RESIZABLE)
    v.write(b"first")
    filler = fill(k)
    v.set_size(64 * P)
    no_memory(k, lambda: v.write(b"far", 40 * P), v)
    v.set_size(P)
    assert v.read(5) == b"first"
    filler.close()
    v.set_size(64 * P)
    v.write(b"far", 40 * P)
    assert v.read(3, 40 * P) == b"far"
    validate(k)


# ---------------------------------------------------------------------------- freeing


@pytest.mark.parametrize("how", ["close", "decommit", "zero", "shrink", "dedup", "discard",
                                 "close_child", "kernel_reclaim"])
def test_freeing_makes_allocation_work_again(k, how):
    v = k.vmo_create(32 * P)
    v.write(b"v" * P)
    if how in ("shrink",):
        holder = k.vmo_create(16 * P, VmoOptions.RESIZABLE)
    elif how in ("discard", "kernel_reclaim"):
        holder = k.vmo_create(16 * P, VmoOptions.DISCARDABLE)
        holder.op_range(VmoOp.LOCK, 0, 16 * P)
    else:
        holder = k.vmo_create(16 * P)
    n = free(k)
    if how == "dedup":
        holder.op_range(VmoOp.COMMIT, 0, n * P)  # zero pages
    elif how == "close_child":
        holder.write(b"h" * (n * P // 2))
        child = holder.create_child(C.SNAPSHOT, 0, 16 * P)
        child.write(b"c" * (n * P // 2))
    else:
        holder.write(b"h" * (n * P))
    assert free(k) <= 1
    fill(k)
    no_memory(k, lambda: v.write(b"w", 5 * P), v)
    if how == "close":
        holder.close()
    elif how == "decommit":
        holder.op_range(VmoOp.DECOMMIT, 0, 16 * P)
    elif how == "zero":
        holder.op_range(VmoOp.ZERO, 0, 16 * P)
    elif how == "shrink":
        holder.set_size(0)
    elif how == "dedup":
        assert k.dedup_zero_pages() == n
    elif how == "discard":
        holder.op_range(VmoOp.UNLOCK, 0, 16 * P)
        assert k.reclaim_discardable(100) == n
    elif how == "kernel_reclaim":
        holder.op_range(VmoOp.UNLOCK, 0, 16 * P)
        assert k.reclaim(n) == n
    elif how == "close_child":
        child.close()
    assert free(k) >= 1
    validate(k)
    v.write(b"w", 5 * P)
    assert v.read(1) == b"v"
    assert v.read(1, 5 * P) == b"w"
    validate(k)


def test_closing_everything_returns_every_frame(k):
    vmos = []
    for i in range(5):
        v = k.vmo_create(4 * P)
        v.write(bytes([i]) * 3 * P)
        vmos.append(v)
        vmos.append(v.create_child(C.SNAPSHOT, P, 2 * P))
    with pytest.raises(ZxError):
        for v in vmos:
            v.write(b"more" * P)
    validate(k)
    for v in vmos:
        v.close()
    validate(k)
    assert k.pmm.used_frames == 0
    assert free(k) == FRAMES - 1


def test_discardable_write_when_full(k):
    d = k.vmo_create(4 * P, VmoOptions.DISCARDABLE)
    d.op_range(VmoOp.LOCK, 0, 4 * P)
    d.write(b"d" * P)
    filler = fill(k)
    no_memory(k, lambda: d.write(b"e", P), d)
    d.op_range(VmoOp.UNLOCK, 0, 4 * P)
    assert k.reclaim_discardable(10) == 1
    assert free(k) == 1
    state = d.op_range(VmoOp.LOCK, 0, 4 * P)  # re-locking a discarded VMO needs no memory
    assert state.discarded_size == 4 * P
    d.write(b"e", P)
    no_memory(k, lambda: d.write(b"f", 2 * P), d)
    filler.close()
    validate(k)


@pytest.mark.parametrize("reclaim", ["reclaim_discardable", "reclaim"])
def test_reclaim_never_takes_pinned_pages(k, reclaim):
    d = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
    d.op_range(VmoOp.LOCK, 0, 2 * P)
    d.write(b"device buffer")
    pin = d.pin(0, P)
    d.op_range(VmoOp.UNLOCK, 0, 2 * P)
    getattr(k, reclaim)(10)
    validate(k)
    assert k.memory_stats().pinned_pages == 1
    d.op_range(VmoOp.LOCK, 0, 2 * P)
    assert d.read(13) == b"device buffer"
    pin.unpin()


# ---------------------------------------------------------------------------- random sequences


class Model:
    """Expected content of one VMO: own bytes, or a window onto a base's bytes (slices)."""

    def __init__(self, v, size, *, data=None, base=None, base_off=0, resizable=False,
                 discardable=False, clone=False):
        self.v = v
        self.size = size
        self.data = data
        self.base = base
        self.base_off = base_off
        self.resizable = resizable
        self.discardable = discardable
        self.clone = clone
        self.lock_count = 0
        self.state = "never"  # discardable: never / locked / unlocked / discarded
        self.pins = 0
        self.closed = False

    def content(self) -> bytes:
        if self.base is not None:
            return bytes(self.base.data[self.base_off: self.base_off + self.size])
        return bytes(self.data[: self.size])

    def store(self) -> tuple[bytearray, int]:
        if self.base is not None:
            return self.base.data, self.base_off
        return self.data, 0

    def root_model(self) -> Model:
        return self.base if self.base is not None else self


class ExhaustionMachine(RuleBasedStateMachine):
    """Random operations on an arena of 2 to 9 usable frames; ZxErrors must be NO_MEMORY or expected ones."""

    vmos = Bundle("vmos")
    pins = Bundle("pins")

    @initialize(target=vmos, frames=st.integers(min_value=3, max_value=10))
    def setup(self, frames):
        self.k = Kernel(memory=frames * P)
        self.models: list[Model] = []
        v = self.k.vmo_create(4 * P)
        m = Model(v, 4 * P, data=bytearray(4 * P))
        d = Model(self.k.vmo_create(2 * P, VmoOptions.DISCARDABLE), 2 * P,
                  data=bytearray(2 * P), discardable=True)
        self.models += [m, d]
        return multiple(m, d)

    def teardown(self):
        if hasattr(self, "k"):
            self.k.close()

    # -- helpers ----------------------------------------------------------------------------

    def call(self, fn, allowed=()):
        """Run ``fn``; return None on success or the status of its ZxError, which must be
        NO_MEMORY or one of ``allowed``."""
        try:
            fn()
        except ZxError as e:
            assert e.status == Status.ERR_NO_MEMORY or e.status in allowed, e
            return e.status
        return None

    def live(self, m: Model) -> bool:
        return not m.closed

    # -- rules ------------------------------------------------------------------------------

    @rule(target=vmos, pages=st.integers(1, 6), kind=st.sampled_from(["plain", "resz", "disc", "disc"]))
    def create(self, pages, kind):
        opts = {"plain": VmoOptions(0), "resz": VmoOptions.RESIZABLE,
                "disc": VmoOptions.DISCARDABLE}[kind]
        v = self.k.vmo_create(pages * P, opts)
        m = Model(v, pages * P, data=bytearray(pages * P), resizable=kind == "resz",
                  discardable=kind == "disc")
        self.models.append(m)
        return m

    @rule(target=vmos, leave=st.integers(0, 2))
    def hog(self, leave):
        """Take all free frames but ``leave`` into a new VMO (pushes the arena to the edge)."""
        n = max(free(self.k) - leave, 1)
        v = self.k.vmo_create(n * P)
        m = Model(v, n * P, data=bytearray(n * P))
        self.models.append(m)
        if free(self.k) >= n:
            v.write(b"\x99" * (n * P))
            m.data[:] = b"\x99" * (n * P)
        return m

    @rule(m=vmos, first=st.integers(0, 5), skew=st.sampled_from([0, 0, 1, P // 2, P - 1]),
          pages=st.integers(0, 4), byte=st.integers(1, 255))
    def write(self, m, first, skew, pages, byte):
        if m.closed:
            return
        size = m.v.get_size()
        off = min(first * P + skew, size)
        length = min(pages * P + (skew and 7), size - off)
        base = m.root_model()
        status = self.call(lambda: m.v.write(bytes([byte]) * length, off),
                           allowed={Status.ERR_NOT_FOUND})
        if status == Status.ERR_NOT_FOUND:
            assert base.state == "discarded"
        if status is None:
            assert base.state != "discarded" or length == 0
            store, at = m.store()
            store[at + off: at + off + length] = bytes([byte]) * length

    @rule(m=vmos, first=st.integers(0, 6), pages=st.integers(0, 4),
          op=st.sampled_from([VmoOp.COMMIT, VmoOp.DECOMMIT, VmoOp.ZERO]),
          unaligned=st.integers(0, P - 1))
    def op_range(self, m, first, pages, op, unaligned):
        if m.closed:
            return
        size = m.v.get_size()
        off = min(first * P, size)
        length = min(pages * P, size - off)
        if op == VmoOp.ZERO and unaligned and length > unaligned:
            off, length = off + unaligned // 2, length - unaligned
        before = m.content()
        status = self.call(lambda: m.v.op_range(op, off, length),
                           allowed={Status.ERR_NOT_SUPPORTED, Status.ERR_BAD_STATE,
                                    Status.ERR_NOT_FOUND})
        if status == Status.ERR_NOT_FOUND:
            assert m.root_model().state == "discarded"
        if status == Status.ERR_NOT_SUPPORTED:
            assert op == VmoOp.DECOMMIT
        if status == Status.ERR_BAD_STATE:
            assert op == VmoOp.DECOMMIT and m.root_model().pins
        if op in (VmoOp.DECOMMIT, VmoOp.ZERO) and status is None:
            store, at = m.store()
            store[at + off: at + off + length] = bytes(length)
        elif op == VmoOp.ZERO and status == Status.ERR_NO_MEMORY:
            # Zircon zeroes page by page; accept bytes that are either old or zero in the range
            # (the all-or-nothing contract is tested, xfail, above), and re-sync the model.
            now = m.v.read(size)
            for i in range(size):
                if not off <= i < off + length:
                    assert now[i] == before[i], i
                else:
                    assert now[i] in (before[i], 0), i
            store, at = m.store()
            store[at: at + size] = now

    @rule(target=vmos, m=vmos, first=st.integers(0, 6), pages=st.integers(0, 6),
          kind=st.sampled_from([C.SNAPSHOT, C.SNAPSHOT_AT_LEAST_ON_WRITE, C.SLICE,
                                C.SNAPSHOT | C.RESIZABLE]))
    def child(self, m, first, pages, kind):
        if m.closed:
            return multiple()
        off, size = first * P, pages * P
        result = []

        def make():
            result.append(m.v.create_child(kind, off, size))

        status = self.call(make, allowed={Status.ERR_NOT_SUPPORTED, Status.ERR_BAD_STATE,
                                          Status.ERR_INVALID_ARGS})
        if status is not None:
            if status == Status.ERR_INVALID_ARGS:
                assert kind == C.SLICE and off + size > m.size
            if status == Status.ERR_BAD_STATE:
                assert kind != C.SLICE and m.root_model().pins
            if status == Status.ERR_NOT_SUPPORTED:
                assert m.discardable or m.base is not None or (kind == C.SLICE and m.resizable)
            return multiple()
        (v,) = result
        if kind == C.SLICE:
            base = m.root_model()
            c = Model(v, size, base=base, base_off=m.base_off + off)
        else:
            src = m.content()
            data = bytearray(src[off: off + size].ljust(size, b"\0"))
            c = Model(v, size, data=data, resizable=bool(kind & C.RESIZABLE), clone=True)
        self.models.append(c)
        return c

    @rule(m=consumes(vmos))
    def close(self, m):
        if m.closed:
            return
        m.v.close()
        m.closed = True
        if m.pins:
            m.root_model().pins -= m.pins
            m.pins = 0

    @rule(target=pins, m=vmos, first=st.integers(0, 5), pages=st.integers(1, 3))
    def pin(self, m, first, pages):
        # Discardable VMOs are not pinned here: reclaim would discard their pinned pages (a
        # known bug, test_reclaim_never_takes_pinned_pages).
        if m.closed or (first + pages) * P > m.size or m.root_model().discardable:
            return multiple()
        result = []
        status = self.call(lambda: result.append(m.v.pin(first * P, pages * P)),
                           allowed={Status.ERR_NOT_FOUND})
        if status is not None:
            return multiple()
        m.pins += 1
        m.root_model().pins += 1 if m.base is not None else 0
        return (m, result[0])

    @rule(p=consumes(pins))
    def unpin(self, p):
        m, pinned = p
        if m.closed:
            return
        pinned.unpin()
        m.pins -= 1
        if m.base is not None:
            m.root_model().pins -= 1

    @rule(m=vmos, pages=st.integers(0, 8))
    def set_size(self, m, pages):
        if m.closed:
            return
        status = self.call(lambda: m.v.set_size(pages * P),
                           allowed={Status.ERR_UNAVAILABLE, Status.ERR_BAD_STATE})
        if status == Status.ERR_UNAVAILABLE:
            assert not m.resizable
        if status == Status.ERR_BAD_STATE:
            assert m.pins
        if status is None:
            assert m.resizable
            new = pages * P
            if new < m.size:
                m.data[new:] = bytes(len(m.data) - new)
            if len(m.data) < new:
                m.data.extend(bytes(new - len(m.data)))
            m.size = new

    @rule(pick=st.integers(0, 50), op=st.sampled_from([VmoOp.LOCK, VmoOp.TRY_LOCK, VmoOp.UNLOCK]),
          then_reclaim=st.booleans())
    def lock_op(self, pick, op, then_reclaim):
        # Mostly on discardable VMOs (the others only say ERR_NOT_SUPPORTED).
        live = [m for m in self.models if not m.closed]
        disc = [m for m in live if m.discardable]
        pool = disc or live
        if not pool:
            return
        m = pool[pick % len(pool)]
        status = self.call(lambda: m.v.op_range(op, 0, m.size),
                           allowed={Status.ERR_NOT_SUPPORTED, Status.ERR_BAD_STATE,
                                    Status.ERR_UNAVAILABLE})
        if not m.discardable:
            assert status == Status.ERR_NOT_SUPPORTED
            return
        assert status != Status.ERR_NO_MEMORY  # locking never allocates
        if op == VmoOp.UNLOCK:
            if m.lock_count == 0:
                assert status == Status.ERR_BAD_STATE
                return
            assert status is None
            m.lock_count -= 1
            if m.lock_count == 0:
                m.state = "unlocked"
                if then_reclaim:
                    self._reclaim(100, False)
            return
        if m.state == "discarded":
            if op == VmoOp.TRY_LOCK:
                assert status == Status.ERR_UNAVAILABLE
                return
            m.data[:] = bytes(len(m.data))
        assert status is None
        m.lock_count += 1
        m.state = "locked"

    @rule(pick=st.integers(0, 50), byte=st.integers(1, 255), then_reclaim=st.booleans())
    def lock_write_unlock(self, pick, byte, then_reclaim):
        """A discardable VMO's life cycle in one step: LOCK, write (may run out), UNLOCK."""
        disc = [m for m in self.models if not m.closed and m.discardable]
        if not disc:
            return
        m = disc[pick % len(disc)]
        state = m.v.op_range(VmoOp.LOCK, 0, m.size)
        assert state.discarded_size == (m.size if m.state == "discarded" else 0)
        if m.state == "discarded":
            m.data[:] = bytes(m.size)
        m.lock_count += 1
        m.state = "locked"
        if self.call(lambda: m.v.write(bytes([byte]) * m.size)) is None:
            m.data[:] = bytes([byte]) * m.size
        m.v.op_range(VmoOp.UNLOCK, 0, m.size)
        m.lock_count -= 1
        if m.lock_count == 0:
            m.state = "unlocked"
            if then_reclaim:
                self._reclaim(100, False)

    @rule(target_pages=st.integers(1, 20), kernel=st.booleans())
    def reclaim(self, target_pages, kernel):
        self._reclaim(target_pages, kernel)

    def _reclaim(self, target_pages, kernel):
        if kernel:
            self.k.reclaim(target_pages)
        else:
            self.k.reclaim_discardable(target_pages)
        for m in self.models:
            if m.closed or not m.discardable or m.state != "unlocked":
                continue
            try:
                m.v.read(0)
            except ZxError as e:
                assert e.status == Status.ERR_NOT_FOUND
                m.state = "discarded"

    @rule()
    def dedup(self):
        self.k.dedup_zero_pages()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def consistent(self):
        if not hasattr(self, "k"):
            return
        validate(self.k)
        stats = self.k.memory_stats()
        assert stats.free_pages + stats.vmo_pages == stats.total_pages - 1
        for m in self.models:
            if m.closed:
                continue
            assert m.v.get_size() == m.size
            if m.root_model().state == "discarded":
                with pytest.raises(ZxError) as e:
                    m.v.read(1)
                assert e.value.status == Status.ERR_NOT_FOUND
                continue
            assert m.v.read(m.size) == m.content(), m.v


ExhaustionMachine.TestCase.settings = settings(
    max_examples=600, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestExhaustionMachine = ExhaustionMachine.TestCase
