"""seqio Tasks and Mixtures over the generated datasets, with fixed splits.

Splits and seeds. Each dataset draws examples from `random.Random(seed)` where
seed = crc32(dataset name) ^ SPLIT_SEED, and routes every example to a split by
crc32 of its `inputs` (0 -> test, 1 -> validation, 2-9 -> train, out of 10).
Duplicates are dropped, so the splits are disjoint by construction and identical
on every machine. Sizes (at most; a small fact pool can give fewer):
SPLIT_SIZES. The pretraining corpus has PRETRAIN_SIZE train documents.

Registered names (call `register()` once; it is idempotent):
  jaxmerge_<dataset>                one Task per dataset (held-in, held-out,
                                    instruction: jaxmerge_instr_<name>)
  jaxmerge_pretrain_corpus          span-corruption Task on the pretraining text
  jaxmerge_pretrain_corpus_<n>      the same text, each document first split into pieces of
                                    at most n tokens (n = REPLAY_MAX_TOKENS)
  jaxmerge_held_in_<category>       the 2 datasets of one held-in category (an expert)
  jaxmerge_held_in_tilted_<category>  all held-in datasets, <category>'s at TILT_RATE x
                                    the rest's (the Recycle paper's generalists, which
                                    trade tasks off against each other)
  jaxmerge_instructions_<family>    one family of instruction tasks (instructions.FAMILIES)
  jaxmerge_pretrain, jaxmerge_instructions, jaxmerge_held_in, jaxmerge_held_out
  jaxmerge_instructions_with_replay jaxmerge_instructions with REPLAY_FRACTION of its
                                    examples from jaxmerge_pretrain_corpus_<n> (replay)
  jaxmerge_held_in_of_<c1>__<c2>…   the datasets of some held-in categories, registered
                                    on demand by `held_in_mixture` (a study's suite)
"""

import functools
import random
import zlib

import numpy as np

from jaxmerge.tasks import held_in, held_out, instructions, metrics

SPLIT_SEED = 0x5EED
SPLIT_SIZES = {"train": 2000, "validation": 100, "test": 200}
PRETRAIN_SIZE = 20000
SPLIT_OF_BUCKET = {0: "test", 1: "validation"}  # crc32(inputs) % 10; the rest is train
NUM_SENTINELS = 100
NOISE_DENSITY, MEAN_NOISE_SPAN = 0.15, 3.0
TILT_RATE = 5.0
# Pre-training replay during instruction tuning: a fraction of the examples are span
# corruption of the pre-training text, split into pieces that fit the instruction
# mixture's fitted inputs length (128), as T5 splits C4 into inputs-length pieces
# (`split_tokens`). Co-training on span corruption with supervised tasks is ExT5's
# recipe (Aribandi et al. 2022, arXiv:2111.10952); here it is meant to keep what
# pre-training stored while the instruction tasks are learned.
REPLAY_MAX_TOKENS = 128
REPLAY_FRACTION = 0.25


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


@functools.cache
def examples(name: str, generator, split: str) -> tuple[dict, ...]:
    """The examples of one dataset split, deterministic (see the module docstring)."""
    rng = random.Random(_crc(name) ^ SPLIT_SEED)
    want = dict(SPLIT_SIZES)
    out: dict[str, list] = {s: [] for s in want}
    seen: set[str] = set()
    for _ in range(20 * sum(want.values())):
        ex = generator(rng)
        key = ex["inputs"]
        if key in seen:
            continue
        seen.add(key)
        s = SPLIT_OF_BUCKET.get(_crc(key) % 10, "train")
        if len(out[s]) < want[s]:
            out[s].append(ex)
        if all(len(out[k]) >= want[k] for k in want):
            break
    return tuple(out[split])


def _as_dataset(rows: dict[str, list]):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices({k: np.asarray(v) for k, v in rows.items()})


def _generation_source(name: str, generator):
    def dataset_fn(split, shuffle_files=False, seed=None):
        exs = examples(name, generator, split)
        return _as_dataset({k: [e[k] for e in exs] for k in ("inputs", "targets")})

    return dataset_fn


def _rank_classification_source(name: str, generator):
    """One row per (question, choice): targets = the choice, with idx and is_correct."""

    def dataset_fn(split, shuffle_files=False, seed=None):
        rows = {"inputs": [], "targets": [], "idx": [], "is_correct": []}
        for i, ex in enumerate(examples(name, generator, split)):
            for j, choice in enumerate(ex["choices"]):
                rows["inputs"].append(ex["inputs"])
                rows["targets"].append(choice)
                rows["idx"].append(i)
                rows["is_correct"].append(j == ex["label"])
        return _as_dataset(rows)

    return dataset_fn


@functools.cache
def pretraining_examples(
    split: str, max_tokens: int | None = None
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Span-corrupted pretraining documents of one split, as token ids (no EOS yet).

    Tokenized with `vocabulary()` and corrupted here, once, in Python (no
    `tf.numpy_function` in the input pipeline). With `max_tokens`, each document of n
    tokens is first split into ceil(n / max_tokens) pieces of near-equal length, each
    corrupted on its own. Returns ragged rows as two tuples of int32 arrays:
    (inputs, targets).
    """
    vocab = vocabulary()
    n = {"train": PRETRAIN_SIZE}.get(split, SPLIT_SIZES[split])
    rng = random.Random(_crc(f"pretrain/{split}") ^ SPLIT_SEED)
    inputs, targets = [], []
    for _ in range(n):
        tokens = np.asarray(vocab.encode(instructions.pretraining_document(rng)["text"]), np.int32)
        pieces = 1 if max_tokens is None else -(-len(tokens) // max_tokens)
        for piece in np.array_split(tokens, pieces):
            x, y = span_corrupt(piece, vocab.vocab_size)
            inputs.append(x)
            targets.append(y)
    return tuple(inputs), tuple(targets)


def pretraining_corpora() -> dict[str, int | None]:
    """seqio task name -> max_tokens of each span-corruption Task (`pretraining_examples`)."""
    return {
        "jaxmerge_pretrain_corpus": None,
        f"jaxmerge_pretrain_corpus_{REPLAY_MAX_TOKENS}": REPLAY_MAX_TOKENS,
    }


def _pretrain_source(max_tokens: int | None):
    def dataset_fn(split, shuffle_files=False, seed=None):
        import tensorflow as tf

        inputs, targets = pretraining_examples(split, max_tokens)
        ragged = lambda rows: tf.RaggedTensor.from_row_lengths(
            np.concatenate(rows), [len(r) for r in rows]
        )
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": ragged(inputs), "targets": ragged(targets)}
        )

    return dataset_fn


def _random_partition(rng: random.Random, n: int, k: int) -> list[int]:
    """n items into k non-empty consecutive segments -> their k lengths."""
    cuts = [0, *sorted(rng.sample(range(1, n), k - 1)), n]
    return [b - a for a, b in zip(cuts, cuts[1:], strict=False)]


def span_corrupt(tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one token sequence (Raffel et al. 2020, §3.1.4).

    About NOISE_DENSITY of the tokens, in spans of mean length MEAN_NOISE_SPAN,
    are replaced in the inputs by sentinels vocab_size-1, vocab_size-2, ...; the
    targets list each sentinel followed by the tokens it replaced. Seeded by the
    tokens themselves, so it is deterministic.
    """
    tokens = np.asarray(tokens, np.int32)
    n, seq = len(tokens), tokens.tolist()
    rng = random.Random(zlib.crc32(tokens.tobytes()))
    n_noise = int(np.clip(round(n * NOISE_DENSITY), 1, max(n - 1, 1)))
    n_spans = int(np.clip(round(n_noise / MEAN_NOISE_SPAN), 1, min(n_noise, n - n_noise)))
    noise = _random_partition(rng, n_noise, n_spans)
    keep = _random_partition(rng, n - n_noise, n_spans)
    inputs, targets, pos = [], [], 0
    for i in range(n_spans):
        sentinel = vocab_size - 1 - i
        inputs += seq[pos : pos + keep[i]]
        inputs.append(sentinel)
        pos += keep[i]
        targets.append(sentinel)
        targets += seq[pos : pos + noise[i]]
        pos += noise[i]
    return np.asarray(inputs, np.int32), np.asarray(targets, np.int32)


def vocabulary():
    """The built-in byte vocabulary with NUM_SENTINELS sentinels (359 ids)."""
    import seqio

    return seqio.ByteVocabulary(extra_ids=NUM_SENTINELS)


def generated_datasets() -> dict:
    """seqio task name -> (dataset name, generator) of every generated built-in task."""
    evaluated = [ds for m in (held_in, held_out) for ds in m.CATEGORIES.values()]
    out = {f"jaxmerge_{d}": (d, g) for ds in evaluated for d, g in ds.items()}
    out |= {f"jaxmerge_instr_{d}": (f"instr_{d}", g) for d, g in instructions.INSTRUCTIONS.items()}
    return out


@functools.cache
def register() -> None:
    """Registers every Task and Mixture listed in the module docstring (once)."""
    import seqio

    feats = {
        "inputs": seqio.Feature(vocabulary(), add_eos=True),
        "targets": seqio.Feature(vocabulary(), add_eos=True),
    }
    prep = [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]

    def add(name, source, **kw):
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(name, source=source, output_features=feats, **kw)
        return name

    def add_mixture(name, tasks, rates=None):
        if name in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(name)
        rates = rates or {}
        seqio.MixtureRegistry.add(name, [(t, rates.get(t, 1.0)) for t in tasks])

    splits = list(SPLIT_SIZES)
    all_held_in = []
    for category, datasets in held_in.CATEGORIES.items():
        names = [
            add(
                f"jaxmerge_{d}",
                seqio.FunctionDataSource(_generation_source(d, g), splits),
                preprocessors=prep,
                metric_fns=[metrics.exact_match],
            )
            for d, g in datasets.items()
        ]
        add_mixture(f"jaxmerge_held_in_{category}", names)
        all_held_in += names
    add_mixture("jaxmerge_held_in", all_held_in)
    for category, datasets in held_in.CATEGORIES.items():
        tilted = {f"jaxmerge_{d}": TILT_RATE for d in datasets}
        add_mixture(f"jaxmerge_held_in_tilted_{category}", all_held_in, tilted)

    held_out_names = [
        add(
            f"jaxmerge_{d}",
            seqio.FunctionDataSource(_rank_classification_source(d, g), splits),
            preprocessors=prep,
            postprocess_fn=metrics.rank_classification_target,
            metric_fns=[metrics.rank_classification],
        )
        for datasets in held_out.CATEGORIES.values()
        for d, g in datasets.items()
    ]
    add_mixture("jaxmerge_held_out", held_out_names)

    instr = {
        d: add(
            f"jaxmerge_instr_{d}",
            seqio.FunctionDataSource(_generation_source(f"instr_{d}", g), splits),
            preprocessors=prep,
            metric_fns=[metrics.exact_match],
        )
        for d, g in instructions.INSTRUCTIONS.items()
    }
    add_mixture("jaxmerge_instructions", list(instr.values()))
    for family, generators in instructions.FAMILIES.items():
        add_mixture(f"jaxmerge_instructions_{family}", [instr[g.__name__] for g in generators])

    corpora = [
        add(
            name,
            seqio.FunctionDataSource(_pretrain_source(max_tokens), splits),
            preprocessors=[  # the source yields span-corrupted token ids
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
        )
        for name, max_tokens in pretraining_corpora().items()
    ]
    add_mixture("jaxmerge_pretrain", corpora[:1])
    replay_rate = REPLAY_FRACTION / (1 - REPLAY_FRACTION) * len(instr)  # instr: 1.0 each
    add_mixture(
        "jaxmerge_instructions_with_replay",
        [*instr.values(), corpora[1]],
        {corpora[1]: replay_rate},
    )


def held_in_mixture(categories) -> str:
    """The name of a mixture of these held-in categories' datasets, registered if new:
    `jaxmerge_held_in` for all of them, `jaxmerge_held_in_<c>` for one, else
    `jaxmerge_held_in_of_<c1>__<c2>…` in the order of `held_in.CATEGORIES`."""
    import seqio

    register()
    unknown = sorted(set(categories) - set(held_in.CATEGORIES))
    if unknown or not categories:
        raise ValueError(f"held-in categories {unknown or '[]'}: not in {list(held_in.CATEGORIES)}")
    ordered = [c for c in held_in.CATEGORIES if c in set(categories)]
    if len(ordered) == len(held_in.CATEGORIES):
        return "jaxmerge_held_in"
    if len(ordered) == 1:
        return f"jaxmerge_held_in_{ordered[0]}"
    name = "jaxmerge_held_in_of_" + "__".join(ordered)
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [f"jaxmerge_held_in_{c}" for c in ordered], 1.0)
    return name
