"""sparkdl 1.5's ``sparkdl.image.imageIO`` helpers on Spark 4 (change ``from sparkdl.image import imageIO`` to
``from sparkvision.compat import imageIO``): ``readImagesWithCustomFn``, ``PIL_decode``,
``PIL_decode_and_resize``, ``createResizeImageUDF`` and the struct helpers ``imageStructToArray``,
``imageArrayToStruct``, ``imageStructToPIL``. Structs are Spark's image struct
(:data:`sparkvision.compat.image.COLUMN_SCHEMA`: 8-bit BGR, BGRA or gray).

Where they differ from sparkdl (said once per call, as a SparkdlCompatWarning):

* ``readImagesWithCustomFn``: a file that ``decode_f`` cannot decode (or whose array is not an 8-bit image of
  1, 3 or 4 channels) is an invalid-image row that keeps its path in ``origin`` (``mode`` -1, as Spark's image
  source gives), not sparkdl's null, which lost the path; each worker logs the reason. Keep the good rows with
  ``df.filter("image.mode != -1")``. Hidden files (``.``/``_`` names) are not read, as Spark's listing skips them;
* ``createResizeImageUDF`` resizes bilinearly (Keras' default), keeps the channel count and passes invalid rows
  and nulls through; ``size`` is ``(height, width)`` as in sparkdl;
* ``PIL_decode`` returns the upright (EXIF-rotated) image as 3-channel BGR whatever the file's mode (sparkdl's
  reversed the last axis of whatever Pillow gave: the columns of a gray image).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision.compat._common import SparkdlCompatWarning
from sparkvision.run import images as imglib

from sparkvision.stages import load as loader
from sparkvision.columns import PATH
from sparkvision.run.spark import bound_arrow_batches, default_parallelism
from sparkvision.compat.image import IMAGE_FIELDS, NULLABLE_COLUMN_SCHEMA as STRUCT, OCV_TYPES, _entries, _hidden, batched_structs, invalid_image

log = logging.getLogger(__name__)

__all__ = ["createResizeImageUDF", "PIL_decode", "PIL_decode_and_resize", "readImagesWithCustomFn",
           "imageStructToArray", "imageArrayToStruct", "imageStructToPIL"]

def _warn(message: str) -> None:
    warnings.warn(message, SparkdlCompatWarning, stacklevel=3)


def imageStructToArray(imageRow) -> np.ndarray:
    """Image struct -> ``(height, width, nChannels)`` uint8 array, in the struct's (BGR) channel order."""
    if imageRow["mode"] == OCV_TYPES["Undefined"]:
        raise ValueError(f"imageStructToArray: {imageRow['origin'] or 'the image'} is an invalid image (mode -1)")
    return np.frombuffer(imageRow["data"], dtype=np.uint8).reshape(imageRow["height"], imageRow["width"], imageRow["nChannels"])


def imageArrayToStruct(imgArray: np.ndarray, origin: str = "") -> dict:
    """``(height, width[, channels])`` uint8 array in BGR order (a leading batch dimension of 1 allowed, as in
    sparkdl) -> image struct (a dict Spark accepts as a Row)."""
    arr = np.asarray(imgArray)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"imageArrayToStruct: the first dimension of a 4-d image array must be 1, got {arr.shape}")
        arr = arr[0]
    return imglib.bgr_array_to_struct(arr, origin)


def imageStructToPIL(imageRow) -> Image.Image:
    """Image struct -> RGB ``PIL.Image``."""
    return imglib.from_image_struct(imageRow["height"], imageRow["width"], imageRow["nChannels"], imageRow["mode"],
                                    imageRow["data"])


def PIL_decode(raw_bytes: bytes) -> np.ndarray:
    """Encoded bytes -> ``(height, width, 3)`` uint8 BGR array (CV_8UC3), upright, decoded with Pillow."""
    return np.asarray(imglib.decode_rgb(raw_bytes))[:, :, ::-1]


def PIL_decode_and_resize(size: tuple[int, int]) -> Callable[[bytes], np.ndarray]:
    """A ``decode_f`` that decodes like :func:`PIL_decode` and resizes to ``size`` = ``(width, height)``
    (Pillow's order, as sparkdl's)."""
    width, height = size

    def _decode(raw_bytes: bytes) -> np.ndarray:
        return np.asarray(imglib.decode_rgb(raw_bytes).resize((width, height), imglib.RESAMPLE))[:, :, ::-1]

    return _decode


def readImagesWithCustomFn(path: str, decode_f: Callable[[bytes], np.ndarray], numPartition: int | None = None
                           ) -> DataFrame:
    """sparkdl's ``readImagesWithCustomFn``: the files of ``path`` (a folder, or one file) decoded by
    ``decode_f`` (bytes -> uint8 array in BGR order, see :func:`PIL_decode`) into one column ``image``."""
    if not callable(decode_f):
        raise TypeError(f"readImagesWithCustomFn: decode_f must be a function bytes -> numpy array, got {decode_f!r}")
    spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    bound_arrow_batches(spark)
    files = [e for e in _entries(path, recursive=False) if not _hidden(e)]
    if not files:
        raise FileNotFoundError(f"readImagesWithCustomFn: no files in {path}")
    _warn("sparkvision.compat.imageIO.readImagesWithCustomFn: a file decode_f cannot decode is an invalid-image row "
          "(mode -1, its path in origin) instead of sparkdl's null; filter with image.mode != -1. See "
          "sparkvision.compat.imageIO's docstring.")

    def make(uri: str, problem: str | None) -> dict:
        why = problem
        if why is None:
            try:
                return imageArrayToStruct(decode_f(loader.read_file(uri)), origin=uri)
            except Exception as exc:  # the user's decoder: any failure is this file's
                why = f"{type(exc).__name__}: {exc}"
        log.warning("readImagesWithCustomFn: %s cannot be used: %s", uri, why)
        return invalid_image(uri)

    @F.pandas_udf(STRUCT)
    def decode(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for uris, problems in batches:
            yield from batched_structs(make, uris, problems)

    parts = numPartition or max(1, min(len(files), 2 * default_parallelism(spark)))
    table = spark.createDataFrame([(e.path, e.problem) for e in files], f"{PATH} string, problem string")
    return table.repartition(parts).select(decode(F.col(PATH), F.col("problem")).alias("image"))


def _resize_struct(row, height: int, width: int):
    if row["mode"] is None or row["mode"] == OCV_TYPES["Undefined"]:
        return row
    if (row["height"], row["width"]) == (height, width):
        return row
    channels = row["nChannels"]
    raw = {1: ("L", "L"), 3: ("RGB", "BGR"), 4: ("RGBA", "BGRA")}.get(channels)
    if raw is None or OCV_TYPES.get(f"CV_8UC{channels}") != row["mode"]:
        raise ValueError(f"createResizeImageUDF: {row['origin']}: mode {row['mode']} with {channels} channels is "
                         "not an 8-bit gray, BGR or BGRA image")
    img = Image.frombuffer(raw[0], (row["width"], row["height"]), row["data"], "raw", raw[1], 0, 1)
    arr = np.asarray(img.resize((width, height), imglib.RESAMPLE))
    arr = arr[:, :, None] if channels == 1 else arr[:, :, [2, 1, 0, 3][:channels]]
    return imglib.bgr_array_to_struct(arr, row["origin"])


def createResizeImageUDF(size: tuple[int, int]):
    """A function of an image-struct column that resizes each image to ``size`` = ``(height, width)``:
    ``df.select(createResizeImageUDF((299, 299))("image").alias("image"))``."""
    if len(size) != 2:
        raise ValueError(f"New image size should have format [height, width] but got {size}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"createResizeImageUDF: size must be positive, got {size}")
    _warn("sparkvision.compat.imageIO.createResizeImageUDF resizes bilinearly, keeps each image's channels and "
          "passes invalid-image rows through. See sparkvision.compat.imageIO's docstring.")

    @F.pandas_udf(STRUCT)
    def resize(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in batches:
            yield pd.DataFrame([_resize_struct(r, height, width) for r in frame.to_dict("records")],
                               columns=IMAGE_FIELDS)

    def apply(col):
        column = F.col(col) if isinstance(col, str) else col
        return F.when(column.isNotNull(), resize(F.struct(*[column.getField(f).alias(f) for f in IMAGE_FIELDS])))

    return apply
