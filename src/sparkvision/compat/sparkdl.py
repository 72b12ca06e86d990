"""sparkdl (Databricks' spark-deep-learning) names on sparkvision's engine: change the import, keep the recipe.

    from sparkdl import readImages, DeepImageFeaturizer                      # Spark 2 / TF 1, no longer runs
    from sparkvision.compat.sparkdl import readImages, DeepImageFeaturizer   # Spark 4 / TF 2

What differs from sparkdl, on purpose (``DeepImageFeaturizer`` says so once, as a SparkdlCompatWarning):

* features are the network's global-average-pooled output (2048 values for InceptionV3, Xception and
  ResNet50, 512 for VGG16/19) instead of sparkdl's flattened last feature map (131,072 for InceptionV3);
  classifiers trained on sparkdl features must be retrained;
* images reach the network as RGB, resized exactly as ``keras.utils.load_img`` does, then the model's
  own Keras preprocessing; sparkdl fed BGR pixels resized its own way;
* ``modelName`` also accepts sparkvision's registry names (e.g. the offline ``efficientnet_lite0``);
* ``readImages`` decodes with Pillow and never returns a broken image: files that cannot be decoded
  (truncated JPEGs included, which Spark's image source passes as valid) are left out and listed in a
  warning with their reasons; :func:`readImagesWithRejects` returns them as a DataFrame.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkvision.compat._common import SparkdlCompatWarning, active_spark
from sparkvision.compat.image import NULLABLE_COLUMN_SCHEMA, batched_structs
from sparkvision.compat.imageIO import (PIL_decode, PIL_decode_and_resize, createResizeImageUDF, imageArrayToStruct,
                                        imageStructToArray, imageStructToPIL, readImagesWithCustomFn)
from sparkvision.compat.keras_estimator import KerasImageFileEstimator
from sparkvision.compat.keras_transformers import KerasImageFileTransformer, KerasTransformer
from sparkvision.compat.keras_udf import registerKerasImageUDF
from sparkvision.compat.predictor import DECODED_SCHEMA, DeepImagePredictor
from sparkvision.compat.tf_transformers import TFImageTransformer, TFInputGraph, TFTransformer, imageInputPlaceholder
from sparkvision.ml.featurizer import DeepImageFeaturizer as _Featurizer
from sparkvision.ml.models import registry
from sparkvision.run import images as imglib
from sparkvision.run.spark import bound_arrow_batches
from sparkvision.settings import DataSettings
from sparkvision.stages import predict

log = logging.getLogger(__name__)

SPARKDL_MODELS = ("InceptionV3", "Xception", "ResNet50", "VGG16", "VGG19")
IMAGE_SCHEMA = NULLABLE_COLUMN_SCHEMA  # Spark's image struct, as sparkdl's readImages gave it
_DIFFERENCES = (
    "sparkvision.compat.sparkdl.DeepImageFeaturizer is not sparkdl's: its features are the model's "
    "global-average-pooled output ({dim} values for {model}), not sparkdl's flattened feature map "
    "(131,072 for InceptionV3), and images are fed as RGB resized like keras.utils.load_img, not BGR. "
    "Retrain classifiers built on sparkdl features. See sparkvision.compat.sparkdl's docstring."
)


def _to_image_struct_udf():
    """The decoding UDF, made when called: a pandas UDF is a classic or a Spark Connect one depending on
    the session at the time it is made, and this module may be imported before either exists."""

    def struct(path: str, data: bytes) -> dict:
        return imglib.to_image_struct(imglib.decode_rgb(data), origin=path)

    @F.pandas_udf(IMAGE_SCHEMA)
    def to_image_struct(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for paths, contents in batches:
            yield from batched_structs(struct, paths, contents)

    return to_image_struct


def readImagesWithRejects(imageDirectory: str, numPartition: int | None = None) -> tuple[DataFrame, DataFrame]:
    """``(images, rejected)``: ``filePath, image`` rows for every decodable image under the folder, and
    ``path, reason`` for the files that could not be used."""
    spark = active_spark()
    bound_arrow_batches(spark)
    data = DataSettings(validate="full")  # every struct is a full decode: an undecodable file is a rejected row here
    found, rejected, counts = predict.unlabelled_images(spark, imageDirectory, data)
    images = found.select(F.col("path").alias("filePath"), _to_image_struct_udf()("path", "content").alias("image"))
    if numPartition:
        images = images.repartition(numPartition)
    if counts["rejected"]:
        sample = [f"{r['path']} ({r['reason']})" for r in rejected.orderBy("path").limit(5).collect()]
        warnings.warn(
            f"readImages({imageDirectory!r}): {counts['rejected']} of {counts['discovered']} files could not be "
            f"used and were left out: {'; '.join(sample)}{' ...' if counts['rejected'] > 5 else ''}",
            SparkdlCompatWarning, stacklevel=3,
        )
    return images, rejected


def readImages(imageDirectory: str, numPartition: int | None = None) -> DataFrame:
    """sparkdl's ``readImages``: a DataFrame of ``filePath`` (string) and ``image`` (Spark image struct, BGR)."""
    return readImagesWithRejects(imageDirectory, numPartition)[0]


def DeepImageFeaturizer(inputCol: str = "image", outputCol: str = "features", modelName: str = "InceptionV3",
                        scaleHint: str | None = None, **kwargs) -> _Featurizer:
    """sparkdl's ``DeepImageFeaturizer(inputCol, outputCol, modelName)`` as a sparkvision featurizer.

    ``inputCol`` may hold Spark image structs (from :func:`readImages`) or encoded bytes. ``scaleHint``
    is accepted for old code and ignored: resizing always matches Keras. Other keyword arguments go to
    :class:`sparkvision.ml.featurizer.DeepImageFeaturizer` (``weightsPath``, ``batchSize``, ...).
    """
    try:
        spec = registry.get(modelName)
    except KeyError:
        raise ValueError(f"DeepImageFeaturizer: unknown modelName {modelName!r}; sparkdl's were "
                         f"{', '.join(SPARKDL_MODELS)}; sparkvision also has {', '.join(sorted(registry.MODELS))}") from None
    warnings.warn(_DIFFERENCES.format(dim=spec.feature_dim, model=spec.name), SparkdlCompatWarning, stacklevel=2)
    if scaleHint is not None:
        log.info("DeepImageFeaturizer: scaleHint=%r ignored (resizing matches Keras' load_img)", scaleHint)
    return _Featurizer(inputCol=inputCol, outputCol=outputCol, modelName=spec.name, **kwargs)



# sparkdl 1.5's public names, as ``from sparkdl import ...`` gave them.
__all__ = ["DECODED_SCHEMA", "DeepImageFeaturizer", "DeepImagePredictor", "IMAGE_SCHEMA", "KerasImageFileEstimator",
           "KerasImageFileTransformer", "KerasTransformer", "PIL_decode", "PIL_decode_and_resize", "SPARKDL_MODELS",
           "SparkdlCompatWarning", "TFImageTransformer", "TFInputGraph", "TFTransformer", "createResizeImageUDF",
           "imageArrayToStruct", "imageInputPlaceholder", "imageStructToArray", "imageStructToPIL", "readImages",
           "readImagesWithCustomFn", "readImagesWithRejects", "registerKerasImageUDF"]
