"""``DeepImageFeaturizer``: images -> pooled CNN features, as a Spark ML Transformer.

Input is either encoded image bytes (``binaryFile``'s ``content``, the loader's output) or a Spark
image struct (``spark.read.format("image")``, sparkdl's ``readImages``), whose BGR pixels are turned
into RGB before the model's resize and preprocessing.

An iterator pandas UDF loads the network once per Python worker (kept across tasks with
``spark.python.worker.reuse``) on the chosen ``engine`` (:mod:`sparkvision.ml.engines`: ONNX Runtime or
OpenVINO load a graph exported once per machine, TensorFlow builds the Keras model), regroups the
Arrow batches (sized by bytes) into full ``batchSize`` network batches, decodes them with Pillow and
runs the network with its threads bounded to the task's cores: one busy thread per task core, no
oversubscription. On a GPU executor ``auto`` means TensorFlow on the task's GPUs, and the next batch
is decoded on a helper thread while the device works. The stage persists its parameters only (the
engine among them; a saved pipeline runs on any engine by changing that parameter): the model name
and the sha256 of its weights file, which every worker re-checks, so a saved pipeline never carries
(or silently swaps) weights.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
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

from sparkvision import secrets
from sparkvision.columns import CONTENT, FEATURES
from sparkvision.ml import engines
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import file_digest, resolve_weights
from sparkvision.ml.network import (WeightsChecksumError, WorkerModelKey, configure, decode_rows, featurize_arrays,
                                    load_worker_model)
from sparkvision.run.spark import bound_arrow_batches, is_remote
from sparkvision.settings import DataSettings, FeaturizeSettings, NetworkSettings

log = logging.getLogger(__name__)

# The Params' defaults are the settings' defaults (sparkvision.settings writes them once), through the same
# bridge a run's settings take; unset keys (no weights file, cache or mirror) stay without a default.
PARAM_DEFAULTS = {name: value for name, value in
                  FeaturizeSettings().to_params(NetworkSettings(), DataSettings().max_pixels).items()
                  if value is not None}


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
    engine = Param(Params._dummy(), "engine",
                   "inference engine: auto (fastest installed on CPU, TensorFlow on a GPU), tensorflow, onnxruntime, "
                   "openvino", TypeConverters.toString)
    precision = Param(Params._dummy(), "precision", "fp32, or bf16 (openvino on a CPU with bf16)",
                      TypeConverters.toString)
    draft = Param(Params._dummy(), "draft", "decode large JPEGs at a reduced scale before the resize (Pillow draft)",
                  TypeConverters.toBoolean)
    errorCol = Param(Params._dummy(), "errorCol",
                     "optional output column: why an image could not be featurized (null when it was)",
                     TypeConverters.toString)

    def __init__(self):
        super().__init__()
        self._setDefault(inputCol=CONTENT, outputCol=FEATURES, **PARAM_DEFAULTS)

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

    def getEngine(self) -> str:
        return self.getOrDefault(self.engine)

    def getPrecision(self) -> str:
        return self.getOrDefault(self.precision)

    def getDraft(self) -> bool:
        return self.getOrDefault(self.draft)

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
                 numThreads: int | None = None, maxPixels: int | None = None, engine: str | None = None,
                 precision: str | None = None, draft: bool | None = None, errorCol: str | None = None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        if kwargs.get("mirrorUrl"):
            kwargs["mirrorUrl"] = secrets.clean_mirror_url(kwargs["mirrorUrl"], "mirrorUrl")  # saved: no credentials
        if kwargs.get("engine") is not None and kwargs["engine"] not in (engines.AUTO, *engines.ENGINES):
            raise ValueError(f"DeepImageFeaturizer: engine {kwargs['engine']!r} is not one of "
                             f"{', '.join((engines.AUTO, *engines.ENGINES))}")
        if kwargs.get("precision") is not None and kwargs["precision"] not in engines.PRECISIONS:
            raise ValueError(f"DeepImageFeaturizer: precision {kwargs['precision']!r} is not one of "
                             f"{', '.join(engines.PRECISIONS)}")
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

    def resolveEngine(self, gpu: bool = False, strict: bool = True) -> str:
        """The engine ``engine`` means in this Python (``auto`` resolved), or :class:`engines.EngineError`.

        Workers resolve ``auto`` again for themselves (TensorFlow where Spark assigned the task a GPU).
        ``strict=False`` (a Spark Connect client, whose Python need not have the workers' packages): the
        requested name when this Python cannot tell, and the workers raise if they cannot run it either."""
        try:
            return engines.resolve(self.getEngine(), self.getPrecision(), gpu)
        except engines.EngineError as exc:
            if strict:
                raise
            log.warning("featurizer: cannot check engine %s here (%s); the workers will", self.getEngine(), exc)
            return self.getEngine()

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
        bound_arrow_batches(dataset.sparkSession)
        # A clear error here, not in every task, when the engine cannot run (over Spark Connect this client's
        # Python is not the workers': there the workers decide).
        self.resolveEngine(strict=not is_remote(dataset.sparkSession))
        key = WorkerModelKey.of(self.spec().name, self.getWeightsPath(), self.getCacheDir(), self.getMirrorUrl(),
                                self.getAllowDownload(), self.getWeightsChecksum(), self.getEngine(),
                                self.getPrecision())
        udf = featurize_udf(key, self.getBatchSize(), self.getNumThreads(),
                            self.getMaxPixels(), struct, self.getDraft())
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


# Per image: its features, or why it could not be used (a decode failure is data, not a task failure).
UDF_SCHEMA = T.StructType([T.StructField("features", T.ArrayType(T.FloatType())),
                           T.StructField("error", T.StringType())])


def featurize_udf(key: WorkerModelKey, batch_size: int, threads: int, max_pixels: int, struct: bool = False,
                  draft: bool = False):
    """The pandas UDF: encoded bytes (a Series) or image structs (a DataFrame) -> ``(features, error)``."""

    def run(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources()["gpu"].addresses if ctx and "gpu" in ctx.resources() else None
        configure(threads or (ctx.cpus() if ctx else 1), gpus)
        _, spec = load_worker_model(key)

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

        decoded = (decode_rows(rows, spec, max_pixels, struct, draft) for rows in network_batches())
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
