"""Atomic stage outputs: write next to the target, then swap it in, on any Hadoop file system.

A re-run replaces a stage's output whole; a crash mid-write leaves the previous output (or
nothing) in place, never a half-written or duplicated table.
"""

from __future__ import annotations

import json
import os
import uuid

from pyspark.sql import DataFrame, SparkSession


def _fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath))


def replace_with(spark: SparkSession, tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path``, replacing what was there."""
    jvm = spark.sparkContext._jvm
    fs, target = _fs(spark, path)
    staged = jvm.org.apache.hadoop.fs.Path(tmp)
    old = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}.old-{uuid.uuid4().hex[:8]}")
    had_old = fs.exists(target)
    if had_old and not fs.rename(target, old):
        raise OSError(f"could not move aside {path}")
    if not fs.rename(staged, target):
        if had_old:
            fs.rename(old, target)
        raise OSError(f"could not move {tmp} to {path}")
    if had_old:
        fs.delete(old, True)


def _staging(path: str) -> str:
    return f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"


# For tables of feature vectors: every value is distinct, so Parquet's dictionary encoding would only be
# tried (hashing each double) and dropped.
VECTOR_PARQUET_OPTIONS = {"parquet.enable.dictionary": "false"}


def write_parquet(df: DataFrame, path: str, options: dict[str, str] | None = None) -> None:
    tmp = _staging(path)
    df.write.mode("errorifexists").options(**(options or {})).parquet(tmp)
    replace_with(df.sparkSession, tmp, path)


def save_ml(spark: SparkSession, stage, path: str) -> None:
    """Save a Spark ML model/pipeline atomically."""
    tmp = _staging(path)
    stage.write().save(tmp)
    replace_with(spark, tmp, path)


def write_text(path: str, text: str) -> None:
    """Local file, written atomically (reports and small JSON)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _staging(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
