"""`SyncBehind`: the disk writes beside the merge; parameters are journaled once on disk."""

from __future__ import annotations

import os
import threading

from jaxmerge.checkpoints.staging import Staging


class SyncBehind:
    """Journals written parameters once their data is on disk, on a thread of its own.

    A writer calls `written(name, fd)` as soon as it has handed a parameter's bytes to the
    kernel, and goes on with the next one. This thread fdatasyncs every file written since
    its last round, then journals those parameters (`Staging.mark_done`, in order). The
    disk thus writes from the first parameter on, beside the merge, instead of the writer
    waiting for each fsync in turn; a journaled parameter is exactly as durable as before.
    `drain()` waits until everything written is journaled; a failed sync (EIO, ENOSPC) is
    raised by the next `written` or `drain`, and nothing after it is journaled.
    One process only: with several, every write is journaled in step behind a barrier.
    """

    def __init__(self, staging: Staging):
        self._staging = staging
        self._changed = threading.Condition()
        self._pending: list[tuple[str, int]] = []  # (name, fd), in the order written
        self._syncing = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="jaxmerge-sync", daemon=True)
        self._thread.start()

    def written(self, name: str, fd: int) -> None:
        with self._changed:
            self._raise_failure()
            self._pending.append((name, fd))
            self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            while (self._pending or self._syncing) and self._error is None:
                self._changed.wait()
            self._raise_failure()

    def close(self) -> None:
        """Journals what is already written (unless a sync failed), then stops the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:  # closed, and nothing left to journal
                    return
                batch, self._pending, self._syncing = self._pending, [], True
            try:
                for fd in dict.fromkeys(fd for _, fd in batch):
                    os.fdatasync(fd)
                for name, _ in batch:
                    self._staging.mark_done(name)
            except BaseException as e:  # noqa: BLE001 - handed to the writer's thread
                with self._changed:
                    self._error, self._syncing = e, False
                    self._changed.notify_all()
                return
            with self._changed:
                self._syncing = False
                self._changed.notify_all()
