"""One way to get a SparkSession, with the settings image work needs."""

from __future__ import annotations

import os
import sys

# Arrow batches are bounded by rows *and* bytes: encoded images are large, decoded ones larger.
SESSION_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    "spark.sql.execution.arrow.maxBytesPerBatch": "64m",
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.session.timeZone": "UTC",
}


def get_spark(master: str | None = None, app_name: str = "sparkvision", conf: dict | None = None):
    """Return the active session, or start one (``master=None``: spark-submit's, else local[*])."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must run this interpreter (the venv's), not the first python3 on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {**SESSION_DEFAULTS, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_from_config(cfg) -> "SparkSession":  # noqa: F821
    s = cfg["spark"]
    return get_spark(s["master"], s["app_name"], s["conf"])
