"""sparkdl's ``KerasImageFileEstimator``: fine-tune a user's saved Keras model on images given by URI and get a
Spark ML Model (a :class:`KerasImageFileModel`, sparkdl's ``KerasImageFileTransformer`` on the fitted model).

    estimator = KerasImageFileEstimator(inputCol="uri", outputCol="probabilities", labelCol="one_hot",
                                        modelFile="head.keras", imageLoader=load_and_preprocess,
                                        kerasOptimizer="adam", kerasLoss="categorical_crossentropy",
                                        kerasFitParams={"epochs": 5, "batch_size": 32})
    model = estimator.fit(train)                       # or inside CrossValidator, over kerasFitParams
    model.transform(test)

How it trains: ``imageLoader`` runs on the executors (as in the transformer); its arrays are kept there
(``persist``, spilling to disk) as float32 bytes, and each epoch streams them to the driver partition by
partition (``toLocalIterator``), in a new random order when ``shuffle`` is on, into ``train_on_batch``. The
driver holds one partition and one batch at a time, never the training set: sparkdl collected every image to
the driver and broadcast it, which ran drivers out of memory. Over Spark Connect the same runs in the client.

``kerasFitParams`` takes ``epochs`` (1), ``batch_size`` (32), ``shuffle`` (True), ``verbose`` (0),
``class_weight``; anything else is an error naming the key (``validation_split``, ``callbacks``: evaluate with a
Spark evaluator, e.g. inside ``CrossValidator``). ``kerasOptimizer`` is a Keras optimizer name or config dict,
``kerasLoss`` a loss name. Labels (``labelCol``) are vectors (one-hot, as sparkdl required), arrays or numbers
(for sparse losses). The fitted model's per-epoch mean loss is in ``model.history``.

Where it differs from sparkdl (said once per fit, as a SparkdlCompatWarning): a URI whose loader raises is
left out of training, and the fit warns naming it (sparkdl dropped it silently); ``fitMultiple`` fits one param
map after another in the driver (sparkdl trained each in a Spark task, from the broadcast data).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import StorageLevel, keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasSeed
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.run import storage
from sparkvision.run.layout import join
from sparkvision.compat._common import ShippedModel, SparkdlCompatWarning
from sparkvision.compat.keras_transformers import (ImageLoaderContractError, KerasImageFileTransformer, _ImageFileParams,
                                 _input_shape, load_input, resolve_callable)

FIT_DEFAULTS = {"epochs": 1, "batch_size": 32, "shuffle": True, "verbose": 0, "class_weight": None}
# Bytes of loaded arrays per partition streamed to the driver: the most it holds besides one batch.
PARTITION_BYTES = 64 * 2**20
SAVED_MODEL_NAME = "kerasModel"  # the fitted Keras file inside a saved KerasImageFileModel folder


def _to_fit_params(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"kerasFitParams must be a dict, got {value!r}")
    unknown = sorted(set(value) - set(FIT_DEFAULTS))
    if unknown:
        raise ValueError(f"kerasFitParams: {', '.join(map(repr, unknown))} not supported; the supported keys are "
                         f"{', '.join(FIT_DEFAULTS)} (evaluate with a Spark evaluator instead of validation_split)")
    for key in ("epochs", "batch_size"):
        if key in value and (not isinstance(value[key], int) or value[key] < 1):
            raise ValueError(f"kerasFitParams: {key} must be a positive integer, got {value[key]!r}")
    return dict(value)


def _to_optimizer(value):
    if isinstance(value, (str, dict)):
        return value
    raise TypeError(f"kerasOptimizer must be a Keras optimizer name (e.g. 'adam') or its config dict, got {value!r}")


class KerasImageFileEstimator(Estimator, _ImageFileParams, HasLabelCol, HasSeed, DefaultParamsReadable,
                              DefaultParamsWritable):
    """Fit a saved Keras model (``modelFile``) on images loaded by ``imageLoader``; see the module docstring."""

    kerasOptimizer = Param(Params._dummy(), "kerasOptimizer", "Keras optimizer name or config dict", _to_optimizer)
    kerasLoss = Param(Params._dummy(), "kerasLoss", "Keras loss name", TypeConverters.toString)
    kerasFitParams = Param(Params._dummy(), "kerasFitParams",
                           f"dict of fit parameters: {', '.join(FIT_DEFAULTS)}", _to_fit_params)

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, outputMode: str | None = None,
                 labelCol: str | None = None, modelFile: str | None = None, imageLoader=None,
                 kerasOptimizer=None, kerasLoss: str | None = None, kerasFitParams: dict | None = None,
                 batchSize: int | None = None, errorCol: str | None = None, seed: int | None = None):
        super().__init__()
        self._setDefault(kerasFitParams={}, labelCol="label")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set_checked(kwargs)

    def getKerasOptimizer(self):
        return self._required(self.kerasOptimizer)

    def getKerasLoss(self) -> str:
        return self._required(self.kerasLoss)

    def getKerasFitParams(self) -> dict:
        return {**FIT_DEFAULTS, **self.getOrDefault(self.kerasFitParams)}

    def _required(self, param: Param):
        if not self.isDefined(param):
            raise ValueError(f"KerasImageFileEstimator: {param.name} is not set")
        return self.getOrDefault(param)

    def write(self):
        self._check_saveable()
        return super().write()

    def _labels(self, dataset: DataFrame):
        col = self.getLabelCol()
        if col not in dataset.columns:
            raise ValueError(f"KerasImageFileEstimator: label column {col!r} not in {dataset.columns}")
        dtype = dataset.schema[col].dataType
        if isinstance(dtype, VectorUDT):
            return vector_to_array(F.col(col), "float32")
        if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
            return F.col(col).cast("array<float>")
        if isinstance(dtype, T.NumericType):
            return F.col(col).cast("float")
        raise ValueError(f"KerasImageFileEstimator: label column {col!r} must be a vector (one-hot), an array of "
                         f"numbers or a number, got {dtype.simpleString()}")

    def _fit(self, dataset: DataFrame) -> "KerasImageFileModel":
        self._check_input(dataset, T.StringType)
        fit = self.getKerasFitParams()
        optimizer, loss = self.getKerasOptimizer(), self.getKerasLoss()
        loader = self.getImageLoader()
        resolve_callable(loader)  # an unimportable name fails here
        shipped, model = self._shipped()
        shape = _input_shape(model)
        if any(d is None for d in shape):
            raise ValueError(f"KerasImageFileEstimator: {self.getModelFile()} takes inputs of shape {shape}; a fixed "
                             "shape is needed to stream the loaded arrays")
        label, col = self._labels(dataset), self.getLabelCol()
        nulls = dataset.filter(F.col(col).isNull()).count()
        if nulls:
            raise ValueError(f"KerasImageFileEstimator: label column {col!r} has {nulls} null values")
        loaded = dataset.select(F.col(self.getInputCol()).alias("uri"),
                                _load_udf(loader, shape)(F.col(self.getInputCol())).alias("_x"),
                                label.alias("y")).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = loaded.agg(F.count(F.lit(1)).alias("n"), F.count("_x.x").alias("ok")).first()
            failed = [(r.uri, r.error) for r in loaded.filter(F.col("_x.x").isNull()).select("uri", "_x.error")
                      .orderBy("uri").limit(5).collect()]
            if counts["ok"] == 0:
                raise ValueError(f"KerasImageFileEstimator: imageLoader gave no array for any of the {counts['n']} rows"
                                 + (f", e.g. {failed[0][0]}: {failed[0][1]}" if failed else ""))
            left_out = (f"{counts['n'] - counts['ok']} of {counts['n']} rows left out because imageLoader failed: "
                        + "; ".join(f"{u} ({e})" for u, e in failed) + ". ") if failed else ""
            _warn(f"sparkvision.compat.sparkdl.KerasImageFileEstimator: {left_out}Training data stay on the executors "
                  "and stream to the driver one partition at a time; param maps are fitted one after another. See "
                  "sparkvision.compat.keras_estimator's docstring.")
            row_bytes = 4 * int(np.prod(shape))
            parts = max(1, math.ceil(counts["ok"] * row_bytes / PARTITION_BYTES))
            train = loaded.filter(F.col("_x.x").isNotNull()).select(F.col("_x.x").alias("x"), "y")
            fitted, history = _train(shipped, optimizer, loss, fit, train, parts, shape, self.getSeed())
        finally:
            loaded.unpersist()
        path = _fitted_file(fitted)
        out = self._copyValues(KerasImageFileModel())
        out._set(modelFile=path)
        out.history = {"loss": history}
        return out


def _warn(message: str) -> None:
    warnings.warn(message, SparkdlCompatWarning, stacklevel=4)


def _load_udf(loader, shape: tuple):
    """Each URI's array from ``imageLoader`` as float32 bytes, or why there is none."""
    schema = T.StructType([T.StructField("x", T.BinaryType()), T.StructField("error", T.StringType())])

    @F.pandas_udf(schema)
    def load(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        fn = resolve_callable(loader)
        for uris in batches:
            xs, errors = [], []
            for uri in uris:
                try:
                    if uri is None:
                        raise ValueError("null URI")
                    xs.append(np.ascontiguousarray(load_input(fn, uri, shape, "KerasImageFileEstimator"),
                                                   dtype=np.float32).tobytes())
                    errors.append(None)
                except ImageLoaderContractError:
                    raise  # a loader that returns the wrong shape is a bug: fail with its message
                except Exception as exc:
                    xs.append(None)
                    errors.append(f"{type(exc).__name__}: {exc}")
            yield pd.DataFrame({"x": xs, "error": errors})

    return load


def _batches(train: DataFrame, batch_size: int, shape: tuple) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` batches streamed from the executors: one partition and one batch in the driver at a time."""
    xs, ys = [], []
    for row in train.toLocalIterator():
        xs.append(np.frombuffer(row["x"], dtype=np.float32).reshape(shape))
        ys.append(np.asarray(row["y"], dtype=np.float32))
        if len(xs) == batch_size:
            yield np.stack(xs), np.stack(ys)
            xs, ys = [], []
    if xs:
        yield np.stack(xs), np.stack(ys)


def _train(shipped: ShippedModel, optimizer, loss: str, fit: dict, train: DataFrame, parts: int, shape: tuple,
           seed: int):
    """A fresh copy of the model compiled and trained for ``fit['epochs']``; returns it and its per-epoch mean loss."""
    import keras  # optional

    model = shipped.fresh()
    model.compile(optimizer=keras.optimizers.get(optimizer), loss=loss)
    class_weight = fit["class_weight"]
    if class_weight is not None:
        class_weight = {int(k): float(v) for k, v in class_weight.items()}  # JSON (a saved stage) makes keys strings
    data = train.repartition(parts)
    history = []
    for epoch in range(fit["epochs"]):
        epoch_data = data.orderBy(F.rand(seed + epoch)).repartition(parts) if fit["shuffle"] else data
        total, seen = 0.0, 0
        for x, y in _batches(epoch_data, fit["batch_size"], shape):
            logs = model.train_on_batch(x, y, class_weight=class_weight, return_dict=True)
            total, seen = total + float(logs["loss"]) * len(x), seen + len(x)
        history.append(total / seen)
        if fit["verbose"]:
            print(f"KerasImageFileEstimator: epoch {epoch + 1}/{fit['epochs']}: loss {history[-1]:.4f} ({seen} images)")
    return model, history


def _fitted_file(model) -> str:
    """The fitted model saved where this process can read it until it ends (``KerasImageFileModel.save`` keeps
    a copy in the saved stage)."""
    folder = tempfile.mkdtemp(prefix="sparkvision-keras-fit-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, f"{SAVED_MODEL_NAME}.keras")
    model.save(path)
    return path


class _ModelWriter(DefaultParamsWriter):
    def saveImpl(self, path: str) -> None:
        super().saveImpl(path)
        source = self.instance.getModelFile()
        storage.write_bytes(join(path, SAVED_MODEL_NAME + os.path.splitext(source)[1]), storage.read_bytes(source))


class _ModelReader(DefaultParamsReader):
    def load(self, path: str) -> "KerasImageFileModel":
        model = super().load(path)
        suffix = os.path.splitext(model.getModelFile())[1]
        model._set(modelFile=join(path, SAVED_MODEL_NAME + suffix))
        return model


class KerasImageFileModel(KerasImageFileTransformer, Model):
    """What :class:`KerasImageFileEstimator` fits: a KerasImageFileTransformer on the fitted Keras model, which
    ``save`` copies into the saved folder (so the stage reloads anywhere, unlike a path to a temporary file)."""

    history: dict = {}

    def write(self):
        self._check_saveable()
        return _ModelWriter(self)

    @classmethod
    def read(cls):
        return _ModelReader(cls)
