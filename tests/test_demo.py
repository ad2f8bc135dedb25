"""`jaxmerge demo` runs end to end and writes what it says it wrote."""

import json

from safetensors.numpy import load_file

from jaxmerge.methods import METHODS


def test_demo_merges_with_every_method_and_the_engine(run_cli, tmp_path):
    result = run_cli(
        "demo", "--merge_only", "--output", tmp_path, "--layers", "1", "--hidden", "16"
    )
    assert result.returncode == 0, result.stderr
    for name in METHODS:
        assert name in result.stdout
    base = load_file(tmp_path / "inputs" / "base" / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged.keys() == base.keys()
    assert all(merged[k].dtype == base[k].dtype for k in base)
    assert json.loads((tmp_path / "merged" / "manifest.json").read_text())["method"] == "ties"
    assert "engine check" in result.stdout


def test_demo_rejects_a_single_expert(run_cli, tmp_path):
    result = run_cli("demo", "--merge_only", "--output", tmp_path, "--experts", "1")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--experts=1: the demo needs at least 2 experts")
