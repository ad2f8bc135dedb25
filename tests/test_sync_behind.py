"""SyncBehind: a parameter is journaled only after its file was fdatasync'd, in the order
written; a failed sync is raised to the writer and journals nothing after it."""

import errno
import json
import os
import threading

import numpy as np
import pytest

from jaxmerge import checkpoints
from jaxmerge.checkpoints.staging import JOURNAL, Staging
from jaxmerge.checkpoints.sync_behind import SyncBehind


def journal_names(staging) -> list[str]:
    lines = (staging.tmp / JOURNAL).read_text().splitlines()
    return [json.loads(line)["done"] for line in lines[1:]]


@pytest.fixture
def staging(tmp_path):
    staging = Staging(tmp_path / "out", {"run": "test"}, resume=False, overwrite=False)
    yield staging
    staging.close()


def test_journals_after_the_sync_in_the_order_written(staging, monkeypatch):
    events = []
    lock = threading.Lock()
    real_fdatasync, real_mark_done = os.fdatasync, staging.mark_done

    def fdatasync(fd):
        with lock:
            events.append(("sync", fd))
        real_fdatasync(fd)

    def mark_done(name):
        with lock:
            events.append(("done", name))
        real_mark_done(name)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(staging, "mark_done", mark_done)
    fd = os.open(staging.tmp / "data", os.O_WRONLY | os.O_CREAT)
    try:
        sync = SyncBehind(staging)
        names = [f"p{i}" for i in range(20)]
        for name in names:
            os.pwrite(fd, name.encode(), 0)
            with lock:
                events.append(("written", name))
            sync.written(name, fd)
        sync.drain()
        sync.close()
    finally:
        os.close(fd)
    assert journal_names(staging) == names
    for name in names:  # between its write and its journal line, a sync of the file began
        between = events[events.index(("written", name)) : events.index(("done", name))]
        assert ("sync", fd) in between


def test_a_failed_sync_is_raised_and_nothing_after_it_is_journaled(staging, monkeypatch):
    def fdatasync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    fd = os.open(staging.tmp / "data", os.O_WRONLY | os.O_CREAT)
    try:
        sync = SyncBehind(staging)
        sync.written("a", fd)
        with pytest.raises(OSError, match="Input/output error"):
            sync.drain()
        with pytest.raises(OSError):
            sync.written("b", fd)
        sync.close()
    finally:
        os.close(fd)
    assert journal_names(staging) == [] and staging.done == set()


def test_safetensors_writer_does_not_finalize_after_a_failed_sync(tmp_path, monkeypatch):
    params = {"w": checkpoints.ParamInfo((4, 8), np.dtype(np.float32))}
    writer = checkpoints.create(tmp_path / "out", "safetensors", params)
    monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "")))
    writer.write("w", np.ones((4, 8), np.float32))
    with pytest.raises(OSError):
        writer.finalize()
    writer.close()
    assert not (tmp_path / "out").exists()
