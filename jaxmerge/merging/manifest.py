"""What a finished merge records beside its output: the run key a resume must match,
`manifest.json` (inputs, method, versions, cost) and `config.gin` (the bindings that
reproduce it)."""

import dataclasses
import hashlib
import json
import pathlib
import platform
import resource

import jax
import numpy as np

import jaxmerge
from jaxmerge.merging.config import MergeConfig


def _metadata_digest(reader) -> str:
    listing = [(n, list(i.shape), np.dtype(i.dtype).name) for n, i in reader.params.items()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _size_on_disk(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_key(config: MergeConfig, readers) -> str:
    """A digest of what decides the merged values: a partial output resumes only under it.

    Method, hyperparameters, weights, seed, dtype and each input's path and metadata; not
    the output's path, the memory budget or the allow_* switches, which change no value.
    """
    fields = dataclasses.asdict(config)
    for ignored in ("output", "overwrite", "memory_budget", "allow_nonfinite", "allow_unrelated"):
        fields.pop(ignored)
    fields["inputs"] = [(role, str(r.path), _metadata_digest(r)) for role, r in readers]
    text = json.dumps(fields, sort_keys=True, default=str)  # paths as given
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(config, plan, readers, wall_seconds: float, key: str, checkpoint: str) -> dict:
    """What was merged, how, with what, and what it cost; `key` is the run key and
    `checkpoint` where the checkpoint lies inside OUT ("checkpoint_<step>" or ".")."""
    return {
        "run_key": key,
        "checkpoint": checkpoint,
        "jaxmerge_version": jaxmerge.__version__,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
        "method": config.method,
        "hparams": config.hparams(),
        "weights": None if config.weights is None else list(config.weights),
        "weight_rules": None
        if config.weight_rules is None
        else [[pattern, list(w)] for pattern, w in config.weight_rules],
        "seed": config.seed,
        "output_format": plan.output_format,
        "step": plan.step,
        "num_parameters": int(sum(int(np.prod(i.shape)) for i in plan.params.values())),
        "inputs": [
            {
                "role": role,
                "path": str(reader.path),
                "format": reader.format,
                "step": reader.step,
                "bytes": _size_on_disk(pathlib.Path(reader.path)),
                "metadata_sha256": _metadata_digest(reader),
            }
            for role, reader in readers
        ],
        "wall_seconds": round(wall_seconds, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def finished(output: pathlib.Path, key: str) -> pathlib.Path | None:
    """The checkpoint in OUT if OUT is a finished merge with this run key, else None."""
    try:
        saved = json.loads((pathlib.Path(output) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("run_key") != key:
        return None
    checkpoint = (pathlib.Path(output) / str(saved.get("checkpoint", "."))).resolve()
    return checkpoint if checkpoint.exists() else None


def operative_config(config: MergeConfig) -> str:
    """The gin bindings that reproduce this merge (T5X writes its operative config too)."""
    import gin

    lines = ["from __gin__ import dynamic_registration", "", "from jaxmerge import merge", ""]
    operative = gin.operative_config_str().strip()
    if operative:
        lines += ["# operative config of the gin files and bindings given", operative, ""]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, tuple | list):
            value = list(value)
        lines.append(f"merge.MergeConfig.{field.name} = {value!r}")
    return "\n".join(lines) + "\n"
