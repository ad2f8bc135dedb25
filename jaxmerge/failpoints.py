"""Failpoints: named places where a fault-injection test kills this process with SIGKILL.

    JAXMERGE_FAILPOINT=<name>:<n>           SIGKILL the n-th time <name> is reached (n ≥ 1)
    JAXMERGE_FAILPOINT=<name>:<n>:stop      SIGSTOP instead (a test holds the process there,
                                            e.g. to start a second merge beside it)

The variable is read once, at import; unset, `hit` returns at its first test. A point is
a one-line `failpoints.hit("journal.before_append")` where a crash would leave a
different state on disk; POINTS lists them by phase (tests/test_faults.py kills at each).
"""

import os
import signal
import threading

ENV = "JAXMERGE_FAILPOINT"

POINTS = {
    # reading
    "merge.read": "the merge's read loop, before one parameter's inputs are read",
    "safetensors.read": "a safetensors reader, before one slice is copied from the file",
    "tensorstore.read": "a t5x/orbax reader, before one shard read is issued",
    # computing
    "threshold.pass1": "global TIES thresholds, after one parameter's high histogram",
    "threshold.pass2": "global TIES thresholds, after one parameter's low histogram",
    "merge.before_kernel": "before one parameter's merge kernel runs",
    "merge.after_kernel": "after one parameter is merged, before it is written",
    # writing
    "staging.created": "the staging directory exists, its journal does not yet",
    "safetensors.preallocated": "after one output file's header and size are laid out",
    "safetensors.pwrite": "after one contiguous run of a tensor is written (mid-tensor)",
    "t5x.array_created": "a zarr array created, none of its shards written",
    "t5x.shards_in_flight": "a zarr array's shard writes issued, not yet awaited",
    "orbax.array_created": "an OCDBT array created, none of its shards written",
    "orbax.shards_in_flight": "an OCDBT array's shard writes issued, not yet awaited",
    "journal.before_append": "a parameter's data is durable, its journal line is not",
    "journal.after_append": "a parameter's journal line is durable",
    # committing
    "safetensors.index_written": "finalize: the shard index is written",
    "t5x.msgpack_written": "finalize: the checkpoint msgpack is written",
    "orbax.step_written": "finalize: the state/step leaf is written",
    "orbax.metadata_written": "finalize: _METADATA is written, _CHECKPOINT_METADATA not yet",
    "finalize.before_extra_files": "finalize: before manifest.json and config.gin",
    "finalize.after_extra_files": "finalize: after manifest.json and config.gin",
    "commit.begin": "commit: everything staged, the journal still there",
    "commit.journal_removed": "commit: the journal removed, the staging dir not yet renamed",
    "commit.old_moved": "commit (overwrite): the old output moved aside, the new not in place",
    "commit.renamed": "commit: the output renamed into place, the old one not yet removed",
    "commit.done": "commit: the old output removed, the lock not yet released",
}


def _parse(value: str | None) -> tuple[str, int, str] | None:
    if not value:
        return None
    name, _, rest = value.partition(":")
    count, _, action = rest.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1 or action not in ("", "stop"):
        raise ValueError(f"{ENV}={value!r}: expected <point>:<n>[:stop], point in POINTS")
    return name, int(count), action or "kill"


_TARGET = _parse(os.environ.get(ENV))
_hits = 0
_lock = threading.Lock()


def hit(name: str) -> None:
    """Counts a pass through point `name`; kills (or stops) the process at the chosen one."""
    if _TARGET is None or name != _TARGET[0]:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits != _TARGET[1]:
            return
    os.kill(os.getpid(), signal.SIGSTOP if _TARGET[2] == "stop" else signal.SIGKILL)
