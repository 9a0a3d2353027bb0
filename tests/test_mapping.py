"""Tests of `vmo.Mapping`: the API, coherence with the VMO across every way the VMO changes,
page sources, failures, and shutdown with faults outstanding.

Every access here goes through `Mapping.read` / `Mapping.write`, which copy with the GIL
released; a test that expects an access to block runs it on a thread and joins it with a
timeout. Every test runs under pytest-timeout so that a bug shows up as a failure, not a hang.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vmo
from vmo import (
    PAGE_SIZE,
    ChildOptions,
    Kernel,
    Perms,
    Status,
    VmoInfoFlags,
    VmoOp,
    VmoOptions,
    ZxError,
    mapping,
)
from vmo.mmu.fault_handler import (
    ABSENT,
    POISONED,
    READ_ONLY,
    WRITABLE,
    Window,
    unavailable_reason,
)
from vmo.pager import PagerOp

PS = PAGE_SIZE
RW = Perms.READ | Perms.WRITE
_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.timeout(30, method="thread"),
]


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel(memory=32 * 2**20, page_request_timeout=10.0)
    yield kernel
    try:
        mapping.validate(kernel)
        vmo.debug.validate(kernel)
    finally:
        kernel.close()


def check(k: Kernel) -> None:
    mapping.validate(k)
    vmo.debug.validate(k)


def status_of(call: Callable[[], Any]) -> Status | None:
    try:
        call()
    except ZxError as e:
        return e.status
    return None


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` on a thread; the dict gets ``result`` or ``error``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


# ---------------------------------------------------------------- the API


def test_map_whole_vmo_and_accessors(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    v.write(b"hello", PS)
    m = v.map()
    assert m.length == 4 * PS and m.perms == RW and m.address % PS == 0
    assert m.offset == 0 and m.vmo is v and not m.remote
    assert m.read(5, PS) == b"hello"
    assert m.read(0) == b""
    m.write(b"world", 2 * PS + 7)
    assert v.read(5, 2 * PS + 7) == b"world"
    assert m.read(4 * PS) == v.read(4 * PS)
    info = v.get_info()
    assert info.num_mappings == 1 and info.flags & VmoInfoFlags.VIA_MAPPING
    assert "Mapping" in repr(m)
    m.unmap()
    assert v.get_info().num_mappings == 0


def test_map_range_offset(k: Kernel) -> None:
    v = k.vmo_create(8 * PS)
    v.write(b"A" * PS + b"B" * PS, 2 * PS)
    m = v.map(2 * PS, 2 * PS)
    assert m.read(2 * PS) == b"A" * PS + b"B" * PS
    m.write(b"C", PS)
    assert v.read(1, 3 * PS) == b"C"


@pytest.mark.parametrize("call,status", [
    (lambda v: v.map(1), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(0, PS + 1), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(0, 0), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(4 * PS), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(8 * PS), Status.ERR_OUT_OF_RANGE),
    (lambda v: v.map(0, 8 * PS), Status.ERR_OUT_OF_RANGE),
    (lambda v: v.map(2 * PS, 3 * PS), Status.ERR_OUT_OF_RANGE),
    (lambda v: v.map(-PS), Status.ERR_OUT_OF_RANGE),
    (lambda v: v.map("0"), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(0, None, 8), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(0, None, "rw"), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(0, None, Perms.WRITE), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(fault_around=0), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(fault_around=10_000), Status.ERR_INVALID_ARGS),
    (lambda v: v.map(fault_around=True), Status.ERR_INVALID_ARGS),
])
def test_map_bad_arguments(k: Kernel, call: Callable[[vmo.Vmo], Any], status: Status) -> None:
    v = k.vmo_create(4 * PS)
    assert status_of(lambda: call(v)) == status
    assert v.mappings == []


def test_map_write_needs_write_rights(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    ro = v.create_child(ChildOptions.SLICE | ChildOptions.NO_WRITE, 0, 4 * PS)
    assert status_of(lambda: ro.map()) == Status.ERR_ACCESS_DENIED
    m = ro.map(perms=Perms.READ)
    v.write(b"x", 0)
    assert m.read(1) == b"x"
    assert status_of(lambda: m.protect(RW)) == Status.ERR_ACCESS_DENIED


def test_map_closed_vmo_and_kernel(k: Kernel) -> None:
    v = k.vmo_create(PS)
    v.close()
    assert status_of(lambda: v.map()) == Status.ERR_BAD_HANDLE


def test_accessor_arguments(k: Kernel) -> None:
    v = k.vmo_create(2 * PS)
    m = v.map()
    assert status_of(lambda: m.read(2 * PS + 1)) == Status.ERR_OUT_OF_RANGE
    assert status_of(lambda: m.read(1, 2 * PS)) == Status.ERR_OUT_OF_RANGE
    assert status_of(lambda: m.read(-1)) == Status.ERR_OUT_OF_RANGE
    assert status_of(lambda: m.read("1")) == Status.ERR_INVALID_ARGS
    assert status_of(lambda: m.write(b"xy", 2 * PS - 1)) == Status.ERR_OUT_OF_RANGE
    assert status_of(lambda: m.write(12)) == Status.ERR_INVALID_ARGS
    assert status_of(lambda: m.protect(99)) == Status.ERR_INVALID_ARGS
    m.write(b"")
    m.write(memoryview(b"abcd")[::2])
    assert v.read(2) == b"ac"
    m.write(bytearray(b"zz"), 10)
    assert m.read(2, 10) == b"zz"


def test_store_without_write_and_protect(k: Kernel) -> None:
    v = k.vmo_create(2 * PS)
    v.write(b"data", 0)
    m = v.map(perms=Perms.READ)
    assert status_of(lambda: m.write(b"x")) == Status.ERR_ACCESS_DENIED
    assert m.read(4) == b"data"
    m.protect(RW)
    m.write(b"DATA")
    assert v.read(4) == b"DATA"
    m.protect(Perms.READ)
    assert status_of(lambda: m.write(b"x")) == Status.ERR_ACCESS_DENIED
    # The checked-out page was recalled: the VMO has the bytes, the mapping still reads them.
    assert v.read(4) == b"DATA" and m.read(4) == b"DATA"
    v.write(b"more", 0)
    assert m.read(4) == b"more"
    m.protect(Perms(0))
    assert status_of(lambda: m.read(1)) == Status.ERR_ACCESS_DENIED
    check(k)


def test_unmap_and_context_manager(k: Kernel) -> None:
    v = k.vmo_create(2 * PS)
    with v.map() as m:
        m.write(b"kept", PS)
    assert m.unmapped
    assert v.read(4, PS) == b"kept"
    for call in (lambda: m.read(1), lambda: m.write(b"x"), lambda: m.protect(RW)):
        assert status_of(call) == Status.ERR_BAD_STATE
    m.unmap()  # idempotent: unmapping twice does nothing
    assert v.mappings == []
    mgr = mapping.manager_for(k)
    assert mgr is not None and not mgr.mappings and not mgr.writer and not mgr.readers


def test_fault_stats(k: Kernel) -> None:
    v = k.vmo_create(64 * PS)
    m = v.map(fault_around=1)
    s0 = m.fault_stats()
    assert s0.faults == 0 and s0.time_spent == 0
    m.read(1, 3 * PS)
    m.write(b"x", 3 * PS)  # a store to a read-only copy
    m.write(b"y", 5 * PS)  # a store to an absent page
    s = m.fault_stats()
    assert (s.read_faults, s.wp_faults, s.write_faults) == (1, 1, 1)
    assert s.faults == 3 and s.pages_installed == 2 and s.pages_checked_out == 2
    wait_until(lambda: m.fault_stats().time_spent > 0)
    m2 = v.map(fault_around=16)
    m2.read(1, 20 * PS)
    s2 = m2.fault_stats()
    assert s2.read_faults == 1 and s2.pages_installed == 16 and s2.pages_faulted_around == 15
    m2.read(16 * PS, 16 * PS)  # already installed: no fault
    assert m2.fault_stats().faults == 1


def test_default_fault_around_is_configurable(k: Kernel) -> None:
    mgr = mapping.manager_for(k)
    assert mgr is not None
    mgr.fault_around = 4
    v = k.vmo_create(16 * PS)
    m = v.map()
    assert m.fault_around == 4
    m.read(1, 5 * PS)
    assert m.fault_stats().pages_installed == 4


# ---------------------------------------------------------------- coherence


def test_two_mappings_see_each_others_stores(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    a, b = v.map(), v.map(fault_around=1)
    a.write(b"from a", 0)
    assert b.read(6) == b"from a"
    b.write(b"FROM B", 0)
    assert a.read(6) == b"FROM B" and v.read(6) == b"FROM B"
    for i in range(20):  # ping-pong the same page
        (a if i % 2 else b).write(bytes([i]) * 8, 100)
        assert a.read(8, 100) == b.read(8, 100) == v.read(8, 100) == bytes([i]) * 8
    assert a.fault_stats().recalls + b.fault_stats().recalls > 0
    check(k)


def test_api_write_merges_with_a_checked_out_page(k: Kernel) -> None:
    v = k.vmo_create(2 * PS)
    m = v.map()
    m.write(b"mapped", 0)  # page 0 checked out to the window
    v.write(b"api", 100)  # the kernel recalls the window copy before writing the frame
    assert v.read(6) == b"mapped" and m.read(3, 100) == b"api" and m.read(6) == b"mapped"
    m.write(b"again", 200)
    assert v.read(5, 200) == b"again"
    check(k)


def test_snapshot_and_its_mappings(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    mv = v.map()
    mv.write(b"before", 0)
    s = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
    ms = s.map()
    assert ms.read(6) == b"before"
    mv.write(b"parent", 0)  # the snapshot made the page read-only: this store forks it
    assert ms.read(6) == b"before" and s.read(6) == b"before"
    assert v.read(6) == b"parent" and mv.read(6) == b"parent"
    ms.write(b"child!", PS)
    assert mv.read(6, PS) == bytes(6) and v.read(6, PS) == bytes(6)
    assert s.read(6, PS) == b"child!"
    check(k)
    s.close()  # merges the hidden node back; mv keeps working
    assert ms.unmapped
    mv.write(b"merged", 2 * PS)
    assert v.read(6, 2 * PS) == b"merged" and mv.read(6) == b"parent"
    check(k)


def test_snapshot_of_a_snapshot_while_mapped(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    m = v.map()
    m.write(b"one", 0)
    c1 = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
    mc = c1.map()
    mc.write(b"two", 0)
    c2 = c1.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
    mc.write(b"333", 0)
    assert (m.read(3), mc.read(3), c2.read(3), c1.read(3)) == (b"one", b"333", b"two", b"333")
    check(k)


def test_slice_mapping_shares_both_ways(k: Kernel) -> None:
    v = k.vmo_create(8 * PS)
    sl = v.create_child(ChildOptions.SLICE, 2 * PS, 4 * PS)
    mv, ms = v.map(), sl.map()
    ms.write(b"slice", 0)
    assert mv.read(5, 2 * PS) == b"slice" and v.read(5, 2 * PS) == b"slice"
    mv.write(b"parent", 3 * PS)
    assert ms.read(6, PS) == b"parent" and sl.read(6, PS) == b"parent"
    v.op_range(VmoOp.DECOMMIT, 2 * PS, PS)
    assert ms.read(5) == bytes(5) and mv.read(5, 2 * PS) == bytes(5)
    check(k)


def test_decommit_and_zero(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    m = v.map()
    m.write(b"\x11" * (4 * PS))
    v.op_range(VmoOp.DECOMMIT, PS, PS)
    assert m.read(PS, PS) == bytes(PS)
    v.op_range(VmoOp.ZERO, 2 * PS + 10, 20)
    assert m.read(40, 2 * PS) == b"\x11" * 10 + bytes(20) + b"\x11" * 10
    v.op_range(VmoOp.ZERO, 0, PS)
    assert m.read(PS) == bytes(PS) and m.read(PS, 3 * PS) == b"\x11" * PS
    m.write(b"z", 0)
    assert v.read(1) == b"z"
    check(k)


def test_zero_in_a_child(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    v.write(b"\x22" * (4 * PS))
    c = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
    mc, mv = c.map(), v.map()
    assert mc.read(4) == b"\x22" * 4
    c.op_range(VmoOp.ZERO, 0, 2 * PS)
    assert mc.read(2 * PS) == bytes(2 * PS) and mv.read(4) == b"\x22" * 4
    check(k)


def test_resize_under_a_mapping(k: Kernel) -> None:
    v = k.vmo_create(4 * PS, VmoOptions.RESIZABLE)
    m = v.map()
    m.write(b"\x33" * (4 * PS))
    v.set_size(2 * PS)
    assert m.read(2 * PS) == b"\x33" * (2 * PS)
    e = pytest.raises(ZxError, m.read, 1, 3 * PS)
    assert e.value.status == Status.ERR_OUT_OF_RANGE
    assert status_of(lambda: m.write(b"x", 2 * PS)) == Status.ERR_OUT_OF_RANGE
    v.set_size(4 * PS)
    assert m.read(2 * PS, 2 * PS) == bytes(2 * PS)
    m.write(b"back", 3 * PS)
    assert v.read(4, 3 * PS) == b"back"
    check(k)


def test_discard(k: Kernel) -> None:
    v = k.vmo_create(2 * PS, VmoOptions.DISCARDABLE)
    v.op_range(VmoOp.LOCK, 0, 2 * PS)
    m = v.map()
    m.write(b"cache", 0)
    v.op_range(VmoOp.UNLOCK, 0, 2 * PS)
    assert k.reclaim_discardable(10) >= 1
    assert status_of(lambda: m.read(1)) == Status.ERR_NOT_FOUND
    assert status_of(lambda: m.write(b"x")) == Status.ERR_NOT_FOUND
    st = v.op_range(VmoOp.LOCK, 0, 2 * PS)
    assert st is not None and st.discarded_size == 2 * PS
    assert m.read(5) == bytes(5)
    m.write(b"again", 0)
    assert v.read(5) == b"again"
    check(k)


def test_dedup_and_pin(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    m = v.map()
    m.write(bytes(PS), 0)  # a committed page of zeros, checked out
    m.write(b"keep", PS)
    assert k.dedup_zero_pages() == 1
    assert m.read(4) == bytes(4) and m.read(4, PS) == b"keep"
    p = v.pin(2 * PS, PS)
    m.write(b"pinned", 2 * PS)
    assert v.read(6, 2 * PS) == b"pinned"
    p.unpin()
    check(k)


def test_unmap_keeps_stores_and_vmo_close_unmaps(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    m1, m2 = v.map(), v.map()
    m1.write(b"one", 0)
    m2.write(b"two", PS)
    m1.unmap()
    assert v.read(3) == b"one" and m2.read(3) == b"one"
    v.close()
    assert m2.unmapped
    assert status_of(lambda: m2.read(1)) == Status.ERR_BAD_STATE
    mgr = mapping.manager_for(k)
    assert mgr is not None and not mgr.mappings and not mgr.writer and not mgr.readers


def test_many_pages_and_fault_around_of_committed_pages(k: Kernel) -> None:
    v = k.vmo_create(256 * PS)
    data = bytes(range(256)) * (256 * PS // 256)
    v.write(data)
    m = v.map(fault_around=16)
    assert m.read(256 * PS) == data
    assert m.fault_stats().read_faults == 16
    m.write(b"\xff" * (256 * PS))  # write fault-around checks out 16 owned pages per fault
    assert m.fault_stats().wp_faults == 16
    assert v.read(256 * PS) == b"\xff" * (256 * PS)
    check(k)


# ---------------------------------------------------------------- pager-backed VMOs


def _supplier(k: Kernel, content: Callable[[int], bytes]) -> Callable[[vmo.PageRequest], None]:
    """A handler-mode pager serving READ requests with ``content(page)`` (acking DIRTY)."""
    def handle(req: vmo.PageRequest) -> None:
        pager = holder["pager"]
        if req.command == vmo.PageRequestCommand.READ:
            aux = k.vmo_create(req.length)
            aux.write(b"".join(content((req.offset + i) // PS) for i in range(0, req.length, PS)))
            pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
            aux.close()
        elif req.command == vmo.PageRequestCommand.DIRTY:
            pager.op_range(PagerOp.DIRTY, req.vmo, req.offset, req.length)

    holder: dict[str, Any] = {}
    handle.holder = holder  # type: ignore[attr-defined]
    return handle


def _page(i: int) -> bytes:
    return bytes([i % 251 + 1]) * PS


def test_pager_backed_mapping(k: Kernel) -> None:
    handle = _supplier(k, _page)
    pager = k.pager_create(handle)
    handle.holder["pager"] = pager  # type: ignore[attr-defined]
    v = pager.create_vmo(32 * PS)
    m = v.map(fault_around=4)
    assert m.read(PS, 5 * PS) == _page(5)
    assert m.fault_stats().page_requests >= 1
    m.write(b"dirty", 6 * PS)
    assert v.read(5, 6 * PS) == b"dirty"
    ranges = pager.query_dirty_ranges(v, 0, 32 * PS)
    assert [(r.offset, r.length) for r in ranges] == [(6 * PS, PS)]
    # Writeback: BEGIN write-protects the page again, so the next store dirties it anew.
    pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 6 * PS, PS)
    assert v.read(5, 6 * PS) == b"dirty"
    pager.op_range(PagerOp.WRITEBACK_END, v, 6 * PS, PS)
    assert pager.query_dirty_ranges(v, 0, 32 * PS) == []
    m.write(b"DIRTY", 6 * PS)
    assert [(r.offset, r.length) for r in pager.query_dirty_ranges(v, 0, 32 * PS)] == \
        [(6 * PS, PS)]
    # Eviction of clean pages: the next access asks the pager again.
    m.read(PS, 20 * PS)
    assert k.reclaim(100) > 0
    assert m.read(PS, 20 * PS) == _page(20)
    assert m.read(5, 6 * PS) == b"DIRTY"
    check(k)


def test_pager_trap_dirty(k: Kernel) -> None:
    handle = _supplier(k, _page)
    pager = k.pager_create(handle)
    handle.holder["pager"] = pager  # type: ignore[attr-defined]
    v = pager.create_vmo(8 * PS, vmo.PagerVmoOptions.TRAP_DIRTY)
    m = v.map()
    assert m.read(3, 2 * PS) == _page(2)[:3]
    m.write(b"w", 2 * PS)
    assert v.read(2, 2 * PS) == b"w" + _page(2)[:1]
    assert m.fault_stats().page_requests >= 2  # a READ, then a DIRTY
    check(k)


def test_pager_failure_reaches_the_accessor(k: Kernel) -> None:
    pager = k.pager_create()  # queue mode: the test plays the pager
    v = pager.create_vmo(4 * PS)
    m = v.map(fault_around=1)
    t, out = in_thread(lambda: m.read(4, PS))
    req = pager.get_request(timeout=5)
    assert req.command == vmo.PageRequestCommand.READ and req.offset == PS
    pager.op_range(PagerOp.FAIL, v, req.offset, req.length, Status.ERR_IO_DATA_INTEGRITY)
    t.join(5)
    assert not t.is_alive()
    assert isinstance(out.get("error"), ZxError)
    assert out["error"].status == Status.ERR_IO_DATA_INTEGRITY
    assert m.fault_stats().failures == 1
    # The next access asks again; this time the pager supplies.
    t, out = in_thread(lambda: m.read(4, PS))
    req = pager.get_request(timeout=5)
    aux = k.vmo_create(PS)
    aux.write(b"good")
    pager.supply_pages(v, req.offset, PS, aux, 0)
    t.join(5)
    assert out.get("result") == b"good", out
    check(k)


def test_pager_timeout(k: Kernel) -> None:
    k2 = Kernel(memory=4 * 2**20, page_request_timeout=0.2)
    try:
        pager = k2.pager_create()
        v = pager.create_vmo(PS)
        m = v.map()
        assert status_of(lambda: m.read(1)) == Status.ERR_TIMED_OUT
    finally:
        k2.close()


def test_file_pager_mapping(k: Kernel, tmp_path: Any) -> None:
    from vmo.pager.file_pager import FilePager

    path = tmp_path / "data.bin"
    path.write_bytes(b"".join(_page(i) for i in range(16)))
    with FilePager(k, path) as fp:
        m = fp.vmo.map()
        assert m.read(PS, 3 * PS) == _page(3)
        m.write(b"stored through a mapping", 5 * PS)
        fp.flush()
        m.unmap()
    raw = path.read_bytes()
    assert raw[5 * PS: 5 * PS + 24] == b"stored through a mapping"
    assert raw[3 * PS: 4 * PS] == _page(3)


# ---------------------------------------------------------------- failures and shutdown


def _blocked_reader(k: Kernel) -> tuple[vmo.Vmo, vmo.Mapping, threading.Thread, dict[str, Any]]:
    pager = k.pager_create()
    v = pager.create_vmo(2 * PS)
    m = v.map()
    t, out = in_thread(lambda: m.read(1))
    pager.get_request(timeout=5)  # the access is now waiting for the pager
    assert t.is_alive()
    return v, m, t, out


def test_vmo_closed_under_a_waiting_fault(k: Kernel) -> None:
    v, m, t, out = _blocked_reader(k)
    v.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(out.get("error"), ZxError)
    assert out["error"].status == Status.ERR_BAD_STATE


def test_unmap_under_a_waiting_fault(k: Kernel) -> None:
    v, m, t, out = _blocked_reader(k)
    m.unmap()
    t.join(5)
    assert not t.is_alive() and out["error"].status == Status.ERR_BAD_STATE


def test_kernel_close_with_faults_outstanding() -> None:
    k = Kernel(memory=8 * 2**20)
    v, m, t, out = _blocked_reader(k)
    v2 = k.vmo_create(PS)
    m2 = v2.map()
    m2.write(b"x")
    k.close()
    t.join(5)
    assert not t.is_alive() and out["error"].status == Status.ERR_BAD_STATE
    assert m.unmapped and m2.unmapped
    assert status_of(lambda: m2.read(1)) == Status.ERR_BAD_STATE


def test_handler_exception_fails_the_access_only(k: Kernel,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    v = k.vmo_create(4 * PS, VmoOptions.RESIZABLE)  # not the anonymous-root fast path...
    c = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)  # ...a child uses the full lookup
    m = c.map(fault_around=1)
    from vmo.cow_pages import CowPages

    real = CowPages.lookup_for_read_locked
    calls = {"n": 0}

    def broken(self: CowPages, start: int, count: int) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected bug")
        return real(self, start, count)

    monkeypatch.setattr(CowPages, "lookup_for_read_locked", broken)
    assert status_of(lambda: m.read(1)) == Status.ERR_INTERNAL
    mgr = mapping.manager_for(k)
    assert mgr is not None and any("injected bug" in e for e in mgr.handler.errors)
    assert m.read(1) == b"\0"  # the handler keeps serving; the page is asked for again
    assert m.read(1, PS) == b"\0"
    check(k)


def test_concurrent_accessors(k: Kernel) -> None:
    v = k.vmo_create(64 * PS)
    maps = [v.map(fault_around=1), v.map(fault_around=8), v.map()]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            m = maps[i % len(maps)]
            for r in range(30):
                page = (i * 7 + r * 3) % 64
                m.write(bytes([i + 1]) * 16, page * PS + 32 * i)
                got = m.read(16, page * PS + 32 * i)
                assert got == bytes([i + 1]) * 16, (i, r, got)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    snapshot = v.read(64 * PS)
    for m in maps:
        assert m.read(64 * PS) == snapshot
    check(k)


# ---------------------------------------------------------------- the window and the kernel


def test_window_kernel_facts() -> None:
    """The userfaultfd behaviours `vmo.mmu.fault_handler` relies on (its docstring)."""
    from vmo.mmu import uffd

    w = Window(4 * PS)
    try:
        w.map_here(uffd.PROT_READ | uffd.PROT_WRITE)
        w.register_here()
        src = bytes([7]) * PS
        w.fill(0, uffd.buffer_address(src), 1, wp=True)
        assert uffd.copy_from_address_checked(w.local_address, 2) == b"\7\7"
        assert bytes(w.alias[:2]) == b"\7\7"
        w.protect(0, 1, True)
        w.punch(0, 1)
        # A punched, write-protected page: filling it again works (a uffd-wp marker is none
        # for UFFDIO_COPY)...
        w.fill(0, uffd.buffer_address(src), 1, wp=True)
        w.punch(0, 1)
        # ...and poisoning it works once the marker is cleared (`Window.poison` does that).
        w.poison(0)
        with pytest.raises(uffd.MemoryFault):
            uffd.copy_from_address_checked(w.local_address, 1)
        w.punch(0, 1)  # a punch does not remove a poison marker
        with pytest.raises(uffd.MemoryFault):
            uffd.copy_from_address_checked(w.local_address, 1)
        w.clear_poison_here(0)  # MADV_DONTNEED does
        w.fill(0, uffd.buffer_address(src), 1, wp=False)
        uffd.copy_to_address_checked(w.local_address, b"\1")
        assert bytes(w.alias[:1]) == b"\1"
        assert (ABSENT, READ_ONLY, WRITABLE, POISONED) == (0, 1, 2, 3)
    finally:
        if w.uffd_fd >= 0:
            os.close(w.uffd_fd)
        w.unmap_here()
        w.close()


def test_stress_writers_readers_and_snapshots(k: Kernel) -> None:
    """Four threads own a quarter of the pages each and write and read them through every
    path (v.write/v.read, three mappings, a slice and its mapping) while another thread takes
    and closes snapshots, runs the zero-page scanner and reads the whole VMO."""
    import random

    npages = 64
    v = k.vmo_create(npages * PS)
    sl = v.create_child(ChildOptions.SLICE, 0, npages * PS)
    maps = [v.map(fault_around=1), v.map(fault_around=16), v.map(fault_around=4), sl.map()]
    errors: list[Any] = []
    stop = time.monotonic() + 2.0

    def worker(tid: int) -> None:
        rnd = random.Random(tid)
        try:
            while time.monotonic() < stop:
                page = rnd.randrange(tid, npages, 4)
                off = page * PS + rnd.randrange(0, PS // 64) * 64
                val = bytes([rnd.randrange(1, 256)]) * 64
                how = rnd.randrange(5)
                if how == 0:
                    v.write(val, off)
                elif how == 1:
                    sl.write(val, off)
                else:
                    maps[rnd.randrange(len(maps))].write(val, off)
                for reader in (v, maps[0], maps[1], maps[3]):
                    got = reader.read(64, off)
                    if got != val:
                        errors.append((tid, off, got[:4], val[:4]))
                        return
        except BaseException as e:  # noqa: BLE001
            errors.append((tid, repr(e)))

    def churn() -> None:
        rnd = random.Random(99)
        kids: list[vmo.Vmo] = []
        try:
            while time.monotonic() < stop:
                action = rnd.randrange(4)
                if action == 0 and len(kids) < 4:
                    kids.append(v.create_child(ChildOptions.SNAPSHOT, 0, npages * PS))
                elif action == 1 and kids:
                    kids.pop(rnd.randrange(len(kids))).close()
                elif action == 2:
                    k.dedup_zero_pages()
                else:
                    v.read(npages * PS)
                time.sleep(0.001)
        except BaseException as e:  # noqa: BLE001
            errors.append(("churn", repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors[:3]
    mgr = mapping.manager_for(k)
    assert mgr is not None and not mgr.handler.errors
    whole = v.read(npages * PS)
    assert all(m.read(npages * PS) == whole for m in maps)
    check(k)


def test_at_least_on_write_child_of_a_pager_backed_vmo(k: Kernel) -> None:
    handle = _supplier(k, _page)
    pager = k.pager_create(handle)
    handle.holder["pager"] = pager  # type: ignore[attr-defined]
    v = pager.create_vmo(8 * PS)
    c = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 8 * PS)
    mv, mc = v.map(), c.map()
    assert mc.read(2, 3 * PS) == _page(3)[:2]
    mv.write(b"parent", 3 * PS)  # the child has not written page 3: it may see this
    assert mc.read(6, 3 * PS) == c.read(6, 3 * PS)
    mc.write(b"child!", 3 * PS)  # forks page 3 into the child
    assert v.read(6, 3 * PS) == b"parent" and mv.read(6, 3 * PS) == b"parent"
    assert c.read(6, 3 * PS) == b"child!" and mc.read(6, 3 * PS) == b"child!"
    check(k)


def test_out_of_memory_in_a_write_fault() -> None:
    k = Kernel(memory=16 * PS)
    try:
        v = k.vmo_create(64 * PS)
        m = v.map(fault_around=1)
        with pytest.raises(ZxError) as e:
            m.write(b"\1" * (64 * PS))
        assert e.value.status == Status.ERR_NO_MEMORY
        assert m.fault_stats().failures >= 1
        v.op_range(VmoOp.DECOMMIT, 0, 64 * PS)
        m.write(b"fits again", 0)  # the failed page was cleared: the next store retries
        assert v.read(10) == b"fits again"
        check(k)
    finally:
        k.close()
