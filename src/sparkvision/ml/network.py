"""The network in one process, without Spark: weights found and verified, the network loaded once per
process on its engine (:mod:`sparkvision.ml.engines`: a graph exported once per machine for ONNX Runtime /
OpenVINO, or the Keras model run as one TensorFlow graph, :mod:`sparkvision.ml.graph`) from uint8 RGB
pixels to features, with the one decode path of :mod:`sparkvision.run.images`.

The Spark featurizer's UDF (:mod:`sparkvision.ml.featurizer`) and the MLflow pyfunc model
(:mod:`sparkvision.ml.image_model`, :mod:`sparkvision.tracking.pyfunc_model`) both call these functions, so a model served without Spark computes the
same features as the Spark stage. Nothing here imports PySpark.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict

import numpy as np

from sparkvision.errors import WeightsChecksumError
from sparkvision.ml import engines
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import file_digest, resolve_weights
from sparkvision.run import images as imglib

log = logging.getLogger(__name__)


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
# This process's share of the machine, set once by its first task (see :func:`configure`).
_THREADS: int | None = None
_GPUS: list[str] | None = None


def configure(threads: int, gpus: list[str] | None = None) -> None:
    """Record this process's inference threads and GPUs (the first task's); engines are set up with them
    when they load. Nothing is imported here: a worker running ONNX Runtime never imports TensorFlow."""
    global _THREADS, _GPUS
    if _THREADS is None:
        _THREADS, _GPUS = max(1, threads), gpus or None


def load_worker_model(key: WorkerModelKey):
    """``(predict_fn, spec)`` for this process, built once and cached; ``predict_fn`` takes uint8 RGB."""
    if key in _MODELS:
        _MODELS.move_to_end(key)
    else:
        name, weights_path, cache_dir, mirror_url, allow_download, checksum, engine, precision = key
        spec = registry.get(name)
        path = resolve_weights(spec, weights_path, cache_dir, mirror_url, allow_download=allow_download,
                               expected_sha256=checksum)
        if file_digest(path) != checksum:
            raise WeightsChecksumError(
                f"worker found weights for {name} at {path} with sha256 {file_digest(path)}, driver pinned {checksum}"
            )
        concrete = engines.resolve(engine, precision, gpu=bool(_GPUS))
        # TensorFlow: the Keras model as one graph; else a ready graph exported once per machine (no TensorFlow here)
        predict = engines.build(spec, str(path), concrete, precision, _THREADS or 1, cache_dir, checksum, gpus=_GPUS)
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
