"""Regression tests for bugs the fuzzers found, each as the shrunk program it came from."""

from vmo import PAGE_SIZE as P
from vmo import ChildOptions as C
from vmo import Kernel, debug


def test_fork_after_partial_release_leaves_no_unseen_copy() -> None:
    """vmo fuzz seed 3577433036: after a snapshot's parent shrank, a hidden node still saw an
    offset by its limits that no leaf below it saw; a fork then copied instead of migrating and
    left a copy no VMO could see (attribution 6 pages, frames 7)."""
    with Kernel(1 << 20) as k:
        v0 = k.vmo_create(3 * P)
        v0.write(b"a" * 3 * P)
        v0.write(b"b" * P, 0)
        v1 = v0.create_child(C.SNAPSHOT | C.RESIZABLE, 0, 3 * P)
        v2 = v1.create_child(C.SNAPSHOT, 0, 2 * P)
        v1.create_child(C.SNAPSHOT, 2 * P, P)
        v1.set_size(P)
        debug.validate(k)
        v2.pin(0, 2 * P, writable=False)
        debug.validate(k)
        assert v2.read(2 * P) == b"b" * P + b"a" * P
