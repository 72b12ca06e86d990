"""One way to get a SparkSession, with the settings image work needs, and the few facts about a session
that the stages ask for (cores, partitions, job labels)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")
# Python workers inherit these: TensorFlow's C++ start-up lines (oneDNN, CPU features) stay out of the output.
QUIET_ENV = "SPARKVISION_QUIET"
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore::DeprecationWarning",
              QUIET_ENV: "1"}


def quiet(verbose: bool = False) -> None:
    """Default output is sparkvision's own lines: TensorFlow and Spark start-up chatter off unless ``verbose``."""
    if verbose:
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def get_spark(master: str | None = None, app_name: str = "sparkvision", conf: dict | None = None,
              verbose: bool = False):
    """Return the active session, or start one (``master=None``: spark-submit's, else local[*])."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    quiet(verbose)
    # Python workers must run this interpreter (the venv's), not the first python3 on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    explicit = {k: str(v) for k, v in (conf or {}).items()}
    if master:
        explicit["spark.master"] = master
    launch = dict(explicit)
    if not verbose and "spark.driver.extraJavaOptions" not in launch:
        # Our log4j profile, and no attempt to load a native BLAS (netlib prints its dlopen failure itself;
        # Spark ML's Java BLAS is what runs either way on machines without one).
        launch["spark.driver.extraJavaOptions"] = (f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()} "
                                                   "-Ddev.ludovic.netlib.blas.allowNative=false")
    # Under spark-submit this attaches to its JVM (else it starts one with the explicit settings, so
    # spark.driver.memory applies), and SparkConf() then holds the submitted settings: cluster spec and
    # --conf. Our defaults only fill gaps; the job's own ``spark.conf`` and master win.
    SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(launch.items()))
    merged = SparkConf()
    for key, value in SESSION_DEFAULTS.items():
        merged.setIfMissing(key, value)
    merged.setAll(explicit.items())
    merged.setIfMissing("spark.app.name", app_name)
    merged.setIfMissing("spark.master", "local[*]")
    from .deploy import auth

    # A standalone master with authentication on: the shared secret, from the environment or a file, set
    # in-process only (anything passed to the JVM's launch above would be on its command line).
    auth.configure_session(merged)
    spark = SparkSession.builder.config(conf=merged).getOrCreate()
    spark.sparkContext.setLogLevel("INFO" if verbose else "WARN")
    return spark


def spark_from_config(cfg, verbose: bool = False):
    s = cfg["spark"]
    return get_spark(s["master"], s["app_name"], s["conf"], verbose)


def default_parallelism(spark) -> int:
    """The session's default parallelism (total executor cores)."""
    return spark.sparkContext.defaultParallelism


def num_partitions(df) -> int:
    return df.rdd.getNumPartitions()


def describe_jobs(spark, stage: str) -> None:
    """Name the Spark jobs of a stage (UI, event log): ``sparkvision featurize``."""
    spark.sparkContext.setJobDescription(f"sparkvision {stage}")
