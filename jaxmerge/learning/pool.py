"""The checkpoints a merge is learned over, held in memory on the mesh: `load_pool`.

A base θ₀ (optional for the simplex space) and K checkpoints θ₁ … θ_K (experts, or the
Recycle paper's pool of generalists), read once into flat {name: jax.Array} dicts,
replicated over the mesh, and checked to agree in names and shapes before anything is
learned. The merged model is then formed from them on the devices, step after step,
without rebuilding anything on the host.
"""

import dataclasses
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmerge.errors import InputError
from jaxmerge.models import params as params_lib


@dataclasses.dataclass
class Pool:
    paths: list[str]  # the K checkpoints
    base_path: str | None
    checkpoints: list[dict[str, jax.Array]]  # K flat trees
    base: dict[str, jax.Array] | None
    names: list[str]  # parameter names, in the reference's order

    @property
    def reference(self) -> dict[str, jax.Array]:
        return self.base if self.base is not None else self.checkpoints[0]


def load_pool(base_path: str | None, paths: Sequence[str], mesh: Mesh) -> Pool:
    """Reads every checkpoint (any format `jaxmerge.checkpoints` reads, Hugging Face T5
    included) replicated on `mesh`; InputError naming the file and parameter on a
    mismatch."""
    from jaxmerge import training

    if not paths:
        raise InputError("--experts: no checkpoint to learn over")
    replicated = NamedSharding(mesh, PartitionSpec())

    def read(path: str) -> dict[str, jax.Array]:
        try:
            tree, _, _ = training.restore_checkpoint(path, replicated)
        except FileNotFoundError:
            raise InputError(f"{path}: checkpoint not found") from None
        return params_lib.flatten(tree)

    base = read(base_path) if base_path else None
    checkpoints = [read(p) for p in paths]
    reference, ref_path = (base, base_path) if base is not None else (checkpoints[0], paths[0])
    for path, tree in zip(paths, checkpoints, strict=True):
        for name in sorted(set(reference) | set(tree)):
            if name not in tree:
                raise InputError(f"{path}: lacks parameter {name!r} of {ref_path}")
            if name not in reference:
                raise InputError(f"{path}: has parameter {name!r} that {ref_path} lacks")
            if tree[name].shape != reference[name].shape:
                raise InputError(
                    f"{path}: parameter {name!r} has shape {tuple(tree[name].shape)} but "
                    f"{tuple(reference[name].shape)} in {ref_path}"
                )
    return Pool(list(paths), base_path, checkpoints, base, list(reference))
