"""One way to get a SparkSession, with the settings image work needs, and the few facts about a session
that the stages ask for (cores, partitions, job labels)."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparkvision.errors import ConfigError
from sparkvision.run import auth
from sparkvision.secrets import is_secret_setting

log = logging.getLogger(__name__)

# Set (to "1") in processes whose native libraries should keep quiet (:func:`sparkvision.ml.graph.quiet_native_stderr`).
QUIET_ENV = "SPARKVISION_QUIET"

# Batches are bounded by rows *and* bytes: encoded images are large, decoded ones ~10x larger. Spark's
# own row counts (4,096 per Parquet read batch, 10,000 per Arrow batch) are meant for narrow rows: at
# 1 MB a row they exhaust a 1 GB heap. The featurizer regroups rows into full network batches anyway.
# 256 rows a Parquet batch is still 640 MB of 12 MP photos: featurize reads images.parquet with row
# counts sized from its bytes per row (image_batch_settings below).
# Cached feature rows (10 KB at 1280 wide) likewise: Spark builds a cache batch of 10,000 rows at once,
# and two such batches exhausted a 1 GB heap while training on 50,000 images; 1,024 rows keep it ~10 MB.
SESSION_DEFAULTS = {
    "spark.sql.inMemoryColumnarStorage.batchSize": "1024",
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
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore::DeprecationWarning",
              QUIET_ENV: "1"}


def quiet(verbose: bool = False) -> None:
    """Default output is sparkvision's own lines: TensorFlow and Spark start-up chatter off unless ``verbose``."""
    if verbose:
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def remote_url(remote: str | None = None) -> str | None:
    """The Spark Connect URL to use: ``remote`` (``--remote``, ``spark.remote``), else ``$SPARK_REMOTE``."""
    return remote or os.environ.get("SPARK_REMOTE") or None


def get_spark(master: str | None = None, app_name: str = "sparkvision", conf: dict | None = None,
              verbose: bool = False, remote: str | None = None):
    """Return the active session, or start one: over Spark Connect when ``remote`` (or ``$SPARK_REMOTE``)
    names a server (``sc://host:port``; ``local[N]`` starts one in this process), else classic
    (``master=None``: spark-submit's master, else local[*])."""
    from pyspark.sql import SparkSession  # optional

    quiet(verbose)
    # Python workers must run this interpreter (the venv's), not the first python3 on PATH (a local Spark
    # Connect server started here too).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    url = remote_url(remote)
    if url:
        return _connect(url, master, app_name, conf)
    from pyspark.sql.utils import is_remote as connect_mode  # optional

    if connect_mode():  # a Spark Connect environment (Databricks serverless, standard access mode): its session
        return _with_sql_settings(SparkSession.builder.getOrCreate(), conf)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from pyspark import SparkConf, SparkContext  # optional

    explicit = {k: str(v) for k, v in (conf or {}).items()}
    if master:
        explicit["spark.master"] = master
    launch = launch_settings(explicit)
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
    # A standalone master with authentication on: the shared secret, from the environment or a file, set
    # in-process only (anything passed to the JVM's launch above would be on its command line).
    auth.configure_session(merged)
    spark = SparkSession.builder.config(conf=merged).getOrCreate()
    spark.sparkContext.setLogLevel("INFO" if verbose else "WARN")
    return spark


def launch_settings(explicit: dict[str, str]) -> dict[str, str]:
    """The settings the JVM is launched with: they become ``--conf`` arguments on its command line (``ps``,
    ``/proc``), so credential settings (``fs.s3a.secret.key``, ...) are left out here and set on the
    session's SparkConf in this process only."""
    return {k: v for k, v in explicit.items() if not is_secret_setting(k, v)}


def _connect(url: str, master: str | None, app_name: str, conf: dict | None):
    """A Spark Connect session. The server owns the cluster: a master or static settings cannot be chosen
    from here, so they are refused rather than ignored; runtime SQL settings are set on the session."""
    from pyspark.sql import SparkSession  # optional

    if master:
        raise ConfigError(f"spark.master {master!r} and Spark Connect ({url}) are both set: over Spark Connect the "
                         "server decides where jobs run; drop --master / spark.master, or --remote / SPARK_REMOTE")
    builder = SparkSession.builder.remote(url).appName(app_name)
    if url.startswith("local"):  # a server started here: it takes static settings like any local session
        for key, value in _settings(conf).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    return _with_sql_settings(builder.getOrCreate(), conf)


def _settings(conf: dict | None) -> dict[str, str]:
    """Our session defaults, overridden by the job's own ``spark.conf``."""
    return {**SESSION_DEFAULTS, **{k: str(v) for k, v in (conf or {}).items()}}


def _with_sql_settings(spark, conf: dict | None):
    """A session we did not start: only its runtime SQL settings can still be set."""
    for key, value in _settings(conf).items():
        if key.startswith("spark.sql."):
            spark.conf.set(key, value)
    return spark


# Image rows through pandas UDFs need these two bounded (SESSION_DEFAULTS' values).
IMAGE_ARROW_SETTINGS = ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.execution.arrow.maxBytesPerBatch")


def bound_arrow_batches(spark) -> None:
    """Image-sized Arrow batches in a session sparkvision did not start (a notebook's ``spark``), unless that
    session set its own: Spark's 10,000 rows a batch is gigabytes of decoded images in one piece."""
    for key in IMAGE_ARROW_SETTINGS:
        try:
            if spark.conf.get(key, None) is None:
                spark.conf.set(key, SESSION_DEFAULTS[key])
                log.info("set %s=%s for image rows (this session had Spark's default)", key, SESSION_DEFAULTS[key])
        except Exception:  # noqa: BLE001 - a conf this session cannot read or set (some Connect servers)
            pass


# ---- batches of image rows, sized by bytes -----------------------------------------------------------------

PARQUET_BATCH_ROWS = "spark.sql.parquet.columnarReaderBatchSize"
ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
SPARK_DEFAULT_ROWS = {PARQUET_BATCH_ROWS: 4096, ARROW_BATCH_ROWS: 10_000}
# Bytes of image rows in one batch of a task. Both counts are rows, and each batch is one contiguous buffer
# per column that grows by doubling and is kept for the task: Parquet's vectorized reader fills a batch (Spark
# 4.3's Arrow UDF input takes that batch as it is, and turns the UDF's output rows back into batches of
# maxRecordsPerBatch rows), and rows go to Python in Arrow batches. Several such buffers per task, two
# tasks per GB of heap: 16 MB keeps them a small part of it.
IMAGE_BATCH_BYTES = 16 * 2**20
# Where the bytes per row are not known: rows of a few MB each, as photos are.
UNKNOWN_BATCH_ROWS = 8


def batch_rows(bytes_per_row: float | None, budget: int = IMAGE_BATCH_BYTES, most: int = 4096) -> int:
    """Rows per batch so that a batch holds about ``budget`` bytes: at least 1, at most ``most``;
    :data:`UNKNOWN_BATCH_ROWS` when ``bytes_per_row`` is not known."""
    if not bytes_per_row or bytes_per_row <= 0:
        return max(1, min(most, UNKNOWN_BATCH_ROWS))
    return max(1, min(most, int(budget // bytes_per_row)))


def batch_budget(spark) -> int:
    """:data:`IMAGE_BATCH_BYTES`, less in a local session whose heap is small for its cores (every task runs
    in the driver's heap there: 1 GB shared by 16 tasks is 4 MB a batch, not 16). Clusters: the setting."""
    budget = IMAGE_BATCH_BYTES
    try:
        master = "" if is_remote(spark) else spark.sparkContext.master
    except Exception:  # noqa: BLE001 - a session without a readable master: the setting as it is
        master = ""
    if master.startswith("local"):
        heap = driver_heap_bytes(spark)
        if heap:
            budget = min(budget, heap // (16 * max(1, default_parallelism(spark))))
    return max(budget, 2**20)


def _conf_rows(spark, key: str) -> int:
    try:
        value = spark.conf.get(key, None)
        return int(value) if value is not None and int(value) > 0 else SPARK_DEFAULT_ROWS[key]
    except Exception:  # noqa: BLE001 - a conf this session cannot read (some Connect servers): Spark's default
        return SPARK_DEFAULT_ROWS[key]


def image_batch_settings(spark, bytes_per_row: float | None) -> dict[str, str]:
    """The session settings that bound a read of image rows (``bytes_per_row`` each) by bytes: the Parquet
    read batch and the Arrow batch to Python, in rows, never more than the session's own."""
    rows = batch_rows(bytes_per_row, batch_budget(spark))
    return {key: str(min(rows, _conf_rows(spark, key))) for key in (PARQUET_BATCH_ROWS, ARROW_BATCH_ROWS)}


@contextmanager
def scoped_conf(spark, settings: dict[str, str] | None) -> Iterator[None]:
    """Runtime settings for the actions run inside the ``with`` only: each is set, and put back on the way out
    (unset where it was unset), also when the body raises. Spark reads these when a query executes, so the
    actions that must see them run inside. A setting this session refuses (some Connect servers) is skipped."""
    before: dict[str, str | None] = {}
    try:
        for key, value in (settings or {}).items():
            try:
                previous = spark.conf.get(key, None)
                spark.conf.set(key, value)
            except Exception as exc:  # noqa: BLE001 - refused by the server: the job runs with its value
                log.warning("could not set %s=%s for this read (%s)", key, value, exc)
                continue
            before[key] = previous
        yield
    finally:
        for key, previous in before.items():
            try:
                if previous is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, previous)
            except Exception as exc:  # noqa: BLE001 - logged; nothing else to do
                log.warning("could not restore %s (%s)", key, exc)


def spark_from_config(cfg, verbose: bool = False):
    """The session ``cfg.spark`` (a :class:`sparkvision.settings.Settings`' section) asks for."""
    s = cfg.spark
    return get_spark(s.master, s.app_name, s.conf, verbose, s.remote)


def is_remote(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no RDDs, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


_PARALLELISM: dict[int, int] = {}


def default_parallelism(spark) -> int:
    """The session's default parallelism (total executor cores). Over Spark Connect, the number of tasks
    Spark gives a range without a partition count (one tiny job, remembered per session)."""
    if not is_remote(spark):
        return spark.sparkContext.defaultParallelism
    key = id(spark)
    if key not in _PARALLELISM:
        from pyspark.sql import functions as F  # optional

        _PARALLELISM[key] = spark.range(0, 1 << 16).select(F.spark_partition_id()).distinct().count()
    return _PARALLELISM[key]


def driver_heap_bytes(spark) -> int | None:
    """The driver JVM's maximum heap in bytes, where this process can know it: the JVM's own figure on a
    classic session, else ``spark.driver.memory`` (local mode's launcher default, 1 GB, where unset and the
    master is local); ``None`` over Spark Connect without the setting (the server's heap is not visible)."""
    if not is_remote(spark):
        try:
            return int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
        except Exception:  # noqa: BLE001 - a gateway without the call: fall back to the setting
            pass
    try:
        value = spark.conf.get("spark.driver.memory", None)
    except Exception:  # noqa: BLE001 - a conf this session cannot read (some Connect servers)
        value = None
    if value:
        return _size_bytes(value)
    return None if is_remote(spark) else 1 << 30


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size_bytes(value: str) -> int | None:
    """Spark's memory sizes: ``512m``, ``3g``, ``1.5g`` is refused by Spark (and here), a bare number is MiB."""
    text = str(value).strip().lower().removesuffix("b")
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    return int(number) * (unit or _UNITS["m"]) if number.isdigit() else None


def gpu_tasks(spark) -> bool:
    """Whether Spark assigns GPUs to tasks (``spark.task.resource.gpu.amount``): where ``auto`` runs TensorFlow."""
    try:
        amount = spark.conf.get("spark.task.resource.gpu.amount", None)
    except Exception:  # noqa: BLE001 - a conf this session cannot read (some Connect servers): no GPU known
        return False
    try:
        return float(amount or 0) > 0
    except ValueError:
        return False


def num_partitions(df) -> int:
    """How many tasks a scan of ``df`` makes. Over Spark Connect: counted with a job that reads no column."""
    if not is_remote(df.sparkSession):
        return df.rdd.getNumPartitions()
    from pyspark.sql import functions as F  # optional

    return df.select(F.spark_partition_id().alias("p")).distinct().count()


def describe_jobs(spark, stage: str) -> None:
    """Name the Spark jobs of a stage (UI, event log): ``sparkvision featurize``; a job tag over Connect."""
    if is_remote(spark):
        spark.clearTags()
        spark.addTag(f"sparkvision-{stage}")
    else:
        spark.sparkContext.setJobDescription(f"sparkvision {stage}")
