"""The swap page source (`vmo.pager.swap`): behaviour, errors, leaks, workloads."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmo
from vmo import ChildOptions, Kernel, Status, VmoOp, VmoOptions, ZxError
from vmo.mmu import mapping
from vmo.mmu.workload import Workload, WorkloadContext
from vmo.pager import FilePager
from vmo.pager.swap import SwapSource, SwapState
from vmo.pager.swap import file as swap_file_module
from vmo.pmm import PAGE_SIZE as PS


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel(memory=64 * 2**20, page_request_timeout=20.0)
    yield kernel
    try:
        vmo.debug.validate(kernel)
    finally:
        kernel.close()


@pytest.fixture
def swap(k: Kernel) -> Iterator[SwapSource]:
    s = SwapSource(k)
    yield s
    s.close()


def pattern(page: int, salt: int = 0) -> bytes:
    return bytes([(page * 7 + salt) % 251 + 1]) * PS


def fill(v: vmo.Vmo, pages: range, salt: int = 0) -> bytes:
    data = b"".join(pattern(p, salt) for p in pages)
    v.write(data, pages.start * PS)
    return data


def arena_blocks(k: Kernel) -> int:
    return os.fstat(k.pmm.fd).st_blocks


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def populated(swap: SwapSource) -> int:
    m = swap.status().metrics
    return m.resident_pages + m.staging_pages + m.swap_pages


# ---------------------------------------------------------------- the round trip


def test_zeros_at_first_and_content_kept(swap: SwapSource) -> None:
    v = swap.create_vmo(8 * PS)
    assert v.read(8 * PS) == bytes(8 * PS)
    data = fill(v, range(2, 5))
    assert v.read(3 * PS, 2 * PS) == data
    info = v.get_info()
    assert info.flags & vmo.VmoInfoFlags.PAGER_BACKED
    assert swap.status().state == SwapState.READY
    assert swap.status().metrics.zeroed_pages >= 8


def test_move_swap_out_fault_back_swap_in(k: Kernel, swap: SwapSource) -> None:
    n = 256
    v = swap.create_vmo(n * PS)
    data = fill(v, range(n))
    used = k.memory_stats().vmo_pages
    blocks = arena_blocks(k)
    assert swap.move_to_staging() == n
    # The frames went back to the arena, and the arena's memory to the host.
    assert k.memory_stats().vmo_pages == used - n
    assert arena_blocks(k) <= blocks - n * PS // 512
    st0 = swap.status()
    assert st0.state == SwapState.PENDING
    assert (st0.metrics.resident_pages, st0.metrics.staging_pages) == (0, n)
    assert st0.metrics.staging_bytes == n * PS
    assert st0.transitions[-1].to_state == SwapState.PENDING
    assert st0.transitions[-1].pages == n
    # A read takes pages back from staging.
    assert v.read(PS, 10 * PS) == data[10 * PS:11 * PS]
    m = swap.status().metrics
    assert m.copied_from_staging_pages >= 1
    assert m.resident_pages + m.staging_pages == n
    # Swap out all of it, in runs.
    written = 0
    while (got := swap.swap_out(64 * PS)) != 0:
        assert got <= 64
        written += got
    assert written == n - m.resident_pages
    st1 = swap.status()
    assert st1.state == SwapState.ACTIVE
    assert st1.metrics.staging_pages == 0 and st1.metrics.staging_bytes == 0
    assert st1.metrics.swap_pages == written
    assert st1.metrics.bytes_written == written * PS
    assert st1.metrics.swap_file_bytes >= written * PS
    # A write to a swapped-out page reads it back from the file first.
    v.write(b"x", 100 * PS + 5)
    expect = bytearray(data)
    expect[100 * PS + 5] = ord("x")
    assert swap.status().metrics.copied_from_file_pages >= 1
    # swap_in brings everything else back.
    assert swap.swap_in() == written - 1
    st2 = swap.status()
    assert st2.state == SwapState.READY
    assert (st2.metrics.staging_pages, st2.metrics.swap_pages) == (0, 0)
    assert st2.metrics.resident_pages == n
    assert st2.metrics.swap_file_bytes == 0  # the file was given back
    assert v.read(n * PS) == bytes(expect)
    kinds = [(t.from_state, t.to_state) for t in st2.transitions]
    assert (SwapState.ACTIVE, SwapState.SWAP_IN_IN_PROGRESS) in kinds
    assert kinds[-1] == (SwapState.SWAP_IN_IN_PROGRESS, SwapState.READY)
    assert '"state": "ready"' in st2.to_json()


def test_swap_in_and_out_counts(swap: SwapSource) -> None:
    v = swap.create_vmo(64 * PS)
    fill(v, range(0, 64, 2))  # every other page: 32 runs of one page
    assert swap.move_to_staging() == 32
    assert swap.swap_out(PS) == 1
    assert swap.swap_out(None) == 31
    assert swap.swap_out() == 0
    assert swap.swap_in(PS) == 1
    assert swap.status().state == SwapState.SWAP_IN_IN_PROGRESS
    assert swap.swap_in() == 31
    assert swap.status().state == SwapState.READY
    assert swap.status().metrics.swap_in_pages == 32
    assert swap.swap_in() == 0


def test_never_populated_pages_are_skipped(swap: SwapSource) -> None:
    v = swap.create_vmo(1024 * PS)
    fill(v, range(500, 503))
    assert swap.move_to_staging() == 3
    assert swap.status().metrics.staging_pages == 3


def test_commit_and_mapping_fault_bring_pages_back(k: Kernel, swap: SwapSource) -> None:
    v = swap.create_vmo(16 * PS)
    data = fill(v, range(16))
    swap.move_to_staging()
    swap.swap_out()
    v.op_range(VmoOp.COMMIT, 0, 16 * PS)
    m = swap.status().metrics
    assert m.resident_pages == 16 and m.swap_pages == 0
    assert v.read(16 * PS) == data
    swap.move_to_staging()
    with v.map() as mp:
        assert mp.read(16 * PS) == data
        mp.write(b"\xee" * PS, 3 * PS)
        # The mapped store is recalled before the page moves out: it is not lost.
        swap.move_to_staging()
        swap.swap_out()
        assert swap.status().metrics.resident_pages == 0
        assert mp.read(PS, 3 * PS) == b"\xee" * PS
    assert v.read(PS, 3 * PS) == b"\xee" * PS
    mapping.validate(k)


def test_children_see_the_content(swap: SwapSource) -> None:
    v = swap.create_vmo(8 * PS)
    data = fill(v, range(8))
    child = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 8 * PS)
    child.write(b"c" * PS, 0)
    swap.move_to_staging()
    swap.swap_out()
    assert child.read(7 * PS, PS) == data[PS:]
    assert child.read(PS) == b"c" * PS
    assert v.read(PS) == data[:PS]
    # The parent's handle goes; its child keeps reading swapped-out pages.
    swap.move_to_staging()
    swap.swap_out()
    v.close()
    assert child.read(7 * PS, PS) == data[PS:]
    s = child.create_child(ChildOptions.SLICE, 0, 2 * PS)
    assert s.read(PS, PS) == data[PS:2 * PS]
    child.close()
    s.close()


def test_snapshots_never_see_later_writes(k: Kernel, swap: SwapSource) -> None:
    """SNAPSHOT of a swap VMO: the root becomes the hidden node and keeps the source (see the
    README's swap notes); neither side sees the other's later writes, swapped out or not."""
    v = swap.create_vmo(8 * PS)
    data = fill(v, range(8))
    swap.move_to_staging()
    swap.swap_out(4 * PS)
    snap = v.create_child(ChildOptions.SNAPSHOT, 0, 8 * PS)
    v.write(b"v" * PS, 0)
    snap.write(b"s" * PS, PS)
    assert snap.read(PS) == data[:PS]
    assert v.read(PS, PS) == data[PS:2 * PS]
    vmo.debug.validate(k)
    # Pages both sides still share move out and come back into the hidden root; pages one
    # side forked (split bits) stay.
    assert snap.read(PS, 5 * PS) == data[5 * PS:6 * PS]
    assert swap.status().metrics.resident_pages == 3
    assert swap.move_to_staging([snap]) == 1
    swap.swap_out()
    inner = snap.create_child(ChildOptions.SNAPSHOT, 2 * PS, 4 * PS)  # a snapshot of a snapshot
    snap.write(b"t" * PS, 2 * PS)
    assert inner.read(PS) == data[2 * PS:3 * PS]
    assert v.read(8 * PS) == b"v" * PS + data[PS:]
    assert snap.read(3 * PS) == data[:PS] + b"s" * PS + b"t" * PS
    vmo.debug.validate(k)
    # Closing the original merges the hidden root into the snapshot, which keeps the source.
    v.close()
    vmo.debug.validate(k)
    swap.move_to_staging()
    swap.swap_out()
    snap.close()  # and then into the inner snapshot, at an offset: its pages come back first
    vmo.debug.validate(k)
    assert inner.read(4 * PS) == data[2 * PS:6 * PS]
    m = swap.status().metrics
    assert m.resident_pages == 4 and m.staging_pages == m.swap_pages == 0
    assert swap.move_to_staging([inner]) == 4
    assert inner.read(4 * PS) == data[2 * PS:6 * PS]


def test_snapshot_zero_and_shrink_of_a_side(k: Kernel, swap: SwapSource) -> None:
    """ZERO of a snapshot side over pages the source holds brings them into the hidden root
    first (a split bit needs a page); a shrink that hides pages from everybody drops the
    source's copies."""
    v = swap.create_vmo(8 * PS, VmoOptions.RESIZABLE)
    data = fill(v, range(8))
    swap.move_to_staging()
    snap = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PS)
    v.op_range(VmoOp.ZERO, 0, 2 * PS)
    assert v.read(2 * PS) == bytes(2 * PS)
    assert snap.read(2 * PS) == data[:2 * PS]
    v.set_size(2 * PS)  # pages 4..8 were seen by v alone
    vmo.debug.validate(k)
    m = swap.status().metrics
    assert m.staging_pages == 2  # pages 2 and 3: the snapshot still sees them
    assert snap.read(4 * PS) == data[:4 * PS]
    with pytest.raises(ZxError) as e:
        v.op_range(VmoOp.DECOMMIT, 0, PS)  # a clone, as for any anonymous VMO
    assert e.value.status == Status.ERR_NOT_SUPPORTED


def test_pinned_pages_stay(swap: SwapSource) -> None:
    v = swap.create_vmo(4 * PS)
    fill(v, range(4))
    pin = v.pin(PS, PS)
    assert swap.move_to_staging() == 3
    assert swap.status().metrics.resident_pages == 1
    pin.unpin()
    assert swap.move_to_staging() == 1


# ---------------------------------------------------------------- trim


def test_trim_zero_and_clean_pages(swap: SwapSource) -> None:
    v = swap.create_vmo(16 * PS)
    data = fill(v, range(8))
    v.op_range(VmoOp.COMMIT, 8 * PS, 8 * PS)  # 8 committed zero pages
    assert swap.move_to_staging() == 16
    assert swap.trim() == 8
    m = swap.status().metrics
    assert (m.trimmed_zero_pages, m.staging_pages) == (8, 8)
    swap.swap_out()
    # Faults bring the pages back; the file keeps their bytes (a completed swap_in would give
    # the disk back instead, as crosvm truncates the file).
    assert v.read(8 * PS) == data
    v.write(b"new", 2 * PS)  # one page changes; the others come back clean
    assert swap.move_to_staging() == 8
    assert swap.trim(3) == 2  # a bound: 3 pages examined (pages 0, 1, 2)
    assert swap.trim() == 5
    m = swap.status().metrics
    assert m.trimmed_clean_pages == 7
    assert (m.staging_pages, m.swap_pages) == (1, 7)
    expect = bytearray(data + bytes(8 * PS))
    expect[2 * PS:2 * PS + 3] = b"new"
    assert v.read(16 * PS) == bytes(expect)
    assert swap.trim() == 0


# ---------------------------------------------------------------- page removal


def test_decommit_zero_shrink_drop_copies(swap: SwapSource) -> None:
    v = swap.create_vmo(32 * PS, VmoOptions.RESIZABLE)
    data = fill(v, range(32))
    swap.move_to_staging()
    swap.swap_out(16 * PS)  # pages 0..15 in the file, 16..31 staged
    v.op_range(VmoOp.DECOMMIT, 8 * PS, 16 * PS)  # 8 from the file, 8 from staging
    m = swap.status().metrics
    assert (m.swap_pages, m.staging_pages) == (8, 8)
    v.op_range(VmoOp.ZERO, 0, 2 * PS)
    v.op_range(VmoOp.ZERO, 30 * PS, 2 * PS)
    m = swap.status().metrics
    assert (m.swap_pages, m.staging_pages) == (6, 6)
    v.set_size(28 * PS)
    m = swap.status().metrics
    assert (m.swap_pages, m.staging_pages, m.resident_pages) == (6, 4, 0)
    expect = bytearray(data[:28 * PS])
    expect[0:2 * PS] = bytes(2 * PS)
    expect[8 * PS:24 * PS] = bytes(16 * PS)
    assert v.read(28 * PS) == bytes(expect)
    # Growing again: the tail reads zeros, and pages written there move out and back too.
    v.set_size(40 * PS)
    v.write(b"t" * PS, 38 * PS)
    swap.move_to_staging()
    assert v.read(PS, 38 * PS) == b"t" * PS
    assert v.read(PS, 30 * PS) == bytes(PS)
    assert populated(swap) == 6 + 4 + 1  # the kept pages and the tail page; zeros cost nothing


def test_close_drops_everything(k: Kernel, swap: SwapSource) -> None:
    before = open_fds()
    v = swap.create_vmo(64 * PS)
    fill(v, range(64))
    swap.move_to_staging()
    swap.swap_out(32 * PS)
    assert open_fds() - before  # a staging memfd and a swap file
    used = k.memory_stats().vmo_pages
    v.close()
    assert open_fds() <= before
    assert k.memory_stats().vmo_pages == used
    m = swap.status().metrics
    assert (m.resident_pages, m.staging_pages, m.swap_pages) == (0, 0, 0)


def test_source_close_brings_pages_back(k: Kernel) -> None:
    fds = open_fds()
    threads = threading.active_count()
    s = SwapSource(k)
    directory = s.directory
    v = s.create_vmo(32 * PS)
    data = fill(v, range(32))
    s.move_to_staging()
    s.swap_out(8 * PS)
    s.close()
    s.close()  # idempotent
    assert not os.path.exists(directory)
    assert open_fds() <= fds
    assert threading.active_count() == threads
    assert v.read(32 * PS) == data  # anonymous memory from now on
    v.write(b"after", 0)
    assert v.read(5) == b"after"
    for call in (lambda: s.move_to_staging(), lambda: s.swap_out(), lambda: s.swap_in(),
                 lambda: s.trim(), lambda: s.status(), lambda: s.create_vmo(PS)):
        with pytest.raises(ZxError) as e:
            call()
        assert e.value.status == Status.ERR_BAD_HANDLE
    v.close()


def test_given_directory_is_kept_and_left_clean(k: Kernel, tmp_path: Any) -> None:
    with SwapSource(k, tmp_path) as s:
        v = s.create_vmo(8 * PS)
        fill(v, range(8))
        s.move_to_staging()
        s.swap_out()
        assert os.listdir(tmp_path) == []  # unnamed files
    assert tmp_path.exists() and os.listdir(tmp_path) == []


def test_kernel_closed_first(k: Kernel) -> None:
    s = SwapSource(k)
    v = s.create_vmo(8 * PS)
    fill(v, range(8))
    s.move_to_staging()
    k.close()
    s.close()
    assert v.closed


# ---------------------------------------------------------------- failures of the swap file


@contextlib.contextmanager
def tiny_tmpfs(path: str, size: str) -> Iterator[str]:
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def test_enospc_leaves_pages_staged_and_swap_in_recovers(k: Kernel, tmp_path: Any) -> None:
    with tiny_tmpfs(str(tmp_path / "small"), "64k") as d:
        s = SwapSource(k, d)
        try:
            v = s.create_vmo(64 * PS)
            data = fill(v, range(64))
            s.move_to_staging()
            with pytest.raises(ZxError) as e:
                s.swap_out()
            assert e.value.status == Status.ERR_NO_SPACE
            st0 = s.status()
            assert st0.state == SwapState.FAILED
            assert st0.error is not None and "No space" in st0.error
            m = st0.metrics
            assert m.staging_pages + m.swap_pages == 64
            assert v.read(64 * PS) == data  # nothing lost, reads work
            assert s.swap_in() >= 0
            st1 = s.status()
            assert st1.state == SwapState.READY and st1.error is None
            assert st1.metrics.resident_pages == 64
            assert v.read(64 * PS) == data
        finally:
            s.close()


def test_eio_from_a_fault_injecting_file(k: Kernel, swap: SwapSource,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    v = swap.create_vmo(16 * PS)
    data = fill(v, range(16))
    swap.move_to_staging()
    assert swap.swap_out(4 * PS) == 4
    real = swap_file_module.frame_io.copy_between_fds

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(swap_file_module.frame_io, "copy_between_fds", broken)
    with pytest.raises(ZxError) as e:
        swap.swap_out()
    assert e.value.status == Status.ERR_IO
    st0 = swap.status()
    assert st0.state == SwapState.FAILED and "injected" in (st0.error or "")
    assert (st0.metrics.swap_pages, st0.metrics.staging_pages) == (4, 12)
    assert v.read(16 * PS) == data
    monkeypatch.setattr(swap_file_module.frame_io, "copy_between_fds", real)
    swap.swap_in()
    assert swap.status().state == SwapState.READY


def test_swap_in_without_memory_fails_and_recovers(swap: SwapSource) -> None:
    k = swap.kernel
    v = swap.create_vmo(256 * PS)
    data = fill(v, range(256))
    swap.move_to_staging()
    hog = k.vmo_create(k.pmm.free_frames * PS)
    hog.op_range(VmoOp.COMMIT, 0, hog.get_size())
    with pytest.raises(ZxError) as e:
        swap.swap_in()
    assert e.value.status == Status.ERR_NO_MEMORY
    assert swap.status().state == SwapState.FAILED
    hog.close()
    swap.swap_in()
    assert swap.status().state == SwapState.READY
    assert v.read(256 * PS) == data


# ---------------------------------------------------------------- bad input


def test_bad_directories(k: Kernel, tmp_path: Any) -> None:
    cases: list[tuple[Any, Status]] = [
        (tmp_path / "missing", Status.ERR_NOT_FOUND),
        (42, Status.ERR_INVALID_ARGS),
        (b"/tmp", Status.ERR_INVALID_ARGS),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file", Status.ERR_INVALID_ARGS))
    for directory, status in cases:
        with pytest.raises(ZxError) as e:
            SwapSource(k, directory)
        assert e.value.status == status, directory
    ro = str(tmp_path / "ro")
    os.makedirs(ro)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", ro],
                       capture_output=True)
    if r.returncode == 0:
        try:
            with pytest.raises(ZxError) as e:
                SwapSource(k, ro)
            assert e.value.status == Status.ERR_ACCESS_DENIED
        finally:
            subprocess.run(["umount", "-l", ro], check=False)
    with pytest.raises(ZxError) as e:
        SwapSource("kernel")  # type: ignore[arg-type]
    assert e.value.status == Status.ERR_WRONG_TYPE
    with pytest.raises(ZxError) as e:
        SwapSource(k, over=3)  # type: ignore[arg-type]
    assert e.value.status == Status.ERR_WRONG_TYPE


_bad_sizes = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=1, max_value=1 << 40).filter(lambda n: n % PS),
    st.integers(min_value=1 << 64, max_value=1 << 70),
    st.floats(allow_nan=True), st.text(max_size=3), st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@given(bad=_bad_sizes, which=st.sampled_from(["swap_out", "swap_in"]))
def test_bad_max_bytes(bad: Any, which: str) -> None:
    with Kernel(memory=4 * 2**20) as k, SwapSource(k) as s:
        v = s.create_vmo(4 * PS)
        data = fill(v, range(4))
        s.move_to_staging()
        before = s.status()
        with pytest.raises(ZxError) as e:
            getattr(s, which)(bad)
        assert e.value.status in (Status.ERR_INVALID_ARGS, Status.ERR_OUT_OF_RANGE)
        after = s.status()
        assert after.metrics == before.metrics and after.state == before.state
        assert v.read(4 * PS) == data


@given(bad=st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=2),
                     st.booleans(), st.integers(min_value=1 << 64, max_value=1 << 66)))
def test_bad_max_pages(bad: Any) -> None:
    with Kernel(memory=4 * 2**20) as k, SwapSource(k) as s:
        v = s.create_vmo(2 * PS)
        fill(v, range(2))
        s.move_to_staging()
        with pytest.raises(ZxError) as e:
            s.trim(bad)
        assert e.value.status in (Status.ERR_INVALID_ARGS, Status.ERR_OUT_OF_RANGE)
        assert s.status().metrics.staging_pages == 2


@given(kind=st.sampled_from(["other_source", "other_kernel", "plain", "closed",
                             "not_a_vmo", "string"]))
def test_bad_vmos_argument(kind: str) -> None:
    with Kernel(memory=4 * 2**20) as k, Kernel(memory=4 * 2**20) as k2, \
            SwapSource(k) as s, SwapSource(k) as other, SwapSource(k2) as far:
        mine = s.create_vmo(2 * PS)
        fill(mine, range(2))
        bad: Any
        if kind == "other_source":
            bad = [other.create_vmo(PS)]
        elif kind == "other_kernel":
            bad = [far.create_vmo(PS)]
        elif kind == "plain":
            bad = k.vmo_create(PS)
        elif kind == "closed":
            bad = s.create_vmo(PS)
            bad.close()
        elif kind == "not_a_vmo":
            bad = [mine, 3]
        else:
            bad = "vmo"
        with pytest.raises(ZxError) as e:
            s.move_to_staging(bad)
        assert e.value.status in (Status.ERR_INVALID_ARGS, Status.ERR_WRONG_TYPE,
                                  Status.ERR_BAD_HANDLE)
        assert s.status().metrics.staging_pages == 0  # nothing half done
        assert s.move_to_staging([mine]) == 2


def test_bad_create_vmo(swap: SwapSource) -> None:
    for size, opts, status in [(-1, 0, Status.ERR_OUT_OF_RANGE),  # as vmo_create
                               (PS, VmoOptions.DISCARDABLE, Status.ERR_NOT_SUPPORTED),
                               (PS, 1 << 9, Status.ERR_INVALID_ARGS),
                               ("x", 0, Status.ERR_INVALID_ARGS)]:
        with pytest.raises(ZxError) as e:
            swap.create_vmo(size, opts)  # type: ignore[arg-type]
        assert e.value.status == status
    assert swap.vmos() == []


# ---------------------------------------------------------------- stacking


def test_stacked_over_a_file_pager(k: Kernel, tmp_path: Any) -> None:
    path = tmp_path / "data.bin"
    content = b"".join(pattern(p, 3) for p in range(32))
    path.write_bytes(content)
    fp = FilePager(k, path)
    s = SwapSource(k, over=fp)
    try:
        v = s.create_vmo(32 * PS)
        assert v.read(32 * PS) == content  # read from below
        v.write(b"D" * PS, 5 * PS)  # one Dirty page
        with pytest.raises(ZxError) as e:
            v.op_range(VmoOp.DECOMMIT, 0, PS)
        assert e.value.status == Status.ERR_NOT_SUPPORTED
        assert s.move_to_staging() == 32
        m = s.status().metrics
        assert (m.dropped_clean_pages, m.staging_pages, m.resident_pages) == (31, 1, 0)
        s.swap_out()
        expect = bytearray(content)
        expect[5 * PS:6 * PS] = b"D" * PS
        assert v.read(32 * PS) == bytes(expect)
        v.op_range(VmoOp.ZERO, 7 * PS, PS)
        expect[7 * PS:8 * PS] = bytes(PS)
        s.move_to_staging()
        s.swap_out()
        assert s.writeback() == 2
        assert path.read_bytes() == bytes(expect)  # flushed through the FilePager
        assert v.read(32 * PS) == bytes(expect)
    finally:
        s.close()
        fp.close()


def test_stacked_over_a_user_pager_vmo(k: Kernel) -> None:
    below = k.vmo_create(8 * PS)
    fill(below, range(8), 9)
    with SwapSource(k, over=below) as s:
        v = s.create_vmo(10 * PS)  # larger than below: zeros past its end
        assert v.read(2 * PS, 7 * PS) == pattern(7, 9) + bytes(PS)
        with pytest.raises(ZxError) as e:
            SwapSource(k).writeback()
        assert e.value.status == Status.ERR_BAD_STATE


# ---------------------------------------------------------------- concurrency and workloads


def test_faults_race_with_swap_in(swap: SwapSource) -> None:
    n = 512
    v = swap.create_vmo(n * PS)
    data = fill(v, range(n))
    swap.move_to_staging()
    swap.swap_out(n // 2 * PS)
    errors: list[BaseException] = []

    def reader(start: int) -> None:
        try:
            for p in range(start, n, 7):
                assert v.read(PS, p * PS) == data[p * PS:(p + 1) * PS]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    swap.swap_in()
    for t in threads:
        t.join()
    assert not errors
    st = swap.status()
    assert st.state == SwapState.READY
    assert st.metrics.resident_pages == n
    assert v.read(n * PS) == data


def sum_pages(ctx: WorkloadContext, name: str) -> int:
    view = ctx.mappings[name].memoryview()
    return sum(view[i] for i in range(0, view.nbytes, PS))


def touch_forever(ctx: WorkloadContext, name: str) -> None:
    view = ctx.mappings[name].memoryview()
    while True:
        for i in range(0, view.nbytes, PS):
            _ = view[i]


def needs_uffd() -> None:
    from vmo.mmu.fault_handler import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_workload_touches_a_swapped_out_vmo(k: Kernel, swap: SwapSource) -> None:
    needs_uffd()
    n = 128
    v = swap.create_vmo(n * PS)
    data = fill(v, range(n))
    with Workload(k, timeout=30.0) as w:
        w.map(v, name="v")
        assert w.run(sum_pages, "v") == sum(data[i] for i in range(0, n * PS, PS))
        swap.move_to_staging()
        swap.swap_out(n // 2 * PS)
        assert swap.status().metrics.resident_pages == 0
        # The workload's loads fault; the faults take the pages back from file and staging.
        assert w.run(sum_pages, "v") == sum(data[i] for i in range(0, n * PS, PS))
        m = swap.status().metrics
        assert m.copied_from_file_pages >= n // 2 and m.copied_from_staging_pages >= n // 2
        assert m.resident_pages == n
        w.run(vmo.mmu.workload.fill, "v", 0x5A, 0, PS)
        swap.move_to_staging()  # recalls the workload's store first
        assert v.read(PS) == b"\x5a" * PS
    mapping.validate(k)


def test_workload_sigkilled_during_swap_in(k: Kernel, swap: SwapSource) -> None:
    needs_uffd()
    n = 2048
    v = swap.create_vmo(n * PS)
    data = fill(v, range(n))
    mapping.manager_for(k)  # the fault handler's thread and descriptors live with the kernel
    swap.move_to_staging()
    swap.swap_out()  # the staging memfd and the swap file live with the VMO
    before = open_fds()
    w = Workload(k, timeout=30.0)
    m = w.map(v, name="v", fault_around=1)
    w.start(touch_forever, "v")
    wait_until(lambda: m.fault_stats().faults > 20)
    # Kill it between two steps of a swap-in, while its faults race with the steps.
    for _ in range(4):
        assert swap.swap_in(64 * PS) == 64
    assert swap.status().state == SwapState.SWAP_IN_IN_PROGRESS
    w.kill()
    swap.swap_in()
    wait_until(lambda: m.unmapped)
    with pytest.raises(ZxError) as e:
        w.result(timeout=10)
    assert e.value.status == Status.ERR_PEER_CLOSED
    w.close()
    assert w.process.returncode == -signal.SIGKILL
    assert swap.status().state == SwapState.READY
    assert v.read(n * PS) == data
    wait_until(lambda: open_fds() <= before)
    mapping.validate(k)


def test_close_without_memory_fails_what_cannot_come_back(k: Kernel) -> None:
    s = SwapSource(k)
    v = s.create_vmo(64 * PS)
    data = fill(v, range(64))
    s.move_to_staging()
    s.swap_out(32 * PS)
    v.read(PS, 40 * PS)  # one staged page back: resident
    hog = k.vmo_create(k.pmm.free_frames * PS)
    hog.op_range(VmoOp.COMMIT, 0, hog.get_size())
    s.close()  # the pages cannot come back: the VMO fails to read them, it does not show zeros
    assert v.read(PS, 40 * PS) == data[40 * PS:41 * PS]
    with pytest.raises(ZxError) as e:
        v.read(PS, 0)
    assert e.value.status == Status.ERR_BAD_STATE
    hog.close()
    v.close()
