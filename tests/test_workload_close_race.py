"""Regression: `Workload.result` racing with `Workload.close` raised OSError (EBADF)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from vmo import Kernel, Status, ZxError
from vmo.pager import remote
from vmo.pager.fault_handler import unavailable_reason
from vmo.pager.remote import Workload
from vmo.pmm import PAGE_SIZE as PS

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"userfaultfd: {unavailable_reason()}")


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel(memory=8 * 2**20, page_request_timeout=20.0)
    yield kernel
    kernel.close()


def blocked_workload(k: Kernel) -> tuple[Workload, Any]:
    """A workload whose target waits forever in a page fault nobody serves."""
    pager = k.pager_create()
    v = pager.create_vmo(PS)
    w = Workload(k, timeout=20.0)
    w.map(v, name="p")
    w.start(remote.checksum, "p")
    pager.get_request(timeout=10)
    return w, v


def test_close_lands_between_the_check_and_the_read(k: Kernel,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    w, v = blocked_workload(k)
    chan_recv = w._chan.recv

    def close_first(timeout: float | None = None) -> Any:
        w.close(timeout=1.0)  # what another thread's close() does at this very moment
        return chan_recv(timeout)

    monkeypatch.setattr(w._chan, "recv", close_first)
    with pytest.raises(ZxError) as e:
        w.result(timeout=5)
    assert e.value.status == Status.ERR_BAD_HANDLE
    with pytest.raises(ZxError) as e:
        w.result(timeout=5)
    assert e.value.status == Status.ERR_BAD_HANDLE
    v.close()


def test_close_while_another_thread_waits(k: Kernel) -> None:
    w, v = blocked_workload(k)
    got: list[BaseException] = []

    def wait() -> None:
        try:
            w.result(timeout=15)
        except BaseException as e:  # noqa: BLE001 - what it raises is the test
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    w.close(timeout=1.0)
    t.join(20)
    assert not t.is_alive()
    assert len(got) == 1 and isinstance(got[0], ZxError), got
    assert got[0].status in (Status.ERR_BAD_HANDLE, Status.ERR_PEER_CLOSED)
    v.close()
