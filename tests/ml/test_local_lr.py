"""The in-process LogisticRegression solves Spark ML's problem: same optimum, same metrics, same CV."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors

from sparkvision.ml import local_lr

from sparkvision.settings import TrainSettings
from sparkvision.stages import train


def _blobs(n_classes: int, n: int = 90, d: int = 6, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(0, 1.5, (n_classes, d))
    x = centres[y] + rng.normal(0, 1.0, (n, d)) * rng.uniform(0.5, 3.0, d)  # unequal feature scales
    return x, y


def _frame(spark, x, y):
    rows = [(int(i), str(int(label)), int(label), Vectors.dense(v)) for i, (v, label) in enumerate(zip(x, y))]
    return spark.createDataFrame(rows, ["image_id", "label", train.LABEL, train.FEATURES])


@pytest.mark.parametrize("n_classes,reg,alpha,standardization", [
    (3, 0.1, 0.0, False), (3, 0.05, 0.5, False), (3, 0.05, 0.5, True), (2, 0.1, 0.0, False), (2, 0.02, 1.0, True),
])
@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_local_fit_reaches_spark_optimum(spark, n_classes, reg, alpha, standardization):
    x, y = _blobs(n_classes)
    spark_model = LogisticRegression(
        featuresCol=train.FEATURES, labelCol=train.LABEL, regParam=reg, elasticNetParam=alpha, maxIter=1000,
        tol=1e-12, standardization=standardization, family="multinomial" if n_classes > 2 else "binomial",
    ).fit(_frame(spark, x, y))
    local = local_lr.fit(x, y, n_classes, reg, alpha, 1000, standardization, tol=1e-14)
    expected = np.array([spark_model.predictProbability(Vectors.dense(v)).toArray() for v in x])
    np.testing.assert_allclose(local.probabilities(x), expected, atol=2e-4)
    np.testing.assert_allclose(local.coefficients, spark_model.coefficientMatrix.toArray(), atol=2e-3)


def test_metrics_match_spark_evaluator(spark):
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), 50)
    proba[0] = [1.0, 0.0, 0.0, 0.0]  # a zero probability for a true class: clipped like Spark
    y = rng.integers(0, 4, 50)
    y[0] = 3
    rows = [(float(label), float(p.argmax()), Vectors.dense(p)) for label, p in zip(y, proba)]
    df = spark.createDataFrame(rows, ["label", "prediction", "probability"])
    for name in ("logLoss", "accuracy", "f1"):
        expected = MulticlassClassificationEvaluator(metricName=name).evaluate(df)
        assert local_lr.metric(name, y, proba) == pytest.approx(expected, rel=1e-9), name


def _settings(tuning: str, **changes) -> TrainSettings:
    return dataclasses.replace(
        TrainSettings(reg_param=(0.01, 0.1, 3.0), elastic_net_param=(0.0,), max_iter=(500,), folds=3,
                      standardization=False, metric="logLoss", seed=5, tuning=tuning, local_max_mb=64), **changes)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_local_tuning_agrees_with_crossvalidator(spark):
    x, y = _blobs(3, n=60)
    df = _frame(spark, x, y).cache()
    local = train.tune(df, 3, _settings("auto"))
    cv = train.tune(df, 3, _settings("spark"))
    assert local.engine == "local" and cv.engine == "spark"
    assert local.best_params == cv.best_params
    np.testing.assert_allclose([r["mean"] for r in local.grid], [r["mean"] for r in cv.grid], atol=2e-3)
    # The local winner is the in-process solution as a Spark ML model; it predicts what Spark's own fit does.
    assert type(local.model).__name__ == "LogisticModel" and type(cv.model).__name__ == "LogisticRegressionModel"
    assert local.model.getRegParam() == local.best_params["reg_param"]
    from pyspark.ml.functions import vector_to_array

    def proba(model):
        return np.array([r.p for r in model.transform(df).select(vector_to_array("probability").alias("p"))
                         .orderBy("image_id").collect()])

    np.testing.assert_allclose(proba(local.model), proba(cv.model), atol=2e-3)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_model_applies_like_spark(spark, n_classes, tmp_path):
    """Spark's LogisticRegressionModel and ours, given the same coefficients, give the same columns."""
    from pyspark.ml.functions import vector_to_array

    from sparkvision.ml.logistic import LogisticModel

    x, y = _blobs(n_classes, n=40)
    df = _frame(spark, x, y)
    spark_model = LogisticRegression(featuresCol=train.FEATURES, labelCol=train.LABEL, regParam=0.1, maxIter=200,
                                     family="multinomial" if n_classes > 2 else "binomial").fit(df)
    coef = spark_model.coefficientMatrix.toArray()
    ours = LogisticModel(coefficients=coef.tolist(), intercepts=list(spark_model.interceptVector.toArray()),
                         multinomial=n_classes > 2, regParam=0.1, elasticNetParam=0.0, maxIter=200)
    ours.write().save(str(tmp_path / "m"))
    ours = LogisticModel.load(str(tmp_path / "m"))
    cols = [vector_to_array("rawPrediction").alias("raw"), vector_to_array("probability").alias("p"), "prediction"]
    a = spark_model.transform(df).orderBy("image_id").select(*cols).collect()
    b = ours.transform(df).orderBy("image_id").select(*cols).collect()
    np.testing.assert_allclose([r.raw for r in b], [r.raw for r in a], atol=1e-9)
    np.testing.assert_allclose([r.p for r in b], [r.p for r in a], atol=1e-12)
    assert [r.prediction for r in b] == [r.prediction for r in a]


def test_logistic_model_coefficients_are_one_folded_constant(spark):
    """The coefficients reach Spark as one literal, parsed once by constant folding (not once per row), and
    bit-exact: every double survives the JSON round trip."""
    from sparkvision.ml.logistic import LogisticModel

    rng = np.random.default_rng(3)
    coef, bias = rng.normal(size=(3, 1280)) * 1e-3, rng.normal(size=3)
    x = rng.normal(size=(4, 1280))
    df = _frame(spark, x, np.arange(4) % 3)
    out = LogisticModel(coefficients=coef.tolist(), intercepts=bias.tolist(), multinomial=True).transform(df)
    plan = out._jdf.queryExecution().optimizedPlan().toString().lower()
    assert "from_json" not in plan and "jsontostructs" not in plan, plan[:2000]
    raw = np.array([r.rawPrediction.toArray() for r in out.orderBy("image_id").collect()])
    expect = np.array([[sum(a * b for a, b in zip(row, w)) + c for w, c in zip(coef, bias)] for row in x])
    np.testing.assert_allclose(raw, expect, rtol=0, atol=1e-12)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_auto_falls_back_to_crossvalidator_when_features_do_not_fit(spark):
    x, y = _blobs(2, n=30)
    settings = _settings("auto", reg_param=(0.1,), max_iter=(5,), local_max_mb=1)
    df = _frame(spark, np.repeat(x, 3000, axis=1), y)  # 30 x 18,000 doubles = 4.1 MB > 1 MB
    assert train.tune(df, 2, settings).engine == "spark"


def test_local_engine_is_bounded_by_the_drivers_heap(spark):
    """The local engine collects the float32 matrix through the driver JVM: auto leaves it to CrossValidator
    when the matrix is over heap / DRIVER_HEAP_SHARE, whatever train.local_max_mb allows."""
    from sparkvision.run.spark import _size_bytes, driver_heap_bytes

    settings = _settings("auto", local_max_mb=512)
    heap = 2**30
    fits = (heap // train.DRIVER_HEAP_SHARE) // (1280 * 4)  # rows of 1280 float32 features within the share
    assert train.local_fits(fits, 1280, settings, remote=False, heap_bytes=heap)
    assert not train.local_fits(fits + 1, 1280, settings, remote=False, heap_bytes=heap)
    assert train.local_fits(fits + 1, 1280, settings, remote=False, heap_bytes=3 * heap)  # a 3 GB driver takes it
    assert not train.local_fits(60_000, 1280, settings, remote=False, heap_bytes=8 * heap)  # local_max_mb still bounds
    assert train.local_fits(6_000, 1280, settings, remote=True, heap_bytes=None)  # 30 MB over Connect
    assert not train.local_fits(14_000, 1280, settings, remote=True, heap_bytes=None)  # over CONNECT_LOCAL_MAX_BYTES
    # The session's own heap, from its JVM: local mode's default is 1 GB (less what the JVM keeps back).
    assert 2**29 < driver_heap_bytes(spark) <= 2**30
    assert [_size_bytes(v) for v in ("3g", "512m", "2048", "1.5g", "4GB")] == [3 * 2**30, 2**29, 2**31, None, 4 * 2**30]


_SMALL_HEAP_TUNING = """
import sys
import numpy as np, pandas as pd
from pyspark.ml.functions import array_to_vector
from sparkvision.settings import TrainSettings
from sparkvision.stages import train
from sparkvision.run.spark import get_spark

n, out = int(sys.argv[1]), sys.argv[2]
spark = get_spark("local[2]", "small-heap-tuning", {"spark.driver.memory": "512m", "spark.ui.showConsoleProgress": "false"})
rng = np.random.default_rng(0)
y = np.arange(n) % 4
x = np.clip(rng.gamma(1.0, 0.5, (n, 1280)) + (np.arange(1280)[None, :] % 4 == y[:, None]) * 0.5, 0, 6).astype(np.float32)
frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "label": [f"c{k}" for k in y], "label_index": y.astype(float),
                      "x": list(x)})
del x
(spark.createDataFrame(frame).select("image_id", "label", "label_index", array_to_vector("x").alias("features"))
 .write.parquet(out))
del frame
settings = TrainSettings(reg_param=(0.1,), elastic_net_param=(0.0,), max_iter=(20,), tuning="spark")
result = train.tune(spark.read.parquet(out), 4, settings)
print("TUNED", result.engine, result.model.coefficientMatrix.numRows, result.model.coefficientMatrix.numCols)
"""


@pytest.mark.slow
def test_crossvalidator_tuning_fits_a_small_heap(tmp_path):
    """CrossValidator caches each fold and LogisticRegression its blocks: the training rows' own cache stays on
    disk for the spark engine. 12,000 x 1280 features in a 512 MB driver heap ran out of memory while the
    rows were also cached in memory."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    done = subprocess.run([sys.executable, "-c", _SMALL_HEAP_TUNING, "12000", str(tmp_path / "features.parquet")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert "OutOfMemoryError" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, done.stderr[-4000:]
    assert "TUNED spark 4 1280" in done.stdout, done.stdout[-2000:]
    assert train._cache_level("spark").useMemory is False and train._cache_level("local").useMemory is True
