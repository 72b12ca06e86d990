"""sparkdl's ``KerasImageFileTransformer`` and ``KerasTransformer``: a user's saved Keras model (``.keras`` or
``.h5``) applied to a column of image URIs or of float arrays.

The model file is read on the driver, carried to the workers with the UDF and loaded once per Python worker
(:mod:`sparkvision.compat._common`, keyed by path and sha256: a changed file is reloaded); rows go through it in batches of
``batchSize``. The stages persist their parameters only: ``modelFile`` is a path, read again when the loaded
stage transforms.

Where they differ from sparkdl (said once each, as a SparkdlCompatWarning):

* a URI whose ``imageLoader`` raises gets a null output (sparkdl's too) and its reason in ``errorCol`` when set,
  and a worker log line naming it; an array the model cannot take (wrong shape) fails the job with an error
  naming the URI instead of feeding the model wrong data;
* ``imageLoader`` may be a ``"module:function"`` name, which a saved stage keeps; a Python function cannot be
  saved (``save`` says so);
* ``outputMode="image"`` structs carry the URI as ``origin`` and the output's own channel count;
* ``KerasTransformer`` reshapes each row to the model's input shape (so 2-D and image inputs work too); a row of
  the wrong length is an error naming the column, a null row a null output.
"""

from __future__ import annotations

from sparkvision.errors import ImageLoaderContractError
import importlib
import logging
import warnings
from typing import Callable, Iterator

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

from sparkvision.compat._common import ShippedModel, SparkdlCompatWarning, task_threads

log = logging.getLogger(__name__)

OUTPUT_MODES = ("vector", "image")
FLOAT_IMAGE_SCHEMA = T.StructType([
    T.StructField("origin", T.StringType(), True),
    T.StructField("height", T.IntegerType(), True),
    T.StructField("width", T.IntegerType(), True),
    T.StructField("nChannels", T.IntegerType(), True),
    T.StructField("mode", T.IntegerType(), True),
    T.StructField("data", T.BinaryType(), True),
])


def cv_32f_mode(channels: int) -> int:
    """OpenCV's type code for ``channels`` float32 channels (CV_32FC1 = 5, CV_32FC3 = 21, ...)."""
    return 5 + 8 * (channels - 1)


def _to_loader(value):
    if callable(value):
        return value
    if isinstance(value, str) and ":" in value:
        return value
    raise TypeError(f"imageLoader must be a function uri -> numpy array or a 'module:function' name, got {value!r}")


def resolve_callable(value) -> Callable:
    """A function, or the function a ``"module:function"`` name points to."""
    if callable(value):
        return value
    module, _, name = value.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"imageLoader {value!r} cannot be imported: {exc}") from exc


class _KerasParams(HasInputCol, HasOutputCol):
    """The Keras stages' shared parameters, with their defaults set once."""

    modelFile = Param(Params._dummy(), "modelFile", "saved Keras model (.keras or .h5)", TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "rows per model call", TypeConverters.toInt)

    def __init__(self):
        super().__init__()
        self._setDefault(batchSize=32)

    def getModelFile(self) -> str:
        if not self.isDefined(self.modelFile):
            raise ValueError(f"{type(self).__name__}: modelFile is not set")
        return self.getOrDefault(self.modelFile)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def _check_input(self, dataset: DataFrame, *types: type) -> T.DataType:
        col = self.getInputCol()
        if col not in dataset.columns:
            raise ValueError(f"{type(self).__name__}: input column {col!r} not in {dataset.columns}")
        dtype = dataset.schema[col].dataType
        if not isinstance(dtype, types):
            raise ValueError(f"{type(self).__name__}: input column {col!r} must be "
                             f"{' or '.join(t.typeName() for t in types)}, got {dtype.simpleString()}")
        return dtype

    def _shipped(self) -> tuple[ShippedModel, object]:
        """The model file read here, and the model loaded here (a clear error now, not in every task)."""
        shipped = ShippedModel.keras_file(self.getModelFile(), f"{type(self).__name__} modelFile")
        return shipped, shipped.load()


class _ImageFileParams(_KerasParams):
    imageLoader = Param(Params._dummy(), "imageLoader",
                        "function (or 'module:function' name) URI -> preprocessed RGB numpy array of the model's "
                        "input shape, with or without a leading batch dimension of 1", _to_loader)
    outputMode = Param(Params._dummy(), "outputMode", "'vector' (a Vector) or 'image' (a float32 image struct)",
                       TypeConverters.toString)
    errorCol = Param(Params._dummy(), "errorCol", "optional output column: why a URI gave no output",
                     TypeConverters.toString)

    def __init__(self):
        super().__init__()
        self._setDefault(outputMode="vector")

    def getImageLoader(self):
        if not self.isDefined(self.imageLoader):
            raise ValueError(f"{type(self).__name__}: imageLoader is not set")
        return self.getOrDefault(self.imageLoader)

    def getOutputMode(self) -> str:
        return self.getOrDefault(self.outputMode)

    def getErrorCol(self) -> str | None:
        return self.getOrDefault(self.errorCol) if self.isDefined(self.errorCol) else None

    def _set_checked(self, kwargs: dict):
        """``setParams``: the given (non-None) values, ``outputMode`` checked."""
        mode = kwargs.get("outputMode")
        if mode is not None and mode not in OUTPUT_MODES:
            raise ValueError(f"{type(self).__name__}: outputMode {mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _check_saveable(self) -> None:
        if self.isDefined(self.imageLoader) and callable(self.getOrDefault(self.imageLoader)):
            raise ValueError(f"{type(self).__name__}: a Python function imageLoader cannot be saved; set imageLoader "
                             "to its 'module:function' name (importable on the workers) to save it")


def _warn(message: str) -> None:
    warnings.warn(message, SparkdlCompatWarning, stacklevel=4)


def predict_batches(model, arrays: list[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """The model's outputs for ``arrays`` (each one input without the batch dimension), ``batch_size`` at a time."""
    for start in range(0, len(arrays), batch_size):
        out = model.predict_on_batch(np.stack(arrays[start:start + batch_size]).astype(np.float32, copy=False))
        yield from np.asarray(out)


def _input_shape(model) -> tuple:
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or (shape and isinstance(shape[0], tuple)):
        raise ValueError(f"the Keras model {model.name} must have one input, not {shape}")
    return tuple(shape[1:])


def _fits(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def load_input(fn, uri: str, input_shape: tuple, what: str) -> np.ndarray:
    """``fn(uri)``, checked against the model's input shape (a leading batch dimension of 1 dropped, as
    sparkdl allowed); a wrong shape is an :class:`ImageLoaderContractError` naming the URI."""
    given = np.asarray(fn(uri))
    arr = given[0] if given.ndim == len(input_shape) + 1 and given.shape[0] == 1 else given
    if not _fits(arr.shape, input_shape):
        raise ImageLoaderContractError(f"{what}: imageLoader returned an array of shape {given.shape} for {uri}; "
                                       f"the model takes {input_shape} (optionally with a leading batch dimension of 1)")
    return arr


class KerasImageFileTransformer(Transformer, _ImageFileParams, DefaultParamsReadable, DefaultParamsWritable):
    """Apply a saved Keras model to images given by URI, each loaded and preprocessed by ``imageLoader``."""

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, modelFile: str | None = None,
                 imageLoader=None, outputMode: str | None = None, batchSize: int | None = None,
                 errorCol: str | None = None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set_checked(kwargs)

    def write(self):
        self._check_saveable()
        return super().write()

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_input(dataset, T.StringType)
        loader = self.getImageLoader()
        resolve_callable(loader)  # an unimportable name fails here
        shipped, model = self._shipped()
        _warn("sparkvision.compat.sparkdl.KerasImageFileTransformer: a URI whose imageLoader raises gets a null "
              f"output{'' if self.getErrorCol() else ' (set errorCol to see why)'}; an array of the wrong shape "
              "fails the job. See sparkvision.compat.keras_transformers' docstring.")
        image = self.getOutputMode() == "image"
        udf = _image_file_udf(shipped, loader, _input_shape(model), self.getBatchSize(), image)
        result = "_sparkvision_keras"
        out = dataset.withColumn(result, udf(F.col(self.getInputCol())))
        raw = F.col(f"{result}.output")
        out = out.withColumn(self.getOutputCol(), raw if image else F.when(raw.isNotNull(), array_to_vector(raw)))
        if self.getErrorCol():
            out = out.withColumn(self.getErrorCol(), F.col(f"{result}.error"))
        return out.drop(result)


def _image_file_udf(shipped: ShippedModel, loader, input_shape: tuple, batch_size: int, image: bool):
    output = FLOAT_IMAGE_SCHEMA if image else T.ArrayType(T.FloatType())
    schema = T.StructType([T.StructField("output", output), T.StructField("error", T.StringType())])

    def as_output(uri: str, row: np.ndarray):
        if not image:
            return row.astype(np.float32).ravel()
        if row.ndim != 3:
            raise ValueError(f"KerasImageFileTransformer: outputMode 'image' needs a (height, width, channels) "
                             f"output, the model gives {row.shape} for {uri}")
        h, w, c = row.shape
        return {"origin": uri, "height": h, "width": w, "nChannels": c, "mode": cv_32f_mode(c),
                "data": row.astype(np.float32).tobytes()}

    @F.pandas_udf(schema)
    def apply(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = shipped.load(task_threads())
        fn = resolve_callable(loader)
        for uris in batches:
            outputs: list = [None] * len(uris)
            errors: list = [None] * len(uris)
            positions, arrays = [], []
            for i, uri in enumerate(uris):
                if uri is None:
                    errors[i] = "null URI"
                    continue
                try:
                    arrays.append(load_input(fn, uri, input_shape, "KerasImageFileTransformer"))
                except ImageLoaderContractError:
                    raise  # a loader that returns the wrong shape is a bug: fail with its message
                except Exception as exc:
                    errors[i] = f"imageLoader failed on {uri}: {type(exc).__name__}: {exc}"
                else:
                    positions.append(i)
                    continue
                log.warning("KerasImageFileTransformer: %s", errors[i])
            for i, row in zip(positions, predict_batches(model, arrays, batch_size)):
                outputs[i] = as_output(uris[i], row)
            yield pd.DataFrame({"output": outputs, "error": errors})

    return apply


class KerasTransformer(Transformer, _KerasParams, DefaultParamsReadable, DefaultParamsWritable):
    """Apply a saved Keras model to a column of float arrays (one row = one model input, flattened);
    the output is the model's output per row, flattened, as ``array<float>``."""

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, modelFile: str | None = None,
                 batchSize: int | None = None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _transform(self, dataset: DataFrame) -> DataFrame:
        dtype = self._check_input(dataset, T.ArrayType)
        if not isinstance(dtype.elementType, (T.FloatType, T.DoubleType, T.IntegerType, T.LongType)):
            raise ValueError(f"KerasTransformer: input column {self.getInputCol()!r} must be an array of numbers, "
                             f"got {dtype.simpleString()}")
        shipped, model = self._shipped()
        shape = _input_shape(model)
        if any(d is None for d in shape):
            raise ValueError(f"KerasTransformer: {self.getModelFile()} takes inputs of shape {shape}; a fixed shape "
                             "is needed to reshape each row")
        _warn("sparkvision.compat.sparkdl.KerasTransformer: each row is reshaped to the model's input shape "
              f"{shape}; a null row gives a null output. See sparkvision.compat.keras_transformers' docstring.")
        udf = _tensor_udf(shipped, shape, self.getBatchSize(), self.getInputCol())
        return dataset.withColumn(self.getOutputCol(), udf(F.col(self.getInputCol())))


def _tensor_udf(shipped: ShippedModel, shape: tuple, batch_size: int, column: str):
    size = int(np.prod(shape))

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def apply(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = shipped.load(task_threads())
        for rows in batches:
            outputs: list = [None] * len(rows)
            positions, arrays = [], []
            for i, row in enumerate(rows):
                if row is None:
                    continue
                arr = np.asarray(row, dtype=np.float32)
                if arr.size != size:
                    raise ValueError(f"KerasTransformer: a row of {column!r} has {arr.size} values; the model takes "
                                     f"{size} (shape {shape})")
                positions.append(i)
                arrays.append(arr.reshape(shape))
            for i, out in zip(positions, predict_batches(model, arrays, batch_size)):
                outputs[i] = out.astype(np.float32).ravel()
            yield pd.Series(outputs, dtype=object)

    return apply
