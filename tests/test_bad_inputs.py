"""The catalogue of bad inputs, end to end through `jaxmerge merge` (docs/reliability.md).

Every case must exit with status 2 and exactly one line on stderr that names the file or the
flag, and the parameter where there is one; afterwards no finished output exists, and an
output that existed before (cases run with --overwrite over it) is untouched. The CLI runs
in-process (`jaxmerge.cli.main.main`) on tiny generated checkpoints shared by the module; the
file-size limit needs its own process, for RLIMIT_FSIZE.
"""

import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest

from jaxmerge import checkpoints
from jaxmerge.cli.main import main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BF16 = ml_dtypes.bfloat16
# Four matrices (the ones the base-relation check samples) and two vectors (never sampled).
SHAPES = {
    "decoder/logits/kernel": (8, 32),
    "encoder/layers_0/attention/query/kernel": (8, 8),
    "encoder/layers_0/mlp/wi/kernel": (8, 16),
    "encoder/layers_0/mlp/wo/kernel": (16, 8),
    "encoder/layers_0/pre_mlp_layer_norm/scale": (8,),
    "encoder/norm/scale": (8,),
}
NAN_PARAMETER = "encoder/layers_0/mlp/wi/kernel"
UNSAMPLED = "encoder/norm/scale"
HF_CONFIG = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "num_heads": 2}


def make_model(rng, base=None, dtype=BF16, scale=0.05):
    """A base (base=None) or an expert fine-tuned from `base` (small changes)."""
    if base is None:
        return {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    return {
        n: (v.astype(np.float32) + scale * rng.standard_normal(v.shape)).astype(dtype)
        for n, v in base.items()
    }


def write(path, model, fmt="safetensors", hf_config=HF_CONFIG):
    params = {n: checkpoints.ParamInfo(v.shape, v.dtype) for n, v in model.items()}
    writer = checkpoints.create(path, fmt, params, step=1)
    for name, value in model.items():
        writer.write(name, value)
    final = writer.finalize()
    if hf_config is not None and fmt == "safetensors":
        (final / "config.json").write_text(json.dumps(hf_config))
    return final


def raw_safetensors(directory: pathlib.Path, header: dict, data: bytes) -> pathlib.Path:
    """A model.safetensors whose header says whatever the test wants."""
    directory.mkdir(parents=True)
    text = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and two experts, as safetensors (with config.json) and as t5x; read-only."""
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    base = make_model(rng)
    experts = [make_model(rng, base) for _ in range(2)]
    paths = {"root": root, "arrays": {"base": base, "e0": experts[0], "e1": experts[1]}}
    for key, model in paths["arrays"].items():
        paths[key] = write(root / key, model)
        paths[f"t5x_{key}"] = write(root / f"t5x_{key}", model, "t5x")
    return paths


@dataclasses.dataclass
class Workspace:
    """What a case may use: the shared models, a fresh directory, monkeypatch."""

    models: dict
    tmp: pathlib.Path
    monkeypatch: pytest.MonkeyPatch

    def __getattr__(self, key):  # ws.base, ws.e0, ws.t5x_e1, ...
        return self.models[key]

    def model(self, name, model, fmt="safetensors", hf_config=HF_CONFIG):
        return write(self.tmp / name, model, fmt, hf_config)

    def changed(self, key, name, value, fmt="safetensors"):
        """A copy of model `key` with parameter `name` replaced (or removed if None)."""
        model = dict(self.models["arrays"][key])
        if value is None:
            model.pop(name)
        else:
            model[name] = value
        return self.model(f"{key}_changed", model, fmt)


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: the arguments, the fragments the error line must hold, the output.

    build(ws) returns (merge arguments without --output, fragments); `existing`: the output
    already exists (with a file that must survive) and the merge runs with --overwrite;
    `output`: a custom output path, from the workspace (the case then checks it itself).
    """

    build: Callable
    existing: bool = False
    output: Callable | None = None


GIN = ["--gin_file", "gin_configs/runs/merge.gin"]  # registers merge.MergeConfig with gin


def ties(ws, *experts, base=None):
    return [
        "--method",
        "ties",
        "--base",
        base or ws.base,
        "--experts",
        *(experts or (ws.e0, ws.e1)),
    ]


def _nan_expert(ws):
    value = ws.models["arrays"]["e1"][NAN_PARAMETER].copy()
    value[2, 3] = np.nan
    bad = ws.changed("e1", NAN_PARAMETER, value)
    return ties(ws, ws.e0, bad), [bad, NAN_PARAMETER, "NaN", "expert 1", "--allow_nonfinite"]


def _inf_base(ws):
    value = ws.models["arrays"]["base"][UNSAMPLED].copy()
    value[0] = -np.inf
    bad = ws.changed("base", UNSAMPLED, value)
    return ties(ws, base=bad), [bad, UNSAMPLED, "Inf", "base", "--allow_nonfinite"]


def _float16_overflow(ws):
    """θ = θ₀ + 10 · 0.5 θ₀ = 6 θ₀: beyond float16's 65504 for the last parameter only."""
    rng = np.random.default_rng(1)
    base = make_model(rng, dtype=np.float16)
    base[UNSAMPLED] = rng.uniform(10000, 20000, SHAPES[UNSAMPLED]).astype(np.float16)
    expert = {n: (v.astype(np.float32) * 1.5).astype(np.float16) for n, v in base.items()}
    base_path, expert_path = ws.model("b16", base), ws.model("e16", expert)
    args = ["--method", "task_arithmetic", "--base", base_path, "--experts", expert_path]
    return [*args, "--lam", "10"], ["merged parameter", repr(UNSAMPLED), "Inf", "float16", "--lam"]


def _mismatch(kind):
    name = "decoder/logits/kernel"

    def build(ws):
        value = {
            "shape": np.zeros((8, 33), BF16),
            "dtype": ws.models["arrays"]["e1"][name].astype(np.float32),
            "name": None,
        }[kind]
        bad = ws.changed("e1", name, value)
        fragment = {
            "shape": "has shape (8, 33) but (8, 32)",
            "dtype": "is float32 but bfloat16",
            "name": "expert 1 lacks",
        }[kind]
        return ties(ws, ws.e0, bad), [bad, repr(name), fragment]

    return build


def _unrelated_values(ws):
    other = ws.model("unrelated", make_model(np.random.default_rng(7)))
    return ties(ws, ws.e0, other), [
        other,
        "expert 1",
        "does not look fine-tuned",
        "--allow_unrelated",
    ]


def _unrelated_config(ws):
    other = ws.model(
        "other_heads", ws.models["arrays"]["e1"], hf_config={**HF_CONFIG, "num_heads": 4}
    )
    return ties(ws, ws.e0, other), [other / "config.json", "num_heads=4 but 2", "--allow_unrelated"]


def _truncated_zarr_chunk(ws):
    expert = ws.tmp / "t5x_e1"
    shutil.copytree(ws.t5x_e1, expert)
    chunk = expert / ("target." + UNSAMPLED.replace("/", ".")) / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    return ties(ws, ws.t5x_e0, expert, base=ws.t5x_base), [expert, UNSAMPLED]


def _corrupt_msgpack(ws):
    expert = ws.tmp / "t5x_e1"
    shutil.copytree(ws.t5x_e1, expert)
    file = expert / "checkpoint"
    file.write_bytes(file.read_bytes()[:40])
    return ties(ws, ws.t5x_e0, expert, base=ws.t5x_base), [file, "corrupt or truncated msgpack"]


def _corrupt_orbax_metadata(ws):
    expert = write(ws.tmp / "orbax_e1", ws.models["arrays"]["e1"], "orbax")
    (expert / "state" / "_METADATA").write_text("{not json")
    return ties(ws, ws.e0, expert), ["_METADATA", "not an Orbax PyTree metadata file"]


def _lying_header(kind):
    def build(ws):
        entry = {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}
        directory = ws.tmp / "liar"
        if kind == "offsets_past_end":
            raw_safetensors(directory, {UNSAMPLED: entry}, b"\0" * 16)
            fragments = [UNSAMPLED, "run past the end"]
        elif kind == "dtype":
            raw_safetensors(directory, {UNSAMPLED: {**entry, "dtype": "BF16"}}, b"\0" * 32)
            fragments = [UNSAMPLED, "span 32 bytes, but BF16[8] needs 16"]
        elif kind == "header_length":
            directory.mkdir()
            (directory / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
            fragments = ["header length 1000000 runs past the end"]
        else:  # truncated data
            shutil.copytree(ws.e1, directory)
            file = directory / "model.safetensors"
            file.write_bytes(file.read_bytes()[:-10])
            fragments = ["run past the end"]
        return ties(ws, ws.e0, directory), [directory / "model.safetensors", *fragments]

    return build


def _empty_expert(ws):
    empty = raw_safetensors(ws.tmp / "empty", {"__metadata__": {"format": "pt"}}, b"")
    return ties(ws, ws.e0, empty), [empty, "expert 1 holds no parameters"]


def _empty_directory(ws):
    (ws.tmp / "empty").mkdir()
    return ties(ws, ws.e0, ws.tmp / "empty"), [ws.tmp / "empty", "no recognisable checkpoint"]


def _symlinked_duplicate(ws):
    (ws.tmp / "link").symlink_to(ws.e0)
    return ties(ws, ws.e0, ws.tmp / "link"), ["--experts", "listed twice", "link"]


def _input_inside_output(ws):
    inner = ws.tmp / "out" / "base"
    shutil.copytree(ws.base, inner)
    return [*ties(ws, base=inner), "--overwrite"], ["--output", "holds the input", inner]


def _unwritable_output(ws):
    locked = ws.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for directory in (locked, pathlib.Path("/sys"), pathlib.Path("/proc")):
        try:  # root may write anywhere chmod forbids; a read-only filesystem stops it too
            (directory / ".probe").mkdir()
            (directory / ".probe").rmdir()
        except OSError:
            return ties(ws), ["--output", f"cannot write in {directory}"], directory / "out"
    pytest.skip("no unwritable directory found")


def _disk_full(ws):
    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ws.monkeypatch.setattr(os, "pwrite", no_space)
    return ties(ws), ["writing parameter", repr(next(iter(SHAPES))), "no space left", "ENOSPC"]


CATALOGUE: dict[str, Case] = {
    # paths and formats
    "missing_base": Case(lambda ws: (ties(ws, base=ws.tmp / "nope"), [ws.tmp / "nope", "no such"])),
    "missing_expert": Case(
        lambda ws: (ties(ws, ws.e0, ws.tmp / "nope"), [ws.tmp / "nope", "no such"])
    ),
    "not_a_checkpoint": Case(_empty_directory),
    "unknown_input_format": Case(
        lambda ws: ([*ties(ws), "--input_format", "pickle"], ["--input_format", "'pickle'"])
    ),
    "unknown_input_format_gin": Case(
        lambda ws: (
            [*ties(ws), *GIN, "--gin.merge.MergeConfig.input_format='pickle'"],
            ["--input_format='pickle'", "choose from"],
        )
    ),
    "wrong_input_format": Case(
        lambda ws: (
            [*ties(ws), "--input_format", "t5x"],
            [ws.base, "not in t5x format", "safetensors"],
        )
    ),
    "unknown_output_dtype_gin": Case(
        lambda ws: (
            [*ties(ws), *GIN, "--gin.merge.MergeConfig.dtype='float64'"],
            ["--dtype='float64'"],
        )
    ),
    "unknown_method": Case(
        lambda ws: (
            ["--method", "tie", "--base", ws.base, "--experts", ws.e0],
            ["--method", "'tie'", "choose from"],
        )
    ),
    "missing_output_flag": Case(
        lambda ws: (ties(ws), ["missing --output"]), output=lambda ws: None
    ),
    "missing_gin_file": Case(
        lambda ws: ([*ties(ws), "--gin_file", "nope.gin"], ["nope.gin", "not found"])
    ),
    "gin_bad_binding": Case(
        lambda ws: ([*ties(ws), "--gin.merge.NoSuch.x=1"], ["gin config", "NoSuch"])
    ),
    # structure: names, shapes, dtypes
    "mismatched_names": Case(_mismatch("name")),
    "mismatched_shapes": Case(_mismatch("shape")),
    "mismatched_dtypes": Case(_mismatch("dtype")),
    # experts: empty, duplicate, how many
    "empty_expert": Case(_empty_expert),
    "no_experts_gin": Case(
        lambda ws: (
            ["--method", "ties", "--base", ws.base, *GIN, "--gin.merge.MergeConfig.experts=[]"],
            ["--experts", "at least one"],
        )
    ),
    "duplicate_expert": Case(
        lambda ws: (ties(ws, ws.e0, ws.e0), ["--experts", "listed twice", ws.e0])
    ),
    "duplicate_expert_symlink": Case(_symlinked_duplicate),
    "expert_is_the_base": Case(
        lambda ws: (ties(ws, ws.e0, ws.base), ["--experts", "also the --base"])
    ),
    "too_few_experts": Case(
        lambda ws: (
            ["--method", "model_stock", "--base", ws.base, "--experts", ws.e0],
            ["--experts", "model_stock needs at least 2"],
        )
    ),
    "too_many_experts": Case(
        lambda ws: (
            ["--method", "slerp", "--experts", ws.e0, ws.e1, ws.base],
            ["--experts", "slerp needs exactly 2"],
        )
    ),
    "weights_count": Case(
        lambda ws: ([*ties(ws), "--weights", "1"], ["--weights", "1 weights for 2"])
    ),
    # hyperparameters
    "density_above_1": Case(
        lambda ws: ([*ties(ws), "--density", "1.5"], ["--density=1.5", "(0, 1]"])
    ),
    "density_0": Case(lambda ws: ([*ties(ws), "--density", "0"], ["--density=0.0", "(0, 1]"])),
    "drop_rate_1": Case(
        lambda ws: (
            ["--method", "dare_ties", *ties(ws)[2:], "--drop_rate", "1"],
            ["--drop_rate=1.0", "[0, 1)"],
        )
    ),
    "slerp_t_above_1": Case(
        lambda ws: (
            ["--method", "slerp", "--experts", ws.e0, ws.e1, "--t", "1.5"],
            ["--t=1.5", "[0, 1]"],
        )
    ),
    "breadcrumbs_gamma_negative": Case(
        lambda ws: (
            ["--method", "breadcrumbs", *ties(ws)[2:], "--gamma=-0.1"],
            ["--gamma=-0.1", "[0, 1]"],
        )
    ),
    "della_density_epsilon": Case(
        lambda ws: (
            ["--method", "della", *ties(ws)[2:], "--density", "0.95", "--epsilon", "0.1"],
            ["density=0.95", "epsilon=0.1", "outside (0, 1]"],
        )
    ),
    "lam_nan": Case(lambda ws: ([*ties(ws), "--lam", "nan"], ["--lam=nan", "finite"])),
    "lam_inf": Case(lambda ws: ([*ties(ws), "--lam", "inf"], ["--lam=inf", "finite"])),
    "weights_nonfinite": Case(
        lambda ws: ([*ties(ws), "--weights", "1", "inf"], ["--weights", "weight 1 is inf"])
    ),
    "average_weights_sum_to_0": Case(
        lambda ws: (
            ["--method", "average", "--experts", ws.e0, ws.e1, "--weights", "1", "-1"],
            ["--weights", "sum to 0"],
        )
    ),
    "hparam_not_taken": Case(
        lambda ws: (
            ["--method", "task_arithmetic", *ties(ws)[2:], "--density", "0.2"],
            ["--density does not apply to task_arithmetic"],
        )
    ),
    "memory_budget_not_a_size": Case(
        lambda ws: ([*ties(ws), "--memory_budget", "lots"], ["--memory_budget", "4GB"])
    ),
    "memory_budget_0": Case(
        lambda ws: ([*ties(ws), "--memory_budget", "0"], ["--memory_budget=0"])
    ),
    # experts that do not share the base
    "unrelated_expert_values": Case(_unrelated_values),
    "unrelated_expert_config": Case(_unrelated_config),
    # non-finite values, in the inputs and in the result
    "nan_in_expert": Case(_nan_expert, existing=True),
    "inf_in_base": Case(_inf_base, existing=True),
    "nan_in_expert_tensor_trim": Case(
        lambda ws: (lambda args, fragments: ([*args, "--trim", "tensor"], fragments))(
            *_nan_expert(ws)
        )
    ),
    "inf_in_base_tensor_trim": Case(
        lambda ws: (lambda args, fragments: ([*args, "--trim", "tensor"], fragments))(
            *_inf_base(ws)
        )
    ),
    "float16_overflow_in_result": Case(_float16_overflow, existing=True),
    # corrupt files
    "truncated_zarr_chunk": Case(_truncated_zarr_chunk, existing=True),
    "corrupt_msgpack": Case(_corrupt_msgpack),
    "corrupt_orbax_metadata": Case(_corrupt_orbax_metadata),
    "safetensors_offsets_past_end": Case(_lying_header("offsets_past_end")),
    "safetensors_dtype_lies": Case(_lying_header("dtype")),
    "safetensors_header_length_lies": Case(_lying_header("header_length")),
    "safetensors_truncated": Case(_lying_header("truncated")),
    # the output
    "output_inside_input": Case(
        lambda ws: (ties(ws), ["--output", "lies inside the input", ws.base]),
        output=lambda ws: ws.base / "merged",
    ),
    "input_inside_output": Case(_input_inside_output, output=lambda ws: ws.tmp / "out"),
    "output_exists": Case(
        lambda ws: (ties(ws), ["--output", "exists and is not empty", "--overwrite"]),
        output=lambda ws: ws.tmp / "out",
    ),
    "output_is_a_file": Case(
        lambda ws: (ties(ws), ["--output", "not a directory"]),
        output=lambda ws: ws.tmp / "file.txt",
    ),
    "unwritable_output_dir": Case(_unwritable_output),
    "disk_full": Case(_disk_full, existing=True),
}


def run_merge(capsys, *args) -> tuple[int, str]:
    """`jaxmerge merge ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        status = main(["merge", "--quiet", *map(str, args)])
    except SystemExit as e:  # argparse
        status = e.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case_id", list(CATALOGUE))
def test_bad_input_exits_2_with_one_line(case_id, models, tmp_path, monkeypatch, capsys):
    case = CATALOGUE[case_id]
    ws = Workspace(models, tmp_path, monkeypatch)
    built = case.build(ws)
    args, fragments = built[:2]
    out = built[2] if len(built) > 2 else tmp_path / "out"
    if case.output is not None:
        out = case.output(ws)
    precious = None
    if case_id == "output_exists" or case.existing:
        out.mkdir()
        precious = out / "precious"
        precious.write_text("keep")
    if case_id == "output_is_a_file":
        out.write_text("keep")
    if case.existing:
        args = [*args, "--overwrite"]
    status, stderr = run_merge(capsys, *args, *(["--output", out] if out is not None else []))

    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("jaxmerge merge: error: "), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    if out is None:
        return
    if precious is not None:  # what was there is untouched, and nothing was added
        assert sorted(p.name for p in out.iterdir()) == ["precious"]
        assert precious.read_text() == "keep"
    elif case_id == "output_is_a_file":
        assert out.read_text() == "keep"
    elif case_id == "input_inside_output":
        assert (out / "base" / "model.safetensors").is_file()
    else:
        assert not out.exists()


# As `ulimit -f` would, in the child itself: a preexec_fn would fork this threaded process.
LIMIT_FILE_SIZE_THEN_RUN = """
import resource, signal, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
from jaxmerge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])  # our pwrite; TensorStore's write
def test_file_size_limit_exits_2_naming_the_output(tmp_path, fmt):
    """A real EFBIG: the merge runs under RLIMIT_FSIZE with SIGXFSZ ignored (as `ulimit -f`)."""
    rng = np.random.default_rng(3)
    base = {"layers/kernel": rng.standard_normal((256, 256)).astype(np.float32)}
    base_path = write(tmp_path / "base", base, fmt)
    expert = write(tmp_path / "expert", {"layers/kernel": base["layers/kernel"] + 0.01}, fmt)
    out = tmp_path / "out"
    limit = 64 << 10  # the output is 256 KiB

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-c", LIMIT_FILE_SIZE_THEN_RUN, str(limit), "merge"]
    command += ["--method", "task_arithmetic", "--base", base_path, "--experts", expert]
    command += ["--output", out, "--quiet"]
    result = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, env=env, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert str(out) in lines[0] and "file-size limit" in lines[0] and "EFBIG" in lines[0]
    assert not out.exists()


def test_float16_inputs_accumulate_in_float32(tmp_path, capsys):
    """Σ τᵢ = 110000 overflows float16, but the merge sums in float32: θ = −60000 + 0.75·110000."""
    base = {n: np.full(s, -60000, np.float16) for n, s in SHAPES.items()}
    experts = [{n: np.full(s, -5000, np.float16) for n, s in SHAPES.items()} for _ in range(2)]
    paths = [write(tmp_path / f"m{i}", m) for i, m in enumerate([base, *experts])]
    out = tmp_path / "out"
    args = ["--method", "task_arithmetic", "--base", paths[0], "--experts", *paths[1:]]
    status, stderr = run_merge(capsys, *args, "--lam", "0.75", "--output", out)
    assert status == 0, stderr
    with checkpoints.open(out) as reader:
        for name in SHAPES:
            np.testing.assert_array_equal(reader.read_numpy(name), np.float16(22500))


def test_allow_flags_let_the_merge_through(models, tmp_path, capsys):
    """--allow_nonfinite and --allow_unrelated override their checks (and are gin-settable)."""
    ws = Workspace(models, tmp_path, None)
    args, _ = _nan_expert(ws)
    args = [a if a != "ties" else "task_arithmetic" for a in args]  # NaN flows through
    status, stderr = run_merge(capsys, *args, "--allow_nonfinite", "--output", tmp_path / "a")
    assert status == 0, stderr
    with checkpoints.open(tmp_path / "a") as reader:
        assert np.isnan(reader.read_numpy(NAN_PARAMETER).astype(np.float32)).any()
    args, _ = _unrelated_values(ws)
    gin = [*GIN, "--gin.merge.MergeConfig.allow_unrelated=True"]
    status, stderr = run_merge(capsys, *args, *gin, "--output", tmp_path / "b")
    assert status == 0, stderr


def test_refused_merge_rerun_with_other_flags_does_not_resume_stale_parameters(
    models, tmp_path, capsys
):
    """A merge stopped midway keeps its staging for a resume, but only a re-run of the same
    merge resumes it: a changed --lam starts afresh (no stale parameters in the result)."""
    ws = Workspace(models, tmp_path, None)
    args, _ = _float16_overflow(ws)
    out = tmp_path / "out"
    status, _ = run_merge(capsys, *args, "--output", out)
    assert status == 2
    staging = out.with_name(out.name + ".jaxmerge-tmp") / ".jaxmerge-journal.jsonl"
    assert len(staging.read_text().splitlines()) == len(SHAPES)  # header + all but the last
    low = [a if a != "10" else "0.5" for a in args]
    status, stderr = run_merge(capsys, *low, "--output", out)
    assert status == 0, stderr
    assert "resuming" not in capsys.readouterr().out
    status, _ = run_merge(capsys, *low, "--output", tmp_path / "clean")
    assert (out / "model.safetensors").read_bytes() == (
        tmp_path / "clean" / "model.safetensors"
    ).read_bytes()


def test_help_shows_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = capsys.readouterr().out
    assert "--allow_nonfinite" in text and "--allow_unrelated" in text


def test_docs_table_lists_every_case():
    table = (REPO_ROOT / "docs" / "reliability.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+)`", table, re.MULTILINE))
    assert listed == set(CATALOGUE) | {"file_size_limit"}
