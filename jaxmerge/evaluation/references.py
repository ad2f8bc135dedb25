"""Scores computed once: a cache keyed by a fingerprint of the checkpoint's content.

Reference models (experts, the base, the multitask baseline) are scored again and again
as merges come and go; so is a merge re-evaluated unchanged. `fingerprint(path)` hashes
every file of a checkpoint (names and bytes, SHA-256) and remembers the digest under the
files' sizes and modification times, so an unchanged checkpoint is hashed once per
machine. `ScoreCache` keeps per-task metrics under sha256(fingerprint, evaluation
settings): the same content scored with the same tasks, split, lengths and model gives
the same numbers, whatever the path or format it was read from.
"""

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np

CHUNK = 8 << 20


def _files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def _hash_files(path: pathlib.Path, files: list[pathlib.Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        digest.update(b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path, cache_dir: pathlib.Path | None = None) -> str:
    """SHA-256 of a checkpoint's files (relative names and bytes); memoized in
    `cache_dir/fingerprints.json` under the files' (name, size, mtime_ns)."""
    path = pathlib.Path(path).absolute()
    files = _files(path)
    stat = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps(stat).encode()).hexdigest()
    memo_file = cache_dir / "fingerprints.json" if cache_dir else None
    memo = {}
    if memo_file is not None and memo_file.exists():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}  # a damaged memo only costs a re-hash
    if key in memo:
        return memo[key]
    digest = _hash_files(path, files)
    if memo_file is not None:
        memo[key] = digest
        _write_atomically(memo_file, json.dumps(memo))
    return digest


def tree_fingerprint(flat: Mapping[str, object]) -> str:
    """SHA-256 of a parameter tree held in memory ("/"-joined names -> arrays)."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        array = np.asarray(flat[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _write_atomically(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ScoreCache:
    """Per-task metrics of evaluated content, one JSON file per (fingerprint, settings).

    `settings` is whatever decides the numbers besides the weights (tasks, split, feature
    lengths, example limit, model config, vocabulary); it must be JSON-serializable.
    A directory of None disables the cache (every lookup misses, nothing is stored).
    """

    def __init__(self, directory: str | pathlib.Path | None, settings: Mapping):
        self.directory = None if directory is None else pathlib.Path(directory)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))

    def key(self, content_fingerprint: str) -> str:
        text = json.dumps(
            {"content": content_fingerprint, "settings": self.settings}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, content_fingerprint: str) -> dict | None:
        if self.directory is None:
            return None
        file = self.directory / "scores" / f"{self.key(content_fingerprint)}.json"
        try:
            entry = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry["metrics"] if entry.get("settings") == self.settings else None

    def put(self, content_fingerprint: str, metrics: Mapping) -> None:
        if self.directory is None:
            return
        file = self.directory / "scores" / f"{self.key(content_fingerprint)}.json"
        entry = {"content": content_fingerprint, "settings": self.settings, "metrics": metrics}
        _write_atomically(file, json.dumps(entry, sort_keys=True))
