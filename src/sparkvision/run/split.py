"""Stratified, deterministic train/validation/test split and cross-validation folds.

Rows are ranked inside their class by ``xxhash64(image_id, seed)``, so the split depends only on
the ids, labels and seed: not on partitioning, ordering or the machine. Each class gets
``round(n * fraction)`` test (and validation) rows, at least one and never all of them.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkvision.columns import FOLD, IMAGE_ID, LABEL, SPLIT

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def _rank_in_class(df: DataFrame, seed: int, key: str, label: str) -> DataFrame:
    keys = df.select(key, label).distinct()
    w = Window.partitionBy(label).orderBy(F.xxhash64(F.col(key), F.lit(seed)), F.col(key))
    return keys.select(
        key, label, F.row_number().over(w).alias("_rank"), F.count(F.lit(1)).over(Window.partitionBy(label)).alias("_n")
    )


def _share(n, fraction: float):
    """round(n * fraction), kept within [1, n - 1] when the class has at least two rows."""
    raw = F.round(n * F.lit(float(fraction))).cast("int")
    return F.when(n < 2, F.lit(0)).otherwise(F.greatest(F.lit(1), F.least(raw, n - 1))) if fraction > 0 else F.lit(0)


def stratified_split(
    df: DataFrame,
    test_fraction: float,
    validation_fraction: float = 0.0,
    seed: int = 12,
    key: str = IMAGE_ID,
    label: str = LABEL,
) -> DataFrame:
    """``df`` plus a ``split`` column: ``train``, ``validation`` or ``test``."""
    ranked = _rank_in_class(df, seed, key, label)
    n_test = _share(F.col("_n"), test_fraction)
    n_val = F.least(_share(F.col("_n"), validation_fraction), F.greatest(F.col("_n") - n_test - 1, F.lit(0)))
    split = (
        F.when(F.col("_rank") <= n_test, F.lit(TEST))
        .when(F.col("_rank") <= n_test + n_val, F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )
    return df.join(ranked.select(key, label, split.alias(SPLIT)), [key, label])


def assign_folds(df: DataFrame, folds: int, seed: int, key: str = IMAGE_ID, label: str = LABEL) -> DataFrame:
    """``df`` plus an integer ``fold`` column in ``[0, folds)``, stratified by class."""
    ranked = _rank_in_class(df, seed, key, label)
    return df.join(ranked.select(key, label, ((F.col("_rank") - 1) % folds).cast("int").alias(FOLD)), [key, label])


def split_report(df: DataFrame, label: str = LABEL) -> dict[str, dict[str, int]]:
    """``{class: {train: n, validation: n, test: n}}``."""
    report: dict[str, dict[str, int]] = {}
    for row in df.groupBy(label, SPLIT).count().collect():
        report.setdefault(row[label], {TRAIN: 0, VALIDATION: 0, TEST: 0})[row[SPLIT]] = row["count"]
    return dict(sorted(report.items()))
