"""Evaluation on seqio tasks, as the paper measures a merge.

`evaluator.Evaluator` (built once, called with many parameter trees: data and compiled
predict/score functions paid once), `normalize` (held-in ÷ expert, held-out ÷ base, pure
functions), `references` (content fingerprints and the score cache), `vocab` (tasks
re-read with a checkpoint's SentencePiece model) and `run.evaluate_checkpoints`, what
`jaxmerge eval` calls. May import jaxmerge.models, tasks, checkpoints, training (to
restore checkpoints), summaries, errors, seqio and jax; never gin, argparse or jaxmerge.cli.
"""

from jaxmerge.evaluation.evaluator import Evaluator, Timing

__all__ = ["Evaluator", "Timing"]
