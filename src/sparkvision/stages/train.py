"""Train and tune a LogisticRegression on precomputed features, then assemble the full pipeline.

Tuning is k-fold cross-validation over ``regParam x elasticNetParam x maxIter`` on the training
rows only (stratified folds via ``foldCol``); features are computed once, before, and persisted:
no grid point ever re-runs the CNN. Spark ML's solver costs a Spark job per iteration (seconds per
fit on small data), so by default each (grid point, fold) is scored in its own Spark task by an
in-process solver of the same objective, and the winner's solution becomes the classifier
(:class:`sparkvision.ml.logistic.LogisticModel`, Spark SQL expressions only: the same on classic Spark
and over Spark Connect). With ``train.tuning: spark`` (or features too large to collect), Spark ML's
CrossValidator tunes and its LogisticRegressionModel is the classifier. The saved ``PipelineModel`` is
featurizer + classifier + ``IndexToString``, so it predicts straight from raw image bytes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import StorageLevel, TaskContext
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import IndexToString
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from sparkvision.columns import FEATURES, FOLD, IMAGE_ID, LABEL_INDEX, PREDICTED_LABEL, PREDICTION, SPLIT
from sparkvision.columns import LABEL as LABEL_NAME
from sparkvision.ml import local_lr
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.ml.logistic import LogisticModel
from sparkvision.run import provenance, storage
from sparkvision.run.layout import RunLayout
from sparkvision.run.spark import default_parallelism, describe_jobs, driver_heap_bytes, is_remote
from sparkvision.run.split import TRAIN, assign_folds, split_report, stratified_split
from sparkvision.settings import Settings, TrainSettings
from sparkvision.stages.load import classes_of

log = logging.getLogger(__name__)
progress = logging.getLogger("sparkvision")  # the stage's progress lines, under the CLI's name

LABEL = LABEL_INDEX
ROWS_PER_PARTITION = 20_000
CACHE_BYTES_PER_PARTITION = 64 * 2**20


@dataclass
class TuningResult:
    model: LogisticRegressionModel | LogisticModel  # Spark's (engine spark) or ours (local)
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


def param_grid(lr: LogisticRegression, train: TrainSettings):
    return (
        ParamGridBuilder()
        .addGrid(lr.regParam, [float(v) for v in train.reg_param])
        .addGrid(lr.elasticNetParam, [float(v) for v in train.elastic_net_param])
        .addGrid(lr.maxIter, [int(v) for v in train.max_iter])
        .build()
    )


PARAM_NAMES = {"regParam": "reg_param", "elasticNetParam": "elastic_net_param", "maxIter": "max_iter"}


def _point(params) -> dict:
    """A grid ParamMap as config names: ``{"reg_param": 0.1, ...}``."""
    return {PARAM_NAMES[p.name]: v for p, v in params.items()}


def tune(train_features: DataFrame, n_classes: int, train: TrainSettings) -> TuningResult:
    """Cross-validate the grid on ``train_features`` (never the test rows) and refit the best point.

    ``train.tuning``: ``local`` scores every (grid point, fold) in its own Spark task with
    :mod:`sparkvision.ml.local_lr` (Spark's objective, solved in-process) and solves the winner once more on
    all training rows; ``spark`` runs Spark ML's CrossValidator; ``auto`` picks ``local`` when the training
    features fit ``train.local_max_mb`` (and, over Spark Connect, :data:`CONNECT_LOCAL_MAX_BYTES`).
    """
    started = time.time()
    lr = make_classifier(n_classes, train.standardization)
    grid = param_grid(lr, train)
    data = assign_folds(train_features.select(IMAGE_ID, LABEL_NAME, LABEL, FEATURES), train.folds,
                        train.seed)
    # Rows per class in one pass over the source (the cache's level depends on the engine they decide).
    per_class = [r["count"] for r in data.groupBy(LABEL).count().collect()]
    rows = sum(per_class)
    dim = len(data.select(FEATURES).first()[FEATURES]) if rows else 0
    engine = train.tuning
    if engine == "auto":
        spark = data.sparkSession
        engine = "local" if local_fits(rows, dim, train, is_remote(spark), driver_heap_bytes(spark)) else "spark"
    # LR runs one Spark job per iteration: for small data, task overhead dominates, so use few partitions;
    # but no partition's cached features over CACHE_BYTES_PER_PARTITION (two 25,000-row partitions of
    # 1280-wide features exhausted a 1 GB heap while being cached).
    parallel = default_parallelism(data.sparkSession)
    parts = max(min(parallel, math.ceil(rows / ROWS_PER_PARTITION)),
                math.ceil(rows * dim * 8 / CACHE_BYTES_PER_PARTITION))
    data = data.coalesce(max(1, parts)).persist(_cache_level(engine))
    min_class = min(per_class)
    if min_class < train.folds:
        log.warning("smallest class has %d training rows, fewer than %d folds", min_class, train.folds)
    log.info("tuning %d grid points x %d folds on %d training rows (%s)", len(grid), train.folds, rows, engine)
    tuned = (_tune_local if engine == "local" else _tune_spark)(lr, grid, data, n_classes, train)
    data.unpersist()
    model, rows_out = tuned
    best_params = {
        "reg_param": model.getRegParam(), "elastic_net_param": model.getElasticNetParam(),
        "max_iter": model.getMaxIter(),
    }
    return TuningResult(model, best_params, rows_out, train.metric, time.time() - started, engine)


def _cache_level(engine: str) -> StorageLevel:
    """Where the training rows are cached for ``engine``. CrossValidator caches each fold's rows and
    LogisticRegression its own blocks of them: a third copy in memory only competes with those for the heap
    (in local mode's 1 GB heap, 40,000 x 1280 features cached in memory ran it out of memory in
    CrossValidator, and on disk did not), so for ``spark`` it stays on disk. The local engine reads the
    rows once, to collect them."""
    return StorageLevel.DISK_ONLY if engine == "spark" else StorageLevel.MEMORY_AND_DISK


def _tune_spark(lr, grid, data: DataFrame, n_classes: int, train: TrainSettings):
    evaluator = MulticlassClassificationEvaluator(labelCol=LABEL, metricName=train.metric)
    # Small fits are latency-bound (a Spark job per iteration): run the grid points concurrently.
    cv = CrossValidator(
        estimator=lr, estimatorParamMaps=grid, evaluator=evaluator, foldCol=FOLD,
        numFolds=train.folds, seed=train.seed, parallelism=len(grid),
    )
    cv_model = cv.fit(data)
    rows = [{**_point(params), "mean": mean, "std": std}
            for params, mean, std in zip(grid, cv_model.avgMetrics, cv_model.stdMetrics)]
    return cv_model.bestModel, rows


# Over Spark Connect the training arrays travel inside the scoring function, within the plan, whose size
# the server bounds (spark.connect.grpc.maxInboundMessageSize, 128 MB by default); above this the grid is
# tuned by CrossValidator instead. Classic Spark broadcasts a large function itself.
CONNECT_LOCAL_MAX_BYTES = 64 * 2**20
# The local engine collects the training matrix (float32) through the driver JVM, which holds it several
# times over on the way (task results fetched, then deserialised, then served as Arrow batches): with local
# mode's default 1 GB heap, 33,000 x 1280 (170 MB) ran out of memory and 26,000 x 1280 (133 MB) did not.
# Above heap / DRIVER_HEAP_SHARE the grid is tuned by CrossValidator, which streams cached partitions.
DRIVER_HEAP_SHARE = 8


def local_fits(rows: int, dim: int, train: TrainSettings, remote: bool, heap_bytes: int | None = None) -> bool:
    """Whether the in-process engine may take training features of ``rows x dim``: within
    ``train.local_max_mb`` (counted as float64), within :data:`CONNECT_LOCAL_MAX_BYTES` over Spark Connect,
    and with the float32 matrix within ``heap_bytes / DRIVER_HEAP_SHARE`` of the driver's heap where known."""
    size = rows * dim * 8
    if size > train.local_max_mb * 2**20:
        return False
    if remote:
        return size // 2 <= CONNECT_LOCAL_MAX_BYTES
    return heap_bytes is None or size // 2 <= heap_bytes // DRIVER_HEAP_SHARE


def _tune_local(lr, grid, data: DataFrame, n_classes: int, train: TrainSettings):
    """One Spark task per (grid point, fold) scores the point with the in-process solver; the winner is
    solved once more on all training rows, here, and becomes the model (:class:`sparkvision.ml.logistic.LogisticModel`).

    The same code runs on classic Spark and over Spark Connect: the tasks are a small DataFrame, the
    training arrays go with the scoring function (PySpark broadcasts a large function itself)."""
    # In image_id order: the solver's sums then do not depend on how the rows were partitioned.
    # Through Arrow into NumPy (not Row objects: a Python float per feature is ~6 times the bytes).
    collected = (data.select(IMAGE_ID, vector_to_array(FEATURES, "float32").alias("x"), LABEL, FOLD)
                 .orderBy(IMAGE_ID).toPandas())
    x = (np.stack(collected["x"].to_numpy()).astype(np.float32, copy=False) if len(collected)
         else np.zeros((0, 0), np.float32))
    y = collected[LABEL].to_numpy(dtype=np.int64)
    fold = collected[FOLD].to_numpy(dtype=np.int64)
    del collected
    points = [_point(params) for params in grid]
    folds, metric, standardize = train.folds, train.metric, train.standardization

    def score(batches):
        ctx = TaskContext.get()
        for batch in batches:
            out = []
            for point, k in zip(batch["point"], batch["fold"]):
                p = points[point]
                with _blas_threads(ctx.cpus() if ctx else 1):
                    model = local_lr.fit(x[fold != k], y[fold != k], n_classes, p["reg_param"], p["elastic_net_param"],
                                p["max_iter"], standardize)
                    value = local_lr.metric(metric, y[fold == k], model.probabilities(x[fold == k].astype(np.float64)))
                out.append((int(point), int(k), float(value)))
            yield pd.DataFrame(out, columns=["point", "fold", "value"])

    spark = data.sparkSession
    tasks = [(i, k) for i in range(len(points)) for k in range(folds)]
    scores = (spark.createDataFrame(tasks, "point int, fold int").repartition(len(tasks))
              .mapInPandas(score, "point int, fold int, value double").collect())
    per_point = np.zeros((len(points), folds))
    for r in scores:
        per_point[r["point"], r["fold"]] = r["value"]
    means, stds = per_point.mean(axis=1), per_point.std(axis=1)
    best = int(np.argmax(means) if local_lr.LARGER_IS_BETTER[metric] else np.argmin(means))
    p = points[best]
    with _blas_threads(1):
        solution = local_lr.fit(x, y, n_classes, p["reg_param"], p["elastic_net_param"], p["max_iter"], standardize)
    model = LogisticModel.from_fit(solution, p["reg_param"], p["elastic_net_param"], p["max_iter"])
    rows = [{**pt, "mean": float(m), "std": float(s)} for pt, m, s in zip(points, means, stds)]
    return model, rows


@contextmanager
def _blas_threads(n: int):
    """Bound NumPy's BLAS pool to the task's cores (oversubscribed OpenBLAS threads spin)."""
    with threadpool_limits(limits=max(1, n), user_api="blas"):
        yield


def assemble(featurizer: DeepImageFeaturizer, classifier, classes: list[str]) -> PipelineModel:
    """featurizer -> classifier -> ``predicted_label`` (class names), one persistable model."""
    to_label = IndexToString(inputCol=PREDICTION, outputCol=PREDICTED_LABEL, labels=list(classes))
    return PipelineModel(stages=[featurizer, classifier, to_label])


def classify_features(model: PipelineModel, features: DataFrame) -> DataFrame:
    """Apply everything after the featurizer: for rows whose features are already computed."""
    return PipelineModel(stages=model.stages[1:]).transform(features)



def stage_train(spark: SparkSession, cfg: Settings) -> dict:
    """``sparkvision train``: ``features.parquet`` -> ``split.parquet`` + ``model/`` (``split.*``, ``train.*``)."""
    describe_jobs(spark, "train")
    lay = RunLayout(cfg.output.dir)
    featurized = provenance.check_inputs(lay, "train")
    fp = provenance.fingerprint("train", featurized["fingerprint"], cfg.split.to_dict(), cfg.train.to_dict())
    marker = provenance.marker("train", fp)
    features = spark.read.parquet(lay.features)
    classes = classes_of(features)
    s = cfg.split
    assigned = stratified_split(features, s.test_fraction, s.validation_fraction, s.seed)
    split_tmp = storage.staged_parquet(assigned.select(IMAGE_ID, LABEL_NAME, SPLIT), lay.split, marker=marker)
    model_tmp = None
    try:
        split = spark.read.parquet(split_tmp)
        report = split_report(split)
        train_rows = features.join(split.filter(F.col(SPLIT) == TRAIN), [IMAGE_ID, LABEL_NAME])
        counts = {r[LABEL]: r["count"] for r in train_rows.groupBy(LABEL).count().collect()}
        majority = max(sorted(counts), key=lambda k: counts[k])
        result = tune(train_rows, len(classes), cfg.train)
        featurizer = DeepImageFeaturizer.load(lay.featurizer)
        model_tmp = storage.save_ml(assemble(featurizer, result.model, classes), lay.model, marker)
        storage.replace_with(split_tmp, lay.split)
        storage.replace_with(model_tmp, lay.model)
    finally:
        for tmp in (split_tmp, model_tmp):
            if tmp:
                storage.delete(tmp)
    summary = {
        "classes": classes,
        "split": report,
        "majority_class": majority,
        "tuning": {"metric": result.metric, "folds": cfg.train.folds, "engine": result.engine, "grid": result.grid,
                   "best_params": result.best_params, "seconds": result.seconds},
        "fingerprint": fp,
        "inputs": {"featurize": featurized["fingerprint"]},
    }
    storage.write_json(lay.train, summary)
    progress.info("train: best %s (%s CV, %s engine, %.1f s); model saved to %s", result.best_params, result.metric,
                  result.engine, result.seconds, lay.model)
    return summary
