"""TensorBoard scalars without TensorBoard: `scalar_writer(logdir)(step, {name: value})`."""

import pathlib

import jax


def scalar_writer(logdir: pathlib.Path):
    """TensorBoard scalars on process 0 (a no-op elsewhere), written with TensorFlow's
    core `tf.summary.write` in the 'scalars' plugin format, so TensorBoard itself
    need not be installed."""
    if jax.process_index() != 0:
        return lambda step, metrics: None
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    writer = tf.summary.create_file_writer(str(logdir))
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"

    def write(step, metrics):
        with writer.as_default():
            for k, v in metrics.items():
                tf.summary.write(k, tf.constant(v, tf.float32), step=step, metadata=meta)
        writer.flush()

    return write
