"""The event trace (`k.trace()`): exact event sequences for scripted scenarios, the callback
form, JSON round trips, and that an inactive trace leaves nothing hooked."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmo
from vmo import PAGE_SIZE, ChildOptions, PagerOp, Status, VmoOp, VmoOptions, ZxError
from vmo.trace import EVENT_KINDS, TraceEvent, event_from_dict

P = PAGE_SIZE


def keys(events: list[TraceEvent]) -> list[tuple[object, ...]]:
    return [e.key() for e in events]


@pytest.fixture
def k():  # type: ignore[no-untyped-def]
    with vmo.Kernel(4 << 20) as kernel:
        yield kernel


def test_snapshot_fork_migrate_merge_sequence(k: vmo.Kernel) -> None:
    """Snapshot, write both sides, close one side: clone, fork with its split bit, migrate,
    close, merge — in that order, with those nodes and offsets."""
    v = k.vmo_create(3 * P)
    v.write(b"a" * 2 * P)
    root = v.cow.id
    with k.trace() as t:
        c = v.create_child(ChildOptions.SNAPSHOT, 0, 3 * P)
        left, right = v.cow.id, c.cow.id
        v.write(b"b", 0)  # both sides see page 0 of the hidden node: copy, LEFT split bit
        c.write(b"c", 0)  # only the right side still sees it: migrate
        c.write(b"c", P)  # page 1: copy into the right side, RIGHT split bit
        c.close()
    vk, ck = v.koid, c.koid
    assert keys(t.events) == [
        ("vmo_create", ck, right, 3, vk),
        ("clone", vk, ck, "snapshot", root, left, right, 0, 3),
        ("fork", root, 0, left, 0, "left", vk),
        ("migrate", root, 0, right, 0, ck),
        ("fork", root, 1, right, 1, "right", ck),
        ("vmo_close", ck, right),
        # The hidden node's page 1 (RIGHT split bit) is the left side's alone now: it moves in.
        ("merge", root, left, right, 1, 0, vk),
    ]
    assert [e.seq for e in t.events] == list(range(1, 8))
    assert v.read(2 * P) == b"b" + b"a" * (2 * P - 1)
    vmo.debug.validate(k)


def test_offsets_of_a_clone_inside_the_parent(k: vmo.Kernel) -> None:
    v = k.vmo_create(4 * P)
    v.write(b"x" * 4 * P)
    with k.trace() as t:
        c = v.create_child(ChildOptions.SNAPSHOT, 2 * P, 2 * P)
        hidden, left, right = c.cow.parent.id, v.cow.id, c.cow.id
        c.write(b"y", P)  # the child's page 1 is the hidden node's page 3
    assert keys(t.events)[1:] == [
        ("clone", v.koid, c.koid, "snapshot", hidden, left, right, 2, 2),
        ("fork", hidden, 3, right, 1, "right", c.koid),
    ]


def test_shrink_releases_and_zero_adds_markers(k: vmo.Kernel) -> None:
    v = k.vmo_create(4 * P)
    v.write(b"x" * 4 * P)
    c = v.create_child(ChildOptions.SNAPSHOT | ChildOptions.RESIZABLE, 0, 4 * P)
    hidden, right = c.cow.parent.id, c.cow.id
    with k.trace() as t:
        c.op_range(VmoOp.ZERO, 0, P)  # the left side still sees page 0: a marker hides it
        c.set_size(2 * P)  # pages 2 and 3 are the left side's alone now
    assert keys(t.events) == [
        ("marker", right, 0, True, c.koid),
        ("release", right, hidden, 2, 2, 0),
    ]
    assert c.read(P) == bytes(P)
    vmo.debug.validate(k)


def test_slice_and_at_least_on_write_clones(k: vmo.Kernel) -> None:
    v = k.vmo_create(4 * P)
    with k.trace() as t:
        s = v.create_child(ChildOptions.SLICE, P, 2 * P)
    assert keys(t.events)[1] == ("clone", v.koid, s.koid, "slice", 0, 0, s.cow.id, 1, 2)
    pager = k.pager_create()
    pv = pager.create_vmo(2 * P)
    with k.trace() as t:
        a = pv.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    assert keys(t.events)[1] == ("clone", pv.koid, a.koid, "at_least_on_write", 0, 0,
                                 a.cow.id, 0, 2)
    pager.close()


def test_pager_request_supply_dirty_writeback_evict(k: vmo.Kernel) -> None:
    pv: list[vmo.Vmo] = []

    def handler(req: vmo.PageRequest) -> None:
        if req.command == vmo.PageRequestCommand.READ:
            aux = k.vmo_create(req.length)
            aux.write(b"p" * req.length)
            pager.supply_pages(pv[0], req.offset, req.length, aux, 0)
            aux.close()

    pager = k.pager_create(handler)
    pv.append(pager.create_vmo(2 * P))
    node = pv[0].cow.id
    koid = pv[0].koid
    with k.trace() as t:
        assert pv[0].read(1, P) == b"p"
        pv[0].write(b"w", P)
        pager.op_range(PagerOp.WRITEBACK_BEGIN, pv[0], P, P)
        pager.op_range(PagerOp.WRITEBACK_END, pv[0], P, P)
        assert k.reclaim(1) == 1
    seq = keys([e for e in t.events if e.kind not in ("vmo_create", "vmo_close")])
    assert seq == [
        ("page_request", node, koid, 1, 1, "read", "issued", "OK"),
        ("supply", node, koid, 1, 1),
        ("dirty", node, koid, 1, 1),
        ("writeback", node, koid, 1, 1, "begin"),
        ("writeback", node, koid, 1, 1, "end"),
        ("evict", node, koid, 1),
    ]
    pager.close()


def test_page_request_failure(k: vmo.Kernel) -> None:
    holder: list[vmo.Vmo] = []

    def handler(req: vmo.PageRequest) -> None:
        if req.command == vmo.PageRequestCommand.READ:
            pager.op_range(PagerOp.FAIL, holder[0], req.offset, req.length, Status.ERR_IO)

    pager = k.pager_create(handler)
    holder.append(pager.create_vmo(P))
    with k.trace() as t, pytest.raises(ZxError):
        holder[0].read(1)
    assert [(e.kind, getattr(e, "action", None)) for e in t.events] == [
        ("page_request", "issued"), ("page_request", "failed")]
    assert t.events[1].status == "ERR_IO"  # type: ignore[attr-defined]
    pager.close()


def test_discard(k: vmo.Kernel) -> None:
    d = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
    d.op_range(VmoOp.LOCK, 0, 2 * P)
    d.write(b"z" * 2 * P)
    d.op_range(VmoOp.UNLOCK, 0, 2 * P)
    with k.trace() as t:
        assert k.reclaim_discardable(2) == 2
    assert keys(t.events) == [("discard", d.cow.id, d.koid, 2)]


def test_callback_form_and_several_traces(k: vmo.Kernel) -> None:
    seen: list[str] = []
    cb = k.trace(lambda e: seen.append(e.kind))
    with k.trace() as t:
        k.vmo_create(P).close()
    cb.close()
    cb.close()  # idempotent
    k.vmo_create(P)
    assert seen == ["vmo_create", "vmo_close"] == t.kinds()
    assert k.state.tracer is None  # nothing left hooked: back to the no-cost path


def test_to_dict_round_trip(k: vmo.Kernel) -> None:
    v = k.vmo_create(2 * P)
    v.write(b"q" * P)
    with k.trace() as t:
        c = v.create_child(ChildOptions.SNAPSHOT, 0, 2 * P)
        c.write(b"r", 0)
        c.close()
    assert {e.kind for e in t.events} <= set(EVENT_KINDS)
    for e in t.events:
        d = json.loads(json.dumps(e.to_dict()))
        assert d["kind"] == e.kind
        assert event_from_dict(d) == e


def test_events_from_threads_are_numbered_once(k: vmo.Kernel) -> None:
    with k.trace() as t:
        threads = [threading.Thread(target=lambda: [k.vmo_create(P).close() for _ in range(50)])
                   for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert sorted(e.seq for e in t.events) == list(range(1, 401))


@given(st.one_of(st.integers(), st.text(max_size=3), st.just(b"x"), st.floats()))
def test_bad_callback_is_invalid_args(bad: object) -> None:
    with vmo.Kernel(1 << 20) as kernel:
        with pytest.raises(ZxError) as e:
            kernel.trace(bad)  # type: ignore[arg-type]
        assert e.value.status == Status.ERR_INVALID_ARGS
        assert kernel.state.tracer is None


@given(st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
                 st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                 st.fixed_dictionaries({"kind": st.sampled_from(sorted(EVENT_KINDS))},
                                       optional={"seq": st.integers(), "x": st.integers()})))
def test_bad_event_dicts_are_invalid_args(bad: object) -> None:
    with pytest.raises(ZxError) as e:
        event_from_dict(bad)  # type: ignore[arg-type]
    assert e.value.status == Status.ERR_INVALID_ARGS


def test_trace_of_a_closed_kernel_is_bad_handle() -> None:
    kernel = vmo.Kernel(1 << 20)
    kernel.close()
    with pytest.raises(ZxError) as e:
        kernel.trace()
    assert e.value.status == Status.ERR_BAD_HANDLE


_UFFD = __import__("vmo.mmu.fault_handler", fromlist=["x"]).unavailable_reason()


@pytest.mark.uffd
@pytest.mark.skipif(_UFFD is not None, reason=_UFFD or "")
def test_mapping_faults(k: vmo.Kernel) -> None:
    """A read fault installs the shared page; the store that follows is a write-protect fault
    that forks it. The fault's event comes once the handler is done, which may be just after
    the faulting access has returned."""
    import time

    v = k.vmo_create(2 * P)
    v.write(b"a" * P)
    c = v.create_child(ChildOptions.SNAPSHOT, P, P)
    m = c.map()
    try:
        with k.trace() as t:
            assert m.read(1) == b"\0"  # the child's page 0 is the parent's page 1: zeros
            m.write(b"b", 0)
            deadline = time.monotonic() + 5
            while sum(e.kind == "fault" for e in t.events) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        faults = [e for e in t.events if e.kind == "fault"]
        assert [(e.koid, e.offset, e.access, e.resolution) for e in faults] == [
            (c.koid, 0, "read", "installed"), (c.koid, 0, "write_protect", "installed")]
        assert all(e.latency_us > 0 for e in faults)  # type: ignore[attr-defined]
    finally:
        m.unmap()


def test_swap_moves(k: vmo.Kernel) -> None:
    from vmo.pager.swap import SwapSource

    with SwapSource(k) as swap:
        v = swap.create_vmo(3 * P)
        v.write(b"s" * 3 * P)
        with k.trace() as t:
            assert swap.move_to_staging() == 3
            assert swap.swap_out() == 3
            assert swap.swap_in() == 3
        assert [(e.kind, e.move, e.pages) for e in t.events  # type: ignore[attr-defined]
                if e.kind == "swap"] == [("swap", "stage", 3), ("swap", "swap_out", 3),
                                         ("swap", "swap_in", 3)]
        assert v.read(3 * P) == b"s" * 3 * P
