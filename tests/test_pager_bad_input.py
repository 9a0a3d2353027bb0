"""Bad input to every pager call (``zx_pager_*`` and `vmo.pager.FilePager`): the right `ZxError`.

In the manner of tests/test_bad_input.py: each example builds a small world (a handler-mode
pager with plain, resizable and TRAP_DIRTY VMOs that are fully supplied so that reads never
wait, an at-least-on-write child and a slice of one, a queue-mode pager, a detached VMO, closed
handles, and every kind of auxiliary VMO a supply must refuse), calls one pager entry point
with one bad argument, and checks that

- the call raises `vmo.ZxError` (never ``TypeError``, ``OverflowError``, ``MemoryError``, ...),
- with the status Zircon gives (``ERR_WRONG_TYPE`` for a handle that is not a VMO,
  ``ERR_INVALID_ARGS`` for a non-int, unaligned value, unknown bits or a VMO of another pager,
  ``ERR_OUT_OF_RANGE`` for values that are not u64 and ranges past the end or past ``2**64``,
  ``ERR_BAD_HANDLE`` for closed handles),
- `vmo.debug.validate` passes and nothing changed (contents, sizes, infos, dirty ranges, stats,
  frames in use).

tests/test_bad_input.py checks the core's own calls; this file is the pager's.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmo
from vmo import (
    PAGE_SIZE,
    ChildOptions,
    Kernel,
    PageRequest,
    PageRequestCommand,
    PagerOp,
    PagerVmoOptions,
    Status,
    VmoOp,
    VmoOptions,
    ZxError,
)
from vmo.debug import validate
from vmo.pager import FilePager
from vmo.pager.user_pager import FAIL_STATUSES

P = PAGE_SIZE
U64 = 1 << 64
MAX_SIZE = U64 - P
C = ChildOptions
SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def page_bytes(i: int) -> bytes:
    unit = f"page{i:06d}|".encode()
    return (unit * (P // len(unit) + 1))[:P]


# ---------------------------------------------------------------------------- the world


class World:
    """Every kind of VMO a pager call can be handed, rebuilt per example."""

    def __init__(self) -> None:
        self.k = k = Kernel(memory=96 * P, page_request_timeout=2.0)
        self.store = b"".join(page_bytes(i) for i in range(8))
        self.pager = k.pager_create(self._serve)
        self.pv = self.pager.create_vmo(4 * P)
        self.rv = self.pager.create_vmo(4 * P, PagerVmoOptions.RESIZABLE)
        self.tv = self.pager.create_vmo(4 * P, PagerVmoOptions.TRAP_DIRTY)
        for v in (self.pv, self.rv, self.tv):
            v.read(4 * P)  # fully supplied: reads never wait
        self.pv.write(b"dirty", P)
        self.tv.write(b"acked", 2 * P)
        self.rv.set_size(6 * P)  # a zero range [4, 6)
        self.child = self.pv.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
        self.child.write(b"child", 0)
        self.slice = self.pv.create_child(C.SLICE, P, 2 * P)
        self.detached = self.pager.create_vmo(2 * P)
        self.pager.detach_vmo(self.detached)
        self.pv_closed = self.pager.create_vmo(P)
        self.pv_closed.close()
        # A queue-mode pager with one supplied VMO: a VMO of another pager.
        self.qpager = k.pager_create()
        self.qv = self.qpager.create_vmo(2 * P)
        src = k.vmo_create(2 * P)
        src.write(b"Q" * 2 * P)
        self.qpager.supply_pages(self.qv, 0, 2 * P, src, 0)
        src.close()
        # Auxiliary VMOs: a good one, and each kind a supply refuses.
        self.aux = k.vmo_create(4 * P)
        self.aux.write(b"A" * 4 * P)
        self.aux_nw = self.aux.create_child(C.SNAPSHOT | C.NO_WRITE, 0, 2 * P)
        self.aux_slice = self.aux.create_child(C.SLICE, 0, 2 * P)
        self.aux_pinned = k.vmo_create(2 * P)
        self.aux_pinned.write(b"pinned")
        self.pin = self.aux_pinned.pin(0, P)
        self.aux_gone = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
        self.aux_gone.op_range(VmoOp.LOCK, 0, 2 * P)
        self.aux_gone.write(b"gone")
        self.aux_gone.op_range(VmoOp.UNLOCK, 0, 2 * P)
        assert k.reclaim_discardable(100) >= 1
        self.aux_closed = k.vmo_create(P)
        self.aux_closed.close()
        self.closed_pager = k.pager_create()
        self.cpv = self.closed_pager.create_vmo(P)
        self.closed_pager.close()
        validate(k)

    def _serve(self, req: PageRequest) -> None:
        if req.command == PageRequestCommand.READ:
            aux = self.k.vmo_create(req.length)
            aux.write(self.store[req.offset:req.offset + req.length])
            self.pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
            aux.close()
        elif req.command == PageRequestCommand.DIRTY:
            self.pager.op_range(PagerOp.DIRTY, req.vmo, req.offset, req.length)

    def vmos(self) -> dict[str, vmo.Vmo]:
        return {name: v for name, v in vars(self).items()
                if isinstance(v, vmo.Vmo) and not v.closed}

    def state(self) -> dict[str, Any]:
        """Everything a failed call must leave as it was."""
        out: dict[str, Any] = {"used_frames": self.k.pmm.used_frames,
                               "qport": len(self.qpager._port)}
        for name, v in self.vmos().items():
            try:
                data: Any = v.read(v.get_size())
            except ZxError as e:  # the detached VMO, the discarded aux
                data = e.status
            out[name] = (v.get_size(), data, v.get_info())
        for pager, names in ((self.pager, ("pv", "rv", "tv", "detached")),
                             (self.qpager, ("qv",))):
            for name in names:
                v = getattr(self, name)
                if not v.closed:
                    out[name + ".dirty"] = pager.query_dirty_ranges(v, 0, v.get_size())
                    out[name + ".stats"] = pager.query_vmo_stats(v)
        return out


@pytest.fixture
def world() -> Iterator[Callable[[], World]]:
    made: list[World] = []

    def make() -> World:
        w = World()
        made.append(w)
        return w

    yield make
    for w in made:
        w.k.close()


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
    st.builds(bytearray, st.binary(max_size=3)), st.decimals(allow_nan=False, places=0),
    st.fractions(max_denominator=3),
)
negatives = st.one_of(st.just(-1), st.integers(max_value=-1),
                      st.integers(min_value=-(2**80), max_value=-(2**63)))
too_big = st.one_of(st.just(U64), st.integers(min_value=U64, max_value=2**200))
unroundable = st.one_of(st.just(MAX_SIZE + 1), st.just(U64 - 1),
                        st.integers(min_value=MAX_SIZE + 1, max_value=U64 - 1))
bad_timeouts = st.one_of(
    st.floats(max_value=-1e-9), st.integers(max_value=-1), st.just(math.nan),
    st.just(-math.inf), st.text(max_size=3), st.booleans(), st.binary(max_size=2),
    st.lists(st.integers(), max_size=1), st.just(object()),
)


def bad_u64(kind: str = "u64") -> st.SearchStrategy[tuple[Any, Status]]:
    """(value, expected status) for an argument that must be an unsigned 64-bit int."""
    strategies = [
        non_ints.map(lambda x: (x, Status.ERR_INVALID_ARGS)),
        st.one_of(negatives, too_big).map(lambda x: (x, Status.ERR_OUT_OF_RANGE)),
    ]
    if kind == "size":
        strategies.append(unroundable.map(lambda x: (x, Status.ERR_OUT_OF_RANGE)))
    return st.one_of(*strategies)


def unknown_bits(kind: Any) -> st.SearchStrategy[int]:
    known = 0
    for m in kind:
        known |= int(m)
    return st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=0, max_value=2**70).filter(lambda x: bool(x & ~known)),
        st.sampled_from([1 << b for b in range(40) if not (1 << b) & known]),
    )


def bad_flags(kind: Any) -> st.SearchStrategy[tuple[Any, Status]]:
    return st.one_of(non_ints, unknown_bits(kind)).map(lambda x: (x, Status.ERR_INVALID_ARGS))


def bad_enum(kind: Any) -> st.SearchStrategy[tuple[Any, Status]]:
    values = {int(m) for m in kind}
    return st.one_of(
        non_ints,
        st.integers(min_value=-(2**70), max_value=2**70).filter(lambda x: x not in values),
        st.sampled_from([m.name for m in kind]),  # names are not values
    ).map(lambda x: (x, Status.ERR_INVALID_ARGS))


def handle_objects(w: World) -> list[Any]:
    """Objects that are handles, but not VMOs."""
    return [w.pager, w.qpager, w.k, w.pin, vmo.PagerVmoOptions.RESIZABLE, w.pv.koid]


# A value standing for "some handle that is not a Vmo": resolved against the world.
HANDLE = object()
not_a_vmo = st.one_of(non_ints, st.integers(), st.just(HANDLE)).map(
    lambda x: (x, Status.ERR_WRONG_TYPE))


def resolve(w: World, x: Any, pick: int) -> Any:
    if x is HANDLE:
        objs = handle_objects(w)
        return objs[pick % len(objs)]
    return x


# VMOs that are not this pager's: another pager's, anonymous ones, and the children of ours
# (a child's node has no page source of its own).
FOREIGN = ["qv", "aux", "child", "slice", "aux_nw", "aux_slice", "aux_pinned"]
# Auxiliary VMOs a supply refuses, and why.
# Zircon's TakePagesLocked: an aux VMO with a parent, a page source or children is BAD_STATE.
BAD_AUX = {
    "pv": Status.ERR_BAD_STATE,  # pager-backed
    "qv": Status.ERR_BAD_STATE,
    "child": Status.ERR_BAD_STATE,  # a clone (of a pager-backed VMO)
    "slice": Status.ERR_BAD_STATE,
    "aux_slice": Status.ERR_BAD_STATE,
    "aux": Status.ERR_BAD_STATE,  # has a slice child
    "aux_nw": Status.ERR_ACCESS_DENIED,
    "aux_pinned": Status.ERR_BAD_STATE,
    "aux_closed": Status.ERR_BAD_HANDLE,
}

Case = tuple[Callable[[World, Any], Any], st.SearchStrategy[tuple[Any, Status]]]
WB = PagerOp.WRITEBACK_BEGIN
ARG_CASES: dict[str, Case] = {
    "pager_create.handler": (
        lambda w, x: w.k.pager_create(x),
        st.one_of(st.integers(), st.text(max_size=3), st.floats(), st.binary(max_size=2),
                  st.lists(st.integers(), max_size=1), st.booleans())
        .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "create_vmo.size": (lambda w, x: w.pager.create_vmo(x), bad_u64("size")),
    "create_vmo.options": (lambda w, x: w.pager.create_vmo(P, x), bad_flags(PagerVmoOptions)),
    "supply_pages.offset": (lambda w, x: w.pager.supply_pages(w.pv, x, P, w.aux, 0), bad_u64()),
    "supply_pages.length": (lambda w, x: w.pager.supply_pages(w.pv, 0, x, w.aux, 0), bad_u64()),
    "supply_pages.aux_offset": (lambda w, x: w.pager.supply_pages(w.pv, 0, P, w.aux, x),
                                bad_u64()),
    "op_range.op": (lambda w, x: w.pager.op_range(x, w.pv, 0, P), bad_enum(PagerOp)),
    "op_range.data(FAIL)": (
        lambda w, x: w.pager.op_range(PagerOp.FAIL, w.pv, 0, P, x),
        st.one_of(non_ints,
                  st.integers(-(2**70), 2**70).filter(lambda x: x not in FAIL_STATUSES),
                  st.sampled_from(sorted(set(Status) - FAIL_STATUSES)))
        .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "op_range.data(WRITEBACK_BEGIN)": (
        lambda w, x: w.pager.op_range(WB, w.pv, 0, P, x),
        st.one_of(non_ints, st.integers(-(2**70), 2**70).filter(lambda x: x not in (0, 1)))
        .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "op_range.data(WRITEBACK_END)": (
        lambda w, x: w.pager.op_range(PagerOp.WRITEBACK_END, w.pv, 0, P, x),
        st.one_of(non_ints, st.integers(-(2**70), 2**70).filter(lambda x: x != 0))
        .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "query_vmo_stats.reset": (
        lambda w, x: w.pager.query_vmo_stats(w.pv, x),
        st.one_of(st.integers(), st.none(), st.text(max_size=2), st.floats(),
                  st.just([True])).map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "get_request.timeout": (lambda w, x: w.qpager.get_request(x),
                            bad_timeouts.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "get_request.timeout(handler mode)": (
        lambda w, x: w.pager.get_request(x),
        bad_timeouts.map(lambda x: (x, Status.ERR_INVALID_ARGS))),
}


def op_data(op: PagerOp) -> int:
    """A good ``data`` for ``op``."""
    return Status.ERR_IO if op == PagerOp.FAIL else 0


def op_target(w: World, op: PagerOp) -> vmo.Vmo:
    """A VMO ``op`` can succeed on (DIRTY needs TRAP_DIRTY)."""
    return w.tv if op == PagerOp.DIRTY else w.pv


def op_range_offset(op: PagerOp) -> Callable[[World, Any], Any]:
    return lambda w, x: w.pager.op_range(op, op_target(w, op), x, P, op_data(op))


def op_range_length(op: PagerOp) -> Callable[[World, Any], Any]:
    return lambda w, x: w.pager.op_range(op, op_target(w, op), 0, x, op_data(op))


for _op in PagerOp:
    ARG_CASES[f"op_range.offset({_op.name})"] = (op_range_offset(_op), bad_u64())
    ARG_CASES[f"op_range.length({_op.name})"] = (op_range_length(_op), bad_u64())
ARG_CASES["query_dirty_ranges.offset"] = (
    lambda w, x: w.pager.query_dirty_ranges(w.rv, x, P), bad_u64())
ARG_CASES["query_dirty_ranges.length"] = (
    lambda w, x: w.pager.query_dirty_ranges(w.rv, 0, x), bad_u64())


@pytest.mark.parametrize("case", sorted(ARG_CASES))
@SETTINGS
@given(data=st.data())
def test_bad_argument(world: Callable[[], World], case: str, data: st.DataObject) -> None:
    call, bad = ARG_CASES[case]
    value, status = data.draw(bad, label="bad value")
    w = world()
    expect(w, status, lambda: call(w, value))


# ---------------------------------------------------------------------------- handles

# Every call that takes a VMO, with the VMO argument replaced by ``x``.
VMO_ARGS: dict[str, Callable[[World, Any], Any]] = {
    "supply_pages.pager_vmo": lambda w, x: w.pager.supply_pages(x, 0, P, w.aux, 0),
    "supply_pages.aux_vmo": lambda w, x: w.pager.supply_pages(w.pv, 0, P, x, 0),
    "query_dirty_ranges.vmo": lambda w, x: w.pager.query_dirty_ranges(x, 0, P),
    "query_vmo_stats.vmo": lambda w, x: w.pager.query_vmo_stats(x),
    "detach_vmo.vmo": lambda w, x: w.pager.detach_vmo(x),
}


def op_range_vmo(op: PagerOp) -> Callable[[World, Any], Any]:
    return lambda w, x: w.pager.op_range(op, x, 0, P, op_data(op))


for _op in PagerOp:
    VMO_ARGS[f"op_range.vmo({_op.name})"] = op_range_vmo(_op)


@pytest.mark.parametrize("case", sorted(VMO_ARGS))
@SETTINGS
@given(data=st.data())
def test_not_a_vmo_is_wrong_type(world: Callable[[], World], case: str,
                                 data: st.DataObject) -> None:
    value, status = data.draw(not_a_vmo, label="not a vmo")
    pick = data.draw(st.integers(0, 100), label="which handle")
    w = world()
    expect(w, status, lambda: VMO_ARGS[case](w, resolve(w, value, pick)))


@pytest.mark.parametrize("case", sorted(c for c in VMO_ARGS if c != "supply_pages.aux_vmo"))
@pytest.mark.parametrize("name", FOREIGN)
def test_vmo_of_another_pager_is_invalid_args(world: Callable[[], World], case: str,
                                              name: str) -> None:
    w = world()
    expect(w, Status.ERR_INVALID_ARGS, lambda: VMO_ARGS[case](w, getattr(w, name)))


def test_another_pager_on_our_vmos(world: Callable[[], World]) -> None:
    w = world()
    q = w.qpager
    for call in (lambda: q.supply_pages(w.pv, 0, P, w.aux, 0),
                 lambda: q.op_range(PagerOp.WRITEBACK_BEGIN, w.pv, 0, P),
                 lambda: q.op_range(PagerOp.FAIL, w.pv, 0, P, Status.ERR_IO),
                 lambda: q.query_dirty_ranges(w.pv, 0, P),
                 lambda: q.query_vmo_stats(w.pv, reset=True),
                 lambda: q.detach_vmo(w.pv)):
        expect(w, Status.ERR_INVALID_ARGS, call)


@pytest.mark.parametrize("name", sorted(BAD_AUX))
def test_supply_from_a_bad_aux(world: Callable[[], World], name: str) -> None:
    w = world()
    expect(w, BAD_AUX[name], lambda: w.pager.supply_pages(w.pv, 0, P, getattr(w, name), 0))


def test_supply_from_a_discarded_aux(world: Callable[[], World]) -> None:
    w = world()
    expect(w, {Status.ERR_NOT_FOUND, Status.ERR_BAD_STATE},
           lambda: w.pager.supply_pages(w.pv, 0, P, w.aux_gone, 0))


def test_supply_into_itself(world: Callable[[], World]) -> None:
    w = world()
    expect(w, Status.ERR_BAD_STATE, lambda: w.pager.supply_pages(w.pv, 0, P, w.pv, 0))


def test_supply_with_a_pinned_page_elsewhere_in_aux_is_fine(world: Callable[[], World]) -> None:
    w = world()
    w.pager.supply_pages(w.pv, 0, P, w.aux_pinned, P)  # page 1 of aux is not pinned
    validate(w.k)


def test_dirty_without_trap_dirty(world: Callable[[], World]) -> None:
    w = world()
    expect(w, Status.ERR_NOT_SUPPORTED, lambda: w.pager.op_range(PagerOp.DIRTY, w.pv, 0, P))


# ---------------------------------------------------------------------------- ranges


RANGE_CALLS: dict[str, Callable[[World, int, int], Any]] = {
    "supply_pages": lambda w, o, n: w.pager.supply_pages(w.pv, o, n, w.aux, 0),
    "supply_pages.aux": lambda w, o, n: w.pager.supply_pages(w.pv, 0, n, w.aux, o),
    "query_dirty_ranges": lambda w, o, n: w.pager.query_dirty_ranges(w.pv, o, n),
}


def op_range_range(op: PagerOp) -> Callable[[World, int, int], Any]:
    return lambda w, o, n: w.pager.op_range(op, op_target(w, op), o, n, op_data(op))


for _op in PagerOp:
    RANGE_CALLS[f"op_range({_op.name})"] = op_range_range(_op)


@pytest.mark.parametrize("case", sorted(RANGE_CALLS))
@SETTINGS
@given(data=st.data())
def test_unaligned(world: Callable[[], World], case: str, data: st.DataObject) -> None:
    w = world()
    off = data.draw(st.integers(0, 3)) * P
    length = data.draw(st.integers(0, 1)) * P
    if data.draw(st.booleans(), label="offset unaligned"):
        off += data.draw(st.integers(1, P - 1))
    else:
        length += data.draw(st.integers(1, P - 1))
    expect(w, Status.ERR_INVALID_ARGS, lambda: RANGE_CALLS[case](w, off, length))


@pytest.mark.parametrize("case", sorted(RANGE_CALLS))
@SETTINGS
@given(data=st.data())
def test_past_the_end(world: Callable[[], World], case: str, data: st.DataObject) -> None:
    """Aligned ranges past the end of the VMO (4 pages), or overflowing ``2**64``."""
    w = world()
    kind = data.draw(st.sampled_from(["past", "huge", "overflow"]))
    if kind == "past":
        first = data.draw(st.integers(0, 6))
        pages = data.draw(st.integers(max(1, 5 - first), 8))
        off, length = first * P, pages * P
    elif kind == "huge":
        off = data.draw(st.integers(0, (MAX_SIZE // P))) * P
        length = MAX_SIZE
    else:
        # offset + length >= 2**64 with both valid u64 and aligned.
        off = MAX_SIZE - data.draw(st.integers(0, 2**20)) * P
        length = data.draw(st.integers((U64 - off) // P, MAX_SIZE // P)) * P
    expect(w, Status.ERR_OUT_OF_RANGE, lambda: RANGE_CALLS[case](w, off, length))


@SETTINGS
@given(first=st.integers(0, 6), pages=st.integers(0, 4))
def test_query_dirty_ranges_of_the_zero_range_tail(world: Callable[[], World], first: int,
                                                   pages: int) -> None:
    """The resizable VMO is 6 pages: ranges inside succeed, ranges past 6 pages fail."""
    w = world()
    if first + pages <= 6:
        got = w.pager.query_dirty_ranges(w.rv, first * P, pages * P)
        assert all(first * P <= r.offset and r.offset + r.length <= (first + pages) * P
                   for r in got)
    else:
        expect(w, Status.ERR_OUT_OF_RANGE,
               lambda: w.pager.query_dirty_ranges(w.rv, first * P, pages * P))


# ---------------------------------------------------------------------------- closed and detached


def pager_calls(w: World, pager: vmo.Pager, v: vmo.Vmo) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {
        "create_vmo": lambda: pager.create_vmo(P),
        "supply_pages": lambda: pager.supply_pages(v, 0, P, w.aux, 0),
        "query_dirty_ranges": lambda: pager.query_dirty_ranges(v, 0, P),
        "query_vmo_stats": lambda: pager.query_vmo_stats(v),
        "query_vmo_stats(reset)": lambda: pager.query_vmo_stats(v, reset=True),
        "detach_vmo": lambda: pager.detach_vmo(v),
        "get_request": lambda: pager.get_request(0),
    }
    for op in PagerOp:
        calls[f"op_range({op.name})"] = partial(pager.op_range, op, v, 0, P, op_data(op))
    return calls


def test_closed_pager_every_call(world: Callable[[], World]) -> None:
    w = world()
    for name, call in pager_calls(w, w.closed_pager, w.cpv).items():
        expect(w, Status.ERR_BAD_HANDLE, call)
        assert name
    w.closed_pager.close()  # idempotent: a second close does nothing
    with w.closed_pager:  # the context manager of a closed pager does not close again
        pass


def test_closed_pager_with_bad_args(world: Callable[[], World]) -> None:
    """A closed pager is found out before (or instead of) a bad argument."""
    w = world()
    cp = w.closed_pager
    bad: Any = 42  # not a Vmo, not a PagerOp, not options
    for call in (lambda: cp.create_vmo(-1), lambda: cp.create_vmo(P, bad << 40),
                 lambda: cp.supply_pages(bad, 0, P, w.aux, 0),
                 lambda: cp.op_range(bad, w.cpv, 0, P), lambda: cp.get_request(-1)):
        expect(w, {Status.ERR_BAD_HANDLE, Status.ERR_INVALID_ARGS, Status.ERR_WRONG_TYPE,
                   Status.ERR_OUT_OF_RANGE}, call)


def test_closed_vmo_every_call(world: Callable[[], World]) -> None:
    w = world()
    for name, fn in pager_calls(w, w.pager, w.pv_closed).items():
        if name in ("create_vmo", "get_request"):
            continue
        try:
            expect(w, Status.ERR_BAD_HANDLE, fn)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_closed_aux(world: Callable[[], World]) -> None:
    w = world()
    expect(w, Status.ERR_BAD_HANDLE, lambda: w.pager.supply_pages(w.pv, 0, P, w.aux_closed, 0))


def test_detached_vmo(world: Callable[[], World]) -> None:
    w = world()
    d = w.detached
    expect(w, Status.ERR_BAD_STATE, lambda: w.pager.supply_pages(d, 0, P, w.aux, 0))
    for op in (PagerOp.WRITEBACK_BEGIN, PagerOp.WRITEBACK_END):
        expect(w, Status.ERR_BAD_STATE, partial(w.pager.op_range, op, d, 0, P))
    # Still checked for range first.
    expect(w, {Status.ERR_OUT_OF_RANGE, Status.ERR_BAD_STATE},
           lambda: w.pager.op_range(PagerOp.WRITEBACK_BEGIN, d, 0, 8 * P))
    # What needs no pager answers.
    assert w.pager.query_dirty_ranges(d, 0, 2 * P) == []
    assert not w.pager.query_vmo_stats(d).modified
    w.pager.op_range(PagerOp.FAIL, d, 0, P, Status.ERR_IO)
    w.pager.detach_vmo(d)
    validate(w.k)


def test_closed_kernel_every_pager_call(world: Callable[[], World]) -> None:
    w = world()
    pv, pager = w.pv, w.pager
    w.k.close()
    with pytest.raises(ZxError) as e:
        w.k.pager_create()
    assert e.value.status == Status.ERR_BAD_HANDLE
    for name, call in pager_calls(w, pager, pv).items():
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_HANDLE, name


# ---------------------------------------------------------------------------- huge VMOs


class _Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_huge_pager_vmo_calls_that_must_be_cheap() -> None:
    """On a VMO of 2**64 - PAGE_SIZE bytes, the calls that only visit committed pages."""
    with Kernel(memory=16 * P) as k:
        pager = k.pager_create()
        v = pager.create_vmo(MAX_SIZE, PagerVmoOptions.RESIZABLE | PagerVmoOptions.TRAP_DIRTY)
        src = k.vmo_create(P)
        src.write(b"tail")
        pager.supply_pages(v, MAX_SIZE - P, P, src, 0)
        with time_limit(10):
            pager.op_range(PagerOp.FAIL, v, 0, MAX_SIZE, Status.ERR_IO)
            pager.op_range(PagerOp.DIRTY, v, 0, MAX_SIZE)
            assert pager.query_dirty_ranges(v, 0, MAX_SIZE) == [
                vmo.DirtyRange(MAX_SIZE - P, P, vmo.DirtyRangeOptions(0))]
            pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 0, MAX_SIZE)
            pager.op_range(PagerOp.WRITEBACK_END, v, 0, MAX_SIZE)
            assert pager.query_dirty_ranges(v, 0, MAX_SIZE) == []
            assert pager.query_vmo_stats(v, reset=True).modified  # the DIRTY above
            assert not pager.query_vmo_stats(v).modified
            assert v.read(4, MAX_SIZE - P) == b"tail"
            v.set_size(P)
            v.set_size(2 * P)
            pager.detach_vmo(v)
        validate(k)


@pytest.mark.parametrize("call", ["query_dirty_ranges", "WRITEBACK_BEGIN", "DIRTY"])
def test_huge_zero_range_calls_finish(call: str) -> None:
    with Kernel(memory=16 * P) as k:
        pager = k.pager_create()
        v = pager.create_vmo(P, PagerVmoOptions.RESIZABLE | PagerVmoOptions.TRAP_DIRTY)
        v.set_size(MAX_SIZE)
        with time_limit(1.0):
            if call == "query_dirty_ranges":
                assert pager.query_dirty_ranges(v, 0, MAX_SIZE) == [
                    vmo.DirtyRange(P, MAX_SIZE - P, vmo.DirtyRangeOptions.IS_ZERO)]
            elif call == "WRITEBACK_BEGIN":
                pager.op_range(PagerOp.WRITEBACK_BEGIN, v, P, MAX_SIZE - P,
                               vmo.WRITEBACK_BEGIN_ZERO_RANGE)
                pager.op_range(PagerOp.WRITEBACK_END, v, P, MAX_SIZE - P)
            else:
                with pytest.raises(ZxError) as e:
                    pager.op_range(PagerOp.DIRTY, v, 0, MAX_SIZE)
                assert e.value.status == Status.ERR_NO_MEMORY
        validate(k)


def test_supply_huge_range_is_a_zx_error() -> None:
    with Kernel(memory=16 * P) as k:
        pager = k.pager_create()
        v = pager.create_vmo(MAX_SIZE)
        aux = k.vmo_create(MAX_SIZE)
        with time_limit(10), pytest.raises(ZxError) as e:
            pager.supply_pages(v, 0, MAX_SIZE, aux, 0)
        assert e.value.status == Status.ERR_NO_MEMORY
        validate(k)


# ---------------------------------------------------------------------------- random calls

VALUES = st.one_of(
    st.sampled_from([0, 1, P - 1, P, P + 1, 2 * P, 3 * P, 4 * P, 5 * P, 2**63, MAX_SIZE,
                     MAX_SIZE + 1, U64 - 1, U64, -1, -P]),
    st.integers(0, 6 * P), non_ints,
    st.sampled_from(["@pv", "@rv", "@tv", "@child", "@slice", "@qv", "@aux", "@aux_nw",
                     "@detached", "@pv_closed", "@aux_closed", "@pager"]),
    st.sampled_from(list(PagerOp) + sorted(FAIL_STATUSES) + [Status.OK]),
)


def random_calls(w: World, args: list[Any]) -> dict[str, Callable[[], Any]]:
    a, b, c, d, e = (getattr(w, x[1:]) if isinstance(x, str) and x.startswith("@") else x
                     for x in args)
    pager = w.pager
    return {
        "create_vmo": lambda: pager.create_vmo(a, b),
        "supply_pages": lambda: pager.supply_pages(a, b, c, d, e),
        "supply_pages(pv, aux)": lambda: pager.supply_pages(w.pv, a, b, w.aux, c),
        "op_range": lambda: pager.op_range(a, b, c, d, e),
        "op_range(op)": lambda: pager.op_range(list(PagerOp)[hash(str(a)) % 4], b, c, d, e),
        "op_range(op, pv)": lambda: pager.op_range(list(PagerOp)[hash(str(a)) % 4], w.pv,
                                                   b, c, d),
        "query_dirty_ranges": lambda: pager.query_dirty_ranges(a, b, c),
        "query_vmo_stats": lambda: pager.query_vmo_stats(a, b),
        "detach_vmo": lambda: pager.detach_vmo(a),
        # Never a timeout that could block: bad values as they are, good ones as 0.
        "get_request": lambda: w.qpager.get_request(
            0 if a is None or (isinstance(a, int | float) and not isinstance(a, bool)
                               and a >= 0) else a),
    }


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_calls_raise_only_zx_error(world: Callable[[], World],
                                          data: st.DataObject) -> None:
    """Any pager call with any mix of values: success, or a ZxError that changed nothing."""
    w = world()
    call = data.draw(st.sampled_from(sorted(random_calls(w, [0] * 5))), label="call")
    args = [data.draw(VALUES, label=f"arg{i}") for i in range(5)]
    fn = random_calls(w, args)[call]
    before = w.state()
    try:
        with time_limit(20):
            fn()
    except ZxError as e:
        assert isinstance(e.status, Status)
        validate(w.k)
        if e.status != Status.ERR_NO_MEMORY:
            assert w.state() == before
        return
    validate(w.k)


# ---------------------------------------------------------------------------- FilePager


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pager_bad_input") / "data.bin"
    path.write_bytes(b"".join(page_bytes(i) for i in range(3)))
    return path


FILE_CASES: dict[str, tuple[Callable[[Kernel, Path, Any], Any],
                            st.SearchStrategy[tuple[Any, Status]]]] = {
    "kernel": (lambda k, p, x: FilePager(x, p),
               st.one_of(non_ints, st.integers()).map(lambda x: (x, Status.ERR_WRONG_TYPE))),
    "path": (lambda k, p, x: FilePager(k, x),
             st.one_of(st.integers(), st.none(), st.floats(), st.binary(max_size=3),
                       st.lists(st.text(max_size=2), max_size=2))
             .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "size": (lambda k, p, x: FilePager(k, p, size=x),  # None: the file's size, not bad
             bad_u64("size").filter(lambda t: t[0] is not None)),
    "readahead": (lambda k, p, x: FilePager(k, p, readahead=x), bad_u64("size")),
    "chunk_size": (lambda k, p, x: FilePager(k, p, chunk_size=x),
                   st.one_of(bad_u64("size"), st.sampled_from([0, 2 << 30])
                             .map(lambda x: (x, Status.ERR_INVALID_ARGS)))),
    "mode": (lambda k, p, x: FilePager(k, p, mode=x),
             st.one_of(st.text(max_size=6).filter(lambda s: s not in ("handler", "queue")),
                       st.integers(), st.none(), st.just("HANDLER"))
             .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "trap_dirty": (lambda k, p, x: FilePager(k, p, trap_dirty=x),
                   st.one_of(st.integers(), st.none(), st.text(max_size=2))
                   .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "resizable": (lambda k, p, x: FilePager(k, p, resizable=x),
                  st.one_of(st.integers(), st.none()).map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "create": (lambda k, p, x: FilePager(k, p, create=x),
               st.one_of(st.integers(), st.none()).map(lambda x: (x, Status.ERR_INVALID_ARGS))),
    "name": (lambda k, p, x: FilePager(k, p, name=x),
             st.one_of(st.integers(), st.binary(max_size=3))
             .map(lambda x: (x, Status.ERR_INVALID_ARGS))),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
@SETTINGS
@given(data=st.data())
def test_file_pager_bad_argument(data_file: Path, case: str, data: st.DataObject) -> None:
    call, bad = FILE_CASES[case]
    value, status = data.draw(bad, label="bad value")
    with Kernel(memory=32 * P) as k:
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ZxError) as e:
            call(k, data_file, value)
        assert e.value.status == status, repr(e.value)
        assert len(os.listdir("/proc/self/fd")) == fds, "a failed FilePager leaked its fd"
        assert k.live_vmos() == []
        validate(k)
    assert data_file.read_bytes() == b"".join(page_bytes(i) for i in range(3))


def test_file_pager_bad_files(tmp_path: Path) -> None:
    with Kernel(memory=32 * P) as k:
        cases = {
            str(tmp_path / "missing"): Status.ERR_NOT_FOUND,
            str(tmp_path / "missing" / "below"): Status.ERR_NOT_FOUND,
            str(tmp_path): Status.ERR_INVALID_ARGS,  # a directory
            "nul\0byte": Status.ERR_INVALID_ARGS,
        }
        for path, status in cases.items():
            with pytest.raises(ZxError) as e:
                FilePager(k, path)
            assert e.value.status == status, path
        if os.geteuid() != 0:
            ro = tmp_path / "ro"
            ro.write_bytes(b"x")
            ro.chmod(0o444)
            with pytest.raises(ZxError) as e:
                FilePager(k, ro)
            assert e.value.status == Status.ERR_ACCESS_DENIED
        validate(k)


def test_file_pager_closed_kernel(data_file: Path) -> None:
    k = Kernel(memory=32 * P)
    k.close()
    with pytest.raises(ZxError) as e:
        FilePager(k, data_file)
    assert e.value.status == Status.ERR_BAD_HANDLE


def test_file_pager_closed_every_call(data_file: Path) -> None:
    with Kernel(memory=32 * P) as k:
        fp = FilePager(k, data_file, resizable=True, mode="queue")
        fp.close()
        calls: dict[str, Callable[[], Any]] = {
            "flush": fp.flush, "fileno": fp.fileno,
            "resize": lambda: fp.resize(P), "serve_one": lambda: fp.serve_one(0),
            "serve_in_thread": fp.serve_in_thread}
        for name, call in calls.items():
            with pytest.raises(ZxError) as e:
                call()
            assert e.value.status == Status.ERR_BAD_HANDLE, name
        fp.close()  # idempotent: a second close does nothing
        assert fp.vmo.closed
        with fp:  # leaving the block does not close again
            pass
        validate(k)


@SETTINGS
@given(data=st.data())
def test_file_pager_bad_call_arguments(data_file: Path, data: st.DataObject) -> None:
    with Kernel(memory=32 * P) as k, FilePager(k, data_file, resizable=True) as fp:
        before = fp.vmo.read(fp.vmo.get_size())
        case = data.draw(st.sampled_from(["flush.sync", "resize.size", "resize(fixed)",
                                          "serve_one(handler mode)", "serve_in_thread"]))
        if case == "flush.sync":
            value: Any
            value, status = data.draw(st.one_of(st.integers(), st.none(), st.text(max_size=2))
                                      .map(lambda x: (x, Status.ERR_INVALID_ARGS)))
            call: Callable[[], Any] = lambda: fp.flush(sync=value)  # noqa: E731
        elif case == "resize.size":
            value, status = data.draw(bad_u64("size"))
            call = lambda: fp.resize(value)  # noqa: E731
        elif case == "resize(fixed)":
            fixed = FilePager(k, data_file)
            status = Status.ERR_UNAVAILABLE

            def call() -> None:
                try:
                    fixed.resize(P)
                finally:
                    fixed.close()
        else:
            status = Status.ERR_BAD_STATE
            call = (lambda: fp.serve_one(0)) if "serve_one" in case else fp.serve_in_thread
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == status
        assert fp.vmo.read(fp.vmo.get_size()) == before
        assert fp.size == 3 * P
        validate(k)
    assert data_file.read_bytes() == b"".join(page_bytes(i) for i in range(3))
