"""Train and tune a LogisticRegression on precomputed features, then assemble the full pipeline.

Tuning is k-fold cross-validation over ``regParam x elasticNetParam x maxIter`` on the training
rows only (stratified folds via ``foldCol``); features are computed once, before, and persisted:
no grid point ever re-runs the CNN. Spark ML's solver costs a Spark job per iteration (seconds per
fit on small data), so by default each (grid point, fold) is scored in its own Spark task by an
in-process solver of the same objective, and only the winner is fit by Spark ML. The saved ``PipelineModel`` is featurizer + classifier +
``IndexToString``, so it predicts straight from raw image bytes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import IndexToString
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame

from . import local_lr
from .featurizer import DeepImageFeaturizer
from .split import assign_folds

log = logging.getLogger(__name__)

FEATURES, LABEL = "features", "label_index"
ROWS_PER_PARTITION = 20_000


@dataclass
class TuningResult:
    model: LogisticRegressionModel
    best_params: dict
    grid: list[dict]           # one entry per grid point: params, mean and std of the CV metric
    metric: str
    seconds: float
    engine: str = "spark"      # "local" (in-process solver in Spark tasks) or "spark" (CrossValidator)


def make_classifier(n_classes: int, standardization: bool = False) -> LogisticRegression:
    return LogisticRegression(
        featuresCol=FEATURES, labelCol=LABEL, family="binomial" if n_classes == 2 else "multinomial",
        standardization=standardization,
    )


def param_grid(lr: LogisticRegression, train_cfg: dict):
    return (
        ParamGridBuilder()
        .addGrid(lr.regParam, [float(v) for v in train_cfg["reg_param"]])
        .addGrid(lr.elasticNetParam, [float(v) for v in train_cfg["elastic_net_param"]])
        .addGrid(lr.maxIter, [int(v) for v in train_cfg["max_iter"]])
        .build()
    )


PARAM_NAMES = {"regParam": "reg_param", "elasticNetParam": "elastic_net_param", "maxIter": "max_iter"}


def _point(params) -> dict:
    """A grid ParamMap as config names: ``{"reg_param": 0.1, ...}``."""
    return {PARAM_NAMES[p.name]: v for p, v in params.items()}


def tune(train_features: DataFrame, n_classes: int, train_cfg: dict) -> TuningResult:
    """Cross-validate the grid on ``train_features`` (never the test rows) and refit the best point.

    ``train.tuning``: ``local`` scores every (grid point, fold) in its own Spark task with
    :mod:`sparkvision.local_lr` (Spark's objective, solved in-process), then refits the winner with
    Spark ML, warm-started from the in-process solution; ``spark`` runs Spark ML's CrossValidator;
    ``auto`` picks ``local`` when the training features fit ``train.local_max_mb``.
    """
    started = time.time()
    lr = make_classifier(n_classes, train_cfg["standardization"])
    grid = param_grid(lr, train_cfg)
    data = assign_folds(train_features.select("image_id", "label", LABEL, FEATURES), train_cfg["folds"],
                        train_cfg["seed"])
    # LR runs one Spark job per iteration: for small data, task overhead dominates, so use few partitions.
    parallel = data.sparkSession.sparkContext.defaultParallelism
    rows = data.count()
    data = data.coalesce(max(1, min(parallel, math.ceil(rows / ROWS_PER_PARTITION)))).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    min_class = min(r["count"] for r in data.groupBy(LABEL).count().collect())
    if min_class < train_cfg["folds"]:
        log.warning("smallest class has %d training rows, fewer than %d folds", min_class, train_cfg["folds"])
    dim = len(data.first()[FEATURES])
    engine = train_cfg["tuning"]
    if engine == "auto":
        engine = "local" if rows * dim * 8 <= train_cfg["local_max_mb"] * 2**20 else "spark"
    log.info("tuning %d grid points x %d folds on %d training rows (%s)", len(grid), train_cfg["folds"], rows, engine)
    tuned = (_tune_local if engine == "local" else _tune_spark)(lr, grid, data, n_classes, train_cfg)
    data.unpersist()
    model, rows_out = tuned
    best_params = {
        "reg_param": model.getRegParam(), "elastic_net_param": model.getElasticNetParam(),
        "max_iter": model.getMaxIter(),
    }
    return TuningResult(model, best_params, rows_out, train_cfg["metric"], time.time() - started, engine)


def _tune_spark(lr, grid, data: DataFrame, n_classes: int, train_cfg: dict):
    evaluator = MulticlassClassificationEvaluator(labelCol=LABEL, metricName=train_cfg["metric"])
    # Small fits are latency-bound (a Spark job per iteration): run the grid points concurrently.
    cv = CrossValidator(
        estimator=lr, estimatorParamMaps=grid, evaluator=evaluator, foldCol="fold",
        numFolds=train_cfg["folds"], seed=train_cfg["seed"], parallelism=len(grid),
    )
    cv_model = cv.fit(data)
    rows = [{**_point(params), "mean": mean, "std": std}
            for params, mean, std in zip(grid, cv_model.avgMetrics, cv_model.stdMetrics)]
    return cv_model.bestModel, rows


def _tune_local(lr, grid, data: DataFrame, n_classes: int, train_cfg: dict):
    """One Spark task per (grid point, fold) on broadcast features; the winner refit by Spark ML."""
    from pyspark.ml.functions import vector_to_array

    collected = data.select(vector_to_array(FEATURES, "float32").alias("x"), LABEL, "fold").collect()
    x = np.array([r["x"] for r in collected], dtype=np.float32)
    y = np.array([int(r[LABEL]) for r in collected], dtype=np.int64)
    fold = np.array([r["fold"] for r in collected], dtype=np.int64)
    points = [_point(params) for params in grid]
    folds, metric, standardize = train_cfg["folds"], train_cfg["metric"], train_cfg["standardization"]
    sc = data.sparkSession.sparkContext
    shared = sc.broadcast((x, y, fold))

    def score(task):
        from pyspark import TaskContext

        from sparkvision.local_lr import fit, metric as metric_of

        point, k = task
        xs, ys, fs = shared.value
        p = points[point]
        with _blas_threads(TaskContext.get().cpus() if TaskContext.get() else 1):
            model = fit(xs[fs != k], ys[fs != k], n_classes, p["reg_param"], p["elastic_net_param"],
                        p["max_iter"], standardize)
            return point, k, metric_of(metric, ys[fs == k], model.probabilities(xs[fs == k].astype(np.float64)))

    tasks = [(i, k) for i in range(len(points)) for k in range(folds)]
    scores = sc.parallelize(tasks, len(tasks)).map(score).collect()
    shared.unpersist()
    per_point = np.zeros((len(points), folds))
    for i, k, value in scores:
        per_point[i, k] = value
    means, stds = per_point.mean(axis=1), per_point.std(axis=1)
    best = int(np.argmax(means) if local_lr.LARGER_IS_BETTER[metric] else np.argmin(means))
    p = points[best]
    with _blas_threads(1):
        start = local_lr.fit(x, y, n_classes, p["reg_param"], p["elastic_net_param"], p["max_iter"], standardize)
    final = lr.copy({lr.regParam: float(p["reg_param"]), lr.elasticNetParam: float(p["elastic_net_param"]),
                     lr.maxIter: int(p["max_iter"])})
    model = fit_warm_started(final, data, start)
    rows = [{**pt, "mean": float(m), "std": float(s)} for pt, m, s in zip(points, means, stds)]
    return model, rows


def fit_warm_started(lr: LogisticRegression, data: DataFrame, start: "local_lr.LogisticFit") -> LogisticRegressionModel:
    """Spark ML's fit, its solver started from ``start`` (Spark's ``initialModel``, not in PySpark's API)."""
    from pyspark.ml.common import _py2java
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    sc = data.sparkSession.sparkContext
    coef = start.coefficients
    jvm_model = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        "sparkvision-start", _py2java(sc, DenseMatrix(coef.shape[0], coef.shape[1], coef.ravel(order="F").tolist())),
        _py2java(sc, DenseVector(start.intercepts)), 2 if not start.multinomial else coef.shape[0], start.multinomial,
    )
    lr._transfer_params_to_java()
    lr._java_obj.setInitialModel(jvm_model)
    model = LogisticRegressionModel(lr._java_obj.fit(data._jdf))
    lr._copyValues(model)
    return model


@contextmanager
def _blas_threads(n: int):
    """Bound NumPy's BLAS pool to the task's cores (oversubscribed OpenBLAS threads spin)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=max(1, n), user_api="blas"):
        yield


def assemble(featurizer: DeepImageFeaturizer, classifier: LogisticRegressionModel, classes: list[str]) -> PipelineModel:
    """featurizer -> classifier -> ``predicted_label`` (class names), one persistable model."""
    to_label = IndexToString(inputCol="prediction", outputCol="predicted_label", labels=list(classes))
    return PipelineModel(stages=[featurizer, classifier, to_label])


def classify_features(model: PipelineModel, features: DataFrame) -> DataFrame:
    """Apply everything after the featurizer: for rows whose features are already computed."""
    return PipelineModel(stages=model.stages[1:]).transform(features)

