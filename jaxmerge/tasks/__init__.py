"""The built-in task suite: generated, deterministic, shipped as code.

`register()` adds every seqio Task and Mixture (see `registry` for names,
splits and seeds); `held_in`, `held_out` and `instructions` hold the generators.

May import: seqio, TensorFlow (for tf.data), numpy; nothing else of jaxmerge.
"""

from jaxmerge.tasks.registry import register, vocabulary

__all__ = ["register", "vocabulary"]
