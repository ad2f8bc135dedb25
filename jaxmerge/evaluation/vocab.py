"""Tasks re-read with another vocabulary: a Hugging Face T5 directory brings its own.

The built-in tasks speak bytes (`jaxmerge.tasks.vocabulary()`); a Flan-T5 checkpoint was
trained on T5's SentencePiece model, shipped beside it as `spiece.model`. `with_vocabulary`
registers, for each task, a twin whose output features use that vocabulary, with the same
source, preprocessors, postprocessing and metrics, and returns the twins' names.
"""

import dataclasses
import hashlib
import pathlib
from collections.abc import Sequence

SENTENCEPIECE_FILE = "spiece.model"


def sentencepiece_model(checkpoint) -> pathlib.Path | None:
    """The checkpoint directory's `spiece.model`, if it has one."""
    path = pathlib.Path(checkpoint) / SENTENCEPIECE_FILE
    return path if path.is_file() else None


def with_vocabulary(task_names: Sequence[str], model_file: pathlib.Path) -> list[str]:
    """Registers (once) and returns `<task>.spm_<digest>` for each task, reading and writing
    text with the SentencePiece model in `model_file`."""
    import seqio

    vocabulary = seqio.SentencePieceVocabulary(str(model_file))
    digest = hashlib.sha256(pathlib.Path(model_file).read_bytes()).hexdigest()[:10]
    names = []
    for name in task_names:
        twin = f"{name}.spm_{digest}"
        if twin not in seqio.TaskRegistry.names():
            task = seqio.get_mixture_or_task(name)
            features = {
                key: dataclasses.replace(feature, vocabulary=vocabulary)
                for key, feature in task.output_features.items()
            }
            seqio.TaskRegistry.add(
                twin,
                source=task.source,
                output_features=features,
                preprocessors=task.preprocessors,
                postprocess_fn=task.postprocessor,
                metric_objs=task.metric_objs,
            )
        names.append(twin)
    return names
