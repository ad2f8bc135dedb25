"""The T5 configs tests build models of: small enough to compile and run in seconds."""

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
