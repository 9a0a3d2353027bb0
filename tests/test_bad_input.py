"""Bad input to every public call: the right `ZxError` status, nothing else, and no effect.

Each example builds a small fixture world (a root with data, a snapshot child, slices, a
resizable VMO and its resizable child, discardable VMOs locked and discarded, a pinned VMO, a
NO_WRITE child, closed handles; for the ``zx_pager_*`` calls a pager with supplied VMOs), calls
one public entry point with one bad argument or in one bad state, and checks that

- the call raises `vmo.ZxError` (never `TypeError`, `OverflowError`, `AssertionError`, ...),
- with the status docs/api.md / Zircon give (conventions in `vmo/_args.py`),
- `vmo.debug.validate` still passes, and every VMO of the world has the same size, content,
  `VmoInfo` and the kernel the same number of used frames as before.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmo
from vmo import (
    PAGE_SIZE,
    ChildOptions,
    Kernel,
    Status,
    VmoOp,
    VmoOptions,
    ZxError,
)
from vmo.debug import validate

P = PAGE_SIZE
U64 = 1 << 64
MAX_SIZE = U64 - P
C = ChildOptions
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(256)) * (n // 256) + bytes(n % 256)


# ---------------------------------------------------------------------------- the fixture world


class World:
    """A small hierarchy of every kind of VMO, rebuilt per example."""

    def __init__(self) -> None:
        self.k = k = Kernel(memory=64 * P)
        self.root = k.vmo_create(4 * P)
        self.root.name = "root"
        self.root.write(pattern(4 * P, 1))
        self.snap = self.root.create_child(C.SNAPSHOT, 0, 4 * P)
        self.snap.write(b"S" * 100, P + 5)  # forks page 1 into the child
        self.nw = self.root.create_child(C.SNAPSHOT | C.NO_WRITE, 0, 2 * P)
        self.root.write(b"after the clones", 2 * P)
        # A plain root (no clones) and a slice of it: DECOMMIT works here.
        self.plain = k.vmo_create(4 * P)
        self.plain.write(pattern(3 * P, 2))
        self.slice = self.plain.create_child(C.SLICE, P, 2 * P)
        self.resz = k.vmo_create(4 * P, VmoOptions.RESIZABLE)
        self.resz.write(pattern(4 * P, 3))
        self.rchild = self.resz.create_child(C.SNAPSHOT | C.RESIZABLE, P, 2 * P)
        self.rchild.write(b"rc", 0)
        # Discardable: one locked (readable), one never locked, one discarded.
        self.disc = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
        self.disc.op_range(VmoOp.LOCK, 0, 2 * P)
        self.disc.write(pattern(2 * P, 4))
        self.fresh_disc = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
        self.gone = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
        self.gone.op_range(VmoOp.LOCK, 0, 2 * P)
        self.gone.write(b"soon gone")
        self.gone.op_range(VmoOp.UNLOCK, 0, 2 * P)
        assert k.reclaim_discardable(100) >= 1
        # Pinned pages (a resizable one too, so that shrinking over the pin can be tried).
        self.pinned = k.vmo_create(2 * P)
        self.pinned.write(b"pinned data")
        self.pin = self.pinned.pin(0, P)
        self.rpinned = k.vmo_create(4 * P, VmoOptions.RESIZABLE)
        self.rpinned.write(pattern(4 * P, 5))
        self.rpin = self.rpinned.pin(2 * P, P)
        self.closed = k.vmo_create(P)
        self.closed.close()
        self.unpinned = self.pinned.pin(P, P)
        self.unpinned.unpin()
        validate(k)

    def vmos(self) -> dict[str, vmo.Vmo]:
        return {name: v for name, v in vars(self).items()
                if isinstance(v, vmo.Vmo) and not v.closed}

    def state(self) -> dict[str, Any]:
        """Everything a failed call must leave as it was."""
        out: dict[str, Any] = {"used_frames": self.k.pmm.used_frames}
        for name, v in self.vmos().items():
            size = v.get_size()
            try:
                data: Any = v.read(min(size, 5 * P))
            except ZxError as e:
                data = e.status
            out[name] = (size, data, v.get_info(), v.name)
        return out

    def close(self) -> None:
        self.k.close()


@pytest.fixture
def world_factory():
    made: list[World] = []

    def make() -> World:
        w = World()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def expect(w: World, status: Status | set[Status], fn: Callable[[], Any]) -> ZxError:
    """``fn()`` must raise ZxError with ``status``, validate, and change nothing."""
    before = w.state()
    with pytest.raises(ZxError) as info:
        fn()
    allowed = status if isinstance(status, set) else {status}
    assert info.value.status in allowed, f"{info.value!r}, wanted {allowed}"
    assert isinstance(info.value.status, Status)
    assert str(info.value)
    validate(w.k)
    assert w.state() == before
    return info.value


# ---------------------------------------------------------------------------- bad values

non_ints = st.one_of(
    st.text(max_size=4), st.floats(allow_nan=True, allow_infinity=True), st.none(),
    st.binary(max_size=4), st.booleans(), st.lists(st.integers(0, 10), max_size=2),
    st.just(object()), st.complex_numbers(max_magnitude=10), st.tuples(st.integers()),
    st.builds(bytearray, st.binary(max_size=3)), st.dictionaries(st.integers(), st.integers(),
                                                                 max_size=1),
)
negatives = st.one_of(st.just(-1), st.integers(max_value=-1),
                      st.integers(min_value=-(2**80), max_value=-(2**63)))
too_big = st.one_of(st.just(U64), st.integers(min_value=U64, max_value=2**200))
not_u64 = st.one_of(negatives, too_big)
unroundable = st.one_of(st.just(MAX_SIZE + 1), st.just(U64 - 1),
                        st.integers(min_value=MAX_SIZE + 1, max_value=U64 - 1))
not_bytes_like = st.one_of(st.text(max_size=4), st.integers(), st.floats(), st.none(),
                           st.lists(st.integers(0, 255), max_size=3), st.just(object()),
                           st.booleans())
bad_timeouts = st.one_of(
    st.floats(max_value=-1e-9), st.integers(max_value=-1), st.just(math.nan),
    st.just(-math.inf), st.text(max_size=3), st.booleans(), st.binary(max_size=2),
    st.lists(st.integers(), max_size=1), st.just(object()),
)


def unknown_bits(kind: type) -> st.SearchStrategy[int]:
    known = 0
    for m in kind:
        known |= int(m)
    return st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=0, max_value=2**70).filter(lambda x: x & ~known),
        st.sampled_from([1 << b for b in range(40) if not (1 << b) & known]),
    )


def bad_u64(kind: str = "u64") -> st.SearchStrategy[tuple[Any, Status]]:
    """(value, expected status) for an argument that must be an unsigned 64-bit int."""
    strategies = [
        non_ints.map(lambda x: (x, Status.ERR_INVALID_ARGS)),
        not_u64.map(lambda x: (x, Status.ERR_OUT_OF_RANGE)),
    ]
    if kind == "size":
        strategies.append(unroundable.map(lambda x: (x, Status.ERR_OUT_OF_RANGE)))
    return st.one_of(*strategies)


def bad_flags(kind: type) -> st.SearchStrategy[tuple[Any, Status]]:
    return st.one_of(non_ints, unknown_bits(kind)).map(lambda x: (x, Status.ERR_INVALID_ARGS))


def bad_enum(kind: type) -> st.SearchStrategy[tuple[Any, Status]]:
    values = {int(m) for m in kind}
    return st.one_of(
        non_ints,
        st.integers(min_value=-(2**70), max_value=2**70).filter(lambda x: x not in values),
        st.sampled_from([m.name for m in kind]),  # names are not values
    ).map(lambda x: (x, Status.ERR_INVALID_ARGS))


# One entry per (call, argument): how to call it with the bad value x, and the bad values.
ARG_CASES: dict[str, tuple[Callable[[World, Any], Any], st.SearchStrategy]] = {
    "vmo_create.size": (lambda w, x: w.k.vmo_create(x), bad_u64("size")),
    "vmo_create.options": (lambda w, x: w.k.vmo_create(P, x), bad_flags(VmoOptions)),
    "reclaim_discardable.target_pages": (lambda w, x: w.k.reclaim_discardable(x), bad_u64()),
    "reclaim_discardable.min_age": (lambda w, x: w.k.reclaim_discardable(1, x),
                                    bad_timeouts.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "reclaim.target_pages": (lambda w, x: w.k.reclaim(x), bad_u64()),
    "read.length": (lambda w, x: w.root.read(x), bad_u64()),
    "read.offset": (lambda w, x: w.root.read(1, x), bad_u64()),
    "read.length(slice)": (lambda w, x: w.slice.read(x), bad_u64()),
    "write.data": (lambda w, x: w.root.write(x),
                   not_bytes_like.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "write.offset": (lambda w, x: w.root.write(b"zz", x), bad_u64()),
    "write.offset(snap)": (lambda w, x: w.snap.write(b"zz", x), bad_u64()),
    "set_size.size": (lambda w, x: w.resz.set_size(x), bad_u64("size")),
    "set_size.size(child)": (lambda w, x: w.rchild.set_size(x), bad_u64("size")),
    "op_range.op": (lambda w, x: w.root.op_range(x, 0, P), bad_enum(VmoOp)),
    "op_range.op(discardable)": (lambda w, x: w.disc.op_range(x, 0, 2 * P), bad_enum(VmoOp)),
    "create_child.options": (lambda w, x: w.root.create_child(x, 0, P), bad_flags(ChildOptions)),
    "create_child.offset(snapshot)": (lambda w, x: w.root.create_child(C.SNAPSHOT, x, P),
                                      bad_u64()),
    "create_child.offset(slice)": (lambda w, x: w.plain.create_child(C.SLICE, x, P), bad_u64()),
    "create_child.size(snapshot)": (lambda w, x: w.root.create_child(C.SNAPSHOT, 0, x),
                                    bad_u64("size")),
    "create_child.size(slice)": (lambda w, x: w.plain.create_child(C.SLICE, 0, x),
                                 bad_u64("size")),
    "create_child.size(at_least_on_write)": (
        lambda w, x: w.snap.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, x), bad_u64("size")),
    "name": (lambda w, x: setattr(w.root, "name", x),
             st.one_of(st.binary(max_size=4), st.integers(), st.none(), st.floats(),
                       st.lists(st.text(max_size=2), max_size=2), st.just(object()))
             .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "pin.offset": (lambda w, x: w.plain.pin(x, P), bad_u64()),
    "pin.size": (lambda w, x: w.plain.pin(0, x), bad_u64()),
    "pin.writable": (lambda w, x: w.plain.pin(0, P, x),
                     st.one_of(st.integers(), st.none(), st.text(max_size=2), st.floats(),
                               st.just([True])).map(lambda x: (x, Status.ERR_INVALID_ARGS))),
}
for _op in VmoOp:
    _target = "disc" if _op in (VmoOp.LOCK, VmoOp.TRY_LOCK, VmoOp.UNLOCK) else "plain"
    ARG_CASES[f"op_range.offset({_op.name})"] = (
        lambda w, x, op=_op, t=_target: getattr(w, t).op_range(op, x, P), bad_u64())
    ARG_CASES[f"op_range.size({_op.name})"] = (
        lambda w, x, op=_op, t=_target: getattr(w, t).op_range(op, 0, x), bad_u64())


@pytest.mark.parametrize("case", sorted(ARG_CASES))
@SETTINGS
@given(data=st.data())
def test_bad_argument(world_factory, case, data):
    call, bad = ARG_CASES[case]
    value, status = data.draw(bad, label="bad value")
    w = world_factory()
    expect(w, status, lambda: call(w, value))


# ---------------------------------------------------------------------------- Kernel(...)


@SETTINGS
@given(bad=bad_u64())
def test_kernel_memory_bad(bad):
    value, status = bad
    with pytest.raises(ZxError) as e:
        Kernel(memory=value)
    assert e.value.status == status


@SETTINGS
@given(memory=st.integers(min_value=0, max_value=2 * P - 1))
def test_kernel_memory_too_small(memory):
    with pytest.raises(ZxError) as e:
        Kernel(memory=memory)
    assert e.value.status == Status.ERR_INVALID_ARGS


@SETTINGS
@given(timeout=bad_timeouts)
def test_kernel_timeout_bad(timeout):
    with pytest.raises(ZxError) as e:
        Kernel(memory=4 * P, page_request_timeout=timeout)
    assert e.value.status == Status.ERR_INVALID_ARGS


def test_kernel_good_timeouts():
    for t in (None, 0, 0.5, 30, math.inf):
        Kernel(memory=4 * P, page_request_timeout=t).close()


@pytest.mark.parametrize("memory", [2**63, U64 - 1, U64 - P])
def test_kernel_memory_huge_u64(memory):
    with pytest.raises(ZxError) as e:
        Kernel(memory=memory)
    assert e.value.status in (Status.ERR_NO_MEMORY, Status.ERR_OUT_OF_RANGE)


def test_kernel_memory_unmappable_is_no_memory():
    with pytest.raises(ZxError) as e:
        Kernel(memory=2**62)
    assert e.value.status == Status.ERR_NO_MEMORY


def test_failed_kernel_leaks_no_fd():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ZxError):
            Kernel(memory=2**62)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("where", ["kernel", "reclaim_discardable"])
def test_timeout_int_too_large_for_float(world_factory, where):
    w = world_factory()
    try:
        if where == "kernel":
            Kernel(memory=4 * P, page_request_timeout=10**400).close()
        else:
            w.k.reclaim_discardable(1, 10**400)
    except ZxError as e:
        assert e.status == Status.ERR_INVALID_ARGS
    validate(w.k)


# ---------------------------------------------------------------------------- vmo_create


def test_vmo_create_discardable_resizable(world_factory):
    w = world_factory()
    expect(w, Status.ERR_NOT_SUPPORTED,
           lambda: w.k.vmo_create(P, VmoOptions.DISCARDABLE | VmoOptions.RESIZABLE))


def test_vmo_create_largest_size_is_fine(world_factory):
    w = world_factory()
    v = w.k.vmo_create(MAX_SIZE)
    assert v.get_size() == MAX_SIZE
    v.write(b"end", MAX_SIZE - 3)
    assert v.read(3, MAX_SIZE - 3) == b"end"
    validate(w.k)


# ---------------------------------------------------------------------------- read / write ranges

VMO_NAMES = ["root", "snap", "nw", "plain", "slice", "resz", "rchild", "disc", "pinned"]


@pytest.mark.parametrize("name", VMO_NAMES)
@SETTINGS
@given(data=st.data())
def test_read_past_end(world_factory, name, data):
    w = world_factory()
    v = getattr(w, name)
    size = v.get_size()
    offset = data.draw(st.one_of(st.integers(0, size + 2 * P), st.integers(0, U64 - 1)))
    min_len = max(0, size - offset + 1)
    length = data.draw(st.one_of(st.integers(min_len, min_len + P),
                                 st.integers(min_len, max(min_len, U64 - 1))))
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.read(length, offset))


@pytest.mark.parametrize("name", [n for n in VMO_NAMES if n != "nw"])
@SETTINGS
@given(data=st.data())
def test_write_past_end(world_factory, name, data):
    w = world_factory()
    v = getattr(w, name)
    size = v.get_size()
    payload = data.draw(st.binary(min_size=0, max_size=2 * P))
    min_off = max(0, size - len(payload) + 1)
    offset = data.draw(st.one_of(st.integers(min_off, min_off + 2 * P),
                                 st.integers(min_off, U64 - 1)))
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.write(payload, offset))


@SETTINGS
@given(payload=st.binary(max_size=64), offset=st.integers(0, 2 * P))
def test_write_no_write_child(world_factory, payload, offset):
    w = world_factory()
    expect(w, Status.ERR_ACCESS_DENIED, lambda: w.nw.write(payload, offset))


def test_read_and_write_discarded(world_factory):
    w = world_factory()
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.read(4))
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.read(0))
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.write(b"x"))
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.op_range(VmoOp.COMMIT, 0, P))
    # ZERO does not check the discarded state (seed: ZeroPagesLocked): OK, nothing changes.
    before = w.state()
    w.gone.op_range(VmoOp.ZERO, 0, P)
    w.gone.op_range(VmoOp.ZERO, 5, 100)
    assert w.state() == before
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.read(4))
    expect(w, Status.ERR_NOT_FOUND, lambda: w.gone.pin(0, P))


# ---------------------------------------------------------------------------- set_size


@pytest.mark.parametrize("name", ["root", "snap", "nw", "plain", "slice", "disc", "pinned"])
@SETTINGS
@given(size=st.integers(0, MAX_SIZE))
def test_set_size_not_resizable(world_factory, name, size):
    w = world_factory()
    expect(w, Status.ERR_UNAVAILABLE, lambda: getattr(w, name).set_size(size))


@SETTINGS
@given(size=st.integers(0, 2 * P))
def test_set_size_over_pinned_page(world_factory, size):
    w = world_factory()
    expect(w, Status.ERR_BAD_STATE, lambda: w.rpinned.set_size(size))


def test_set_size_no_write_resizable_child(world_factory):
    w = world_factory()
    nwr = w.resz.create_child(C.SNAPSHOT | C.RESIZABLE | C.NO_WRITE, 0, P)
    expect(w, Status.ERR_ACCESS_DENIED, lambda: nwr.set_size(2 * P))


@SETTINGS
@given(size=st.integers(MAX_SIZE - P + 1, MAX_SIZE))
def test_set_size_child_overflows_root(world_factory, size):
    # rchild sits at offset P of its root: its end would pass 2**64.
    w = world_factory()
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: w.rchild.set_size(size))


# ---------------------------------------------------------------------------- op_range

RANGE_CHECKED_OPS = [VmoOp.COMMIT, VmoOp.ZERO, VmoOp.DONT_NEED, VmoOp.ALWAYS_NEED,
                     VmoOp.PREFETCH, VmoOp.CACHE_SYNC, VmoOp.CACHE_INVALIDATE,
                     VmoOp.CACHE_CLEAN, VmoOp.CACHE_CLEAN_INVALIDATE]


@pytest.mark.parametrize("op", RANGE_CHECKED_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("name", ["root", "snap", "plain", "slice", "resz", "rchild", "pinned"])
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_op_range_past_end(world_factory, op, name, data):
    w = world_factory()
    v = getattr(w, name)
    size = v.get_size()
    offset = data.draw(st.one_of(st.integers(0, size + P), st.integers(0, U64 - 1)))
    min_len = max(0, size - offset + 1)
    length = data.draw(st.one_of(st.integers(min_len, min_len + 2 * P),
                                 st.integers(min_len, U64 - 1)))
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.op_range(op, offset, length))


@pytest.mark.parametrize("name", ["plain", "slice", "root", "snap"])
@SETTINGS
@given(offset=st.integers(1, U64 - 1), length=st.integers(0, U64 - 1))
def test_decommit_offset_past_end(world_factory, name, offset, length):
    w = world_factory()
    v = getattr(w, name)
    offset += v.get_size()
    if offset >= U64:
        offset = U64 - 1
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.op_range(VmoOp.DECOMMIT, offset, length))


@pytest.mark.parametrize("name", ["plain", "slice"])
@SETTINGS
@given(data=st.data())
def test_decommit_unaligned(world_factory, name, data):
    w = world_factory()
    v = getattr(w, name)
    size = v.get_size()
    offset = data.draw(st.integers(0, size - 1))
    length = data.draw(st.integers(1, U64 - 1))
    trimmed = min(length, size - offset)
    if offset % P == 0 and trimmed % P == 0:
        offset += data.draw(st.integers(1, P - 1))
    expect(w, Status.ERR_INVALID_ARGS, lambda: v.op_range(VmoOp.DECOMMIT, offset, length))


@pytest.mark.parametrize("name", ["snap", "rchild", "root"])
@SETTINGS
@given(first=st.integers(0, 1), pages=st.integers(1, 2))
def test_decommit_non_slice_child(world_factory, name, first, pages):
    # root was snapshotted: it is now a child of a hidden node, as in Zircon.
    w = world_factory()
    v = getattr(w, name)
    expect(w, Status.ERR_NOT_SUPPORTED,
           lambda: v.op_range(VmoOp.DECOMMIT, first * P, pages * P))


def test_decommit_slice_of_a_child(world_factory):
    w = world_factory()
    s = w.snap.create_child(C.SLICE, 0, P)
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: s.op_range(VmoOp.DECOMMIT, 0, P))


@pytest.mark.parametrize("name", ["pinned", "plain"])
def test_decommit_pinned(world_factory, name):
    w = world_factory()
    v = getattr(w, name)
    if name == "plain":
        w.keep = w.slice.pin(0, P)  # pinned through the slice: page 1 of plain
        expect(w, Status.ERR_BAD_STATE, lambda: v.op_range(VmoOp.DECOMMIT, 0, 4 * P))
        expect(w, Status.ERR_BAD_STATE, lambda: w.slice.op_range(VmoOp.DECOMMIT, 0, P))
    else:
        expect(w, Status.ERR_BAD_STATE, lambda: v.op_range(VmoOp.DECOMMIT, 0, P))


@pytest.mark.parametrize("op", [VmoOp.COMMIT, VmoOp.ZERO, VmoOp.DECOMMIT], ids=lambda o: o.name)
@SETTINGS
@given(first=st.integers(0, 1), pages=st.integers(0, 1))
def test_writing_ops_on_no_write_child(world_factory, op, first, pages):
    w = world_factory()
    expect(w, Status.ERR_ACCESS_DENIED, lambda: w.nw.op_range(op, first * P, pages * P))


LOCK_OPS = [VmoOp.LOCK, VmoOp.TRY_LOCK, VmoOp.UNLOCK]


@pytest.mark.parametrize("op", LOCK_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("name", ["root", "snap", "nw", "plain", "slice", "resz", "pinned"])
@SETTINGS
@given(offset=st.integers(0, U64 - 1), length=st.integers(0, U64 - 1))
def test_lock_ops_not_discardable(world_factory, op, name, offset, length):
    w = world_factory()
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: getattr(w, name).op_range(op, offset, length))


@pytest.mark.parametrize("op", LOCK_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("name", ["disc", "fresh_disc", "gone"])
@SETTINGS
@given(offset=st.integers(0, U64 - 1), length=st.integers(0, U64 - 1))
def test_lock_ops_not_whole_vmo(world_factory, op, name, offset, length):
    w = world_factory()
    v = getattr(w, name)
    if offset == 0 and length == v.get_size():
        length += 1
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.op_range(op, offset, length))


def test_unlock_unlocked(world_factory):
    w = world_factory()
    expect(w, Status.ERR_BAD_STATE, lambda: w.fresh_disc.op_range(VmoOp.UNLOCK, 0, 2 * P))
    expect(w, Status.ERR_BAD_STATE, lambda: w.gone.op_range(VmoOp.UNLOCK, 0, 2 * P))
    w.disc.op_range(VmoOp.UNLOCK, 0, 2 * P)
    expect(w, Status.ERR_BAD_STATE, lambda: w.disc.op_range(VmoOp.UNLOCK, 0, 2 * P))


def test_try_lock_discarded(world_factory):
    w = world_factory()
    expect(w, Status.ERR_UNAVAILABLE, lambda: w.gone.op_range(VmoOp.TRY_LOCK, 0, 2 * P))
    # Still discarded: a LOCK reports it and then the content reads as zeros.
    state = w.gone.op_range(VmoOp.LOCK, 0, 2 * P)
    assert state.discarded_size == 2 * P
    assert w.gone.read(2 * P) == bytes(2 * P)
    validate(w.k)


# ---------------------------------------------------------------------------- create_child

KINDS = [C.SNAPSHOT, C.SNAPSHOT_AT_LEAST_ON_WRITE, C.SLICE]


@SETTINGS
@given(options=st.sampled_from([
    C(0), C.NO_WRITE, C.RESIZABLE, C.RESIZABLE | C.NO_WRITE,
    C.SNAPSHOT | C.SLICE, C.SNAPSHOT | C.SNAPSHOT_AT_LEAST_ON_WRITE,
    C.SLICE | C.SNAPSHOT_AT_LEAST_ON_WRITE, C.SNAPSHOT | C.SLICE | C.SNAPSHOT_AT_LEAST_ON_WRITE,
    C.SLICE | C.RESIZABLE, C.SLICE | C.RESIZABLE | C.NO_WRITE]))
def test_create_child_bad_kind_combinations(world_factory, options):
    w = world_factory()
    expect(w, Status.ERR_INVALID_ARGS, lambda: w.plain.create_child(options, 0, P))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@SETTINGS
@given(offset=st.integers(0, U64 - 1).filter(lambda x: x % P), size=st.integers(0, 4 * P))
def test_create_child_unaligned_offset(world_factory, kind, offset, size):
    w = world_factory()
    expect(w, Status.ERR_INVALID_ARGS, lambda: w.plain.create_child(kind, offset, size))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@SETTINGS
@given(data=st.data())
def test_create_child_offset_plus_size_overflows(world_factory, kind, data):
    w = world_factory()
    size = data.draw(st.integers(P, MAX_SIZE))
    rounded = -(-size // P) * P
    offset = data.draw(st.integers((U64 - rounded) // P, (U64 - P) // P)) * P
    assert offset + rounded >= U64
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: w.plain.create_child(kind, offset, size))


@SETTINGS
@given(data=st.data(), no_write=st.booleans())
def test_slice_outside_parent(world_factory, data, no_write):
    w = world_factory()
    name = data.draw(st.sampled_from(["plain", "slice", "root", "snap", "pinned"]))
    v = getattr(w, name)
    size = v.get_size()
    offset = data.draw(st.integers(0, (size + 4 * P) // P)) * P
    min_size = max(1, size - offset + 1)
    length = data.draw(st.integers(min_size, min_size + 8 * P))
    opts = C.SLICE | (C.NO_WRITE if no_write else C(0))
    expect(w, Status.ERR_INVALID_ARGS, lambda: v.create_child(opts, offset, length))


@pytest.mark.parametrize("name", ["resz", "rchild", "rpinned"])
def test_slice_of_resizable(world_factory, name):
    w = world_factory()
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: getattr(w, name).create_child(C.SLICE, 0, P))


@pytest.mark.parametrize("kind", [C.SNAPSHOT, C.SNAPSHOT_AT_LEAST_ON_WRITE], ids=lambda k: k.name)
def test_snapshot_of_slice(world_factory, kind):
    w = world_factory()
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: w.slice.create_child(kind, 0, P))
    inner = w.slice.create_child(C.SLICE, 0, P)
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: inner.create_child(kind, 0, P))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("name", ["disc", "fresh_disc", "gone"])
def test_child_of_discardable(world_factory, kind, name):
    w = world_factory()
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: getattr(w, name).create_child(kind, 0, P))


@pytest.mark.parametrize("kind", [C.SNAPSHOT, C.SNAPSHOT_AT_LEAST_ON_WRITE], ids=lambda k: k.name)
@pytest.mark.parametrize("name", ["pinned", "rpinned", "plain"])
def test_snapshot_with_pinned_pages(world_factory, kind, name):
    w = world_factory()
    if name == "plain":
        w.keep = w.slice.pin(0, P)  # pages of plain pinned through its slice
    v = getattr(w, name)
    for offset, size in [(0, P), (0, v.get_size()), (3 * P, P)]:
        expect(w, Status.ERR_BAD_STATE, lambda o=offset, s=size: v.create_child(kind, o, s))


def test_snapshot_after_unpin_works(world_factory):
    w = world_factory()
    w.pin.unpin()
    child = w.pinned.create_child(C.SNAPSHOT, 0, P)
    assert child.read(11) == b"pinned data"
    validate(w.k)


# ---------------------------------------------------------------------------- name


@pytest.mark.parametrize("name", ["\ud800", "ok\udfffok", "x" * 40 + "\ud83d"])
def test_name_with_lone_surrogate(world_factory, name):
    w = world_factory()
    expect(w, Status.ERR_INVALID_ARGS, lambda: setattr(w.root, "name", name))


@SETTINGS
@given(name=st.text(max_size=60))
def test_any_str_name_is_truncated_not_refused(world_factory, name):
    w = world_factory()
    w.plain.name = name
    got = w.plain.name
    assert isinstance(got, str)
    assert len(got.encode("utf-8")) <= 31
    assert "\0" not in got
    assert name.startswith(got)
    assert w.plain.get_info().name == got


# ---------------------------------------------------------------------------- pin


@pytest.mark.parametrize("name", ["plain", "slice", "snap", "root"])
@SETTINGS
@given(data=st.data())
def test_pin_unaligned_or_empty(world_factory, name, data):
    w = world_factory()
    v = getattr(w, name)
    offset = data.draw(st.integers(0, 2 * P))
    size = data.draw(st.integers(0, 2 * P))
    if offset % P == 0 and size % P == 0 and size:
        size = 0
    expect(w, Status.ERR_INVALID_ARGS, lambda: v.pin(offset, size))


@pytest.mark.parametrize("name", ["plain", "slice", "snap", "nw", "rchild"])
@SETTINGS
@given(data=st.data())
def test_pin_past_end(world_factory, name, data):
    w = world_factory()
    v = getattr(w, name)
    pages = v.get_size() // P
    first = data.draw(st.integers(0, pages + 2))
    count = data.draw(st.integers(max(1, pages - first + 1), pages + 4))
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: v.pin(first * P, count * P, writable=False))


def test_pin_overflowing_range(world_factory):
    w = world_factory()
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: w.plain.pin(U64 - P, P))
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: w.plain.pin(P, U64 - P))


def test_pin_count_overflow_is_no_resources(world_factory):
    w = world_factory()
    pins = [w.plain.pin(0, P, writable=False) for _ in range(0xFFFF)]
    expect(w, Status.ERR_NO_RESOURCES, lambda: w.plain.pin(0, P))
    expect(w, Status.ERR_NO_RESOURCES, lambda: w.plain.pin(0, 2 * P))
    pins.pop().unpin()
    pins.append(w.plain.pin(0, P))
    for p in pins:
        p.unpin()
    validate(w.k)
    w.plain.op_range(VmoOp.DECOMMIT, 0, P)


def test_pin_writable_on_no_write_child(world_factory):
    w = world_factory()
    expect(w, Status.ERR_ACCESS_DENIED, lambda: w.nw.pin(0, P))
    expect(w, Status.ERR_ACCESS_DENIED, lambda: w.nw.pin(0, P, writable=True))


def test_unpin_twice(world_factory):
    w = world_factory()
    expect(w, Status.ERR_BAD_HANDLE, w.unpinned.unpin)
    w.pin.unpin()
    expect(w, Status.ERR_BAD_HANDLE, w.pin.unpin)


def test_unpin_after_vmo_close(world_factory):
    w = world_factory()
    p = w.plain.pin(0, P)
    w.plain.close()
    expect(w, Status.ERR_BAD_HANDLE, p.unpin)


def test_pins_do_not_outlive_their_vmo(world_factory):
    # A slice pinned then closed: the pin went with the handle, so the parent decommits.
    w = world_factory()
    p = w.slice.pin(0, P)
    w.slice.close()
    expect(w, Status.ERR_BAD_HANDLE, p.unpin)
    w.plain.op_range(VmoOp.DECOMMIT, 0, 4 * P)
    assert w.plain.read(4 * P) == bytes(4 * P)
    validate(w.k)


# ---------------------------------------------------------------------------- closed handles


def closed_vmo_calls(v: vmo.Vmo) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {
        "read": lambda: v.read(1),
        "read0": lambda: v.read(0),
        "write": lambda: v.write(b"x"),
        "write0": lambda: v.write(b""),
        "get_size": v.get_size,
        "set_size": lambda: v.set_size(P),
        "create_child(snapshot)": lambda: v.create_child(C.SNAPSHOT, 0, P),
        "create_child(slice)": lambda: v.create_child(C.SLICE, 0, P),
        "create_child(alow)": lambda: v.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, P),
        "get_info": v.get_info,
        "name": lambda: v.name,
        "set_name": lambda: setattr(v, "name", "x"),
        "pin": lambda: v.pin(0, P),
    }
    for op in VmoOp:
        calls[f"op_range({op.name})"] = lambda op=op: v.op_range(op, 0, P)
    return calls


CLOSABLE = ["root", "snap", "nw", "plain", "slice", "resz", "rchild", "disc", "fresh_disc",
            "gone", "pinned", "closed"]


@pytest.mark.parametrize("name", CLOSABLE)
def test_closed_vmo_every_call(world_factory, name):
    w = world_factory()
    v = getattr(w, name)
    if not v.closed:
        v.close()
    validate(w.k)
    for call_name, call in closed_vmo_calls(v).items():
        try:
            expect(w, Status.ERR_BAD_HANDLE, call)
        except AssertionError as e:
            raise AssertionError(f"{name}.{call_name}: {e}") from e
    assert v.closed
    v.close()  # idempotent: a second close does nothing
    validate(w.k)
    assert isinstance(v.koid, int)
    repr(v)
    with v:  # the context manager of a closed VMO does not close again
        pass


@pytest.mark.parametrize("name", ["root", "slice", "disc"])
@SETTINGS
@given(data=st.data())
def test_closed_vmo_with_bad_args(world_factory, name, data):
    # Either check may come first (Zircon looks up the handle first), but it is a ZxError.
    w = world_factory()
    v = getattr(w, name)
    v.close()
    case = data.draw(st.sampled_from(["read.length", "write.data", "op_range.op", "pin.size",
                                      "create_child.options", "name"]))
    _, bad = ARG_CASES[case]
    value, status = data.draw(bad)
    target = {"read.length": lambda: v.read(value), "write.data": lambda: v.write(value),
              "op_range.op": lambda: v.op_range(value, 0, P), "pin.size": lambda: v.pin(0, value),
              "create_child.options": lambda: v.create_child(value, 0, P),
              "name": lambda: setattr(v, "name", value)}[case]
    expect(w, {Status.ERR_BAD_HANDLE, status}, target)


def test_closed_kernel_every_call(world_factory):
    w = world_factory()
    k = w.k
    vmos = list(w.vmos().values())
    pins = [w.pin, w.rpin]
    k.close()
    assert k.closed
    k.close()  # closing twice is harmless
    validate(k)
    kernel_calls = {
        "vmo_create": lambda: k.vmo_create(P),
        "vmo_create(options)": lambda: k.vmo_create(P, VmoOptions.DISCARDABLE),
        "reclaim_discardable": lambda: k.reclaim_discardable(1),
        "reclaim": lambda: k.reclaim(1),
        "memory_stats": k.memory_stats,
        "dedup_zero_pages": k.dedup_zero_pages,
    }
    for name, call in kernel_calls.items():
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_HANDLE, name
    for v in vmos:
        assert v.closed
        for name, call in closed_vmo_calls(v).items():
            with pytest.raises(ZxError) as e:
                call()
            assert e.value.status == Status.ERR_BAD_HANDLE, (v, name)
    for p in pins:
        with pytest.raises(ZxError) as e:
            p.unpin()
        assert e.value.status == Status.ERR_BAD_HANDLE


def test_kernel_context_manager_closes(world_factory):
    with Kernel(memory=8 * P) as k:
        v = k.vmo_create(P)
        v.write(b"x")
    assert k.closed
    with pytest.raises(ZxError) as e:
        v.read(1)
    assert e.value.status == Status.ERR_BAD_HANDLE
    with pytest.raises(ZxError) as e:
        k.memory_stats()
    assert e.value.status == Status.ERR_BAD_HANDLE


# ---------------------------------------------------------------------------- no hang, no leak


class _Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise _Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_commit_huge_root_is_no_memory():
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE)
        v.write(b"keep", 5 * P)
        with time_limit(10), pytest.raises(ZxError) as e:
            v.op_range(VmoOp.COMMIT, 0, MAX_SIZE)
        assert e.value.status == Status.ERR_NO_MEMORY
        validate(k)
        assert v.read(4, 5 * P) == b"keep"


def test_commit_huge_child_is_no_memory():
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE)
        v.write(b"keep", 5 * P)
        c = v.create_child(C.SNAPSHOT, 0, MAX_SIZE)
        with time_limit(10), pytest.raises(ZxError) as e:
            c.op_range(VmoOp.COMMIT, 0, MAX_SIZE)
        assert e.value.status == Status.ERR_NO_MEMORY
        validate(k)
        assert c.read(4, 5 * P) == b"keep"


@pytest.mark.parametrize("child", [False, True])
def test_prefetch_huge_range(child):
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE)
        if child:
            v = v.create_child(C.SNAPSHOT, 0, MAX_SIZE)
        with time_limit(10), suppress(ZxError):
            v.op_range(VmoOp.PREFETCH, 0, MAX_SIZE)
        validate(k)


def test_read_huge_length():
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE)
        with time_limit(10), pytest.raises(ZxError) as e:
            v.read(MAX_SIZE)
        assert e.value.status == Status.ERR_NO_MEMORY


def test_zero_huge_range_of_child_finishes():
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE)
        v.write(b"data", 5 * P)
        c = v.create_child(C.SNAPSHOT, 0, MAX_SIZE)
        with time_limit(3):
            c.op_range(VmoOp.ZERO, 0, MAX_SIZE)
        assert c.read(4, 5 * P) == bytes(4)
        assert v.read(4, 5 * P) == b"data"


def test_huge_ops_that_must_be_cheap():
    with Kernel(memory=16 * P) as k:
        v = k.vmo_create(MAX_SIZE, VmoOptions.RESIZABLE)
        v.write(b"tail", MAX_SIZE - 4)
        v.write(b"head", 0)
        with time_limit(10):
            for op in (VmoOp.DONT_NEED, VmoOp.ALWAYS_NEED, VmoOp.CACHE_SYNC, VmoOp.CACHE_CLEAN,
                       VmoOp.CACHE_INVALIDATE, VmoOp.CACHE_CLEAN_INVALIDATE):
                v.op_range(op, 0, MAX_SIZE)
            assert v.get_info().committed_bytes == 2 * P
            with pytest.raises(ZxError) as e:
                v.pin(0, MAX_SIZE)
            assert e.value.status == Status.ERR_NO_MEMORY
            v.op_range(VmoOp.DECOMMIT, P, MAX_SIZE)
            assert v.read(4) == b"head"
            v.set_size(P)
            v.set_size(MAX_SIZE)
            assert v.read(4, MAX_SIZE - 4) == bytes(4)
            v.op_range(VmoOp.ZERO, 0, MAX_SIZE)
            assert v.read(4) == bytes(4)
            assert k.dedup_zero_pages() >= 0
        validate(k)


# ---------------------------------------------------------------------------- random calls

VALUES = st.one_of(
    st.sampled_from([0, 1, P - 1, P, P + 1, 2 * P, 3 * P, 4 * P, 5 * P, 2**63, MAX_SIZE,
                     MAX_SIZE + 1, U64 - 1, U64, -1, -P]),
    st.integers(0, 6 * P), non_ints,
)


def random_calls(w: World, v: vmo.Vmo, args: list[Any]) -> dict[str, Callable[[], Any]]:
    a, b, c = args
    return {
        "read": lambda: v.read(a, b),
        "write": lambda: v.write(b"\x5a" * (a if isinstance(a, int) and 0 <= a <= 3 * P else 3),
                                 b),
        "write_raw": lambda: v.write(a, b),
        "set_size": lambda: v.set_size(a),
        "op_range": lambda: v.op_range(a, b, c),
        "op_range_valid_op": lambda: v.op_range(VmoOp(list(VmoOp)[hash(str(a)) % len(VmoOp)]),
                                                b, c),
        "create_child": lambda: v.create_child(a, b, c),
        "create_child_kind": lambda: v.create_child(KINDS[hash(str(a)) % 3], b, c),
        "pin": lambda: v.pin(a, b, c if isinstance(c, bool) else True),
        "name": lambda: setattr(v, "name", a),
        "vmo_create": lambda: w.k.vmo_create(a, b),
        "reclaim_discardable": lambda: w.k.reclaim_discardable(a, b),
        "reclaim": lambda: w.k.reclaim(a),
    }


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(CLOSABLE + ["rpinned"]), data=st.data())
def test_random_calls_raise_only_zx_error(world_factory, name, data):
    """Any call with any mix of values: success, or a ZxError that changed nothing."""
    w = world_factory()
    v = getattr(w, name)
    call = data.draw(st.sampled_from(sorted(random_calls(w, v, [0, 0, 0]))), label="call")
    args = [data.draw(VALUES, label=f"arg{i}") for i in range(3)]
    fn = random_calls(w, v, args)[call]
    before = w.state()
    try:
        with time_limit(20):
            fn()
    except ZxError as e:
        assert isinstance(e.status, Status)
        validate(w.k)
        after = w.state()
        if e.status == Status.ERR_NO_MEMORY:
            # COMMIT and pin may commit part-way: only the contents must be as they were.
            for key in before:
                if key != "used_frames":
                    assert after[key][:2] == before[key][:2], key
        else:
            assert after == before
        return
    validate(w.k)


# ---------------------------------------------------------------------------- pagers (zx_pager_*)

FAIL_OK = {Status.ERR_IO, Status.ERR_IO_DATA_INTEGRITY, Status.ERR_BAD_STATE, Status.ERR_NO_SPACE,
           Status.ERR_BUFFER_TOO_SMALL}


class PagerWorld:
    """A queue-mode pager with two fully supplied VMOs (so reads never wait), an auxiliary VMO
    and the kinds of aux VMO a supply must refuse."""

    def __init__(self) -> None:
        self.k = k = Kernel(memory=64 * P, page_request_timeout=2.0)
        self.pager = k.pager_create()
        self.pv = self.pager.create_vmo(4 * P)
        self.tpv = self.pager.create_vmo(4 * P, vmo.PagerVmoOptions.TRAP_DIRTY)
        for target, byte in ((self.pv, b"A"), (self.tpv, b"T")):
            src = k.vmo_create(4 * P)
            src.write(byte * (4 * P))
            self.pager.supply_pages(target, 0, 4 * P, src, 0)
            src.close()
        self.pv.write(b"dirty", P)  # one Dirty page for query_dirty_ranges
        self.aux = k.vmo_create(4 * P)
        self.aux.write(b"B" * (4 * P))
        self.aux_slice = self.aux.create_child(C.SLICE, 0, 2 * P)
        self.aux_ro = self.aux.create_child(C.SNAPSHOT | C.NO_WRITE, 0, 2 * P)
        self.other = k.pager_create(lambda request: None)
        validate(k)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"used_frames": self.k.pmm.used_frames,
                               "port": len(self.pager._port)}
        for name in ("pv", "tpv", "aux", "aux_slice", "aux_ro"):
            v = getattr(self, name)
            if v.closed:
                continue
            try:
                data: Any = v.read(v.get_size())
            except ZxError as e:  # a detached VMO's clean pages are gone
                data = e.status
            out[name] = (v.get_size(), data, v.get_info())
        for name in ("pv", "tpv"):
            v = getattr(self, name)
            if not v.closed:
                out[name + ".dirty"] = self.pager.query_dirty_ranges(v, 0, v.get_size())
                out[name + ".stats"] = self.pager.query_vmo_stats(v)
        return out


@pytest.fixture
def pager_world():
    made: list[PagerWorld] = []

    def make() -> PagerWorld:
        w = PagerWorld()
        made.append(w)
        return w

    yield make
    for w in made:
        w.k.close()


def pexpect(w: PagerWorld, status: Status | set[Status], fn: Callable[[], Any]) -> None:
    before = w.state()
    with pytest.raises(ZxError) as info:
        fn()
    allowed = status if isinstance(status, set) else {status}
    assert info.value.status in allowed, f"{info.value!r}, wanted {allowed}"
    validate(w.k)
    assert w.state() == before


not_a_vmo = st.one_of(non_ints, st.integers()).map(lambda x: (x, Status.ERR_WRONG_TYPE))

PAGER_CASES: dict[str, tuple[Callable[[PagerWorld, Any], Any], st.SearchStrategy]] = {
    "pager_create.handler": (
        lambda w, x: w.k.pager_create(x),
        st.one_of(st.integers(), st.text(max_size=3), st.floats(), st.binary(max_size=2),
                  st.lists(st.integers(), max_size=1)).map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "create_vmo.size": (lambda w, x: w.pager.create_vmo(x), bad_u64("size")),
    "create_vmo.options": (lambda w, x: w.pager.create_vmo(P, x), bad_flags(vmo.PagerVmoOptions)),
    "supply_pages.pager_vmo": (lambda w, x: w.pager.supply_pages(x, 0, P, w.aux, 0), not_a_vmo),
    "supply_pages.aux_vmo": (lambda w, x: w.pager.supply_pages(w.pv, 0, P, x, 0), not_a_vmo),
    "supply_pages.offset": (lambda w, x: w.pager.supply_pages(w.pv, x, P, w.aux, 0), bad_u64()),
    "supply_pages.length": (lambda w, x: w.pager.supply_pages(w.pv, 0, x, w.aux, 0), bad_u64()),
    "supply_pages.aux_offset": (lambda w, x: w.pager.supply_pages(w.pv, 0, P, w.aux, x),
                                bad_u64()),
    "op_range.op": (lambda w, x: w.pager.op_range(x, w.pv, 0, P), bad_enum(vmo.PagerOp)),
    "op_range.vmo": (lambda w, x: w.pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, x, 0, P),
                     not_a_vmo),
    "op_range.offset": (lambda w, x: w.pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, w.pv, x, P),
                        bad_u64()),
    "op_range.length": (lambda w, x: w.pager.op_range(vmo.PagerOp.WRITEBACK_END, w.pv, 0, x),
                        bad_u64()),
    "op_range.data": (lambda w, x: w.pager.op_range(vmo.PagerOp.FAIL, w.pv, 0, P, x),
                      non_ints.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "query_dirty_ranges.vmo": (lambda w, x: w.pager.query_dirty_ranges(x, 0, P), not_a_vmo),
    "query_dirty_ranges.offset": (lambda w, x: w.pager.query_dirty_ranges(w.pv, x, P),
                                  bad_u64()),
    "query_dirty_ranges.length": (lambda w, x: w.pager.query_dirty_ranges(w.pv, 0, x),
                                  bad_u64()),
    "query_vmo_stats.vmo": (lambda w, x: w.pager.query_vmo_stats(x), not_a_vmo),
    "query_vmo_stats.reset": (
        lambda w, x: w.pager.query_vmo_stats(w.pv, x),
        st.one_of(st.integers(), st.none(), st.text(max_size=2), st.floats())
        .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "detach_vmo.vmo": (lambda w, x: w.pager.detach_vmo(x), not_a_vmo),
    "get_request.timeout": (lambda w, x: w.pager.get_request(x),
                            bad_timeouts.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
}


@pytest.mark.parametrize("case", sorted(PAGER_CASES))
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_pager_bad_argument(pager_world, case, data):
    call, bad = PAGER_CASES[case]
    value, status = data.draw(bad, label="bad value")
    w = pager_world()
    pexpect(w, status, lambda: call(w, value))


@SETTINGS
@given(data=st.data())
def test_supply_pages_unaligned(pager_world, data):
    w = pager_world()
    args = [data.draw(st.integers(0, 2)) * P for _ in range(3)]  # offset, length, aux_offset
    which = data.draw(st.integers(0, 2))
    args[which] += data.draw(st.integers(1, P - 1))
    off, length, aux_off = args
    pexpect(w, Status.ERR_INVALID_ARGS,
            lambda: w.pager.supply_pages(w.pv, off, length, w.aux, aux_off))


@SETTINGS
@given(data=st.data())
def test_supply_pages_out_of_range(pager_world, data):
    w = pager_world()
    if data.draw(st.booleans(), label="aux range"):
        pages = data.draw(st.integers(1, 4))
        first = data.draw(st.integers(5 - pages, 8))
        args = (w.pv, 0, pages * P, w.aux, first * P)
    else:
        first = data.draw(st.integers(0, 6))
        pages = data.draw(st.integers(max(1, 5 - first), 8))
        args = (w.pv, first * P, pages * P, w.aux, 0)
    pexpect(w, Status.ERR_OUT_OF_RANGE, lambda: w.pager.supply_pages(*args))


def test_supply_pages_bad_vmos(pager_world):
    w = pager_world()
    pexpect(w, Status.ERR_BAD_STATE, lambda: w.pager.supply_pages(w.pv, 0, P, w.tpv, 0))
    pexpect(w, Status.ERR_BAD_STATE,
            lambda: w.pager.supply_pages(w.pv, 0, P, w.aux_slice, 0))
    pexpect(w, Status.ERR_ACCESS_DENIED, lambda: w.pager.supply_pages(w.pv, 0, P, w.aux_ro, 0))
    # A VMO that is not this pager's.
    pexpect(w, Status.ERR_INVALID_ARGS, lambda: w.pager.supply_pages(w.aux, 0, P, w.aux, 0))
    pexpect(w, Status.ERR_INVALID_ARGS, lambda: w.other.supply_pages(w.pv, 0, P, w.aux, 0))
    pexpect(w, Status.ERR_INVALID_ARGS,
            lambda: w.pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, w.aux, 0, P))
    pexpect(w, Status.ERR_INVALID_ARGS, lambda: w.other.query_dirty_ranges(w.pv, 0, P))
    pexpect(w, Status.ERR_INVALID_ARGS, lambda: w.other.query_vmo_stats(w.pv))
    pexpect(w, Status.ERR_INVALID_ARGS, lambda: w.other.detach_vmo(w.pv))


@SETTINGS
@given(data=st.integers(-(2**70), 2**70).filter(lambda x: x not in {int(s) for s in FAIL_OK}))
def test_pager_fail_with_a_status_it_cannot_send(pager_world, data):
    w = pager_world()
    pexpect(w, Status.ERR_INVALID_ARGS,
            lambda: w.pager.op_range(vmo.PagerOp.FAIL, w.pv, 0, P, data))


@SETTINGS
@given(data=st.integers(-(2**70), 2**70).filter(lambda x: x not in (0, 1)))
def test_pager_writeback_begin_unknown_data(pager_world, data):
    w = pager_world()
    pexpect(w, Status.ERR_INVALID_ARGS,
            lambda: w.pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, w.pv, 0, P, data))


@SETTINGS
@given(data=st.integers(-(2**70), 2**70).filter(lambda x: x != 0))
def test_pager_writeback_end_with_data(pager_world, data):
    w = pager_world()
    pexpect(w, Status.ERR_INVALID_ARGS,
            lambda: w.pager.op_range(vmo.PagerOp.WRITEBACK_END, w.pv, 0, P, data))


@pytest.mark.parametrize("op", list(vmo.PagerOp), ids=lambda o: o.name)
@SETTINGS
@given(data=st.data())
def test_pager_op_range_unaligned_or_past_end(pager_world, op, data):
    w = pager_world()
    target = w.tpv  # DIRTY needs a TRAP_DIRTY VMO
    first = data.draw(st.integers(0, 6))
    if data.draw(st.booleans()):
        off = first * P + data.draw(st.integers(1, P - 1))
        status = Status.ERR_INVALID_ARGS
        length = data.draw(st.integers(0, 2)) * P
    else:
        off = first * P
        length = data.draw(st.integers(max(1, 5 - first), 8)) * P
        status = Status.ERR_OUT_OF_RANGE
    extra = (Status.ERR_IO,) if op == vmo.PagerOp.FAIL else ()
    pexpect(w, status, lambda: w.pager.op_range(op, target, off, length, *extra))


def test_pager_dirty_without_trap_dirty(pager_world):
    w = pager_world()
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: w.pager.op_range(vmo.PagerOp.DIRTY, w.pv, 0, P))


def test_pager_snapshot_and_other_vmo_ops(pager_world):
    w = pager_world()
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: w.pv.create_child(C.SNAPSHOT, 0, P))
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: w.pv.create_child(C.SNAPSHOT, 0, 4 * P))
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: w.pv.op_range(VmoOp.LOCK, 0, 4 * P))
    pexpect(w, Status.ERR_UNAVAILABLE, lambda: w.pv.set_size(P))
    alow = w.pv.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: alow.create_child(C.SNAPSHOT, 0, P))
    pexpect(w, Status.ERR_NOT_SUPPORTED, lambda: alow.op_range(VmoOp.DECOMMIT, 0, P))


def test_pager_get_request(pager_world):
    w = pager_world()
    pexpect(w, Status.ERR_TIMED_OUT, lambda: w.pager.get_request(0))
    pexpect(w, Status.ERR_TIMED_OUT, lambda: w.pager.get_request(0.01))
    pexpect(w, Status.ERR_BAD_STATE, lambda: w.other.get_request(0))


def test_pager_detached_vmo(pager_world):
    w = pager_world()
    w.pager.detach_vmo(w.pv)
    validate(w.k)
    w.pager.get_request(0)  # the COMPLETE packet
    pexpect(w, Status.ERR_BAD_STATE, lambda: w.pager.supply_pages(w.pv, 0, P, w.aux, 0))
    for op in (vmo.PagerOp.WRITEBACK_BEGIN, vmo.PagerOp.WRITEBACK_END):
        pexpect(w, Status.ERR_BAD_STATE, lambda op=op: w.pager.op_range(op, w.pv, 0, P))
    w.pager.detach_vmo(w.pv)  # detaching twice is harmless
    validate(w.k)


def test_pager_closed_vmo_arguments(pager_world):
    w = pager_world()
    w.pv.close()
    w.aux_ro.close()
    w.aux_slice.close()
    calls = {
        "supply_pages": lambda: w.pager.supply_pages(w.pv, 0, P, w.aux, 0),
        "op_range": lambda: w.pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, w.pv, 0, P),
        "query_dirty_ranges": lambda: w.pager.query_dirty_ranges(w.pv, 0, P),
        "query_vmo_stats": lambda: w.pager.query_vmo_stats(w.pv),
        "detach_vmo": lambda: w.pager.detach_vmo(w.pv),
    }
    for name, call in calls.items():
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_HANDLE, name
        validate(w.k)
    w.aux.close()
    pexpect(w, Status.ERR_BAD_HANDLE, lambda: w.pager.supply_pages(w.tpv, 0, P, w.aux, 0))


def pager_calls(w: PagerWorld, pager: vmo.Pager) -> dict[str, Callable[[], Any]]:
    return {
        "create_vmo": lambda: pager.create_vmo(P),
        "supply_pages": lambda: pager.supply_pages(w.pv, 0, P, w.aux, 0),
        "op_range": lambda: pager.op_range(vmo.PagerOp.WRITEBACK_BEGIN, w.pv, 0, P),
        "query_dirty_ranges": lambda: pager.query_dirty_ranges(w.pv, 0, P),
        "query_vmo_stats": lambda: pager.query_vmo_stats(w.pv),
        "detach_vmo": lambda: pager.detach_vmo(w.pv),
        "get_request": lambda: pager.get_request(0),
    }


def test_closed_pager_every_call(pager_world):
    w = pager_world()
    w.pager.close()
    validate(w.k)
    for name, call in pager_calls(w, w.pager).items():
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_HANDLE, name
        validate(w.k)
    w.pager.close()  # idempotent: a second close does nothing


def test_closed_kernel_pager_calls(pager_world):
    w = pager_world()
    w.k.close()
    with pytest.raises(ZxError) as e:
        w.k.pager_create()
    assert e.value.status == Status.ERR_BAD_HANDLE
    for pager in (w.pager, w.other):
        for name, call in pager_calls(w, pager).items():
            if name == "close":
                continue
            with pytest.raises(ZxError) as e:
                call()
            assert e.value.status in (Status.ERR_BAD_HANDLE, Status.ERR_BAD_STATE), name


def test_get_request_timeout_int_too_large(pager_world):
    # A timeout too long for a float means "forever" (ZX_TIME_INFINITE), not an OverflowError:
    # with a packet already queued it returns at once.
    w = pager_world()
    w.pager.detach_vmo(w.pv)
    req = w.pager.get_request(10**400)
    assert req.command == vmo.PageRequestCommand.COMPLETE
    validate(w.k)
