"""Spool files removed off the critical path: on a busy disk an unlink takes a millisecond or
more, and a sync removes one per delivered bundle, per marker and per attachment."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

log = logging.getLogger("mattermost_connector.discards")


class Discards:
    """Files handed over are removed by a thread of their own, in order. Until then they
    count as gone (`gone`): a retried load must not send a recorded bundle again because its
    file is still there. A file left behind by a process that exits first is in its run's
    spool, which closing the run (or the channel's next run) removes."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Path] = queue.Queue()
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def discard(self, *paths: Path) -> None:
        with self._lock:
            self._pending.update(paths)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="spool-discards", daemon=True
                )
                self._thread.start()
        for path in paths:
            self._queue.put(path)

    def gone(self, path: Path) -> bool:
        with self._lock:
            if path in self._pending:
                return True
        return not path.exists()

    def wait(self) -> None:
        """Until every file handed over is removed."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            path = self._queue.get()
            try:
                path.unlink(missing_ok=True)
            except OSError as error:  # the spool goes with its run anyway
                log.debug("%s not removed: %s", path, error)
            finally:
                with self._lock:
                    self._pending.discard(path)
                self._queue.task_done()


# the process's: every run's pipeline hands its spool files to the same thread
DISCARDS = Discards()
