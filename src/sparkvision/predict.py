"""Predict with a saved pipeline: raw images in, class names and probabilities out."""

from __future__ import annotations

import csv
import json
import os
import uuid

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import loader, storage
from .evaluate import predictions_table


def load_model(path: str) -> PipelineModel:
    if not os.path.exists(path) and "://" not in path:
        raise FileNotFoundError(f"model folder not found: {path} (train one with 'sparkvision train')")
    return PipelineModel.load(path)


def unlabelled_images(spark: SparkSession, root: str, data_cfg: dict) -> tuple[DataFrame, DataFrame, dict]:
    """All image files under ``root`` (any depth, no labels needed): ``(images, rejected, counts)``."""
    checked, discovered = loader.scan_folder(spark, root, data_cfg, labelled=False)
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    images = checked.filter(F.col("reason").isNull()).select("image_id", "path", "label", "width", "height", "content")
    rejected = checked.filter(F.col("reason").isNotNull()).select(*loader.REJECTED_COLUMNS)
    row = checked.agg(F.count(F.lit(1)).alias("all"), F.count(F.when(F.col("reason").isNull(), 1)).alias("ok")).first()
    if row["all"] != discovered:
        raise AssertionError(f"--images {root}: {row['all']} files checked, {discovered} discovered")
    counts = {"discovered": discovered, "accepted": row["ok"], "rejected": row["all"] - row["ok"]}
    return images, rejected, counts


def predict(model: PipelineModel, images: DataFrame) -> DataFrame:
    return predictions_table(model.transform(images)).drop("label")


def write_csv(df: DataFrame, path: str) -> None:
    """One CSV file on the driver, streamed, written atomically; arrays as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(df.columns)
        for row in df.toLocalIterator():
            writer.writerow([json.dumps(v) if isinstance(v, list) else v for v in row])
    os.replace(tmp, path)


def write_predictions(df: DataFrame, out_dir: str) -> dict:
    parquet, csv_path = os.path.join(out_dir, "predictions.parquet"), os.path.join(out_dir, "predictions.csv")
    storage.write_parquet(df, parquet)
    write_csv(df.sparkSession.read.parquet(parquet), csv_path)
    return {"parquet": parquet, "csv": csv_path}
