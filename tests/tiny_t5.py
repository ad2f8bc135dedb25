"""The T5 configs tests build models of: small enough to compile and run in seconds."""

import dataclasses

from jaxmerge.models import t5

TINY = t5.T5Config(  # 1 + 1 layers, embed 32: what most model, training and eval tests use
    vocab_size=384,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=16,
    mlp_dim=64,
    mlp_activations=("gelu", "linear"),
    dropout_rate=0.0,
)
# The same sizes with T5's single relu MLP (wi, wo) instead of the gated one.
TINY_RELU = dataclasses.replace(TINY, mlp_activations=("relu",))


def fine_tune_like(tree, seed: int, scale: float = 0.05):
    """tree + scale·N(0, 1) noise: a checkpoint that looks fine-tuned from `tree` (the merge
    engine's preflight refuses unrelated experts); seed 0 returns `tree` itself."""
    import jax

    if seed == 0:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [
        a + scale * jax.random.normal(k, a.shape, a.dtype)
        for a, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)
