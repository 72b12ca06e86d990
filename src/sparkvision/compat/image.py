"""Spark 2.3/2.4's ``pyspark.ml.image.ImageSchema`` on Spark 4, where Spark 3 removed ``readImages``:

    from pyspark.ml.image import ImageSchema                 # Spark 2.3 / 2.4
    from sparkvision.compat.image import ImageSchema         # Spark 4 (classic or Spark Connect)

Everything Spark 2.4 had: ``readImages(path, recursive=False, numPartitions=-1, dropImageFailures=False,
sampleRatio=1.0, seed=0)``, ``imageSchema``, ``columnSchema``, ``imageFields``, ``ocvTypes``,
``undefinedImageType``, ``toNDArray(image)`` and ``toImage(array, origin="")``. The schema and the type codes
are Spark's own values, kept here in Python (no JVM call, so they also work over Spark Connect). Structs are
laid out as Spark's ``image`` source lays them out: BGR, BGRA for images with transparency, 1 channel for gray,
pixels as stored (no EXIF rotation), ``origin`` the file's URI; for a lossless file the bytes equal Spark's
(a test checks PNGs). An image that cannot be decoded is Spark's invalid-image row (``origin`` set, the other
fields -1, no bytes), left out only with ``dropImageFailures=True``.

Where it differs from Spark 2.4 (said once per ``readImages`` call, as an ImageSchemaCompatWarning):

* images are decoded with Pillow, completely: a truncated or corrupt file is a failure (Spark's Java decoder
  returned it as a valid image, partly grey), and 16-bit gray is scaled to 8 bits (Spark kept the low byte);
* failures are reported: the warning names them with their reasons, and
  :meth:`_ImageSchema.readImagesWithRejects` also returns them as a ``path, reason`` DataFrame, with the files
  that were not read at all (hidden files and folders, as Spark's file listing skips them);
* ``sampleRatio`` keeps each file by a hash of ``seed`` and its path: the same files on every run and cluster;
* ``toImage`` refuses values that are not whole numbers in 0..255 (Spark's ``astype(uint8)`` wrapped them).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.columns import PATH, REASON
from sparkvision.run import images as imglib
from sparkvision.run import listing
from sparkvision.run import storage
from sparkvision.run.spark import bound_arrow_batches
from sparkvision.settings import DataSettings
from sparkvision.stages import load as loader

# Spark's org.apache.spark.ml.image.ImageSchema, field for field.
UNDEFINED_IMAGE_TYPE = "Undefined"
OCV_TYPES = {UNDEFINED_IMAGE_TYPE: -1, "CV_8U": 0, "CV_8UC1": 0, "CV_8UC3": 16, "CV_8UC4": 24}
COLUMN_SCHEMA = T.StructType([
    T.StructField("origin", T.StringType(), True),
    T.StructField("height", T.IntegerType(), False),
    T.StructField("width", T.IntegerType(), False),
    T.StructField("nChannels", T.IntegerType(), False),
    T.StructField("mode", T.IntegerType(), False),   # OpenCV-compatible type: CV_8UC3 in most cases
    T.StructField("data", T.BinaryType(), False),    # bytes in OpenCV order: row-wise BGR in most cases
])
IMAGE_SCHEMA = T.StructType([T.StructField("image", COLUMN_SCHEMA, True)])
IMAGE_FIELDS = COLUMN_SCHEMA.fieldNames()
# What a pandas UDF returns (its struct fields are nullable): sparkdl's readImages' ``image`` column too.
NULLABLE_COLUMN_SCHEMA = T.StructType([T.StructField(f.name, f.dataType, True) for f in COLUMN_SCHEMA])
_ImageRow = Row(*IMAGE_FIELDS)
# Decoded pixels are ~10x their file: the decoding UDF yields batches of at most this many bytes of pixels.
STRUCT_BATCH_BYTES = 32 * 2**20
REJECTED_SCHEMA = T.StructType([T.StructField(PATH, T.StringType()), T.StructField(REASON, T.StringType())])


class ImageSchemaCompatWarning(UserWarning):
    """Where ``sparkvision.compat.image.ImageSchema`` behaves differently from Spark 2.4's."""


_DIFFERENCES = (
    "sparkvision.compat.image.ImageSchema.readImages is not Spark 2.4's in these ways: images are decoded "
    "completely with Pillow, so truncated or corrupt files are failures (Spark passed them as images); 16-bit "
    "gray is scaled to 8 bits; sampleRatio keeps files by a hash of seed and path. See the module docstring."
)


def invalid_image(origin: str) -> dict:
    """Spark's row for a file that is not a decodable image (``ImageSchema.invalidImageRow``)."""
    return {"origin": origin, "height": -1, "width": -1, "nChannels": -1, "mode": OCV_TYPES[UNDEFINED_IMAGE_TYPE],
            "data": b""}


def _sampled(image_id: str, seed: int, ratio: float) -> bool:
    if ratio >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}\0{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < ratio


def _hidden(entry: listing.Entry) -> str | None:
    """Why Spark's (Hadoop's) file listing would not return ``entry`` at all, or None."""
    parts = entry.image_id.rstrip("/").split("/")
    system = [p for p in parts[:-1] if listing.is_system_folder(p)]
    if system:
        return f"hidden or system folder ({system[0]}): not read"
    if parts[-1].startswith((".", "_")) and not entry.image_id.endswith("/"):
        return "hidden file (name starts with '.' or '_'): not read"
    if parts[-1].endswith(listing.COPYING_SUFFIX):
        return "incomplete copy (name ends with ._COPYING_: still being copied)"
    return None


def _entries(path: str, recursive: bool) -> list[listing.Entry]:
    uri = path if not storage.is_local(path) else storage.local_path(path)
    if not storage.exists(uri):
        raise FileNotFoundError(f"ImageSchema.readImages: path does not exist: {path}")
    if not storage.is_dir(uri):  # one file, as Spark's readImages also takes
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        return [listing.Entry(name, ("file:" + os.path.abspath(uri)) if storage.is_local(path) else uri, None, None)]
    found = listing.walk(uri)
    return found if recursive else [e for e in found if "/" not in e.image_id]


def _check_udf(max_bytes: int, max_pixels: int):
    """Pass 1: each candidate read and fully decoded, only its reason kept (no pixels leave the task)."""

    @F.pandas_udf(T.StringType())
    def check(paths: pd.Series, reasons: pd.Series) -> pd.Series:
        return pd.Series([why if why is not None else loader.read_and_check(p, max_bytes, max_pixels, "full")[3]
                          for p, why in zip(paths, reasons)], dtype=object)

    return check


def batched_structs(make: Callable[..., dict], *columns: pd.Series) -> Iterator[pd.DataFrame]:
    """``make(*values)`` for each row of one Arrow batch, yielded as DataFrames of image structs holding at
    most :data:`STRUCT_BATCH_BYTES` of pixels each (decoded images are ~10x their files: an Arrow batch sized
    for paths must not become hundreds of MB of pixels in one piece)."""
    rows, size = [], 0
    for values in zip(*columns):
        rows.append(make(*values))
        size += len(rows[-1]["data"] or b"")
        if size >= STRUCT_BATCH_BYTES:
            yield pd.DataFrame(rows, columns=IMAGE_FIELDS)
            rows, size = [], 0
    if rows:
        yield pd.DataFrame(rows, columns=IMAGE_FIELDS)


def _decode_udf(max_bytes: int, max_pixels: int):
    """Pass 2: each file decoded into its struct (an invalid-image row when it cannot be)."""

    def struct(path: str, why: str | None) -> dict:
        if why is None:
            data, _, _, why = loader.read_and_check(path, max_bytes, max_pixels, "header")
        if why is None:
            try:
                return imglib.bgr_array_to_struct(imglib.decode_opencv_layout(data, max_pixels), path)
            except imglib.ImageRejected:
                pass  # changed since pass 1: still never a broken image
        return invalid_image(path)

    @F.pandas_udf(NULLABLE_COLUMN_SCHEMA)
    def decode(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for paths, reasons in batches:
            yield from batched_structs(struct, paths, reasons)

    return decode


class _ImageSchema:
    """The class of :data:`ImageSchema`; use that instance (as in Spark, it is not meant to be created)."""

    @property
    def imageSchema(self) -> T.StructType:
        """A ``StructType`` with one nullable column ``image`` of :attr:`columnSchema`."""
        return IMAGE_SCHEMA

    @property
    def columnSchema(self) -> T.StructType:
        """The image struct: ``origin, height, width, nChannels, mode, data``."""
        return COLUMN_SCHEMA

    @property
    def ocvTypes(self) -> dict:
        """OpenCV type names -> the codes in ``mode`` (``Undefined`` is -1)."""
        return dict(OCV_TYPES)

    @property
    def imageFields(self) -> list[str]:
        return list(IMAGE_FIELDS)

    @property
    def undefinedImageType(self) -> str:
        return UNDEFINED_IMAGE_TYPE

    def toNDArray(self, image) -> np.ndarray:
        """An image struct (a ``Row``) -> ``(height, width, nChannels)`` uint8 array in the struct's order."""
        if not isinstance(image, Row):
            raise TypeError(f"image argument should be pyspark.sql.types.Row; however, it got [{type(image)}].")
        missing = [f for f in IMAGE_FIELDS if f not in image.asDict()]
        if missing:
            raise ValueError(f"image argument should have attributes specified in ImageSchema.imageSchema "
                             f"[{', '.join(IMAGE_FIELDS)}]; it lacks {', '.join(missing)}")
        if image.mode == OCV_TYPES[UNDEFINED_IMAGE_TYPE] or image.height is None or image.height < 0:
            raise ValueError(f"ImageSchema.toNDArray: {image.origin or 'the image'} is an invalid image (mode "
                             f"{image.mode}): its file could not be decoded")
        h, w, c = image.height, image.width, image.nChannels
        if len(image.data) != h * w * c:
            raise ValueError(f"ImageSchema.toNDArray: {image.origin or 'the image'} is {h}x{w}x{c} but holds "
                             f"{len(image.data)} bytes")
        return np.ndarray(shape=(h, w, c), dtype=np.uint8, buffer=bytes(image.data), strides=(w * c, c, 1))

    def toImage(self, array: np.ndarray, origin: str = "") -> Row:
        """A ``(height, width, nChannels)`` array of 1, 3 or 4 channels in OpenCV order -> an image ``Row``."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"array argument should be numpy.ndarray; however, it got [{type(array)}].")
        if array.ndim != 3:
            raise ValueError(f"Invalid array shape {array.shape}: (height, width, nChannels) expected")
        height, width, channels = array.shape
        names = {1: "CV_8UC1", 3: "CV_8UC3", 4: "CV_8UC4"}
        if channels not in names:
            raise ValueError(f"Invalid number of channels: {channels} (1, 3 or 4)")
        if array.dtype != np.uint8:
            if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0 and array.max() <= 255
                                   and np.all(np.equal(np.mod(array, 1), 0))):
                raise ValueError(f"ImageSchema.toImage: a {array.dtype} array with values outside whole numbers "
                                 f"0..255 (min {array.min()}, max {array.max()}) is not an 8-bit image")
        data = bytearray(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
        return _ImageRow(origin, height, width, channels, OCV_TYPES[names[channels]], data)

    def readImages(self, path: str, recursive: bool = False, numPartitions: int = -1,
                   dropImageFailures: bool = False, sampleRatio: float = 1.0, seed: int = 0) -> DataFrame:
        """Spark 2.4's ``readImages``: a DataFrame with one column ``image`` (:attr:`columnSchema`).

        ``path`` is a folder (its files; with ``recursive`` its sub-folders' too) or one file, local or a
        storage URI. ``numPartitions`` (-1: Spark's default) partitions the result; ``dropImageFailures``
        leaves out the files that are not decodable images instead of returning invalid-image rows;
        ``sampleRatio`` keeps that fraction of the files, chosen by ``seed``.
        """
        return self.readImagesWithRejects(path, recursive, numPartitions, dropImageFailures, sampleRatio, seed)[0]

    def readImagesWithRejects(self, path: str, recursive: bool = False, numPartitions: int = -1,
                              dropImageFailures: bool = False, sampleRatio: float = 1.0, seed: int = 0
                              ) -> tuple[DataFrame, DataFrame]:
        """``(images, rejected)``: :meth:`readImages`' DataFrame, and ``path, reason`` for every file found that
        is not a decodable image (in ``images`` as an invalid row unless dropped) or was not read (hidden)."""
        if not 0.0 <= float(sampleRatio) <= 1.0:
            raise ValueError(f"ImageSchema.readImages: sampleRatio should be between 0 and 1, got {sampleRatio}")
        if not isinstance(numPartitions, int) or (numPartitions < 1 and numPartitions != -1):
            raise ValueError(f"ImageSchema.readImages: numPartitions must be -1 (Spark's default) or positive, "
                             f"got {numPartitions!r}")
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        bound_arrow_batches(spark)
        data = DataSettings()
        max_bytes, max_pixels = int(data.max_file_mb * 2**20), data.max_pixels
        skipped, rows = [], []
        for e in _entries(path, recursive):
            if not _sampled(e.image_id, seed, sampleRatio):
                continue
            hidden = _hidden(e)
            if hidden:
                skipped.append((e.path, hidden))
                continue
            why = e.problem or (f"file too large: {e.size} bytes > max_file_mb {data.max_file_mb}"
                                if e.size is not None and e.size > max_bytes else None)
            rows.append((e.image_id, e.path, why))
        inv = loader.Inventory([(i, p, None, w) for i, p, w in rows], [], f"ImageSchema.readImages({path!r})")
        tasks = max(1, min(loader.read_tasks(spark, inv), len(rows) or 1))
        files = spark.createDataFrame([(p, w) for _, p, w in rows], REJECTED_SCHEMA)
        checked = files.repartition(tasks).select(
            PATH, _check_udf(max_bytes, max_pixels)(F.col(PATH), F.col(REASON)).alias(REASON)
        ).persist(StorageLevel.MEMORY_AND_DISK)  # paths and reasons only: a few bytes a file
        failed = [(r[PATH], r[REASON]) for r in checked.filter(F.col(REASON).isNotNull()).orderBy(PATH).collect()]
        rejected = spark.createDataFrame(sorted(failed + skipped), REJECTED_SCHEMA)
        report = ""
        if failed or skipped:
            sample = "; ".join(f"{p} ({why})" for p, why in (failed + skipped)[:5])
            more = " ..." if len(failed) + len(skipped) > 5 else ""
            report = (f"{len(failed)} of {len(rows)} files are not decodable images ("
                      f"{'left out' if dropImageFailures else 'invalid-image rows, mode -1'}) and {len(skipped)} "
                      f"hidden files were not read: {sample}{more}. ")
        warnings.warn(f"ImageSchema.readImages({path!r}): {report}{_DIFFERENCES}", ImageSchemaCompatWarning,
                      stacklevel=3)
        source = checked.filter(F.col(REASON).isNull()) if dropImageFailures else checked
        if numPartitions > 0:
            source = source.repartition(numPartitions)
        images = source.select(_decode_udf(max_bytes, max_pixels)(F.col(PATH), F.col(REASON)).alias("image"))
        if dropImageFailures:  # a file that changed since the check is still never a broken image
            images = images.filter(F.col("image.mode") != OCV_TYPES[UNDEFINED_IMAGE_TYPE])
        return images, rejected


ImageSchema = _ImageSchema()
