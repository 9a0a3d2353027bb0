"""The robustness campaign (issue 11): bad input, injected faults, threads, killed workloads,
and leaks, with one engine for the short form in CI (``tests/test_robustness_campaign.py``) and
the long form (``vmo fuzz --robust --time N``).

Each *round* runs one part of the campaign on a fresh kernel and checks, at its end, that every
resource is back where it started (`Resources`: frames, host descriptors, threads, child
processes, window mappings). The parts:

- `bad_input_round`: hypothesis draws calls of the public API (the zx calls, `Pager`,
  `FilePager`, `Mapping`, `Workload`) with valid, boundary and hostile arguments (negative,
  unaligned, near and past 2**64, wrong types, closed handles, a VMO of another kernel,
  unpicklable objects). Each must succeed or raise `ZxError` with a status the argument
  explains; ``vmo.debug.validate`` and the mappings' validation pass after each.
- `allocation_failure_round`: a scripted workload (writes, snapshots, commits, zeroing,
  mapping stores) run once to count its frame allocations, then once per allocation point with
  that allocation failing; every step succeeds or raises ``ERR_NO_MEMORY``, the kernel stays
  valid, and every byte of a step that succeeded reads back (failed steps change nothing,
  except a ZERO that may stop part-way, as documented).
- `pager_fault_round`: pagers that never answer, answer twice, answer the wrong range, raise,
  or die, read through ``v.read`` and a mapping on threads: each read returns the right bytes
  or a `ZxError`, and ends (a thread still running after its deadline is a *hang*).
- `workload_kill_round`: a workload killed at a random point while it stores through a
  mapping (mid-fault) or while the host maps a VMO for it (mid-map): the kernel stays valid,
  every page holds zeros or a counter that belongs to it, the kernel keeps working.
- `host_kill_round`: a host process with a running workload killed with SIGKILL: no process
  is left.
- `threads_round`: 8 threads on shared hierarchies (each owns a range of the root and writes
  known patterns through ``v.write`` or a local mapping, while making and closing snapshots and
  slices), a pager thread serving a pager-backed VMO, and a workload storing through a mapping:
  afterwards the kernel validates and every owned range holds its owner's last pattern.

`run` loops over the rounds until the time is up and returns a `Report`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

import vmo
from vmo import PAGE_SIZE, ChildOptions, Kernel, Status, VmoOp, ZxError
from vmo.mmu import mapping
from vmo.pager.user_pager import PagerOp

PS = PAGE_SIZE
#: Statuses a hostile argument may cause, by kind.
ARG_STATUSES = {
    "valid": set(),
    "boundary": {Status.ERR_OUT_OF_RANGE, Status.ERR_INVALID_ARGS},
    "negative": {Status.ERR_OUT_OF_RANGE, Status.ERR_INVALID_ARGS},
    "unaligned": {Status.ERR_INVALID_ARGS, Status.ERR_OUT_OF_RANGE},
    "huge": {Status.ERR_OUT_OF_RANGE, Status.ERR_INVALID_ARGS, Status.ERR_NO_MEMORY},
    "wrong_type": {Status.ERR_INVALID_ARGS, Status.ERR_WRONG_TYPE, Status.ERR_OUT_OF_RANGE},
    "closed": {Status.ERR_BAD_HANDLE},
    "foreign": {Status.ERR_BAD_HANDLE, Status.ERR_INVALID_ARGS},
    "unpicklable": {Status.ERR_INVALID_ARGS},
}
#: Statuses any call may give with valid arguments, from the state it finds (a VMO shrunk or
#: closed by an earlier call, a read-only handle, an unsupported op, an empty pager port...).
STATE_STATUSES = {Status.ERR_OUT_OF_RANGE, Status.ERR_BAD_STATE, Status.ERR_NOT_SUPPORTED,
                  Status.ERR_ACCESS_DENIED, Status.ERR_BAD_HANDLE, Status.ERR_INVALID_ARGS,
                  Status.ERR_TIMED_OUT, Status.ERR_NO_MEMORY, Status.ERR_UNAVAILABLE,
                  Status.ERR_ALREADY_EXISTS, Status.ERR_NOT_FOUND, Status.ERR_WRONG_TYPE,
                  Status.ERR_IO}


@attrs.define
class Report:
    """What a campaign did; the long form prints it."""

    seconds: float = 0.0
    rounds: dict[str, int] = attrs.Factory(dict)
    inputs_tried: int = 0
    faults_injected: int = 0
    threads: int = 0
    workloads_killed: int = 0
    hosts_killed: int = 0
    corruptions: int = 0
    hangs: int = 0
    leaks: int = 0
    problems: list[str] = attrs.Factory(list)

    def add_problem(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 50:
            self.problems.append(f"{kind}: {text}")

    @property
    def ok(self) -> bool:
        return not (self.corruptions or self.hangs or self.leaks)

    def summary(self) -> str:
        rounds = ", ".join(f"{k} {v}" for k, v in sorted(self.rounds.items()))
        lines = [
            f"robustness campaign: {self.seconds:.0f} s, rounds: {rounds}",
            f"  inputs tried     {self.inputs_tried}",
            f"  faults injected  {self.faults_injected}",
            f"  threads          {self.threads}",
            f"  workloads killed {self.workloads_killed} (hosts killed {self.hosts_killed})",
            f"  corruptions      {self.corruptions}",
            f"  hangs            {self.hangs}",
            f"  leaks            {self.leaks}",
        ]
        lines += [f"  ! {p}" for p in self.problems]
        return "\n".join(lines)


# ============================================================================ resources


def _children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def _windows() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "-window" in line)


#: Threads that live as long as the process once started (not leaks).
_SINGLETONS = frozenset({"vmo-workload-spawner", "vmo-filepager-closer"})


@attrs.define(frozen=True)
class Resources:
    """What this process holds that a round must give back."""

    fds: frozenset[int]
    threads: int
    children: frozenset[int]
    windows: int

    @classmethod
    def now(cls) -> Resources:
        threads = sum(1 for t in threading.enumerate() if t.name not in _SINGLETONS)
        return cls(frozenset(int(x) for x in os.listdir("/proc/self/fd")), threads,
                   frozenset(_children()), _windows())

    def leaks_since(self, before: Resources) -> list[str]:
        out = []
        if self.fds - before.fds:
            names = {}
            for fd in sorted(self.fds - before.fds):
                with contextlib.suppress(OSError):
                    names[fd] = os.readlink(f"/proc/self/fd/{fd}")
            out.append(f"descriptors {names}")
        if self.threads > before.threads:
            out.append(f"threads {before.threads} -> {self.threads}: "
                       f"{[t.name for t in threading.enumerate()]}")
        if self.children - before.children:
            out.append(f"processes {sorted(self.children - before.children)}")
        if self.windows > before.windows:
            out.append(f"window mappings {before.windows} -> {self.windows}")
        return out


def settle_and_check(before: Resources, report: Report, what: str,
                     timeout: float = 10.0) -> None:
    """Wait (workers end, handler threads stop, processes are reaped) until the resources are
    back to ``before``, or count a leak."""
    import gc

    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        leaks = Resources.now().leaks_since(before)
        if not leaks:
            return
        if time.monotonic() > deadline:
            report.add_problem("leaks", f"{what}: {'; '.join(leaks)}")
            return
        time.sleep(0.05)


def check_frames(k: Kernel, report: Report, what: str) -> None:
    """Every VMO closed: every frame is free again."""
    for v in k.live_vmos():
        with contextlib.suppress(ZxError):
            v.close()
    if k.pmm.used_frames:
        report.add_problem("leaks", f"{what}: {k.pmm.used_frames} frames still used")


def validate(k: Kernel, report: Report, what: str) -> bool:
    try:
        vmo.debug.validate(k)
        mapping.validate(k)
    except Exception as e:  # noqa: BLE001 - an InvariantError, or worse
        report.add_problem("corruptions", f"{what}: {type(e).__name__}: {e}")
        return False
    return True


def uffd_available() -> bool:
    from vmo.mmu.fault_handler import unavailable_reason

    return unavailable_reason() is None


# ============================================================================ bad input


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def _values(size: int) -> list[tuple[str, Any]]:
    """Candidate integer arguments with their kind, for a VMO of ``size`` bytes."""
    return [
        ("valid", 0), ("valid", PS), ("valid", size // 2 // PS * PS),
        ("boundary", size), ("boundary", size + PS), ("boundary", size - 1),
        ("negative", -1), ("negative", -PS), ("negative", -(2**63)),
        ("unaligned", 1), ("unaligned", PS + 7), ("unaligned", PS - 1),
        ("huge", 2**64 - 1), ("huge", 2**64 - PS), ("huge", 2**63), ("huge", 2**64),
        ("huge", 2**80), ("wrong_type", None), ("wrong_type", "4096"), ("wrong_type", 1.5),
        ("wrong_type", []), ("wrong_type", True), ("wrong_type", object()),
    ]


class World:
    """The objects bad calls are aimed at, on one kernel (recreated when a call closes them)."""

    def __init__(self, with_workload: bool) -> None:
        self.k = Kernel(memory=16 << 20, page_request_timeout=0.2)
        self.other = Kernel(memory=1 << 20)
        self.foreign = self.other.vmo_create(4 * PS)
        self.pager = self.k.pager_create()
        self.tmp = tempfile.TemporaryDirectory(prefix="vmo-robust-")
        self.path = os.path.join(self.tmp.name, "f.bin")
        with open(self.path, "wb") as f:
            f.write(bytes(range(256)) * (4 * PS // 256))
        self.closed = self.k.vmo_create(PS)
        self.closed.close()
        self.closed_pager = self.k.pager_create()
        self.closed_pager.close()
        self.maps = uffd_available()
        self.workload: Any = None
        if with_workload and self.maps:
            from vmo.mmu.workload import Workload

            self.workload = Workload(self.k, timeout=10.0)
        self._vmos: dict[str, vmo.Vmo] = {}
        self._mapping: mapping.Mapping | None = None
        from vmo.pager.swap import SwapSource

        self.swap = SwapSource(self.k, self.tmp.name)
        self.closed_swap = SwapSource(self.k, self.tmp.name)
        self.closed_swap.close()

    def vmo(self, name: str) -> vmo.Vmo:
        v = self._vmos.get(name)
        if v is not None and not v.closed:
            return v
        if name == "root":
            v = self.k.vmo_create(8 * PS)
            v.write(b"root data")
        elif name == "resizable":
            v = self.k.vmo_create(8 * PS, vmo.VmoOptions.RESIZABLE)
            v.write(b"resizable")
        elif name == "child":
            v = self.vmo("root").create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
        elif name == "slice":
            v = self.vmo("root").create_child(ChildOptions.SLICE, PS, 2 * PS)
        elif name == "swapped":
            v = self.swap.create_vmo(4 * PS)
            v.write(b"swapped data")
            self.swap.move_to_staging(v)
        elif name == "paged":
            v = self.pager.create_vmo(4 * PS)
            aux = self.k.vmo_create(4 * PS)
            aux.write(b"pager data")
            self.pager.supply_pages(v, 0, 4 * PS, aux, 0)
            aux.close()
        else:
            raise KeyError(name)
        self._vmos[name] = v
        return v

    def mapping(self) -> mapping.Mapping | None:
        if not self.maps:
            return None
        if self._mapping is None or self._mapping.unmapped:
            self._mapping = self.vmo("root").map(0, 4 * PS)
        return self._mapping

    def vmo_arg(self, pick: str) -> tuple[str, Any]:
        if pick == "closed":
            return "closed", self.closed
        if pick == "foreign":
            return "foreign", self.foreign
        if pick == "not a vmo":
            return "wrong_type", "not a vmo"
        if pick == "none":
            return "wrong_type", None
        return "valid", self.vmo(pick)

    def close(self) -> None:
        if self.workload is not None:
            self.workload.close()
        self.swap.close()
        self.k.close()
        self.other.close()
        self.tmp.cleanup()


#: Calls that are methods of the drawn VMO (its handle may be closed or foreign, but it is a
#: Vmo); the others take it as an argument.
_METHODS = frozenset({"read", "write", "set_size", "op_range", "create_child", "pin", "map",
                      "set_name", "get_info", "write_from_fd"})
VMO_PICKS = ["root", "resizable", "child", "slice", "paged", "swapped", "closed", "foreign",
             "not a vmo", "none"]


def _bad_calls(world: World, data: Any, st: Any) -> tuple[str, set[str], Callable[[], Any]]:
    """Draw one call: ``(name, kinds of its arguments, the call)``."""
    ints = st.sampled_from(_values(8 * PS))

    def num() -> tuple[str, Any]:
        return data.draw(ints)

    name_hint = data.draw(st.booleans())  # the VMO argument: any object, or a Vmo handle
    vkind, v = world.vmo_arg(data.draw(st.sampled_from(VMO_PICKS if name_hint else
                                                       VMO_PICKS[:-2])))
    kinds = {vkind}
    (k1, a), (k2, b), (k3, c) = num(), num(), num()
    name = data.draw(st.sampled_from([
        "vmo_create", "read", "write", "set_size", "op_range", "create_child", "pin", "map",
        "set_name", "get_info", "reclaim", "supply_pages", "pager_op_range", "dirty_ranges",
        "detach", "get_request", "closed_pager", "file_pager", "mapping_read",
        "mapping_write", "mapping_protect", "workload_map", "workload_run", "workload_kill",
        "write_from_fd", "swap_create", "move_to_staging", "swap_out", "swap_in", "swap_trim",
        "closed_swap"]))
    pager = world.pager
    if name in _METHODS and not isinstance(v, vmo.Vmo):
        vkind, v = world.vmo_arg("root")
        kinds = {vkind}
    if name == "vmo_create":
        opt = data.draw(st.sampled_from([0, 2, 4, 6, 1 << 20, -1, "x"]))
        return name, {k1, "valid" if opt in (0, 2, 4) else "wrong_type"}, \
            lambda: world.k.vmo_create(a, opt)
    if name == "read":
        return name, kinds | {k1, k2}, lambda: v.read(a, b)
    if name == "write":
        payload = data.draw(st.sampled_from([b"abc", bytearray(PS + 1), memoryview(b"xy"),
                                             "text", None, 42]))
        pk = "valid" if isinstance(payload, bytes | bytearray | memoryview) else "wrong_type"
        return name, kinds | {k1, pk}, lambda: v.write(payload, a)
    if name == "set_size":
        return name, kinds | {k1}, lambda: v.set_size(a)
    if name == "op_range":
        op = data.draw(st.sampled_from([*VmoOp, 0, 99, "COMMIT"]))
        ok = "valid" if isinstance(op, VmoOp) else "wrong_type"
        return name, kinds | {k1, k2, ok}, lambda: v.op_range(op, a, b)
    if name == "create_child":
        opt = data.draw(st.sampled_from([ChildOptions.SNAPSHOT, ChildOptions.SLICE,
                                         ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE,
                                         ChildOptions.SNAPSHOT | ChildOptions.NO_WRITE,
                                         ChildOptions.SLICE | ChildOptions.RESIZABLE, 0, 1 << 9,
                                         None]))
        return name, kinds | {k1, k2, "valid" if opt else "wrong_type"}, \
            lambda: v.create_child(opt, a, b)
    if name == "pin":
        return name, kinds | {k1, k2}, lambda: v.pin(a, b)
    if name == "map":
        if not world.maps:
            return name, kinds, lambda: None
        perms = data.draw(st.sampled_from([vmo.Perms.READ, vmo.Perms.READ | vmo.Perms.WRITE,
                                           vmo.Perms.WRITE, vmo.Perms(0), 7, "rw"]))
        return name, kinds | {k1, k2, "valid" if perms in (1, 3) else "wrong_type"}, \
            lambda: v.map(a, b, perms)
    if name == "set_name":
        value = data.draw(st.sampled_from(["ok", "x" * 40, "", 3, None, "a\0b"]))
        return name, kinds | {"valid" if isinstance(value, str) else "wrong_type"}, \
            lambda: setattr(v, "name", value)
    if name == "get_info":
        return name, kinds, v.get_info
    if name == "reclaim":
        return name, {k1}, lambda: world.k.reclaim(a)
    if name == "supply_pages":
        akind, aux = world.vmo_arg(data.draw(st.sampled_from(VMO_PICKS)))
        return name, kinds | {akind, k1, k2, k3}, lambda: pager.supply_pages(v, a, b, aux, c)
    if name == "pager_op_range":
        op = data.draw(st.sampled_from([*PagerOp, 77]))
        return name, kinds | {k1, k2, "valid" if isinstance(op, PagerOp) else "wrong_type"}, \
            lambda: pager.op_range(op, v, a, b, 0)
    if name == "dirty_ranges":
        return name, kinds | {k1, k2}, lambda: pager.query_dirty_ranges(v, a, b)
    if name == "detach":
        return name, kinds, lambda: pager.detach_vmo(v)
    if name == "get_request":
        t = data.draw(st.sampled_from([0, 0.001, -1, "soon", float("nan")]))
        tk = "valid" if t in (0, 0.001) else "wrong_type"
        return name, {tk}, lambda: pager.get_request(t)
    if name == "closed_pager":
        return name, {"closed"}, lambda: world.closed_pager.create_vmo(PS)
    swap = world.swap
    if name == "swap_create":
        opt = data.draw(st.sampled_from([0, 2, 4, -1, "x"]))
        return name, {k1, "valid" if opt in (0, 2) else "wrong_type"}, \
            lambda: swap.create_vmo(a, opt)
    if name == "move_to_staging":
        picked = data.draw(st.sampled_from([None, "vmo", "list", "junk"]))
        if picked == "vmo":
            return name, kinds, lambda: swap.move_to_staging(v)
        if picked == "list":
            return name, kinds, lambda: swap.move_to_staging([v, world.vmo("swapped")])
        if picked == "junk":
            return name, {"wrong_type"}, lambda: swap.move_to_staging(42)  # type: ignore[arg-type]
        return name, {"valid"}, lambda: swap.move_to_staging()
    if name in ("swap_out", "swap_in"):
        fn = swap.swap_out if name == "swap_out" else swap.swap_in
        return name, {k1}, lambda: fn(a)
    if name == "swap_trim":
        return name, {k1}, lambda: swap.trim(a)
    if name == "closed_swap":
        call = data.draw(st.sampled_from(["create_vmo", "move_to_staging", "swap_out",
                                          "swap_in", "trim", "status"]))
        closed = world.closed_swap
        if call == "create_vmo":
            return name, {"closed"}, lambda: closed.create_vmo(PS)
        return name, {"closed"}, getattr(closed, call)
    if name == "file_pager":
        from vmo.pager.file_pager import FilePager

        path = data.draw(st.sampled_from([world.path, world.tmp.name, "/nonexistent/x", 3,
                                          None]))
        pk = "valid" if path == world.path else "wrong_type"
        return name, {pk, k1}, lambda: _closing(FilePager(world.k, path, readahead=a))
    m = world.mapping()
    if name.startswith("mapping_"):
        if m is None:
            return name, kinds, lambda: None
        if name == "mapping_read":
            return name, {k1, k2}, lambda: m.read(a, b)
        if name == "mapping_write":
            return name, {k1}, lambda: m.write(b"mapped", a)
        perms = data.draw(st.sampled_from([vmo.Perms.READ, vmo.Perms.READ | vmo.Perms.WRITE,
                                           0, "r"]))
        return name, {"valid" if perms else "wrong_type"}, lambda: m.protect(perms)
    w = world.workload
    if w is None or not w.alive:
        return name, kinds, lambda: None
    if name == "workload_map":
        nm = data.draw(st.sampled_from(["a", "b", None, 3]))
        nk = "valid" if nm is None or isinstance(nm, str) else "wrong_type"
        return name, kinds | {k1, k2, nk}, lambda: _unmapping(w.map(v, a, b, name=nm))
    if name == "workload_run":
        arg = data.draw(st.sampled_from([("valid", "m"), ("unpicklable", Unpicklable()),
                                         ("unpicklable", lambda: 0), ("valid", None)]))
        target = data.draw(st.sampled_from(["vmo.mmu.workload:checksum", "nomodule", 5]))
        tk = "valid" if target == "vmo.mmu.workload:checksum" else "wrong_type"
        return name, {arg[0], tk}, lambda: _run_quietly(w, target, arg[1])
    if name == "workload_kill":
        sig = data.draw(st.sampled_from([0, 999, -3, "KILL", None]))
        return name, {"valid" if sig == 0 else "wrong_type"}, lambda: w.kill(sig)
    fd = data.draw(st.sampled_from([-1, 10**6, "fd", None]))
    return name, kinds | {k1, "wrong_type"}, lambda: v.write_from_fd(fd, PS, a)


def _closing(obj: Any) -> Any:
    obj.close()
    return obj


def _unmapping(m: Any) -> Any:
    m.unmap()
    return m


def _run_quietly(w: Any, target: Any, arg: Any) -> Any:
    from vmo.mmu.workload import RemoteError

    try:
        return w.run(target, arg, timeout=10)
    except RemoteError:
        return None  # the target raised in the workload (no mapping "m"): reported as such


def bad_input_round(report: Report, examples: int = 100, with_workload: bool = True,
                    seed: int | None = None) -> None:
    """``examples`` hypothesis examples of one to five bad calls each, on one world."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    world = World(with_workload)
    try:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def program(data: Any) -> None:
            for _ in range(data.draw(st.integers(1, 5))):
                name, kinds, call = _bad_calls(world, data, st)
                report.inputs_tried += 1
                allowed = set().union(*(ARG_STATUSES[k] for k in kinds)) | STATE_STATUSES
                try:
                    out = call()
                except ZxError as e:
                    if e.status not in allowed:
                        report.add_problem("corruptions", f"{name} {sorted(kinds)}: {e!r}")
                except Exception as e:  # noqa: BLE001 - the defect being hunted
                    report.add_problem("corruptions",
                                       f"{name} {sorted(kinds)}: raised {type(e).__name__}: {e}")
                else:
                    _close_result(out)
                validate(world.k, report, f"after {name}")

        if seed is not None:
            program = settings(derandomize=False)(program)
        program()
    finally:
        world.close()


def _close_result(out: Any) -> None:
    if isinstance(out, vmo.Vmo):
        out.close()
    elif isinstance(out, mapping.Mapping):
        out.unmap()
    elif isinstance(out, vmo.PinnedRange):
        with contextlib.suppress(ZxError):
            out.unpin()


# ============================================================================ allocation failure


class _FailingAllocator:
    """Counts the arena's allocations; the ``fail_at``-th raises ``ERR_NO_MEMORY``."""

    def __init__(self, pmm: Any, fail_at: int) -> None:
        self.count = 0
        self.fail_at = fail_at
        self.failed = 0
        self._alloc, self._alloc_one = pmm.alloc, pmm.alloc_one
        pmm.alloc = self.alloc
        pmm.alloc_one = self.alloc_one

    def _tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            self.failed += 1
            raise ZxError(Status.ERR_NO_MEMORY, f"injected: allocation {self.count} fails")

    def alloc(self, count: int, *, zero: bool = True) -> list[int]:
        if count > 0:
            self._tick()
        return self._alloc(count, zero=zero)

    def alloc_one(self, *, zero: bool = True) -> int:
        self._tick()
        return self._alloc_one(zero=zero)


def _scripted_workload(k: Kernel, use_mapping: bool) -> Iterator[tuple[str, Callable[[], None],
                                                                       Callable[[], bool]]]:
    """Steps ``(name, run, check)``: ``check()`` says whether the state after a successful
    ``run`` (or, after a failed one, the state before it) is what it must be."""
    model: dict[int, bytearray] = {}
    vmos: dict[int, vmo.Vmo] = {}

    def make(i: int, v: vmo.Vmo, content: bytes) -> None:
        vmos[i] = v
        model[i] = bytearray(content)

    def check_all() -> bool:
        return all(vmos[i].read(len(model[i])) == bytes(model[i]) for i in vmos)

    root = k.vmo_create(8 * PS)
    make(0, root, bytes(8 * PS))

    def write(i: int, off: int, data: bytes) -> Callable[[], None]:
        def run() -> None:
            vmos[i].write(data, off)
            model[i][off: off + len(data)] = data
        return run

    def child(i: int, parent: int, opts: ChildOptions) -> Callable[[], None]:
        def run() -> None:
            c = vmos[parent].create_child(opts, 0, 8 * PS)
            make(i, c, bytes(model[parent]))
        return run

    def op(i: int, o: VmoOp, off: int, n: int) -> Callable[[], None]:
        def run() -> None:
            vmos[i].op_range(o, off, n)
            if o in (VmoOp.ZERO, VmoOp.DECOMMIT):
                model[i][off: off + n] = bytes(n)
        return run

    steps: list[tuple[str, Callable[[], None]]] = [
        ("write root", write(0, 0, b"A" * (3 * PS))),
        ("snapshot", child(1, 0, ChildOptions.SNAPSHOT)),
        ("write child", write(1, PS, b"B" * (2 * PS))),
        ("write root again", write(0, 2 * PS, b"C" * PS)),
        ("commit child", op(1, VmoOp.COMMIT, 0, 8 * PS)),
        ("grandchild", child(2, 1, ChildOptions.SNAPSHOT)),
        ("write grandchild", write(2, 0, b"D" * (4 * PS + 9))),
        ("zero child", op(1, VmoOp.ZERO, PS, 2 * PS)),
        ("zero partial", op(2, VmoOp.ZERO, 100, PS)),
        ("second root", lambda: make(3, k.vmo_create(4 * PS), bytes(4 * PS))),
        ("write second root", write(3, 0, b"F" * (4 * PS))),
        ("decommit second root", op(3, VmoOp.DECOMMIT, PS, 2 * PS)),
    ]
    if use_mapping:
        holder: list[mapping.Mapping] = []

        def map_and_store() -> None:
            if not holder:
                holder.append(vmos[2].map(fault_around=4))
            m = holder[0]
            data = b"E" * (PS + 3)
            try:
                m.write(data, 5 * PS)
            except ZxError:
                # A store that fails part-way may have stored part of the data (`Mapping.write`;
                # memcpy's order, not a prefix): the model follows if every byte there is the
                # old one or the new one.
                got = vmos[2].read(len(data), 5 * PS)
                old = bytes(model[2][5 * PS: 5 * PS + len(data)])
                if all(g in (o, d) for g, o, d in zip(got, old, data, strict=True)):
                    model[2][5 * PS: 5 * PS + len(data)] = got
                raise
            model[2][5 * PS: 5 * PS + len(data)] = data

        steps.append(("store through a mapping", map_and_store))
        steps.append(("store again", map_and_store))
    for name, run in steps:
        yield name, run, check_all


def allocation_failure_round(report: Report, use_mapping: bool = True) -> None:
    """Fail each allocation point of the scripted workload in turn."""
    k = Kernel(memory=4 << 20)
    counter = _FailingAllocator(k.pmm, 0)
    for _name, run, _check in _scripted_workload(k, use_mapping):
        run()
    total = counter.count
    k.close()
    for fail_at in range(1, total + 1):
        k = Kernel(memory=4 << 20)
        counter = _FailingAllocator(k.pmm, fail_at)
        for name, run, check in _scripted_workload(k, use_mapping):
            report.inputs_tried += 1
            failed = False
            try:
                run()
            except ZxError as e:
                failed = True
                if e.status not in (Status.ERR_NO_MEMORY, Status.ERR_INTERNAL) or (
                        e.status == Status.ERR_INTERNAL and not counter.failed):
                    report.add_problem("corruptions", f"{name} at allocation {fail_at}: {e!r}")
            if not validate(k, report, f"{name} with allocation {fail_at} failing"):
                break
            if not check() and not (failed and name.startswith("zero")):
                report.add_problem("corruptions",
                                   f"{name} with allocation {fail_at} failing: content differs")
                break
            if failed and name.startswith("zero"):
                break  # a ZERO may stop part-way (documented): the model no longer holds
        report.faults_injected += counter.failed
        check_frames(k, report, f"allocation {fail_at}")
        k.close()


# ============================================================================ misbehaving pagers


def _serve(pager: Any, k: Kernel, behaviour: str, stop: threading.Event) -> None:
    """A pager thread that misbehaves as told."""
    while not stop.is_set():
        try:
            req = pager.get_request(0.05)
        except ZxError:
            continue
        if req.command != vmo.PageRequestCommand.READ:
            continue
        with contextlib.suppress(ZxError):
            aux = k.vmo_create(req.length + PS)
            aux.write(b"P" * (req.length + PS))
            if behaviour == "twice":
                pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
                pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
            elif behaviour == "wrong_range":
                other = (req.offset + req.length) % req.vmo.get_size()
                pager.supply_pages(req.vmo, other, PS, aux, 0)
            elif behaviour == "fail":
                pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length, Status.ERR_IO)
            elif behaviour == "dies":
                pager.close()
                stop.set()
            else:  # a pager that works
                pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
            aux.close()


def pager_fault_round(report: Report, behaviour: str, use_mapping: bool = True) -> None:
    """Readers of a pager-backed VMO (``v.read`` and a mapping) against a pager that
    ``behaviour``s: ``never`` answers, answers ``twice``, answers the ``wrong_range``,
    ``raise``s in its handler, ``fail``s the request, or ``dies``."""
    k = Kernel(memory=8 << 20, page_request_timeout=0.3)
    stop = threading.Event()
    if behaviour == "raise":
        def handler(req: Any) -> None:
            raise RuntimeError("the pager's own bug")

        pager = k.pager_create(handler)
        server = None
    else:
        pager = k.pager_create()
        server = threading.Thread(target=_serve, args=(pager, k, behaviour, stop),
                                  name="vmo-robust-pager") if behaviour != "never" else None
    v = pager.create_vmo(8 * PS)
    m = v.map(fault_around=1) if use_mapping and uffd_available() else None
    report.faults_injected += 1
    results: list[Any] = []

    def reader(i: int) -> None:
        try:
            off = (i % 8) * PS
            data = m.read(PS, off) if (m is not None and i % 2) else v.read(PS, off)
            if data not in (b"P" * PS,):
                results.append(f"reader {i} read wrong bytes {data[:8]!r}")
        except ZxError as e:
            if e.status not in (Status.ERR_TIMED_OUT, Status.ERR_IO, Status.ERR_BAD_STATE,
                                Status.ERR_BAD_HANDLE, Status.ERR_NOT_FOUND):
                results.append(f"reader {i}: {e!r}")
        except Exception as e:  # noqa: BLE001
            results.append(f"reader {i}: {type(e).__name__}: {e}")

    readers = [threading.Thread(target=reader, args=(i,), name=f"vmo-robust-reader-{i}")
               for i in range(6)]
    if server is not None:
        server.start()
    for t in readers:
        t.start()
    report.threads += len(readers) + (server is not None)
    for t in readers:
        t.join(20)
        if t.is_alive():
            report.add_problem("hangs", f"pager that {behaviour}: a reader never returned")
    stop.set()
    if server is not None:
        server.join(10)
        if server.is_alive():
            report.add_problem("hangs", f"pager that {behaviour}: its server never ended")
    for r in results:
        report.add_problem("corruptions", f"pager that {behaviour}: {r}")
    validate(k, report, f"pager that {behaviour}")
    if m is not None:
        m.unmap()
    pager.close()
    mgr = mapping.manager_for(k, create=False)
    if mgr is not None and not mgr.handler.join_workers(10):
        report.add_problem("hangs", f"pager that {behaviour}: fault workers never ended")
    check_frames(k, report, f"pager that {behaviour}")
    k.close()


# ============================================================================ killed workloads


def store_counters(ctx: Any, name: str) -> None:
    """Workload target: write counter ``i`` into page ``i % pages``, forever."""
    mv = ctx.mappings[name].memoryview()
    pages = mv.nbytes // PS
    i = 0
    while True:
        p = i % pages
        mv[p * PS: p * PS + 8] = struct.pack("<Q", i)
        i += 1


def workload_kill_round(report: Report, rng: random.Random) -> None:
    """Kill a workload mid-fault (while it stores) or mid-map, at a random point."""
    from vmo.mmu.workload import Workload

    k = Kernel(memory=8 << 20)
    v = k.vmo_create(16 * PS)
    w = Workload(k, timeout=10.0)
    mid_map = rng.random() < 0.4
    try:
        if mid_map:
            killer = threading.Timer(rng.uniform(0, 0.02), w.kill)
            killer.start()
            for _ in range(20):
                try:
                    w.map(v, fault_around=rng.choice([1, 4, 16])).unmap()
                except ZxError as e:
                    if e.status != Status.ERR_PEER_CLOSED:
                        report.add_problem("corruptions", f"map while killed: {e!r}")
                    break
            killer.join()
        else:
            m = w.map(v, name="v", fault_around=rng.choice([1, 4, 16]))
            w.start(store_counters, "v")
            time.sleep(rng.uniform(0.001, 0.05))
            if rng.random() < 0.5:
                v.read(PS, rng.randrange(16) * PS)  # recalls: the next store faults again
            w.kill()
            deadline = time.monotonic() + 10
            while not m.unmapped and time.monotonic() < deadline:
                time.sleep(0.005)
            if not m.unmapped:
                report.add_problem("hangs", "a killed workload's mapping was never unmapped")
        report.workloads_killed += 1
    finally:
        w.close()
    report.threads += 1
    content = v.read(16 * PS)
    for p in range(16):
        page = content[p * PS: (p + 1) * PS]
        (counter,) = struct.unpack_from("<Q", page)
        if page[8:] != bytes(PS - 8) or (counter and counter % 16 != p):
            report.add_problem("corruptions", f"killed workload: page {p} holds {page[:16]!r}")
    validate(k, report, "killed workload")
    local = v.map() if uffd_available() else None  # the kernel keeps working
    if local is not None:
        local.write(b"after", 0)
        if v.read(5) != b"after":
            report.add_problem("corruptions", "kernel broken after a killed workload")
        local.unmap()
    check_frames(k, report, "killed workload")
    k.close()


HOST_SCRIPT = """
import sys, time
sys.path[:0] = {paths!r}
import vmo
from vmo.mmu.workload import Workload
k = vmo.Kernel(memory=8 << 20)
v = k.vmo_create(16 * 4096)
w = Workload(k)
w.map(v, name="v")
w.start("vmo.testing.robust:store_counters", "v")
print(w.pid, flush=True)
if {wait!r}:
    time.sleep(600)
"""


def host_kill_round(report: Report, rng: random.Random) -> None:
    """A host with a running workload, killed with SIGKILL: no process may be left."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT.format(paths=[here], wait=True)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert host.stdout is not None
    try:
        line = host.stdout.readline()
        wpid = int(line)
        time.sleep(rng.uniform(0, 0.1))
        host.kill()
        host.wait(10)
        report.hosts_killed += 1
        report.workloads_killed += 1
        deadline = time.monotonic() + 10
        while process_alive(wpid):
            if time.monotonic() > deadline:
                report.add_problem("leaks", f"workload {wpid} outlived its SIGKILLed host")
                os.kill(wpid, signal.SIGKILL)
                break
            time.sleep(0.02)
    except ValueError:
        report.add_problem("hangs", "the host did not start its workload")
        host.kill()
        host.wait(10)
    finally:
        host.stdout.close()


def process_alive(pid: int) -> bool:
    """Is ``pid`` running (not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# ============================================================================ threads


def threads_round(report: Report, rng: random.Random, nthreads: int = 8,
                  steps: int = 60) -> None:
    """``nthreads`` threads on one shared hierarchy, a pager thread and a workload storing
    through a mapping; then validate and compare each owned range with its last pattern."""
    k = Kernel(memory=32 << 20, page_request_timeout=5.0)
    per = 4  # pages owned by each thread
    root = k.vmo_create((nthreads + 1) * per * PS)
    pager = k.pager_create()
    paged = pager.create_vmo(8 * PS)
    stop = threading.Event()
    server = threading.Thread(target=_serve, args=(pager, k, "good", stop),
                              name="vmo-robust-pager")
    errors: list[str] = []
    last: dict[int, bytes] = {}
    maps = uffd_available()
    seeds = [rng.randrange(2**32) for _ in range(nthreads)]

    def worker(i: int) -> None:
        r = random.Random(seeds[i])
        base = i * per * PS
        mine = root.map(base, per * PS) if maps and i % 2 else None
        kids: list[vmo.Vmo] = []
        try:
            for step in range(steps):
                choice = r.random()
                if choice < 0.4:
                    pattern = bytes([i * 16 + step % 16 + 1]) * (per * PS)
                    if mine is not None:
                        mine.write(pattern)
                    else:
                        root.write(pattern, base)
                    last[i] = pattern
                elif choice < 0.55:
                    kids.append(root.create_child(
                        r.choice([ChildOptions.SNAPSHOT, ChildOptions.SLICE,
                                  ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE]), base, per * PS))
                elif choice < 0.7 and kids:
                    kids.pop(r.randrange(len(kids))).close()
                elif choice < 0.8 and kids:
                    c = kids[-1]
                    with contextlib.suppress(ZxError):  # a slice writes through to our range
                        if c.get_info().flags & vmo.VmoInfoFlags.IS_COW_CLONE:
                            c.write(b"kid", r.randrange(per) * PS)
                elif choice < 0.9:
                    got = root.read(per * PS, base)
                    if i in last and got != last[i]:
                        errors.append(f"thread {i} read {got[:4]!r}, wrote {last[i][:4]!r}")
                else:
                    paged.read(PS, r.randrange(8) * PS)
        except ZxError as e:
            errors.append(f"thread {i}: {e!r}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"thread {i}: {type(e).__name__}: {e}")
        finally:
            for c in kids:
                c.close()
            if mine is not None:
                mine.unmap()

    workload = None
    wl_region = nthreads * per * PS
    if maps:
        from vmo.mmu.workload import Workload, fill

        workload = Workload(k, timeout=20.0)
        workload.map(root, wl_region, per * PS, name="t", fault_around=rng.choice([1, 16]))
        workload.start(fill, "t", 0x77, 0, per * PS, 3)
    server.start()
    threads = [threading.Thread(target=worker, args=(i,), name=f"vmo-robust-t{i}")
               for i in range(nthreads)]
    for t in threads:
        t.start()
    report.threads += nthreads + 1 + (workload is not None)
    for t in threads:
        t.join(60)
        if t.is_alive():
            report.add_problem("hangs", f"{t.name} never finished")
    if workload is not None:
        try:
            workload.result(30)
        except ZxError as e:
            report.add_problem("hangs", f"the workload toucher: {e!r}")
        workload.close()
        got = root.read(per * PS, wl_region)
        if got[::3] != bytes([0x77]) * len(got[::3]):
            report.add_problem("corruptions", "the workload's stores were lost")
    stop.set()
    server.join(10)
    for text in errors:
        report.add_problem("corruptions", text)
    for i, pattern in last.items():
        if root.read(per * PS, i * per * PS) != pattern:
            report.add_problem("corruptions", f"thread {i}'s last write was lost")
    validate(k, report, "threads")
    pager.close()
    check_frames(k, report, "threads")
    k.close()


# ============================================================================ the campaign


ROUNDS = ("bad_input", "allocation", "pager", "workload_kill", "host_kill", "threads")


def run(seconds: float, seed: int | None = None, *, short: bool = False,
        progress: Callable[[Report], None] | None = None) -> Report:
    """Run rounds in turn until ``seconds`` have passed (at least one of each). ``short``:
    smaller rounds (for CI)."""
    rng = random.Random(seed)
    report = Report()
    t0 = time.monotonic()
    baseline = Resources.now()
    behaviours = ["never", "twice", "wrong_range", "raise", "fail", "dies"]
    workloads = uffd_available()
    i = 0
    while True:
        kind = ROUNDS[i % len(ROUNDS)]
        if i >= len(ROUNDS) and time.monotonic() - t0 >= seconds:
            break
        i += 1
        before = Resources.now()
        try:
            if kind == "bad_input":
                bad_input_round(report, examples=30 if short else 100,
                                with_workload=workloads and (not short or i == 1))
            elif kind == "allocation":
                allocation_failure_round(report, use_mapping=workloads)
            elif kind == "pager":
                for b in (behaviours if short or i <= len(ROUNDS) else [rng.choice(behaviours)]):
                    pager_fault_round(report, b, use_mapping=workloads)
            elif kind == "workload_kill":
                if not workloads:
                    continue
                for _ in range(2 if short else 4):
                    workload_kill_round(report, rng)
            elif kind == "host_kill":
                if not workloads:
                    continue
                host_kill_round(report, rng)
            else:
                threads_round(report, rng, steps=30 if short else 80)
        except Exception as e:  # noqa: BLE001 - a round that crashes is a finding
            import traceback

            report.add_problem("corruptions", f"round {kind} raised {type(e).__name__}: {e}\n"
                               + traceback.format_exc(limit=4))
        settle_and_check(before, report, f"round {kind}")
        report.rounds[kind] = report.rounds.get(kind, 0) + 1
        report.seconds = time.monotonic() - t0
        if progress is not None:
            progress(report)
    settle_and_check(baseline, report, "the whole campaign")
    report.seconds = time.monotonic() - t0
    return report


def main(seconds: float, seed: int | None = None) -> int:
    """``vmo fuzz --robust --time N``: run the campaign, print the figures, 0 if clean."""
    def progress(r: Report) -> None:
        print(f"[{r.seconds:6.0f} s] inputs {r.inputs_tried}, faults {r.faults_injected}, "
              f"threads {r.threads}, workloads killed {r.workloads_killed}, corruptions "
              f"{r.corruptions}, hangs {r.hangs}, leaks {r.leaks}", flush=True)

    report = run(seconds, seed, progress=progress)
    print(report.summary())
    return 0 if report.ok else 1


__all__ = [
    "Report",
    "Resources",
    "allocation_failure_round",
    "bad_input_round",
    "host_kill_round",
    "main",
    "pager_fault_round",
    "process_alive",
    "run",
    "threads_round",
    "workload_kill_round",
]
