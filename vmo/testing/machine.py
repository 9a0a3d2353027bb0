"""The oracle state machine: drive a real `vmo.Kernel` and the `Oracle` with the same program.

Every rule performs one public call on both, checks that the real call failed exactly when and
how the oracle said it would, and applies the effect. After every step the invariants compare
every live VMO's whole content and size with the oracle and run `vmo.debug.validate`.

Subclass `VmoStateMachine` to add rules (a new operation, a pager playing its part, a different
model); set ``validate_every_step`` or ``compare_every_step`` to ``False`` to trade strength for
speed. ``VmoStateMachine.TestCase`` is a ready unittest/pytest test case.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import currently_in_test_context, note, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

import vmo.debug as debug
import vmo.testing.strategies as vs
from vmo.errors import Status, ZxError
from vmo.kernel import Kernel
from vmo.page_list import EMPTY, MARKER
from vmo.pmm import PAGE_SIZE, SPLIT_LEFT, SPLIT_RIGHT
from vmo.testing.oracle import Disc, IdNode, OPin, Oracle, OVmo
from vmo.types import ChildOptions, LockState, VmoOp, VmoOptions
from vmo.vm_object import PinnedRange, Vmo

T = TypeVar("T")

_KIND_OPTIONS = {
    "snapshot": ChildOptions.SNAPSHOT,
    "aow": ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE,
    "slice": ChildOptions.SLICE,
}


class Mismatch(AssertionError):
    """The real kernel and the oracle disagree."""


class VmoStateMachine(RuleBasedStateMachine):
    #: Bytes of arena for each run; large enough that ERR_NO_MEMORY never happens.
    kernel_memory = 64 * 2**20
    validate_every_step = True
    compare_every_step = True
    #: Check incrementally: after most steps the invariants look only at what can have changed
    #: (hierarchies whose ``generation`` moved, VMOs whose oracle content or attribution chain
    #: changed); everything is checked every ``full_check_every`` steps, after any call that
    #: acts outside one tree's generation (pins, lock ops, reclaim, dedup) and at teardown.
    #: Off: every check in full after every step.
    incremental_checks = True
    full_check_every = 8
    #: Filled by runners that want statistics (op mix, depth, merges).
    stats: Counter[str] | None = None
    #: Whether the first checked call of the current rule was one that succeeds (set by
    #: `expect`; runners reset it before each rule to count each rule's share of real work).
    rule_outcome: bool | None = None
    #: Rules that exist to make bad calls (error paths): their calls are counted apart.
    error_rules: frozenset[str] = frozenset({"bad_call", "use_maybe_closed"})

    vmos = Bundle("vmos")
    pins = Bundle("pins")
    discardables = Bundle("discardables")

    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel(memory=self.kernel_memory)
        self.oracle = Oracle()
        self.real: dict[int, Vmo] = {}  # oracle koid -> real VMO
        self.real_pins: dict[int, PinnedRange] = {}
        self.step_time_validate = 0.0
        #: Deepest/widest shapes this program reached (`_observe_shape`), and the generation
        #: of each hierarchy when it was last looked at.
        self.shape: Counter[str] = Counter()
        self._shape_seen: dict[int, int] = {}
        # Incremental checks: what each invariant last saw, how many times it ran, and the
        # invariants that must check everything after this step.
        self._validate_cache = debug.ValidateCache()
        self._compared: dict[int, tuple[int, int, bytes]] = {}
        self._trees_seen: dict[int, int] = {}
        self._check_runs: Counter[str] = Counter()
        self._force_full: set[str] = set()
        # A file for write_from_fd / read_to_fd: two and a half pages, so that reads past its
        # end (zeros) happen, and a second one the VMOs are written to.
        self.file_bytes = vs.payload(7, 2 * PAGE_SIZE + PAGE_SIZE // 2)
        self.in_fd = os.memfd_create("vmo-machine-in", os.MFD_CLOEXEC)
        os.write(self.in_fd, self.file_bytes)
        self.out_fd = os.memfd_create("vmo-machine-out", os.MFD_CLOEXEC)

    def teardown(self) -> None:
        if self.__dict__.get("_torn_down"):
            return
        self._report_shape()
        try:
            if sys.exc_info()[0] is None and not self.k.closed:
                self.check_everything()  # the end of a program: no incremental shortcut
        finally:
            self._torn_down = True
            self.k.close()
            os.close(self.in_fd)
            os.close(self.out_fd)

    def check_everything(self) -> None:
        """Every invariant, in full (what `teardown` runs at the end of a program)."""
        self._force_full |= _CHECKS
        self.contents_match()
        self.hierarchy_valid()
        self.structure_matches()

    def _full_check(self, which: str) -> bool:
        """Must invariant ``which`` check everything this time?"""
        runs = self._check_runs[which]
        self._check_runs[which] = runs + 1
        forced = which in self._force_full
        self._force_full.discard(which)
        return (not self.incremental_checks or forced
                or runs % max(1, self.full_check_every) == 0)

    # ------------------------------------------------------------------ checking helpers

    def _with_dump(self, err: Exception) -> Exception:
        """Attach the hierarchy's dump: as a hypothesis note inside a test (it then shows with
        the falsifying example), else on the exception (repro files, byte fuzzers)."""
        dump = debug.dump(self.k)
        if currently_in_test_context():
            note(dump)
        else:
            err.add_note(dump)
        return err

    def _count(self, what: str) -> None:
        if self.stats is not None:
            self.stats[what] += 1

    def expect(self, what: str, status: Status | None, call: Callable[[], T]) -> T | None:
        """Run ``call``; it must fail with ``status`` (or succeed when ``status`` is None)."""
        self._count(what)
        if what.startswith(_GLOBAL_CALLS):
            self._force_full |= _CHECKS
        if self.rule_outcome is None:
            self.rule_outcome = status is None  # the rule's first call: did it do real work?
        try:
            result = call()
        except ZxError as e:
            if status is None:
                raise Mismatch(f"{what}: expected success, got {e}") from e
            if e.status != status:
                raise Mismatch(f"{what}: expected {status.name}, got {e}") from e
            self._count(f"{what}:{status.name}")
            return None
        if status is not None:
            raise Mismatch(f"{what}: expected {status.name}, but it succeeded")
        return result

    def op_range_checked(self, v: OVmo, op: str, offset: int, size: int) -> tuple[Any, Any]:
        """``op_range`` of ``op`` (a `VmoOp` name) on the real VMO, against the oracle's answer;
        returns ``(what the oracle returned, what the call returned)``."""
        status, want = self.oracle.op_range(v, op, offset, size)
        got = self.expect(f"op:{op}", status,
                          lambda: self.real[v.koid].op_range(VmoOp[op], offset, size))
        return want, got

    # ------------------------------------------------------------------ choosing VMOs

    def _fit(self, v: OVmo, need: str) -> OVmo:
        """``v`` if it can take a call that does real work of kind ``need``, else the next live
        VMO (by koid, wrapping around) that can, else ``v``. Rules whose calls need a VMO of a
        kind (resizable, not resizable, without a copy-on-write parent, ...) use it so that
        most of their calls succeed; the calls that must fail are `bad_call`'s. Deterministic:
        a printed program replays the same choice."""
        ok = _FITS[need]
        if ok(self.oracle, v):
            return v
        fitting = [ov for ov in self.oracle.live() if ok(self.oracle, ov)]
        if not fitting and need in _LOOSER:
            looser = _FITS[_LOOSER[need]]
            fitting = [ov for ov in self.oracle.live() if looser(self.oracle, ov)]
        if not fitting and need in _FRESH_FITS:
            # Every live VMO is discardable, a slice, pinned or closed (programs that made
            # many discardable VMOs): a new filled VMO, so the call still does real work.
            fresh = self.filled(4, need == "resizable", v.koid + 1)
            return fresh if isinstance(fresh, OVmo) and ok(self.oracle, fresh) else v
        if not fitting:
            return v
        later = [ov for ov in fitting if ov.koid > v.koid]
        return (later or fitting)[0]

    # ------------------------------------------------------------------ rules

    @rule(target=vmos, size=vs.sizes(), resizable=st.booleans(),
          discardable=st.sampled_from([False, False, False, True]))
    def create(self, size: int, resizable: bool, discardable: bool) -> Any:
        opts = VmoOptions(0)
        if resizable:
            opts |= VmoOptions.RESIZABLE
        if discardable:
            opts |= VmoOptions.DISCARDABLE
        status, ov = self.oracle.create(size, resizable, discardable)
        v = self.expect("create", status, lambda: self.k.vmo_create(size, opts))
        if ov is None or v is None:
            return multiple()
        self.real[ov.koid] = v
        return ov

    @rule(v=vmos, at=vs.inside_positions(), length=vs.lengths(), seed=vs.seeds)
    def write(self, v: OVmo, at: tuple[int, int], length: int, seed: int) -> None:
        offset = vs.resolve_inside(at, v.size)
        data = vs.payload(seed, vs.fit_length(length, offset, v.size))
        status = self.oracle.write(v, offset, data)
        self.expect("write", status, lambda: self.real[v.koid].write(data, offset))

    @rule(v=vmos, at=vs.inside_positions(), length=vs.lengths())
    def read(self, v: OVmo, at: tuple[int, int], length: int) -> None:
        offset = vs.resolve_inside(at, v.size)
        length = vs.fit_length(length, offset, v.size)
        status, want = self.oracle.read(v, offset, length)
        got = self.expect("read", status, lambda: self.real[v.koid].read(length, offset))
        if status is None and got != want:
            raise Mismatch(f"read koid {v.koid} [{offset:#x}, +{length:#x}) differs from the "
                           f"oracle at byte {_first_difference(got, want)}")

    @rule(v=vmos, at=vs.inside_positions(), length=vs.lengths(),
          fd_at=st.sampled_from([0, 1, PAGE_SIZE, 2 * PAGE_SIZE + 7, 3 * PAGE_SIZE]))
    def write_from_fd(self, v: OVmo, at: tuple[int, int], length: int, fd_at: int) -> None:
        """`Vmo.write_from_fd`: a write whose bytes come from the file (zeros past its end)."""
        offset = vs.resolve_inside(at, v.size)
        length = vs.fit_length(length, offset, v.size)
        data = self.file_bytes[fd_at:fd_at + length].ljust(length, b"\0")
        status = self.oracle.write(v, offset, data)
        self.expect("write_from_fd", status,
                    lambda: self.real[v.koid].write_from_fd(self.in_fd, length, offset, fd_at))

    @rule(v=vmos, at=vs.inside_positions(), length=vs.lengths())
    def read_to_fd(self, v: OVmo, at: tuple[int, int], length: int) -> None:
        """`Vmo.read_to_fd`: a read whose bytes go to a file, compared there."""
        offset = vs.resolve_inside(at, v.size)
        length = vs.fit_length(length, offset, v.size)
        status, want = self.oracle.read(v, offset, length)
        written = self.expect("read_to_fd", status,
                              lambda: self.real[v.koid].read_to_fd(self.out_fd, length, offset))
        if status is None:
            got = os.pread(self.out_fd, length, 0)
            if written != length or got != want:
                raise Mismatch(f"read_to_fd koid {v.koid} [{offset:#x}, +{length:#x}) wrote "
                               f"{written} bytes that differ from the oracle at byte "
                               f"{_first_difference(got, want or b'')}")

    @rule(target=vmos, v=vmos, kind=st.sampled_from(vs.CHILD_KINDS),
          at=vs.aligned_positions(), size=vs.sizes(),
          resizable=st.sampled_from([False, False, True]),
          no_write=st.sampled_from([False, False, False, True]))
    def create_child(self, v: OVmo, kind: str, at: tuple[int, int], size: int, resizable: bool,
                     no_write: bool) -> Any:
        """A child of any kind. Slices need a parent that is not resizable and a window
        inside it; when ``v`` cannot have one, the next VMO that can is used (bad slices have
        `bad_call`)."""
        v = self._fit(v, "clonable" if kind != "slice" else "sliceable")
        offset = min(vs.resolve(at, v.size), v.size // PAGE_SIZE * PAGE_SIZE)
        if kind == "slice":
            size, resizable = min(size, v.size - offset), False
        return self._create_child(v, kind, offset, size, resizable, no_write)

    @rule(target=vmos, v=vmos, at=vs.aligned_positions(), size=vs.sizes(),
          resizable=st.booleans())
    def snapshot(self, v: OVmo, at: tuple[int, int], size: int, resizable: bool) -> Any:
        """Snapshots again (weights the mix towards deep hierarchies)."""
        v = self._fit(v, "clonable")
        return self._create_child(v, "snapshot", vs.resolve(at, v.size), size, resizable, False)

    def _create_child(self, v: OVmo, kind: str, offset: int, size: int, resizable: bool,
                      no_write: bool) -> Any:
        opts = _KIND_OPTIONS[kind]
        if resizable:
            opts |= ChildOptions.RESIZABLE
        if no_write:
            opts |= ChildOptions.NO_WRITE
        status, child = self.oracle.create_child(v, kind, offset, size, resizable, no_write)
        real = self.real[v.koid]
        c = self.expect(f"child:{kind}", status, lambda: real.create_child(opts, offset, size))
        if child is None or c is None:
            return multiple()
        self.real[child.koid] = c
        if self.stats is not None:
            self.stats["max_depth"] = max(self.stats["max_depth"], c.cow.depth())
        return child

    @rule(v=consumes(vmos))
    def close(self, v: OVmo) -> None:
        real = self.real[v.koid]
        hidden_before = _hidden_count(self.k)
        status = self.oracle.close(v)
        self.expect("close", status, real.close)
        # The handle is gone for every call.
        self.expect("closed-read", Status.ERR_BAD_HANDLE, lambda: real.read(0, 0))
        self.expect("closed-close", None, real.close)  # idempotent (API.md)
        if status is None and self.stats is not None and _hidden_count(self.k) < hidden_before:
            self.stats["merges"] += 1

    @rule(v=vmos, size=vs.sizes())
    def set_size(self, v: OVmo, size: int) -> None:
        """Resize ``v``, or the next resizable VMO when ``v`` is not (`bad_call` resizes
        VMOs that are not)."""
        v = self._fit(v, "resizable")
        status = self.oracle.set_size(v, size)
        self.expect("set_size", status, lambda: self.real[v.koid].set_size(size))

    @rule(v=vmos, op=st.sampled_from(vs.OPS), at=vs.inside_positions(), size=vs.lengths())
    def op_range(self, v: OVmo, op: str, at: tuple[int, int], size: int) -> None:
        if op == "DECOMMIT":
            v = self._fit(v, "decommittable")
        offset = vs.resolve_inside(at, v.size)
        size = vs.fit_length(size, offset, v.size)
        if op == "DECOMMIT":  # whole pages only (bad_call does ragged ones)
            offset = offset // PAGE_SIZE * PAGE_SIZE
            size = max(PAGE_SIZE, size // PAGE_SIZE * PAGE_SIZE) if v.size > offset else 0
            size = min(size, v.size - offset)
        self.op_range_checked(v, op, offset, size)

    @rule(v=vmos, op=st.sampled_from(vs.LOCK_OPS + ("reclaim", "dedup")),
          whole=st.sampled_from([True, True, True, False]),
          target_pages=st.sampled_from([0, 1, 2, 4, 1 << 20]))
    def lock_op(self, v: OVmo, op: str, whole: bool, target_pages: int) -> None:
        """LOCK / TRY_LOCK / UNLOCK of a discardable VMO (the next open one when ``v`` is not,
        a reclaim when there is none; an UNLOCK of one not locked locks it: `bad_call` makes
        those calls), or a kernel-wide reclaim."""
        if op in ("reclaim", "dedup"):
            self.kernel_op(op if op == "dedup" else target_pages)
            return
        v = self._fit(v, "discardable")
        if not v.discardable or v.closed:
            # Nothing to lock in this program (`bad_call` locks VMOs that are not
            # discardable): reclaim instead, which has work to do after lock cycles.
            self.kernel_op(target_pages)
            return
        if op == "UNLOCK" and v.lock_count == 0:
            op = "LOCK"
        self._lock_op(v, op, whole)

    def _lock_op(self, v: OVmo, op: str, whole: bool) -> None:
        size = v.size if whole else max(0, v.size - PAGE_SIZE)
        status, want = self.oracle.op_range(v, op, 0, size)
        got = self.expect(f"op:{op}", status,
                          lambda: self.real[v.koid].op_range(VmoOp[op], 0, size))
        if status is None and op == "LOCK":
            assert isinstance(got, LockState) and isinstance(want, tuple)
            if (got.offset, got.size, got.discarded_offset, got.discarded_size) != want:
                raise Mismatch(f"LOCK returned {got}, oracle {want}")

    def kernel_op(self, action: str | int) -> None:
        """Kernel-wide reclaim: the zero-page scanner, or discardable reclaim of N pages."""
        if action == "dedup":
            self.oracle.dedup_zero_pages()
            self.expect("dedup", None, self.k.dedup_zero_pages)
            return
        assert isinstance(action, int)
        want = self.oracle.reclaim_discardable(action)
        got = self.expect("reclaim", None, lambda: self.k.reclaim_discardable(action))
        if got != want:
            raise Mismatch(f"reclaim_discardable({action}) freed {got}, oracle {want}")

    @rule(v=vmos, call=st.sampled_from(vs.BAD_CALLS), at=vs.positions(), length=vs.lengths(),
          past=st.sampled_from([0, 1, PAGE_SIZE, 7 * PAGE_SIZE + 3]))
    def bad_call(self, v: OVmo, call: str, at: tuple[int, int], length: int,
                 past: int) -> None:
        """A call that should fail (the error paths): past the end, ragged where whole pages
        are needed, a resize of a VMO that is not resizable, a slice of one that is, an empty
        or out-of-range pin, an UNLOCK of a VMO that is not locked, a lock op on one that is
        not discardable. The oracle decides the status, as for every other call."""
        offset = vs.resolve(at, v.size)
        end = v.size + past  # at or past the end
        n = vs.resolve_length(length, offset, v.size)
        real = self.real[v.koid]
        if call == "read_past":
            status, _ = self.oracle.read(v, end, n)
            self.expect("read", status, lambda: real.read(n, end))
        elif call == "read_overlong":
            status, _ = self.oracle.read(v, offset, v.size - offset + past)
            self.expect("read", status, lambda: real.read(v.size - offset + past, offset))
        elif call == "write_past":
            data = vs.payload(past + 1, max(2, n % (2 * PAGE_SIZE)))
            start = max(0, v.size - len(data) // 2) if past else end  # straddles, or beyond
            status = self.oracle.write(v, start, data)
            self.expect("write", status, lambda: real.write(data, start))
        elif call == "op_past":
            self.op_range_checked(v, ("COMMIT", "ZERO", "DECOMMIT", "DONT_NEED")[past % 4],
                                  offset, v.size - offset + past)
        elif call == "decommit_ragged":
            self.op_range_checked(v, "DECOMMIT", offset | 1, PAGE_SIZE)
        elif call == "resize_fixed":
            fixed = [ov for ov in self.oracle.live() if not ov.resizable] or [v]
            target = fixed[past % len(fixed)]
            self.set_size(target, n)
        elif call == "slice_bad":
            self._create_child(v, "slice", offset, max(PAGE_SIZE, v.size - offset + past),
                               False, False)
        elif call == "child_ragged":
            self._create_child(v, "snapshot", offset | 1, PAGE_SIZE, False, False)
        elif call == "pin_bad":
            size = 0 if past == 0 else (v.size // PAGE_SIZE + 1) * PAGE_SIZE
            status, _ = self.oracle.pin(v, 0, size, False)
            self.expect("pin", status, lambda: real.pin(0, size, False))
        elif call == "unlock_unlocked":
            if v.lock_count == 0:
                self._lock_op(v, "UNLOCK", True)
            else:
                self._lock_op(v, "LOCK", past % 2 == 0)
        else:
            assert call == "size_huge"
            self.set_size(v, 2**64 + past)

    @rule(v=vmos, call=st.sampled_from(["read", "write", "child", "op", "size", "info"]))
    def use_maybe_closed(self, v: OVmo, call: str) -> None:
        """A closed handle must answer ERR_BAD_HANDLE to every call. Closed handles leave the
        bundle, so the call goes to one of the program's closed VMOs (chosen by ``v``'s koid)
        when there is one, else to ``v``."""
        closed = [ov for ov in self.oracle.vmos if ov.closed]
        if closed:
            v = closed[v.koid % len(closed)]
        real = self.real[v.koid]
        if call == "read":
            status, _ = self.oracle.read(v, 0, 0)
            self.expect("read0", status, lambda: real.read(0, 0))
        elif call == "write":
            status = self.oracle.write(v, 0, b"")
            self.expect("write0", status, lambda: real.write(b"", 0))
        elif call == "child":
            if v.closed:
                self.expect("child", Status.ERR_BAD_HANDLE,
                            lambda: real.create_child(ChildOptions.SNAPSHOT, 0, 0))
        elif call == "op":
            status, _ = self.oracle.op_range(v, "COMMIT", 0, 0)
            self.expect("op0", status, lambda: real.op_range(VmoOp.COMMIT, 0, 0))
        elif call == "size":
            if v.closed:
                self.expect("size", Status.ERR_BAD_HANDLE, real.get_size)
        else:
            self.check_info(v)

    @rule(target=pins, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 4),
          writable=st.booleans())
    def pin(self, v: OVmo, at: tuple[int, int], npages: int, writable: bool) -> Any:
        """Pin whole pages inside the VMO (`bad_call` pins nothing, or past the end)."""
        v = self._fit(v, "pinnable")
        pages = v.size // PAGE_SIZE
        npages = max(1, min(npages, pages))
        offset = min(vs.resolve(at, v.size), max(0, pages - npages) * PAGE_SIZE)
        size = npages * PAGE_SIZE
        writable = writable and v.writable
        status, opin = self.oracle.pin(v, offset, size, writable)
        p = self.expect("pin", status, lambda: self.real[v.koid].pin(offset, size, writable))
        if opin is None or p is None:
            return multiple()
        self.real_pins[id(opin)] = p
        return opin

    @rule(p=consumes(pins))
    def unpin(self, p: OPin) -> None:
        """Unpin ``p``, or, when its VMO was closed (the pin went with it), the oldest pin
        still held (`use_maybe_closed` and the bad-input tests cover dead pins)."""
        if p.released or p.holder.closed:
            held = [q for q in self.oracle.pins if not q.released and not q.holder.closed
                    and id(q) in self.real_pins]
            if held:
                p = held[0]
        status = self.oracle.unpin(p)
        self.expect("unpin", status, self.real_pins[id(p)].unpin)

    @rule(v=vmos)
    def check_info(self, v: OVmo) -> None:
        real = self.real[v.koid]
        if v.closed:
            self.expect("info", Status.ERR_BAD_HANDLE, real.get_info)
            return
        info = self.expect("info", None, real.get_info)
        assert info is not None
        checks = {
            "size_bytes": (info.size_bytes, v.size),
            "parent_koid": (info.parent_koid,
                            self.real[v.parent_koid].koid if v.parent_koid else 0),
            "num_children": (info.num_children, v.num_children),
            "is_cow_clone": (bool(info.flags & info.flags.IS_COW_CLONE), v.is_clone),
            "resizable": (bool(info.flags & info.flags.RESIZABLE), v.resizable),
            "discardable": (bool(info.flags & info.flags.DISCARDABLE), v.discardable),
        }
        if v.discardable:
            checks["committed_bytes"] = (info.committed_bytes, len(v.committed) * PAGE_SIZE)
        for name, (got, want) in checks.items():
            if got != want:
                raise Mismatch(f"info koid {v.koid}: {name} {got}, oracle {want}")

    # ------------------------------------------------------------------ hierarchy builders
    #
    # The rules above draw offsets and lengths that often fall outside the VMO, and most VMOs
    # they create are empty, so forks, migrations, split bits and markers over hidden pages are
    # rare. These rules make them common: every program starts from a VMO full of distinct
    # bytes, and whole-page writes, zeros and window snapshots stay inside their VMO.

    @initialize(target=vmos, npages=st.integers(1, vs.MAX_PAGES),
                resizable=st.sampled_from([True, True, False]),
                seed=vs.seeds)
    def filled(self, npages: int, resizable: bool, seed: int) -> Any:
        """A VMO whose every page holds distinct bytes (each program starts with one)."""
        ov = self.create(npages * PAGE_SIZE, resizable, False)
        if isinstance(ov, OVmo):
            self._write_at(ov, 0, vs.payload(seed, ov.size))
        return ov

    @rule(v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 4), seed=vs.seeds)
    def write_pages(self, v: OVmo, at: tuple[int, int], npages: int, seed: int) -> None:
        """Whole pages inside the VMO: always in range, so it forks whole pages."""
        offset, length = _pages_inside(v.size, at, npages)
        self._write_at(v, offset, vs.payload(seed, length))

    def _write_at(self, v: OVmo, offset: int, data: bytes) -> None:
        status = self.oracle.write(v, offset, data)
        self.expect("write", status, lambda: self.real[v.koid].write(data, offset))

    @rule(v=vmos, at=vs.positions(), npages=st.integers(0, 4),
          tail=st.sampled_from([0, 0, 1, -1, 100]))
    def zero_inside(self, v: OVmo, at: tuple[int, int], npages: int, tail: int) -> None:
        """ZERO of a range inside the VMO (markers over hidden pages, releases at the end)."""
        offset = min(vs.resolve(at, v.size), v.size)
        size = max(0, min(npages * PAGE_SIZE + tail, v.size - offset))
        self.op_range_checked(v, "ZERO", offset, size)

    @rule(target=vmos, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, vs.MAX_PAGES),
          resizable=st.sampled_from([False, True, True]))
    def snapshot_inside(self, v: OVmo, at: tuple[int, int], npages: int,
                        resizable: bool) -> Any:
        """A snapshot of a window inside the parent (offset windows, partial overlaps)."""
        v = self._fit(v, "clonable")
        offset = min(vs.resolve(at, v.size), max(0, v.size - PAGE_SIZE))
        size = max(PAGE_SIZE, min(npages * PAGE_SIZE, v.size - offset))
        return self._create_child(v, "snapshot", offset, size, resizable, False)

    @rule(v=vmos, npages=st.integers(0, vs.MAX_PAGES + 2))
    def resize_pages(self, v: OVmo, npages: int) -> None:
        """set_size to a whole number of pages (shrinks release parent pages, grows show
        zeros)."""
        self.set_size(self._fit(v, "resizable"), npages * PAGE_SIZE)

    @rule(target=vmos, v=vmos,
          action=st.sampled_from(["write", "write", "write", "zero", "zero", "zero", "commit",
                                  "snapshot", "snapshot", "resize"]),
          at=vs.aligned_positions(), npages=st.integers(1, 4), seed=vs.seeds)
    def cow_step(self, v: OVmo, action: str, at: tuple[int, int], npages: int,
                 seed: int) -> Any:
        """The operations that change a hierarchy's shape, weighted towards forks and markers:
        a whole-page write, a whole-page ZERO, a COMMIT, a snapshot of a window, a resize."""
        offset, length = _pages_inside(v.size, at, npages)
        if action == "write":
            self._write_at(v, offset, vs.payload(seed, length))
        elif action in ("zero", "commit"):
            op = action.upper()
            self.op_range_checked(v, op, offset, length)
        elif action == "snapshot":
            return self._create_child(v, "snapshot", offset, max(PAGE_SIZE, length),
                                      seed % 2 == 0, False)
        else:
            self.set_size(v, offset + (seed % 3) * PAGE_SIZE)
        return multiple()

    @rule(target=vmos, v=vmos, at=st.tuples(st.integers(1, 999), st.just(0)),
          npages=st.integers(1, 4), keep=st.integers(0, 3), backup=st.booleans())
    def snapshot_then_shrink(self, v: OVmo, at: tuple[int, int], npages: int, keep: int,
                             backup: bool) -> Any:
        """Snapshot a window of ``v``, then shrink ``v`` to ``keep`` pages, below the window
        (first, with ``backup``, snapshot all of ``v``, so that something beside it keeps
        seeing everything).

        The shrink releases ``[keep, end)`` of ``v``'s parent: the window snapshot still sees
        its part, so the release is cut into pieces, and the piece between ``keep`` and the
        window, seen by neither, goes up a level as a hole in the middle of a window that the
        backup still sees: a partial release, which only split bits can record. Returns the
        new snapshots. That path is rare otherwise."""
        made: list[OVmo] = []
        v = self._fit(v, "resizable")
        if backup:
            b = self._create_child(v, "snapshot", 0, v.size, False, False)
            if isinstance(b, OVmo):
                made.append(b)
        offset = min(vs.resolve(at, v.size), max(0, v.size - PAGE_SIZE))
        length = max(PAGE_SIZE, min(npages * PAGE_SIZE, v.size - offset))
        child = self._create_child(v, "snapshot", offset, length, False, False)
        if isinstance(child, OVmo):
            made.append(child)
            self.set_size(v, min(keep * PAGE_SIZE, offset))
        return multiple(*made)

    @rule(target=vmos, v=vmos, count=st.integers(2, 16), windows=st.booleans(), seed=vs.seeds)
    def fan(self, v: OVmo, count: int, windows: bool, seed: int) -> Any:
        """Tens of snapshots of one VMO (whole, or windows at staggered offsets): ``v`` ends
        up at the bottom of a chain of hidden nodes, each with a snapshot beside it. Then a
        whole-page write of ``v`` forks through every level."""
        v = self._fit(v, "clonable")
        made: list[OVmo] = []
        pages = max(1, v.size // PAGE_SIZE)
        for i in range(count):
            offset = (i * (seed % 5 + 1) % pages) * PAGE_SIZE if windows else 0
            size = max(PAGE_SIZE, v.size - offset) if not windows else PAGE_SIZE * (1 + i % 3)
            child = self._create_child(v, "snapshot", offset, size, i % 4 == 0, False)
            if not isinstance(child, OVmo):
                break
            made.append(child)
        if made and v.size:
            at = (seed % pages) * PAGE_SIZE
            self._write_at(v, at, vs.payload(seed, min(PAGE_SIZE, v.size - at)))
        return multiple(*made)

    @rule(target=vmos, v=vmos, depth=st.integers(2, 12), shrink=st.booleans(), seed=vs.seeds)
    def chain(self, v: OVmo, depth: int, shrink: bool, seed: int) -> Any:
        """A chain of snapshots, each of the one before (a deep hierarchy), each perhaps a
        page shorter than the last and resizable (so later shrinks release in the middle of
        windows that other levels still see), with a write at some level."""
        made: list[OVmo] = []
        cur = v = self._fit(v, "clonable")
        for i in range(depth):
            size = max(PAGE_SIZE, cur.size - (PAGE_SIZE if shrink and i % 2 else 0))
            child = self._create_child(cur, "snapshot", 0, size, True, False)
            if not isinstance(child, OVmo):
                break
            made.append(child)
            cur = child
        if made:
            target = made[seed % len(made)]
            if target.size:
                self._write_at(target, 0, vs.payload(seed, min(PAGE_SIZE, target.size)))
        return multiple(*made)

    @rule(target=vmos, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 3),
          then=st.sampled_from(["keep", "write", "write_close", "close"]), seed=vs.seeds)
    def zero_then_snapshot(self, v: OVmo, at: tuple[int, int], npages: int, then: str,
                           seed: int) -> Any:
        """ZERO whole pages of ``v`` and snapshot all of it: the markers move into the new
        hidden node. Then perhaps write the zeroed pages of ``v`` again, and perhaps close the
        snapshot at once (a short-lived backup), which merges the hidden node back into ``v``:
        its markers must survive the merge, and must give way to ``v``'s newer pages."""
        offset, length = _pages_inside(v.size, at, npages)
        self.op_range_checked(v, "ZERO", offset, length)
        child = self._create_child(v, "snapshot", 0, v.size, False, False)
        if not isinstance(child, OVmo):
            return child
        if then.startswith("write"):
            self._write_at(v, offset, vs.payload(seed, length))
        if then.endswith("close"):
            self.close(child)
            return multiple()
        return child

    @rule(target=vmos, npages=st.integers(3, vs.MAX_PAGES), at=st.integers(1, 999),
          window=st.integers(1, 3), keep=st.integers(0, 2), seed=vs.seeds)
    def fresh_partial_release(self, npages: int, at: int, window: int, keep: int,
                              seed: int) -> Any:
        """A new VMO full of distinct bytes, a backup snapshot of all of it, a window snapshot,
        and a shrink below the window: the hole between ``keep`` and the window is a partial
        release over pages the hidden node holds (`snapshot_then_shrink` on a VMO that has
        its pages, which the bundles draw rarely once trees grow)."""
        ov = self.filled(npages, True, seed)
        if not isinstance(ov, OVmo):
            return multiple()
        made = self.snapshot_then_shrink(ov, (at, 0), window, keep, True)
        return multiple(ov, *made.values)

    @rule(target=vmos, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 3),
          seed=vs.seeds)
    def zero_snapshot_merge(self, v: OVmo, at: tuple[int, int], npages: int,
                            seed: int) -> Any:
        """Snapshot ``v`` and ZERO pages of the snapshot (zero markers over ``v``'s pages);
        snapshot that twice (the markers move into a hidden node, which gets a hidden node
        below it), perhaps write a page of it, and close the first of the two at once: the
        hidden node holding the markers merges into the hidden node below (the merge's
        general path), and the markers must survive it, or the snapshot would see ``v``'s
        bytes again."""
        v = self._fit(v, "clonable")
        child = self._create_child(v, "snapshot", 0, v.size, True, False)
        if not isinstance(child, OVmo):
            return multiple()
        offset, length = _pages_inside(child.size, at, npages)
        self.op_range_checked(child, "ZERO", offset, length)
        backup = self._create_child(child, "snapshot", 0, child.size, False, False)
        inner = self._create_child(child, "snapshot", 0, child.size, False, False)
        if child.size and seed % 2:
            woff = (offset + length) % child.size if seed % 3 else offset
            self._write_at(child, woff, vs.payload(seed, min(64, child.size - woff)))
        if isinstance(backup, OVmo):
            self.close(backup)
        return multiple(*(x for x in (child, inner) if isinstance(x, OVmo)))

    @rule(target=vmos, v=vmos, page=st.integers(0, 999), other=st.integers(0, 999),
          both=st.sampled_from([True, True, False]), seed=vs.seeds)
    def fork_below_then_merge(self, v: OVmo, page: int, other: int, both: bool,
                              seed: int) -> Any:
        """Snapshot ``v`` as a backup, then again (``v``'s hidden parent gets a hidden child
        with ``v`` and the new snapshot below it); write one page in ``v`` and (with
        ``both``) the same page in the snapshot, so that the copy forked into the hidden
        child migrates on and leaves its slot empty; the backup writes another page; then the
        backup closes and the top hidden node merges into the hidden one below (the merge's
        general path). A page the lower side forked is stale and must go; one only the
        backup forked is still seen below and must move down. Returns the new snapshot."""
        v = self._fit(v, "clonable")
        if not v.size:
            return multiple()
        backup = self._create_child(v, "snapshot", 0, v.size, False, False)
        if not isinstance(backup, OVmo):
            return multiple()
        snap = self._create_child(v, "snapshot", 0, v.size, False, False)
        pages = v.size // PAGE_SIZE
        at = page * pages // 1000 * PAGE_SIZE
        if isinstance(snap, OVmo):
            self._write_at(v, at, vs.payload(seed, PAGE_SIZE))
            if both:
                self._write_at(snap, at, vs.payload(seed + 1, PAGE_SIZE))
        self._write_at(backup, other * pages // 1000 * PAGE_SIZE, vs.payload(seed + 2, 64))
        self.close(backup)
        return snap if isinstance(snap, OVmo) else multiple()

    @rule(target=vmos, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 3),
          side=st.sampled_from(["original", "snapshot"]), seed=vs.seeds)
    def zero_forked_pages(self, v: OVmo, at: tuple[int, int], npages: int, side: str,
                          seed: int) -> Any:
        """Write whole pages of ``v``, snapshot it (the pages move into the new hidden node),
        write the same pages on one ``side`` (a fork: that side owns copies, the other side
        still sees the hidden pages) and ZERO them there. The side's own pages go, and zero
        markers must take their place, or the hidden node's bytes would show through again
        (seed: ``ZeroPagesLocked`` on a page a leaf owns over a parent with content). Returns
        the snapshot."""
        v = self._fit(v, "clonable")
        offset, length = _pages_inside(v.size, at, npages)
        self._write_at(v, offset, vs.payload(seed, length))
        snap = self._create_child(v, "snapshot", 0, v.size, False, False)
        if not isinstance(snap, OVmo):
            return multiple()
        leaf = v if side == "original" else snap
        self._write_at(leaf, offset, vs.payload(seed + 1, length))
        self.op_range_checked(leaf, "ZERO", offset, length)
        return snap

    @rule(npages=st.integers(2, 8), short=st.integers(1, 4), depth=st.integers(1, 3),
          seed=vs.seeds)
    def commit_past_memory(self, npages: int, short: int, depth: int, seed: int) -> None:
        """In an arena of its own, too small for it: a VMO of distinct bytes, ``depth``
        snapshots of it, and a COMMIT of the newest that needs ``short`` pages more than are
        free. It fails with ERR_NO_MEMORY and commits nothing: the free pages, every VMO's
        content and committed bytes are as before (seed: ``CommitRangeLocked`` counts and
        allocates every page it needs first). The machine's own arena never runs out, so
        this rule builds one that does."""
        short = min(short, npages - 1)
        with Kernel(memory=(2 * npages - short) * PAGE_SIZE) as k:
            root = k.vmo_create(npages * PAGE_SIZE)
            root.write(vs.payload(seed, npages * PAGE_SIZE))
            chain = [root]
            for _ in range(depth):
                chain.append(chain[-1].create_child(ChildOptions.SNAPSHOT, 0,
                                                    npages * PAGE_SIZE))
            before = [(v.read(npages * PAGE_SIZE), v.get_info().committed_bytes)
                      for v in chain]
            free = k.memory_stats().free_pages
            if self.rule_outcome is None:
                self.rule_outcome = True  # real work: the COMMIT must be refused whole
            err = None
            try:
                chain[-1].op_range(VmoOp.COMMIT, 0, npages * PAGE_SIZE)
            except ZxError as e:
                err = e
            if err is None or err.status != Status.ERR_NO_MEMORY:
                raise Mismatch(f"COMMIT of {npages} pages with {free} free: expected "
                               f"ERR_NO_MEMORY, got {err or 'success'}")
            after = [(v.read(npages * PAGE_SIZE), v.get_info().committed_bytes)
                     for v in chain]
            if k.memory_stats().free_pages != free or after != before:
                raise Mismatch(f"a COMMIT refused for lack of memory changed things: free "
                               f"pages {free} -> {k.memory_stats().free_pages}, committed "
                               f"{[c for _, c in before]} -> {[c for _, c in after]}")
            debug.validate(k)

    @rule(target=pins, v=vmos, at=vs.aligned_positions(), npages=st.integers(1, 3),
          zero_first=st.booleans(), keep=st.sampled_from([False, False, False, True]))
    def pin_then_dedup(self, v: OVmo, at: tuple[int, int], npages: int,
                       zero_first: bool, keep: bool = True) -> Any:
        """Pin pages that read as zeros (ZERO them first, or pin where nothing was committed:
        the pin commits zero pages) and run the zero-page scanner: a pinned page stays, a
        device may be using it. The pin is kept with ``keep``, else released at once (pins
        block resizes and snapshots)."""
        v = self._fit(v, "pinnable")
        pages = v.size // PAGE_SIZE
        npages = max(1, min(npages, pages))
        offset = min(vs.resolve(at, v.size), max(0, pages - npages) * PAGE_SIZE)
        if zero_first and v.writable:
            self.op_range_checked(v, "ZERO", offset, npages * PAGE_SIZE)
        status, opin = self.oracle.pin(v, offset, npages * PAGE_SIZE, False)
        real = self.expect("pin", status,
                           lambda: self.real[v.koid].pin(offset, npages * PAGE_SIZE, False))
        self.kernel_op("dedup")
        if opin is None or real is None:
            return multiple()
        self.real_pins[id(opin)] = real
        if not keep:
            self.check_everything()  # while pinned: the scanner must have left the pages
            self.unpin(opin)
            return multiple()
        return opin

    @rule(v=vmos, at=vs.aligned_positions(), seed=vs.seeds)
    def shrink_regrow_write(self, v: OVmo, at: tuple[int, int], seed: int) -> None:
        """Shrink ``v``, grow it back, and write a few bytes into the regrown tail: the rest of
        that page must be zeros, not what the parent still holds there."""
        v = self._fit(v, "resizable")
        size = v.size
        keep = min(vs.resolve(at, size), size)
        self.set_size(v, keep)
        self.set_size(v, size)
        if v.size == size and keep + 108 <= size:
            self._write_at(v, keep + 100, vs.payload(seed, 8))

    # ------------------------------------------------------------------ discardable VMOs

    @rule(targets=(vmos, discardables), npages=st.integers(0, 4), seed=vs.seeds)
    def create_discardable(self, npages: int, seed: int) -> Any:
        ov = self.create(npages * PAGE_SIZE, False, True)
        if isinstance(ov, OVmo):
            self._write_at(ov, 0, vs.payload(seed, ov.size))
        return ov

    @rule(d=discardables, op=st.sampled_from(["LOCK", "LOCK", "TRY_LOCK", "UNLOCK", "UNLOCK"]))
    def lock_discardable(self, d: OVmo, op: str) -> None:
        """LOCK, TRY_LOCK or UNLOCK; an UNLOCK of a VMO that is not locked locks it instead
        (`bad_call` makes that mistake on purpose)."""
        d = self._fit(d, "discardable")
        if op == "UNLOCK" and d.lock_count == 0:
            op = "LOCK"
        self._lock_op(d, op, True)

    @rule(d=discardables, write=st.booleans(), seed=vs.seeds)
    def lock_cycle(self, d: OVmo, write: bool, seed: int) -> None:
        """LOCK, perhaps write, UNLOCK: how a cache uses a discardable VMO. Cycles of several
        VMOs interleave their unlocks, which decide the reclaim order (oldest unlock first)."""
        d = self._fit(d, "discardable")
        self._lock_op(d, "LOCK", True)
        if write and d.size:
            self._write_at(d, 0, vs.payload(seed, PAGE_SIZE))
        self._lock_op(d, "UNLOCK", True)

    @rule(first=st.one_of(discardables, st.none()), second=st.one_of(discardables, st.none()),
          target_pages=st.sampled_from([1, 2]), seed=vs.seeds, relock_first=st.booleans())
    def reclaim_order(self, first: OVmo | None, second: OVmo | None, target_pages: int,
                      seed: int, relock_first: bool = False) -> None:
        """Unlock two discardable VMOs in a known order, each holding a page, then reclaim a
        page or two: the older unlock goes first (the seed's reclaim list is in unlock order),
        which only a small reclaim with two candidates can show (drawn twice, the one VMO
        goes alone on odd seeds, else with a new one; ``None`` is a new one-page VMO, so that
        the rule needs no earlier ``create_discardable``). With ``relock_first`` the first is
        locked and unlocked again, which must move it behind the second."""
        first, second = self._discardable_or_new(first), self._discardable_or_new(second)
        if first is None or second is None:
            return
        if first is second and (relock_first or seed % 2 == 0):
            # One discardable VMO drawn twice: a second one, of one page, for the order.
            other = self.create(PAGE_SIZE, False, True)
            if isinstance(other, OVmo):
                second = other
        for d in dict.fromkeys((first, second)):
            self._lock_op(d, "LOCK", True)
            if d.size:
                self._write_at(d, 0, vs.payload(seed, PAGE_SIZE))
        for d in dict.fromkeys((first, second)):
            self._lock_op(d, "UNLOCK", True)
        if relock_first and first is not second:
            # Used again: now ``second`` is the one unlocked longest ago. No reclaim in this
            # step: the invariants see the order first (the reclaim would take ``second``
            # either way, list order and unlock times agreeing or not); later rules reclaim.
            self._lock_op(first, "LOCK", True)
            self._lock_op(first, "UNLOCK", True)
            return
        self.kernel_op(target_pages)
        # ZERO of a VMO just discarded succeeds and changes nothing (seed: nothing on that
        # path checks the discarded state); it stays discarded.
        for d in dict.fromkeys((first, second)):
            if d.size and not d.closed and d.target()[0].disc == Disc.DISCARDED:
                self.op_range_checked(d, "ZERO", 0, PAGE_SIZE)

    def _discardable_or_new(self, d: OVmo | None) -> OVmo | None:
        """``d`` fitted to a discardable VMO, or a new one-page discardable VMO (None if
        the arena cannot hold one)."""
        if d is not None:
            return self._fit(d, "discardable")
        new = self.create(PAGE_SIZE, False, True)
        return new if isinstance(new, OVmo) else None

    @rule(target_pages=st.sampled_from([1, 2, 1 << 20]),
          min_age=st.sampled_from([0.0, 0.0, 3600.0]))
    def reclaim_aged(self, target_pages: int, min_age: float) -> None:
        """Discardable reclaim with a minimum age: a program runs for far less than an hour,
        so with ``min_age`` of an hour nothing may be discarded."""
        if min_age == 0:
            self.kernel_op(target_pages)
            return
        got = self.expect("reclaim", None,
                          lambda: self.k.reclaim_discardable(target_pages, min_age))
        if got != 0:
            raise Mismatch(f"reclaim_discardable({target_pages}, min_age={min_age}) freed "
                           f"{got} pages of VMOs unlocked less than {min_age} s ago")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def contents_match(self) -> None:
        if not self.compare_every_step:
            return
        full = self._full_check("contents")
        compared = self._compared
        for ov in self.oracle.live():
            real = self.real[ov.koid]
            size = real.get_size()
            if size != ov.size:
                raise Mismatch(f"koid {ov.koid} size {size:#x}, oracle {ov.size:#x}")
            t, _ = ov.target()
            if t.disc == Disc.DISCARDED:
                compared.pop(ov.koid, None)
                self.expect("read-discarded", Status.ERR_NOT_FOUND,
                            functools.partial(real.read, 1 if size else 0, 0))
                continue
            want = ov.content()
            hier = real._hier
            seen = compared.get(ov.koid)
            # Unchanged on both sides since they last agreed: the tree's generation did not
            # move and the oracle holds the same bytes.
            if (not full and seen is not None and seen[0] == id(hier)
                    and seen[1] == hier.generation and seen[2] == want):
                continue
            got = real.read(size, 0)
            compared[ov.koid] = (id(hier), hier.generation, want)
            if got != want:
                compared.pop(ov.koid, None)
                raise self._with_dump(Mismatch(
                    f"koid {ov.koid} content differs from the oracle at byte "
                    f"{_first_difference(got, want)}"))

    @invariant()
    def observe_shape(self) -> None:
        """Not a check: measure the trees this program built (of the hierarchies that changed
        since the last step), for hypothesis's ``target()`` at teardown, which steers
        generation towards deep and wide trees, hidden nodes, partial releases and markers
        over hidden pages, and for the campaign's ``max_depth``/``max_width``."""
        for h in self.k.hierarchies():
            with h.lock:
                if h.root is None or self._shape_seen.get(id(h)) == h.generation:
                    continue
                self._shape_seen[id(h)] = h.generation
                for key, value in _tree_shape(h.root).items():
                    if value > self.shape[key]:
                        self.shape[key] = value
        if self.stats is not None:
            for key in ("max_depth", "max_width"):
                self.stats[key] = max(self.stats[key], self.shape[key])

    def _report_shape(self) -> None:
        if not currently_in_test_context():
            return
        for key, label in _SHAPE_TARGETS.items():
            target(float(self.shape[key]), label=label)

    @invariant()
    def hierarchy_valid(self) -> None:
        if self.validate_every_step:
            t0 = time.perf_counter()
            if self._full_check("validate"):
                debug.validate(self.k)
                self._validate_cache = debug.ValidateCache()  # the full run revalidated all
            else:
                debug.validate(self.k, self._validate_cache)
            self.step_time_validate += time.perf_counter() - t0


    def _check_attribution_ids(self, full: bool = True) -> None:
        """The oracle's tree of attribution ids (`vmo.testing.oracle.IdNode`) is the real
        one: up from every live VMO, the same chain of nodes, hidden or not, carrying the ids
        of the same VMOs, and chains that meet in the real tree meet at the same oracle node.

        The chains are walked in lockstep and each real node is matched to its oracle node
        once: a chain stops where it joins one already checked, so a step costs the number
        of nodes, not live VMOs times depth (``full`` is accepted for symmetry with the
        other invariants; the check is always whole)."""
        koid_of = {ok: r.koid for ok, r in self.real.items()}
        matched: dict[int, Any] = {}  # id(real node) -> the IdNode it was matched with
        for ov in self.oracle.live():
            if ov.id_node is None:
                continue
            real = self.real.get(ov.koid)
            if real is None:
                continue
            with real._hier.lock:
                node: Any = real.cow
                id_node: IdNode | None = ov.id_node
                while node is not None and id_node is not None:
                    seen = matched.get(id(node))
                    if seen is id_node:
                        break  # joins a chain already checked above this node
                    if (seen is not None or node.hidden != id_node.hidden
                            or node.page_attribution_user_id
                            != koid_of.get(id_node.user_id, -id_node.user_id)):
                        break
                    matched[id(node)] = id_node
                    node, id_node = node.parent, id_node.parent
                if node is None and id_node is None:
                    continue  # both chains ended at their roots, every level agreeing
                if (node is not None and id_node is not None
                        and matched.get(id(node)) is id_node):
                    continue  # joined a chain already checked
                got = _real_chain(real.cow)
            want = [(koid_of.get(i, -i), hidden) for i, hidden in ov.id_node.chain()]
            detail = ("" if got != want else
                      " (the same ids, but the chain joins another VMO's chain at a node "
                      "where the oracle's chains do not meet)")
            raise self._with_dump(Mismatch(
                f"koid {real.koid}: attribution ids up the tree (id, hidden) are {got}, "
                f"the oracle's {want}{detail}"))

    @invariant()
    def structure_matches(self) -> None:
        """Checks beyond `vmo.debug.validate`, from the real tree, independent of the core's
        own helpers: every window lies inside its hidden parent (a child never sees past its
        parent's end) and hidden nodes hold nothing past their end; and every live VMO's
        split bits are exact where no partial release happened; and the attribution ids up
        every live VMO's chain of hidden ancestors are the oracle's, so that `validate`'s
        page-by-page check of ``committed_bytes`` (the seed's rule over the real tree) is a
        check against the oracle."""
        if not self.compare_every_step:
            return
        full = self._full_check("structure")
        self._check_attribution_ids(full)
        for h in self.k.hierarchies():
            with h.lock:
                if h.root is None:
                    continue
                if not full and self._trees_seen.get(id(h)) == h.generation:
                    continue  # this tree has not changed since it passed
                self._trees_seen.pop(id(h), None)
                for node in h.root.walk_subtree():
                    parent = node.parent
                    if (parent is not None and parent.hidden and node.parent_limit
                            and node.parent_offset + node.parent_limit > parent.size):
                        raise Mismatch(
                            f"node #{node.id} sees [{node.parent_offset}, "
                            f"{node.parent_offset + node.parent_limit}) of hidden node "
                            f"#{parent.id}, which has only {parent.size} pages")
                    if node.hidden:
                        for off, frame in node.page_list.pages():
                            if off >= node.size:
                                raise Mismatch(f"hidden node #{node.id} holds a page at "
                                               f"{off} past its end ({node.size} pages)")
                            _check_split_bits(node, off, frame)
                self._trees_seen[id(h)] = h.generation


#: What the machine steers towards (hypothesis ``target()`` labels), by `_tree_shape` key.
_SHAPE_TARGETS = {
    "max_depth": "hierarchy depth",
    "max_width": "live VMOs in one hierarchy",
    "hidden": "hidden nodes in one hierarchy",
    "partial": "nodes with a partial release",
    "under_markers": "hidden pages under zero markers",
}


def _tree_shape(root: Any) -> dict[str, int]:
    """Depth, width (live VMOs), hidden nodes, nodes marked ``partial_cow_release`` and zero
    markers over a page a hidden ancestor holds, of one tree. Explicit stack: trees can be
    thousands deep."""
    out = {"max_depth": 0, "max_width": 0, "hidden": 0, "partial": 0, "under_markers": 0}
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        out["max_depth"] = max(out["max_depth"], depth)
        if node.hidden:
            out["hidden"] += 1
        elif node.paged_ref is not None and not node.paged_ref.closed:
            out["max_width"] += 1
        if node.partial_cow_release:
            out["partial"] += 1
        if not node.hidden and node.parent is not None and node.parent.hidden:
            for off, value in node.page_list.items():
                if value == MARKER and node.parent.page_list.get(off + node.parent_offset) \
                        not in (EMPTY, MARKER):
                    out["under_markers"] += 1
        stack.extend((c, depth + 1) for c in node.children)
    return out


#: The invariants that check incrementally (`VmoStateMachine._full_check`).
_CHECKS = frozenset({"contents", "validate", "structure"})
#: Calls whose effects a tree's generation need not show (pin counts, lock state, kernel-wide
#: reclaim): after one, every invariant checks everything.
_GLOBAL_CALLS = ("pin", "unpin", "reclaim", "dedup", "op:LOCK", "op:TRY_LOCK", "op:UNLOCK")


def _pages_inside(size: int, at: tuple[int, int], npages: int) -> tuple[int, int]:
    """Offset and length of up to ``npages`` whole pages from position ``at`` of a VMO of
    ``size`` bytes, kept inside it (the start is pulled back to the last page)."""
    offset = min(vs.resolve(at, size), max(0, size - PAGE_SIZE))
    return offset, max(0, min(npages * PAGE_SIZE, size - offset))


def _no_pins(oracle: Oracle, v: OVmo) -> bool:
    return not oracle.pinned_pages(v.target()[0])


#: What `VmoStateMachine._fit` falls back to when nothing fits (a resize of a VMO with pins
#: fails only if it would cut a pinned page).
_LOOSER = {"resizable": "resizable_pinned"}
# Needs that a new four-page VMO of distinct bytes meets, when no live VMO does.
_FRESH_FITS = frozenset({"clonable", "resizable", "decommittable", "pinnable"})

#: What `VmoStateMachine._fit` looks for, by kind of call.
_FITS: dict[str, Callable[[Oracle, OVmo], bool]] = {
    "resizable": lambda o, v: not v.closed and v.resizable and v.writable and _no_pins(o, v),
    "resizable_pinned": lambda o, v: not v.closed and v.resizable and v.writable,
    "sliceable": lambda o, v: not v.closed and not v.resizable and not v.discardable,
    "clonable": lambda o, v: (not v.closed and not v.discardable and not v.is_slice
                              and _no_pins(o, v)),
    "decommittable": lambda o, v: not v.closed and v.writable and not o.has_cow_parent(v),
    "discardable": lambda o, v: not v.closed and v.discardable,
    "pinnable": lambda o, v: (not v.closed and v.size >= PAGE_SIZE
                              and v.target()[0].disc != Disc.DISCARDED),
}


def _real_chain(node: Any) -> list[tuple[int, bool]]:
    out = []
    while node is not None:
        out.append((node.page_attribution_user_id, node.hidden))
        node = node.parent
    return out


def _first_difference(a: bytes | None, b: bytes | None) -> str:
    if a is None or b is None:
        return "(missing)"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"{i:#x} (page {i // PAGE_SIZE}): got {x:#04x}, want {y:#04x}"
    return f"length {len(a)} vs {len(b)}"


def _hidden_count(k: Kernel) -> int:
    n = 0
    for h in k.hierarchies():
        if h.root is not None:
            n += sum(1 for node in h.root.walk_subtree() if node.hidden)
    return n




def _sees_from(node: Any, off: int) -> Any:
    """The first leaf at or below ``node`` (pre-order, left first) that sees its parent's
    content at ``off``. A loop with an explicit stack: trees can be thousands deep."""
    stack = [(node, off)]
    while stack:
        cur, cur_off = stack.pop()
        if not (cur.parent_start_limit <= cur_off < cur.parent_limit):
            continue
        if cur.page_list.get(cur_off) != EMPTY:
            continue
        if not cur.hidden:
            return cur
        for child in reversed(cur.children):
            stack.append((child, cur_off - child.parent_offset))
    return None


def _check_split_bits(hidden: Any, off: int, frame: int) -> None:
    """Split bits are exact: a side whose window covers the page has its bit set exactly when
    none of its leaves sees the page (it forked it, zeroed it, or released it in a hole that
    its limits could not express).

    One exception, the seed's: a release walks down through hidden nodes whose windows it
    cannot shrink (a hole in the middle), freeing their parents' pages but leaving the windows
    as they were; a page above them that no leaf on either side sees any more then stays with
    its bits as they were, unreachable, until a merge or close (in a node marked
    ``partial_cow_release``). The same release can stop one level down: a hidden node on one
    side gives up part of its window in the middle of what the sibling below it still sees
    (seed: ``ReleaseCowParentPagesLockedHelper`` with the sibling visible, which only sets
    split bits where that level holds pages and marks it ``partial_cow_release``), so a page
    above it keeps a clear bit on that side although no leaf there sees it, while the other
    side still does; that is allowed only below a hidden node so marked that covers the page,
    or one that took the place of such a node in a merge (``merged_partial_release``: a merge
    does not carry the mark down). A set bit is never allowed where a leaf of that side sees
    the page."""
    split = hidden.pmm.split[frame]
    seen = []
    for child in hidden.children:
        c_off = off - child.parent_offset
        covers = child.parent_start_limit <= c_off < child.parent_limit
        seen.append((covers, covers and _sees_from(child, c_off) is not None))
    unreachable = not seen[0][1] and not seen[1][1]
    for side, (covers, sees) in zip((SPLIT_LEFT, SPLIT_RIGHT), seen, strict=True):
        if not covers or bool(split & side) != sees:
            continue
        if not sees and unreachable and hidden.partial_cow_release:
            continue
        child = hidden.children[0 if side == SPLIT_LEFT else 1]
        if not sees and _partial_release_below(child, off - child.parent_offset):
            continue
        name = "left" if side == SPLIT_LEFT else "right"
        raise Mismatch(
            f"hidden node #{hidden.id} page at {off}: the {name} split bit is "
            f"{'set' if split & side else 'clear'} but {'a' if sees else 'no'} leaf "
            f"on that side sees the page")


def _partial_release_below(node: Any, off: int) -> bool:
    """Is there, from ``node`` down through the hidden nodes whose windows cover ``off``
    (in each one's coordinates), one marked ``partial_cow_release``? Explicit stack."""
    stack = [(node, off)]
    while stack:
        cur, cur_off = stack.pop()
        if not cur.hidden or cur.page_list.get(cur_off) != EMPTY:
            continue
        if cur.partial_cow_release or cur.merged_partial_release:
            # (A merge does not carry ``partial_cow_release`` down, seed:
            # MergeContentWithChild: the node that released in the middle of its window may
            # have merged into this one, which covers the page with that stale window.)
            return True
        for child in cur.children:
            c_off = cur_off - child.parent_offset
            if child.parent_start_limit <= c_off < child.parent_limit:
                stack.append((child, c_off))
    return False


def _live_owner(node: Any) -> Any:
    """The node whose live VMO a visible node's pages count for: itself, or the first live
    node below it (pre-order, first child first)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not n.hidden and n.paged_ref is not None and not n.paged_ref.closed:
            return n
        stack.extend(reversed(n.children))
    return None
