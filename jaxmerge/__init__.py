"""jaxmerge: merge many large checkpoints into one model, and measure the merge."""

__version__ = "0.1.0"
