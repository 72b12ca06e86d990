"""The network as one TensorFlow graph: TensorFlow set up once per process (threads, GPUs, quiet start-up),
and the Keras model wrapped from uint8 RGB pixels to features (:func:`inference_function`).

This is the ``tensorflow`` engine's predictor (:mod:`sparkvision.ml.engines`) and the graph the ONNX and
OpenVINO exports are converted from (:mod:`sparkvision.ml.engine_exports`). TensorFlow is imported only
when a function here runs.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from sparkvision.ml.models import registry
from sparkvision.run.spark import QUIET_ENV

log = logging.getLogger(__name__)

_TF_THREADS: int | None = None


def configure_tensorflow(threads: int, gpus: list[str] | None = None) -> None:
    """Set TF up once per process, before its first op (it raises if done later): CPU thread pools
    sized to the task's cores; on a GPU executor only the GPUs Spark gave this task, memory grown on
    demand (several workers may share one GPU)."""
    global _TF_THREADS
    if _TF_THREADS is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with quiet_native_stderr():
        import tensorflow as tf  # optional

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        devices = tf.config.list_physical_devices("GPU")
        if devices and gpus:
            devices = [d for d in devices if d.name.rsplit(":", 1)[-1] in gpus] or devices
            tf.config.set_visible_devices(devices, "GPU")
        for device in devices:
            tf.config.experimental.set_memory_growth(device, True)
    except RuntimeError:  # TF already initialised in this process (e.g. tests): keep its settings
        log.debug("TensorFlow already initialised; thread and device settings unchanged")
    _TF_THREADS = threads


@contextmanager
def quiet_native_stderr():
    """Silence what native code writes to stderr while TensorFlow loads (absl's pre-init notice, oneDNN's
    banner: TF_CPP_MIN_LOG_LEVEL does not reach them), unless the run is verbose. Python errors still raise."""
    if os.environ.get(QUIET_ENV) != "1":
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def inference_function(spec: registry.ModelSpec, model):
    """``model`` as one TF graph from uint8 RGB ``(n, size, size, 3)`` to features.

    The cast and the model's preprocessing run inside the graph instead of as NumPy passes over
    float copies of the batch. Where the registry says ``freeze_graph``, weights become graph
    constants, so TensorFlow's optimizer folds each batch normalisation into its convolution and
    fuses bias and activation into it: fewer passes over the activations, which on CPU is what
    bounds memory-heavy nets such as EfficientNet-Lite. The outputs equal the Keras model's up to
    float rounding.
    """
    import tensorflow as tf  # optional

    preprocess = spec.preprocess_fn()

    @tf.function(input_signature=[tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.uint8)],
                 autograph=False)
    def predict(pixels):
        return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

    graph = predict.get_concrete_function()
    if spec.freeze_graph:
        try:
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # optional
        except ImportError:  # moved in some TensorFlow release: run the graph with variables instead
            log.warning("featurizer: cannot freeze the %s graph with this TensorFlow; running it unfrozen",
                        spec.name)
        else:
            graph = convert_variables_to_constants_v2(graph)

    def features(pixels):
        out = graph(tf.convert_to_tensor(pixels, tf.uint8))
        return out[0] if isinstance(out, (list, tuple)) else out  # a frozen graph returns a list

    features.graph = graph
    return features
