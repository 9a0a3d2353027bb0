"""`MappingMachine`: the oracle state machine with mappings: loads and stores through several mappings of the
same VMO, of a snapshot child and of a slice, interleaved with every VMO operation of
`vmo.testing.VmoStateMachine` (writes, children, close, resize, commit/decommit/zero,
discardable lock/unlock/reclaim, zero-page dedup, pins), compared with `vmo.testing.Oracle`.

After every step every live mapping is read whole and compared with the oracle's view of its
VMO, and `vmo.mmu.mapping.validate` checks the windows against the VMOs (reverse map, states,
window bytes) besides `vmo.debug.validate`.

It needs userfaultfd (`vmo.mmu.fault_handler.unavailable_reason` says why not). Run it with
``vmo fuzz --machine vmo.testing.mapping_machine:MappingMachine``; the test suite runs it in
``tests/test_mapping_state_machine.py``.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, multiple, precondition, rule

from vmo import PAGE_SIZE, Mapping, Perms, Status
from vmo.mmu import mapping
from vmo.testing import OVmo, VmoStateMachine
from vmo.testing import strategies as vs
from vmo.testing.machine import Mismatch
from vmo.testing.oracle import Disc

PS = PAGE_SIZE
PERMS = [Perms.READ | Perms.WRITE, Perms.READ | Perms.WRITE, Perms.READ]


@attrs.define(eq=False)
class OMap:
    """The machine's record of one mapping: which oracle VMO, where, and how."""

    ov: OVmo
    offset: int
    length: int
    perms: Perms
    unmapped: bool = False

    def dead(self) -> bool:
        return self.unmapped or self.ov.closed


class MappingMachine(VmoStateMachine):
    """`VmoStateMachine` plus mappings of its VMOs, loads and stores through them, unmap and
    protect, and the invariants that every mapping reads as the oracle says."""

    kernel_memory = 16 * 2**20

    def __init__(self) -> None:
        super().__init__()
        self.omaps: list[OMap] = []
        self.rmaps: list[Mapping] = []

    # ------------------------------------------------------------------ helpers

    def _map(self, ov: OVmo, offset: int, npages: int | None, perms: Perms,
             fault_around: int) -> None:
        real = self.real[ov.koid]
        length = None if npages is None else npages * PS
        if ov.closed:
            status: Status | None = Status.ERR_BAD_HANDLE
        elif length == 0:
            status = Status.ERR_INVALID_ARGS
        elif length is None and offset >= ov.size:
            status = Status.ERR_OUT_OF_RANGE if offset > ov.size else Status.ERR_INVALID_ARGS
        elif offset + (length or 0) > ov.size:
            status = Status.ERR_OUT_OF_RANGE
        elif perms & Perms.WRITE and not ov.writable:
            status = Status.ERR_ACCESS_DENIED
        else:
            status = None
        m = self.expect("map", status,
                        lambda: real.map(offset, length, perms, fault_around=fault_around))
        if m is not None:
            self.omaps.append(OMap(ov, offset, m.length, perms))
            self.rmaps.append(m)

    def _fault_status(self, om: OMap, start: int) -> Status | None:
        """How an access whose first byte is at mapping offset ``start`` fails, if it does."""
        if om.dead():
            return Status.ERR_BAD_STATE
        if om.offset + start >= om.ov.size:
            return Status.ERR_OUT_OF_RANGE
        t, _ = om.ov.target()
        if t.disc == Disc.DISCARDED:
            return Status.ERR_NOT_FOUND
        return None

    def _access_status(self, om: OMap, start: int, perm: Perms) -> Status | None:
        """The accessors check the mapping, then the permission, then fault."""
        if om.dead():
            return Status.ERR_BAD_STATE
        if not om.perms & perm:
            return Status.ERR_ACCESS_DENIED
        return self._fault_status(om, start)

    def _span(self, om: OMap, at: tuple[int, int], length: int) -> tuple[int, int]:
        """An access inside the mapping that stops at the VMO's end when it starts before it
        (an access crossing the end would fault part-way, leaving a partial effect)."""
        start = min(vs.resolve(at, om.length), om.length - 1)
        length = vs.resolve_length(length, start, om.length)
        length = max(1, min(length, om.length - start))
        visible = om.ov.size - om.offset
        if start < visible:
            length = min(length, visible - start)
        return start, length

    # ------------------------------------------------------------------ rules

    @initialize(target=VmoStateMachine.vmos, npages=st.integers(2, 8), seed=vs.seeds,
                around=st.sampled_from([1, 4, 16]))
    def mapped_family(self, npages: int, seed: int, around: int) -> Any:
        """A VMO mapped twice, a snapshot child and a slice of it, each mapped too."""
        ov = self.create(npages * PS, False, False)
        if not isinstance(ov, OVmo):
            return multiple()
        self._write_at(ov, 0, vs.payload(seed, ov.size))
        self._map(ov, 0, None, Perms.READ | Perms.WRITE, 1)
        self._map(ov, 0, None, Perms.READ | Perms.WRITE, around)
        snap = self._create_child(ov, "snapshot", 0, ov.size, False, False)
        sl = self._create_child(ov, "slice", PS, (npages - 1) * PS, False, False)
        family = [ov]
        for child in (snap, sl):
            if isinstance(child, OVmo):
                self._map(child, 0, None, Perms.READ | Perms.WRITE, around)
                family.append(child)
        return multiple(*family)

    @rule(v=VmoStateMachine.vmos, at=vs.aligned_positions(), npages=st.integers(0, 6),
          perms=st.sampled_from(PERMS), around=st.sampled_from([1, 2, 16]))
    def map_vmo(self, v: OVmo, at: tuple[int, int], npages: int, perms: Perms,
                around: int) -> None:
        offset = vs.resolve(at, v.size)
        self._map(v, offset, npages or None, perms, around)

    @precondition(lambda self: self.omaps)
    @rule(i=st.integers(0, 63), at=vs.positions(), length=vs.lengths())
    def mload(self, i: int, at: tuple[int, int], length: int) -> None:
        om, m = self.omaps[i % len(self.omaps)], self.rmaps[i % len(self.rmaps)]
        start, length = self._span(om, at, length)
        status = self._access_status(om, start, Perms.READ)
        got = self.expect("mload", status, lambda: m.read(length, start))
        if status is None:
            _, want = self.oracle.read(om.ov, om.offset + start, length)
            if got != want:
                raise Mismatch(f"load of {m!r} [{start:#x}, +{length:#x}) differs from the "
                               f"oracle")

    @precondition(lambda self: self.omaps)
    @rule(i=st.integers(0, 63), at=vs.positions(), length=vs.lengths(), seed=vs.seeds)
    def mstore(self, i: int, at: tuple[int, int], length: int, seed: int) -> None:
        om, m = self.omaps[i % len(self.omaps)], self.rmaps[i % len(self.rmaps)]
        start, length = self._span(om, at, length)
        data = vs.payload(seed, length)
        status = self._access_status(om, start, Perms.WRITE)
        self.expect("mstore", status, lambda: m.write(data, start))
        if status is None and self.oracle.write(om.ov, om.offset + start, data) is not None:
            raise Mismatch("the oracle refused a store the mapping accepted")

    @precondition(lambda self: self.omaps)
    @rule(i=st.integers(0, 63))
    def munmap(self, i: int) -> None:
        om, m = self.omaps[i % len(self.omaps)], self.rmaps[i % len(self.rmaps)]
        self.expect("munmap", None, m.unmap)  # idempotent: a dead mapping unmaps quietly
        om.unmapped = True

    @precondition(lambda self: self.omaps)
    @rule(i=st.integers(0, 63), perms=st.sampled_from(PERMS + [Perms(0), Perms.WRITE]))
    def mprotect(self, i: int, perms: Perms) -> None:
        om, m = self.omaps[i % len(self.omaps)], self.rmaps[i % len(self.rmaps)]
        if om.dead():
            status: Status | None = Status.ERR_BAD_STATE
        elif perms & Perms.WRITE and not perms & Perms.READ:
            status = Status.ERR_INVALID_ARGS
        elif perms & Perms.WRITE and not om.ov.writable:
            status = Status.ERR_ACCESS_DENIED
        else:
            status = None
        self.expect("mprotect", status, lambda: m.protect(perms))
        if status is None:
            om.perms = perms

    @precondition(lambda self: self.omaps)
    @rule(target=VmoStateMachine.vmos, i=st.integers(0, 63), at=vs.positions(),
          seed=vs.seeds,
          op=st.sampled_from(["snapshot", "snapshot", "vmo_write", "zero", "decommit",
                              "resize", "dedup"]))
    def store_op_store(self, i: int, at: tuple[int, int], seed: int, op: str) -> Any:
        """A store, a VMO operation, another store, then loads, all in one step: the
        invariants read every VMO after each step, and their reads recall every checked-out
        page, which would hide a missing recall or write-protect in the operation."""
        om, m = self.omaps[i % len(self.omaps)], self.rmaps[i % len(self.rmaps)]
        start, length = self._span(om, at, 64)
        self.mstore(i, at, 64, seed)
        ov = om.ov
        base, delta = ov.target()
        offset = (om.offset + start) // PS * PS
        out: Any = multiple()
        if op == "snapshot":
            child = self._create_child(ov, "snapshot", 0, max(ov.size, PS), False, False)
            if isinstance(child, OVmo):
                out = child
        elif op == "vmo_write":
            self._write_at(ov, om.offset + start + 1, vs.payload(seed + 1, 8))
        elif op in ("zero", "decommit"):
            self.op_range_checked(ov, op.upper(), offset, PS)
        elif op == "resize":
            self.set_size(ov, offset + PS)
        else:
            self.kernel_op("dedup")
        self.mstore(i, at, 64, seed + 2)
        self.mload(i, at, 64)
        for other_om, other in zip(self.omaps, self.rmaps, strict=True):
            if other_om.ov is ov and other is not m:
                self.mload(self.rmaps.index(other), at, 64)
        return out

    # ------------------------------------------------------------------ invariants

    @invariant()
    def mappings_match(self) -> None:
        for om, m in zip(self.omaps, self.rmaps, strict=True):
            if om.dead():
                if not m.unmapped:
                    raise Mismatch(f"{m!r} should be unmapped")
                continue
            if self._fault_status(om, 0) is not None or not om.perms & Perms.READ:
                continue
            visible = min(om.length, om.ov.size - om.offset)
            got = m.read(visible)
            _, want = self.oracle.read(om.ov, om.offset, visible)
            if got != want:
                raise Mismatch(f"{m!r} differs from the oracle")

    @invariant()
    def windows_valid(self) -> None:
        mapping.validate(self.k)


__all__ = ["MappingMachine", "OMap"]
