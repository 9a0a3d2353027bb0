"""Tests of the raw userfaultfd/memory binding (vmo.mmu.uffd) on plain anonymous memory and
MAP_SHARED memfd mappings, without any VMO.

Faulting accesses always run in a separate thread through the GIL-releasing helpers; the
resolving side runs either in a `Server` thread or in the test's main thread. Every blocking
test has a timeout, and its `finally` stops the server, closes the userfaultfd (which wakes any
thread still blocked on a fault) and joins the faulting threads before unmapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from vmo.mmu._uffd_cffi import ffi

from vmo.mmu import uffd
from vmo.mmu.uffd import (
    PAGE_SIZE,
    Feature,
    Ioctl,
    MemoryFault,
    PageExistsError,
    PageFault,
    Remap,
    Remove,
    Unmap,
    Userfaultfd,
)

PS = PAGE_SIZE
RW = uffd.PROT_READ | uffd.PROT_WRITE


def _unavailable_reason() -> str | None:
    try:
        uffd.kernel_api()
    except OSError as exc:
        return f"userfaultfd unavailable (needs root or access to /dev/userfaultfd): {exc}"
    return None


_REASON = _unavailable_reason()
needs_uffd = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
timeout = pytest.mark.timeout(20, method="thread")


def needs_features(features: int) -> pytest.MarkDecorator:
    supported = 0 if _REASON else int(uffd.kernel_api().supported)
    lacking = Feature(int(features) & ~supported)
    return pytest.mark.skipif(bool(lacking), reason=f"kernel lacks {lacking!r}")


def pattern(index: int, length: int = PS) -> bytes:
    """Recognizable page contents: every byte says which page it is."""
    return bytes([(index * 7 + 1) & 0xFF]) * length


# ---- Helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def anon(pages: int) -> Iterator[int]:
    addr = uffd.mmap(0, pages * PS, RW, uffd.MAP_PRIVATE | uffd.MAP_ANONYMOUS)
    try:
        yield addr
    finally:
        uffd.munmap(addr, pages * PS)


@contextlib.contextmanager
def memfd(pages: int, name: str = "test_uffd") -> Iterator[int]:
    fd = uffd.memfd_create(name)
    try:
        os.ftruncate(fd, pages * PS)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared(fd: int, pages: int) -> Iterator[int]:
    addr = uffd.mmap(0, pages * PS, RW, uffd.MAP_SHARED, fd, 0)
    try:
        yield addr
    finally:
        uffd.munmap(addr, pages * PS)


@contextlib.contextmanager
def region(kind: str, pages: int) -> Iterator[tuple[int, int | None]]:
    """(address, memfd or None) of a fresh anonymous or memfd-shared mapping."""
    if kind == "anon":
        with anon(pages) as addr:
            yield addr, None
    else:
        with memfd(pages) as fd, shared(fd, pages) as addr:
            yield addr, fd


class Worker(threading.Thread):
    """Runs `fn` in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.native_id_seen: int | None = None
        self.start()

    def run(self) -> None:
        self.native_id_seen = threading.get_native_id()
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout: float = 10.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "worker still blocked"
        if self.error is not None:
            raise self.error
        return self.result


class Server(threading.Thread):
    """Reads events from a userfaultfd and hands each page fault to `on_fault` until stopped
    (tests of other events read them from the main thread)."""

    def __init__(self, ufd: Userfaultfd, on_fault: Callable[[PageFault], object]) -> None:
        super().__init__(daemon=True)
        self.ufd = ufd
        self.on_fault = on_fault
        self.events: list[uffd.Event] = []
        self.error: BaseException | None = None
        self._stop_flag = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            while not self._stop_flag.is_set():
                if not self.ufd.wait(0.02):
                    continue
                for event in self.ufd.read_events():
                    self.events.append(event)
                    assert isinstance(event, PageFault), event
                    self.on_fault(event)
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)
        assert not self.is_alive(), "server thread did not stop"
        if self.error is not None:
            raise self.error

    def faults(self) -> list[PageFault]:
        return [e for e in self.events if isinstance(e, PageFault)]


def page_of(address: int) -> int:
    return address & ~(PS - 1)


def read_event(ufd: Userfaultfd, timeout: float = 5.0) -> uffd.Event:
    """The next event, read from the calling thread."""
    assert ufd.wait(timeout), "no event arrived"
    events = ufd.read_events(max_events=1)
    assert len(events) == 1
    return events[0]


# ---- Constants and layouts ------------------------------------------------------------------


def test_layouts_and_constants_come_from_headers() -> None:
    # struct uffd_msg is 32 bytes by ABI; the others are checked by cffi at import.
    assert ffi.sizeof("struct uffd_msg") == 32
    assert ffi.sizeof("struct uffdio_copy") == 40
    assert ffi.sizeof("struct uffdio_move") == 40
    # Bits are distinct powers of two.
    for flag_type in (Feature, Ioctl):
        values = [int(m) for m in flag_type]
        assert len(set(values)) == len(values)
        assert all(v and v & (v - 1) == 0 for v in values)
    assert os.sysconf("SC_PAGESIZE") == PAGE_SIZE
    assert uffd.O_CLOEXEC == os.O_CLOEXEC and uffd.O_NONBLOCK == os.O_NONBLOCK


# ---- Creation and API negotiation -----------------------------------------------------------


@needs_uffd
def test_kernel_api_probe() -> None:
    api = uffd.kernel_api()
    # What this project relies on (DESIGN.md, "Real memory").
    for feature in (Feature.MISSING_SHMEM, Feature.PAGEFAULT_FLAG_WP, Feature.THREAD_ID):
        assert feature in api.supported
    assert Ioctl.API | Ioctl.REGISTER | Ioctl.UNREGISTER in api.ioctls


@needs_uffd
def test_api_negotiates_supported_subset() -> None:
    supported = uffd.kernel_api().supported
    fake = 1 << 62  # a feature no kernel has
    with Userfaultfd() as ufd:
        api = ufd.api(Feature.THREAD_ID | Feature.EVENT_REMOVE | fake)
        assert api.features == Feature.THREAD_ID | Feature.EVENT_REMOVE
        assert api.supported == supported
        assert Ioctl.REGISTER in api.ioctls
        with pytest.raises(OSError) as exc:
            ufd.api(0)  # only once per descriptor
        assert exc.value.errno == errno.EINVAL
    with Userfaultfd() as ufd:
        with pytest.raises(OSError) as exc:
            ufd.api(required=fake)
        assert exc.value.errno == errno.EINVAL
        # A refused negotiation leaves the descriptor usable.
        assert ufd.api(required=Feature.THREAD_ID).features == Feature.THREAD_ID


@needs_uffd
def test_api_wp_async_implies_wp_unpopulated() -> None:
    if Feature.WP_ASYNC not in uffd.kernel_api().supported:
        pytest.skip("kernel lacks WP_ASYNC")
    with Userfaultfd() as ufd:
        assert Feature.WP_UNPOPULATED in ufd.api(Feature.WP_ASYNC).features


@needs_uffd
@pytest.mark.parametrize("prefer_device", [False, True])
def test_userfaultfd_creation_paths(prefer_device: bool) -> None:
    if prefer_device and not os.access("/dev/userfaultfd", os.R_OK | os.W_OK):
        pytest.skip("no access to /dev/userfaultfd")
    fd = uffd.userfaultfd(uffd.O_CLOEXEC | uffd.O_NONBLOCK, prefer_device=prefer_device)
    with Userfaultfd.from_fd(fd) as ufd:
        assert ufd.fileno() == fd
        assert not os.get_inheritable(fd)
        ufd.api()
        assert ufd.read_events() == []  # non-blocking, nothing pending
    assert ufd.closed
    with pytest.raises(ValueError):
        ufd.fileno()
    ufd.close()  # idempotent


@needs_uffd
@pytest.mark.parametrize("prefer_device", [False, True])
def test_userfaultfd_falls_back_when_first_way_is_refused(
    prefer_device: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = uffd.userfaultfd()  # whichever way works on this machine
    calls: list[str] = []

    def refused(flags: int) -> int:
        calls.append("first")
        raise OSError(errno.EPERM, "refused")

    def second(flags: int) -> int:
        calls.append("second")
        return os.dup(real)

    def broken(flags: int) -> int:
        raise OSError(errno.EMFILE, "too many files")

    first_name, second_name = "_userfaultfd_syscall", "_userfaultfd_device"
    if prefer_device:
        first_name, second_name = second_name, first_name
    try:
        monkeypatch.setattr(uffd, first_name, refused)
        monkeypatch.setattr(uffd, second_name, second)
        with Userfaultfd.from_fd(uffd.userfaultfd(prefer_device=prefer_device)) as ufd:
            ufd.api()
        assert calls == ["first", "second"]
        # Both refused: the first error is raised.
        monkeypatch.setattr(uffd, second_name, refused)
        with pytest.raises(PermissionError):
            uffd.userfaultfd(prefer_device=prefer_device)
        # Errors other than "not available here" are not retried the other way.
        calls.clear()
        monkeypatch.setattr(uffd, first_name, broken)
        with pytest.raises(OSError) as exc:
            uffd.userfaultfd(prefer_device=prefer_device)
        assert exc.value.errno == errno.EMFILE and calls == []
    finally:
        os.close(real)


def test_missing_compiled_module_explains_how_to_build() -> None:
    script = textwrap.dedent(
        """
        import sys, types
        for name, path in (("vmo", sys.argv[1]), ("vmo.pager", sys.argv[2])):
            sys.modules[name] = module = types.ModuleType(name)
            module.__path__ = [path]
        sys.modules["vmo.mmu._uffd_cffi"] = None  # as if it had not been built
        try:
            import vmo.mmu.uffd
        except ImportError as exc:
            print(exc)
        """
    )
    pager_dir = os.path.dirname(os.path.abspath(uffd.__file__))
    proc = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(pager_dir), pager_dir],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert "pip install -e ." in proc.stdout, proc.stderr


@needs_uffd
def test_calls_before_api_fail() -> None:
    with Userfaultfd() as ufd, anon(1) as addr:
        with pytest.raises(OSError) as exc:
            ufd.register(addr, PS)
        assert exc.value.errno == errno.EINVAL


# ---- Missing faults ---------------------------------------------------------------------------


@needs_uffd
@timeout
@pytest.mark.parametrize("kind", ["anon", "memfd"])
def test_missing_faults_served_by_handler_thread(kind: str) -> None:
    pages = 4
    with region(kind, pages) as (addr, fd), Userfaultfd() as ufd:
        ufd.api(Feature.THREAD_ID)
        ioctls = ufd.register(addr, pages * PS, missing=True)
        assert Ioctl.COPY | Ioctl.WAKE in ioctls

        def serve(event: PageFault) -> None:
            page = page_of(event.address)
            ufd.copy_buffer(page, pattern((page - addr) // PS))

        server = Server(ufd, serve)
        worker: Worker | None = None
        try:
            worker = Worker(lambda: uffd.copy_from_address(addr, pages * PS))
            data = worker.outcome()
            assert data == b"".join(pattern(i) for i in range(pages))
            faults = server.faults()
            assert [page_of(f.address) for f in faults] == [addr + i * PS for i in range(pages)]
            assert all(not f.write and not f.wp and not f.minor for f in faults)
            assert {f.thread_id for f in faults} == {worker.native_id_seen}
            # Resolved pages no longer fault.
            assert uffd.copy_from_address(addr, PS) == pattern(0)
            assert len(server.faults()) == pages
        finally:
            server.stop()
            ufd.close()
            if worker is not None:
                worker.join(5)
        if fd is not None:
            # UFFDIO_COPY into a memfd mapping puts the page in the file.
            assert os.pread(fd, PS, 2 * PS) == pattern(2)
            with shared(fd, pages) as other:
                assert uffd.copy_from_address(other + 3 * PS, PS) == pattern(3)


@needs_uffd
@timeout
def test_write_fault_is_flagged_write() -> None:
    with anon(1) as addr, Userfaultfd() as ufd:
        ufd.api()
        ufd.register(addr, PS)
        server = Server(ufd, lambda e: ufd.copy_buffer(page_of(e.address), pattern(9)))
        try:
            Worker(lambda: uffd.copy_to_address(addr + 10, b"hello")).outcome()
            (fault,) = server.faults()
            assert fault.write and not fault.wp
        finally:
            server.stop()
        assert uffd.copy_from_address(addr, 16) == pattern(9)[:10] + b"hello" + pattern(9)[:1]


@needs_uffd
@timeout
def test_zeropage() -> None:
    with anon(2) as addr, Userfaultfd() as ufd:
        ufd.api()
        assert Ioctl.ZEROPAGE in ufd.register(addr, 2 * PS)
        server = Server(ufd, lambda e: ufd.zeropage(page_of(e.address), PS))
        try:
            assert Worker(lambda: uffd.copy_from_address(addr, 2 * PS)).outcome() == bytes(2 * PS)
            assert len(server.faults()) == 2
        finally:
            server.stop()
        # A private zero page is copied on write, without another userfault.
        uffd.copy_to_address(addr, b"x")
        assert uffd.copy_from_address(addr, 2) == b"x\0"


@needs_uffd
def test_eexist_and_partial_copy() -> None:
    with anon(3) as addr, Userfaultfd() as ufd:
        ufd.api()
        ufd.register(addr, 3 * PS)
        assert ufd.copy_buffer(addr + PS, pattern(1)) == PS
        with pytest.raises(PageExistsError) as exc:
            ufd.copy_buffer(addr + PS, pattern(5))
        assert isinstance(exc.value, FileExistsError) and exc.value.errno == errno.EEXIST
        assert exc.value.address == addr + PS
        with pytest.raises(PageExistsError):
            ufd.zeropage(addr + PS, PS)
        # Page 0 is missing and page 1 present: the kernel copies page 0 and stops (EAGAIN).
        assert ufd.copy_buffer(addr, pattern(0) + pattern(7)) == PS
        assert uffd.copy_from_address(addr, 2 * PS) == pattern(0) + pattern(1)
        # Alignment errors are plain OSErrors.
        with pytest.raises(OSError) as exc2:
            ufd.copy_buffer(addr + 2 * PS + 1, pattern(2))
        assert exc2.value.errno == errno.EINVAL


@needs_uffd
@timeout
def test_dontwake_then_wake() -> None:
    with anon(1) as addr, Userfaultfd() as ufd:
        ufd.api()
        ufd.register(addr, PS)
        worker = Worker(lambda: uffd.copy_from_address(addr, PS))
        try:
            event = read_event(ufd)
            assert isinstance(event, PageFault) and page_of(event.address) == addr
            ufd.copy_buffer(addr, pattern(3), dontwake=True)
            time.sleep(0.2)
            assert worker.is_alive(), "DONTWAKE copy woke the faulting thread"
            ufd.wake(addr, PS)
            assert worker.outcome() == pattern(3)
        finally:
            ufd.close()
            worker.join(5)


# ---- Write protection ---------------------------------------------------------------------------


@needs_uffd
@timeout
def test_copy_mode_wp_then_wp_fault_and_clear() -> None:
    with anon(2) as addr, Userfaultfd() as ufd:
        ufd.api(Feature.THREAD_ID)
        ioctls = ufd.register(addr, 2 * PS, missing=True, wp=True)
        assert Ioctl.WRITEPROTECT in ioctls

        def serve(event: PageFault) -> None:
            page = page_of(event.address)
            if event.wp:
                ufd.writeprotect(page, PS, False)
            else:
                # Page 0 is installed write-protected (UFFDIO_COPY_MODE_WP), page 1 not.
                ufd.copy_buffer(page, pattern(page == addr + PS), wp=(page == addr))

        server = Server(ufd, serve)
        try:
            assert Worker(lambda: uffd.copy_from_address(addr, 2 * PS)).outcome() == (
                pattern(0) + pattern(1)
            )
            assert len(server.faults()) == 2
            Worker(lambda: uffd.copy_to_address(addr + PS, b"B")).outcome()
            assert len(server.faults()) == 2  # page 1 is writable
            Worker(lambda: uffd.copy_to_address(addr, b"A")).outcome()
            faults = server.faults()
            assert len(faults) == 3
            assert faults[2].wp and faults[2].write and page_of(faults[2].address) == addr
            Worker(lambda: uffd.copy_to_address(addr + 1, b"a")).outcome()
            assert len(server.faults()) == 3  # protection cleared
            # Protect again: the next store faults again.
            ufd.writeprotect(addr, 2 * PS, True)
            Worker(lambda: uffd.copy_to_address(addr + PS + 1, b"b")).outcome()
            faults = server.faults()
            assert len(faults) == 4 and faults[3].wp and page_of(faults[3].address) == addr + PS
        finally:
            server.stop()
        assert uffd.copy_from_address(addr, 2) == b"Aa"
        assert uffd.copy_from_address(addr + PS, 2) == b"Bb"


@needs_uffd
@timeout
def test_write_protect_memfd_shared() -> None:
    with memfd(2) as fd, shared(fd, 2) as addr, Userfaultfd() as ufd:
        os.pwrite(fd, pattern(0) + pattern(1), 0)
        ufd.api(Feature.WP_HUGETLBFS_SHMEM)
        ufd.register(addr, 2 * PS, missing=True, wp=True)
        # The pages are in the page cache, so reads map them without a missing fault.
        assert uffd.copy_from_address(addr, 2 * PS) == pattern(0) + pattern(1)
        ufd.writeprotect(addr, 2 * PS, True)
        server = Server(ufd, lambda e: ufd.writeprotect(page_of(e.address), PS, False))
        try:
            Worker(lambda: uffd.copy_to_address(addr + PS, b"shm")).outcome()
            (fault,) = server.faults()
            assert fault.wp and fault.write and page_of(fault.address) == addr + PS
        finally:
            server.stop()
        assert os.pread(fd, 3, PS) == b"shm"


# ---- Minor faults, move, poison -------------------------------------------------------------


@needs_uffd
@needs_features(Feature.MINOR_SHMEM)
@timeout
def test_minor_fault_continue() -> None:
    with memfd(1) as fd, shared(fd, 1) as addr, Userfaultfd() as ufd:
        os.pwrite(fd, pattern(4), 0)
        ufd.api(required=Feature.MINOR_SHMEM)
        assert Ioctl.CONTINUE in ufd.register(addr, PS, missing=False, minor=True)
        server = Server(ufd, lambda e: ufd.continue_(page_of(e.address), PS))
        try:
            assert Worker(lambda: uffd.copy_from_address(addr, PS)).outcome() == pattern(4)
            (fault,) = server.faults()
            assert fault.minor
        finally:
            server.stop()
        with pytest.raises(PageExistsError):
            ufd.continue_(addr, PS)


@needs_uffd
@needs_features(Feature.MOVE)
def test_move() -> None:
    with anon(1) as src, anon(1) as dst, Userfaultfd() as ufd:
        uffd.copy_to_address(src, pattern(6))
        ufd.api(required=Feature.MOVE)
        assert Ioctl.MOVE in ufd.register(dst, PS)
        assert ufd.move(dst, src, PS) == PS
        assert uffd.copy_from_address(dst, PS) == pattern(6)
        assert uffd.copy_from_address(src, PS) == bytes(PS)  # the source page left
        with pytest.raises(OSError) as exc:
            ufd.move(dst, src, PS)  # source is now a hole
        assert exc.value.errno in (errno.ENOENT, errno.EEXIST)


@needs_uffd
@needs_features(Feature.POISON)
def test_poison_then_guarded_access() -> None:
    with anon(2) as addr, Userfaultfd() as ufd:
        ufd.api(required=Feature.POISON)
        assert Ioctl.POISON in ufd.register(addr, 2 * PS)
        assert ufd.poison(addr + PS, PS) == PS
        with pytest.raises(MemoryFault) as exc:
            uffd.touch_checked(addr + PS, PS)
        assert exc.value.signo == signal.SIGBUS
        assert page_of(exc.value.address) == addr + PS


# ---- Holes --------------------------------------------------------------------------------------


def test_seek_data_and_hole() -> None:
    with memfd(4) as fd:
        assert uffd.lseek_data(fd, 0) is None
        assert uffd.lseek_hole(fd, 0) == 0
        os.pwrite(fd, pattern(2), 2 * PS)
        assert uffd.lseek_data(fd, 0) == 2 * PS
        assert uffd.lseek_hole(fd, 2 * PS) == 3 * PS
        assert uffd.lseek_data(fd, 3 * PS) is None
        assert uffd.lseek_hole(fd, 4 * PS) is None
        uffd.fallocate_punch_hole(fd, 2 * PS, PS)
        assert uffd.lseek_data(fd, 0) is None
        assert os.fstat(fd).st_size == 4 * PS
        with pytest.raises(OSError) as exc:
            uffd.lseek_data(-1, 0)
        assert exc.value.errno == errno.EBADF


@needs_uffd
@timeout
def test_punch_hole_faults_again() -> None:
    with memfd(2) as fd, shared(fd, 2) as addr, Userfaultfd() as ufd:
        ufd.api()
        ufd.register(addr, 2 * PS)
        generation = [0]

        def serve(event: PageFault) -> None:
            generation[0] += 1
            ufd.copy_buffer(page_of(event.address), pattern(10 + generation[0]))

        server = Server(ufd, serve)
        try:
            read = Worker(lambda: uffd.copy_from_address(addr, PS)).outcome
            assert read() == pattern(11)
            assert uffd.lseek_data(fd, 0) == 0
            assert Worker(lambda: uffd.copy_from_address(addr, PS)).outcome() == pattern(11)
            assert len(server.faults()) == 1
            uffd.fallocate_punch_hole(fd, 0, PS)
            assert uffd.lseek_data(fd, 0) is None
            assert Worker(lambda: uffd.copy_from_address(addr, PS)).outcome() == pattern(12)
            assert len(server.faults()) == 2
        finally:
            server.stop()


# ---- Non-cooperative events -----------------------------------------------------------------


@needs_uffd
@timeout
def test_remove_event_from_madvise_dontneed() -> None:
    with anon(4) as addr, Userfaultfd() as ufd:
        ufd.api(required=Feature.EVENT_REMOVE)
        ufd.register(addr, 4 * PS)
        ufd.copy_buffer(addr, pattern(0) * 4)
        # madvise blocks until the REMOVE event is read: run it in another thread.
        worker = Worker(lambda: uffd.madvise(addr + PS, 2 * PS, uffd.MADV_DONTNEED))
        try:
            assert read_event(ufd) == Remove(start=addr + PS, end=addr + 3 * PS)
            worker.outcome()
            # The dropped pages are missing again, the others are not.
            assert uffd.copy_from_address(addr, 1) == pattern(0)[:1]
            assert ufd.copy_buffer(addr + PS, pattern(1) * 2) == 2 * PS
        finally:
            ufd.close()
            worker.join(5)


@needs_uffd
@timeout
def test_unmap_event_from_munmap() -> None:
    addr = uffd.mmap(0, 3 * PS, RW, uffd.MAP_PRIVATE | uffd.MAP_ANONYMOUS)
    try:
        with Userfaultfd() as ufd:
            ufd.api(required=Feature.EVENT_UNMAP)
            ufd.register(addr, 3 * PS)
            worker = Worker(lambda: uffd.munmap(addr + 2 * PS, PS))
            try:
                assert read_event(ufd) == Unmap(start=addr + 2 * PS, end=addr + 3 * PS)
                worker.outcome()
            finally:
                ufd.close()
                worker.join(5)
    finally:
        uffd.munmap(addr, 2 * PS)


@needs_uffd
@timeout
def test_remap_event_from_mremap() -> None:
    addr = uffd.mmap(0, 2 * PS, RW, uffd.MAP_PRIVATE | uffd.MAP_ANONYMOUS)
    new: list[int] = []
    try:
        with Userfaultfd() as ufd:
            ufd.api(required=Feature.EVENT_REMAP)
            ufd.register(addr, 2 * PS)
            ufd.copy_buffer(addr, pattern(1) + pattern(2))
            worker = Worker(
                lambda: new.append(
                    uffd.mremap(
                        addr,
                        2 * PS,
                        2 * PS,
                        uffd.MREMAP_MAYMOVE | uffd.MREMAP_FIXED,
                        addr + 0x40000000,
                    )
                )
            )
            try:
                event = read_event(ufd)
                worker.outcome()
                assert event == Remap(from_=addr, to=new[0], len=2 * PS)
                assert uffd.copy_from_address(new[0] + PS, PS) == pattern(2)
            finally:
                ufd.close()
                worker.join(5)
    finally:
        uffd.munmap(new[0] if new else addr, 2 * PS)


# ---- Guarded accesses -------------------------------------------------------------------------


@needs_uffd
@needs_features(Feature.SIGBUS)
def test_sigbus_feature_gives_memory_fault() -> None:
    with anon(2) as addr, Userfaultfd() as ufd:
        ufd.api(required=Feature.SIGBUS)
        ufd.register(addr, 2 * PS)
        ufd.copy_buffer(addr, pattern(0))
        with pytest.raises(MemoryFault) as exc:
            uffd.copy_from_address_checked(addr, 2 * PS)
        assert exc.value.signo == signal.SIGBUS and exc.value.address == addr + PS
        with pytest.raises(MemoryFault) as exc:
            uffd.copy_to_address_checked(addr + PS + 8, b"data")
        assert exc.value.address == addr + PS + 8
        with pytest.raises(MemoryFault):
            uffd.touch_checked(addr, 2 * PS, write=True, value=1)
        # The guard is per call: the thread goes on normally afterwards.
        assert uffd.copy_from_address_checked(addr + 1, 3) == b"\1" + pattern(0)[:2]
        ufd.copy_buffer(addr + PS, pattern(1))
        assert uffd.copy_from_address_checked(addr + PS, 4) == pattern(1)[:4]


def test_truncated_memfd_gives_memory_fault() -> None:
    with memfd(2) as fd, shared(fd, 2) as addr:
        uffd.copy_to_address_checked(addr, pattern(0) + pattern(1))
        os.ftruncate(fd, PS)
        assert uffd.copy_from_address_checked(addr, PS) == pattern(0)
        with pytest.raises(MemoryFault) as exc:
            uffd.copy_from_address_checked(addr + PS - 2, 4)
        assert exc.value.signo == signal.SIGBUS and exc.value.address == addr + PS
        assert "SIGBUS" in str(exc.value)


def test_protnone_gives_sigsegv_memory_fault() -> None:
    with anon(1) as addr:
        uffd.mprotect(addr, PS, uffd.PROT_NONE)
        with pytest.raises(MemoryFault) as exc:
            uffd.touch_checked(addr, PS)
        assert exc.value.signo == signal.SIGSEGV and exc.value.address == addr
        uffd.mprotect(addr, PS, RW)
        uffd.touch_checked(addr, PS, 1, write=True, value=5)
        assert uffd.touch_read(addr, PS, stride=1) == 5 * PS


def test_guard_in_many_threads() -> None:
    with memfd(2) as fd, shared(fd, 2) as addr:
        os.ftruncate(fd, PS)
        results: list[int] = []

        def fault_many() -> None:
            for _ in range(200):
                try:
                    uffd.copy_from_address_checked(addr + PS, 8)
                except MemoryFault as exc:
                    results.append(exc.address)

        workers = [Worker(fault_many) for _ in range(4)]
        for w in workers:
            w.outcome()
        assert results == [addr + PS] * 800


_CRASH_SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, sys, types
    # Load the binding alone, whatever state the rest of the package is in.
    for name, path in (("vmo", sys.argv[2]), ("vmo.pager", sys.argv[3])):
        sys.modules[name] = module = types.ModuleType(name)
        module.__path__ = [path]
    from vmo.mmu import uffd
    if sys.argv[1] == "late-faulthandler":
        uffd.touch_checked(0, 0)   # installs the guard handler first
        faulthandler.enable()
    fd = uffd.memfd_create("crash")
    os.ftruncate(fd, 2 * uffd.PAGE_SIZE)
    addr = uffd.mmap(0, 2 * uffd.PAGE_SIZE, uffd.PROT_READ | uffd.PROT_WRITE, uffd.MAP_SHARED, fd)
    os.ftruncate(fd, uffd.PAGE_SIZE)
    try:
        uffd.copy_from_address_checked(addr + uffd.PAGE_SIZE, 1)
    except uffd.MemoryFault:
        print("guarded", flush=True)
    uffd.copy_from_address(addr + uffd.PAGE_SIZE, 1)   # unguarded: must die of SIGBUS
    print("survived", flush=True)
    """
)


@timeout
@pytest.mark.parametrize("mode", ["plain", "faulthandler", "late-faulthandler"])
def test_unguarded_fault_still_kills(mode: str) -> None:
    """Faults outside a guarded call go to the previous handler (or the default action)."""
    cmd = [sys.executable]
    if mode == "faulthandler":
        cmd += ["-X", "faulthandler"]
    pager_dir = os.path.dirname(os.path.abspath(uffd.__file__))
    cmd += ["-c", _CRASH_SCRIPT, mode, os.path.dirname(pager_dir), pager_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    assert proc.stdout == "guarded\n", proc.stderr
    assert proc.returncode == -signal.SIGBUS, proc.stderr
    if mode != "plain":
        assert "Bus error" in proc.stderr


# ---- Memory calls -----------------------------------------------------------------------------


def test_memory_call_errors() -> None:
    with pytest.raises(OSError) as exc:
        uffd.mmap(0, PS, RW, uffd.MAP_SHARED, -1)  # shared needs a file or MAP_ANONYMOUS
    assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError) as exc:
        uffd.munmap(1, PS)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        uffd.memfd_create("x", flags=1 << 30)
    assert exc.value.errno == errno.EINVAL
    with anon(1) as addr:
        uffd.madvise(addr, PS, uffd.MADV_POPULATE_WRITE)
        uffd.touch_write(addr, PS, value=3)
        assert uffd.touch_read(addr, PS) == 3
        assert uffd.buffer_address(memoryview(b"abc")) != 0
