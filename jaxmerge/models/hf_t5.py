"""Import Hugging Face T5 1.1 / Flan-T5 checkpoints (safetensors) by a name mapping.

Hugging Face `T5ForConditionalGeneration` stores torch `Linear` weights as
(out, in); T5X stores kernels as (in, out), so every dense weight is transposed.
The relative attention table lives in block 0 of each stack in HF and once per
stack in T5X. Flan-T5 (Chung et al. 2022, arXiv:2210.11416) uses the T5 1.1
architecture, so it imports the same way. Attention in both is unscaled.

    shared.weight                                        -> token_embedder/embedding
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
                                 -> encoder/layers_{i}/attention/{query,key,value,out}/kernel ᵀ
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                 -> encoder/relpos_bias/rel_embedding ᵀ
    encoder.block.{i}.layer.0.layer_norm.weight -> encoder/layers_{i}/pre_attention_layer_norm/scale
    encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight
                                 -> encoder/layers_{i}/mlp/{wi_0,wi_1,wo}/kernel ᵀ
    encoder.block.{i}.layer.1.layer_norm.weight -> encoder/layers_{i}/pre_mlp_layer_norm/scale
    encoder.final_layer_norm.weight              -> encoder/encoder_norm/scale
    decoder: layer.0 self_attention, layer.1 EncDecAttention -> encoder_decoder_attention,
             layer.2 mlp; norms pre_self_attention / pre_cross_attention / pre_mlp
    decoder.final_layer_norm.weight -> decoder/decoder_norm/scale
    lm_head.weight (untied models)  -> decoder/logits_dense/kernel ᵀ
"""

import json
import pathlib

import numpy as np

from jaxmerge.errors import CheckpointError
from jaxmerge.models.t5 import T5Config

_ATTN = {"q": "query", "k": "key", "v": "value", "o": "out"}


def config_from_hf(hf: dict) -> T5Config:
    """A Hugging Face T5 `config.json` dict -> T5Config."""
    proj = hf.get("feed_forward_proj", "relu")
    act = proj.removeprefix("gated-")
    act = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}.get(act, act)
    acts = (act, "linear") if proj.startswith("gated-") else (act,)
    return T5Config(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["d_model"],
        num_heads=hf["num_heads"],
        num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        mlp_activations=acts,
        dropout_rate=hf.get("dropout_rate", 0.1),
        logits_via_embedding=hf.get("tie_word_embeddings", True),
    )


def name_map(config: T5Config) -> dict[str, tuple[str, bool]]:
    """T5X name -> (Hugging Face name, transpose?) for every parameter of `config`."""
    gated = len(config.mlp_activations) > 1
    mlp = ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]
    m = {"token_embedder/embedding": ("shared.weight", False)}
    stacks = {  # stack: (layers, [(HF attention, ours)], [norms in HF layer order])
        "encoder": (
            config.num_encoder_layers,
            [("SelfAttention", "attention")],
            ["pre_attention_layer_norm", "pre_mlp_layer_norm"],
        ),
        "decoder": (
            config.num_decoder_layers,
            [("SelfAttention", "self_attention"), ("EncDecAttention", "encoder_decoder_attention")],
            [
                "pre_self_attention_layer_norm",
                "pre_cross_attention_layer_norm",
                "pre_mlp_layer_norm",
            ],
        ),
    }
    for stack, (n, attns, norms) in stacks.items():
        m[f"{stack}/relpos_bias/rel_embedding"] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            True,
        )
        for i in range(n):
            hf, tx = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            for j, (theirs, ours) in enumerate(attns):
                for short, long in _ATTN.items():
                    m[f"{tx}/{ours}/{long}/kernel"] = (f"{hf}.{j}.{theirs}.{short}.weight", True)
            for j, norm in enumerate(norms):
                m[f"{tx}/{norm}/scale"] = (f"{hf}.{j}.layer_norm.weight", False)
            for w in mlp:
                m[f"{tx}/mlp/{w}/kernel"] = (f"{hf}.{len(attns)}.DenseReluDense.{w}.weight", True)
        m[f"{stack}/{stack}_norm/scale"] = (f"{stack}.final_layer_norm.weight", False)
    if not config.logits_via_embedding:
        m["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    return m


def _load_tensors(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        if not (model_dir / f).exists():
            raise CheckpointError(f"{model_dir / f}: missing safetensors file")
        tensors.update(load_file(str(model_dir / f)))
    return tensors


def load_hf_t5(model_dir: str | pathlib.Path) -> tuple[T5Config, dict[str, np.ndarray]]:
    """Reads a Hugging Face T5 1.1 / Flan-T5 directory -> (config, flat T5X-named params).

    Parameters come back float32, with T5X's shapes. Raises CheckpointError naming
    the file and parameter if a tensor is missing or has an unexpected shape.
    """
    model_dir = pathlib.Path(model_dir)
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{cfg_file}: missing (a Hugging Face T5 config is required)")
    config = config_from_hf(json.loads(cfg_file.read_text()))
    tensors = _load_tensors(model_dir)
    out = {}
    for ours, (theirs, transpose) in name_map(config).items():
        if theirs not in tensors:
            raise CheckpointError(f"{model_dir}: tensor {theirs!r} (for {ours}) is missing")
        x = np.asarray(tensors[theirs], np.float32)
        out[ours] = x.T if transpose else x
    return config, out


def to_hf(config: T5Config, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat T5X-named params -> Hugging Face tensor dict (the inverse of the import)."""
    out = {}
    for ours, (theirs, transpose) in name_map(config).items():
        x = np.asarray(flat[ours])
        out[theirs] = np.ascontiguousarray(x.T) if transpose else x
    return out
