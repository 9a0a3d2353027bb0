"""The user pager's API semantics (``zx_pager_*``), one behaviour per test, single-threaded.

Most tests use a handler-mode pager (`Backing`) that serves pages from a bytearray and logs
every request, so that "was this page requested again?" is a question about the log. Waiting
and blocking (queue mode with a serving thread) is tests/test_pager_threads.py; bad arguments
are tests/test_pager_bad_input.py. `vmo.debug.validate` runs after every step (`Backing.check`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import vmo
from vmo import (
    PAGE_SIZE,
    WRITEBACK_BEGIN_ZERO_RANGE,
    ChildOptions,
    DirtyRange,
    DirtyRangeOptions,
    Kernel,
    PageRequest,
    PageRequestCommand,
    PagerOp,
    PagerVmoOptions,
    PagerVmoStats,
    Status,
    VmoInfoFlags,
    VmoOp,
    ZxError,
)
from vmo.debug import validate
from vmo.pager.user_pager import FAIL_STATUSES

P = PAGE_SIZE
READ, DIRTY, COMPLETE = PageRequestCommand.READ, PageRequestCommand.DIRTY, PageRequestCommand.COMPLETE
ZERO = DirtyRangeOptions.IS_ZERO
NOT_ZERO = DirtyRangeOptions(0)
TRAP = PagerVmoOptions.TRAP_DIRTY
RESIZABLE = PagerVmoOptions.RESIZABLE

pytestmark = pytest.mark.timeout(30)


def page_bytes(i: int, tag: str = "page") -> bytes:
    """Page ``i`` of the pager's store: its number written all over it (offsets show)."""
    unit = f"{tag}{i:06d}|".encode()
    return (unit * (P // len(unit) + 1))[:P]


class Backing:
    """A handler-mode pager serving VMO pages from ``self.store``, logging every request.

    ``on_read`` / ``on_dirty`` replace the default answers (supply / acknowledge); they get the
    request and return True if they handled it.
    """

    def __init__(self, k: Kernel, pages: int = 16) -> None:
        self.k = k
        self.store = bytearray(b"".join(page_bytes(i) for i in range(pages)))
        self.log: list[tuple[PageRequestCommand, int, int]] = []
        self.on_read: Callable[[PageRequest], bool] | None = None
        self.on_dirty: Callable[[PageRequest], bool] | None = None
        self.pager = k.pager_create(self.handle)

    def handle(self, req: PageRequest) -> None:
        self.log.append((req.command, req.offset // P, req.length // P))
        if req.command == READ:
            if self.on_read is None or not self.on_read(req):
                self.supply(req.vmo, req.offset, req.length)
        elif req.command == DIRTY and (self.on_dirty is None or not self.on_dirty(req)):
            self.pager.op_range(PagerOp.DIRTY, req.vmo, req.offset, req.length)

    def supply(self, v: vmo.Vmo, offset: int, length: int, data: bytes | None = None) -> None:
        aux = self.k.vmo_create(length)
        aux.write(self.store[offset:offset + length] if data is None else data)
        self.pager.supply_pages(v, offset, length, aux, 0)
        assert aux.read(length) == bytes(length), "supplied pages must leave aux"
        aux.close()

    def reads(self) -> list[tuple[int, int]]:
        return [(o, n) for c, o, n in self.log if c == READ]

    def dirties(self) -> list[tuple[int, int]]:
        return [(o, n) for c, o, n in self.log if c == DIRTY]

    def check(self) -> None:
        validate(self.k)

    def dirty(self, v: vmo.Vmo) -> list[DirtyRange]:
        return self.pager.query_dirty_ranges(v, 0, v.get_size())

    def writeback(self, v: vmo.Vmo) -> list[DirtyRange]:
        """Write every dirty range back into the store (BEGIN, copy, END), as a pager does."""
        ranges = self.dirty(v)
        for r in ranges:
            zero = bool(r.options & ZERO)
            self.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, r.offset, r.length,
                                WRITEBACK_BEGIN_ZERO_RANGE if zero else 0)
            data = bytes(r.length) if zero else v.read(r.length, r.offset)
            if len(self.store) < r.offset + r.length:
                self.store.extend(bytes(r.offset + r.length - len(self.store)))
            self.store[r.offset:r.offset + r.length] = data
            self.pager.op_range(PagerOp.WRITEBACK_END, v, r.offset, r.length)
            self.check()
        return ranges


@pytest.fixture
def k() -> Iterator[Kernel]:
    with Kernel(memory=256 * P, page_request_timeout=5.0) as kern:
        yield kern
        validate(kern)


@pytest.fixture
def b(k: Kernel) -> Backing:
    return Backing(k)


def pages_of(k: Kernel, v: vmo.Vmo) -> int:
    return v.get_info().populated_bytes // P


# ---------------------------------------------------------------------------- creation


def test_create_vmo_flags_and_first_read(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    info = v.get_info()
    assert info.flags & VmoInfoFlags.PAGER_BACKED
    assert not info.flags & VmoInfoFlags.RESIZABLE
    assert info.committed_bytes == 0 and b.log == []
    assert b.pager.create_vmo(P, RESIZABLE).get_info().flags & VmoInfoFlags.RESIZABLE
    assert b.pager.create_vmo(5).get_size() == P  # rounded up like any VMO
    assert b.pager.create_vmo(0).get_size() == 0
    b.check()
    # A read asks for exactly the absent run it covers, in one request.
    assert v.read(2 * P, P) == page_bytes(1) + page_bytes(2)
    assert b.log == [(READ, 1, 2)]
    assert v.get_info().committed_bytes == 2 * P
    b.check()
    # A read over present and absent pages asks for each absent run (one at a time: the
    # read retries from the top after each).
    assert v.read(4 * P) == b"".join(page_bytes(i) for i in range(4))
    assert b.reads() == [(1, 2), (0, 1), (3, 1)]
    # Present pages are not asked for again.
    v.read(4 * P)
    assert len(b.log) == 3
    b.check()


def test_request_fields(b: Backing) -> None:
    seen: list[PageRequest] = []

    def record(req: PageRequest) -> bool:
        seen.append(req)
        return False

    b.on_read = record
    v = b.pager.create_vmo(8 * P)
    v.read(10, 5 * P + 7)
    (req,) = seen
    assert req.command == READ and req.vmo is v
    assert (req.offset, req.length) == (5 * P, P)
    with pytest.raises(attrs_frozen_error()):
        req.offset = 0  # type: ignore[misc]


def attrs_frozen_error() -> type[Exception]:
    import attrs
    return attrs.exceptions.FrozenInstanceError


# ---------------------------------------------------------------------------- supply


def test_supply_moves_pages_out_of_aux(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P)
    aux = k.vmo_create(4 * P)
    aux.write(page_bytes(7, "aux") + page_bytes(8, "aux"), P)
    used = k.pmm.used_frames
    b.pager.supply_pages(v, 0, 2 * P, aux, P)
    b.check()
    # The frames moved: no new frame, aux lost them and reads zeros there.
    assert k.pmm.used_frames == used
    assert aux.read(4 * P) == bytes(4 * P)
    assert aux.get_info().committed_bytes == 0
    assert v.get_info().committed_bytes == 2 * P
    assert v.read(2 * P) == page_bytes(7, "aux") + page_bytes(8, "aux")
    assert b.log == []  # supplied without being asked: no request needed
    # aux is an ordinary VMO again afterwards.
    aux.write(b"again", P)
    assert aux.read(5, P) == b"again"
    b.check()


def test_supply_keeps_pages_already_present(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P)
    assert v.read(P, P) == page_bytes(1)  # supplied (Clean)
    v.write(b"mine", 2 * P)  # supplied, then written (Dirty)
    used = k.pmm.used_frames
    aux = k.vmo_create(4 * P)
    aux.write(b"X" * 4 * P)
    b.pager.supply_pages(v, 0, 4 * P, aux, 0)
    b.check()
    # Pages 0 and 3 were absent and take the supply; 1 and 2 keep their content and the
    # supplied frames for them are freed.
    assert v.read(P, P) == page_bytes(1)
    assert v.read(4, 2 * P) == b"mine"
    assert v.read(P, 0) == b"X" * P and v.read(P, 3 * P) == b"X" * P
    assert k.pmm.used_frames == used + 2
    assert aux.read(4 * P) == bytes(4 * P)
    assert [r.offset // P for r in b.dirty(v)] == [2]
    b.check()


def test_supply_zero_pages_from_aux(b: Backing, k: Kernel) -> None:
    """An aux range that reads zeros supplies zero pages (markers): no frame, no request."""
    v = b.pager.create_vmo(3 * P)
    aux = k.vmo_create(3 * P)
    used = k.pmm.used_frames
    b.pager.supply_pages(v, 0, 3 * P, aux, 0)
    b.check()
    assert k.pmm.used_frames == used
    assert v.read(3 * P) == bytes(3 * P)
    assert b.log == [] and b.dirty(v) == []
    # Writing to a supplied zero page makes a real page that must be written back.
    v.write(b"z", P)
    assert b.dirty(v) == [DirtyRange(P, P, NOT_ZERO)]
    b.check()


def test_supply_partial_then_rest(b: Backing) -> None:
    """A request completes when all its pages are supplied, in whatever pieces."""
    pieces: list[tuple[int, int]] = []

    def in_pieces(req: PageRequest) -> bool:
        for i in range(req.length // P - 1, -1, -1):  # backwards, page by page
            off = req.offset + i * P
            pieces.append((off // P, 1))
            b.supply(req.vmo, off, P)
        return True

    b.on_read = in_pieces
    v = b.pager.create_vmo(6 * P)
    assert v.read(4 * P, P) == b"".join(page_bytes(i) for i in range(1, 5))
    assert b.reads() == [(1, 4)]
    assert pieces == [(4, 1), (3, 1), (2, 1), (1, 1)]
    b.check()


def test_supply_past_supply_zero_offset_is_ignored(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(2 * P, RESIZABLE)
    v.set_size(4 * P)  # [2, 4) is now the kernel's zero range
    aux = k.vmo_create(2 * P)
    aux.write(b"Y" * 2 * P)
    b.pager.supply_pages(v, 2 * P, 2 * P, aux, 0)
    assert v.read(2 * P, 2 * P) == bytes(2 * P)
    assert aux.read(2 * P) == bytes(2 * P)
    assert b.reads() == []
    b.check()


def test_supply_zero_length_is_a_no_op(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(2 * P)
    aux = k.vmo_create(P)
    aux.write(b"keep")
    b.pager.supply_pages(v, P, 0, aux, 0)
    assert aux.read(4) == b"keep"
    b.check()


def test_supply_from_a_snapshot_child_aux(b: Backing, k: Kernel) -> None:
    """aux may not be a clone (seed: TakePagesLocked): ERR_BAD_STATE, nothing moves."""
    v = b.pager.create_vmo(2 * P)
    parent = k.vmo_create(2 * P)
    parent.write(b"P" * 2 * P)
    aux = parent.create_child(ChildOptions.SNAPSHOT, 0, 2 * P)
    with pytest.raises(ZxError) as e:
        b.pager.supply_pages(v, 0, 2 * P, aux, 0)
    assert e.value.status == Status.ERR_BAD_STATE
    b.check()
    assert parent.read(2 * P) == aux.read(2 * P) == b"P" * 2 * P
    assert b.reads() == []


# ---------------------------------------------------------------------------- FAIL


@pytest.mark.parametrize("status", sorted(FAIL_STATUSES))
def test_fail_with_each_allowed_status(b: Backing, status: Status) -> None:
    def fail(req: PageRequest) -> bool:
        b.pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length, status)
        return True

    b.on_read = fail
    v = b.pager.create_vmo(2 * P)
    with pytest.raises(ZxError) as e:
        v.read(1, P)
    assert e.value.status == status
    b.check()
    # Nothing was supplied; the next access asks again (and may succeed).
    b.on_read = None
    assert v.read(P, P) == page_bytes(1)
    assert b.reads() == [(1, 1), (1, 1)]
    b.check()


def test_fail_a_write_request(b: Backing) -> None:
    def fail(req: PageRequest) -> bool:
        b.pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length, Status.ERR_NO_SPACE)
        return True

    b.on_read = fail
    v = b.pager.create_vmo(2 * P)
    with pytest.raises(ZxError) as e:
        v.write(b"w", P)
    assert e.value.status == Status.ERR_NO_SPACE
    assert b.dirty(v) == []
    b.check()


@pytest.mark.parametrize("status", sorted(set(Status) - FAIL_STATUSES) + [1, -9999, 5])
def test_fail_with_other_statuses_is_invalid_args(b: Backing, status: int) -> None:
    v = b.pager.create_vmo(2 * P)
    with pytest.raises(ZxError) as e:
        b.pager.op_range(PagerOp.FAIL, v, 0, P, status)
    assert e.value.status == Status.ERR_INVALID_ARGS
    b.check()


def test_fail_with_nothing_outstanding_is_ok(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    v.read(P)
    b.pager.op_range(PagerOp.FAIL, v, 0, 2 * P, Status.ERR_IO)
    assert v.read(P) == page_bytes(0)  # present pages are unaffected
    b.check()


def test_fail_default_data_is_err_io(b: Backing) -> None:
    def fail(req: PageRequest) -> bool:
        b.pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length)
        return True

    b.on_read = fail
    v = b.pager.create_vmo(P)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_IO


# ---------------------------------------------------------------------------- DIRTY / TRAP_DIRTY


def test_write_without_trap_dirty_sends_no_dirty_request(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    v.write(b"hello", P + 3)
    assert b.log == [(READ, 1, 1)]
    assert b.dirty(v) == [DirtyRange(P, P, NOT_ZERO)]
    assert v.read(P, P) == page_bytes(1)[:3] + b"hello" + page_bytes(1)[8:]
    b.check()
    with pytest.raises(ZxError) as e:
        b.pager.op_range(PagerOp.DIRTY, v, 0, P)
    assert e.value.status == Status.ERR_NOT_SUPPORTED
    b.check()


def test_trap_dirty_asks_before_the_first_write(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P, TRAP)
    v.read(4 * P)
    assert b.dirty(v) == []
    v.write(b"ab", 2 * P)
    assert b.dirties() == [(2, 1)]
    assert b.dirty(v) == [DirtyRange(2 * P, P, NOT_ZERO)]
    b.check()
    # Dirty pages are written freely.
    v.write(b"cd", 2 * P + 2)
    assert b.dirties() == [(2, 1)]
    # A write over several Clean pages asks for the whole run at once.
    v.write(b"x" * (P + 2), P - 1)  # touches pages 0, 1 and 2 (2 already Dirty)
    assert b.dirties()[1:] == [(0, 2)]
    assert v.read(4, 2 * P) == b"xabc"[:1] + b"bcd"
    assert [(r.offset // P, r.length // P) for r in b.dirty(v)] == [(0, 3)]
    b.check()


def test_trap_dirty_absent_page_reads_then_dirties(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P, TRAP)
    v.write(b"new", 3 * P)
    assert b.log == [(READ, 3, 1), (DIRTY, 3, 1)]
    assert v.read(4, 3 * P) == b"new" + page_bytes(3)[3:4]
    b.check()


def test_trap_dirty_refused(b: Backing) -> None:
    def refuse(req: PageRequest) -> bool:
        b.pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length, Status.ERR_NO_SPACE)
        return True

    b.on_dirty = refuse
    v = b.pager.create_vmo(2 * P, TRAP)
    with pytest.raises(ZxError) as e:
        v.write(b"nope", 0)
    assert e.value.status == Status.ERR_NO_SPACE
    assert v.read(P) == page_bytes(0)  # unchanged, still Clean
    assert b.dirty(v) == []
    b.check()


def test_dirty_ack_without_a_request(b: Backing) -> None:
    """DIRTY may be sent ahead of writes: present pages turn Dirty, absent ones stay absent."""
    v = b.pager.create_vmo(4 * P, TRAP)
    v.read(P, P)
    b.pager.op_range(PagerOp.DIRTY, v, 0, 4 * P)
    b.check()
    assert b.dirty(v) == [DirtyRange(P, P, NOT_ZERO)]
    v.write(b"free", P)  # already Dirty: no request
    assert b.dirties() == []
    b.check()


def test_dirty_ack_of_supplied_zero_pages(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(2 * P, TRAP)
    b.pager.supply_pages(v, 0, 2 * P, k.vmo_create(2 * P), 0)  # zero markers
    b.pager.op_range(PagerOp.DIRTY, v, 0, P)
    b.check()
    assert b.dirty(v) == [DirtyRange(0, P, NOT_ZERO)]
    assert v.read(2 * P) == bytes(2 * P)
    b.check()


def test_trap_dirty_zero_range_after_resize(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, TRAP | RESIZABLE)
    v.set_size(4 * P)
    assert v.read(2 * P, 2 * P) == bytes(2 * P)
    assert b.log == []  # the kernel supplies zeros there
    v.write(b"tail", 3 * P)
    assert b.dirties() == [(3, 1)]
    assert b.dirty(v) == [DirtyRange(2 * P, P, ZERO), DirtyRange(3 * P, P, NOT_ZERO)]
    b.check()


# ---------------------------------------------------------------------------- writeback


def test_writeback_begin_end(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    v.write(b"one", P)
    v.write(b"two", 2 * P)
    assert b.dirty(v) == [DirtyRange(P, 2 * P, NOT_ZERO)]
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, P, 2 * P)
    b.check()
    # AwaitingClean is still reported: it is not Clean yet.
    assert b.dirty(v) == [DirtyRange(P, 2 * P, NOT_ZERO)]
    b.pager.op_range(PagerOp.WRITEBACK_END, v, P, 2 * P)
    b.check()
    assert b.dirty(v) == []
    assert v.read(3, P) == b"one" and v.read(3, 2 * P) == b"two"


def test_write_during_writeback_stays_dirty(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    v.write(b"one", P)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 0, 4 * P)
    v.write(b"ONE", P)  # after the pager copied the page out: must not be lost
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 0, 4 * P)
    b.check()
    assert b.dirty(v) == [DirtyRange(P, P, NOT_ZERO)]
    b.writeback(v)
    assert b.dirty(v) == []
    assert b.store[P:P + 3] == b"ONE"


def test_write_during_writeback_trap_dirty(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, TRAP)
    v.write(b"a", 0)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 0, P)
    v.write(b"b", 0)  # AwaitingClean -> Dirty needs the pager's consent again
    assert b.dirties() == [(0, 1), (0, 1)]
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 0, P)
    assert b.dirty(v) == [DirtyRange(0, P, NOT_ZERO)]
    b.check()


def test_writeback_end_without_begin_changes_nothing(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    v.write(b"d", 0)
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 0, 2 * P)
    assert b.dirty(v) == [DirtyRange(0, P, NOT_ZERO)]
    b.check()


def test_writeback_of_clean_pages_is_a_no_op(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    v.read(2 * P)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 0, 2 * P)
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 0, 2 * P)
    assert b.dirty(v) == []
    b.check()


def test_zero_range_writeback_advances_supply_zero_offset(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, RESIZABLE)
    v.read(2 * P)
    v.set_size(6 * P)
    b.check()
    assert b.dirty(v) == [DirtyRange(2 * P, 4 * P, ZERO)]
    assert v.cow.supply_zero_offset == 2
    v.write(b"in the middle", 4 * P)
    assert b.dirty(v) == [DirtyRange(2 * P, 2 * P, ZERO), DirtyRange(4 * P, P, NOT_ZERO),
                          DirtyRange(5 * P, P, ZERO)]
    # Write back the first zero range only.
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 2 * P, 2 * P, WRITEBACK_BEGIN_ZERO_RANGE)
    b.check()
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 2 * P, 2 * P)
    b.check()
    # supply_zero_offset moved past the zero range (and, once looked at again, over the Dirty
    # page right after it, which is reported the same either way).
    assert v.cow.supply_zero_offset == 4
    assert b.dirty(v) == [DirtyRange(4 * P, P, NOT_ZERO), DirtyRange(5 * P, P, ZERO)]
    assert v.cow.supply_zero_offset in (4, 5)
    # The written-back zero range is the pager's now: the next access asks for it.
    b.store[2 * P:6 * P] = b"".join(page_bytes(i, "grown") for i in range(2, 6))
    assert v.read(P, 2 * P) == page_bytes(2, "grown")
    assert b.reads()[-1] == (2, 1)
    b.check()
    b.writeback(v)
    assert b.dirty(v) == [] and v.cow.supply_zero_offset == 6


def test_write_in_zero_range_during_its_writeback(b: Backing) -> None:
    v = b.pager.create_vmo(P, RESIZABLE)
    v.set_size(4 * P)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, P, 3 * P, WRITEBACK_BEGIN_ZERO_RANGE)
    v.write(b"late", 2 * P)  # cuts the AwaitingClean zero range at page 2
    b.pager.op_range(PagerOp.WRITEBACK_END, v, P, 3 * P)
    b.check()
    # Page 1 is Clean (the pager's) now; supply_zero_offset moved over it and over the
    # committed Dirty page 2; page 3 is still a zero range.
    assert v.cow.supply_zero_offset == 3
    assert b.dirty(v) == [DirtyRange(2 * P, P, NOT_ZERO), DirtyRange(3 * P, P, ZERO)]
    assert v.read(4, 2 * P) == b"late"


def test_zero_range_writeback_without_zero_flag(b: Backing) -> None:
    """BEGIN without WRITEBACK_BEGIN_ZERO_RANGE over a zero range still starts its writeback
    (this kernel does not tell the two apart); END then makes it Clean."""
    v = b.pager.create_vmo(P, RESIZABLE)
    v.set_size(2 * P)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, P, P)
    b.pager.op_range(PagerOp.WRITEBACK_END, v, P, P)
    b.check()
    assert b.dirty(v) == []


def test_query_dirty_ranges_sub_ranges(b: Backing) -> None:
    v = b.pager.create_vmo(8 * P, RESIZABLE)
    for i in (1, 2, 3, 6):
        v.write(b"d", i * P)
    v.set_size(10 * P)
    q = b.pager.query_dirty_ranges
    assert q(v, 0, 10 * P) == [DirtyRange(P, 3 * P, NOT_ZERO), DirtyRange(6 * P, P, NOT_ZERO),
                               DirtyRange(8 * P, 2 * P, ZERO)]
    assert q(v, 2 * P, P) == [DirtyRange(2 * P, P, NOT_ZERO)]
    assert q(v, 4 * P, 2 * P) == []
    assert q(v, 0, 0) == []
    assert q(v, 9 * P, P) == [DirtyRange(9 * P, P, ZERO)]
    b.check()


# ---------------------------------------------------------------------------- query_vmo_stats


def test_query_vmo_stats(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P, RESIZABLE)
    stats = b.pager.query_vmo_stats
    assert stats(v) == PagerVmoStats(modified=False)
    v.read(4 * P)  # supplying is not modifying
    assert not stats(v).modified
    v.write(b"m", P)
    assert stats(v).modified
    assert stats(v).modified  # without reset it stays
    assert stats(v, reset=True).modified
    assert not stats(v).modified
    b.writeback(v)
    assert not stats(v).modified  # writeback is not a modification
    v.op_range(VmoOp.ZERO, 0, P)
    assert stats(v, reset=True).modified
    v.write(b"", 0)
    assert not stats(v).modified
    b.check()


def test_query_vmo_stats_trap_dirty_ack(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, TRAP)
    v.read(2 * P)
    b.pager.op_range(PagerOp.DIRTY, v, 0, P)
    assert b.pager.query_vmo_stats(v, reset=True).modified
    v.write(b"x", 0)
    assert b.pager.query_vmo_stats(v).modified


# ---------------------------------------------------------------------------- detach


def test_detach_fails_later_requests_and_sends_complete(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    assert v.read(P) == page_bytes(0)
    b.pager.detach_vmo(v)
    b.check()
    assert b.log[-1] == (COMPLETE, 0, 0)
    # Every page is gone: any access that needs the pager fails.
    for call in (lambda: v.read(1), lambda: v.read(1, 3 * P), lambda: v.write(b"w", P)):
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_STATE
    assert v.get_info().committed_bytes == 0
    # The pager calls on it: supply and the dirty ops fail, queries and FAIL still answer.
    with pytest.raises(ZxError) as e:
        b.supply(v, 0, P)
    assert e.value.status == Status.ERR_BAD_STATE
    for op in (PagerOp.WRITEBACK_BEGIN, PagerOp.WRITEBACK_END):
        with pytest.raises(ZxError) as e:
            b.pager.op_range(op, v, 0, P)
        assert e.value.status == Status.ERR_BAD_STATE
    assert b.dirty(v) == []
    b.pager.op_range(PagerOp.FAIL, v, 0, P, Status.ERR_IO)
    # Detaching again is a no-op: no second COMPLETE.
    b.pager.detach_vmo(v)
    assert [c for c, _, _ in b.log].count(COMPLETE) == 1
    # The handle still works for what needs no pager.
    assert v.get_size() == 4 * P
    v.close()
    b.check()


def test_detach_from_the_handler_fails_the_waiter(b: Backing) -> None:
    def detach(req: PageRequest) -> bool:
        b.pager.detach_vmo(req.vmo)
        return True

    b.on_read = detach
    v = b.pager.create_vmo(2 * P)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_BAD_STATE
    assert b.log == [(READ, 0, 1), (COMPLETE, 0, 0)]
    b.check()


def test_detach_with_dirty_pages_drops_them(b: Backing) -> None:
    """Seed 2022 (``DetachSourceLocked``): every page goes, Dirty ones too."""
    v = b.pager.create_vmo(2 * P)
    v.write(b"lost", 0)
    b.pager.detach_vmo(v)
    b.check()
    with pytest.raises(ZxError) as e:
        v.read(4)
    assert e.value.status == Status.ERR_BAD_STATE


def test_detach_fails_children_reads(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    child.write(b"own", 0)  # the child's own page survives the detach
    b.pager.detach_vmo(v)
    assert child.read(3) == b"own"
    with pytest.raises(ZxError) as e:
        child.read(1, P)
    assert e.value.status == Status.ERR_BAD_STATE
    b.check()


def test_closing_the_vmo_sends_complete(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(P)
    v.close()
    req = pager.get_request(timeout=1)
    assert req.command == COMPLETE and req.vmo is v
    with pytest.raises(ZxError) as e:
        pager.get_request(timeout=0)
    assert e.value.status == Status.ERR_TIMED_OUT


def test_pager_close_detaches_its_vmos(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    v.read(P)
    b.pager.close()
    b.check()
    with pytest.raises(ZxError) as e:
        v.read(1, P)
    assert e.value.status == Status.ERR_BAD_STATE
    with pytest.raises(ZxError) as e:
        b.pager.create_vmo(P)
    assert e.value.status == Status.ERR_BAD_HANDLE


# ---------------------------------------------------------------------------- get_request


def test_get_request_timeout(k: Kernel) -> None:
    import time

    pager = k.pager_create()
    for timeout in (0, 0.05):
        t0 = time.monotonic()
        with pytest.raises(ZxError) as e:
            pager.get_request(timeout=timeout)
        assert e.value.status == Status.ERR_TIMED_OUT
        assert timeout <= time.monotonic() - t0 < timeout + 2


def test_get_request_in_handler_mode(b: Backing) -> None:
    with pytest.raises(ZxError) as e:
        b.pager.get_request(timeout=0)
    assert e.value.status == Status.ERR_BAD_STATE


def test_queue_mode_pages_supplied_ahead_need_no_request(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(2 * P)
    aux = k.vmo_create(2 * P)
    aux.write(b"ahead" * 10)
    pager.supply_pages(v, 0, 2 * P, aux, 0)
    assert v.read(5) == b"ahead"
    with pytest.raises(ZxError) as e:
        pager.get_request(timeout=0)
    assert e.value.status == Status.ERR_TIMED_OUT
    validate(k)


# ---------------------------------------------------------------------------- eviction


def evictable(b: Backing, v: vmo.Vmo, pages: int) -> Backing:
    v.read(pages * P)
    b.log.clear()
    return b


def requested_after_reclaim(b: Backing, v: vmo.Vmo, pages: int) -> list[int]:
    """Read every page once; return the pages that had to be requested again."""
    b.log.clear()
    for i in range(pages):
        assert v.read(P, i * P) == bytes(b.store[i * P:(i + 1) * P])
    return [o for o, _ in b.reads()]


def test_reclaim_evicts_clean_pages_by_lru(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P)
    evictable(b, v, 4)
    v.read(1)  # page 0 becomes the most recently used: LRU order is 1, 2, 3, 0
    stats = k.memory_stats()
    assert stats.pager_backed_pages == 4
    assert k.reclaim(2) == 2
    b.check()
    assert k.memory_stats().pager_backed_pages == 2
    assert v.get_info().committed_bytes == 2 * P
    assert requested_after_reclaim(b, v, 4) == [1, 2]
    assert v.cow.eviction_events == 2
    assert k.reclaim(100) == 4
    assert v.get_info().committed_bytes == 0
    b.check()


def test_reclaim_never_evicts_dirty_awaiting_clean_or_pinned(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(6 * P)
    evictable(b, v, 6)
    v.write(b"dirty", 1 * P)
    v.write(b"awaiting", 2 * P)
    b.pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 2 * P, P)
    pin = v.pin(3 * P, P)
    assert k.memory_stats().pager_backed_dirty_pages == 2
    assert k.reclaim(100) == 3  # pages 0, 4, 5
    b.check()
    assert v.read(5, P) == b"dirty" and v.read(8, 2 * P) == b"awaiting"
    b.log.clear()
    v.read(P, 3 * P)
    assert b.log == []
    # Once clean and unpinned they go too.
    b.pager.op_range(PagerOp.WRITEBACK_END, v, 2 * P, P)
    pin.unpin()
    assert k.reclaim(100) == 2  # pages 2 and 3; page 1 is still Dirty
    b.check()
    b.writeback(v)
    assert k.reclaim(100) == 1
    assert requested_after_reclaim(b, v, 6) == [0, 1, 2, 3, 4, 5]
    assert v.read(5, P) == b"dirty"  # from the pager's store, where writeback put it
    b.check()


def test_evicted_page_is_requested_again(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(2 * P)
    evictable(b, v, 2)
    b.store[P:2 * P] = page_bytes(1, "newer")  # the pager's copy changed meanwhile
    assert k.reclaim(100) == 2
    assert v.read(P, P) == page_bytes(1, "newer")
    assert b.reads() == [(1, 1)]
    b.check()


def test_dont_need_pages_are_evicted_first(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P)
    evictable(b, v, 4)
    v.op_range(VmoOp.DONT_NEED, 3 * P, P)  # the most recently used, but hinted
    assert k.reclaim(1) == 1
    assert requested_after_reclaim(b, v, 4) == [3]
    # Using a hinted page again makes it an ordinary LRU page.
    v.op_range(VmoOp.DONT_NEED, 0, P)
    v.read(1)
    assert k.reclaim(1) == 1
    assert requested_after_reclaim(b, v, 4) == [1]
    b.check()


def test_always_need_pages_are_skipped(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P)
    evictable(b, v, 4)
    v.op_range(VmoOp.ALWAYS_NEED, 0, 2 * P)
    assert k.reclaim(100) == 2
    assert requested_after_reclaim(b, v, 4) == [2, 3]
    b.check()


def test_reclaim_then_discardable(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(2 * P)
    evictable(b, v, 2)
    d = k.vmo_create(3 * P, vmo.VmoOptions.DISCARDABLE)
    d.op_range(VmoOp.LOCK, 0, 3 * P)
    d.write(b"d" * 3 * P)
    d.op_range(VmoOp.UNLOCK, 0, 3 * P)
    # Pager pages go first; the discardable VMO only when they are not enough.
    assert k.reclaim(1) == 1
    state = d.op_range(VmoOp.LOCK, 0, 3 * P)
    assert state is not None and state.discarded_size == 0
    d.op_range(VmoOp.UNLOCK, 0, 3 * P)
    assert k.reclaim(2) == 1 + 3
    state = d.op_range(VmoOp.LOCK, 0, 3 * P)
    assert state is not None and state.discarded_size == 3 * P
    b.check()


# ---------------------------------------------------------------------------- children


def test_at_least_on_write_child_sees_parent_writes(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
    info = child.get_info()
    assert info.flags & VmoInfoFlags.IS_COW_CLONE and info.parent_koid == v.koid
    assert b.log == []
    # The child's read of an absent page asks the root's pager.
    assert child.read(P, P) == page_bytes(1)
    assert b.reads() == [(1, 1)]
    b.check()
    # The parent's later writes show through where the child has not written.
    v.write(b"parent later", P)
    assert child.read(12, P) == b"parent later"
    v.write(b"parent later", 2 * P)
    assert child.read(12, 2 * P) == b"parent later"
    # The child's writes stay its own.
    child.write(b"child own", 3 * P)
    assert v.read(9, 3 * P) == page_bytes(3)[:9]
    assert child.read(9, 3 * P) == b"child own"
    v.write(b"parent again", 3 * P)
    assert child.read(9, 3 * P) == b"child own"
    # Only the root's pages are dirty-tracked.
    assert b.dirty(v) == [DirtyRange(P, 3 * P, NOT_ZERO)]
    b.check()


def test_at_least_on_write_child_of_child_hangs_at_the_right_ancestor(b: Backing) -> None:
    v = b.pager.create_vmo(8 * P)
    a = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 8 * P)
    a.write(b"a-page", 2 * P)
    # A window where `a` has a page: the clone hangs below `a` and sees its page.
    c1 = a.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 2 * P, 2 * P)
    assert c1.cow.parent is a.cow
    assert c1.read(6) == b"a-page"
    # A window where `a` has nothing: the clone hangs at the pager-backed root directly.
    c2 = a.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 4 * P, 2 * P)
    assert c2.cow.parent is v.cow
    assert c2.cow.parent_offset == 4
    assert c2.read(P) == page_bytes(4)
    v.write(b"root later", 5 * P)
    assert c2.read(10, P) == b"root later"
    assert c2.get_info().parent_koid == a.koid
    b.check()
    # Closing the middle VMO leaves its children working.
    a.close()
    b.check()
    assert c1.read(6) == b"a-page"
    assert c2.read(10, P) == b"root later"
    c1.close()
    c2.close()
    b.check()


def test_child_past_parent_end_reads_zeros_without_requests(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, P, 4 * P)
    assert child.read(P) == page_bytes(1)
    assert child.read(3 * P, P) == bytes(3 * P)
    assert b.reads() == [(1, 1)]
    b.check()


def test_snapshot_of_pager_backed_is_not_supported(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    sl = v.create_child(ChildOptions.SLICE, 0, P)
    for target in (v, child, sl):
        with pytest.raises(ZxError) as e:
            target.create_child(ChildOptions.SNAPSHOT, 0, P)
        assert e.value.status == Status.ERR_NOT_SUPPORTED
    b.check()


def test_slice_of_pager_backed(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P)
    sl = v.create_child(ChildOptions.SLICE, 2 * P, 2 * P)
    assert sl.read(P) == page_bytes(2)
    sl.write(b"via slice", P)
    assert v.read(9, 3 * P) == b"via slice"
    assert b.dirty(v) == [DirtyRange(3 * P, P, NOT_ZERO)]
    with pytest.raises(ZxError) as e:
        b.pager.query_dirty_ranges(sl, 0, P)  # the pager knows only its own VMOs
    assert e.value.status == Status.ERR_INVALID_ARGS
    b.check()


def test_resizable_pager_vmo_cannot_be_sliced(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, RESIZABLE)
    with pytest.raises(ZxError) as e:
        v.create_child(ChildOptions.SLICE, 0, P)
    assert e.value.status == Status.ERR_NOT_SUPPORTED


# ---------------------------------------------------------------------------- resize


def test_resize_not_resizable(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P)
    with pytest.raises(ZxError) as e:
        v.set_size(4 * P)
    assert e.value.status == Status.ERR_UNAVAILABLE


def test_resize_down_and_up(b: Backing, k: Kernel) -> None:
    v = b.pager.create_vmo(4 * P, RESIZABLE)
    v.read(4 * P)
    v.write(b"dirty", 3 * P)
    used = k.pmm.used_frames
    v.set_size(2 * P)
    b.check()
    assert k.pmm.used_frames == used - 2
    assert b.dirty(v) == []
    with pytest.raises(ZxError) as e:
        v.read(1, 2 * P)
    assert e.value.status == Status.ERR_OUT_OF_RANGE
    b.log.clear()
    v.set_size(4 * P)
    b.check()
    # What was cut is gone for good: the kernel zero-fills, the pager is not asked.
    assert v.read(2 * P, 2 * P) == bytes(2 * P)
    assert b.log == []
    assert b.dirty(v) == [DirtyRange(2 * P, 2 * P, ZERO)]
    assert v.read(P) == page_bytes(0)
    b.check()


def test_resize_to_zero_and_back(b: Backing) -> None:
    v = b.pager.create_vmo(2 * P, RESIZABLE)
    v.read(2 * P)
    v.set_size(0)
    assert b.dirty(v) == [] and v.get_size() == 0
    v.set_size(P)
    assert v.read(P) == bytes(P)
    assert b.dirty(v) == [DirtyRange(0, P, ZERO)]
    b.writeback(v)
    assert b.dirty(v) == []
    # The zero range was written back: the page is the pager's now.
    b.log.clear()
    k = b.k
    assert k.reclaim(100) == 0  # nothing committed there to evict
    assert v.read(P) == bytes(b.store[:P])
    b.check()


def test_resize_cuts_an_outstanding_request(b: Backing) -> None:
    """A request for pages the VMO no longer has is woken; the retry is out of range."""
    def shrink(req: PageRequest) -> bool:
        req.vmo.set_size(P)
        return True

    b.on_read = shrink
    v = b.pager.create_vmo(4 * P, RESIZABLE)
    with pytest.raises(ZxError) as e:
        v.read(1, 3 * P)
    assert e.value.status == Status.ERR_OUT_OF_RANGE
    b.check()


def test_resize_children_stop_seeing_cut_pages(b: Backing) -> None:
    v = b.pager.create_vmo(4 * P, RESIZABLE)
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
    assert child.read(P, 3 * P) == page_bytes(3)
    v.set_size(2 * P)
    v.set_size(4 * P)
    assert child.read(P, 3 * P) == bytes(P)
    assert child.read(P, P) == page_bytes(1)
    b.check()


# ---------------------------------------------------------------------------- handler errors


def test_handler_that_raises_fails_the_access_with_err_io(k: Kernel) -> None:
    def broken(req: PageRequest) -> None:
        raise RuntimeError("disk on fire")

    pager = k.pager_create(broken)
    v = pager.create_vmo(P)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_IO
    assert "disk on fire" in str(e.value)
    assert pager.handler_errors == 1
    validate(k)


def test_handler_that_does_nothing_times_out(k: Kernel) -> None:
    k.page_request_timeout = 0.05
    pager = k.pager_create(lambda req: None)
    v = pager.create_vmo(P)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_TIMED_OUT
    validate(k)


def test_access_after_a_timed_out_request_asks_again(k: Kernel) -> None:
    k.page_request_timeout = 0.1
    calls: list[PageRequest] = []

    def flaky(req: PageRequest) -> None:
        calls.append(req)
        if len(calls) == 1:
            return  # a transient failure to answer: the waiter times out
        aux = k.vmo_create(req.length)
        aux.write(b"second try")
        pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)

    pager = k.pager_create(flaky)
    v = pager.create_vmo(P)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_TIMED_OUT
    assert v.read(10) == b"second try"
    assert len(calls) == 2
    validate(k)


def test_handler_must_be_callable(k: Kernel) -> None:
    with pytest.raises(ZxError) as e:
        k.pager_create(handler=42)  # type: ignore[arg-type]
    assert e.value.status == Status.ERR_INVALID_ARGS


def test_pager_is_a_context_manager(k: Kernel) -> None:
    with k.pager_create() as pager:
        v = pager.create_vmo(P)
    assert "closed" in repr(pager)
    pager.close()  # idempotent
    req = None
    with pytest.raises(ZxError):
        req = pager.get_request(timeout=0)
    assert req is None
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_BAD_STATE


# ---------------------------------------------------------------------------- the demo step


def test_demo_pager_step(capsys: pytest.CaptureFixture[str]) -> None:
    """`vmo demo` narrates a pager-backed VMO: supplied, dirtied, written back, evicted."""
    from vmo import cli

    names = [s.name for s in cli.DEMO_STEPS]
    assert "pager" in names and names[-1] == "cleanup"
    assert cli.run_demo(cli.make_output(plain=True, force_rich=False)) == 0
    out = capsys.readouterr().out
    step = out[out.index("A user pager: supply, dirty, write back, evict"):]
    for phrase in ("[('READ', 2, 1)]", ") clean", "('DIRTY', 2, 1)", ") dirty",
                   "DirtyRange(offset=8192, length=4096", "b'BLOCK 2'",
                   "k.reclaim(target_pages=10)", "('COMPLETE', 0, 0)", "ERR_BAD_STATE",
                   "[ok] vmo.debug.validate(k)"):
        assert phrase in step, phrase
