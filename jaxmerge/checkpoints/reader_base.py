"""`ReaderBase`: the surface every format's Reader shares (`read`, `read_numpy`, `with`)."""

from __future__ import annotations

import jax
import numpy as np

from jaxmerge.checkpoints.shards import assemble, normalize_index


class ReaderBase:
    """What every format's Reader shares: `read` assembles a jax.Array from the shards the
    subclass's `_read_slices(name, indices)` yields, `read_numpy` reads the whole parameter,
    and `with reader:` closes it. Subclasses define `params`, `_check(name)` (an error
    naming their file), `_read_slices` and `close`."""

    maps_files = False  # True: arrays alias a mapping of the file, which XLA cannot take over

    def read(self, name: str, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        self._check(name)
        return assemble(name, self.params[name], sharding, lambda idx: self._read_slices(name, idx))

    def read_numpy(self, name: str) -> np.ndarray:
        self._check(name)
        (out,) = self._read_slices(name, [normalize_index((), self.params[name].shape)])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
