"""sparkdl's ``DeepImagePredictor``: a pretrained network's ImageNet classifier applied to images.

It is sparkvision's :class:`~sparkvision.ml.featurizer.DeepImageFeaturizer` run on the registry's classifier
variant of the model (:meth:`sparkvision.ml.models.registry.ModelSpec.classifier`): the same decoding (encoded
bytes or Spark image structs), batching, weights pinning and one network per Python worker, with the
network's top kept. The output is the 1000 ImageNet probabilities as a vector, or with
``decodePredictions`` the ``topK`` most probable classes as ``array<struct<class, description,
probability>>``, most probable first, as sparkdl gave them.

Where it differs from sparkdl (said once, as a SparkdlCompatWarning):

* images are fed as RGB resized like the featurizer (``keras.utils.load_img``; EfficientNet-Lite centre
  cropped), not BGR resized sparkdl's way: probabilities differ slightly from sparkdl's;
* ``modelName`` also takes sparkvision's registry names (the offline ``efficientnet_lite0/1/2``, whose
  weights ship with a wheel); Keras' models need their include_top file (``weightsPath``, the cache or a
  mirror: the error names the file);
* class descriptions come from the packaged ``imagenet_classes.json`` (darknet's short names with
  underscores), which may spell a few classes differently from Keras' ``imagenet_class_index.json``;
* an image that cannot be decoded gets a null output (and its reason in ``errorCol`` when set).
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml.functions import vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.compat._common import SparkdlCompatWarning
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.ml.models import imagenet, registry

DECODED_SCHEMA = T.ArrayType(T.StructType([
    T.StructField("class", T.StringType(), False),
    T.StructField("description", T.StringType(), False),
    T.StructField("probability", T.FloatType(), False),
]))
_DIFFERENCES = (
    "sparkvision.compat.sparkdl.DeepImagePredictor is not sparkdl's: images are fed to {model} as RGB resized "
    "like keras.utils.load_img (not BGR), so probabilities differ slightly; class descriptions come from "
    "darknet's ImageNet names; undecodable images get a null output (set errorCol to see why). "
    "See sparkvision.compat.predictor's docstring."
)


class DeepImagePredictor(DeepImageFeaturizer):
    """ImageNet predictions of a pretrained network: 1000 probabilities, or the top K decoded classes.

    Takes the featurizer's parameters too (``weightsPath`` for a Keras model's include_top weights file,
    ``batchSize``, ``engine``, ``errorCol``, ...); persists its parameters only.
    """

    decodePredictions = Param(Params._dummy(), "decodePredictions",
                              "output the top K (class, description, probability) instead of the probabilities",
                              TypeConverters.toBoolean)
    topK = Param(Params._dummy(), "topK", "how many classes decodePredictions returns", TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, modelName: str | None = None,
                 decodePredictions: bool | None = None, topK: int | None = None, **kwargs):
        given = self._input_kwargs  # the featurizer's keyword_only __init__ replaces it
        super().__init__()
        self._setDefault(inputCol="image", outputCol="predicted_labels", decodePredictions=False, topK=5)
        self.setParams(**given)
        warnings.warn(_DIFFERENCES.format(model=self.getModelName()), SparkdlCompatWarning, stacklevel=2)

    @keyword_only
    def setParams(self, **kwargs):
        top = kwargs.get("topK")
        if top is not None and not 1 <= int(top) <= registry.IMAGENET_CLASSES:
            raise ValueError(f"DeepImagePredictor: topK must be between 1 and {registry.IMAGENET_CLASSES}, got {top}")
        if kwargs.get("modelName") is not None:
            try:
                registry.get(kwargs["modelName"])
            except KeyError:
                raise ValueError(f"DeepImagePredictor: unknown modelName {kwargs['modelName']!r}; known models: "
                                 f"{', '.join(sorted(registry.MODELS))}") from None
        return super().setParams(**kwargs)

    def getDecodePredictions(self) -> bool:
        return self.getOrDefault(self.decodePredictions)

    def getTopK(self) -> int:
        return self.getOrDefault(self.topK)

    def spec(self) -> registry.ModelSpec:
        """The registry's classifier variant of ``modelName`` (1000 probabilities)."""
        return registry.get(self.getModelName()).classifier()

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if not self.getDecodePredictions():
            return super()._transform(dataset)
        probabilities = "_sparkvision_probabilities"
        inner = self.copy({self.outputCol: probabilities})
        out = DeepImageFeaturizer._transform(inner, dataset)
        self._set(weightsChecksum=inner.getWeightsChecksum())  # pinned on the copy: keep it for save/reuse
        raw = vector_to_array(F.col(probabilities), "float32")
        return out.withColumn(self.getOutputCol(), _decode_udf(self.getTopK())(raw)).drop(probabilities)


def _decode_udf(top: int):
    @F.pandas_udf(DECODED_SCHEMA)
    def decode(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for probabilities in batches:
            yield pd.Series([None if p is None else [dict(zip(("class", "description", "probability"), c))
                                                     for c in imagenet.decode(np.asarray(p), top)]
                             for p in probabilities], dtype=object)

    return decode
