"""Predict with a saved pipeline: raw images in, class names and probabilities out.

Every file under the input folder ends up in the predictions or in ``rejected.csv`` with its reason,
including images that the load accepted but the saved model's featurizer cannot use.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision.columns import (CONFIDENCE, CONTENT, FEATURIZE_ERROR, IMAGE_COLUMNS, IMAGE_ID, LABEL, PATH,
                                 PREDICTED_LABEL, PROBABILITY, REASON, REJECTED_COLUMNS)
from sparkvision.run import storage
from sparkvision.run.layout import PredictionLayout
from sparkvision.run.spark import describe_jobs
from sparkvision.settings import DataSettings, Settings
from sparkvision.stages import load as loader

progress = logging.getLogger("sparkvision")  # the stage's progress lines, under the CLI's name


def load_model(path: str) -> PipelineModel:
    if not storage.exists(path):
        raise FileNotFoundError(f"model folder not found: {path} (train one with 'sparkvision train')")
    return PipelineModel.load(path)


def unlabelled_images(spark: SparkSession, root: str, data: DataSettings) -> tuple[DataFrame, DataFrame, dict]:
    """All image files under ``root`` (any depth, no labels needed), checked as ``data`` says (extensions,
    sizes, validation): ``(images, rejected, counts)``."""
    inv = loader.folder_inventory(root, data, labelled=False)
    checked = loader.checked_table(spark, inv, data, classes=None)
    # Only the check's verdicts are cached: caching the files' bytes too took a 1 GB driver heap down on 10,000
    # photos. The accepted files are read again where they are used; one that fails then (changed or gone since
    # the check) reaches the featurizer without bytes and is rejected there, with its reason, not lost.
    verdicts = checked.drop(CONTENT).persist(StorageLevel.MEMORY_AND_DISK)
    accepted = verdicts.filter(F.col(REASON).isNull()).select(IMAGE_ID)
    images = checked.join(F.broadcast(accepted), IMAGE_ID, "left_semi").select(*IMAGE_COLUMNS)
    rejected = verdicts.filter(F.col(REASON).isNotNull()).select(*REJECTED_COLUMNS)
    row = verdicts.agg(F.count(F.lit(1)).alias("all"), F.count_if(F.col(REASON).isNull()).alias("ok")).first()
    if row["all"] != len(inv.rows):  # against the driver's own listing
        raise AssertionError(f"--images {root}: {row['all']} files checked, {len(inv.rows)} listed")
    counts = {"discovered": len(inv.rows), "accepted": row["ok"], "rejected": row["all"] - row["ok"]}
    return images, rejected, counts


def predict(model: PipelineModel, images: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(predictions, unusable)``: the model applied to every image its featurizer can use, and the
    others as rejected rows with the featurizer's reason (nothing is dropped silently)."""
    return _split(model, _featurized(model, images))


@contextmanager
def predicted(model: PipelineModel, images: DataFrame, carry: tuple[str, ...] = ()
              ) -> Iterator[tuple[DataFrame, DataFrame]]:
    """:func:`predict` whose cached network output is released when the block ends (a stream's micro-batch);
    the ``carry`` columns of ``images`` are kept in both outputs."""
    featurized = _featurized(model, images)
    try:
        yield _split(model, featurized, carry)
    finally:
        featurized.unpersist()


def _featurized(model: PipelineModel, images: DataFrame) -> DataFrame:
    featurizer = model.stages[0]
    featurized = featurizer.copy({featurizer.errorCol: FEATURIZE_ERROR}).transform(images)
    # the network runs once for both outputs; the images' bytes are not needed after it (nor kept in the cache)
    return featurized.drop(CONTENT).persist(StorageLevel.MEMORY_AND_DISK)


def _split(model: PipelineModel, featurized: DataFrame, carry: tuple[str, ...] = ()) -> tuple[DataFrame, DataFrame]:
    rest = PipelineModel(stages=model.stages[1:])
    ok = featurized.filter(F.col(FEATURIZE_ERROR).isNull())
    unusable = featurized.filter(F.col(FEATURIZE_ERROR).isNotNull()).select(
        IMAGE_ID, PATH, LABEL, F.concat(F.lit("the model's featurizer cannot use it: "), F.col(FEATURIZE_ERROR)).alias(REASON),
        *carry)
    return predictions_table(rest.transform(ok), *carry).drop(LABEL), unusable


def predictions_table(predictions: DataFrame, *extra: str) -> DataFrame:
    """``image_id, path, label, predicted_label, confidence, probability`` (probability as an array), then
    the ``extra`` columns."""
    proba = vector_to_array(PROBABILITY)
    return predictions.select(
        IMAGE_ID, PATH, LABEL, PREDICTED_LABEL, F.array_max(proba).alias(CONFIDENCE), proba.alias(PROBABILITY), *extra,
    )


def write_predictions(df: DataFrame, out: PredictionLayout) -> dict:
    """``predictions.parquet`` and ``predictions.csv``; returns their paths and the number of rows."""
    storage.write_parquet(df, out.parquet)
    written = df.sparkSession.read.parquet(out.parquet)
    storage.write_csv(written, out.csv)
    return {"parquet": out.parquet, "csv": out.csv, "images": written.count()}


def stage_predict(spark: SparkSession, cfg: Settings, model_dir: str, images_dir: str, out_dir: str,
                  source: dict | None = None) -> dict:
    """``sparkvision predict``: ``images_dir`` with the model at ``model_dir``, run as ``featurize.*`` says
    (``source``: where the model came from, e.g. the registered model it was fetched from, recorded in
    ``predict.json``)."""
    describe_jobs(spark, "predict")
    out = PredictionLayout(out_dir)
    model = load_model(model_dir)
    model.stages[0].setParams(**cfg.featurize.to_params())  # any engine runs a model saved with another
    images, rejected, counts = unlabelled_images(spark, images_dir, cfg.data)
    predictions, unusable = predict(model, images)
    storage.makedirs(out_dir)
    written = write_predictions(predictions.orderBy(IMAGE_ID), out)
    rejected = rejected.unionByName(unusable)
    storage.write_csv(rejected.orderBy(IMAGE_ID), out.rejected_csv)
    n_unusable = counts["accepted"] - written["images"]
    summary = {**counts, "accepted": written["images"], "rejected": counts["rejected"] + n_unusable,
               "parquet": out.parquet, "csv": out.csv, "rejected_csv": out.rejected_csv,
               "model": source or {"path": model_dir}}
    storage.write_json(out.summary, summary)
    progress.info("predict: %d images predicted, %d rejected (reasons in %s)", summary["accepted"],
                  summary["rejected"], out.rejected_csv)
    return summary
