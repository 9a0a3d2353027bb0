"""Workloads in other processes: mapped VMOs touched with plain loads and stores.

In this process a thread that touches a mapped page while holding the GIL would deadlock the
fault handler, which needs the GIL (see `vmo.mmu.mapping`). A *workload process* has no such limit:
it receives mappings of VMOs and touches them with ``memoryview``, numpy or ctypes, while the
fault handler here serves every fault. The protocol, and who owns what:

1. `Workload` spawns a fresh interpreter (``python -m vmo.mmu.workload``, through
   ``subprocess``: never a fork of this threaded process) connected by a unix socket.
2. `Workload.map` creates the mapping's window memfd here and sends it (``SCM_RIGHTS``). The
   workload maps it ``MAP_SHARED``, creates *its own* userfaultfd (a userfaultfd serves the
   address space of the process that created it), registers the mapping for missing and
   write-protect faults, and sends the userfaultfd back. It keeps no copy: from then on only
   this process reads its faults, and closing it here releases the workload's faults.
3. `Workload.run` calls ``target(ctx, *args)`` in the workload (``target`` is a module-level
   function, or ``"module:function"``; this process's ``sys.path`` is passed on). ``ctx`` is a
   `WorkloadContext`: ``ctx.mappings[name]`` is a `RemoteView` of each mapping. The return
   value (or the exception's traceback) comes back pickled.

Coherence is the same as for mappings here: a load in the workload returns what ``vmo.read``
returns, and a store is visible to ``vmo.read`` and every other mapping, because every page the
workload touches goes through the same fault handler, windows and reverse map.

Failures. A fault that cannot be resolved (a pager error, a discarded VMO, an offset past the
end of a shrunk VMO, an unmapped mapping) poisons the page: the workload's access gets SIGBUS,
which kills a process that touches memory with plain loads (as a real page fault that fails
would), or raises `vmo.mmu.uffd.MemoryFault` from the ``*_checked`` accessors of `RemoteView`.
In the workload a poisoned page stays poisoned (this process cannot clear it there).

Lifetime. A workload never outlives this process: it asks for a parent-death signal (it is
forked from one long-lived spawner thread, since the signal follows the forking thread) and a
thread in it exits when this end of the socket closes; interpreter exit closes the workloads
still open (``atexit``), and a `Workload` dropped without `Workload.close` is killed by its
finalizer. `Mapping.unmap` of a workload's mapping (or its VMO's close, or the kernel's) tells
the workload, which unmaps the window there and drops the name (see `RemoteView.close`).
Windows are ``MADV_DONTFORK`` in the workload: a child it forks gets SIGSEGV on access.
``madvise``/``munmap`` of a mapping in the workload: see `vmo.mmu.mapping` and docs/coherence.md.

A workload that dies -- SIGKILL in the middle of a fault included -- leaves the kernel intact:
this process watches its pidfd, and when it exits, unmaps its mappings as `Mapping.unmap` does
(pages checked out for writing are recalled from the window first, so stores made before the
death are in the VMO) and closes every descriptor.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import itertools
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmo.errors import Status, ZxError
from vmo.types import Perms

if TYPE_CHECKING:
    from vmo.kernel import Kernel
    from vmo.mmu.mapping import Mapping
    from vmo.vm_object import Vmo

_HEADER = struct.Struct("<I")
_MAX_FDS = 4


class RemoteError(Exception):
    """The workload's target raised; ``traceback`` is its formatted traceback."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback_text


class _Channel:
    """Length-prefixed pickled messages over a stream socket, with descriptors attached.

    A message that carries descriptors says how many (``nfds``); they are taken, in order,
    from the ancillary data received with the stream.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: list[int] = []
        self._send_lock = threading.Lock()

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        data = _HEADER.pack(len(body)) + body
        with self._send_lock:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                data = data[sent:]
            if data:
                self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], list[int]]:
        """The next message and its descriptors. Raises EOFError when the peer is gone and
        TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._buf) >= _HEADER.size:
                (n,) = _HEADER.unpack_from(self._buf)
                if len(self._buf) >= _HEADER.size + n:
                    body = bytes(self._buf[_HEADER.size: _HEADER.size + n])
                    del self._buf[: _HEADER.size + n]
                    msg = pickle.loads(body)
                    k = int(msg.get("nfds", 0))
                    fds, self._fds = self._fds[:k], self._fds[k:]
                    return msg, fds
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no message from the peer in time")
                self.sock.settimeout(remaining)
            else:
                self.sock.settimeout(None)
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, _MAX_FDS)
            except TimeoutError:
                raise TimeoutError("no message from the peer in time") from None
            except OSError as e:
                raise EOFError(f"the peer is gone: {e}") from e
            self._fds.extend(fds)
            if not data:
                raise EOFError("the peer closed the connection")
            self._buf += data

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.sock.close()


def _check_timeout(name: str, value: Any) -> float | None:
    """A timeout in seconds: a finite number >= 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value < 1e9:  # NaN fails too
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value!r} is not in [0, 1e9) seconds")
    return float(value)


def _target_name(target: Callable[..., Any] | str) -> str:
    if isinstance(target, str):
        if ":" not in target:
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"target {target!r} must look like 'package.module:function'")
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"target {target!r} must be a module-level function")
    if module == "__main__":
        raise ZxError(Status.ERR_INVALID_ARGS,
                      "a target defined in __main__ cannot be imported by the workload; "
                      "put it in a module")
    return f"{module}:{qualname}"


# ============================================================================ this process


class Workload:
    """A workload process that touches mapped VMOs with plain loads and stores.

    ::

        with vmo.mmu.workload.Workload(k) as w:
            w.map(v, name="data")
            total = w.run("mypackage.jobs:checksum", "data")

    ``timeout`` bounds every exchange with the process (start, map, and `run` unless given
    its own). The process inherits this one's environment and ``sys.path``; ``env`` adds to it.
    """

    def __init__(self, kernel: Kernel, *, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        import vmo.mmu.mapping as mapping
        from vmo.kernel import Kernel
        from vmo.mmu.fault_handler import unavailable_reason

        if not isinstance(kernel, Kernel):
            raise ZxError(Status.ERR_WRONG_TYPE,
                          f"kernel must be a vmo.Kernel, not {type(kernel).__name__}")
        checked = _check_timeout("timeout", timeout)
        if checked is None:
            raise ZxError(Status.ERR_INVALID_ARGS, "timeout must be a number of seconds")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(a, str) and isinstance(b, str) and a and "=" not in a and "\0" not in a + b
                for a, b in env.items())):
            raise ZxError(Status.ERR_INVALID_ARGS, "env must map variable names to str values")
        reason = unavailable_reason()
        if reason is not None:
            raise ZxError(Status.ERR_NOT_SUPPORTED, reason)
        kernel._check_open()
        self.kernel = kernel
        self.timeout = checked
        mgr = mapping.manager_for(kernel)
        assert mgr is not None
        self._mgr = mgr
        self._mappings: dict[int, Mapping] = {}
        self._names: dict[str, Mapping] = {}
        self._auto_names = itertools.count()
        self._lock = threading.RLock()
        # Guards the two dicts: `_mapping_gone` runs on any thread (the fault handler's too),
        # while `_lock` may be held by a thread waiting for the process.
        self._maps_lock = threading.Lock()
        self._running = False
        self._closed = False
        self.exited = threading.Event()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_env = dict(os.environ)
        paths = [os.path.abspath(p or os.curdir) for p in sys.path]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        if env:
            child_env.update(env)
        try:
            self.process = _spawn(
                [sys.executable, "-m", "vmo.mmu.workload", str(theirs.fileno()),
                 str(os.getpid())], pass_fds=(theirs.fileno(),), env=child_env)
        except BaseException as e:
            ours.close()
            theirs.close()
            if isinstance(e, OSError):
                raise ZxError(Status.ERR_NO_RESOURCES,
                              f"cannot start the workload process: {e}") from e
            raise
        theirs.close()
        self._chan = _Channel(ours)
        self.pid = self.process.pid
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError as e:
            self.process.kill()
            self.process.wait()
            self._chan.close()
            raise ZxError(Status.ERR_NO_RESOURCES, f"pidfd_open failed: {e}") from e
        # Dropped without close, or left running at interpreter exit: killed (the workload
        # also dies with this process by itself, see `client_main`).
        self._finalizer = weakref.finalize(self, _reap, self.process, self._chan)
        _live.add(self)
        # The handler thread tells us when the process exits, whatever it is doing.
        mgr.handler.watch(self._pidfd, _exit_watch(self))
        try:
            hello, _ = self._chan.recv(timeout)
        except (EOFError, TimeoutError) as e:
            self.close()
            raise ZxError(Status.ERR_PEER_CLOSED, f"the workload process did not start: {e}") \
                from None
        if hello.get("op") != "hello":
            self.close()
            raise ZxError(Status.ERR_INTERNAL, f"unexpected first message {hello!r}")

    def __repr__(self) -> str:
        state = "exited" if self.exited.is_set() else "running"
        return f"<Workload pid={self.pid} {state}, {len(self._mappings)} mappings>"

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and self.process.poll() is None

    @property
    def mappings(self) -> dict[str, Mapping]:
        """The live mappings, by name."""
        with self._maps_lock:
            return {n: m for n, m in self._names.items() if not m.unmapped}

    # -- mapping ----------------------------------------------------------------------------

    def map(self, vmo: Vmo, offset: int = 0, length: int | None = None,
            perms: Perms = Perms.READ | Perms.WRITE, *, name: str | None = None,
            fault_around: int | None = None) -> Mapping:
        """Map ``[offset, offset + length)`` of ``vmo`` into the workload; ``ctx.mappings[name]``
        there (default: ``"m<N>"``). Checks as `Vmo.map`; ``ERR_ALREADY_EXISTS`` for a name in
        use, ``ERR_PEER_CLOSED`` if the process is gone, ``ERR_BAD_STATE`` while a target runs.
        Returns the `Mapping` (``remote`` set): its ``address`` is in the workload, its
        `Mapping.fault_stats` count the workload's faults, `Mapping.unmap` takes it away."""
        import vmo.mmu.mapping as mapping
        from vmo.vm_object import Vmo

        if not isinstance(vmo, Vmo):
            raise ZxError(Status.ERR_WRONG_TYPE, f"vmo must be a Vmo, not {type(vmo).__name__}")
        if vmo._kernel is not self.kernel:
            raise ZxError(Status.ERR_BAD_HANDLE,
                          f"VMO koid {vmo.koid} belongs to another kernel than the workload's")
        offset, length, perms, around = mapping.check_map_args(vmo, offset, length, perms,
                                                               fault_around)
        if name is not None and not isinstance(name, str):
            raise ZxError(Status.ERR_INVALID_ARGS, "name must be a str or None")
        if not perms & Perms.READ:
            raise ZxError(Status.ERR_INVALID_ARGS, "a workload's mapping needs READ permission")
        with self._lock:
            self._check_idle("map")
            if name is None:
                name = f"m{next(self._auto_names)}"
                while name in self._names:
                    name = f"m{next(self._auto_names)}"
            old = self._names.get(name)
            if old is not None and not old.unmapped:
                raise ZxError(Status.ERR_ALREADY_EXISTS, f"a mapping named {name!r} exists")
            m = self._mgr.new_remote(vmo, offset, length, perms,
                                     self._mgr.fault_around if around is None else around)
            win = m._win
            try:
                self._chan.send({"op": "map", "id": m._id, "name": name, "length": length,
                                 "perms": int(perms), "nfds": 1}, [win.fd])
                reply, fds = self._chan.recv(self.timeout)
            except (OSError, EOFError, TimeoutError) as e:
                self._mgr._discard_window(m)
                raise ZxError(Status.ERR_PEER_CLOSED, f"the workload did not map it: {e}") \
                    from None
            if reply.get("op") != "mapped" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                self._mgr._discard_window(m)
                raise ZxError(Status.ERR_NO_RESOURCES,
                              f"the workload could not map it: {reply.get('message', reply)}")
            win.attach(int(reply["address"]), fds[0])
            try:
                self._mgr.activate(m)
            except BaseException:
                self._mgr._discard_window(m)
                with contextlib.suppress(OSError):
                    self._chan.send({"op": "unmap", "id": m._id})
                raise
            with self._maps_lock:
                self._mappings[m._id] = m
                self._names[name] = m
            m._on_unmap = _weak_unmap_hook(self)
            if m.unmapped:  # unmapped (the VMO closed) before the hook was set
                self._mapping_gone(m)
            return m

    def _mapping_gone(self, m: Mapping) -> None:
        """`Mapping.unmap` (or the VMO's close, or the kernel's) took ``m`` away: forget its
        name and tell the process to unmap it there, releasing its memory and its memfd (the
        message is read after the running target, if any, returns). Any thread."""
        with self._maps_lock:
            if self._mappings.pop(m._id, None) is None:
                return
            for name, other in list(self._names.items()):
                if other is m:
                    del self._names[name]
        if not self._closed and not self.exited.is_set():
            with contextlib.suppress(OSError):
                self._chan.send({"op": "unmap", "id": m._id})

    def _check_idle(self, what: str) -> None:
        if self._closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the workload is closed")
        if self.exited.is_set():
            raise ZxError(Status.ERR_PEER_CLOSED,
                          f"the workload process exited ({self.process.poll()})")
        if self._running:
            raise ZxError(Status.ERR_BAD_STATE, f"{what} while the workload runs a target")

    # -- running ----------------------------------------------------------------------------

    def start(self, target: Callable[..., Any] | str, *args: Any) -> None:
        """Start ``target(ctx, *args)`` in the workload; collect it with `result`."""
        name = _target_name(target)
        try:
            body = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - pickle raises many kinds
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"the arguments cannot be sent to the workload (pickle: "
                          f"{type(e).__name__}: {e})") from None
        with self._lock:
            self._check_idle("start")
            try:
                self._chan.send({"op": "run", "target": name, "args": body})
            except OSError as e:
                raise ZxError(Status.ERR_PEER_CLOSED, f"the workload is gone: {e}") from None
            self._running = True

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the running target: its return value, or `RemoteError` if it raised.
        ``ERR_TIMED_OUT`` after ``timeout`` seconds (default: the workload's), the target
        still running; ``ERR_PEER_CLOSED`` if the process died (e.g. of SIGBUS)."""
        timeout = _check_timeout("timeout", timeout)
        with self._lock:
            if self._closed:
                raise ZxError(Status.ERR_BAD_HANDLE, "the workload is closed")
            if not self._running:
                raise ZxError(Status.ERR_BAD_STATE, "no target is running")
            try:
                msg, _ = self._chan.recv(self.timeout if timeout is None else timeout)
            except TimeoutError:
                raise ZxError(Status.ERR_TIMED_OUT, "the workload is still running") from None
            except EOFError:
                self._running = False
                code = self._wait_exit(5.0)
                raise ZxError(Status.ERR_PEER_CLOSED,
                              f"the workload process died ({_describe_exit(code)})") from None
            except OSError as e:  # close() on another thread closed the channel under us
                self._running = False
                raise ZxError(Status.ERR_BAD_HANDLE, f"the workload is closed ({e})") from None
            self._running = False
            if msg.get("op") == "error":
                raise RemoteError(msg.get("message", "the workload raised"),
                                  msg.get("traceback", ""))
            return msg.get("value")

    def run(self, target: Callable[..., Any] | str, *args: Any,
            timeout: float | None = None) -> Any:
        """`start` then `result`."""
        _check_timeout("timeout", timeout)
        self.start(target, *args)
        return self.result(timeout)

    # -- ending -----------------------------------------------------------------------------

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the workload process (``ERR_INVALID_ARGS`` for a value that is not
        a signal number)."""
        valid = {int(s) for s in signal.valid_signals()}
        if isinstance(sig, bool) or not isinstance(sig, int) or int(sig) not in valid:
            raise ZxError(Status.ERR_INVALID_ARGS, f"{sig!r} is not a signal number")
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _on_exit(self, fd: int, revents: int) -> None:
        """On the handler thread: the process exited. Unmap everything it had."""
        self._mgr.handler.unwatch(fd)  # applied at once: we are on the handler thread
        self._close_pidfd()
        self.exited.set()
        self._teardown_mappings()

    def _teardown_mappings(self) -> None:
        with self._maps_lock:
            maps = list(self._mappings.values())
        for m in maps:
            try:
                m._teardown()
            except Exception:  # noqa: BLE001 - keep going, the kernel must stay usable
                self._mgr.handler.errors.append(traceback.format_exc())

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask the process to exit (kill it after ``timeout`` seconds), unmap its mappings
        and release everything. Returns its exit status. Idempotent."""
        timeout = _check_timeout("timeout", timeout) or 10.0
        if self._closed:
            return self.process.poll()
        self._closed = True
        if self.process.poll() is None and not self._running:
            with contextlib.suppress(OSError):
                self._chan.send({"op": "exit"})
        code = self._wait_exit(timeout if not self._running else 0.5)
        if code is None:
            self.kill()
            code = self._wait_exit(timeout)
        self._teardown_mappings()
        self._mgr.handler.unwatch(self._pidfd)
        # The unwatch takes effect on the handler thread; the pidfd is closed after it.
        self._mgr.handler.call_soon(self._close_pidfd)
        self._chan.close()
        self.exited.set()
        self._finalizer.detach()
        _live.discard(self)
        return code

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- lifetime of the processes

#: Workloads not closed yet: interpreter exit stops them (`_stop_all`).
_live: weakref.WeakSet[Workload] = weakref.WeakSet()


def _reap(process: subprocess.Popen[bytes], chan: _Channel) -> None:
    """Finalizer of a `Workload` dropped without `Workload.close`: kill its process (its
    mappings are unmapped when the handler sees it exit, see `_exit_watch`)."""
    with contextlib.suppress(OSError):
        chan.close()
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: no workload outlives the script that started it."""
    for w in list(_live):
        with contextlib.suppress(Exception):
            w.close(timeout=2.0)


def _exit_watch(workload: Workload) -> Callable[[int, int], None]:
    """The pidfd callback (on the handler thread), holding the workload weakly: a dropped
    workload's process is killed by its finalizer, and its exit then unmaps what it had."""
    ref = weakref.ref(workload)
    handler = workload._mgr.handler
    maps, lock = workload._mappings, workload._maps_lock

    def on_exit(fd: int, revents: int) -> None:
        w = ref()
        if w is not None:
            w._on_exit(fd, revents)
            return
        handler.unwatch(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        with lock:
            gone = list(maps.values())
        for m in gone:
            try:
                m._teardown()
            except Exception:  # noqa: BLE001 - keep the kernel usable
                handler.errors.append(traceback.format_exc())

    return on_exit


class _Spawner:
    """Starts workload processes from one long-lived thread.

    A workload asks for ``PR_SET_PDEATHSIG``, and the kernel sends that signal when the
    *thread* that forked it exits, not the process: a workload started from a short-lived
    thread would die with that thread. Forking from this thread, which lives as long as the
    process, ties the signal to the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: list[tuple[Callable[[], Any], threading.Event, list[Any]]] = []
        self._cond = threading.Condition(self._lock)

    def run(self, job: Callable[[], Any]) -> Any:
        done = threading.Event()
        box: list[Any] = []
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vmo-workload-spawner",
                                                daemon=True)
                self._thread.start()
            self._jobs.append((job, done, box))
            self._cond.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, done, box = self._jobs.pop(0)
            try:
                box.append(job())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box.append(e)
            done.set()


_spawner = _Spawner()


def _spawn(argv: list[str], pass_fds: tuple[int, ...],
           env: dict[str, str]) -> subprocess.Popen[bytes]:
    return _spawner.run(lambda: subprocess.Popen(argv, pass_fds=pass_fds, env=env,
                                                 close_fds=True))


def _weak_unmap_hook(workload: Workload) -> Callable[[Mapping], None]:
    """`Workload._mapping_gone` without a strong reference to the workload (a mapping must
    not keep a dropped workload alive)."""
    ref = weakref.WeakMethod(workload._mapping_gone)

    def hook(m: Mapping) -> None:
        method = ref()
        if method is not None:
            method(m)

    return hook


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# ============================================================================ the workload


class RemoteView:
    """One mapping, as the workload sees it: ``buffer`` is the mapped memory (an ``mmap``;
    ``memoryview(view.buffer)``, ``numpy.frombuffer(view.buffer, ...)``, ``ctypes`` through
    ``address``), touched with plain loads and stores. ``read_checked``/``write_checked`` turn
    a failed fault (SIGBUS) into `vmo.mmu.uffd.MemoryFault` instead of a crash."""

    def __init__(self, name: str, buffer: mmap.mmap, address: int, perms: Perms) -> None:
        self.name = name
        self.buffer = buffer
        self.address = address
        self.length = len(buffer)
        self.perms = perms
        self._closed = False

    def __repr__(self) -> str:
        return f"<RemoteView {self.name!r} {self.length:#x} bytes at {self.address:#x}>"

    def memoryview(self) -> memoryview:
        return memoryview(self.buffer)

    def read_checked(self, length: int, offset: int = 0) -> bytes:
        import vmo.mmu.uffd as uffd

        if self._closed:
            raise uffd.MemoryFault(self.address + offset, signal.SIGSEGV)
        _check_view_range(self, offset, length)
        return uffd.copy_from_address_checked(self.address + offset, length)

    def write_checked(self, data: bytes, offset: int = 0) -> None:
        import vmo.mmu.uffd as uffd

        if self._closed:
            raise uffd.MemoryFault(self.address + offset, signal.SIGSEGV)
        _check_view_range(self, offset, len(data))
        uffd.copy_to_address_checked(self.address + offset, data)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap the window here: the memory, the userfaultfd registration and the window's
        memfd are released. A view of ``buffer`` still held by the target keeps the ``mmap``
        object open: its range is then replaced by an inaccessible reservation (released
        with the object), so a later access is a clean SIGSEGV, never a touch of whatever
        would be mapped there next."""
        import vmo.mmu.uffd as uffd

        if self._closed:
            return
        self._closed = True
        try:
            self.buffer.close()
        except BufferError:
            uffd.mmap(self.address, self.length, uffd.PROT_NONE,
                      uffd.MAP_PRIVATE | uffd.MAP_ANONYMOUS | uffd.MAP_FIXED
                      | uffd.MAP_NORESERVE)


def _map_window(fd: int, length: int, prot: int) -> tuple[mmap.mmap, int]:
    """Map the window memfd ``fd`` and return an ``mmap`` object that owns the mapping.

    ``mmap.mmap(fd, ...)`` would keep a duplicate of ``fd`` for as long as the object lives,
    and a view still exported by the target keeps it alive after `RemoteView.close`: one
    descriptor leaked per map/unmap cycle. So the object is made anonymous (no descriptor)
    and the memfd is mapped over it with ``MAP_FIXED``: the object's own ``munmap`` on close
    releases the window mapping, and no descriptor is held."""
    import vmo.mmu.uffd as uffd

    buf = mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot)
    try:
        address = uffd.buffer_address(memoryview(buf))
        uffd.mmap(address, length, prot, uffd.MAP_SHARED | uffd.MAP_FIXED, fd)
    except BaseException:
        buf.close()
        raise
    return buf, address


def _check_view_range(view: RemoteView, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > view.length:
        raise ValueError(f"[{offset:#x}, +{length:#x}) is outside {view!r}")


class WorkloadContext:
    """What a target receives: ``mappings`` by name, and ``pid``."""

    def __init__(self) -> None:
        self.mappings: dict[str, RemoteView] = {}
        self._by_id: dict[int, RemoteView] = {}
        self.pid = os.getpid()


def _client_map(ctx: WorkloadContext, chan: _Channel, msg: dict[str, Any],
                fds: list[int]) -> None:
    import vmo.mmu.uffd as uffd
    from vmo.mmu.fault_handler import WORKLOAD_FEATURES

    perms = Perms(msg["perms"])
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if perms & Perms.WRITE else 0)
    buf = None
    try:
        (fd,) = fds
        try:
            buf, address = _map_window(fd, msg["length"], prot)
        finally:
            os.close(fd)
        # A forked child (multiprocessing) does not get the mapping: the window has one
        # faulting mapping, and a child's copy would bypass the fault handler (its loads see
        # zeros, its stores never reach the VMO). Its accesses fail loudly (SIGSEGV) instead.
        uffd.madvise(address, msg["length"], uffd.MADV_DONTFORK)
        u = uffd.Userfaultfd()
        try:
            u.api(required=WORKLOAD_FEATURES)
            u.register(address, msg["length"], missing=True, wp=True)
            chan.send({"op": "mapped", "id": msg["id"], "address": address, "nfds": 1},
                      [u.fileno()])
        finally:
            u.close()  # ours is not needed: the server reads the faults
    except Exception as e:  # noqa: BLE001 - reported to the server
        if buf is not None:
            with contextlib.suppress(BufferError):
                buf.close()
        chan.send({"op": "error", "message": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()})
        return
    view = RemoteView(msg["name"], buf, address, perms)
    ctx.mappings[msg["name"]] = view
    ctx._by_id[msg["id"]] = view


def _client_run(ctx: WorkloadContext, chan: _Channel, msg: dict[str, Any]) -> None:
    try:
        module_name, _, qualname = msg["target"].partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        value = obj(ctx, *pickle.loads(msg["args"]))
        chan.send({"op": "result", "value": value})
    except Exception as e:  # noqa: BLE001 - reported to the server
        chan.send({"op": "error", "message": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()})


def _die_with_host(host_pid: int, sock: socket.socket) -> None:
    """The workload never outlives its host: the parent-death signal kills it when the host
    dies (SIGKILL included), and a thread watching the socket ends it when the host's end
    closes while a target runs (the main thread only reads the socket between targets)."""
    import vmo.mmu.uffd as uffd

    uffd.lib.vmo_set_pdeathsig(signal.SIGKILL)
    if os.getppid() != host_pid:
        os._exit(0)  # the host died before the signal was asked for

    def watch() -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLRDHUP)
        while True:
            for _fd, revents in poller.poll():
                if revents & (select.POLLRDHUP | select.POLLHUP | select.POLLERR
                              | select.POLLNVAL):
                    os._exit(0)

    threading.Thread(target=watch, name="vmo-host-watch", daemon=True).start()


def client_main(fd: int, host_pid: int = 0) -> int:
    """The workload process: serve the server's requests until it says exit or goes away."""
    sock = socket.socket(fileno=fd)
    if host_pid:
        _die_with_host(host_pid, sock)
    chan = _Channel(sock)
    ctx = WorkloadContext()
    chan.send({"op": "hello", "pid": ctx.pid})
    while True:
        try:
            msg, fds = chan.recv()
        except EOFError:
            return 0
        op = msg.get("op")
        if op == "map":
            _client_map(ctx, chan, msg, fds)
        elif op == "run":
            _client_run(ctx, chan, msg)
        elif op == "unmap":
            view = ctx._by_id.pop(msg["id"], None)
            if view is not None:
                ctx.mappings.pop(view.name, None)
                view.close()
        elif op == "exit":
            return 0


# ============================================================================ stock targets


def fill(ctx: WorkloadContext, name: str, byte: int, offset: int = 0,
         length: int | None = None, stride: int = 1) -> int:
    """Store ``byte`` at every ``stride``-th byte of ``[offset, offset + length)`` of mapping
    ``name`` with plain stores; returns the bytes stored."""
    view = ctx.mappings[name].memoryview()
    end = view.nbytes if length is None else offset + length
    if stride == 1:
        view[offset:end] = bytes([byte]) * (end - offset)
        return end - offset
    n = 0
    for i in range(offset, end, stride):
        view[i] = byte
        n += 1
    return n


def checksum(ctx: WorkloadContext, name: str, offset: int = 0,
             length: int | None = None) -> int:
    """The sum of the bytes of ``[offset, offset + length)`` of mapping ``name``, loaded with
    plain loads (``bytes`` of a ``memoryview``)."""
    view = ctx.mappings[name].memoryview()
    end = view.nbytes if length is None else offset + length
    return sum(bytes(view[offset:end]))


def read_bytes(ctx: WorkloadContext, name: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of mapping ``name`` (plain loads)."""
    return bytes(ctx.mappings[name].memoryview()[offset: offset + length])


if __name__ == "__main__":
    sys.exit(client_main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))


__all__ = [
    "RemoteError",
    "RemoteView",
    "Workload",
    "WorkloadContext",
    "checksum",
    "client_main",
    "fill",
    "read_bytes",
]
