"""Window memory and the fault handler thread that serves userfaultfd faults on it.

A *window* is the memory one mapping shows (crosvm's staging memory plays the same part): a
``MAP_SHARED`` memfd ``W`` of the mapping's length. The *faulting mapping* of ``W`` -- in this
process or in a workload process -- is registered with a userfaultfd for missing and
write-protect faults, so every first access and every store to a read-only page stops until the
handler resolves it. This process also maps ``W`` a second time, unregistered: the *alias*,
through which the server reads and writes window pages without taking faults.

Per window page the server keeps one state byte (`ABSENT`, `READ_ONLY`, `WRITABLE`,
`POISONED`) and the frame number it is a copy of, in two flat arrays (``state``, ``frames``)
indexed by page, like ``vm_page_t``: no Python object per page. What the states *mean* for the
VMO (which copy is authoritative) is `vmo.mmu.mapping`'s business; this module only provides the
memory operations, each on a run of pages:

- `Window.fill`: ``UFFDIO_COPY`` from any address into absent pages (write-protected or not);
- `Window.protect`: ``UFFDIO_WRITEPROTECT`` set or clear (clearing wakes stores waiting on it);
- `Window.punch`: ``fallocate(PUNCH_HOLE)`` on ``W``, which zaps the pages from every mapping of
  ``W`` so that the next access faults again;
- `Window.poison`: ``UFFDIO_POISON``, so that the next access gets SIGBUS (a failed fault);
- `Window.kill`: punch and poison the whole window (the mapping is gone).

Facts of the kernel this relies on (checked by ``tests/test_mapping.py``): a punched page that
was write-protected leaves a uffd-wp marker in the page table; the next access to it is a
*missing* fault and ``UFFDIO_COPY`` fills it; ``UFFDIO_POISON`` refuses to overwrite such a
marker, so `Window.poison` clears write protection (which drops markers) first. A poison marker
survives a punch; ``MADV_DONTNEED`` on the faulting mapping removes it.

`FaultHandler` is the thread that polls every window's userfaultfd (and any other descriptor a
user *watches*, such as a workload's pidfd), reads fault messages in batches and hands each to
the window's `FaultSink`. Work that must wait (a page request to a pager) goes to a short-lived
worker thread through `FaultHandler.defer`, so the handler keeps serving other faults.

The hot path calls the compiled binding (``vmo.mmu._uffd_cffi``) directly, through helpers
that take plain integers (``vmo_uffd_copy``, ``vmo_uffd_writeprotect``: no argument struct to
fill attribute by attribute from Python) and a reader that decodes a batch of messages into a
flat array of words (``vmo_uffd_read_faults``, read through a memoryview): a fault costs one
``read(2)``, one ``ioctl`` and no Python allocation beyond small integers. Callers still
serialise the memory operations of one window (`vmo.mmu.mapping` holds its manager lock): the
window's state arrays are not otherwise protected.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import select
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from typing import Any, Protocol

import vmo.mmu.uffd as uffd
from vmo.mmu._uffd_cffi import ffi, lib

PAGE_SIZE = uffd.PAGE_SIZE

# Window page states.
ABSENT = 0  # nothing mapped: the next access is a missing fault
READ_ONLY = 1  # a write-protected copy of frames[page] (0: zeros)
WRITABLE = 2  # checked out: the window page is authoritative, frames[page] is stale
POISONED = 3  # a failed fault: accesses get SIGBUS until the faulting side clears it

#: Features every window's userfaultfd needs: write protection on shmem and poisoning.
REQUIRED_FEATURES = uffd.Feature.WP_HUGETLBFS_SHMEM | uffd.Feature.POISON
#: What a workload's userfaultfd adds: it hears when the workload takes part of a mapping away
#: (``madvise(MADV_REMOVE/MADV_DONTNEED)``, ``munmap``), see `FaultSink.on_range_removed`.
WORKLOAD_FEATURES = REQUIRED_FEATURES | uffd.Feature.EVENT_REMOVE | uffd.Feature.EVENT_UNMAP

_PAGEFAULT = lib.UFFD_EVENT_PAGEFAULT
_REMOVE = lib.UFFD_EVENT_REMOVE
_UNMAP = lib.UFFD_EVENT_UNMAP
# The flags as they sit in the first word of a `vmo_uffd_read_faults` record.
_FLAG_WRITE = lib.UFFD_PAGEFAULT_FLAG_WRITE << 8
_FLAG_WP = lib.UFFD_PAGEFAULT_FLAG_WP << 8
_READ_BATCH = lib.VMO_UFFD_READ_MAX
_COPY_WP = lib.UFFDIO_COPY_MODE_WP
_WP_SET = lib.UFFDIO_WRITEPROTECT_MODE_WP
_WP_DONTWAKE = lib.UFFDIO_WRITEPROTECT_MODE_DONTWAKE
_uffd_copy = lib.vmo_uffd_copy
_uffd_writeprotect = lib.vmo_uffd_writeprotect


#: Seconds a fault of this process's own windows may stay unread before the deadlock
#: watchdog fails it (see `watch_for_deadlock`).
DEADLOCK_TIMEOUT = 5.0


def _wd_pending() -> int:
    return int(lib.vmo_wd_pending)


def watch_for_deadlock(uffd_fd: int, timeout: float | None = None) -> None:
    """Watch ``uffd_fd`` (the userfaultfd of a window whose faulting mapping is in *this*
    process) for the in-process deadlock.

    A thread that holds the GIL and touches an absent mapped page (``ctypes.string_at``,
    numpy, a ``memoryview`` of the address: anything but `vmo.Mapping.read`/`write`, which
    release the GIL) waits for the fault handler, and the handler waits for the GIL: both
    would hang forever, deaf to Ctrl-C. Nothing in Python can run then, so a thread in C
    (started once per process, never taking the GIL) watches these descriptors: a fault left
    unread for ``timeout`` seconds (default `DEADLOCK_TIMEOUT`) is read there, reported on
    stderr with what to do instead, and failed: the access gets SIGBUS, as any failed fault
    does (a plain load then kills the process, which beats a hang). The handler learns of it
    when it runs again. A handler legitimately blocked that long (a hierarchy lock held for
    seconds by another thread) would see its fault failed too: raise the timeout then."""
    seconds = DEADLOCK_TIMEOUT if timeout is None else timeout
    rc = lib.vmo_wd_start(int(seconds * 1e9))
    if rc != 0:
        raise OSError(-rc, f"cannot start the deadlock watchdog: {os.strerror(-rc)}")
    # Past VMO_WD_MAX_FDS (1024) local windows at once the rest go unwatched: a hang there
    # is the old behaviour, better than refusing the mapping.
    lib.vmo_wd_add(uffd_fd)


def set_deadlock_timeout(seconds: float) -> None:
    """Change the deadlock watchdog's timeout (seconds > 0), for every window."""
    global DEADLOCK_TIMEOUT
    if not seconds > 0:
        raise ValueError("the deadlock timeout must be positive")
    DEADLOCK_TIMEOUT = float(seconds)
    lib.vmo_wd_set_timeout(int(seconds * 1e9))


def unavailable_reason() -> str | None:
    """Why mappings cannot work here (no userfaultfd, or a kernel without the features), or
    None."""
    try:
        api = uffd.kernel_api()
    except OSError as exc:
        return f"userfaultfd is unavailable (needs root or access to /dev/userfaultfd): {exc}"
    lacking = uffd.Feature(int(REQUIRED_FEATURES) & ~int(api.supported))
    if lacking:
        return f"the kernel's userfaultfd lacks {lacking!r}"
    return None


class Window:
    """The window memfd of one mapping, its alias here, and its per-page state.

    ``address`` is where the faulting mapping lives in the process that registered it (this
    one for local mappings), ``uffd_fd`` that process's userfaultfd, owned by this object once
    `attach` is called. Page arguments are window page indices.
    """

    def __init__(self, length: int, name: str = "vmo-window") -> None:
        assert length > 0 and length % PAGE_SIZE == 0
        self.length = length
        self.npages = length // PAGE_SIZE
        self.fd = uffd.memfd_create(name)
        try:
            os.ftruncate(self.fd, length)
            self._alias = mmap.mmap(self.fd, length, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.alias = memoryview(self._alias)
        self.address = 0
        self.uffd_fd = -1
        self.local_address = 0  # the faulting mapping, when it is in this process
        self.state = bytearray(self.npages)
        self.frames = array("q", bytes(8 * self.npages))
        self.closed = False

    def __repr__(self) -> str:
        return f"<Window {self.npages} pages at {self.address:#x} uffd={self.uffd_fd}>"

    # -- set-up ---------------------------------------------------------------------------------

    def map_here(self, prot: int) -> int:
        """Map ``W`` in this process (the faulting mapping of a local mapping); returns the
        address. Not registered yet: see `register_here`."""
        self.local_address = uffd.mmap(0, self.length, prot, uffd.MAP_SHARED, self.fd)
        # A child forked from this process (a subprocess before its exec) does not inherit
        # it: its copy would bypass the fault handler.
        uffd.madvise(self.local_address, self.length, uffd.MADV_DONTFORK)
        return self.local_address

    def register_here(self) -> None:
        """Create this process's userfaultfd for the local faulting mapping and register it."""
        u = uffd.Userfaultfd()
        try:
            u.api(required=REQUIRED_FEATURES)
            u.register(self.local_address, self.length, missing=True, wp=True)
        except BaseException:
            u.close()
            raise
        fd = u.fileno()
        u._fd = -1  # ownership moves to this window
        self.attach(self.local_address, fd)

    def attach(self, address: int, uffd_fd: int) -> None:
        """Adopt the userfaultfd ``uffd_fd`` on which ``[address, address + length)`` of some
        process is registered (missing and write-protect) over a mapping of ``W``."""
        self.address = address
        self.uffd_fd = uffd_fd

    # -- memory operations (callers serialise them per window) ----------------------------------

    def fill(self, page: int, src: int, count: int, wp: bool) -> None:
        """``UFFDIO_COPY`` ``count`` pages from address ``src`` into the absent pages from
        ``page``, write-protected with ``wp``, waking the threads waiting on them.

        The caller believes the pages absent. One found present anyway (nothing should put it
        there, but its content would be unknown) is punched out and filled again.

        Errors: OSError (e.g. ESRCH: the registering process has exited); PageExistsError if
        a page stays present after the punch (a poison marker)."""
        fd = self.uffd_fd
        dst = self.address + page * PAGE_SIZE
        end = dst + count * PAGE_SIZE
        mode = _COPY_WP if wp else 0
        punched = -1
        while dst < end:
            done = _uffd_copy(fd, dst, src, end - dst, mode)
            if done == end - dst:
                return
            if done > 0:
                done -= done % PAGE_SIZE
                dst += done
                src += done
                continue
            err = -done
            if err == errno.EEXIST and punched != dst:
                punched = dst
                self.punch((dst - self.address) // PAGE_SIZE, 1)
                continue
            if err == errno.EEXIST:
                raise uffd.PageExistsError("UFFDIO_COPY", dst)
            if err == errno.EAGAIN:
                continue
            raise OSError(err, f"UFFDIO_COPY at {dst:#x}: {os.strerror(err)}")

    def protect(self, page: int, count: int, wp: bool, *, dontwake: bool = False,
                shared: bool = True) -> None:
        """Set or clear write protection of ``count`` pages (clearing wakes stores waiting on
        them unless ``dontwake``). Errors: OSError. (``shared`` is accepted for compatibility:
        no argument struct is shared any more.)"""
        err = _uffd_writeprotect(self.uffd_fd, self.address + page * PAGE_SIZE,
                                 count * PAGE_SIZE, (_WP_SET if wp else 0)
                                 | (_WP_DONTWAKE if dontwake else 0))
        if err:
            raise OSError(-err, f"UFFDIO_WRITEPROTECT at page {page}: {os.strerror(-err)}")

    def punch(self, page: int, count: int) -> None:
        """Drop ``count`` pages from ``W`` and from every mapping of it."""
        uffd.fallocate_punch_hole(self.fd, page * PAGE_SIZE, count * PAGE_SIZE)

    def wake(self, page: int, count: int = 1) -> None:
        """Wake threads waiting on faults in ``count`` pages (they retry the access)."""
        arg = ffi.new("struct uffdio_range *")
        arg.start = self.address + page * PAGE_SIZE
        arg.len = count * PAGE_SIZE
        if lib.vmo_ioctl_ptr(self.uffd_fd, lib.UFFDIO_WAKE, arg) != 0:
            err = ffi.errno
            raise OSError(err, f"UFFDIO_WAKE at page {page}: {os.strerror(err)}")

    def poison(self, page: int, count: int = 1) -> None:
        """Make accesses to ``count`` absent pages fail with SIGBUS, waking their waiters.

        Clears write protection first: a punched, write-protected page leaves a marker that
        ``UFFDIO_POISON`` will not overwrite. A page that is present is skipped."""
        self.protect(page, count, False, dontwake=True, shared=False)
        arg = ffi.new("struct uffdio_poison *")
        start = self.address + page * PAGE_SIZE
        end = start + count * PAGE_SIZE
        while start < end:
            arg.range.start = start
            arg.range.len = end - start
            arg.mode = 0
            arg.updated = 0
            if lib.vmo_ioctl_ptr(self.uffd_fd, lib.UFFDIO_POISON, arg) == 0:
                return
            err = ffi.errno
            done = int(arg.updated)
            if done > 0:
                start += done - done % PAGE_SIZE
            elif err == errno.EEXIST:
                start += PAGE_SIZE
            elif err != errno.EAGAIN:
                raise OSError(err, f"UFFDIO_POISON at {start:#x}: {os.strerror(err)}")

    def kill(self) -> None:
        """The mapping is gone: every later access to the faulting mapping gets SIGBUS, and
        threads waiting on faults wake up to it. Best effort (the registering process may
        have exited)."""
        if self.uffd_fd < 0:
            return
        with contextlib.suppress(OSError):
            self.punch(0, self.npages)
        try:
            self.poison(0, self.npages)
        except OSError:
            with contextlib.suppress(OSError):
                self.wake(0, self.npages)

    def kill_page(self, page: int) -> None:
        """As `kill`, for one page (a fault that raced with the teardown)."""
        try:
            self.punch(page, 1)
            self.poison(page, 1)
        except OSError:
            with contextlib.suppress(OSError):
                self.wake(page, 1)

    def clear_poison_here(self, page: int) -> None:
        """Remove the poison of one page of the local faulting mapping (``MADV_DONTNEED``):
        the next access faults again."""
        if self.local_address:
            uffd.madvise(self.local_address + page * PAGE_SIZE, PAGE_SIZE, uffd.MADV_DONTNEED)

    # -- teardown -------------------------------------------------------------------------------

    def unmap_here(self) -> None:
        """Unmap the local faulting mapping. Safety: no thread may be using it."""
        if self.local_address:
            addr, self.local_address = self.local_address, 0
            uffd.munmap(addr, self.length)

    def close(self) -> None:
        """Release the alias and ``W`` (the userfaultfd is closed by the handler)."""
        if self.closed:
            return
        self.closed = True
        self.alias.release()
        with contextlib.suppress(BufferError):  # a view still alive somewhere: freed with it
            self._alias.close()
        os.close(self.fd)


class FaultSink(Protocol):
    """What the handler calls with the faults of one userfaultfd."""

    def on_fault(self, address: int, write: int, wp: int) -> None:
        """A fault at ``address``: ``write`` (non-zero) for a store, ``wp`` for a store to a
        write-protected page."""

    def on_uffd_error(self, err: int) -> None: ...

    def on_watchdog_failure(self, address: int) -> None:
        """The deadlock watchdog failed the fault at ``address`` (poisoned its page)."""

    def on_range_removed(self, start: int, end: int, unmapped: bool) -> None:
        """The faulting process took ``[start, end)`` away: ``munmap`` (``unmapped``) or
        ``madvise(MADV_REMOVE/MADV_DONTNEED)``."""


class FaultHandler:
    """The thread that reads every registered userfaultfd and dispatches its faults.

    `add`/`remove` userfaultfds, `watch`/`unwatch` other descriptors (a callback runs on the
    handler thread when one polls readable or hung up), `defer` blocking work to a worker.
    All of these may be called from any thread, the handler's own included; changes take
    effect before the handler polls again. The handler closes the userfaultfds it is given.

    ``busy_poll`` (seconds): after serving faults from a descriptor, keep reading it without
    sleeping for that long; a thread that touches memory sequentially faults again within
    microseconds, and catching that without a sleep and wake-up of the handler roughly doubles
    the faults served per second. 0 disables it.
    """

    def __init__(self, name: str = "vmo-fault-handler", *, busy_poll: float = 50e-6) -> None:
        self.name = name
        self.busy_poll = busy_poll
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        self._sinks: dict[int, FaultSink] = {}
        self._watches: dict[int, Callable[[int, int], None]] = {}
        self._ops: collections.deque[tuple[str, int, Any]] = collections.deque()
        self._stopping = False
        self._stopped = threading.Event()
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        #: Exceptions raised by sinks, watch callbacks or deferred work (the most recent 32).
        self.errors: collections.deque[str] = collections.deque(maxlen=32)
        self.events_read = 0
        self.wakeups = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<FaultHandler {self.name} {len(self._sinks)} uffds>"

    @property
    def on_handler_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- control (any thread) -------------------------------------------------------------------

    def _post(self, op: str, fd: int, arg: Any = None) -> None:
        if self.on_handler_thread:
            self._apply(op, fd, arg)
            return
        if self._stopped.is_set():
            # Nobody polls any more: apply here (only closes remain to be done).
            self._apply(op, fd, arg)
            return
        self._ops.append((op, fd, arg))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def add(self, uffd_fd: int, sink: FaultSink) -> None:
        """Serve the faults of ``uffd_fd`` with ``sink`` (the handler now owns the fd)."""
        self._post("add", uffd_fd, sink)

    def remove(self, uffd_fd: int, then: Callable[[], None] | None = None) -> None:
        """Stop serving ``uffd_fd``, close it, then call ``then()`` on the handler thread.
        Closing wakes every thread still waiting on a fault in its ranges. Once ``then`` runs,
        no sink call for ``uffd_fd`` is in progress or will follow."""
        self._post("remove", uffd_fd, then)

    def watch(self, fd: int, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(fd, revents)`` on the handler thread when ``fd`` polls readable or
        hung up. The caller keeps owning ``fd``; `unwatch` it before closing it."""
        self._post("watch", fd, callback)

    def unwatch(self, fd: int) -> None:
        self._post("unwatch", fd)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the handler thread after the changes posted before it (e.g. close
        a watched descriptor once the handler no longer polls it)."""
        self._post("call", -1, fn)

    def defer(self, fn: Callable[[], None], name: str = "vmo-fault-worker") -> None:
        """Run ``fn`` on a worker thread (for faults that must wait for a page source)."""
        def run() -> None:
            try:
                fn()
            except BaseException:  # noqa: BLE001 - reported, never lost
                self.errors.append(traceback.format_exc())
            finally:
                with self._workers_lock:
                    self._workers.discard(t)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._workers_lock:
            self._workers.add(t)
        t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close every userfaultfd still registered. Deferred work is not
        waited for (it finds its mapping gone when it wakes)."""
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if not self.on_handler_thread:
            self._thread.join(timeout)
        self._stopped.set()
        while self._ops:
            op, fd, arg = self._ops.popleft()
            self._apply(op, fd, arg)
        for fd in list(self._sinks):
            self._apply("remove", fd, None)
        self._watches.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def join_workers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for deferred work; returns whether none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._workers_lock:
                workers = list(self._workers)
            if not workers:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            workers[0].join(remaining)

    # -- the thread -----------------------------------------------------------------------------

    def _apply(self, op: str, fd: int, arg: Any) -> None:
        if op == "add":
            self._sinks[fd] = arg
            self._register(fd, select.POLLIN)
        elif op == "remove":
            if self._sinks.pop(fd, None) is not None:
                self._unregister(fd)
                lib.vmo_wd_remove(fd)  # before the number can be reused
                with contextlib.suppress(OSError):
                    os.close(fd)
            if arg is not None:
                try:
                    arg()
                except BaseException:  # noqa: BLE001
                    self.errors.append(traceback.format_exc())
        elif op == "watch":
            self._watches[fd] = arg
            self._register(fd, select.POLLIN | select.POLLRDHUP)
        elif op == "unwatch" and self._watches.pop(fd, None) is not None:
            self._unregister(fd)
        elif op == "call":
            try:
                arg()
            except BaseException:  # noqa: BLE001
                self.errors.append(traceback.format_exc())

    def _register(self, fd: int, events: int) -> None:
        if not self._stopped.is_set():
            with contextlib.suppress(OSError, ValueError):
                self._poll.register(fd, events)

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poll.unregister(fd)

    def _drain_ops(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            pass
        while self._ops:
            op, fd, arg = self._ops.popleft()
            self._apply(op, fd, arg)

    def _run(self) -> None:
        buf = ffi.new("uint64_t[]", 2 * _READ_BATCH)  # see vmo_uffd_read_faults
        read_events = lib.vmo_uffd_read_faults_spin
        words = memoryview(ffi.buffer(buf)).cast("Q")
        sinks = self._sinks
        poll = self._poll.poll
        wake_r = self._wake_r
        try:
            while not self._stopping:
                ready = poll()
                self.wakeups += 1
                if _wd_pending():
                    self._take_watchdog_failures()
                for fd, revents in ready:
                    if fd == wake_r:
                        self._drain_ops()
                        continue
                    sink = sinks.get(fd)
                    if sink is not None:
                        self._serve(fd, sink, buf, words, read_events, revents)
                        continue
                    callback = self._watches.get(fd)
                    if callback is not None:
                        try:
                            callback(fd, revents)
                        except BaseException:  # noqa: BLE001
                            self.errors.append(traceback.format_exc())
                    elif revents & select.POLLNVAL:
                        self._unregister(fd)
                    if self._stopping:
                        break
        finally:
            self._stopped.set()

    def _serve(self, fd: int, sink: FaultSink, buf: Any, words: memoryview, read_events: Any,
               revents: int) -> None:
        if revents & (select.POLLERR | select.POLLNVAL) and not revents & select.POLLIN:
            # A userfaultfd reports POLLERR only when it is unusable (e.g. not blocking-safe).
            # It stays a sink (closed by `remove`) but is no longer polled.
            self._unregister(fd)
            self._notify_error(sink, errno.EBADF)
            return
        on_fault = sink.on_fault
        spin_ns = 0  # the first read finds the events poll reported
        while True:
            # After a batch, nothing pending: spin briefly (in C, without the GIL), the
            # faulting thread is probably about to fault again (see the class docstring).
            n = read_events(fd, buf, _READ_BATCH, spin_ns)
            if n < 0:
                err = ffi.errno
                if err != errno.EAGAIN:
                    self._unregister(fd)
                    self._notify_error(sink, err)
                return
            self.events_read += n
            for i in range(0, 2 * n, 2):
                head = words[i]  # event | flags << 8 (REMOVE/UNMAP: event | end << 8)
                try:
                    if head & 0xFF == _PAGEFAULT:
                        on_fault(words[i + 1], head & _FLAG_WRITE, head & _FLAG_WP)
                    elif head & 0xFF in (_REMOVE, _UNMAP):
                        sink.on_range_removed(words[i + 1], head >> 8,
                                              head & 0xFF == _UNMAP)
                except BaseException:  # noqa: BLE001 - the sink failed; keep serving
                    self.errors.append(traceback.format_exc())
            if self._sinks.get(fd) is not sink:
                return
            spin_ns = 0 if self._ops or self._stopping else int(self.busy_poll * 1e9)

    def _take_watchdog_failures(self) -> None:
        """Tell the sinks which faults the deadlock watchdog failed (see `watch_for_deadlock`)."""
        out = ffi.new("uint64_t[]", 2 * 64)
        while True:
            n = lib.vmo_wd_take(out, 64)
            if n <= 0:
                return
            for i in range(n):
                fd, address = int(out[2 * i]), int(out[2 * i + 1])
                self.errors.append(f"deadlock watchdog: failed the fault at {address:#x} "
                                   f"(userfaultfd {fd}) of a thread that held the GIL")
                sink = self._sinks.get(fd)
                if sink is None:
                    continue
                try:
                    sink.on_watchdog_failure(address)
                except BaseException:  # noqa: BLE001
                    self.errors.append(traceback.format_exc())

    def _notify_error(self, sink: FaultSink, err: int) -> None:
        try:
            sink.on_uffd_error(err)
        except BaseException:  # noqa: BLE001
            self.errors.append(traceback.format_exc())


__all__ = [
    "ABSENT",
    "DEADLOCK_TIMEOUT",
    "POISONED",
    "READ_ONLY",
    "REQUIRED_FEATURES",
    "WRITABLE",
    "FaultHandler",
    "FaultSink",
    "Window",
    "set_deadlock_timeout",
    "unavailable_reason",
    "watch_for_deadlock",
]
