"""The network in one process, without Spark: weights found and verified, the network loaded once on
its engine (:mod:`sparkvision.ml.engines`: a graph exported once per machine for ONNX Runtime / OpenVINO,
or the Keras model run as one TensorFlow graph) from uint8 RGB pixels to features, with the one decode
path of :mod:`sparkvision.run.images`.

The Spark featurizer's UDF (:mod:`sparkvision.ml.featurizer`) and the MLflow pyfunc model
(:mod:`sparkvision.ml.image_model`, :mod:`sparkvision.tracking.pyfunc_model`) both call these functions, so a model served without Spark computes the
same features as the Spark stage. Nothing here imports PySpark.
"""

from __future__ import annotations

from sparkvision.errors import WeightsChecksumError
import gc
import logging
import os
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from sparkvision.run import images as imglib
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import file_digest, resolve_weights

log = logging.getLogger(__name__)

# Set (to "1") in processes whose native libraries should keep quiet (see :func:`quiet_native_stderr`).
QUIET_ENV = "SPARKVISION_QUIET"


class WorkerModelKey(tuple):
    """What a process needs to find, verify and run the same network:
    (model, path, cache, mirror, download, sha256, engine, precision)."""

    @classmethod
    def of(cls, name: str, weights_path: str | None, cache_dir: str | None, mirror_url: str | None,
           allow_download: bool, checksum: str | None, engine: str = "auto", precision: str = "fp32"
           ) -> "WorkerModelKey":
        return cls((name, weights_path, cache_dir, mirror_url, allow_download, checksum, engine, precision))


# Models built in this Python worker, most recently used last. A worker keeps at most this many networks
# (a pipeline rarely uses more than one; each can hold a GB), so a long-lived worker that sees many models
# does not grow without bound.
MAX_WORKER_MODELS = 2
_MODELS: "OrderedDict[tuple, tuple]" = OrderedDict()
_TF_THREADS: int | None = None
# This process's share of the machine, set once by its first task (see :func:`configure`).
_THREADS: int | None = None
_GPUS: list[str] | None = None


def configure(threads: int, gpus: list[str] | None = None) -> None:
    """Record this process's inference threads and GPUs (the first task's); engines are set up with them
    when they load. Nothing is imported here: a worker running ONNX Runtime never imports TensorFlow."""
    global _THREADS, _GPUS
    if _THREADS is None:
        _THREADS, _GPUS = max(1, threads), gpus or None


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
        import tensorflow as tf

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


def load_worker_model(key: WorkerModelKey):
    """``(predict_fn, spec)`` for this process, built once and cached; ``predict_fn`` takes uint8 RGB."""
    if key in _MODELS:
        _MODELS.move_to_end(key)
    else:
        from sparkvision.ml import engines

        name, weights_path, cache_dir, mirror_url, allow_download, checksum, engine, precision = key
        spec = registry.get(name)
        path = resolve_weights(spec, weights_path, cache_dir, mirror_url, allow_download=allow_download,
                               expected_sha256=checksum)
        if file_digest(path) != checksum:
            raise WeightsChecksumError(
                f"worker found weights for {name} at {path} with sha256 {file_digest(path)}, driver pinned {checksum}"
            )
        threads = _THREADS or 1
        concrete = engines.resolve(engine, precision, gpu=bool(_GPUS))
        if concrete == "tensorflow":
            configure_tensorflow(threads, _GPUS)
            predict = inference_function(spec, spec.build(str(path)))
        else:  # a ready graph exported once per machine: no TensorFlow in this process
            predict = engines.build(spec, str(path), concrete, precision, threads, cache_dir, checksum)
        predict.engine = concrete
        predict(np.zeros([1, spec.input_size, spec.input_size, 3], np.uint8))  # optimise the graph now
        while len(_MODELS) >= MAX_WORKER_MODELS:
            _MODELS.popitem(last=False)
            gc.unfreeze()  # the evicted model's objects were frozen with the rest: let them be collected
            gc.collect()
        _MODELS[key] = (predict, spec)
        # PySpark's daemon runs gc.collect() after every task of a reused worker; over TensorFlow's and
        # Keras' objects that took ~0.3 s per task here. Collect once (a frozen graph leaves the Keras
        # model garbage), then freeze what is left: none of it will become garbage.
        gc.collect()
        gc.freeze()
    return _MODELS[key]


def inference_function(spec: registry.ModelSpec, model):
    """``model`` as one TF graph from uint8 RGB ``(n, size, size, 3)`` to features.

    The cast and the model's preprocessing run inside the graph instead of as NumPy passes over
    float copies of the batch. Where the registry says ``freeze_graph``, weights become graph
    constants, so TensorFlow's optimizer folds each batch normalisation into its convolution and
    fuses bias and activation into it: fewer passes over the activations, which on CPU is what
    bounds memory-heavy nets such as EfficientNet-Lite. The outputs equal the Keras model's up to
    float rounding.
    """
    import tensorflow as tf

    preprocess = spec.preprocess_fn()

    @tf.function(input_signature=[tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.uint8)],
                 autograph=False)
    def predict(pixels):
        return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

    graph = predict.get_concrete_function()
    if spec.freeze_graph:
        try:
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
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


def featurize_arrays(key: WorkerModelKey, batch: np.ndarray) -> np.ndarray:
    """Features for a ``(n, size, size, 3)`` uint8 RGB batch (what the UDF runs per batch)."""
    predict, _ = load_worker_model(key)
    return np.asarray(predict(np.asarray(batch, dtype=np.uint8)))


def decode_rows(rows: list, spec: registry.ModelSpec, max_pixels: int, struct: bool = False, draft: bool = False
                ) -> tuple[list[str | None], list[int], list[np.ndarray]]:
    """Encoded images (or Spark image-struct tuples) -> ``(errors, positions, arrays)``: one reason or
    ``None`` per row, and the model-sized uint8 RGB arrays of the rows that decoded, with their positions."""
    errors: list[str | None] = [None] * len(rows)
    positions, arrays = [], []
    for i, item in enumerate(rows):
        try:
            if struct:
                arrays.append(imglib.resize_for_model(imglib.from_image_struct(*item), spec.input_size,
                                                      spec.crop_fraction))
            else:
                arrays.append(imglib.decode_for_model(item, spec.input_size, spec.crop_fraction, max_pixels, draft))
            positions.append(i)
        except imglib.ImageRejected as exc:
            errors[i] = str(exc)
    return errors, positions, arrays
