"""The tree shows the architecture: commands on top (jaxmerge.cli), the library below."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYOUT_CHECK = ROOT.parent / "shared" / "tools" / "layout_check.py"


@pytest.mark.skipif(not LAYOUT_CHECK.exists(), reason="../shared/tools is not beside the repo")
def test_layout_check_finds_nothing_out_of_place():
    out = subprocess.run(
        [sys.executable, str(LAYOUT_CHECK)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 problem(s)" in out.stdout


def test_library_imports_neither_gin_nor_the_command_layer():
    code = (
        "import sys\n"
        "import jaxmerge.merging, jaxmerge.training, jaxmerge.checkpoints, jaxmerge.methods\n"
        "import jaxmerge.models.decoding, jaxmerge.tasks, jaxmerge.sharding\n"
        "print(sorted(m for m in sys.modules if m == 'gin' or m.startswith('jaxmerge.cli')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
