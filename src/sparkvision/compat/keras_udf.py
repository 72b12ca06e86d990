"""sparkdl's ``registerKerasImageUDF``: a Keras image model as a Spark SQL function on image structs.

    registerKerasImageUDF("my_model", "model.keras")
    spark.sql("SELECT my_model(image) AS scores FROM images")   # array<float>, the model's output flattened

The function is a pandas UDF registered with ``spark.udf.register``: it works on classic Spark and over Spark
Connect (whose ``spark.udf.register`` takes pandas UDFs too). The model (a file, or a Keras model, saved to
ship it) goes to the workers with the UDF and is loaded once per Python worker (:mod:`sparkvision.compat._common`); images of
one shape go through it in batches.

Without ``preprocessor`` each image is fed as it is: its RGB pixels (float32, 0-255), so the images must
already have the model's input size. With one, as in sparkdl, each image is written to a temporary PNG and
``preprocessor(path)`` returns the model's input array (with or without a leading batch dimension of 1).
Where it differs from sparkdl (said once, as a SparkdlCompatWarning): the preprocessor's array is fed as
float32, not first cast to uint8 (which destroyed preprocessed values such as ``[-1, 1]``); a null image
gives a null output; an image the model cannot take is an error naming its origin; the return value is the
registered UDF (usable in the DataFrame API), not a TF1 ``GraphFunction``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.run import images as imglib
from sparkvision.compat._common import ShippedModel, SparkdlCompatWarning, active_spark, task_threads
from sparkvision.compat.keras_transformers import _fits, _input_shape, predict_batches
from sparkvision.compat.tf_transformers import struct_pixels

_DIFFERENCE = ("sparkvision.compat.sparkdl.registerKerasImageUDF: images are batched, the preprocessor's array is "
               "fed as float32 (sparkdl cast it to uint8), null images give null. See "
               "sparkvision.compat.keras_udf's docstring.")


def registerKerasImageUDF(udf_name: str, keras_model_or_file_path, preprocessor: Callable | None = None,
                          batchSize: int = 32, spark: SparkSession | None = None):
    """Register ``udf_name`` as a SQL function: image struct -> the Keras model's output (``array<float>``)."""
    what = f"registerKerasImageUDF({udf_name!r})"
    if isinstance(keras_model_or_file_path, (str, os.PathLike)):
        shipped = ShippedModel.keras_file(os.fspath(keras_model_or_file_path), what)
    elif hasattr(keras_model_or_file_path, "predict_on_batch"):
        shipped = ShippedModel.keras_model(keras_model_or_file_path, what)
    else:
        raise TypeError(f"{what}: expected a Keras model or the path of a saved one (.keras, .h5), got "
                        f"{type(keras_model_or_file_path).__name__}")
    if preprocessor is not None and not callable(preprocessor):
        raise TypeError(f"{what}: preprocessor must be a function path -> numpy array")
    shape = _input_shape(shipped.load())  # a model that cannot load fails here
    warnings.warn(_DIFFERENCE, SparkdlCompatWarning, stacklevel=2)
    udf = _image_model_udf(shipped, shape, preprocessor, batchSize, udf_name)
    return (spark or active_spark()).udf.register(udf_name, udf)


def _image_model_udf(shipped: ShippedModel, shape: tuple, preprocessor, batch_size: int, name: str):
    def model_input(row: dict, tmp: str) -> np.ndarray:
        if preprocessor is None:
            arr = struct_pixels(row, "RGB").astype(np.float32)
        else:
            path = os.path.join(tmp, "image.png")  # lossless, as sparkdl: the preprocessor sees the exact pixels
            imglib.from_image_struct(row["height"], row["width"], row["nChannels"], row["mode"], row["data"]).save(path)
            arr = np.asarray(preprocessor(path))
            if arr.ndim == len(shape) + 1 and arr.shape[0] == 1:
                arr = arr[0]
        if not _fits(arr.shape, shape):
            raise ValueError(f"{name}: image {row.get('origin') or ''!r} gives a model input of shape {arr.shape}; "
                             f"the model takes {shape}" + ("" if preprocessor else " (pass a preprocessor to resize)"))
        return arr

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        model = shipped.load(task_threads())
        with tempfile.TemporaryDirectory(prefix="sparkvision-udf-") as tmp:
            for frame in batches:
                rows = frame.to_dict("records")
                outputs: list = [None] * len(rows)
                positions = [i for i, r in enumerate(rows) if r.get("data") is not None]
                arrays = [model_input(rows[i], tmp) for i in positions]
                start = 0
                while start < len(arrays):  # runs of one shape (inputs of a variable-size model may differ)
                    end = start + 1
                    while end < len(arrays) and end - start < batch_size and arrays[end].shape == arrays[start].shape:
                        end += 1
                    for i, out in zip(positions[start:end], predict_batches(model, arrays[start:end], batch_size)):
                        outputs[i] = out.astype(np.float32).ravel()
                    start = end
                yield pd.Series(outputs, dtype=object)

    return apply
