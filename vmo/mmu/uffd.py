"""The userfaultfd and memory binding: a small Pythonic layer over ``vmo.mmu._uffd_cffi``.

The raw module is compiled by cffi in API mode from the system headers (see
``_uffd_build.py``); this module turns its calls into typed functions that raise
``OSError(errno, message)`` on failure, and decodes userfaultfd messages into frozen value
classes. It knows nothing of VMOs: it is the equivalent of crosvm's ``swap/src/userfaultfd.rs``.

Addresses are plain ``int``s. Nothing here checks that an address belongs to a mapping the
caller owns: that is the caller's safety contract, stated on each call that dereferences or
changes memory (as ``unsafe fn`` would in Rust). A wrong address corrupts or kills the process.

The GIL rule. A thread that touches a userfaultfd-registered page blocks in the kernel until a
handler resolves the fault. If that thread holds the GIL and the handler is a Python thread of
the same process, both wait forever. Every call into the compiled module releases the GIL, so
in-process accesses to registered memory must go through :func:`copy_to_address`,
:func:`copy_from_address`, the ``touch_*`` helpers or their ``*_checked`` variants, never
through a ``memoryview`` or ``ctypes`` load that runs with the GIL held.

Typical handler loop::

    with Userfaultfd() as uffd:
        uffd.api(Feature.THREAD_ID)
        uffd.register(addr, length, missing=True)
        while running:
            if uffd.wait(0.1):
                for event in uffd.read_events():
                    if isinstance(event, PageFault):
                        page = event.address & ~(PAGE_SIZE - 1)
                        try:
                            uffd.copy(page, source_of(page), PAGE_SIZE)
                        except PageExistsError:
                            pass   # another thread raced us, or the page was never missing
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import select
import signal
from typing import Any, Final, NoReturn, TypeAlias

import attrs

try:
    from vmo.mmu._uffd_cffi import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "vmo.mmu._uffd_cffi, the compiled userfaultfd binding, is missing or broken: "
        "build it with `pip install -e .` (or `python setup.py build_ext --inplace`) "
        f"from the repository root ({exc})"
    ) from exc

__all__ = [
    "MADV_DONTNEED",
    "MADV_POPULATE_READ",
    "MADV_POPULATE_WRITE",
    "MADV_REMOVE",
    "MADV_DONTFORK",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_FIXED_NOREPLACE",
    "MAP_NORESERVE",
    "MAP_POPULATE",
    "MAP_PRIVATE",
    "MAP_SHARED",
    "MFD_ALLOW_SEALING",
    "MFD_CLOEXEC",
    "MREMAP_DONTUNMAP",
    "MREMAP_FIXED",
    "MREMAP_MAYMOVE",
    "O_CLOEXEC",
    "O_NONBLOCK",
    "PAGE_SIZE",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "UFFD_USER_MODE_ONLY",
    "Api",
    "BytesLike",
    "Event",
    "Feature",
    "Fork",
    "Ioctl",
    "MemoryFault",
    "PageExistsError",
    "PageFault",
    "Remap",
    "Remove",
    "UnknownEvent",
    "Unmap",
    "Userfaultfd",
    "buffer_address",
    "copy_from_address",
    "copy_from_address_checked",
    "copy_from_address_into",
    "copy_to_address",
    "copy_to_address_checked",
    "fallocate_punch_hole",
    "kernel_api",
    "lseek_data",
    "lseek_hole",
    "madvise",
    "memfd_create",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "page_size",
    "touch_checked",
    "touch_read",
    "touch_write",
    "userfaultfd",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview

# ---- Constants (all from the headers, through the compiled module) ---------------------------

O_CLOEXEC: Final[int] = lib.O_CLOEXEC
O_NONBLOCK: Final[int] = lib.O_NONBLOCK
UFFD_USER_MODE_ONLY: Final[int] = lib.UFFD_USER_MODE_ONLY

PROT_NONE: Final[int] = lib.PROT_NONE
PROT_READ: Final[int] = lib.PROT_READ
PROT_WRITE: Final[int] = lib.PROT_WRITE
PROT_EXEC: Final[int] = lib.PROT_EXEC
MAP_SHARED: Final[int] = lib.MAP_SHARED
MAP_PRIVATE: Final[int] = lib.MAP_PRIVATE
MAP_FIXED: Final[int] = lib.MAP_FIXED
MAP_FIXED_NOREPLACE: Final[int] = lib.MAP_FIXED_NOREPLACE
MAP_ANONYMOUS: Final[int] = lib.MAP_ANONYMOUS
MAP_NORESERVE: Final[int] = lib.MAP_NORESERVE
MAP_POPULATE: Final[int] = lib.MAP_POPULATE
MADV_DONTNEED: Final[int] = lib.MADV_DONTNEED
MADV_REMOVE: Final[int] = lib.MADV_REMOVE
MADV_DONTFORK: Final[int] = lib.MADV_DONTFORK
MADV_POPULATE_READ: Final[int] = lib.MADV_POPULATE_READ
MADV_POPULATE_WRITE: Final[int] = lib.MADV_POPULATE_WRITE
MFD_CLOEXEC: Final[int] = lib.MFD_CLOEXEC
MFD_ALLOW_SEALING: Final[int] = lib.MFD_ALLOW_SEALING
MREMAP_MAYMOVE: Final[int] = lib.MREMAP_MAYMOVE
MREMAP_FIXED: Final[int] = lib.MREMAP_FIXED
MREMAP_DONTUNMAP: Final[int] = lib.MREMAP_DONTUNMAP


def page_size() -> int:
    """The base page size of this machine (``sysconf(_SC_PAGESIZE)``)."""
    return int(lib.sysconf(lib._SC_PAGESIZE))


PAGE_SIZE: Final[int] = page_size()


class Feature(enum.IntFlag):
    """``UFFD_FEATURE_*`` bits of ``UFFDIO_API``. Unknown bits from newer kernels are kept."""

    PAGEFAULT_FLAG_WP = lib.UFFD_FEATURE_PAGEFAULT_FLAG_WP
    EVENT_FORK = lib.UFFD_FEATURE_EVENT_FORK
    EVENT_REMAP = lib.UFFD_FEATURE_EVENT_REMAP
    EVENT_REMOVE = lib.UFFD_FEATURE_EVENT_REMOVE
    MISSING_HUGETLBFS = lib.UFFD_FEATURE_MISSING_HUGETLBFS
    MISSING_SHMEM = lib.UFFD_FEATURE_MISSING_SHMEM
    EVENT_UNMAP = lib.UFFD_FEATURE_EVENT_UNMAP
    SIGBUS = lib.UFFD_FEATURE_SIGBUS
    THREAD_ID = lib.UFFD_FEATURE_THREAD_ID
    MINOR_HUGETLBFS = lib.UFFD_FEATURE_MINOR_HUGETLBFS
    MINOR_SHMEM = lib.UFFD_FEATURE_MINOR_SHMEM
    EXACT_ADDRESS = lib.UFFD_FEATURE_EXACT_ADDRESS
    WP_HUGETLBFS_SHMEM = lib.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    WP_UNPOPULATED = lib.UFFD_FEATURE_WP_UNPOPULATED
    POISON = lib.UFFD_FEATURE_POISON
    WP_ASYNC = lib.UFFD_FEATURE_WP_ASYNC
    MOVE = lib.UFFD_FEATURE_MOVE


class Ioctl(enum.IntFlag):
    """Bits of the ``ioctls`` masks returned by ``UFFDIO_API`` and ``UFFDIO_REGISTER``."""

    REGISTER = 1 << lib._UFFDIO_REGISTER
    UNREGISTER = 1 << lib._UFFDIO_UNREGISTER
    WAKE = 1 << lib._UFFDIO_WAKE
    COPY = 1 << lib._UFFDIO_COPY
    ZEROPAGE = 1 << lib._UFFDIO_ZEROPAGE
    MOVE = 1 << lib._UFFDIO_MOVE
    WRITEPROTECT = 1 << lib._UFFDIO_WRITEPROTECT
    CONTINUE = 1 << lib._UFFDIO_CONTINUE
    POISON = 1 << lib._UFFDIO_POISON
    API = 1 << lib._UFFDIO_API


# ---- Errors -----------------------------------------------------------------------------------


class PageExistsError(FileExistsError):
    """``EEXIST`` from ``UFFDIO_COPY``/``ZEROPAGE``/``CONTINUE``/``MOVE``: the destination page is
    already present. Fault handlers usually treat this as success (another resolver won a race,
    or the page was never missing). ``address`` is the start of the range that was asked for."""

    def __init__(self, op: str, address: int) -> None:
        super().__init__(errno.EEXIST, f"{op} at {address:#x}: page already present")
        self.address = address


class MemoryFault(Exception):
    """A guarded access (``*_checked`` helpers) took SIGBUS or SIGSEGV at ``address``.

    ``signo`` is the signal number. Nothing is known about how much of the access completed
    before the fault, except that every byte before ``address`` in copy order may have been
    transferred."""

    def __init__(self, address: int, signo: int) -> None:
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        super().__init__(f"{name} at {address:#x}")
        self.address = address
        self.signo = signo


def _fail(what: str, err: int | None = None) -> NoReturn:
    """Raise the ``OSError`` subclass for ``err`` (default: the errno of the last cffi call)."""
    code = ffi.errno if err is None else err
    raise OSError(code, f"{what}: {os.strerror(code)}")


def _ptr(address: int) -> object:
    return ffi.cast("void *", address)


def _addr(pointer: object) -> int:
    return int(ffi.cast("uintptr_t", pointer))


# ---- Creating a userfaultfd ---------------------------------------------------------------------

# errnos that mean "this way of creating a userfaultfd is not available here; try the other one".
_UNAVAILABLE = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS, errno.ENOENT, errno.ENODEV})


def _userfaultfd_syscall(flags: int) -> int:
    fd = lib.vmo_userfaultfd(flags)
    if fd < 0:
        _fail("userfaultfd(2)")
    return int(fd)


def _userfaultfd_device(flags: int) -> int:
    dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    try:
        fd = lib.vmo_ioctl_int(dev, lib.USERFAULTFD_IOC_NEW, flags)
        if fd < 0:
            _fail("ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)")
        return int(fd)
    finally:
        os.close(dev)


def userfaultfd(flags: int = O_CLOEXEC | O_NONBLOCK, *, prefer_device: bool = False) -> int:
    """Create a userfaultfd and return its raw descriptor (the caller owns it).

    Args:
        flags: ``O_CLOEXEC``, ``O_NONBLOCK`` and/or ``UFFD_USER_MODE_ONLY``.
        prefer_device: try ``/dev/userfaultfd`` (``USERFAULTFD_IOC_NEW``) before the system call.

    The system call is refused (``EPERM``) to unprivileged callers when
    ``vm.unprivileged_userfaultfd`` is 0, while ``/dev/userfaultfd`` is governed by its file
    permissions; whichever is tried first, the other is tried if the first is unavailable.

    Errors:
        OSError: from the first method if both fail (the second's error is chained).
    """
    methods = [_userfaultfd_syscall, _userfaultfd_device]
    if prefer_device:
        methods.reverse()
    try:
        return methods[0](flags)
    except OSError as first:
        if first.errno not in _UNAVAILABLE:
            raise
        try:
            return methods[1](flags)
        except OSError as second:
            raise first from second


# ---- Values: API handshake and events --------------------------------------------------------


@attrs.define(frozen=True)
class Api:
    """Result of the ``UFFDIO_API`` handshake.

    ``features`` is what this descriptor has enabled; ``supported`` what the kernel offers;
    ``ioctls`` the descriptor-wide ioctls (range ioctls are reported by ``register``)."""

    features: Feature
    supported: Feature
    ioctls: Ioctl


@attrs.define(frozen=True)
class PageFault:
    """``UFFD_EVENT_PAGEFAULT``: a thread is blocked on ``address`` until the range is resolved
    (copy, zeropage, continue, writeprotect-clear or wake). ``address`` is page-aligned unless
    ``Feature.EXACT_ADDRESS`` was enabled; ``thread_id`` is the kernel thread id of the faulting
    thread with ``Feature.THREAD_ID`` and 0 otherwise."""

    address: int
    flags: int
    thread_id: int = 0

    @property
    def write(self) -> bool:
        """The access was a store."""
        return bool(self.flags & lib.UFFD_PAGEFAULT_FLAG_WRITE)

    @property
    def wp(self) -> bool:
        """A store hit a write-protected page (a write-protect fault, not a missing one)."""
        return bool(self.flags & lib.UFFD_PAGEFAULT_FLAG_WP)

    @property
    def minor(self) -> bool:
        """A minor fault: the page is in the page cache but not mapped here."""
        return bool(self.flags & lib.UFFD_PAGEFAULT_FLAG_MINOR)


@attrs.define(frozen=True)
class Fork:
    """``UFFD_EVENT_FORK``: the process forked; ``ufd`` is a new userfaultfd descriptor,
    installed in this process by the read and owned by the caller, for the child's copy of
    the registered ranges."""

    ufd: int


@attrs.define(frozen=True)
class Remap:
    """``UFFD_EVENT_REMAP``: ``mremap`` moved ``len`` bytes of a registered range."""

    from_: int
    to: int
    len: int


@attrs.define(frozen=True)
class Remove:
    """``UFFD_EVENT_REMOVE``: ``madvise(MADV_DONTNEED/MADV_REMOVE)`` dropped ``[start, end)``."""

    start: int
    end: int


@attrs.define(frozen=True)
class Unmap:
    """``UFFD_EVENT_UNMAP``: ``munmap`` (or a shrinking ``mremap``) removed ``[start, end)``."""

    start: int
    end: int


@attrs.define(frozen=True)
class UnknownEvent:
    """An event code this binding does not know, with the raw words of its argument."""

    event: int
    args: tuple[int, int, int]


Event: TypeAlias = PageFault | Fork | Remap | Remove | Unmap | UnknownEvent


def _decode(e: Any) -> Event:
    """Turn one ``struct vmo_uffd_event`` (cdata) into its value class."""
    code = int(e.event)
    a0, a1, a2 = int(e.arg0), int(e.arg1), int(e.arg2)
    if code == lib.UFFD_EVENT_PAGEFAULT:
        return PageFault(address=a0, flags=int(e.flags), thread_id=a1)
    if code == lib.UFFD_EVENT_FORK:
        return Fork(ufd=a0)
    if code == lib.UFFD_EVENT_REMAP:
        return Remap(from_=a0, to=a1, len=a2)
    if code == lib.UFFD_EVENT_REMOVE:
        return Remove(start=a0, end=a1)
    if code == lib.UFFD_EVENT_UNMAP:
        return Unmap(start=a0, end=a1)
    return UnknownEvent(event=code, args=(a0, a1, a2))


# ---- The descriptor ---------------------------------------------------------------------------


@functools.cache
def kernel_api() -> Api:
    """What the running kernel offers, probed once with a throw-away descriptor.

    ``UFFDIO_API`` can be called only once per descriptor and reports the kernel's features
    only on success, so asking for "whatever is supported" needs this probe first.

    Errors:
        OSError: userfaultfd is unavailable (see :func:`userfaultfd`).
    """
    fd = userfaultfd()
    try:
        arg = ffi.new("struct uffdio_api *")
        arg.api = lib.UFFD_API
        arg.features = 0
        if lib.vmo_ioctl_ptr(fd, lib.UFFDIO_API, arg) != 0:
            _fail("UFFDIO_API (probe)")
        return Api(features=Feature(0), supported=Feature(arg.features), ioctls=Ioctl(arg.ioctls))
    finally:
        os.close(fd)


class Userfaultfd:
    """Owner of one userfaultfd descriptor.

    Call :meth:`api` once before anything else. The descriptor is closed by :meth:`close`, by
    leaving a ``with`` block, or when the object is collected. Closing wakes every thread
    blocked on a fault in its ranges (they retry the access as if the range were not
    registered) and unregisters the ranges.

    Thread safety: the ioctls may be issued from any thread concurrently. Do not close the
    descriptor while another thread polls or reads it: stop that thread first.
    """

    def __init__(self, flags: int = O_CLOEXEC | O_NONBLOCK, *, fd: int | None = None) -> None:
        """Create a new userfaultfd with ``flags`` (see :func:`userfaultfd`), or adopt ``fd``
        (e.g. from a :class:`Fork` event or a unix socket), which this object then owns."""
        self._fd = userfaultfd(flags) if fd is None else fd

    @classmethod
    def from_fd(cls, fd: int) -> Userfaultfd:
        """Adopt an existing userfaultfd descriptor; the new object owns and will close it."""
        return cls(fd=fd)

    # -- descriptor lifetime

    def fileno(self) -> int:
        """The raw descriptor, for ``select``/``poll``/``selectors``. Raises ``ValueError`` if
        closed."""
        if self._fd < 0:
            raise ValueError("I/O operation on closed userfaultfd")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Userfaultfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"<Userfaultfd fd={self._fd}>"

    def _ioctl(self, request: int, arg: object) -> int:
        return int(lib.vmo_ioctl_ptr(self.fileno(), request, arg))

    # -- handshake and registration

    def api(self, features: int = 0, *, required: int = 0) -> Api:
        """Negotiate the API (``UFFDIO_API``); must be the first call, and only once.

        Args:
            features: features wanted if the kernel has them (silently dropped otherwise).
            required: features that must be enabled.

        Returns:
            The enabled features (``features | required`` that the kernel supports, plus
            ``WP_UNPOPULATED`` which the kernel implies with ``WP_ASYNC``), the kernel's full
            feature set, and the descriptor-wide ioctls.

        Errors:
            OSError(EINVAL): a ``required`` feature is not supported, or ``api`` was already
                called on this descriptor.
            OSError(EPERM): ``EVENT_FORK`` without ``CAP_SYS_PTRACE``.
        """
        # Plain ints: `~` on an IntFlag only inverts the bits the enum knows.
        supported = int(kernel_api().supported)
        lacking = int(required) & ~supported
        if lacking:
            raise OSError(
                errno.EINVAL, f"UFFDIO_API: kernel lacks required features {Feature(lacking)!r}"
            )
        want = (int(features) | int(required)) & supported
        arg = ffi.new("struct uffdio_api *")
        arg.api = lib.UFFD_API
        arg.features = want
        if self._ioctl(lib.UFFDIO_API, arg) != 0:
            _fail("UFFDIO_API")
        if want & Feature.WP_ASYNC:
            want |= Feature.WP_UNPOPULATED
        return Api(
            features=Feature(want), supported=Feature(arg.features), ioctls=Ioctl(arg.ioctls)
        )

    def register(
        self,
        address: int,
        length: int,
        *,
        missing: bool = True,
        wp: bool = False,
        minor: bool = False,
    ) -> Ioctl:
        """Register ``[address, address + length)`` (page-aligned) for faults
        (``UFFDIO_REGISTER``).

        Args:
            missing: report accesses to pages that are not present.
            wp: report stores to pages write-protected through this descriptor.
            minor: report accesses to pages present in the page cache but not mapped
                (shmem/hugetlbfs; needs ``Feature.MINOR_SHMEM``).

        Returns:
            The range ioctls available on the range (``Ioctl.COPY``, ``Ioctl.WRITEPROTECT``...).

        Errors:
            OSError(EINVAL): unaligned range, no mode, or a mode the memory type does not
                support. OSError(EBUSY): the range is registered with another userfaultfd.
            OSError(ENOMEM): the range is not fully mapped.

        Safety: the range's owner must expect its accesses to block until this descriptor's
        reader resolves them; see the GIL rule in the module docstring.
        """
        mode = 0
        if missing:
            mode |= lib.UFFDIO_REGISTER_MODE_MISSING
        if wp:
            mode |= lib.UFFDIO_REGISTER_MODE_WP
        if minor:
            mode |= lib.UFFDIO_REGISTER_MODE_MINOR
        arg = ffi.new("struct uffdio_register *")
        arg.range.start = address
        arg.range.len = length
        arg.mode = mode
        if self._ioctl(lib.UFFDIO_REGISTER, arg) != 0:
            _fail(f"UFFDIO_REGISTER [{address:#x}, +{length:#x})")
        return Ioctl(arg.ioctls)

    def unregister(self, address: int, length: int) -> None:
        """Unregister a range (``UFFDIO_UNREGISTER``), waking threads blocked in it.

        Errors: OSError(EINVAL) for an unaligned range, OSError(ENOMEM) if it is not mapped.
        """
        arg = ffi.new("struct uffdio_range *")
        arg.start = address
        arg.len = length
        if self._ioctl(lib.UFFDIO_UNREGISTER, arg) != 0:
            _fail(f"UFFDIO_UNREGISTER [{address:#x}, +{length:#x})")

    # -- resolving faults

    @staticmethod
    def _partial(op: str, address: int, err: int, done: int) -> int:
        """Shared error policy of the ioctls that fill pages (as crosvm's userfaultfd.rs).

        ``EAGAIN`` with a positive count is a partial success: return the count and let the
        caller continue after it. ``EEXIST`` becomes :class:`PageExistsError`."""
        if err == errno.EAGAIN and done > 0:
            return done
        if err == errno.EEXIST:
            raise PageExistsError(op, address)
        _fail(f"{op} at {address:#x}", err)

    def copy(
        self, dst: int, src: int, length: int, *, wp: bool = False, dontwake: bool = False
    ) -> int:
        """Atomically fill missing pages at ``dst`` with ``length`` bytes from ``src``
        (``UFFDIO_COPY``) and wake the threads waiting on them.

        Args:
            dst: page-aligned start of a registered (missing mode) range.
            src: any readable address of this process, ``length`` bytes.
            wp: map the pages write-protected (the range must be registered with ``wp``).
            dontwake: do not wake waiters (wake them later with :meth:`wake`).

        Returns:
            The number of bytes copied: ``length``, or less after a partial copy (the kernel
            stopped early, e.g. at a page that already exists); continue from there.

        Errors:
            PageExistsError: the first page of ``dst`` is already present.
            BlockingIOError (EAGAIN, nothing copied): the address space is changing (a
                non-cooperative event such as REMOVE or UNMAP is pending): read the events
                and retry.
            OSError(ENOENT): ``dst`` is not (any more) a registered range; OSError(ESRCH): the
                registering process has exited; OSError(EINVAL): unaligned arguments.

        Safety: ``src`` must be readable for ``length`` bytes.
        """
        arg = ffi.new("struct uffdio_copy *")
        arg.dst = dst
        arg.src = src
        arg.len = length
        arg.mode = (lib.UFFDIO_COPY_MODE_WP if wp else 0) | (
            lib.UFFDIO_COPY_MODE_DONTWAKE if dontwake else 0
        )
        if self._ioctl(lib.UFFDIO_COPY, arg) == 0:
            return int(arg.copy)
        return self._partial("UFFDIO_COPY", dst, ffi.errno, int(arg.copy))

    def copy_buffer(
        self, dst: int, data: BytesLike, *, wp: bool = False, dontwake: bool = False
    ) -> int:
        """:meth:`copy` from a Python buffer (``len(data)`` bytes, a multiple of the page
        size), which is kept alive for the duration of the call. Returns and raises as
        :meth:`copy`."""
        src = ffi.from_buffer(data)
        return self.copy(dst, _addr(src), len(src), wp=wp, dontwake=dontwake)

    def zeropage(self, address: int, length: int, *, dontwake: bool = False) -> int:
        """Map zero pages over the missing pages of ``[address, address + length)``
        (``UFFDIO_ZEROPAGE``). Returns and raises as :meth:`copy`. Not available for
        write-protect-registered shmem ranges (check ``register``'s ``Ioctl.ZEROPAGE``)."""
        arg = ffi.new("struct uffdio_zeropage *")
        arg.range.start = address
        arg.range.len = length
        arg.mode = lib.UFFDIO_ZEROPAGE_MODE_DONTWAKE if dontwake else 0
        if self._ioctl(lib.UFFDIO_ZEROPAGE, arg) == 0:
            return int(arg.zeropage)
        return self._partial("UFFDIO_ZEROPAGE", address, ffi.errno, int(arg.zeropage))

    def writeprotect(self, address: int, length: int, wp: bool, *, dontwake: bool = False) -> None:
        """Set (``wp=True``) or clear write protection on a range registered with ``wp``
        (``UFFDIO_WRITEPROTECT``). Clearing wakes the threads blocked on write-protect faults
        in the range unless ``dontwake``.

        Errors: OSError(ENOENT) if the range is not registered for write-protect; OSError(EAGAIN)
        while the address space is changing; OSError(EINVAL) for bad alignment or mode.
        """
        arg = ffi.new("struct uffdio_writeprotect *")
        arg.range.start = address
        arg.range.len = length
        arg.mode = (lib.UFFDIO_WRITEPROTECT_MODE_WP if wp else 0) | (
            lib.UFFDIO_WRITEPROTECT_MODE_DONTWAKE if dontwake else 0
        )
        if self._ioctl(lib.UFFDIO_WRITEPROTECT, arg) != 0:
            _fail(f"UFFDIO_WRITEPROTECT at {address:#x}")

    def continue_(
        self, address: int, length: int, *, wp: bool = False, dontwake: bool = False
    ) -> int:
        """Resolve minor faults by mapping the page-cache pages already there
        (``UFFDIO_CONTINUE``), write-protected with ``wp``. Returns and raises as
        :meth:`copy` (``PageExistsError`` if a page is already mapped)."""
        arg = ffi.new("struct uffdio_continue *")
        arg.range.start = address
        arg.range.len = length
        arg.mode = (lib.UFFDIO_CONTINUE_MODE_WP if wp else 0) | (
            lib.UFFDIO_CONTINUE_MODE_DONTWAKE if dontwake else 0
        )
        if self._ioctl(lib.UFFDIO_CONTINUE, arg) == 0:
            return int(arg.mapped)
        return self._partial("UFFDIO_CONTINUE", address, ffi.errno, int(arg.mapped))

    def move(
        self,
        dst: int,
        src: int,
        length: int,
        *,
        dontwake: bool = False,
        allow_src_holes: bool = False,
    ) -> int:
        """Move the pages at ``src`` to the missing pages at ``dst`` without copying
        (``UFFDIO_MOVE``, needs ``Feature.MOVE``; private anonymous memory only). ``src``
        becomes missing. Returns and raises as :meth:`copy`; OSError(ENOENT) if a source page
        is missing and not ``allow_src_holes``, OSError(EBUSY) if a source page is shared.

        Safety: ``src`` must be anonymous memory the caller may take pages away from."""
        arg = ffi.new("struct uffdio_move *")
        arg.dst = dst
        arg.src = src
        arg.len = length
        arg.mode = (lib.UFFDIO_MOVE_MODE_DONTWAKE if dontwake else 0) | (
            lib.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES if allow_src_holes else 0
        )
        if self._ioctl(lib.UFFDIO_MOVE, arg) == 0:
            return int(arg.move)
        return self._partial("UFFDIO_MOVE", dst, ffi.errno, int(arg.move))

    def poison(self, address: int, length: int, *, dontwake: bool = False) -> int:
        """Install poison markers on missing pages (``UFFDIO_POISON``, needs
        ``Feature.POISON``): later accesses get SIGBUS as if the memory had failed. Returns and
        raises as :meth:`copy`."""
        arg = ffi.new("struct uffdio_poison *")
        arg.range.start = address
        arg.range.len = length
        arg.mode = lib.UFFDIO_POISON_MODE_DONTWAKE if dontwake else 0
        if self._ioctl(lib.UFFDIO_POISON, arg) == 0:
            return int(arg.updated)
        return self._partial("UFFDIO_POISON", address, ffi.errno, int(arg.updated))

    def wake(self, address: int, length: int) -> None:
        """Wake the threads blocked on faults in a range (``UFFDIO_WAKE``), after ``dontwake``
        resolutions. A woken thread whose page is still missing faults again."""
        arg = ffi.new("struct uffdio_range *")
        arg.start = address
        arg.len = length
        if self._ioctl(lib.UFFDIO_WAKE, arg) != 0:
            _fail(f"UFFDIO_WAKE at {address:#x}")

    # -- reading events

    def wait(self, timeout: float | None) -> bool:
        """Wait until events are readable or ``timeout`` seconds pass (``None``: forever).
        Returns whether events are readable. The GIL is released while waiting."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return bool(poller.poll(ms))

    def read_events(self, max_events: int = 16) -> list[Event]:
        """Read and decode up to ``max_events`` pending messages with one ``read(2)``.

        Returns an empty list if the descriptor is non-blocking and nothing is pending; a
        blocking descriptor waits (without the GIL). Reading a REMOVE, UNMAP or REMAP event
        releases the thread that caused it; reading a FORK event installs a new descriptor
        (``Fork.ufd``) that the caller must close or adopt.

        Errors: OSError, e.g. EINVAL if :meth:`api` was not called.
        """
        count = max(1, min(max_events, lib.VMO_UFFD_READ_MAX))
        buf = ffi.new("struct vmo_uffd_event[]", count)
        n = lib.vmo_uffd_read_events(self.fileno(), buf, count)
        if n < 0:
            err = ffi.errno
            if err == errno.EAGAIN:
                return []
            _fail("read(userfaultfd)", err)
        return [_decode(buf[i]) for i in range(n)]


# ---- Memory calls -------------------------------------------------------------------------------


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    """Create an anonymous shared-memory file (``memfd_create(2)``); returns its descriptor.
    Errors: OSError (EINVAL for bad flags or a name over 249 bytes, EMFILE, ENOMEM)."""
    fd = lib.memfd_create(name.encode(), flags)
    if fd < 0:
        _fail(f"memfd_create({name!r})")
    return int(fd)


def mmap(address: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """Map memory (``mmap(2)``) and return the mapping's address.

    Args: as ``mmap(2)``; ``address`` 0 lets the kernel choose. Errors: OSError.

    Safety: with ``MAP_FIXED`` any existing mapping at ``address`` is replaced, even memory the
    interpreter uses; prefer ``MAP_FIXED_NOREPLACE``. The caller owns the mapping and must
    ``munmap`` it.
    """
    p = lib.mmap(_ptr(address), length, prot, flags, fd, offset)
    if p == lib.MAP_FAILED:
        _fail(f"mmap(length={length:#x}, prot={prot:#x}, flags={flags:#x}, fd={fd})")
    return _addr(p)


def munmap(address: int, length: int) -> None:
    """Unmap ``[address, address + length)`` (``munmap(2)``). Errors: OSError(EINVAL).

    Safety: nothing may use the range afterwards (including live ``memoryview``s of it)."""
    if lib.munmap(_ptr(address), length) != 0:
        _fail(f"munmap({address:#x}, {length:#x})")


def mremap(address: int, old_size: int, new_size: int, flags: int = 0, new_address: int = 0) -> int:
    """Resize or move a mapping (``mremap(2)``); returns its (possibly new) address.
    Errors: OSError. Safety: as :func:`munmap` for the old range when the mapping moves."""
    out = ffi.new("void **")
    if lib.vmo_mremap(_ptr(address), old_size, new_size, flags, _ptr(new_address), out) != 0:
        _fail(f"mremap({address:#x}, {old_size:#x}, {new_size:#x})")
    return _addr(out[0])


def mprotect(address: int, length: int, prot: int) -> None:
    """Change protection of a range (``mprotect(2)``). Errors: OSError (EINVAL, ENOMEM, EACCES)."""
    if lib.mprotect(_ptr(address), length, prot) != 0:
        _fail(f"mprotect({address:#x}, {length:#x}, {prot:#x})")


def madvise(address: int, length: int, advice: int) -> None:
    """Give advice about a range (``madvise(2)``), e.g. ``MADV_DONTNEED`` to drop pages.

    On a range registered with a userfaultfd that enabled ``Feature.EVENT_REMOVE``,
    ``MADV_DONTNEED``/``MADV_REMOVE`` block until the handler reads the REMOVE event: do not
    call it from the handler thread. Errors: OSError."""
    if lib.madvise(_ptr(address), length, advice) != 0:
        _fail(f"madvise({address:#x}, {length:#x}, {advice})")


def fallocate_punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset + length)`` of a file without changing its size
    (``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``). Pages in the hole are unmapped from every
    mapping of the file, whose next accesses fault (and read zeros unless a userfaultfd
    resolves them). Errors: OSError (EOPNOTSUPP on file systems without holes)."""
    mode = lib.FALLOC_FL_PUNCH_HOLE | lib.FALLOC_FL_KEEP_SIZE
    if lib.fallocate(fd, mode, offset, length) != 0:
        _fail(f"fallocate(PUNCH_HOLE, {offset:#x}, {length:#x})")


def _lseek(fd: int, offset: int, whence: int, what: str) -> int | None:
    pos = lib.lseek(fd, offset, whence)
    if pos < 0:
        err = ffi.errno
        if err == errno.ENXIO:
            return None
        _fail(f"lseek({what}, {offset:#x})", err)
    return int(pos)


def lseek_data(fd: int, offset: int) -> int | None:
    """The first offset >= ``offset`` that holds data (``SEEK_DATA``), or ``None`` if there is
    none before the end of the file. Errors: OSError."""
    return _lseek(fd, offset, lib.SEEK_DATA, "SEEK_DATA")


def lseek_hole(fd: int, offset: int) -> int | None:
    """The first offset >= ``offset`` in a hole (``SEEK_HOLE``; the end of the file counts as
    a hole), or ``None`` if ``offset`` is at or past the end. Errors: OSError."""
    return _lseek(fd, offset, lib.SEEK_HOLE, "SEEK_HOLE")


def buffer_address(data: BytesLike) -> int:
    """The address of a contiguous buffer's bytes, e.g. to pass as ``src`` of
    :meth:`Userfaultfd.copy`.

    Safety: the address is valid only while ``data`` is alive and not resized (a
    ``bytearray`` that grows moves); keep a reference for as long as the address is used."""
    return _addr(ffi.from_buffer(data))


# ---- Copies that release the GIL ------------------------------------------------------------------


def copy_to_address(address: int, data: BytesLike) -> None:
    """Store ``data`` at ``address`` with a C ``memcpy`` that runs without the GIL.

    Safety: ``[address, address + len(data))`` must be mapped writable (or registered with a
    userfaultfd whose handler will make it so); a fault that is not resolved kills the process
    with SIGBUS/SIGSEGV: use :func:`copy_to_address_checked` when that can happen."""
    src = ffi.from_buffer(data)
    lib.vmo_copy(_ptr(address), src, len(src))


def copy_from_address_into(address: int, out: bytearray | memoryview) -> None:
    """Load ``len(out)`` bytes from ``address`` into the writable buffer ``out`` (no GIL).
    Safety: as :func:`copy_to_address`, for reading."""
    dst = ffi.from_buffer(out, require_writable=True)
    lib.vmo_copy(dst, _ptr(address), len(dst))


def copy_from_address(address: int, length: int) -> bytes:
    """Load ``length`` bytes from ``address`` (no GIL). Safety: as :func:`copy_to_address`."""
    out = bytearray(length)
    copy_from_address_into(address, out)
    return bytes(out)


def _check(rc: int, fault: Any, what: str) -> None:
    if rc == 0:
        return
    if rc < 0:
        _fail(f"{what}: installing the SIGBUS/SIGSEGV guard")
    raise MemoryFault(int(fault[0]), rc)


def copy_to_address_checked(address: int, data: BytesLike) -> None:
    """As :func:`copy_to_address`, but a SIGBUS or SIGSEGV during the copy raises
    :class:`MemoryFault` instead of killing the process (e.g. a ``Feature.SIGBUS`` range, a
    poisoned page, or a mapping past the end of a truncated file). Part of ``data`` may have
    been stored before the fault.

    Safety: ``[address, address + len(data))`` must not overlap memory whose corruption
    matters (a wild address inside the heap is not caught)."""
    src = ffi.from_buffer(data)
    fault = ffi.new("uintptr_t *")
    _check(lib.vmo_copy_checked(_ptr(address), src, len(src), fault), fault, "copy_to_address")


def copy_from_address_checked(address: int, length: int) -> bytes:
    """As :func:`copy_from_address`, raising :class:`MemoryFault` on SIGBUS/SIGSEGV."""
    out = bytearray(length)
    dst = ffi.from_buffer(out, require_writable=True)
    fault = ffi.new("uintptr_t *")
    _check(lib.vmo_copy_checked(dst, _ptr(address), length, fault), fault, "copy_from_address")
    return bytes(out)


def touch_read(address: int, length: int, stride: int = PAGE_SIZE) -> int:
    """Load one byte every ``stride`` bytes of ``[address, address + length)`` without the GIL
    (for benchmarks: each load of a missing page is one fault). Returns the sum of the bytes
    read. Safety: as :func:`copy_from_address`."""
    return int(lib.vmo_touch_read(_ptr(address), length, stride))


def touch_write(address: int, length: int, stride: int = PAGE_SIZE, value: int = 0) -> None:
    """Store ``value`` at one byte every ``stride`` bytes, without the GIL.
    Safety: as :func:`copy_to_address`."""
    lib.vmo_touch_write(_ptr(address), length, stride, value)


def touch_checked(
    address: int, length: int, stride: int = PAGE_SIZE, *, write: bool = False, value: int = 0
) -> None:
    """:func:`touch_read` or :func:`touch_write` under the SIGBUS/SIGSEGV guard: raises
    :class:`MemoryFault` at the first access that faults."""
    fault = ffi.new("uintptr_t *")
    rc = lib.vmo_touch_checked(_ptr(address), length, stride, int(write), value, fault)
    _check(rc, fault, "touch")
