"""Regression tests of issue 11 (robustness): workloads that never leak or outlive their host,
idempotent release, every public call checked, mappings taken away under the fault handler
(``MADV_REMOVE``, ``munmap``), forks, and the in-process GIL deadlock.

Targets below run in workload processes, which import this module by name.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import signal
from typing import Any

import pytest
import test_workload

import vmo
from vmo import PAGE_SIZE, Kernel, Status, ZxError
from vmo.mmu import mapping
from vmo.mmu.fault_handler import unavailable_reason
from vmo.testing import robust

PS = PAGE_SIZE
_REASON = unavailable_reason()
needs_uffd = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
pytestmark = [pytest.mark.timeout(120, method="thread")]

if _REASON is None:
    from vmo.mmu.workload import Workload, WorkloadContext
    from vmo.pager import remote
else:  # pragma: no cover
    WorkloadContext = Any  # type: ignore[misc,assignment]

# ---------------------------------------------------------------- targets (run in the workload)

_kept: dict[str, Any] = {}


def limit_fds(ctx: WorkloadContext, n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def fd_and_window_counts(ctx: WorkloadContext) -> tuple[int, int]:
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        windows = sum(1 for line in f if "window" in line)
    return fds, windows


def remember(ctx: WorkloadContext, name: str, keep_view: bool) -> int:
    """Remember the address of mapping ``name`` (and, with ``keep_view``, hold a view of it, as
    a careless target would)."""
    view = ctx.mappings[name]
    _kept["view"] = view
    if keep_view:
        _kept["mv"] = view.memoryview()
    return view.address


def touch_remembered(ctx: WorkloadContext, offset: int) -> str:
    from vmo.mmu.uffd import MemoryFault

    view = _kept["view"]
    try:
        view.read_checked(1, offset)
    except MemoryFault as e:
        return signal.Signals(e.signo).name
    return "ok"


def touch_address(ctx: WorkloadContext, address: int) -> str:
    from vmo.mmu import uffd

    try:
        uffd.copy_from_address_checked(address, 1)
    except uffd.MemoryFault as e:
        return signal.Signals(e.signo).name
    return "ok"


def names(ctx: WorkloadContext) -> list[str]:
    return sorted(ctx.mappings)


# ---------------------------------------------------------------- fixtures


k = test_workload.k  # the same fixture: a kernel validated at the end


# ---------------------------------------------------------------- 1. remote unmap


@needs_uffd
def test_remote_unmap_releases_the_workloads_mapping_and_fd(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    v.write(b"kept")
    with Workload(k, timeout=20.0) as w:
        w.run(limit_fds, 64)
        base = w.run(fd_and_window_counts)
        for i in range(150):  # more cycles than descriptors allowed
            m = w.map(v, name="d")
            if i % 50 == 0:
                assert w.run(remote.read_bytes, "d", 0, 4) == b"kept"
            m.unmap()
        assert w.run(fd_and_window_counts) == base
        assert w.run(names) == []
        assert not w.mappings
        # A later touch of the old address is a clean fault, reported as such, whether or not
        # the target still holds a view of the buffer.
        for keep_view in (False, True):
            m = w.map(v, name="d")
            address = w.run(remember, "d", keep_view)
            m.unmap()
            assert w.run(touch_remembered, 0) == "SIGSEGV"
            assert w.run(touch_address, address) == "SIGSEGV"
            assert w.run(fd_and_window_counts) == base
        # Automatic names never collide with live ones after an unmap.
        a, b = w.map(v), w.map(v)
        a.unmap()
        c = w.map(v)
        assert len({id(a), id(b), id(c)}) == 3 and len(w.mappings) == 2
    assert v.read(4) == b"kept"


# ---------------------------------------------------------------- 2. workloads die with the host


def pid_alive(pid: int) -> bool:
    return robust.process_alive(pid)


def run_host(tmp_path: Any, wait: bool) -> tuple[Any, int]:
    import subprocess
    import sys

    script = tmp_path / "host.py"
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    script.write_text(robust.HOST_SCRIPT.format(paths=[here, root], wait=wait))
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert host.stdout is not None
    line = host.stdout.readline()
    return host, int(line)


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its host"
        time.sleep(0.05)


@needs_uffd
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workload_dies_when_its_host_is_killed(tmp_path: Any, sig: int) -> None:
    host, wpid = run_host(tmp_path, wait=True)
    assert pid_alive(wpid)
    host.send_signal(sig)
    host.wait(10)
    wait_gone(wpid)
    assert host.stdout is not None
    assert host.stdout.read() == b""  # nothing holds the host's stdout any more
    host.stdout.close()


@needs_uffd
def test_workload_stopped_at_interpreter_exit(tmp_path: Any) -> None:
    host, wpid = run_host(tmp_path, wait=False)
    assert host.stdout is not None
    host.stdout.read()  # EOF: the workload does not hold the host's stdout
    host.stdout.close()
    assert host.wait(20) == 0
    wait_gone(wpid)


@needs_uffd
def test_dropped_workload_is_killed_and_unmapped(k: Kernel) -> None:
    import gc

    v = k.vmo_create(4 * PS)
    w = Workload(k)
    w.map(v, name="v")
    w.run(remote.fill, "v", 9, 0, 5)
    pid = w.pid
    del w
    gc.collect()
    wait_gone(pid)
    mgr = mapping.manager_for(k)
    assert mgr is not None
    wait_until_true(lambda: not mgr.mappings)
    assert v.read(5) == b"\t" * 5


@needs_uffd
def test_workload_started_from_a_short_lived_thread_survives_it(k: Kernel) -> None:
    import threading

    box: list[Workload] = []
    t = threading.Thread(target=lambda: box.append(Workload(k)))
    t.start()
    t.join()
    with box[0] as w:
        v = k.vmo_create(PS)
        w.map(v, name="v")
        assert w.run(remote.checksum, "v") == 0  # the parent-death signal did not fire


def wait_until_true(cond: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# ---------------------------------------------------------------- 3. file pagers owned by the kernel


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def fds_on(path: Any) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            pass
    return n


def test_kernel_close_closes_its_file_pagers_and_pagers(tmp_path: Any) -> None:
    from vmo.pager.file_pager import FilePager

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(4 * PS))
    k = Kernel(memory=8 << 20)
    fp = FilePager(k, path)
    fp.vmo.write(b"flushed by the kernel's close")
    pager = k.pager_create()
    pv = pager.create_vmo(PS)
    assert fds_on(path) == 1
    k.close()
    assert fds_on(path) == 0
    assert fp.closed and pv.closed and "closed" in repr(pager)
    assert path.read_bytes().startswith(b"flushed by the kernel's close")
    fp.close()  # idempotent
    pager.close()


def test_dropped_file_pager_is_closed_with_a_warning(tmp_path: Any) -> None:
    import gc
    import warnings

    from vmo.pager import file_pager

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(4 * PS))
    with Kernel(memory=8 << 20) as k:
        fp = file_pager.FilePager(k, path)
        fp.vmo.write(b"dirty")
        assert fds_on(path) == 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del fp
            gc.collect()
        assert any(issubclass(w.category, ResourceWarning) for w in caught)
        assert file_pager._closer.drain()
        assert fds_on(path) == 0
        assert k.live_vmos() == []
        vmo.debug.validate(k)
    assert path.read_bytes().startswith(b"dirty")  # flushed, as a file object would be


# ---------------------------------------------------------------- 5. idempotent release


def test_every_release_is_idempotent(tmp_path: Any) -> None:
    from vmo.pager.file_pager import FilePager

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(PS))
    k = Kernel(memory=8 << 20)
    v = k.vmo_create(2 * PS)
    child = v.create_child(vmo.ChildOptions.SNAPSHOT, 0, PS)
    pager = k.pager_create()
    fp = FilePager(k, path)
    closables: list[Any] = [child, v, pager, fp]
    if _REASON is None:
        m = v.map()
        m.write(b"x")
        closables.insert(0, m.unmap)
        closables.insert(0, m.unmap)
    for obj in closables:
        close = obj if callable(obj) and not hasattr(obj, "close") else obj.close
        close()
        close()
        vmo.debug.validate(k)
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_BAD_HANDLE
    k.close()
    k.close()
    for obj in (v, pager, fp):
        obj.close()  # still nothing, after the kernel's close too


# ---------------------------------------------------------------- 4. every argument checked


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("not today")


@needs_uffd
def test_workload_calls_check_their_arguments(k: Kernel) -> None:
    v = k.vmo_create(2 * PS)
    other = Kernel(memory=1 << 20)
    try:
        ov = other.vmo_create(PS)
        with Workload(k) as w:
            cases: list[tuple[Any, Status]] = [
                (lambda: w.map("not a vmo"), Status.ERR_WRONG_TYPE),
                (lambda: w.map(None), Status.ERR_WRONG_TYPE),
                (lambda: w.map(ov), Status.ERR_BAD_HANDLE),
                (lambda: w.map(v, name=3), Status.ERR_INVALID_ARGS),
                (lambda: w.map(v, -PS), Status.ERR_OUT_OF_RANGE),
                (lambda: w.map(v, 0, 2**64), Status.ERR_OUT_OF_RANGE),
                (lambda: w.map(v, fault_around=0), Status.ERR_INVALID_ARGS),
                (lambda: w.run(remote.checksum, "v", Unpicklable()), Status.ERR_INVALID_ARGS),
                (lambda: w.run(remote.checksum, "v", lambda: 0), Status.ERR_INVALID_ARGS),
                (lambda: w.run(remote.checksum, timeout=-1), Status.ERR_INVALID_ARGS),
                (lambda: w.run(remote.checksum, timeout="soon"), Status.ERR_INVALID_ARGS),
                (lambda: w.run(42), Status.ERR_INVALID_ARGS),
                (lambda: w.result(), Status.ERR_BAD_STATE),
                (lambda: w.result(float("nan")), Status.ERR_INVALID_ARGS),
                (lambda: w.kill(999), Status.ERR_INVALID_ARGS),
                (lambda: w.kill("TERM"), Status.ERR_INVALID_ARGS),
                (lambda: Workload("kernel"), Status.ERR_WRONG_TYPE),
                (lambda: Workload(k, timeout=float("inf")), Status.ERR_INVALID_ARGS),
                (lambda: Workload(k, env={"A=B": "x"}), Status.ERR_INVALID_ARGS),
            ]
            for call, status in cases:
                with pytest.raises(ZxError) as e:
                    call()
                assert e.value.status == status, (call, e.value)
            w.map(v, name="v")
            assert w.run(remote.checksum, "v") == 0  # still usable after all that
        ov.close()
        mapping.validate(k)
    finally:
        other.close()


# ---------------------------------------------------------------- 6. REMOVE and UNMAP events


def remove_then_read(ctx: WorkloadContext, name: str, offset: int, length: int,
                     advice: str) -> bytes:
    view = ctx.mappings[name]
    view.buffer.madvise(getattr(mmap, advice), offset, length)
    return bytes(view.memoryview()[offset: offset + length])  # served, not a hang


def munmap_part(ctx: WorkloadContext, name: str, offset: int, length: int) -> str:
    from vmo.mmu import uffd

    view = ctx.mappings[name]
    uffd.munmap(view.address + offset, length)
    try:
        uffd.copy_from_address_checked(view.address + offset, 1)
    except uffd.MemoryFault as e:
        return signal.Signals(e.signo).name
    return "ok"


def store(ctx: WorkloadContext, name: str, offset: int, data: bytes) -> None:
    ctx.mappings[name].memoryview()[offset: offset + len(data)] = data


@needs_uffd
def test_madvise_dontneed_keeps_the_content(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    v.write(b"".join(bytes([i + 1]) * PS for i in range(4)))
    with Workload(k, timeout=20.0) as w:
        w.map(v, name="v", fault_around=1)
        w.run(store, "v", PS, b"checked out")
        w.run(remote.read_bytes, "v", 2 * PS, 1)
        got = w.run(remove_then_read, "v", 0, 4 * PS, "MADV_DONTNEED", timeout=20)
        want = b"\x01" * PS + b"checked out" + b"\x02" * (PS - 11) + b"\x03" * PS + b"\x04" * PS
        assert got == want and v.read(4 * PS) == want
        mapping.validate(k)


@needs_uffd
def test_madvise_remove_discards_the_range_and_the_next_access_is_served(k: Kernel) -> None:
    v = k.vmo_create(8 * PS)
    v.write(b"".join(bytes([i + 1]) * PS for i in range(8)))
    with Workload(k, timeout=20.0) as w:
        m = w.map(v, name="v", fault_around=1)
        w.run(store, "v", 2 * PS, b"checked out")  # page 2 writable in the window
        got = w.run(remove_then_read, "v", 2 * PS, 2 * PS, "MADV_REMOVE", timeout=20)
        assert got == bytes(2 * PS)
        # The rule: the VMO's pages there are decommitted; the rest is untouched.
        assert v.read(2 * PS, 2 * PS) == bytes(2 * PS)
        assert v.read(PS, PS) == b"\x02" * PS and v.read(PS, 4 * PS) == b"\x05" * PS
        assert v.get_info().committed_bytes == 6 * PS
        w.run(store, "v", 2 * PS, b"again")  # and the range works as before
        assert v.read(5, 2 * PS) == b"again"
        assert w.run(remote.read_bytes, "v", 4 * PS, 1) == b"\x05"
        mapping.validate(k)
        m.unmap()
    assert not mapping.manager_for(k).mappings  # type: ignore[union-attr]


@needs_uffd
def test_madvise_remove_of_a_pager_backed_vmo_zeroes_it(k: Kernel, tmp_path: Any) -> None:
    from vmo.pager.file_pager import FilePager

    path = tmp_path / "f.bin"
    path.write_bytes(b"\x07" * 4 * PS)
    with FilePager(k, path) as fp, Workload(k, timeout=20.0) as w:
        w.map(fp.vmo, name="f")
        assert w.run(remote.read_bytes, "f", PS, 1) == b"\x07"  # in the window now
        assert w.run(remove_then_read, "f", PS, PS, "MADV_REMOVE") == bytes(PS)
        assert fp.vmo.read(PS, PS) == bytes(PS)  # ZERO: DECOMMIT is not supported here
        assert fp.vmo.read(1) == b"\x07"
        fp.flush()
    assert path.read_bytes()[PS: 2 * PS] == bytes(PS)


@needs_uffd
def test_munmap_of_part_of_a_mapping_in_the_workload(k: Kernel) -> None:
    v = k.vmo_create(4 * PS)
    with Workload(k, timeout=20.0) as w:
        m = w.map(v, name="v", fault_around=1)
        w.run(store, "v", PS, b"stored before the munmap")
        assert w.run(munmap_part, "v", PS, PS) == "SIGSEGV"
        assert v.read(24, PS) == b"stored before the munmap"  # recalled, kept
        w.run(store, "v", 3 * PS, b"rest works")
        assert v.read(10, 3 * PS) == b"rest works"
        v.write(b"server", PS)  # a range change over the unmapped part is harmless
        mapping.validate(k)
        m.unmap()


# ---------------------------------------------------------------- 7. fork


def fork_and_touch(ctx: WorkloadContext, name: str, write: bool) -> str:
    view = ctx.mappings[name]
    pid = os.fork()
    if pid == 0:  # the child: its access must fail loudly
        try:
            if write:
                ctypes.c_char.from_address(view.address).value = b"c"
            else:
                ctypes.string_at(view.address, 1)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


@needs_uffd
@pytest.mark.parametrize("write", [False, True])
def test_a_forked_child_of_a_workload_fails_loudly(k: Kernel, write: bool) -> None:
    v = k.vmo_create(2 * PS)
    v.write(b"parent data")
    with Workload(k, timeout=20.0) as w:
        w.map(v, name="v")
        assert w.run(remote.read_bytes, "v", 0, 11) == b"parent data"
        assert w.run(fork_and_touch, "v", write) == "SIGSEGV"
        assert v.read(11) == b"parent data"
        assert w.run(remote.read_bytes, "v", 0, 11) == b"parent data"


# ---------------------------------------------------------------- 8. the in-process deadlock

DEADLOCK_SCRIPT = """
import ctypes, sys
sys.path[:0] = {paths!r}
import vmo
from vmo.pager import fault_handler
fault_handler.set_deadlock_timeout(1.0)
k = vmo.Kernel(memory=8 << 20)
v = k.vmo_create(4 * 4096)
v.write(b"hello")
m = v.map(fault_around=1)
assert m.read(5) == b"hello"          # the right way: works
print("before", flush=True)
ctypes.string_at(m.address + 4096, 5)  # a plain load holding the GIL: must not hang
print("after", flush=True)
"""


@needs_uffd
def test_plain_load_in_the_host_fails_clearly_instead_of_hanging(tmp_path: Any) -> None:
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "deadlock.py"
    script.write_text(DEADLOCK_SCRIPT.format(paths=[here, os.path.dirname(here)]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert r.stdout == b"before\n"
    assert r.returncode == -signal.SIGBUS
    err = r.stderr.decode()
    assert "deadlock" in err and "Mapping.read/Mapping.write" in err and "Workload" in err


@needs_uffd
def test_a_watchdog_failure_is_reported_by_the_accessor(k: Kernel) -> None:
    from vmo.pager import fault_handler

    # The same bookkeeping as a real detection, without a deadlock: the page's next access
    # reports ERR_BAD_STATE once, then works.
    v = k.vmo_create(2 * PS)
    m = v.map(fault_around=1)
    mgr = mapping.manager_for(k)
    assert mgr is not None
    with v._hier.lock, mgr.lock:
        m._win.poison(1)
    m.on_watchdog_failure(m.address + PS + 5)
    with pytest.raises(ZxError) as e:
        m.read(1, PS)
    assert e.value.status == Status.ERR_BAD_STATE
    assert m.read(1, PS) == b"\0"
    assert fault_handler.DEADLOCK_TIMEOUT > 0
    m.unmap()
