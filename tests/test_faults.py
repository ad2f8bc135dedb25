"""Fault injection: `jaxmerge merge` killed with SIGKILL while reading, computing, writing and
committing, at named failpoints (jaxmerge/failpoints.py) and at random moments.

Every time, either no output exists or a complete one does (the same bytes as an
uninterrupted run), and a re-run yields the same bytes as an uninterrupted run, resuming
from every parameter the killed run had journaled. Two merges of one output: one proceeds,
the other refuses with exit status 2, naming the holder of the lock.

Budget: each killed merge is a JAX process (~2-3 s on 2 cores, its kernels read from a
persistent compilation cache); they run two at a time, and each re-run runs in this process
while the next ones are killed. The slow marker holds 17 more failpoints and 9 more random
kills.
"""

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

from jaxmerge import checkpoints, failpoints
from jaxmerge.checkpoints.staging import JOURNAL, LOCK_SUFFIX, OLD_SUFFIX, TMP_SUFFIX
from jaxmerge.cli.main import main as jaxmerge_main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMATS = ("safetensors", "t5x", "orbax")
# First dimensions divisible by 8: every output is written as 8 shards, one per CPU device.
SHAPES = {
    "decoder/logits_dense/kernel": (16, 40),
    "encoder/layers_0/attention/query/kernel": (32, 8),
    "encoder/layers_0/mlp/wi/kernel": (8, 24),
    "encoder/layers_0/pre_attention_layer_norm/scale": (8,),
}
# bf16 bytes 1280, 512, 400: with 600-byte files the safetensors output has three shards.
SHARDS_GIN = """from __gin__ import dynamic_registration
from jaxmerge import merge
merge.MergeConfig.max_shard_bytes = 600
"""
NOISY = ("wall_seconds", "peak_rss_bytes", "init_timestamp_nsecs", "commit_timestamp_nsecs")


@dataclasses.dataclass(frozen=True)
class Kill:
    """SIGKILL `fmt`'s merge the `n`-th time it reaches `point` (overwrite: over an old OUT)."""

    fmt: str
    point: str
    n: int
    overwrite: bool = False

    def __str__(self):
        return f"{self.fmt}-{self.point}:{self.n}" + ("-overwrite" if self.overwrite else "")


KILLS = [
    # safetensors, three output files
    Kill("safetensors", "safetensors.read", 7),
    Kill("safetensors", "threshold.pass2", 4),
    Kill("safetensors", "merge.after_kernel", 3),
    Kill("safetensors", "staging.created", 1),
    Kill("safetensors", "safetensors.preallocated", 2),
    Kill("safetensors", "safetensors.pwrite", 3),  # mid first tensor, first file
    Kill("safetensors", "safetensors.pwrite", 13),  # mid second tensor, second file
    Kill("safetensors", "journal.before_append", 2),
    Kill("safetensors", "safetensors.index_written", 1),
    Kill("safetensors", "finalize.after_extra_files", 1),
    Kill("safetensors", "commit.journal_removed", 1),
    Kill("safetensors", "commit.renamed", 1),
    Kill("safetensors", "commit.old_moved", 1, overwrite=True),
    # t5x: a zarr array per parameter, through TensorStore
    Kill("t5x", "tensorstore.read", 5),
    Kill("t5x", "t5x.array_created", 2),
    Kill("t5x", "t5x.shards_in_flight", 3),
    Kill("t5x", "t5x.msgpack_written", 1),
    Kill("t5x", "commit.done", 1, overwrite=True),
    # orbax: one OCDBT database
    Kill("orbax", "orbax.array_created", 1),
    Kill("orbax", "orbax.shards_in_flight", 2),
    Kill("orbax", "journal.after_append", 2),
    Kill("orbax", "orbax.metadata_written", 1),
    Kill("orbax", "commit.begin", 1),
]
SLOW_KILLS = [
    Kill("safetensors", "merge.read", 1),
    Kill("safetensors", "threshold.pass1", 2),
    Kill("safetensors", "merge.before_kernel", 1),
    Kill("safetensors", "journal.after_append", 3),
    Kill("safetensors", "finalize.before_extra_files", 1),
    Kill("safetensors", "commit.begin", 1),
    Kill("safetensors", "commit.renamed", 1, overwrite=True),
    Kill("t5x", "merge.read", 6),
    Kill("t5x", "threshold.pass2", 2),
    Kill("t5x", "journal.before_append", 4),
    Kill("t5x", "finalize.after_extra_files", 1),
    Kill("t5x", "commit.journal_removed", 1),
    Kill("orbax", "tensorstore.read", 9),
    Kill("orbax", "merge.before_kernel", 3),
    Kill("orbax", "orbax.step_written", 1),
    Kill("orbax", "commit.renamed", 1),
    Kill("orbax", "commit.old_moved", 1, overwrite=True),
]


def make_inputs(root: pathlib.Path, fmt: str) -> list[pathlib.Path]:
    """Base and two experts in `fmt` (bf16, step 3)."""
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal(s).astype(ml_dtypes.bfloat16) for n, s in SHAPES.items()}
    models = [base] + [
        {n: (v.astype(np.float32) + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype)
         for n, v in base.items()}
        for _ in range(2)
    ]  # fmt: skip
    paths = []
    for label, model in zip(("base", "e0", "e1"), models, strict=True):
        infos = {n: checkpoints.ParamInfo(v.shape, v.dtype) for n, v in model.items()}
        writer = checkpoints.create(root / fmt / label, fmt, infos, step=3)
        for name, value in model.items():
            writer.write(name, value)
        paths.append(writer.finalize())
    return paths


@dataclasses.dataclass(frozen=True)
class Setup:
    inputs: dict[str, list[pathlib.Path]]  # format -> base, expert 0, expert 1
    shards_gin: pathlib.Path
    compile_cache: pathlib.Path


def merge_args(setup: Setup, fmt: str, out: pathlib.Path, overwrite=False) -> list[str]:
    """TIES (global trim: two threshold passes) of fmt's inputs into `out`."""
    base, *experts = setup.inputs[fmt]
    args = ["merge", "--method", "ties", "--base", base, "--experts", *experts]
    args += ["--output", out, "--quiet", *(["--overwrite"] if overwrite else [])]
    if fmt == "safetensors":
        args += ["--gin_file", setup.shards_gin]
    return [str(a) for a in args]


def spawn(setup: Setup, args: list[str], failpoint=None, warm=False) -> subprocess.Popen:
    """`python -m jaxmerge ARGS` from this checkout. Kernels come from a persistent
    compilation cache that only `warm` runs (never killed) write: a write SIGKILL'd halfway
    would leave a torn entry."""
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT), JAX_COMPILATION_CACHE_DIR=str(setup.compile_cache)
    )
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0" if warm else "1e9"
    env.pop(failpoints.ENV, None)
    if failpoint:
        env[failpoints.ENV] = failpoint
    return subprocess.Popen(
        [sys.executable, "-m", "jaxmerge", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return -999, out, "timed out\n" + err
    return process.returncode, out, err


def rerun_here(args: list[str]) -> tuple[int, str]:
    """`jaxmerge ARGS` in this process (no failpoint): exit status and everything printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = jaxmerge_main(args)
    return status, printed.getvalue()


def snapshot(out: pathlib.Path) -> dict[str, bytes]:
    """Every file under OUT, comparable between runs: the output path, times and peak RSS
    dropped; OCDBT (orbax) files, whose names and manifests differ in every run even
    uninterrupted, replaced by the bytes of each array they hold."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        relative = str(path.relative_to(out))
        data = path.read_bytes()
        if path.name in ("manifest.json", "_CHECKPOINT_METADATA"):
            data = json.dumps({k: v for k, v in json.loads(data).items() if k not in NOISY})
        elif path.name == "config.gin":  # where and whether over an old output: not the merge
            lines = data.decode().replace(str(out), "OUT").splitlines()
            data = "\n".join(x for x in lines if not x.startswith("merge.MergeConfig.overwrite"))
        elif "/state/" in f"/{relative}" and path.name != "_METADATA":
            continue  # OCDBT: compared below, through a reader
        files[relative] = data
    state = [p.parent for p in out.rglob("manifest.ocdbt")]
    for item in state:
        with checkpoints.open(item.parent) as reader:
            for name in reader.params:
                files[f"{item.relative_to(out)}:{name}"] = reader.read_numpy(name).tobytes()
            files[f"{item.relative_to(out)}:step"] = str(reader.step)
    return files


def journaled(out: pathlib.Path) -> int:
    """Parameters the staging journal of OUT lists as written (0 if there is no journal)."""
    journal = out.with_name(out.name + TMP_SUFFIX) / JOURNAL
    if not journal.exists():
        return 0
    return sum('"done"' in line for line in journal.read_text().splitlines())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "shards.gin").write_text(SHARDS_GIN)
    inputs = {fmt: make_inputs(root, fmt) for fmt in FORMATS}
    return Setup(inputs, root / "shards.gin", root / "xla_cache")


@pytest.fixture(scope="module")
def references(setup, tmp_path_factory):
    """The uninterrupted merge of each format, as a snapshot."""
    root = tmp_path_factory.mktemp("reference")
    first, *others = FORMATS
    status, _, err = finish(spawn(setup, merge_args(setup, first, root / first), warm=True))
    assert status == 0, f"{first}: {err}"
    runs = {fmt: spawn(setup, merge_args(setup, fmt, root / fmt)) for fmt in others}
    for fmt, process in runs.items():
        status, _, err = finish(process)
        assert status == 0, f"{fmt}: {err}"
    return {fmt: snapshot(root / fmt) for fmt in FORMATS}


@dataclasses.dataclass
class Outcome:
    """What one killed merge left, and what its re-run made of it."""

    status: int  # of the killed run: -9 when SIGKILL'd
    stderr: str
    output_after_kill: str  # "none", "complete", "old" (overwrite: untouched) or "corrupt"
    journaled: int
    rerun_status: int = -1
    rerun_printed: str = ""
    rerun_matches: bool = False
    leftovers: tuple[str, ...] = ()
    seconds: tuple[float, float] = (0.0, 0.0)  # the killed run, the re-run


OLD_OUTPUT = {"old.txt": b"the output of an earlier merge"}


def kill_and_rerun(kills, setup, references, root: pathlib.Path, kill_process) -> dict:
    """Runs every kill two at a time (kill_process(setup, kill, args) -> (status, stderr));
    re-runs each killed merge here, one after another, as soon as it is killed."""

    def killed_run(kill):
        out = root / str(kill) / "out"
        out.parent.mkdir(parents=True)
        if kill.overwrite:
            out.mkdir()
            for name, data in OLD_OUTPUT.items():
                (out / name).write_bytes(data)
        args = merge_args(setup, kill.fmt, out, kill.overwrite)
        start = time.perf_counter()
        status, stderr = kill_process(setup, kill, args)
        seconds = time.perf_counter() - start
        if not out.exists():
            state = "none"
        elif snapshot(out) == references[kill.fmt]:
            state = "complete"
        else:
            state = "old" if kill.overwrite and snapshot(out) == OLD_OUTPUT else "corrupt"
        return Outcome(status, stderr, state, journaled(out), seconds=(seconds, 0.0))

    outcomes = {}
    with ThreadPoolExecutor(2) as pool:
        futures = {kill: pool.submit(killed_run, kill) for kill in kills}
        for kill, future in futures.items():  # re-run each here while the next ones are killed
            outcome = outcomes[kill] = future.result()
            out = root / str(kill) / "out"
            start = time.perf_counter()
            args = merge_args(setup, kill.fmt, out, overwrite=kill.overwrite)
            outcome.rerun_status, outcome.rerun_printed = rerun_here(args)
            outcome.seconds = (outcome.seconds[0], time.perf_counter() - start)
            outcome.rerun_matches = out.exists() and snapshot(out) == references[kill.fmt]
            suffixes = (TMP_SUFFIX, LOCK_SUFFIX, OLD_SUFFIX)
            outcome.leftovers = tuple(
                str(p) for s in suffixes if (p := out.with_name(out.name + s)).exists()
            )
    return outcomes


def at_failpoint(setup: Setup, kill: Kill, args: list[str]) -> tuple[int, str]:
    status, _, err = finish(spawn(setup, args, f"{kill.point}:{kill.n}"))
    return status, err


def at_random_moment(setup: Setup, kill: Kill, args: list[str]) -> tuple[int, str]:
    """SIGKILL from outside, a seeded random delay after the staging directory appears (the
    merge then has its inputs open and has reading, computing, writing, committing ahead)."""
    delay = random.Random(kill.n).uniform(0.0, 1.5)
    out = pathlib.Path(args[args.index("--output") + 1])
    staging = out.with_name(out.name + TMP_SUFFIX)
    process = spawn(setup, args)
    deadline = time.monotonic() + 120
    while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    status, _, err = finish(process)
    return status, err


RANDOM_KILLS = [Kill(fmt, "random", seed) for seed, fmt in enumerate(FORMATS)]
SLOW_RANDOM_KILLS = [Kill(fmt, "random", seed) for seed, fmt in enumerate(FORMATS * 3, 3)]


@pytest.fixture(scope="module")
def killed(setup, references, tmp_path_factory):
    return kill_and_rerun(KILLS, setup, references, tmp_path_factory.mktemp("k"), at_failpoint)


@pytest.fixture(scope="module")
def killed_slow(setup, references, tmp_path_factory):
    root = tmp_path_factory.mktemp("ks")
    return kill_and_rerun(SLOW_KILLS, setup, references, root, at_failpoint)


def check(kill, outcome: Outcome, *, must_die: bool = True):
    """Killed (unless it may have finished first); no output, a complete one or the untouched
    old one; the re-run matches an uninterrupted run, resuming every journaled parameter;
    no staging, lock or old directory left."""
    if must_die:
        assert outcome.status == -signal.SIGKILL, f"{kill} not reached:\n{outcome.stderr[-3000:]}"
    assert outcome.output_after_kill in ("none", "complete", "old"), outcome.output_after_kill
    assert outcome.rerun_status == 0, outcome.rerun_printed
    if outcome.output_after_kill == "complete" and not kill.overwrite:  # finished: kept as is
        assert "already merged" in outcome.rerun_printed, outcome.rerun_printed
    assert outcome.rerun_matches, f"{kill}: the re-run's output differs from an uninterrupted run"
    if outcome.journaled:  # every parameter journaled is kept, none redone
        resumed = f"resuming: {outcome.journaled} of {len(SHAPES)}"
        assert resumed in outcome.rerun_printed, outcome.rerun_printed
    else:
        assert "resuming" not in outcome.rerun_printed, outcome.rerun_printed
    assert not outcome.leftovers, outcome.leftovers


def test_every_failpoint_is_placed_and_killed_at():
    source = "".join(p.read_text() for p in (REPO_ROOT / "jaxmerge").rglob("*.py"))
    for point in failpoints.POINTS:
        assert f'failpoints.hit("{point}")' in source, point
    assert {k.point for k in KILLS + SLOW_KILLS} == set(failpoints.POINTS)
    assert len(set(KILLS)) >= 20 and {k.fmt for k in KILLS} == set(FORMATS)


def test_failpoint_setting_is_checked():
    assert failpoints._parse(None) is None
    assert failpoints._parse("commit.begin:2") == ("commit.begin", 2, "kill")
    assert failpoints._parse("commit.begin:1:stop") == ("commit.begin", 1, "stop")
    for bad in ("commit.begin", "commit.begin:0", "nowhere:1", "commit.begin:1:pause"):
        with pytest.raises(ValueError, match=failpoints.ENV):
            failpoints._parse(bad)


@pytest.mark.parametrize("kill", KILLS, ids=str)
def test_kill_at_failpoint_then_rerun(killed, kill):
    check(kill, killed[kill])


@pytest.mark.slow
@pytest.mark.parametrize("kill", SLOW_KILLS, ids=str)
def test_kill_at_more_failpoints_then_rerun(killed_slow, kill):
    check(kill, killed_slow[kill])


@pytest.fixture(scope="module")
def killed_randomly(setup, references, tmp_path_factory):
    root = tmp_path_factory.mktemp("kr")
    return kill_and_rerun(RANDOM_KILLS, setup, references, root, at_random_moment)


@pytest.mark.parametrize("kill", RANDOM_KILLS, ids=str)
def test_kill_at_a_random_moment_then_rerun(killed_randomly, kill):
    check(kill, killed_randomly[kill], must_die=False)  # it may have finished first


@pytest.fixture(scope="module")
def killed_randomly_more(setup, references, tmp_path_factory):
    root = tmp_path_factory.mktemp("krs")
    return kill_and_rerun(SLOW_RANDOM_KILLS, setup, references, root, at_random_moment)


@pytest.mark.slow
@pytest.mark.parametrize("kill", SLOW_RANDOM_KILLS, ids=str)
def test_kill_at_more_random_moments_then_rerun(killed_randomly_more, kill):
    check(kill, killed_randomly_more[kill], must_die=False)


def wait_until_stopped(process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    stat = pathlib.Path(f"/proc/{process.pid}/stat")
    while time.monotonic() < deadline and process.poll() is None:
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return True
        time.sleep(0.01)
    return False


def test_a_second_merge_of_the_same_output_refuses(setup, references, tmp_path):
    """The first merge stops itself (SIGSTOP) holding the lock, mid-write; the second exits 2
    with one line naming the output and the holder; the first then finishes correctly."""
    out = tmp_path / "out"
    args = merge_args(setup, "safetensors", out)
    first = spawn(setup, args, "journal.after_append:1:stop")
    try:
        assert wait_until_stopped(first), finish(first)
        status, _, err = finish(spawn(setup, args))
        first.send_signal(signal.SIGCONT)
        first_status, _, first_err = finish(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert str(out) in lines[0] and "another merge is writing this output" in lines[0], lines[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0], lines[0]
    assert first_status == 0, first_err
    assert snapshot(out) == references["safetensors"]
    assert not out.with_name(out.name + LOCK_SUFFIX).exists()


def test_two_merges_started_at_once_one_proceeds(setup, references, tmp_path):
    """Started together: one writes the output, the other exits 2 (the lock is held, or the
    output it finds is finished); the output is the uninterrupted run's."""
    out = tmp_path / "out"
    processes = [spawn(setup, merge_args(setup, "t5x", out)) for _ in range(2)]
    results = [finish(p) for p in processes]
    assert sorted(status for status, _, _ in results) == [0, 2], results
    (refused,) = [err for status, _, err in results if status == 2]
    assert len(refused.strip().splitlines()) == 1, refused
    assert "another merge is writing this output" in refused or "exists and is not empty" in refused
    assert snapshot(out) == references["t5x"]


def test_a_rerun_with_other_settings_starts_over(setup, tmp_path, monkeypatch):
    """A killed run's parameters are kept only for a re-run of the same merge: one with
    another λ redoes them all (it would otherwise mix two merges in one output)."""
    from jaxmerge.checkpoints import safetensors

    args = merge_args(setup, "safetensors", tmp_path / "out")
    other = [*args, "--lam", "0.5"]
    status, printed = rerun_here([*merge_args(setup, "safetensors", tmp_path / "ref"),
                                  "--lam", "0.5"])  # fmt: skip
    assert status == 0, printed
    original, calls = safetensors.Writer.write, []

    def crashing_write(self, name, array):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        calls.append(name)
        return original(self, name, array)

    monkeypatch.setattr(safetensors.Writer, "write", crashing_write)
    assert rerun_here(args)[0] == 130  # interrupted after two parameters
    monkeypatch.setattr(safetensors.Writer, "write", original)
    assert journaled(tmp_path / "out") == 2
    status, printed = rerun_here(other)
    assert status == 0 and "resuming" not in printed, printed
    want = snapshot(tmp_path / "ref")
    got = snapshot(tmp_path / "out")
    assert got.keys() == want.keys()
    for name in want:  # config.gin names the output: the one file that differs
        if name != "config.gin":
            assert got[name] == want[name], name
