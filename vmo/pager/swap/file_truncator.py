"""Giving a swap file's disk back in the background.

Model: crosvm ``swap/src/file_truncator.rs``. When swap-in has brought every page of a region
back, its swap file holds nothing the VMO needs. Freeing a large file's blocks takes time (tens
of milliseconds per 100 MiB here), which crosvm keeps off the swap-in path by truncating the
file in chunks on a thread of its own. So does this: the region lets go of the file (the next
swap-out creates a new one), and a `FileTruncator` thread shrinks it a chunk at a time from the
end and closes it. The thread exists only while there is work and exits when the queue is
empty; `close` waits for the queue to drain, so nothing is left behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

#: Bytes freed per ``ftruncate`` step.
CHUNK = 64 << 20


class FileTruncator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[int] = collections.deque()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)

    def submit(self, fd: int) -> None:
        """Take ownership of ``fd``: truncate it to nothing, then close it."""
        with self._lock:
            self._queue.append(fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vmo-swap-truncator",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._idle.notify_all()
                    return
                fd = self._queue.popleft()
            try:
                size = os.fstat(fd).st_size
                while size > 0:
                    size = max(0, size - CHUNK)
                    os.ftruncate(fd, size)
            except OSError:
                pass  # the disk is given back when the descriptor closes anyway
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Wait until every submitted file is truncated and closed and the thread is gone."""
        with self._lock:
            thread = self._thread
            while self._thread is not None:
                self._idle.wait()
        if thread is not None:
            thread.join()
