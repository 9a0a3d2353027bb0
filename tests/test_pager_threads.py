"""The user pager across threads: readers block on page requests while another thread serves.

Queue mode (``k.pager_create()``): the reader's call blocks, holding no lock, until a serving
thread answers the request it posted on the pager's port. Every test runs under a timeout so a
lost wake-up fails the test instead of hanging the run, and ends with `vmo.debug.validate`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

import vmo
from vmo import (
    PAGE_SIZE,
    Kernel,
    PageRequest,
    PageRequestCommand,
    PagerOp,
    PagerVmoOptions,
    Status,
    VmoOp,
    ZxError,
)
from vmo.debug import validate
from vmo.pager.user_pager import FAIL_STATUSES

P = PAGE_SIZE
READ, DIRTY, COMPLETE = PageRequestCommand.READ, PageRequestCommand.DIRTY, PageRequestCommand.COMPLETE


def page_bytes(i: int) -> bytes:
    unit = f"page{i:06d}|".encode()
    return (unit * (P // len(unit) + 1))[:P]


class Call:
    """``fn()`` on a thread of its own; `result` joins and returns or raises what it did."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.error = e

    def result(self, timeout: float = 5.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call is still blocked"
        if self.error is not None:
            raise self.error
        return self.value

    def status(self, timeout: float = 5.0) -> Status | None:
        try:
            self.result(timeout)
        except ZxError as e:
            return e.status
        return None

    @property
    def blocked(self) -> bool:
        return self.thread.is_alive()


@pytest.fixture
def k() -> Iterator[Kernel]:
    with Kernel(memory=512 * P, page_request_timeout=10.0) as kern:
        yield kern
        validate(kern)


def supply(k: Kernel, pager: vmo.Pager, req: PageRequest, data: bytes | None = None) -> None:
    aux = k.vmo_create(req.length)
    aux.write(data if data is not None
              else b"".join(page_bytes(i) for i in range(req.offset // P,
                                                          (req.offset + req.length) // P)))
    pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
    aux.close()


def no_more_requests(pager: vmo.Pager) -> None:
    with pytest.raises(ZxError) as e:
        pager.get_request(timeout=0)
    assert e.value.status == Status.ERR_TIMED_OUT


# ---------------------------------------------------------------------------- blocking reads


@pytest.mark.timeout(20)
def test_reader_blocks_until_supplied(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(8 * P)
    reader = Call(lambda: v.read(3 * P, 2 * P))
    req = pager.get_request(timeout=5)
    assert (req.command, req.vmo, req.offset, req.length) == (READ, v, 2 * P, 3 * P)
    time.sleep(0.05)
    assert reader.blocked  # nothing supplied yet
    # Other VMOs, and present pages of this one, are not blocked meanwhile.
    other = k.vmo_create(P)
    other.write(b"free")
    assert other.read(4) == b"free"
    supply(k, pager, req)
    assert reader.result() == b"".join(page_bytes(i) for i in (2, 3, 4))
    no_more_requests(pager)
    validate(k)


@pytest.mark.timeout(20)
def test_serving_thread(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(32 * P)
    served: list[tuple[int, int]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                req = pager.get_request(timeout=0.05)
            except ZxError:
                continue
            if req.command == READ:
                served.append((req.offset // P, req.length // P))
                supply(k, pager, req)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        assert v.read(32 * P) == b"".join(page_bytes(i) for i in range(32))
        assert served == [(0, 32)]
        # Eviction and re-reading through the server.
        assert k.reclaim(8) == 8
        assert v.read(32 * P) == b"".join(page_bytes(i) for i in range(32))
        assert sum(n for _, n in served[1:]) == 8
    finally:
        stop.set()
        server.join(5)
    validate(k)


@pytest.mark.timeout(20)
def test_partial_supply_keeps_the_reader_waiting(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(4 * P)
    reader = Call(lambda: v.read(4 * P))
    req = pager.get_request(timeout=5)
    assert (req.offset, req.length) == (0, 4 * P)
    half = PageRequest(READ, v, 0, 2 * P)
    supply(k, pager, half)
    time.sleep(0.05)
    assert reader.blocked
    supply(k, pager, PageRequest(READ, v, 2 * P, 2 * P))
    assert reader.result() == b"".join(page_bytes(i) for i in range(4))
    validate(k)


@pytest.mark.timeout(20)
def test_several_readers_join_one_request(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(8 * P)
    first = Call(lambda: v.read(4 * P))
    req = pager.get_request(timeout=5)
    assert (req.offset, req.length) == (0, 4 * P)
    # Readers of pages inside the outstanding request join it: no new request.
    others = [Call(partial(v.read, P, i * P)) for i in range(4)]
    others += [Call(lambda: v.read(10, 2 * P + 5)) for _ in range(4)]
    time.sleep(0.1)
    no_more_requests(pager)
    assert all(c.blocked for c in [first, *others])
    supply(k, pager, req)
    assert first.result() == b"".join(page_bytes(i) for i in range(4))
    for i, c in enumerate(others[:4]):
        assert c.result() == page_bytes(i)
    for c in others[4:]:
        assert c.result() == page_bytes(2)[5:15]
    no_more_requests(pager)
    validate(k)


@pytest.mark.timeout(20)
def test_overlapping_request_does_not_overlap(k: Kernel) -> None:
    """A need that starts before an outstanding request is cut where that one starts."""
    pager = k.pager_create()
    v = pager.create_vmo(8 * P)
    a = Call(lambda: v.read(2 * P, 4 * P))
    ra = pager.get_request(timeout=5)
    assert (ra.offset, ra.length) == (4 * P, 2 * P)
    b = Call(lambda: v.read(8 * P))
    rb = pager.get_request(timeout=5)
    assert (rb.offset, rb.length) == (0, 4 * P)
    supply(k, pager, rb)
    supply(k, pager, ra)
    assert a.result() == page_bytes(4) + page_bytes(5)
    # b's retry needs the last two pages.
    rc = pager.get_request(timeout=5)
    assert (rc.offset, rc.length) == (6 * P, 2 * P)
    supply(k, pager, rc)
    assert b.result() == b"".join(page_bytes(i) for i in range(8))
    validate(k)


# ---------------------------------------------------------------------------- failing


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", sorted(FAIL_STATUSES))
def test_request_failed_with_each_allowed_status(k: Kernel, status: Status) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(4 * P)
    readers = [Call(lambda: v.read(P, P)) for _ in range(3)]
    writer = Call(lambda: v.write(b"w", P + 1))
    req = pager.get_request(timeout=5)
    time.sleep(0.05)
    pager.op_range(PagerOp.FAIL, v, req.offset, req.length, status)
    for c in [*readers, writer]:
        assert c.status() == status
    assert v.get_info().committed_bytes == 0
    validate(k)


@pytest.mark.timeout(20)
def test_fail_covers_only_overlapping_requests(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(8 * P)
    low = Call(lambda: v.read(P, 0))
    r1 = pager.get_request(timeout=5)
    high = Call(lambda: v.read(P, 6 * P))
    r2 = pager.get_request(timeout=5)
    assert {r1.offset, r2.offset} == {0, 6 * P}
    pager.op_range(PagerOp.FAIL, v, 0, 2 * P, Status.ERR_IO_DATA_INTEGRITY)
    assert low.status() == Status.ERR_IO_DATA_INTEGRITY
    time.sleep(0.05)
    assert high.blocked
    supply(k, pager, r2)
    assert high.result() == page_bytes(6)
    validate(k)


@pytest.mark.timeout(20)
def test_page_request_timeout(k: Kernel) -> None:
    k.page_request_timeout = 0.2
    pager = k.pager_create()
    v = pager.create_vmo(2 * P)
    t0 = time.monotonic()
    with pytest.raises(ZxError) as e:
        v.read(1)
    elapsed = time.monotonic() - t0
    assert e.value.status == Status.ERR_TIMED_OUT
    assert 0.2 <= elapsed < 3
    # The packet is still on the port: a late pager can still answer it.
    req = pager.get_request(timeout=0)
    supply(k, pager, req)
    assert v.read(P) == page_bytes(0)
    validate(k)


@pytest.mark.timeout(20)
def test_page_request_timeout_zero_fails_at_once(k: Kernel) -> None:
    k.page_request_timeout = 0
    pager = k.pager_create()
    v = pager.create_vmo(P)
    t0 = time.monotonic()
    with pytest.raises(ZxError) as e:
        v.write(b"x")
    assert e.value.status == Status.ERR_TIMED_OUT
    assert time.monotonic() - t0 < 2
    validate(k)


# ---------------------------------------------------------------------------- detach / close


@pytest.mark.timeout(20)
def test_detach_while_waiters_block(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(8 * P)
    waiters = [Call(partial(v.read, P, i * P)) for i in range(4)]
    waiters.append(Call(lambda: v.write(b"w", 5 * P)))
    seen = {pager.get_request(timeout=5).offset for _ in range(5)}
    assert seen == {0, P, 2 * P, 3 * P, 5 * P}
    pager.detach_vmo(v)
    for c in waiters:
        assert c.status() == Status.ERR_BAD_STATE
    req = pager.get_request(timeout=5)
    assert req.command == COMPLETE and req.vmo is v
    no_more_requests(pager)
    # Later accesses fail at once, without a request.
    with pytest.raises(ZxError) as e:
        v.read(1, 7 * P)
    assert e.value.status == Status.ERR_BAD_STATE
    no_more_requests(pager)
    validate(k)


@pytest.mark.timeout(20)
def test_pager_close_while_a_request_is_outstanding(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(2 * P)
    reader = Call(lambda: v.read(P))
    pager.get_request(timeout=5)
    pager.close()
    assert reader.status() == Status.ERR_BAD_STATE
    with pytest.raises(ZxError) as e:
        pager.get_request(timeout=0)
    assert e.value.status == Status.ERR_BAD_HANDLE
    validate(k)


@pytest.mark.timeout(20)
def test_pager_close_wakes_get_request(k: Kernel) -> None:
    pager = k.pager_create()
    getter = Call(lambda: pager.get_request())
    time.sleep(0.05)
    assert getter.blocked
    pager.close()
    assert getter.status() == Status.ERR_BAD_HANDLE


@pytest.mark.timeout(20)
def test_vmo_close_while_a_request_is_outstanding(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(2 * P)
    reader = Call(lambda: v.read(P))
    req = pager.get_request(timeout=5)
    v.close()
    assert reader.status() in (Status.ERR_BAD_STATE, Status.ERR_BAD_HANDLE)
    # The late supply finds a closed VMO.
    with pytest.raises(ZxError) as e:
        supply(k, pager, req)
    assert e.value.status == Status.ERR_BAD_HANDLE
    assert pager.get_request(timeout=5).command == COMPLETE
    validate(k)


@pytest.mark.timeout(20)
def test_resize_while_a_reader_waits(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(8 * P, PagerVmoOptions.RESIZABLE)
    reader = Call(lambda: v.read(P, 6 * P))
    pager.get_request(timeout=5)
    v.set_size(4 * P)
    assert reader.status() == Status.ERR_OUT_OF_RANGE
    validate(k)


# ---------------------------------------------------------------------------- dirty requests


@pytest.mark.timeout(20)
def test_writer_blocks_on_a_dirty_request(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(4 * P, PagerVmoOptions.TRAP_DIRTY)
    writer = Call(lambda: v.write(b"hello", P))
    req = pager.get_request(timeout=5)
    assert (req.command, req.offset, req.length) == (READ, P, P)
    supply(k, pager, req)
    req = pager.get_request(timeout=5)
    assert (req.command, req.offset, req.length) == (DIRTY, P, P)
    time.sleep(0.05)
    assert writer.blocked
    assert v.read(5, P) == page_bytes(1)[:5]  # readers are not held up by the DIRTY request
    pager.op_range(PagerOp.DIRTY, v, req.offset, req.length)
    writer.result()
    assert v.read(5, P) == b"hello"
    validate(k)


# ---------------------------------------------------------------------------- handler mode


@pytest.mark.timeout(20)
def test_handler_that_raises_on_several_threads(k: Kernel) -> None:
    calls = []
    lock = threading.Lock()

    def handler(req: PageRequest) -> None:
        with lock:
            calls.append(req.offset)
        if req.offset // P % 2:
            raise OSError("odd pages are unreadable")
        supply(k, pager, req)

    pager = k.pager_create(handler)
    v = pager.create_vmo(16 * P)
    readers = [Call(partial(v.read, P, i * P)) for i in range(16)]
    for i, c in enumerate(readers):
        if i % 2:
            assert c.status() == Status.ERR_IO
        else:
            assert c.result() == page_bytes(i)
    assert pager.handler_errors == 8
    validate(k)


@pytest.mark.timeout(20)
def test_handler_mode_concurrent_readers_one_handler_call(k: Kernel) -> None:
    entered = threading.Event()
    release = threading.Event()
    calls = []

    def slow(req: PageRequest) -> None:
        calls.append((req.offset, req.length))
        entered.set()
        assert release.wait(5)
        supply(k, pager, req)

    pager = k.pager_create(slow)
    v = pager.create_vmo(4 * P)
    first = Call(lambda: v.read(4 * P))
    assert entered.wait(5)
    others = [Call(lambda: v.read(P, 2 * P)) for _ in range(5)]
    time.sleep(0.05)
    release.set()
    assert first.result() == b"".join(page_bytes(i) for i in range(4))
    for c in others:
        assert c.result() == page_bytes(2)
    assert calls == [(0, 4 * P)]  # the joined readers did not call the handler
    validate(k)


# ---------------------------------------------------------------------------- a small stress run


@pytest.mark.timeout(60)
def test_readers_writers_reclaim_and_writeback(k: Kernel) -> None:
    """Readers, writers, eviction and writeback at once; the content is the model's at the end."""
    pages = 24
    store = bytearray(b"".join(page_bytes(i) for i in range(pages)))
    store_lock = threading.Lock()
    pager = k.pager_create()
    v = pager.create_vmo(pages * P, PagerVmoOptions.TRAP_DIRTY)
    stop = threading.Event()
    server_stop = threading.Event()
    errors: list[BaseException] = []
    counts = dict.fromkeys(PageRequestCommand, 0)

    def serve() -> None:
        while not server_stop.is_set():
            try:
                req = pager.get_request(timeout=0.02)
            except ZxError:
                continue
            counts[req.command] += 1
            try:
                if req.command == READ:
                    with store_lock:
                        data = bytes(store[req.offset:req.offset + req.length])
                    supply(k, pager, req, data)
                elif req.command == DIRTY:
                    pager.op_range(PagerOp.DIRTY, v, req.offset, req.length)
            except ZxError as e:
                errors.append(e)

    # Each writer owns its pages, so the final content is known: the last value it wrote.
    final: dict[int, bytes] = {}

    def writer(wid: int) -> None:
        rng = random.Random(wid)
        mine = [i for i in range(pages) if i % 3 == wid]
        for n in range(300):
            i = rng.choice(mine)
            data = f"w{wid}-{n:03d}".encode()
            v.write(data, i * P + 8)
            final[i] = data

    def reader(rid: int) -> None:
        rng = random.Random(100 + rid)
        for _ in range(400):
            i = rng.randrange(pages)
            got = v.read(8, i * P)
            assert got == page_bytes(i)[:8]  # nobody writes the first 8 bytes

    def reclaimer() -> None:
        while not stop.is_set():
            k.reclaim(4)
            time.sleep(0.002)

    def flusher() -> None:
        while not stop.is_set():
            for r in pager.query_dirty_ranges(v, 0, pages * P):
                pager.op_range(PagerOp.WRITEBACK_BEGIN, v, r.offset, r.length)
                data = v.read(r.length, r.offset)
                with store_lock:
                    store[r.offset:r.offset + r.length] = data
                pager.op_range(PagerOp.WRITEBACK_END, v, r.offset, r.length)
            time.sleep(0.005)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    background = [threading.Thread(target=f, daemon=True) for f in (reclaimer, flusher)]
    for t in background:
        t.start()
    workers = [Call(partial(writer, i)) for i in range(3)]
    workers += [Call(partial(reader, i)) for i in range(3)]
    try:
        try:
            for c in workers:
                c.result(timeout=40)
        finally:
            stop.set()  # the reclaimer and the flusher; the server goes on
            for t in background:
                t.join(5)
        assert not errors
        assert counts[READ] and counts[DIRTY]
        for i, data in final.items():
            assert v.read(len(data), i * P + 8) == data
        validate(k)
        # After a last writeback, everything can be evicted and read back from the store.
        for r in pager.query_dirty_ranges(v, 0, pages * P):
            pager.op_range(PagerOp.WRITEBACK_BEGIN, v, r.offset, r.length)
            store[r.offset:r.offset + r.length] = v.read(r.length, r.offset)
            pager.op_range(PagerOp.WRITEBACK_END, v, r.offset, r.length)
        k.reclaim(1000)
        assert v.get_info().committed_bytes == 0
        assert v.read(pages * P) == bytes(store)
    finally:
        server_stop.set()
        server.join(5)
    validate(k)


@pytest.mark.timeout(20)
def test_supply_racing_with_zero_and_commit(k: Kernel) -> None:
    """COMMIT and ZERO block on the pager like reads and writes do."""
    pager = k.pager_create()
    v = pager.create_vmo(4 * P)
    commit = Call(lambda: v.op_range(VmoOp.COMMIT, 0, 2 * P))
    req = pager.get_request(timeout=5)
    supply(k, pager, req)
    commit.result()
    assert pager.query_dirty_ranges(v, 0, 4 * P) == []  # COMMIT does not dirty
    zero = Call(lambda: v.op_range(VmoOp.ZERO, 2 * P, 2 * P))
    req = pager.get_request(timeout=5)
    assert req.offset == 2 * P
    supply(k, pager, req)
    zero.result()
    assert v.read(2 * P, 2 * P) == bytes(2 * P)
    validate(k)
