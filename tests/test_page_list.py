"""Unit tests of `vmo.page_list.PageList`, the sparse page-index -> slot map of one node.

Slots are ints: EMPTY (0), MARKER (-1) or a frame number (>= 1). The list is made of nodes of
``NODE_PAGES`` (16) slots; an emptied node must be dropped. Every walk is checked against a
plain dict model, both in hand-written cases (node boundaries, empty ranges) and in a hypothesis
state machine.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vmo.page_list import EMPTY, MARKER, NODE_PAGES, PageList


def model_items(model: dict[int, int], start: int = 0, end: int | None = None):
    return sorted((o, v) for o, v in model.items()
                  if o >= start and (end is None or o < end))


def check_against(pl: PageList, model: dict[int, int]) -> None:
    """Full structural comparison of ``pl`` with the dict ``model``."""
    assert len(pl) == len(model)
    assert pl.is_empty() == (not model)
    assert list(pl.items()) == model_items(model)
    assert list(pl.pages()) == [(o, v) for o, v in model_items(model) if v > 0]
    assert pl.count_pages() == sum(1 for v in model.values() if v > 0)
    assert pl.last_offset() == (max(model) if model else None)
    # Exactly the nodes that hold something exist (empty nodes are dropped).
    assert pl.node_count() == len({o // NODE_PAGES for o in model})
    for key, node in pl._nodes.items():
        # The per-node count (the extra slot) matches the non-empty slots.
        assert len(node) == NODE_PAGES + 1
        assert node[NODE_PAGES] == sum(1 for v in node[:NODE_PAGES] if v != EMPTY)
        assert node[NODE_PAGES] > 0
        for i in range(NODE_PAGES):
            assert node[i] == model.get(key * NODE_PAGES + i, EMPTY)


# ---------------------------------------------------------------------------- point operations


def test_empty_list():
    pl = PageList()
    assert len(pl) == 0
    assert pl.is_empty()
    assert pl.get(0) == EMPTY
    assert pl.get(12345) == EMPTY
    assert pl.remove(7) == EMPTY
    assert list(pl.items()) == []
    assert list(pl.pages()) == []
    assert pl.dense(0, 5) == [EMPTY] * 5
    assert pl.dense(3, 3) == []
    assert not pl.any_in_range(0, 1000)
    assert pl.first_in_range(0, 1000) is None
    assert pl.take_range(0) == []
    assert pl.count_pages() == 0
    assert pl.last_offset() is None
    assert pl.node_count() == 0
    assert pl.metadata_bytes() == 0


def test_node_pages_is_16():
    assert NODE_PAGES == 16
    assert EMPTY == 0
    assert MARKER == -1


def test_set_get_remove_returns_old():
    pl = PageList()
    assert pl.set(5, 10) == EMPTY
    assert pl.get(5) == 10
    assert len(pl) == 1
    assert pl.set(5, MARKER) == 10  # overwrite does not change the count
    assert len(pl) == 1
    assert pl.get(5) == MARKER
    assert pl.set(5, 11) == MARKER
    assert pl.remove(5) == 11
    assert pl.get(5) == EMPTY
    assert len(pl) == 0
    assert pl.remove(5) == EMPTY
    assert len(pl) == 0
    assert pl.node_count() == 0


def test_set_empty_is_refused():
    pl = PageList()
    with pytest.raises(AssertionError):
        pl.set(3, EMPTY)
    assert pl.is_empty()
    assert pl.node_count() == 0


@pytest.mark.parametrize("off", [0, 15, 16, 17, 31, 32, 255, 256, 2**40 - 1, 2**40, 2**52 + 3])
def test_node_boundaries_single_entry(off):
    pl = PageList()
    pl.set(off, 42)
    check_against(pl, {off: 42})
    assert pl.first_in_range(0, off + 1) == (off, 42)
    assert pl.first_in_range(off, off + 1) == (off, 42)
    assert pl.first_in_range(off + 1, off + 100) is None
    if off:
        assert pl.first_in_range(0, off) is None
    assert pl.dense(off - 1 if off else 0, off + 2)[-2] == 42
    assert pl.remove(off) == 42
    check_against(pl, {})


def test_neighbouring_nodes_are_separate():
    pl = PageList()
    pl.set(15, 1)  # last slot of node 0
    pl.set(16, 2)  # first slot of node 1
    assert pl.node_count() == 2
    pl.remove(15)
    assert pl.node_count() == 1
    assert pl.get(16) == 2
    pl.remove(16)
    assert pl.node_count() == 0


def test_empty_node_removal_after_filling_a_node():
    pl = PageList()
    model = {}
    for i in range(NODE_PAGES):
        pl.set(32 + i, i + 1)
        model[32 + i] = i + 1
    assert pl.node_count() == 1
    check_against(pl, model)
    # Remove all but one: the node stays; remove the last: it goes.
    for i in range(NODE_PAGES - 1):
        assert pl.remove(32 + i) == i + 1
        del model[32 + i]
        check_against(pl, model)
        assert pl.node_count() == 1
    pl.remove(32 + NODE_PAGES - 1)
    check_against(pl, {})
    assert pl.node_count() == 0


def test_markers_count_as_entries_not_pages():
    pl = PageList()
    pl.set(0, MARKER)
    pl.set(1, 9)
    pl.set(20, MARKER)
    assert len(pl) == 3
    assert pl.count_pages() == 1
    assert list(pl.pages()) == [(1, 9)]
    assert list(pl.items()) == [(0, MARKER), (1, 9), (20, MARKER)]
    assert pl.last_offset() == 20
    assert pl.any_in_range(20, 21)
    assert pl.first_in_range(2, 100) == (20, MARKER)


# ---------------------------------------------------------------------------- range walks


def _filled(offsets, value=lambda o: o + 1):
    pl = PageList()
    model = {}
    for o in offsets:
        v = value(o)
        pl.set(o, v)
        model[o] = v
    return pl, model


def test_items_ranges_at_node_boundaries():
    pl, model = _filled([0, 1, 14, 15, 16, 17, 31, 32, 47, 48, 100])
    for start in [0, 1, 14, 15, 16, 17, 30, 31, 32, 33, 47, 48, 49, 100, 101]:
        for end in [None, 0, 1, 15, 16, 17, 31, 32, 33, 48, 49, 101, 1000]:
            want = model_items(model, start, end)
            assert list(pl.items(start, end)) == want, (start, end)
            assert list(pl.pages(start, end)) == want, (start, end)
            if end is not None:
                assert pl.any_in_range(start, end) == bool(want)
                assert pl.first_in_range(start, end) == (want[0] if want else None)
                assert pl.count_pages(start, end) == len(want)
                dense = pl.dense(start, end)
                assert dense == [model.get(o, EMPTY) for o in range(start, max(start, end))]


def test_items_with_end_before_start_is_empty():
    pl, _ = _filled([3, 4, 5])
    assert list(pl.items(5, 3)) == []
    assert list(pl.items(4, 4)) == []
    assert pl.dense(5, 3) == []
    assert not pl.any_in_range(5, 3)
    assert pl.take_range(5, 3) == []
    assert len(pl) == 3


def test_items_allows_removing_visited_slots():
    pl, model = _filled(range(0, 40, 3))
    for off, v in pl.items():
        assert pl.remove(off) == v  # removing what was just visited, emptying nodes as we go
    check_against(pl, {})


def test_items_skips_node_dropped_during_iteration():
    # Removing entries of a node not yet visited (so it is dropped) must not break the walk.
    pl, _ = _filled([1, 20, 40])
    seen = []
    for off, _v in pl.items():
        seen.append(off)
        if off == 1:
            pl.remove(20)
    assert seen == [1, 40]


def test_take_range_removes_and_returns():
    pl, model = _filled(list(range(10, 60)) + [200])
    taken = pl.take_range(15, 50)
    assert taken == model_items(model, 15, 50)
    for o in range(15, 50):
        del model[o]
    check_against(pl, model)
    # Nodes fully emptied by the take are gone: node 2 (32..47) had only taken offsets.
    assert 2 not in pl._nodes
    rest = pl.take_range(0)
    assert rest == model_items(model)
    check_against(pl, {})


def test_take_range_open_end():
    pl, model = _filled([5, 17, 33, 1000])
    assert pl.take_range(17) == [(17, 18), (33, 34), (1000, 1001)]
    check_against(pl, {5: 6})


def test_set_run_skips_empty_values():
    pl = PageList()
    pl.set(3, 77)
    pl.set_run(0, [1, EMPTY, MARKER, EMPTY, 5] + [EMPTY] * 12 + [9])
    # EMPTY values in the run leave the existing slot alone (slot 3 keeps 77).
    check_against(pl, {0: 1, 2: MARKER, 3: 77, 4: 5, 17: 9})


def test_set_run_across_nodes():
    pl = PageList()
    vals = list(range(1, 50))
    pl.set_run(10, vals)
    check_against(pl, {10 + i: v for i, v in enumerate(vals)})
    assert pl.node_count() == 4  # pages 10..58: nodes 0, 1, 2, 3


def test_dense_spanning_many_nodes_with_gaps():
    pl, model = _filled([2, 40, 41, 90])
    assert pl.dense(0, 100) == [model.get(o, EMPTY) for o in range(100)]
    assert pl.dense(41, 42) == [42]
    assert pl.dense(42, 89) == [EMPTY] * 47


def test_last_offset_after_removing_tail():
    pl, _ = _filled([3, 70, 75])
    assert pl.last_offset() == 75
    pl.remove(75)
    assert pl.last_offset() == 70
    pl.remove(70)
    assert pl.last_offset() == 3


def test_metadata_bytes_grows_with_nodes():
    pl, _ = _filled([0, 16, 32])
    one = PageList()
    one.set(0, 1)
    assert pl.metadata_bytes() == 3 * one.metadata_bytes() > 0


# ---------------------------------------------------------------------------- properties

offsets = st.integers(min_value=0, max_value=200)
values = st.one_of(st.just(MARKER), st.integers(min_value=1, max_value=10**6))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(offsets, values, max_size=60),
       offsets, st.one_of(st.none(), offsets))
def test_walks_match_dict(model, start, end):
    pl = PageList()
    for o, v in model.items():
        pl.set(o, v)
    check_against(pl, model)
    want = model_items(model, start, end)
    assert list(pl.items(start, end)) == want
    assert list(pl.pages(start, end)) == [(o, v) for o, v in want if v > 0]
    assert pl.count_pages(start, end) == sum(1 for _, v in want if v > 0)
    if end is not None:
        assert pl.dense(start, end) == [model.get(o, EMPTY) for o in range(start, max(start, end))]
        assert pl.first_in_range(start, end) == (want[0] if want else None)
        assert pl.any_in_range(start, end) == bool(want)
        assert pl.is_empty_range(start, end) == (not want)
        assert pl.is_full_range(start, end) == all(o in model for o in range(start, end))
        # segments: disjoint, ascending, whole nodes apart, covering every entry of the range.
        segs = pl.segments(start, end)
        covered = {}
        last_end = None
        for seg_start, slots in segs:
            assert slots and start <= seg_start and seg_start + len(slots) <= end
            assert list(slots) == [model.get(o, EMPTY) for o in range(seg_start,
                                                                seg_start + len(slots))]
            if last_end is not None:
                assert seg_start // NODE_PAGES > (last_end - 1) // NODE_PAGES + 1
            last_end = seg_start + len(slots)
            covered.update({seg_start + i: v for i, v in enumerate(slots) if v != EMPTY})
        assert sorted(covered.items()) == want
        dense_copy = pl.dense(start, end)
        assert pl.take_dense(start, end) == dense_copy
        for o, _ in want:
            pl.set(o, model[o])
    assert pl.take_range(start, end) == want
    for o, _ in want:
        del model[o]
    check_against(pl, model)


class PageListMachine(RuleBasedStateMachine):
    """PageList against a dict, with offsets clustered near node boundaries."""

    @initialize()
    def setup(self):
        self.pl = PageList()
        self.model: dict[int, int] = {}

    offs = st.one_of(
        st.integers(min_value=0, max_value=80),
        st.builds(lambda n, d: max(0, n * NODE_PAGES + d),
                  st.integers(min_value=0, max_value=6), st.integers(min_value=-1, max_value=1)),
        st.integers(min_value=2**40, max_value=2**40 + 40),
    )

    @rule(off=offs, value=values)
    def set(self, off, value):
        assert self.pl.set(off, value) == self.model.get(off, EMPTY)
        self.model[off] = value

    @rule(off=offs)
    def remove(self, off):
        assert self.pl.remove(off) == self.model.pop(off, EMPTY)

    @rule(off=offs)
    def get(self, off):
        assert self.pl.get(off) == self.model.get(off, EMPTY)

    @rule(start=offs, length=st.integers(min_value=0, max_value=40))
    def take_range(self, start, length):
        end = start + length
        want = model_items(self.model, start, end)
        assert self.pl.take_range(start, end) == want
        for o, _ in want:
            del self.model[o]

    @precondition(lambda self: len(self.model) > 0)
    @rule(start=offs)
    def take_tail(self, start):
        want = model_items(self.model, start)
        assert self.pl.take_range(start) == want
        for o, _ in want:
            del self.model[o]

    @rule(start=offs, vals=st.lists(st.one_of(st.just(EMPTY), values), max_size=40))
    def set_run(self, start, vals):
        self.pl.set_run(start, vals)
        for i, v in enumerate(vals):
            if v != EMPTY:
                self.model[start + i] = v

    @rule(start=offs, length=st.integers(min_value=0, max_value=40))
    def walks(self, start, length):
        end = start + length
        want = model_items(self.model, start, end)
        assert list(self.pl.items(start, end)) == want
        assert self.pl.dense(start, end) == [self.model.get(o, EMPTY) for o in range(start, end)]
        assert self.pl.first_in_range(start, end) == (want[0] if want else None)
        assert self.pl.any_in_range(start, end) == bool(want)
        assert self.pl.count_pages(start, end) == sum(1 for _, v in want if v > 0)

    @invariant()
    def matches(self):
        check_against(self.pl, self.model)


PageListMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                             deadline=None)
TestPageListMachine = PageListMachine.TestCase
