"""The staging directory a writer fills, its journal, the output lock and the commit.

Writers write into `Staging`: a temporary sibling `OUT.jaxmerge-tmp/` with a journal; a
parameter is journaled only once its data is durable (fsync'd, or fdatasync'd by a
`sync_behind.SyncBehind` thread while the writer goes on), so a killed run resumes; `commit`
renames the sibling into place, so nothing half-written looks finished. An `OutputLock`
(`OUT.jaxmerge-lock`, flock) keeps a second writer of the same OUT out; the kernel releases it
when its holder dies, so a killed run's re-run takes it over.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import socket

import jax
from jax.experimental import multihost_utils

from jaxmerge import failpoints
from jaxmerge.errors import CheckpointError

TMP_SUFFIX = ".jaxmerge-tmp"


OLD_SUFFIX = ".jaxmerge-old"


LOCK_SUFFIX = ".jaxmerge-lock"


JOURNAL = ".jaxmerge-journal.jsonl"


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: pathlib.Path, data: bytes) -> None:
    """Writes and fsyncs one small file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def barrier(tag: str) -> None:
    """Waits for every process (multi-controller runs); nothing to wait for in one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxmerge:{tag}")


def is_primary() -> bool:
    """Process 0 owns the directory operations, the journal and the metadata files."""
    return jax.process_index() == 0


class OutputLock:
    """An exclusive flock on `OUT.jaxmerge-lock`: one writer of OUT at a time, on this host
    or another (a local filesystem, or one with working flock).

    The file names its holder for the refusal message, and is removed on release. A process
    that locked a file just removed finds another inode (or none) at the path and tries again,
    so two holders never coexist. A holder killed with SIGKILL loses the lock with its life.
    """

    def __init__(self, out: pathlib.Path):
        self.path = out.with_name(out.name + LOCK_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "holder not yet named"
                file.close()
                raise CheckpointError(
                    f"{out}: another merge is writing this output ({holder}; lock {self.path})"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            file.close()
        file.truncate(0)
        file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # before closing: nobody else holds it yet
            self._file.close()
            self._file = None


def remove_stale_lock(out: pathlib.Path) -> None:
    """Removes OUT's lock file if nobody holds it (left by a writer killed after its commit)."""
    out = pathlib.Path(out)
    if not out.with_name(out.name + LOCK_SUFFIX).exists():
        return
    try:
        lock = OutputLock(pathlib.Path(out).absolute())
    except (CheckpointError, OSError):
        return  # held by a running merge, or not ours to touch
    lock.release()


class Staging:
    """The temporary sibling `OUT.jaxmerge-tmp/` a writer fills, its journal, and the commit.

    The journal's first line records what the run writes (format, parameters, step, options);
    each later line names one parameter that is durably written. `resume=True` keeps a partial
    run whose first line matches; anything else starts from an empty directory. The writer
    holds the OutputLock from here until commit, abort or close.

    With several processes (a shared filesystem, as T5X assumes), every process writes its
    own shards; process 0 alone locks, creates and renames directories and keeps the journal,
    and a parameter is journaled only after every process has written its part.
    """

    def __init__(self, out: pathlib.Path, header: dict, *, resume: bool, overwrite: bool):
        self.out = pathlib.Path(out).absolute()
        self.tmp = self.out.with_name(self.out.name + TMP_SUFFIX)
        self.header = json.loads(json.dumps(header))  # what the journal will hold
        self._journal = None
        self._lock = OutputLock(self.out) if is_primary() else None
        try:
            self._open(resume, overwrite)
        except BaseException:
            self.close()
            raise
        barrier(f"staging:{self.out}")
        self.done: set[str] = self._read_done()

    def _open(self, resume: bool, overwrite: bool) -> None:
        if is_primary():
            self._undo_half_commit()
        if self.out.exists() and not overwrite:
            if not self.out.is_dir() or any(self.out.iterdir()):
                raise CheckpointError(
                    f"{self.out}: output exists and is not empty (overwrite=True replaces it)"
                )
        if is_primary():
            if not (resume and self._read_done()) and self.tmp.exists():
                shutil.rmtree(self.tmp)
            if not self.tmp.exists():
                self.tmp.mkdir(parents=True)
                failpoints.hit("staging.created")
                self._append(self.header)
            self._journal = open(self.tmp / JOURNAL, "a")  # noqa: SIM115 - closed in close()

    def _undo_half_commit(self) -> None:
        """A commit killed between its renames left the old output aside: put it back (the
        staged one, its journal gone, is redone); one killed after them left it to remove."""
        old = self.out.with_name(self.out.name + OLD_SUFFIX)
        if old.exists():
            if self.out.exists():
                shutil.rmtree(old)
            else:
                old.rename(self.out)

    def _read_done(self) -> set[str]:
        """Names journaled under a header equal to ours; empty if none or another run's."""
        journal = self.tmp / JOURNAL
        if not journal.exists():
            return set()
        lines = journal.read_text().splitlines()
        try:
            entries = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            entries = [json.loads(line) for line in lines[:-1]]  # torn last line
        if not entries or entries[0] != self.header:
            return set()
        return {e["done"] for e in entries[1:] if "done" in e}

    def _append(self, entry: dict) -> None:
        with open(self.tmp / JOURNAL, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def mark_done(self, name: str) -> None:
        """Call on every process once its part of `name` is fsync'd (from one thread)."""
        barrier(f"written:{self.out}:{name}")
        failpoints.hit("journal.before_append")
        if self._journal is not None:
            self._journal.write(json.dumps({"done": name}) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())
        failpoints.hit("journal.after_append")
        self.done.add(name)

    def write_files(self, files: dict[str, bytes] | None) -> None:
        """Writes small files (manifest.json, config.gin) at the top of the staged output."""
        failpoints.hit("finalize.before_extra_files")
        for file_name, data in (files or {}).items():
            write_file(self.tmp / file_name, data)
        failpoints.hit("finalize.after_extra_files")

    def commit(self) -> pathlib.Path:
        """Removes the journal, fsyncs, renames the sibling onto OUT (replacing an old OUT)."""
        barrier(f"finalize:{self.out}")
        if is_primary():
            failpoints.hit("commit.begin")
            self._journal.close()
            (self.tmp / JOURNAL).unlink()
            fsync_dir(self.tmp)
            failpoints.hit("commit.journal_removed")
            old = self.out.with_name(self.out.name + OLD_SUFFIX)
            if self.out.exists():
                if old.exists():
                    shutil.rmtree(old)
                self.out.rename(old)
                failpoints.hit("commit.old_moved")
            self.tmp.rename(self.out)
            fsync_dir(self.out.parent)
            failpoints.hit("commit.renamed")
            if old.exists():
                shutil.rmtree(old)
            failpoints.hit("commit.done")
        barrier(f"committed:{self.out}")
        self.close()
        return self.out

    def close(self) -> None:
        """Releases the journal and the lock; a staging directory stays for a resume."""
        if self._journal is not None and not self._journal.closed:
            self._journal.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abort(self) -> None:
        """Removes the staging directory and releases the lock."""
        if self._journal is not None and not self._journal.closed:
            self._journal.close()
        if is_primary() and self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.close()
