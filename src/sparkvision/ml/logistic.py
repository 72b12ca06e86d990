"""The tuned classifier as a Spark ML model: a logistic regression whose coefficients come from the
in-process solver of Spark ML's own objective (:mod:`sparkvision.ml.local_lr`).

It computes what Spark's ``LogisticRegressionModel`` computes, with the same output columns and types
(``rawPrediction`` margins, ``probability`` vector, ``prediction`` double): binomial models a sigmoid of one
margin, multinomial a softmax of one margin per class. It is made of Spark SQL expressions only (no
Python UDF, no JVM object), so it runs and persists the same on classic Spark and over Spark Connect,
and its parameters are plain numbers that any process can read (no Spark needed to predict with them).
"""

from __future__ import annotations

import json

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkvision.ml import local_lr
from sparkvision.columns import FEATURES, PREDICTION, PROBABILITY


def _matrix(value) -> list[list[float]]:
    return [[float(v) for v in row] for row in value]


class LogisticModel(Model, HasFeaturesCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol,
                    DefaultParamsReadable, DefaultParamsWritable):
    """A fitted (binomial or multinomial) logistic regression, as Spark's LogisticRegressionModel applies one."""

    coefficients = Param(Params._dummy(), "coefficients", "coefficient rows (1 for binomial, one per class)",
                         _matrix)
    intercepts = Param(Params._dummy(), "intercepts", "one intercept per coefficient row", TypeConverters.toListFloat)
    multinomial = Param(Params._dummy(), "multinomial", "softmax over classes (else a sigmoid of one margin)",
                        TypeConverters.toBoolean)
    regParam = Param(Params._dummy(), "regParam", "the regularization it was fit with", TypeConverters.toFloat)
    elasticNetParam = Param(Params._dummy(), "elasticNetParam", "the elastic-net mix it was fit with",
                            TypeConverters.toFloat)
    maxIter = Param(Params._dummy(), "maxIter", "the iteration limit it was fit with", TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, coefficients=None, intercepts=None, multinomial=None, regParam=None, elasticNetParam=None,
                 maxIter=None, featuresCol=None, predictionCol=None, probabilityCol=None, rawPredictionCol=None):
        super().__init__()
        self._setDefault(featuresCol=FEATURES, predictionCol=PREDICTION, probabilityCol=PROBABILITY,
                         rawPredictionCol="rawPrediction")
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    @classmethod
    def from_fit(cls, fit: "local_lr.LogisticFit", reg_param: float, elastic_net: float, max_iter: int) -> "LogisticModel":
        return cls(coefficients=fit.coefficients.tolist(), intercepts=fit.intercepts.tolist(),
                   multinomial=fit.multinomial, regParam=reg_param, elasticNetParam=elastic_net, maxIter=max_iter)

    def getRegParam(self) -> float:
        return self.getOrDefault(self.regParam)

    def getElasticNetParam(self) -> float:
        return self.getOrDefault(self.elasticNetParam)

    def getMaxIter(self) -> int:
        return self.getOrDefault(self.maxIter)

    def fit_result(self) -> "local_lr.LogisticFit":
        """The coefficients as the in-process solver returns them (NumPy)."""
        return local_lr.LogisticFit(np.array(self.getOrDefault(self.coefficients)),
                                    np.array(self.getOrDefault(self.intercepts)),
                                    self.getOrDefault(self.multinomial), 0)

    @property
    def numClasses(self) -> int:
        return len(self.getOrDefault(self.intercepts)) if self.getOrDefault(self.multinomial) else 2

    def _transform(self, dataset: DataFrame) -> DataFrame:
        # Each step is its own column, so every expression stays linear in the classes and features
        # (inlined margins would repeat the coefficient literals once per use).
        margins, exps = "_sparkvision_margins", "_sparkvision_exps"
        x = vector_to_array(F.col(self.getFeaturesCol()), "float64")
        # The coefficients as one JSON literal, parsed once when Spark folds constants (exactly: JSON keeps
        # Python's shortest round-trip form of each double). A literal per coefficient cost a py4j call each:
        # seconds of driver time for 4 x 1280 of them, paid again by every stream micro-batch.
        weights = F.from_json(F.lit(json.dumps(self.getOrDefault(self.coefficients))), "array<array<double>>")
        bias = F.from_json(F.lit(json.dumps(self.getOrDefault(self.intercepts))), "array<double>")
        out = dataset.withColumn(margins, F.zip_with(weights, bias, lambda w, b: _dot(x, w) + b))
        m = F.col(margins)
        if self.getOrDefault(self.multinomial):
            out = out.withColumn(exps, F.transform(m, lambda v: F.exp(v - F.array_max(m))))
            total = F.aggregate(F.col(exps), F.lit(0.0), lambda acc, v: acc + v)
            raw, proba = m, F.transform(F.col(exps), lambda v: v / total)
        else:
            p1 = F.lit(1.0) / (F.lit(1.0) + F.exp(-m[0]))
            raw, proba = F.array(-m[0], m[0]), F.array(F.lit(1.0) - p1, p1)
        out = out.withColumn(self.getRawPredictionCol(), array_to_vector(raw))
        out = out.withColumn(self.getProbabilityCol(), proba)
        p = F.col(self.getProbabilityCol())
        # Spark's rule: the first class with the largest probability.
        out = out.withColumn(self.getPredictionCol(), (F.array_position(p, F.array_max(p)) - 1).cast("double"))
        return out.withColumn(self.getProbabilityCol(), array_to_vector(p)).drop(margins, exps)


def _dot(x: Column, weights: Column) -> Column:
    """``x . weights`` for two array columns, summed in order (like BLAS' ddot)."""
    return F.aggregate(F.zip_with(x, weights, lambda a, b: a * b), F.lit(0.0), lambda acc, v: acc + v)
