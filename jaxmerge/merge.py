"""The gin name of the merge engine: gin files write `from jaxmerge import merge` and bind
`merge.MergeConfig.<field>` (the names since before the engine became `jaxmerge.merging`);
this module re-exports the same `jaxmerge.merging.MergeConfig`, so those bindings, the
`config.gin` every merge writes, and `--gin.merge.MergeConfig.KEY=VALUE` keep working.
Python code imports `jaxmerge.merging`."""

from jaxmerge.merging import MergeConfig, merge_checkpoints, parse_bytes

__all__ = ["MergeConfig", "merge_checkpoints", "parse_bytes"]
