"""Do the built-in tasks leave room? Scores one checkpoint on every held-in and held-out task.

    .venv/bin/python -m benchmarks.task_difficulty --gin_file gin_configs/models/t5_tiny.gin \
        --checkpoint /tmp/mt/checkpoint_800 [--split validation] [--max_examples 100]

Held-in: exact match of greedy decoding (max 64 bytes). Held-out: rank
classification accuracy over the choices' log-likelihoods. Alongside each score,
the majority-answer baseline of that split ("chance"). A direct reimplementation
for this check; the evaluation proper is seqio's Evaluator in `jaxmerge eval`.
"""

import argparse
import collections

import numpy as np

from jaxmerge import tasks, training
from jaxmerge.cli import gin_flags
from jaxmerge.models import decoding
from jaxmerge.tasks import held_in, held_out, registry

IN_LEN, OUT_LEN = 256, 64


def _encode(vocab, texts: list[str], length: int) -> np.ndarray:
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = list(vocab.encode(t))[: length - 1] + [1]
        out[i, : len(ids)] = ids
    return out


def held_in_score(config, params, vocab, name, gen, split, n) -> tuple[float, float]:
    exs = registry.examples(name, gen, split)[:n]
    x = _encode(vocab, [e["inputs"] for e in exs], IN_LEN)
    out = np.asarray(decoding.greedy_decode(config, params, x, OUT_LEN))
    preds = [vocab.decode([int(t) for t in row if t > 1]) for row in out]
    acc = np.mean([p.strip() == e["targets"] for p, e in zip(preds, exs, strict=True)])
    majority = collections.Counter(e["targets"] for e in exs).most_common(1)[0][1] / len(exs)
    return 100 * acc, 100 * majority


def held_out_score(config, params, vocab, name, gen, split, n) -> tuple[float, float]:
    exs = registry.examples(name, gen, split)[:n]
    rows = [(i, j, e["inputs"], c) for i, e in enumerate(exs) for j, c in enumerate(e["choices"])]
    batch = {
        "encoder_input_tokens": _encode(vocab, [r[2] for r in rows], IN_LEN),
        "decoder_target_tokens": _encode(vocab, [r[3] for r in rows], OUT_LEN),
    }
    scores = np.asarray(decoding.score_batch(config, params, batch))
    best = {}
    for (i, j, _, _), s in zip(rows, scores, strict=True):
        if i not in best or s > best[i][0]:
            best[i] = (s, j)
    acc = np.mean([best[i][1] == e["label"] for i, e in enumerate(exs)])
    majority = collections.Counter(e["label"] for e in exs).most_common(1)[0][1] / len(exs)
    return 100 * acc, 100 * majority


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_examples", type=int, default=100)
    args = parser.parse_args()
    gin_flags.parse([args.gin_file], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")
    params, step, _ = training.restore_checkpoint(args.checkpoint)
    vocab = tasks.vocabulary()
    print(f"checkpoint {args.checkpoint} (step {step}), split {args.split}")
    print("| kind | category | dataset | accuracy | majority baseline |\n|---|---|---|---|---|")
    for kind, cats, score in (
        ("held-in", held_in.CATEGORIES, held_in_score),
        ("held-out", held_out.CATEGORIES, held_out_score),
    ):
        for cat, datasets in cats.items():
            for name, gen in datasets.items():
                acc, base = score(config, params, vocab, name, gen, args.split, args.max_examples)
                print(f"| {kind} | {cat} | {name} | {acc:.0f} | {base:.0f} |", flush=True)


if __name__ == "__main__":
    main()
