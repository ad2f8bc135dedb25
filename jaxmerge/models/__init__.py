"""Flax models with T5X parameter names: `t5` (T5 1.1), its `layers`, `decoding`
(greedy with a KV cache, scoring), `params` (nested <-> "/"-joined names) and
`hf_t5` (Hugging Face T5 1.1 / Flan-T5 import).

May import: jax, flax, numpy, jaxmerge.errors; never gin, seqio or the command layer."""
