"""Workloads in other processes (`vmo.mmu.workload`): plain loads and stores in a spawned
process, every fault served here; coherence with the VMO and with mappings here; pager-backed
VMOs; failures; and a workload killed with SIGKILL in the middle of its run or of a fault.

The targets below run in the workload process, which imports this module by name (pytest puts
``tests/`` on ``sys.path``, and `Workload` passes ``sys.path`` on).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vmo
from vmo import PAGE_SIZE, ChildOptions, Kernel, Perms, Status, ZxError
from vmo.mmu import mapping
from vmo.mmu.fault_handler import unavailable_reason
from vmo.testing import robust

PS = PAGE_SIZE
_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.timeout(60, method="thread"),
]

if _REASON is None:
    from vmo.mmu.workload import RemoteError, Workload, WorkloadContext
    from vmo.pager import remote
else:  # pragma: no cover
    WorkloadContext = Any  # type: ignore[misc,assignment]


# ---------------------------------------------------------------- targets (run in the workload)


def numpy_sum(ctx: WorkloadContext, name: str) -> int:
    import numpy as np

    return int(np.frombuffer(ctx.mappings[name].buffer, dtype=np.uint8).sum(dtype=np.uint64))


def numpy_fill_pages(ctx: WorkloadContext, name: str, first: int, count: int) -> None:
    """Page ``first + i`` becomes bytes ``i + 1`` (numpy stores)."""
    import numpy as np

    a = np.frombuffer(ctx.mappings[name].buffer, dtype=np.uint8)
    for i in range(count):
        a[(first + i) * PS: (first + i + 1) * PS] = i + 1


def ctypes_store(ctx: WorkloadContext, name: str, offset: int, value: int) -> int:
    view = ctx.mappings[name]
    cell = ctypes.c_uint32.from_address(view.address + offset)
    cell.value = value
    return int(ctypes.c_uint32.from_address(view.address + offset).value)


# Write counter ``i`` into page ``i % pages`` (8 bytes at its start), forever.
store_forever = robust.store_counters


def checked_access(ctx: WorkloadContext, name: str, offset: int, write: bool) -> str:
    from vmo.mmu.uffd import MemoryFault

    view = ctx.mappings[name]
    try:
        if write:
            view.write_checked(b"w", offset)
        else:
            view.read_checked(1, offset)
    except MemoryFault as e:
        return signal.Signals(e.signo).name
    return "ok"


def fail_on_purpose(ctx: WorkloadContext) -> None:
    raise ValueError("the workload's own bug")


def names(ctx: WorkloadContext) -> list[str]:
    return sorted(ctx.mappings)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel(memory=32 * 2**20, page_request_timeout=20.0)
    mapping.manager_for(kernel)  # the handler thread and its descriptors exist before a test
    yield kernel
    try:
        mapping.validate(kernel)
        vmo.debug.validate(kernel)
    finally:
        kernel.close()


@pytest.fixture
def w(k: Kernel) -> Iterator[Workload]:
    with Workload(k, timeout=20.0) as workload:
        yield workload


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def manager_is_empty(k: Kernel) -> bool:
    mgr = mapping.manager_for(k)
    return mgr is not None and not mgr.mappings and not mgr.writer and not mgr.readers


# ---------------------------------------------------------------- tests


def test_plain_loads_and_stores(k: Kernel, w: Workload) -> None:
    v = k.vmo_create(64 * PS)
    data = bytes(range(256)) * (64 * PS // 256)
    v.write(data)
    m = w.map(v, name="data")
    assert m.remote and m.length == 64 * PS
    assert w.run(remote.checksum, "data") == sum(data)
    assert w.run(numpy_sum, "data") == sum(data)
    w.run(remote.fill, "data", 0xAB, 3 * PS + 5, 10)
    assert v.read(10, 3 * PS + 5) == b"\xab" * 10
    assert w.run(ctypes_store, "data", 8 * PS, 0xDEADBEEF) == 0xDEADBEEF
    assert v.read(4, 8 * PS) == struct.pack("<I", 0xDEADBEEF)
    v.write(b"from the server", 9 * PS)
    assert w.run(remote.read_bytes, "data", 9 * PS, 15) == b"from the server"
    s = m.fault_stats()
    assert s.faults > 0 and s.pages_installed >= 64 and s.pages_checked_out >= 2
    assert w.run(names) == ["data"]
    for call in (lambda: m.read(1), lambda: m.write(b"x"), lambda: m.protect(Perms.READ)):
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_NOT_SUPPORTED


def test_coherent_with_local_mappings_and_children(k: Kernel, w: Workload) -> None:
    v = k.vmo_create(16 * PS)
    local = v.map()
    w.map(v, name="v")
    w.run(numpy_fill_pages, "v", 0, 4)  # pages 0..3 checked out to the workload's window
    assert local.read(1, 2 * PS) == b"\x03"
    snap = v.create_child(ChildOptions.SNAPSHOT, 0, 16 * PS)  # recalls them (REMOVE_WRITE)
    assert snap.read(1, 3 * PS) == b"\x04"
    w.run(numpy_fill_pages, "v", 2, 1)  # forks page 2 of v; the snapshot keeps its copy
    assert v.read(1, 2 * PS) == b"\x01" and snap.read(1, 2 * PS) == b"\x03"
    local.write(b"local", 5 * PS)
    assert w.run(remote.read_bytes, "v", 5 * PS, 5) == b"local"
    sl = v.create_child(ChildOptions.SLICE, 4 * PS, 4 * PS)
    w.map(sl, name="slice")
    w.run(remote.fill, "slice", 0x5A, 2 * PS, 3)
    assert local.read(3, 6 * PS) == b"ZZZ" and v.read(3, 6 * PS) == b"ZZZ"
    ms = w.map(snap, name="snap", perms=Perms.READ)
    assert w.run(remote.read_bytes, "snap", 2 * PS, 1) == b"\x03"
    assert w.run(checked_access, "snap", 0, True) == "SIGSEGV"  # a READ-only mapping
    assert not ms.unmapped
    mapping.validate(k)


def test_file_pager_backed_vmo(k: Kernel, w: Workload, tmp_path: Any) -> None:
    from vmo.pager.file_pager import FilePager

    path = tmp_path / "f.bin"
    pages = [bytes([i + 1]) * PS for i in range(32)]
    path.write_bytes(b"".join(pages))
    with FilePager(k, path) as fp:
        m = w.map(fp.vmo, name="file", fault_around=8)
        assert w.run(remote.checksum, "file") == sum(sum(p) for p in pages)
        assert m.fault_stats().page_requests >= 1
        w.run(remote.fill, "file", 0xEE, 7 * PS, 100)
        fp.flush()
        w.run(remote.fill, "file", 0xDD, 9 * PS, 1)  # dirtied again after the writeback
        fp.flush()
    raw = path.read_bytes()
    assert raw[7 * PS: 7 * PS + 100] == b"\xee" * 100
    assert raw[9 * PS] == 0xDD and raw[9 * PS + 1] == 10


def test_errors_and_unmap(k: Kernel, w: Workload) -> None:
    v = k.vmo_create(4 * PS)
    with pytest.raises(RemoteError) as e:
        w.run(fail_on_purpose)
    assert "the workload's own bug" in str(e.value) and "ValueError" in e.value.traceback
    m = w.map(v, name="a")
    with pytest.raises(ZxError) as z:
        w.map(v, name="a")
    assert z.value.status == Status.ERR_ALREADY_EXISTS
    for bad, status in ((lambda: w.map(v, 1), Status.ERR_INVALID_ARGS),
                        (lambda: w.map(v, 0, 8 * PS), Status.ERR_OUT_OF_RANGE),
                        (lambda: w.map(v, perms=Perms(0)), Status.ERR_INVALID_ARGS),
                        (lambda: w.start(lambda c: None), Status.ERR_INVALID_ARGS)):
        with pytest.raises(ZxError) as z:
            bad()
        assert z.value.status == status
    w.run(remote.fill, "a", 1, 0, 10)
    m.unmap()  # the stores are kept; the workload unmaps it and forgets the name
    assert v.read(10) == b"\x01" * 10
    assert w.run(names) == []
    assert manager_is_empty(k)
    w.map(v, name="a")  # the name can be used again
    assert w.run(remote.read_bytes, "a", 0, 2) == b"\x01\x01"
    v.close()  # closing the VMO unmaps it too
    assert w.run(names) == []


def test_pager_failure_poisons_the_page(k: Kernel, w: Workload) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(4 * PS)
    w.map(v, name="p", fault_around=1)
    w.start(checked_access, "p", PS, False)
    req = pager.get_request(timeout=10)
    pager.op_range(vmo.PagerOp.FAIL, v, req.offset, req.length, Status.ERR_IO)
    assert w.result() == "SIGBUS"


def test_sigkill_mid_run_leaks_nothing(k: Kernel) -> None:
    v = k.vmo_create(32 * PS)
    local = v.map()
    before = open_fds()
    w = Workload(k, timeout=20.0)
    m = w.map(v, name="v", fault_around=4)
    w.start(store_forever, "v")

    def busy() -> bool:
        local.read(PS, (m.fault_stats().faults % 32) * PS)  # recalls: the next store faults
        return m.fault_stats().faults > 200

    wait_until(busy)
    w.kill(signal.SIGKILL)
    wait_until(lambda: m.unmapped)
    assert w.exited.is_set()
    with pytest.raises(ZxError) as e:
        w.result(timeout=10)
    assert e.value.status == Status.ERR_PEER_CLOSED and "SIGKILL" in str(e.value)
    w.close()
    # Every page holds zeros or a counter that belongs to it (stores recalled, none torn).
    content = v.read(32 * PS)
    written = 0
    for p in range(32):
        page = content[p * PS: (p + 1) * PS]
        (counter,) = struct.unpack_from("<Q", page)
        assert page[8:] == bytes(PS - 8)
        if counter or p == 0:
            assert counter % 32 == p
            written += counter > 0
    assert written > 0
    assert local.read(32 * PS) == content
    wait_until(lambda: len(mapping.manager_for(k).mappings) == 1)  # type: ignore[union-attr]
    local.unmap()
    assert manager_is_empty(k)
    wait_until(lambda: open_fds() <= before)
    # The kernel keeps working: a new workload maps the same VMO.
    with Workload(k) as w2:
        w2.map(v, name="v")
        assert w2.run(remote.read_bytes, "v", 0, 8) == content[:8]


def test_sigkill_mid_fault(k: Kernel) -> None:
    pager = k.pager_create()  # nobody serves it: the workload's first load waits forever
    v = pager.create_vmo(8 * PS)
    before = open_fds()
    w = Workload(k, timeout=20.0)
    m = w.map(v, name="p")
    w.start(remote.checksum, "p")
    pager.get_request(timeout=10)  # the workload is blocked in a page fault now
    w.kill(signal.SIGKILL)
    wait_until(lambda: m.unmapped)
    w.close()
    assert manager_is_empty(k)
    wait_until(lambda: open_fds() <= before)
    v.close()  # cancels the request the fault was waiting for: its worker ends
    mgr = mapping.manager_for(k)
    assert mgr is not None and mgr.handler.join_workers(10)
    v2 = k.vmo_create(PS)
    local = v2.map()
    local.write(b"still works")
    assert v2.read(11) == b"still works"


def test_workload_closed_with_kernel() -> None:
    k = Kernel(memory=8 * 2**20)
    v = k.vmo_create(4 * PS)
    w = Workload(k)
    m = w.map(v, name="v")
    w.run(remote.fill, "v", 7, 0, 3)
    k.close()
    assert m.unmapped
    assert w.run(names) == []  # the workload was told to unmap it
    assert w.close() == 0


def test_concurrent_workloads(k: Kernel) -> None:
    v = k.vmo_create(64 * PS)
    workloads = [Workload(k) for _ in range(2)]
    try:
        for i, wl in enumerate(workloads):
            wl.map(v, name="v", fault_around=1 + 7 * i)
        errors: list[BaseException] = []

        def go(i: int) -> None:
            try:
                wl = workloads[i]
                for r in range(3):
                    wl.run(remote.fill, "v", i * 16 + r + 1, i * 32 * PS, 32 * PS, 97)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        content = v.read(64 * PS)
        assert content[0] == 3 and content[32 * PS] == 19
        assert workloads[0].run(remote.read_bytes, "v", 32 * PS, 1) == b"\x13"
    finally:
        for wl in workloads:
            wl.close()
