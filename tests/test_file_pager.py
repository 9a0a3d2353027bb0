"""`vmo.pager.FilePager`: a file served as a pager-backed VMO and written back by `flush`."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import vmo
from vmo import PAGE_SIZE, ChildOptions, Kernel, Status, VmoOp, ZxError
from vmo.debug import validate
from vmo.pager import FilePager, FilePagerMetrics

P = PAGE_SIZE

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def k() -> Iterator[Kernel]:
    with Kernel(memory=1024 * P, page_request_timeout=5.0) as kern:
        yield kern
        validate(kern)


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def f(tmp_path: Path) -> Path:
    return tmp_path / "data.bin"


# ---------------------------------------------------------------------------- reading


@pytest.mark.parametrize("size", [0, 1, P - 1, P, P + 1, 5 * P + 123, 64 * P])
@pytest.mark.parametrize("mode", ["handler", "queue"])
def test_reads_match_the_file(k: Kernel, f: Path, size: int, mode: Any) -> None:
    data = make_file(f, size)
    with FilePager(k, f, mode=mode) as fp:
        if mode == "queue":
            fp.serve_in_thread()
        v = fp.vmo
        assert fp.size == size
        assert v.get_size() == -(-size // P) * P
        assert v.read(size) == data
        # The tail of the last page past the end of the file reads zeros.
        tail = v.get_size() - size
        assert v.read(tail, size) == bytes(tail)
        validate(k)
        # Random small reads, again after eviction.
        rng = random.Random(size)
        for _ in range(20):
            if size == 0:
                break
            off = rng.randrange(size)
            n = rng.randrange(min(3 * P, size - off) + 1)
            assert v.read(n, off) == data[off:off + n]
            if rng.random() < 0.2:
                k.reclaim(rng.randrange(1, 8))
        m = fp.metrics()
        assert m.pages_read >= -(-size // P)
        assert m.failed_requests == m.handler_errors == 0
        validate(k)
    assert f.read_bytes() == data  # nothing written: the file is untouched


def test_the_vmo(k: Kernel, f: Path) -> None:
    make_file(f, 3 * P)
    with FilePager(k, f) as fp:
        info = fp.vmo.get_info()
        assert info.flags & vmo.VmoInfoFlags.PAGER_BACKED
        assert not info.flags & vmo.VmoInfoFlags.RESIZABLE
        assert fp.vmo.name == "data.bin"
        assert fp.pager.handler is not None
        assert "handler mode" in repr(fp)
        assert os.fstat(fp.fileno()).st_size == 3 * P
    assert fp.closed and fp.vmo.closed
    with FilePager(k, f, name="named", resizable=True, mode="queue") as fp:
        assert fp.vmo.name == "named"
        assert fp.vmo.get_info().flags & vmo.VmoInfoFlags.RESIZABLE
        assert fp.pager.handler is None


def test_one_request_per_run(k: Kernel, f: Path) -> None:
    data = make_file(f, 64 * P)
    with FilePager(k, f) as fp:
        assert fp.vmo.read(32 * P, 16 * P) == data[16 * P:48 * P]
        m = fp.metrics()
        assert (m.read_requests, m.pages_read, m.bytes_read) == (1, 32, 32 * P)
        fp.vmo.read(64 * P)
        m = fp.metrics()
        assert (m.read_requests, m.pages_read) == (3, 64)


def test_chunks(k: Kernel, f: Path) -> None:
    data = make_file(f, 40 * P + 7)
    with FilePager(k, f, chunk_size=3 * P + 1) as fp:  # rounded up to 4 pages
        assert fp.chunk_size == 4 * P
        assert fp.vmo.read(len(data)) == data
        m = fp.metrics()
        assert m.read_requests == 1 and m.pages_read == 41


def test_readahead(k: Kernel, f: Path) -> None:
    data = make_file(f, 16 * P)
    with FilePager(k, f, readahead=3 * P) as fp:
        assert fp.vmo.read(10, 0) == data[:10]
        m = fp.metrics()
        assert (m.read_requests, m.pages_read, m.pages_readahead) == (1, 4, 3)
        assert fp.vmo.read(3 * P, P) == data[P:4 * P]  # already there
        assert fp.metrics().read_requests == 1
        # Readahead stops at the end of the VMO, and keeps pages that are present.
        fp.vmo.write(b"mine", 14 * P)
        assert fp.vmo.read(4, 13 * P) == data[13 * P:13 * P + 4]
        assert fp.vmo.read(4, 14 * P) == b"mine"
        assert fp.vmo.read(P, 15 * P) == data[15 * P:]
        validate(k)


def test_sparse_file_supplies_zero_pages_without_memory(k: Kernel, f: Path) -> None:
    with open(f, "wb") as out:
        out.write(b"head")
        out.seek(32 * P)
        out.write(b"tail")
    with FilePager(k, f, chunk_size=4 * P) as fp:
        v = fp.vmo
        expected = f.read_bytes()
        assert v.read(len(expected)) == expected
        m = fp.metrics()
        # The first and last chunks hold data; the all-zero chunks in between are markers.
        assert m.pages_read == 4 + 1
        assert m.pages_zero_filled == 33 - 5
        assert v.get_info().committed_bytes == 5 * P
        validate(k)


def test_file_shorter_than_the_vmo(k: Kernel, f: Path) -> None:
    data = make_file(f, 2 * P + 100)
    with FilePager(k, f, size=6 * P) as fp:
        v = fp.vmo
        assert fp.size == 6 * P and v.get_size() == 6 * P
        assert v.read(6 * P) == data + bytes(6 * P - len(data))
        m = fp.metrics()
        assert m.pages_read == 3 and m.pages_zero_filled == 3
        # Writing past the end of the file and flushing extends it.
        v.write(b"far", 5 * P)
        assert fp.flush() == 1
        assert f.stat().st_size == 6 * P
        on_disk = f.read_bytes()
        assert on_disk[:len(data)] == data
        assert on_disk[len(data):5 * P] == bytes(5 * P - len(data))
        assert on_disk[5 * P:5 * P + 3] == b"far"
        validate(k)


def test_logical_size_clips_the_last_page(k: Kernel, f: Path) -> None:
    """Like mmap: bytes past the logical size in the last page are never written out."""
    data = make_file(f, P + 10)
    with FilePager(k, f) as fp:
        fp.vmo.write(b"0123456789ABCDEF", P + 4)  # runs 10 bytes past the end of the file
        assert fp.flush() == 1
    assert f.read_bytes() == data[:P + 4] + b"012345"
    with FilePager(k, f, size=P + 4) as fp:  # a file longer than size: the rest is unseen
        assert fp.vmo.read(P + 8) == data[:P + 4] + bytes(4)
        fp.vmo.write(b"xyz", P + 2)
    assert f.read_bytes() == data[:P + 2] + b"xy" + b"012345"


def test_size_larger_than_file_serves_zeros_and_grows_only_on_writeback(
        k: Kernel, f: Path) -> None:
    make_file(f, P)
    with FilePager(k, f, size=10 * P + 5) as fp:
        assert fp.vmo.read(5, 10 * P) == bytes(5)
        assert fp.flush() == 0
        assert f.stat().st_size == P  # reading never grows the file
        fp.vmo.write(b"!", 10 * P + 4)
    assert f.stat().st_size == 10 * P + 5


def test_create(k: Kernel, f: Path) -> None:
    with FilePager(k, f, create=True, size=3 * P) as fp:
        assert f.exists() and f.stat().st_size == 0
        assert fp.vmo.read(3 * P) == bytes(3 * P)
        fp.vmo.write(b"new file", P)
    assert f.read_bytes() == bytes(P) + b"new file" + bytes(P - 8)
    with pytest.raises(ZxError) as e:
        FilePager(k, f.with_name("absent"))
    assert e.value.status == Status.ERR_NOT_FOUND


# ---------------------------------------------------------------------------- writing back


def test_writes_and_flush_reach_the_file(k: Kernel, f: Path) -> None:
    data = bytearray(make_file(f, 16 * P))
    with FilePager(k, f) as fp:
        v = fp.vmo
        rng = random.Random(7)
        for _ in range(30):
            off = rng.randrange(16 * P - 100)
            chunk = rng.randbytes(rng.randrange(1, 100))
            v.write(chunk, off)
            data[off:off + len(chunk)] = chunk
        dirty = fp.pager.query_dirty_ranges(v, 0, 16 * P)
        pages = sum(r.length for r in dirty) // P
        assert f.read_bytes() != bytes(data)
        assert fp.flush() == pages
        assert f.read_bytes() == bytes(data)
        assert fp.pager.query_dirty_ranges(v, 0, 16 * P) == []
        m = fp.metrics()
        assert m.pages_written_back == pages and m.bytes_written == pages * P
        assert m.flushes == 1
        validate(k)
        # Everything is Clean: all of it can be evicted and read back from the file.
        committed = v.get_info().committed_bytes // P
        assert committed >= pages
        assert k.reclaim(1000) == committed
        assert v.get_info().committed_bytes == 0
        assert v.read(16 * P) == bytes(data)
        validate(k)


def test_flush_is_idempotent(k: Kernel, f: Path) -> None:
    make_file(f, 4 * P)
    with FilePager(k, f) as fp:
        fp.vmo.write(b"once", P)
        assert fp.flush(sync=True) == 1
        before = fp.metrics()
        mtime = f.stat().st_mtime_ns
        time.sleep(0.01)
        for _ in range(3):
            assert fp.flush() == 0
        after = fp.metrics()
        assert after.bytes_written == before.bytes_written
        assert after.pages_written_back == before.pages_written_back
        assert after.flushes == before.flushes + 3
        assert f.stat().st_mtime_ns == mtime
        validate(k)


def test_eviction_then_reread_from_the_file(k: Kernel, f: Path) -> None:
    data = make_file(f, 8 * P)
    with FilePager(k, f) as fp:
        v = fp.vmo
        assert v.read(8 * P) == data
        v.write(b"dirty", 2 * P)
        # Only Clean pages go; the Dirty one stays until written back.
        assert k.reclaim(1000) == 7
        assert v.get_info().committed_bytes == P
        # Change the file behind the pager's back: the next read comes from the file.
        with open(f, "r+b") as out:
            out.seek(5 * P)
            out.write(b"changed")
        assert v.read(7, 5 * P) == b"changed"
        assert v.read(5, 2 * P) == b"dirty"  # the Dirty page was never re-read
        m = fp.metrics()
        assert m.pages_read == 8 + 1
        fp.flush()
        assert k.reclaim(1000) == 2
        assert v.read(5, 2 * P) == b"dirty"  # now from the file
        validate(k)


def test_dont_need_and_always_need_hints(k: Kernel, f: Path) -> None:
    data = make_file(f, 4 * P)
    with FilePager(k, f) as fp:
        v = fp.vmo
        v.read(4 * P)
        v.op_range(VmoOp.ALWAYS_NEED, 0, P)
        v.op_range(VmoOp.DONT_NEED, 3 * P, P)
        assert k.reclaim(1) == 1
        reads = fp.metrics().pages_read
        assert v.read(P, 3 * P) == data[3 * P:]
        assert fp.metrics().pages_read == reads + 1
        assert k.reclaim(100) == 3
        assert v.get_info().committed_bytes == P  # the ALWAYS_NEED page
        validate(k)


def test_write_during_flush_is_not_lost(k: Kernel, f: Path, monkeypatch: Any) -> None:
    make_file(f, 4 * P)
    with FilePager(k, f) as fp:
        v = fp.vmo
        v.write(b"first", P)
        real_pwritev = os.pwritev

        def pwrite_then_race(fd: int, buffers: Any, offset: int) -> int:
            n = real_pwritev(fd, buffers, offset)
            if offset == P:
                v.write(b"SECOND", P)  # after the bytes were written out, before END
            return n

        monkeypatch.setattr(os, "pwritev", pwrite_then_race)
        assert fp.flush() == 1
        monkeypatch.setattr(os, "pwritev", real_pwritev)
        assert f.read_bytes()[P:P + 5] == b"first"
        # The racing write left the page Dirty: the next flush writes it.
        assert [r.offset for r in fp.pager.query_dirty_ranges(v, 0, 4 * P)] == [P]
        assert fp.flush() == 1
        assert f.read_bytes()[P:P + 6] == b"SECOND"
        validate(k)


def test_concurrent_writers_and_flushes(k: Kernel, f: Path) -> None:
    make_file(f, 32 * P)
    final: dict[int, bytes] = {}
    with FilePager(k, f, trap_dirty=True) as fp:
        v = fp.vmo

        def writer(wid: int) -> None:
            rng = random.Random(wid)
            for n in range(200):
                page = rng.randrange(wid, 32, 4)
                data = f"w{wid}:{n:04d}".encode()
                v.write(data, page * P)
                final[page] = data

        def flusher(stop: threading.Event) -> None:
            while not stop.is_set():
                fp.flush()
                k.reclaim(4)

        stop = threading.Event()
        bg = threading.Thread(target=flusher, args=(stop,))
        bg.start()
        writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(20)
        stop.set()
        bg.join(20)
        fp.flush()
        validate(k)
        m = fp.metrics()
        assert m.dirty_requests > 0 and m.handler_errors == 0
    on_disk = f.read_bytes()
    for page, data in final.items():
        assert on_disk[page * P:page * P + len(data)] == data


# ---------------------------------------------------------------------------- modes and options


def test_trap_dirty(k: Kernel, f: Path) -> None:
    make_file(f, 4 * P)
    with FilePager(k, f, trap_dirty=True) as fp:
        v = fp.vmo
        v.read(4 * P)
        v.write(b"a", 0)
        v.write(b"b", 1)  # already Dirty: no second request
        v.write(b"c" * (2 * P), P)
        m = fp.metrics()
        assert m.dirty_requests == 2 and m.pages_dirtied == 3
        fp.flush()
        v.write(b"d", 0)  # Clean again after the flush: asks again
        assert fp.metrics().dirty_requests == 3
        validate(k)
    assert f.read_bytes()[:2] == b"db"


def test_queue_mode_serve_one(k: Kernel, f: Path) -> None:
    data = make_file(f, 4 * P)
    fp = FilePager(k, f, mode="queue")
    try:
        with pytest.raises(ZxError) as e:
            fp.serve_one(timeout=0)
        assert e.value.status == Status.ERR_TIMED_OUT
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(fp.vmo.read(P, 2 * P)))
        reader.start()
        req = fp.serve_one(timeout=5)
        assert (req.command, req.offset, req.length) == (vmo.PageRequestCommand.READ, 2 * P, P)
        reader.join(5)
        assert result == [data[2 * P:3 * P]]
    finally:
        fp.close()
    assert fp.metrics().complete_requests == 0  # nobody served the COMPLETE packet


def test_queue_mode_thread(k: Kernel, f: Path) -> None:
    data = make_file(f, 16 * P)
    fp = FilePager(k, f, mode="queue", trap_dirty=True)
    t = fp.serve_in_thread()
    assert fp.serve_in_thread() is t
    readers = [threading.Thread(target=lambda i=i: fp.vmo.read(P, i * P)) for i in range(16)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(5)
    assert fp.vmo.read(16 * P) == data
    fp.vmo.write(b"queued", 3 * P)
    fp.close()
    assert not t.is_alive()
    assert f.read_bytes()[3 * P:3 * P + 6] == b"queued"
    m = fp.metrics()
    assert m.dirty_requests == 1 and m.complete_requests == 1
    validate(k)


def test_handler_mode_concurrent_readers(k: Kernel, f: Path) -> None:
    data = make_file(f, 64 * P)
    with FilePager(k, f) as fp:
        errors: list[BaseException] = []

        def read_all(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(50):
                    off = rng.randrange(64) * P
                    assert fp.vmo.read(P, off) == data[off:off + P]
                    if rng.random() < 0.1:
                        k.reclaim(8)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=read_all, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        # Whole pages of file data go straight into the VMO: no aux VMO was needed.
        assert fp._aux == []
        validate(k)


def test_resize(k: Kernel, f: Path) -> None:
    data = make_file(f, 4 * P)
    with FilePager(k, f, resizable=True) as fp:
        v = fp.vmo
        fp.resize(8 * P)
        assert fp.size == 8 * P
        assert v.read(4 * P, 4 * P) == bytes(4 * P)
        # Growth is a zero range: the flush extends the file (ftruncate, no writes).
        assert fp.flush() == 4
        assert f.stat().st_size == 8 * P
        m = fp.metrics()
        assert m.zero_pages_written_back == 4 and m.bytes_written == 0
        # Those pages are the file's now: after eviction they come back from it.
        with open(f, "r+b") as out:
            out.seek(6 * P)
            out.write(b"grown")
        assert v.read(5, 6 * P) == b"grown"
        # A shrink truncates the file at once.
        fp.resize(2 * P + 10)
        assert f.stat().st_size == 2 * P + 10
        assert v.get_size() == 3 * P
        assert v.read(2 * P + 10) == data[:2 * P + 10]
        validate(k)


def test_resize_zero_range_inside_the_file_writes_zeros(k: Kernel, f: Path) -> None:
    data = make_file(f, 8 * P)
    with FilePager(k, f, resizable=True, size=2 * P) as fp:  # the file is longer
        fp.resize(4 * P)
        assert fp.vmo.read(2 * P, 2 * P) == bytes(2 * P)
        assert fp.flush() == 2
    on_disk = f.read_bytes()
    assert on_disk[:2 * P] == data[:2 * P]
    assert on_disk[2 * P:4 * P] == bytes(2 * P)  # the zero range overwrote the old bytes
    assert on_disk[4 * P:] == data[4 * P:]


def test_vmo_resized_directly_is_followed_by_flush(k: Kernel, f: Path) -> None:
    make_file(f, 2 * P)
    with FilePager(k, f, resizable=True) as fp:
        fp.vmo.set_size(6 * P)
        fp.vmo.write(b"mid", 3 * P)
        fp.vmo.write(b"end", 6 * P - 3)
        # Zero ranges and data pages interleave: [2, 3) zero, 3 data, [4, 5) zero, 5 data.
        ranges = fp.pager.query_dirty_ranges(fp.vmo, 0, 6 * P)
        assert [(r.offset // P, r.length // P, bool(r.options)) for r in ranges] == [
            (2, 1, True), (3, 1, False), (4, 1, True), (5, 1, False)]
        assert fp.flush() == 4
        assert fp.size == 6 * P
        assert fp.pager.query_dirty_ranges(fp.vmo, 0, 6 * P) == []
        # Everything is Clean: it all goes, and comes back from the file.
        k.reclaim(100)
        assert fp.vmo.get_info().committed_bytes == 0
        assert fp.vmo.read(3, 3 * P) == b"mid"
        validate(k)
    on_disk = f.read_bytes()
    assert len(on_disk) == 6 * P
    assert on_disk[2 * P:3 * P] == bytes(P) and on_disk[3 * P:3 * P + 3] == b"mid"
    assert on_disk[4 * P:5 * P] == bytes(P) and on_disk[-3:] == b"end"
    with FilePager(k, f) as fp:
        assert fp.vmo.read(3, 3 * P) == b"mid"


def test_children_of_the_file_vmo(k: Kernel, f: Path) -> None:
    data = make_file(f, 4 * P)
    fp = FilePager(k, f)
    child = fp.vmo.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
    assert child.read(P, P) == data[P:2 * P]
    child.write(b"child only", 0)
    fp.vmo.write(b"parent", P)
    assert child.read(6, P) == b"parent"  # sees the parent's later write
    fp.close()
    assert f.read_bytes()[:10] == data[:10]  # the child's write never reaches the file
    assert f.read_bytes()[P:P + 6] == b"parent"
    assert child.read(10) == b"child only"
    # The pager is gone: what the child still needed from it fails.
    with pytest.raises(ZxError) as e:
        child.read(1, 3 * P)
    assert e.value.status == Status.ERR_BAD_STATE
    child.close()
    validate(k)


# ---------------------------------------------------------------------------- closing and errors


def test_close_flushes_unless_told_not_to(k: Kernel, f: Path) -> None:
    data = make_file(f, 2 * P)
    with FilePager(k, f) as fp:
        fp.vmo.write(b"kept", 0)
    assert f.read_bytes()[:4] == b"kept"
    fp = FilePager(k, f)
    fp.vmo.write(b"lost", 0)
    fp.close(flush=False)
    assert f.read_bytes()[:4] == b"kept"
    assert f.read_bytes()[4:] == data[4:]
    fp.close()  # idempotent
    assert k.live_vmos() == []


def test_close_with_a_reader_waiting(k: Kernel, f: Path) -> None:
    make_file(f, 2 * P)
    fp = FilePager(k, f, mode="queue")  # nobody serves
    errors: list[ZxError] = []

    def read() -> None:
        try:
            fp.vmo.read(1)
        except ZxError as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    fp.close()
    reader.join(5)
    assert [e.status for e in errors] in ([Status.ERR_BAD_STATE], [Status.ERR_BAD_HANDLE])
    validate(k)


def test_kernel_closed_first(f: Path) -> None:
    make_file(f, P)
    k = Kernel(memory=32 * P)
    fp = FilePager(k, f)
    fp.vmo.write(b"x")
    k.close()
    fp.close()  # no flush possible; closes the file quietly
    assert fp.closed


def test_read_error_fails_the_reader(k: Kernel, f: Path, monkeypatch: Any) -> None:
    data = make_file(f, 4 * P)
    with FilePager(k, f) as fp:
        def broken(fd: int, buffers: Any, off: int) -> int:
            raise OSError(errno.EIO, "bad sector")

        monkeypatch.setattr(os, "preadv", broken)
        with pytest.raises(ZxError) as e:
            fp.vmo.read(1, P)
        assert e.value.status == Status.ERR_IO
        m = fp.metrics()
        assert m.failed_requests == 1 and m.handler_errors == 1
        monkeypatch.undo()
        assert fp.vmo.read(P, P) == data[P:2 * P]  # asked again, and served
        validate(k)


def test_read_error_in_queue_mode(k: Kernel, f: Path, monkeypatch: Any) -> None:
    make_file(f, 4 * P)
    with FilePager(k, f, mode="queue") as fp:
        fp.serve_in_thread()
        def broken(fd: int, buffers: Any, off: int) -> int:
            raise OSError(errno.EIO, "bad sector")

        monkeypatch.setattr(os, "preadv", broken)
        with pytest.raises(ZxError) as e:
            fp.vmo.read(1)
        assert e.value.status == Status.ERR_IO
        monkeypatch.undo()
        validate(k)


def test_write_error_in_flush(k: Kernel, f: Path, monkeypatch: Any) -> None:
    data = make_file(f, 4 * P)
    with FilePager(k, f) as fp:
        fp.vmo.write(b"pending", 2 * P)

        def full(fd: int, buf: Any, off: int) -> int:
            raise OSError(errno.ENOSPC, "disk full")

        monkeypatch.setattr(os, "pwritev", full)
        with pytest.raises(ZxError) as e:
            fp.flush()
        assert e.value.status == Status.ERR_NO_SPACE
        assert f.read_bytes() == data
        # Not Clean: the data is kept (and cannot be evicted) until a flush succeeds.
        assert [r.offset for r in fp.pager.query_dirty_ranges(fp.vmo, 0, 4 * P)] == [2 * P]
        k.reclaim(100)
        assert fp.vmo.read(7, 2 * P) == b"pending"
        monkeypatch.undo()
        assert fp.flush() == 1
        validate(k)
    assert f.read_bytes()[2 * P:2 * P + 7] == b"pending"


def test_metrics_snapshot(k: Kernel, f: Path) -> None:
    make_file(f, P)
    with FilePager(k, f) as fp:
        m = fp.metrics()
        assert isinstance(m, FilePagerMetrics)
        assert set(attrs.asdict(m).values()) == {0}
        fp.vmo.read(1)
        assert fp.metrics().serve_seconds > 0
        assert m.read_requests == 0  # a snapshot, not a live view
