"""Learned merge coefficients: `coefficients` (groups, spaces, the merge they define),
`pool` (the checkpoints in memory), the gradient path (`gradient`, optax) and the search
path (`search`, CMA-ES), and `run.learn`, what `jaxmerge learn` calls.

May import jaxmerge.methods, merging, models, training, evaluation, errors, optax and jax;
never gin, argparse or jaxmerge.cli.
"""
