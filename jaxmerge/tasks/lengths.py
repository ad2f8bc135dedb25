"""Feature lengths fitted to the built-in tasks, for packed training.

seqio packs whole examples into rows of `task_feature_lengths` tokens (inputs and
targets rows filled side by side). The rows should hold every example untruncated
and waste little: the encoder's attention costs O(inputs length) per token and the
targets row is padding wherever it is longer than the targets of the examples that
fill the inputs row. So, over the train split of every task of the mixture (bytes,
EOS included):

    inputs  = round_up(max input length, INPUT_QUANTUM)
    targets = round_up(max(max target length,
                           TARGET_SLACK * inputs * sum(target lengths) / sum(input lengths)),
                       TARGET_QUANTUM)

For the held-in mixture this gives inputs 256 / targets 64 (summary_lead inputs
reach 233 bytes); for one category's expert it is usually 128 / 16. Used by the
built-in fine-tuning recipes through gin (`@lengths.fitted_feature_lengths()`);
docs/models_tasks_training.md has the table.
"""

import functools
import math

from jaxmerge.tasks import registry

INPUT_QUANTUM = 32
TARGET_QUANTUM = 16
TARGET_SLACK = 1.25  # room for the spread of the targets of the examples in a row


def _round_up(n: float, quantum: int) -> int:
    return int(math.ceil(n / quantum) * quantum)


def task_names(mixture_or_task_name: str) -> list[str]:
    """The seqio task names under a built-in mixture or task name."""
    import seqio

    registry.register()
    task = seqio.get_mixture_or_task(mixture_or_task_name)
    return sorted(t.name for t in getattr(task, "tasks", [task]))


def fitted_feature_lengths(mixture_or_task_name: str) -> dict[str, int]:
    """{"inputs": n, "targets": m} fitted to a mixture's train split (module docstring)."""
    return dict(_fitted(mixture_or_task_name))


def _example_lengths(task_name: str, mixture_or_task_name: str) -> list[tuple[int, int]]:
    """(inputs, targets) lengths in tokens, EOS included, of a built-in task's train split
    (for a held-out task, targets is its longest choice)."""
    corpora = registry.pretraining_corpora()
    if task_name in corpora:
        inputs, targets = registry.pretraining_examples("train", corpora[task_name])
        return [(len(x) + 1, len(y) + 1) for x, y in zip(inputs, targets, strict=True)]
    datasets = registry.generated_datasets()
    if task_name not in datasets:
        raise ValueError(
            f"task_feature_lengths: {task_name!r} (in {mixture_or_task_name!r}) is not a "
            "built-in task; set TASK_FEATURE_LENGTHS explicitly"
        )
    dataset, generator = datasets[task_name]
    return [
        (
            len(e["inputs"].encode()) + 1,
            max(len(x.encode()) for x in e.get("choices", [e.get("targets", "")])) + 1,
        )
        for e in registry.examples(dataset, generator, "train")
    ]


@functools.cache
def _fitted(mixture_or_task_name: str) -> dict[str, int]:
    n_in = n_t = sum_in = sum_t = 0
    for name in task_names(mixture_or_task_name):
        for i, t in _example_lengths(name, mixture_or_task_name):
            n_in, n_t = max(n_in, i), max(n_t, t)
            sum_in, sum_t = sum_in + i, sum_t + t
    inputs = _round_up(n_in, INPUT_QUANTUM)
    targets = _round_up(max(n_t, TARGET_SLACK * inputs * sum_t / sum_in), TARGET_QUANTUM)
    return {"inputs": inputs, "targets": targets}
