"""The console shows jaxmerge's lines; the libraries' start-up logs only at --verbosity debug.

TensorFlow (seqio's tf.data) and XLA log from C++ through absl before anything can
configure them ("All log messages before absl::InitializeLog()", oneDNN notes, CUDA stubs,
cuInit failures on machines without a GPU), gin logs "Path not found" for each search path
it tries, JAX warns while probing for GPU/TPU backends, seqio notes uncached datasets.
None of it is about the run. `quiet_libraries` filters the Python-side logs;
`import_tensorflow` imports TensorFlow with the process's stderr set aside, and hides
GPUs from it (JAX owns the accelerators; TensorFlow only feeds data, as in T5X).
"""

import contextlib
import logging
import os
import sys
import tempfile

_quieted = False


class _LibraryNoise(logging.Filter):
    """Drops the libraries' start-up chatter that says nothing about the run: gin's
    "Path not found" for every search path it tries before the one that has the file,
    JAX's probing for GPU/TPU backends, and seqio's notes on uncached datasets."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno >= logging.ERROR and "Path not found" in text:
            return "gin" not in record.pathname
        return not record.name.startswith(("jax._src.xla_bridge", "absl")) or (
            record.levelno >= logging.ERROR
        )


def quiet_libraries(verbosity: str) -> None:
    """The console shows jaxmerge's lines; the libraries' only at --verbosity debug.

    Must run before TensorFlow or JAX is imported: their C++ logs (oneDNN, CUDA stubs,
    absl's InitializeLog note) are set by environment variables read at import.
    """
    global _quieted
    if verbosity == "debug" or _quieted:
        return
    _quieted = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ INFO/WARNING
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")  # absl C++ (XLA, TensorStore)
    noise = _LibraryNoise()
    logging.getLogger().addFilter(noise)
    for handler in logging.getLogger().handlers:
        handler.addFilter(noise)
    for name in ("jax._src.xla_bridge", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.lastResort.addFilter(noise)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


_tensorflow_imported = False


@contextlib.contextmanager
def _stderr_aside(verbosity: str):
    """File descriptor 2 goes to a temporary file for the block (C++ logs included); what
    it caught is replayed on stderr at --verbosity debug, or if the block raised."""
    if verbosity == "debug":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                caught.seek(0)
                sys.stderr.write(caught.read().decode(errors="replace"))


def import_tensorflow(verbosity: str = "info"):
    """Imports TensorFlow quietly (once), without GPUs; returns the module."""
    global _tensorflow_imported
    with _stderr_aside("debug" if _tensorflow_imported else verbosity):
        import tensorflow as tf

        if not _tensorflow_imported:
            tf.config.set_visible_devices([], "GPU")
            _tensorflow_imported = True
    return tf
