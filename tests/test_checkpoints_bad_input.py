"""Bad input: a CheckpointError with one line naming the file and what is wrong (exit status 2
from the CLI), never a library traceback and never a hang."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxmerge import checkpoints
from jaxmerge.checkpoints import ParamInfo
from jaxmerge.errors import CheckpointError
from tests.test_checkpoints import run_inspect

MODEL = {
    "encoder/layers_0/mlp/wi/kernel": np.arange(32, dtype=np.float32).reshape(4, 8),
    "encoder/encoder_norm/scale": np.ones(8, ml_dtypes.bfloat16),
}


def write(path, fmt, **kwargs):
    writer = checkpoints.create(
        path, fmt, {n: ParamInfo(a.shape, a.dtype) for n, a in MODEL.items()}, **kwargs
    )
    for name, array in MODEL.items():
        writer.write(name, array)
    return writer.finalize()


def open_and_read_all(path):
    with checkpoints.open(path) as reader:
        for name in reader.params:
            reader.read_numpy(name)


def expect_error(path, *fragments):
    """open + read everything must raise one CheckpointError line containing every fragment."""
    with pytest.raises(CheckpointError) as info:
        open_and_read_all(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", tmp_path / "nope", "no such")


def test_no_recognisable_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "checkpoint_3").mkdir()
    expect_error(tmp_path, tmp_path, "no recognisable checkpoint")
    with pytest.raises(CheckpointError, match="no recognisable"):
        checkpoints.detect_format(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_a_dict"], ids=lambda d: d)
def test_truncated_or_corrupt_msgpack(tmp_path, damage):
    out = write(tmp_path / "m", "t5x")
    file = out / "checkpoint"
    data = file.read_bytes()
    file.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "garbage": b"\xc1\xff\x00junk" * 10,
            "empty": b"",
            "not_a_dict": b"\x93\x01\x02\x03",
        }[damage]
    )
    expect_error(out, file)


def test_zarr_shape_disagrees_with_msgpack(tmp_path):
    out = write(tmp_path / "m", "t5x")
    zarray = out / "target.encoder.layers_0.mlp.wi.kernel" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["shape"], meta["chunks"] = [4, 4], [4, 4]
    zarray.write_text(json.dumps(meta))
    expect_error(out, "encoder/layers_0/mlp/wi/kernel", "[4, 4]", "[4, 8]")


def test_corrupt_zarr_chunk(tmp_path):
    out = write(tmp_path / "m", "t5x")
    (out / "target.encoder.layers_0.mlp.wi.kernel" / "0.0").write_bytes(b"not gzip at all")
    expect_error(out, "encoder/layers_0/mlp/wi/kernel")


def test_missing_zarr_array(tmp_path):
    out = write(tmp_path / "m", "t5x")
    (out / "target.encoder.encoder_norm.scale" / ".zarray").unlink()
    expect_error(out, "encoder/encoder_norm/scale")


def _safetensors(path, header: dict, data: bytes):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_safetensors_offsets_past_end_of_file(tmp_path):
    file = tmp_path / "model.safetensors"
    _safetensors(file, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    expect_error(tmp_path, file, "w", "past the end")


def test_safetensors_header_length_past_end_of_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    expect_error(tmp_path, file, "past the end")


def test_safetensors_truncated_file(tmp_path):
    out = write(tmp_path / "m", "safetensors")
    file = out / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    expect_error(out, file, "past the end")


def test_safetensors_header_not_json(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    expect_error(tmp_path, file, "JSON")


def test_index_names_a_missing_shard(tmp_path):
    out = write(tmp_path / "m", "safetensors", max_shard_bytes=64)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (out / shard).unlink()
    expect_error(out, "model.safetensors.index.json", shard, "missing")


@pytest.mark.parametrize("dtype", ["C64", "F8_E8M0", "WHAT"])
def test_safetensors_unsupported_dtype(tmp_path, dtype):
    file = tmp_path / "model.safetensors"
    _safetensors(file, {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    expect_error(tmp_path, file, "unsupported dtype", dtype)


def test_t5x_unsupported_dtype(tmp_path):
    out = write(tmp_path / "m", "t5x")
    zarray = out / "target.encoder.encoder_norm.scale" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["dtype"] = "<c8"
    zarray.write_text(json.dumps(meta))
    expect_error(out, "encoder/encoder_norm/scale", "unsupported dtype")


def test_create_refuses_unsupported_dtype(tmp_path):
    for fmt in checkpoints.FORMATS:
        with pytest.raises(CheckpointError, match="unsupported dtype"):
            checkpoints.create(tmp_path / fmt, fmt, {"w": ParamInfo((2,), np.complex64)})


def test_orbax_corrupt_metadata(tmp_path):
    out = write(tmp_path / "m", "orbax")
    (out / "state" / "_METADATA").write_text("{not json")
    expect_error(out, "_METADATA")


def test_orbax_missing_array(tmp_path):
    out = write(tmp_path / "m", "orbax")
    meta = json.loads((out / "state" / "_METADATA").read_text())
    meta["tree_metadata"]["('target', 'ghost')"] = {
        "key_metadata": [{"key": "target", "key_type": 2}, {"key": "ghost", "key_type": 2}],
        "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False},
    }
    (out / "state" / "_METADATA").write_text(json.dumps(meta))
    expect_error(out, "ghost")


def test_unknown_format_name(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        checkpoints.open(tmp_path, format="pickle")


@pytest.mark.parametrize("case", ["missing", "truncated_msgpack", "bad_safetensors"])
def test_cli_exit_status_2_with_one_line(tmp_path, case):
    if case == "missing":
        path = tmp_path / "missing"
    elif case == "truncated_msgpack":
        path = write(tmp_path / "m", "t5x")
        (path / "checkpoint").write_bytes((path / "checkpoint").read_bytes()[:50])
    else:
        path = tmp_path
        _safetensors(
            tmp_path / "model.safetensors",
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            b"",
        )
    result = run_inspect(path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxmerge inspect: error: "), result.stderr
    assert str(path) in lines[0] or str(path / "model.safetensors") in lines[0]
