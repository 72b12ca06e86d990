"""Train and tune a LogisticRegression on precomputed features, then assemble the full pipeline.

Tuning is k-fold cross-validation over ``regParam x elasticNetParam x maxIter`` on the training
rows only (stratified folds via ``foldCol``); features are computed once, before, and persisted:
no grid point ever re-runs the CNN. The saved ``PipelineModel`` is featurizer + classifier +
``IndexToString``, so it predicts straight from raw image bytes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import IndexToString
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame

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


def tune(train_features: DataFrame, n_classes: int, train_cfg: dict) -> TuningResult:
    """Cross-validate the grid on ``train_features`` (never the test rows) and refit the best point."""
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
    metric = train_cfg["metric"]
    evaluator = MulticlassClassificationEvaluator(labelCol=LABEL, metricName=metric)
    cv = CrossValidator(
        estimator=lr, estimatorParamMaps=grid, evaluator=evaluator, foldCol="fold",
        numFolds=train_cfg["folds"], seed=train_cfg["seed"], parallelism=max(1, min(parallel, len(grid))),
    )
    log.info("tuning %d grid points x %d folds on %d training rows", len(grid), train_cfg["folds"], rows)
    cv_model = cv.fit(data)
    data.unpersist()
    names = {"regParam": "reg_param", "elasticNetParam": "elastic_net_param", "maxIter": "max_iter"}
    rows = []
    for params, mean, std in zip(grid, cv_model.avgMetrics, cv_model.stdMetrics):
        rows.append({**{names[p.name]: v for p, v in params.items()}, "mean": mean, "std": std})
    best = cv_model.bestModel
    best_params = {
        "reg_param": best.getRegParam(), "elastic_net_param": best.getElasticNetParam(), "max_iter": best.getMaxIter()
    }
    return TuningResult(best, best_params, rows, metric, time.time() - started)


def assemble(featurizer: DeepImageFeaturizer, classifier: LogisticRegressionModel, classes: list[str]) -> PipelineModel:
    """featurizer -> classifier -> ``predicted_label`` (class names), one persistable model."""
    to_label = IndexToString(inputCol="prediction", outputCol="predicted_label", labels=list(classes))
    return PipelineModel(stages=[featurizer, classifier, to_label])


def classify_features(model: PipelineModel, features: DataFrame) -> DataFrame:
    """Apply everything after the featurizer: for rows whose features are already computed."""
    return PipelineModel(stages=model.stages[1:]).transform(features)

