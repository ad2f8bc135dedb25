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


def load_pool(base_path: str | None, paths: Sequence[str], mesh: Mesh, placement=None) -> Pool:
    """Reads every checkpoint (any format `jaxmerge.checkpoints` reads, Hugging Face T5
    included) onto `mesh`: replicated, or by `placement` ({T5X parameter name:
    NamedSharding}, e.g. `sharding.Partitioner.param_shardings`); InputError naming the file
    and parameter on a mismatch."""
    from jaxmerge import training

    if not paths:
        raise InputError("--experts: no checkpoint to learn over")
    if placement is None:
        placement = NamedSharding(mesh, PartitionSpec())

    def read(path: str) -> dict[str, jax.Array]:
        try:
            tree, _, _ = training.restore_checkpoint(path, placement)
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


PREPROCESSINGS = ("none", "ties", "dare")


def check_preprocess(method: str, density: float, drop_rate: float) -> None:
    """InputError naming the flag when a preprocessing or its hyperparameter is invalid."""
    if method not in PREPROCESSINGS:
        raise InputError(f"--preprocess={method!r}: choose from {', '.join(PREPROCESSINGS)}")
    if not 0.0 < density <= 1.0:
        raise InputError(f"--density={density}: must be in (0, 1]")
    if not 0.0 <= drop_rate < 1.0:
        raise InputError(f"--drop_rate={drop_rate}: must be in [0, 1)")


def preprocess(
    pool: Pool, method: str, *, density: float = 0.2, drop_rate: float = 0.9, seed: int = 0
) -> Pool:
    """The pool with each checkpoint replaced by θ₀ + τ̃ᵢ, its task vector preprocessed
    by the merge methods' own code before coefficients are learned (AdaMerging++):

        ties   τ̃ᵢ = TIES's trimmed, sign-elected τᵢ (`ties_task_vectors`, global trim:
               each expert's top `density` of |τᵢ| over the whole model)
        dare   τ̃ᵢ = DARE's dropped and rescaled τᵢ (`dare_task_vectors`, the key of each
               parameter from (seed, name) as the merge engine derives it)

    so that θ₀ + Σᵢ cᵢ τ̃ᵢ is the task-vector merge learned over them. `paths` keep the
    original checkpoints'; a caller that writes the merge writes these checkpoints first.
    """
    from jaxmerge.methods import tree
    from jaxmerge.methods.dare import dare_task_vectors
    from jaxmerge.methods.ties import ties_task_vectors

    check_preprocess(method, density, drop_rate)
    if method == "none":
        return pool
    if pool.base is None:
        raise InputError(f"--preprocess={method}: needs a base (task vectors are θᵢ − θ₀)")
    thresholds = None
    if method == "ties":
        thresholds = tree.global_thresholds(pool.checkpoints, pool.base, density)
    processed = [{} for _ in pool.checkpoints]
    for name in pool.names:
        experts = [c[name] for c in pool.checkpoints]
        base = pool.base[name]
        if method == "ties":
            vectors = ties_task_vectors(experts, base=base, density=density, thresholds=thresholds)
        else:
            key = tree.parameter_key(seed, name)
            vectors = dare_task_vectors(experts, base=base, key=key, drop_rate=drop_rate)
        for out, vector in zip(processed, vectors, strict=True):
            out[name] = (base.astype(vector.dtype) + vector).astype(base.dtype)
    return dataclasses.replace(pool, checkpoints=processed)
