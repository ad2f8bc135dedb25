"""Evaluation of parameter trees on seqio tasks: `Evaluator`, built once, called many times.

Owns the evaluation data and the compiled predict/score functions. May import
jaxmerge.models, jaxmerge.tasks, jaxmerge.errors, seqio and jax; never gin, argparse
or the command layer.
"""

from jaxmerge.evaluation.evaluator import Evaluator, Timing

__all__ = ["Evaluator", "Timing"]
