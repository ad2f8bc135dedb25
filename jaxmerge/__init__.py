"""jaxmerge: merge many large checkpoints into one model, and measure the merge.

The library (`methods`, `checkpoints`, `sharding`, `merging`, `models`, `tasks`,
`training`) is what Python users call; `cli` is the `jaxmerge` command on top of it, and
nothing in the library imports `cli`. Each package's docstring says what it may import.
"""

__version__ = "0.1.0"
