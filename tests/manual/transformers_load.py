"""Manual check: our safetensors output loads in `transformers` (not a project dependency).

Run in two steps, because torch/transformers live in a separate venv:

    python3.11 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers
    /tmp/hfvenv/bin/python tests/manual/transformers_load.py make /tmp/hf
    PYTHONPATH=. .venv/bin/python tests/manual/transformers_load.py convert /tmp/hf
    /tmp/hfvenv/bin/python tests/manual/transformers_load.py load /tmp/hf

`make` saves tiny GPT-2 (f32, bf16) and T5 (f16) models with save_pretrained; `convert` reads
each with jaxmerge (sharded on 8 CPU devices), writes T5X legacy, reads that back and writes
safetensors (sharded at 30 kB, so the f32 model gets an index) with config.json copied;
`load` calls from_pretrained on the result and compares every tensor bit for bit.
"""

import os
import sys

MODELS = ("gpt2_f32", "gpt2_bf16", "t5_f16")


def make(root):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    gpt2 = transformers.GPT2LMHeadModel(cfg)
    gpt2.save_pretrained(f"{root}/gpt2_f32")
    gpt2.to(torch.bfloat16).save_pretrained(f"{root}/gpt2_bf16")
    t5cfg = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2
    )
    t5 = transformers.T5ForConditionalGeneration(t5cfg)
    t5.to(torch.float16).save_pretrained(f"{root}/t5_f16")


def convert(root):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmerge import checkpoints

    mesh = jax.make_mesh((8,), ("data",))
    for name in MODELS:
        src = f"{root}/{name}"
        with checkpoints.open(src) as reader:
            writer = checkpoints.create(f"{root}/{name}_t5x", "t5x", reader.params, overwrite=True)
            for n, info in reader.params.items():
                spec = P("data") if info.shape and info.shape[0] % 8 == 0 else P()
                writer.write(n, reader.read(n, NamedSharding(mesh, spec)))
            writer.finalize()
        with checkpoints.open(f"{root}/{name}_t5x") as reader:
            writer = checkpoints.create(
                f"{root}/{name}_out",
                "safetensors",
                reader.params,
                reference=src,
                max_shard_bytes=30_000,
                overwrite=True,
            )
            for n in reader.params:
                writer.write(n, reader.read(n))
            writer.finalize()
        print(name, sorted(os.listdir(f"{root}/{name}_out")))


def load(root):
    import torch
    import transformers

    classes = {"gpt2": transformers.GPT2LMHeadModel, "t5": transformers.T5ForConditionalGeneration}
    for name in MODELS:
        cls = classes[name.split("_")[0]]
        want = cls.from_pretrained(f"{root}/{name}").state_dict()
        got = cls.from_pretrained(f"{root}/{name}_out").state_dict()
        assert want.keys() == got.keys(), name
        for key in want:
            assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
        print(name, "from_pretrained: every tensor bit-equal")


if __name__ == "__main__":
    {"make": make, "convert": convert, "load": load}[sys.argv[1]](sys.argv[2])
