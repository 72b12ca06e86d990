"""One way to get a SparkSession, with the settings image work needs."""

from __future__ import annotations

import os
import sys

# Batches are bounded by rows *and* bytes: encoded images are large, decoded ones ~10x larger. Spark's
# own row counts (4,096 per Parquet read batch, 10,000 per Arrow batch) are meant for narrow rows: at
# 1 MB a row they exhaust a 1 GB heap. The featurizer regroups rows into full network batches anyway.
SESSION_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "64",
    "spark.sql.execution.arrow.maxBytesPerBatch": "64m",
    "spark.sql.parquet.columnarReaderBatchSize": "256",
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.session.timeZone": "UTC",
}


def get_spark(master: str | None = None, app_name: str = "sparkvision", conf: dict | None = None):
    """Return the active session, or start one (``master=None``: spark-submit's, else local[*])."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must run this interpreter (the venv's), not the first python3 on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    explicit = {k: str(v) for k, v in (conf or {}).items()}
    if master:
        explicit["spark.master"] = master
    # Under spark-submit this attaches to its JVM (else it starts one with the explicit settings, so
    # spark.driver.memory applies), and SparkConf() then holds the submitted settings: cluster spec and
    # --conf. Our defaults only fill gaps; the job's own ``spark.conf`` and master win.
    SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(explicit.items()))
    merged = SparkConf()
    for key, value in SESSION_DEFAULTS.items():
        merged.setIfMissing(key, value)
    merged.setAll(explicit.items())
    merged.setIfMissing("spark.app.name", app_name)
    merged.setIfMissing("spark.master", "local[*]")
    spark = SparkSession.builder.config(conf=merged).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_from_config(cfg) -> "SparkSession":  # noqa: F821
    s = cfg["spark"]
    return get_spark(s["master"], s["app_name"], s["conf"])
