"""``DeepImageFeaturizer``: images -> pooled CNN features, as a Spark ML Transformer.

Input is either encoded image bytes (``binaryFile``'s ``content``, the loader's output) or a Spark
image struct (``spark.read.format("image")``, sparkdl's ``readImages``), whose BGR pixels are turned
into RGB before the model's resize and preprocessing.

An iterator pandas UDF builds the Keras model once per Python worker (kept across tasks with
``spark.python.worker.reuse``), regroups the Arrow batches (sized by bytes) into full ``batchSize``
network batches, decodes them with Pillow and runs the network with TensorFlow's threads bounded to
the task's cores: one busy thread per task core, no oversubscription. On a GPU executor it uses the
task's GPUs and decodes the next batch on a helper thread while the device works. The stage
persists its parameters only: the model name and the sha256 of its weights file, which every
worker re-checks, so a saved pipeline never carries (or silently swaps) weights.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import images as imglib
from .columns import CONTENT, FEATURES
from .models import registry
from .models.weights import file_digest, resolve_weights
from .spark import QUIET_ENV

log = logging.getLogger(__name__)


class WeightsChecksumError(ValueError):
    pass


class _FeaturizerParams(HasInputCol, HasOutputCol):
    """The featurizer's parameters, with their defaults set once (shared by the transformer and its docs)."""

    modelName = Param(Params._dummy(), "modelName", "model name in the sparkvision registry", TypeConverters.toString)
    weightsPath = Param(Params._dummy(), "weightsPath", "explicit weights file (optional)", TypeConverters.toString)
    weightsChecksum = Param(
        Params._dummy(), "weightsChecksum", "sha256 of the weights file; set on first use and verified after",
        TypeConverters.toString,
    )
    cacheDir = Param(Params._dummy(), "cacheDir", "weights cache folder (optional)", TypeConverters.toString)
    mirrorUrl = Param(Params._dummy(), "mirrorUrl", "base URL of a weights mirror, without credentials (optional)",
                      TypeConverters.toString)
    allowDownload = Param(Params._dummy(), "allowDownload", "download missing weights from the mirror or origin",
                          TypeConverters.toBoolean)
    batchSize = Param(Params._dummy(), "batchSize", "images per network call", TypeConverters.toInt)
    numThreads = Param(
        Params._dummy(), "numThreads", "TensorFlow threads per task; 0 = the task's cores", TypeConverters.toInt
    )
    maxPixels = Param(Params._dummy(), "maxPixels", "largest image (pixels) decoded", TypeConverters.toInt)
    errorCol = Param(Params._dummy(), "errorCol",
                     "optional output column: why an image could not be featurized (null when it was)",
                     TypeConverters.toString)

    def __init__(self):
        super().__init__()
        self._setDefault(inputCol=CONTENT, outputCol=FEATURES, modelName=registry.DEFAULT_MODEL, allowDownload=True,
                         batchSize=32, numThreads=0, maxPixels=imglib.DEFAULT_MAX_PIXELS)

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def getWeightsPath(self) -> str | None:
        return self._opt(self.weightsPath)

    def getWeightsChecksum(self) -> str | None:
        return self._opt(self.weightsChecksum)

    def getCacheDir(self) -> str | None:
        return self._opt(self.cacheDir)

    def getMirrorUrl(self) -> str | None:
        return self._opt(self.mirrorUrl)

    def getAllowDownload(self) -> bool:
        return self.getOrDefault(self.allowDownload)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getNumThreads(self) -> int:
        return self.getOrDefault(self.numThreads)

    def getMaxPixels(self) -> int:
        return self.getOrDefault(self.maxPixels)

    def getErrorCol(self) -> str | None:
        return self._opt(self.errorCol)

    def _opt(self, param: Param):
        return self.getOrDefault(param) if self.isDefined(param) else None


class DeepImageFeaturizer(Transformer, _FeaturizerParams, DefaultParamsReadable, DefaultParamsWritable):
    """Featurize images with a pretrained ImageNet CNN (global-average-pooled, RGB, model's own preprocessing)."""

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, modelName: str | None = None,
                 weightsPath: str | None = None, weightsChecksum: str | None = None, cacheDir: str | None = None,
                 mirrorUrl: str | None = None, allowDownload: bool | None = None, batchSize: int | None = None,
                 numThreads: int | None = None, maxPixels: int | None = None, errorCol: str | None = None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        if kwargs.get("mirrorUrl"):
            from . import secrets

            kwargs["mirrorUrl"] = secrets.clean_mirror_url(kwargs["mirrorUrl"], "mirrorUrl")  # saved: no credentials
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def spec(self) -> registry.ModelSpec:
        return registry.get(self.getModelName())

    def resolveWeights(self) -> str:
        """Resolve the weights file here (driver), pin its sha256 in ``weightsChecksum`` and return its path.

        An explicit ``weightsPath`` is checked for this model (parseable, expected tensors and shapes) the
        first time; a saved featurizer whose ``weightsPath`` is gone finds the same file by its checksum.
        """
        spec = self.spec()
        pinned = self.getWeightsChecksum()
        path = resolve_weights(spec, self.getWeightsPath(), self.getCacheDir(), self.getMirrorUrl(),
                               allow_download=self.getAllowDownload(), expected_sha256=pinned)
        digest = file_digest(path)
        if pinned and pinned != digest:
            raise WeightsChecksumError(
                f"weights for {spec.name} at {path} have sha256 {digest}, but this featurizer was built with {pinned}"
            )
        if self.getWeightsPath() and not pinned:
            spec.check_weights(str(path))
        self._set(weightsChecksum=digest)
        return str(path)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        in_col = self.getInputCol()
        if in_col not in dataset.columns:
            raise ValueError(f"DeepImageFeaturizer: input column {in_col!r} not in {dataset.columns}")
        dtype = dataset.schema[in_col].dataType
        struct = is_image_struct(dtype)
        if not (struct or isinstance(dtype, T.BinaryType)):
            raise ValueError(
                f"DeepImageFeaturizer: input column {in_col!r} must hold encoded image bytes (binary) or a Spark "
                f"image struct (height, width, nChannels, mode, data), got {dtype.simpleString()}"
            )
        self.resolveWeights()
        udf = featurize_udf(WorkerModelKey.from_featurizer(self), self.getBatchSize(), self.getNumThreads(),
                            self.getMaxPixels(), struct)
        column = F.col(in_col)
        if struct:
            column = F.struct(*[F.col(f"{in_col}.{f}") for f in IMAGE_STRUCT_FIELDS])
        result = "_sparkvision_featurized"
        out = dataset.withColumn(result, udf(column))
        raw = F.col(f"{result}.features")
        out = out.withColumn(self.getOutputCol(), F.when(raw.isNotNull(), array_to_vector(raw)))  # null: see errorCol
        if self.getErrorCol():
            out = out.withColumn(self.getErrorCol(), F.col(f"{result}.error"))
        return out.drop(result)


IMAGE_STRUCT_FIELDS = ("height", "width", "nChannels", "mode", "data")


def is_image_struct(dtype: T.DataType) -> bool:
    return isinstance(dtype, T.StructType) and set(IMAGE_STRUCT_FIELDS) <= set(dtype.fieldNames())


class WorkerModelKey(tuple):
    """What a worker needs to find and verify the same weights: (model, path, cache, mirror, download, sha256)."""

    @classmethod
    def from_featurizer(cls, f: DeepImageFeaturizer) -> "WorkerModelKey":
        return cls((f.spec().name, f.getWeightsPath(), f.getCacheDir(), f.getMirrorUrl(), f.getAllowDownload(),
                    f.getWeightsChecksum()))


# Models built in this Python worker, most recently used last. A worker keeps at most this many networks
# (a pipeline rarely uses more than one; each can hold a GB), so a long-lived worker that sees many models
# does not grow without bound.
MAX_WORKER_MODELS = 2
_MODELS: "OrderedDict[tuple, tuple]" = OrderedDict()
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
        name, weights_path, cache_dir, mirror_url, allow_download, checksum = key
        spec = registry.get(name)
        path = resolve_weights(spec, weights_path, cache_dir, mirror_url, allow_download=allow_download,
                               expected_sha256=checksum)
        if file_digest(path) != checksum:
            raise WeightsChecksumError(
                f"worker found weights for {name} at {path} with sha256 {file_digest(path)}, driver pinned {checksum}"
            )
        predict = inference_function(spec, spec.build(str(path)))
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


# Per image: its features, or why it could not be used (a decode failure is data, not a task failure).
UDF_SCHEMA = T.StructType([T.StructField("features", T.ArrayType(T.FloatType())),
                           T.StructField("error", T.StringType())])


def featurize_udf(key: WorkerModelKey, batch_size: int, threads: int, max_pixels: int, struct: bool = False):
    """The pandas UDF: encoded bytes (a Series) or image structs (a DataFrame) -> ``(features, error)``."""

    def run(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources()["gpu"].addresses if ctx and "gpu" in ctx.resources() else None
        configure_tensorflow(threads or (ctx.cpus() if ctx else 1), gpus)
        _, spec = load_worker_model(key)

        def decode(item) -> np.ndarray:
            if struct:
                return imglib.resize_for_model(imglib.from_image_struct(*item), spec.input_size, spec.crop_fraction)
            return imglib.decode_for_model(item, spec.input_size, spec.crop_fraction, max_pixels)

        def decode_rows(rows: list) -> tuple[list[str | None], list[int], list[np.ndarray]]:
            errors: list[str | None] = [None] * len(rows)
            positions, arrays = [], []
            for i, item in enumerate(rows):
                try:
                    arrays.append(decode(item))
                    positions.append(i)
                except imglib.ImageRejected as exc:
                    errors[i] = str(exc)
            return errors, positions, arrays

        def network_batches():
            """Full ``batch_size`` chunks across Arrow batches (whose size is set by bytes), the rest last."""
            rows: list = []
            for batch in batches:
                rows.extend(batch.itertuples(index=False, name=None) if struct else batch)
                while len(rows) >= batch_size:
                    yield rows[:batch_size]
                    rows = rows[batch_size:]
            if rows:
                yield rows

        decoded = map(decode_rows, network_batches())
        if gpus:  # the device computes while the CPU decodes the next batch; on CPU it would oversubscribe
            decoded = _one_ahead(decoded)
        for errors, positions, arrays in decoded:
            out: list = [None] * len(errors)
            if arrays:
                for i, row in zip(positions, featurize_arrays(key, np.stack(arrays))):
                    out[i] = row
            yield pd.DataFrame({"features": out, "error": errors})

    if struct:
        @F.pandas_udf(UDF_SCHEMA)
        def featurize_structs(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            yield from run(batches)

        return featurize_structs

    @F.pandas_udf(UDF_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from run(batches)

    return featurize


_END = object()


def _one_ahead(items):
    """Iterate ``items`` with the next one computed on a helper thread meanwhile."""
    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="sparkvision-decode") as pool:
        pending = pool.submit(next, it, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, it, _END)
            yield item
