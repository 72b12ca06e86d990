"""``sparkvision stream``: classify images as they arrive, with Structured Streaming, exactly once across crashes.

The source is Spark's ``binaryFile`` file stream over ``--images`` (any depth), or on Databricks Auto Loader
(``cloudFiles`` with ``cloudFiles.format=binaryFile``; ``stream.source: auto`` picks it when
``DATABRICKS_RUNTIME_VERSION`` is set). Each micro-batch goes through the saved model's featurizer and
classifier, as ``sparkvision predict`` does, into two tables under ``--output`` (:class:`StreamLayout`):

* ``predictions/``: ``image_id, path, predicted_label, confidence, probability, model, arrived_at,
  processed_at``, partitioned by ``batch_id``;
* ``rejected/``: ``image_id, path, reason, arrived_at, processed_at``, partitioned by ``batch_id``: files that
  are not usable images, with the reason (never dropped).

**Exactly once.** Spark's checkpoint (``--checkpoint``, default ``OUT/_stream/checkpoint``) records which files
form each micro-batch before it runs, so a restarted query replays an unfinished batch with the same id and the
same files and never skips one. The sink (``foreachBatch``) makes the replay harmless: a batch's two partitions
are written into a staging folder, swapped into ``batch_id=N`` (replacing whatever a crash left there), and
committed by ``_stream/commits/N.json`` last; a batch id already committed is skipped. With ``stream.format:
delta`` (Databricks) the batch is appended with Delta's idempotent writes (``txnAppId`` = the query id,
``txnVersion`` = the batch id) instead.

**Bounded.** ``stream.max_files_per_trigger`` / ``stream.max_bytes_per_trigger`` cap a micro-batch; each batch
is persisted once (the network runs once for both tables) and unpersisted after. Progress (rows/s, the lag from
a file's arrival to its prediction) is logged from the query's progress events.

Files must appear whole: write them under a hidden name (``.name`` or ``_name``, which the file listing
skips) and rename, as the Databricks and Hadoop copy tools do; a half-copied file would be rejected as
truncated.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time

import pandas as pd
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import images as imglib
from . import listing, storage
from .columns import (ARRIVED, BATCH_ID, CONTENT, HEIGHT, IMAGE_COLUMNS, IMAGE_ID, LABEL, LABEL_INDEX, MODEL, PATH,
                      PROCESSED, REASON, WIDTH)
from .layout import StreamLayout, join

log = logging.getLogger(__name__)

SOURCES = ("auto", "binaryFile", "cloudFiles")
FORMATS = ("parquet", "delta")
# The binaryFile format's fixed schema (a file stream must be given its schema).
BINARY_FILE_SCHEMA = T.StructType([
    T.StructField("path", T.StringType(), False), T.StructField("modificationTime", T.TimestampType(), False),
    T.StructField("length", T.LongType(), False), T.StructField("content", T.BinaryType(), True)])
_TRIGGER = re.compile(r"^(available-now|processing-time=(\d+(?:\.\d+)?)(ms|s|m)?)$")
_LEFTOVER = re.compile(rf"^{BATCH_ID}=\d+\.(tmp|old)-[0-9a-f]{{8}}$")


def parse_trigger(text: str) -> dict:
    """``available-now`` or ``processing-time=30s`` (``ms``, ``s``, ``m``) -> ``DataStreamWriter.trigger`` kwargs."""
    m = _TRIGGER.match(text.strip())
    if not m:
        raise ValueError(f"--trigger {text!r}: use available-now or processing-time=<number>[ms|s|m], e.g. "
                         "processing-time=30s")
    if m.group(2) is None:
        return {"availableNow": True}
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(3)]
    return {"processingTime": f"{int(seconds * 1000)} milliseconds"}


def source_kind(configured: str) -> str:
    if configured != "auto":
        return configured
    return "cloudFiles" if os.environ.get("DATABRICKS_RUNTIME_VERSION") else "binaryFile"


def read_stream(spark: SparkSession, images: str, stream_cfg: dict) -> DataFrame:
    """The file stream: ``path, modificationTime, length, content`` for each new file under ``images``."""
    kind = source_kind(stream_cfg["source"])
    prefix = "cloudFiles." if kind == "cloudFiles" else ""
    reader = spark.readStream.format(kind).schema(BINARY_FILE_SCHEMA)
    if kind == "cloudFiles":
        reader = reader.option("cloudFiles.format", "binaryFile")
    reader = reader.option("recursiveFileLookup", "true")
    if stream_cfg["max_files_per_trigger"]:
        reader = reader.option(prefix + "maxFilesPerTrigger", str(stream_cfg["max_files_per_trigger"]))
    if stream_cfg["max_bytes_per_trigger"]:
        reader = reader.option(prefix + "maxBytesPerTrigger", str(stream_cfg["max_bytes_per_trigger"]))
    return reader.load(images)


_CHECKED = "_check_reason"  # the check's verdict, carried through the featurizer to the rejected table
_CHECK_SCHEMA = T.StructType([T.StructField(WIDTH, T.IntegerType()), T.StructField(HEIGHT, T.IntegerType()),
                              T.StructField(REASON, T.StringType())])


def _check_udf(data_cfg: dict):
    """Each arrived file checked as ``load`` checks a listed one: extension and size, then its header."""
    max_bytes = int(data_cfg["max_file_mb"] * 2**20)

    @F.pandas_udf(_CHECK_SCHEMA)
    def check(paths: pd.Series, sizes: pd.Series, contents: pd.Series) -> pd.DataFrame:
        rows = []
        for path, size, content in zip(paths, sizes, contents):
            why = listing.file_reason(path, int(size), data_cfg["extensions"], max_bytes, data_cfg["max_file_mb"])
            rows.append((None, None, why) if why else imglib.inspect_header(content, data_cfg["max_pixels"]))
        return pd.DataFrame(rows, columns=_CHECK_SCHEMA.fieldNames()).astype({WIDTH: "Int32", HEIGHT: "Int32"})

    return check


def image_id(path_col, root: str):
    """The path below the watched folder (what ``predict`` calls ``image_id``)."""
    base = ("file:" + storage.local_path(root)) if storage.is_local(root) else root
    base = base.rstrip("/") + "/"
    return F.regexp_replace(path_col, "^" + re.escape(base).replace("file:", "file:(//)?"), "")


def _normal(path: str) -> str:
    """``file:///x`` (the source log's form) and ``file:/x`` (the rows') as one."""
    return "file:/" + path[len("file:///"):] if path.startswith("file:///") else path


def source_files(checkpoint: str, batch_id: int) -> dict[str, int] | None:
    """The files Spark's file source put in micro-batch ``batch_id`` (path -> arrival ms), read from the query's
    checkpoint (``offsets/N`` gives the source log's range, ``sources/0/K[.compact]`` its entries), or None where
    that cannot be told (Auto Loader, a log already purged). Spark reads no zero-byte file: this is how the sink
    still lists them."""
    def log_offset(n: int) -> int | None:
        uri = join(checkpoint, "offsets", str(n))
        if n < 0:
            return -1
        try:
            return int(json.loads(storage.read_text(uri).splitlines()[-1])["logOffset"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    end, start = log_offset(batch_id), log_offset(batch_id - 1)
    if end is None or start is None:
        return None
    files: dict[str, int] = {}
    for k in range(start + 1, end + 1):
        for name in (str(k), f"{k}.compact"):
            uri = join(checkpoint, "sources", "0", name)
            if storage.exists(uri):
                for line in storage.read_text(uri).splitlines()[1:]:
                    entry = json.loads(line)
                    if entry.get("batchId") == k:
                        files[_normal(entry["path"])] = int(entry["timestamp"])
                break
        else:
            return None
    return files


class BatchSink:
    """``foreachBatch``: one micro-batch predicted and committed exactly once (see the module docstring)."""

    def __init__(self, model_dir: str, model_name: str, root: str, out: str, cfg: dict, runtime: dict,
                 checkpoint: str):
        self.model_dir, self.model_name, self.root, self.checkpoint = model_dir, model_name, root, checkpoint
        self.app_id = "sparkvision-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:16]  # the same on restarts
        self.lay, self.cfg, self.runtime = StreamLayout(out), cfg, runtime
        self._model = None

    def model(self):
        if self._model is None:
            from .predict import load_model

            self._model = load_model(self.model_dir)
            self._model.stages[0].setParams(**self.runtime)
        return self._model

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if storage.exists(self.lay.commit(batch_id)):
            log.info("stream: batch %d was committed before a restart; skipped", batch_id)
            return
        from .pipeline import featurize_partitions
        from .predict import predicted

        started = time.time()
        # One pass over the files: each is checked (extension, size, header) and, where the check passes, its
        # bytes go on to the network in the same task; a failed check's bytes are nulled, so the featurizer
        # rejects the row at once and the check's reason is the one recorded. The network's output (no image
        # bytes) is cached once for both tables. Featurize tasks as `predict` makes them (two per core): the
        # source's splits of ~30 files each would pay the network UDF's per-task cost thirty times a batch.
        check = _check_udf(self.cfg["data"])(F.col("path"), F.col("length"), F.col("content"))
        rows = batch.select(image_id(F.col("path"), self.root).alias(IMAGE_ID), F.col("path").alias(PATH),
                            F.col("modificationTime").alias(ARRIVED), check.alias("_check"), F.col("content"))
        usable = rows.select(
            IMAGE_ID, PATH, F.lit(None).cast("string").alias(LABEL), F.lit(None).cast("int").alias(LABEL_INDEX),
            F.col("_check.width").alias(WIDTH), F.col("_check.height").alias(HEIGHT),
            F.when(F.col("_check.reason").isNull(), F.col("content")).alias(CONTENT),
            F.col("_check.reason").alias(_CHECKED), ARRIVED, F.current_timestamp().alias(PROCESSED),
        ).coalesce(featurize_partitions(batch.sparkSession, self.cfg))  # coalesce never adds tasks
        with predicted(self.model(), usable, carry=(_CHECKED, ARRIVED, PROCESSED)) as (predictions, unusable):
            predictions = predictions.drop(_CHECKED).withColumn(MODEL, F.lit(self.model_name))
            rejected = unusable.select(IMAGE_ID, PATH, F.coalesce(_CHECKED, REASON).alias(REASON), ARRIVED, PROCESSED)
            rejected = rejected.unionByName(self._unread(predictions, rejected, batch_id))
            counts = self._write(batch_id, predictions, rejected)
        seconds = time.time() - started
        log.info("stream: batch %d: %d predicted, %d rejected in %.1f s (%.1f files/s); arrival-to-prediction lag "
                 "up to %.1f s", batch_id, counts["predicted"], counts["rejected"], seconds,
                 (counts["predicted"] + counts["rejected"]) / max(seconds, 1e-9), counts["max_lag_s"])

    def _unread(self, predictions: DataFrame, rejected: DataFrame, batch_id: int) -> DataFrame:
        """Rejected rows for the files the source listed in this batch but Spark did not read (zero bytes)."""
        schema = T.StructType([T.StructField(IMAGE_ID, T.StringType()), T.StructField(PATH, T.StringType()),
                               T.StructField(REASON, T.StringType()), T.StructField(ARRIVED, T.TimestampType())])
        listed = source_files(self.checkpoint, batch_id) if source_kind(self.cfg["stream"]["source"]) == "binaryFile" else None
        rows = []
        if listed:  # the paths of both outputs, from the cached network output: no file is read again
            read = {_normal(r[PATH]) for r in predictions.select(PATH).unionByName(rejected.select(PATH)).collect()}
            for path in sorted(set(listed) - read):
                size = storage.size(path)
                why = ("empty file (0 bytes): Spark's file source does not read it" if size == 0 else
                       "listed by the stream but not read (it vanished or could not be read)")
                rows.append((path, path, why, datetime.datetime.fromtimestamp(listed[path] / 1000)))
        unread = predictions.sparkSession.createDataFrame(rows, schema)
        return unread.withColumn(IMAGE_ID, image_id(F.col(PATH), self.root)).withColumn(PROCESSED, F.current_timestamp())

    def _write(self, batch_id: int, predictions: DataFrame, rejected: DataFrame) -> dict:
        """Both tables' rows of this batch, counted while written, then its commit record (last)."""
        observed = {}
        for name, df in (("predictions", predictions), ("rejected", rejected)):
            observed[name] = Observation(f"sparkvision_stream_{name}_{batch_id}")
            df = df.observe(observed[name], F.count(F.lit(1)).alias("n"),
                            F.max(F.col(PROCESSED).cast("double") - F.col(ARRIVED).cast("double")).alias("lag"))
            table = getattr(self.lay, name)
            if self.cfg["stream"]["format"] == "delta":  # Delta's idempotent append: one version per batch id
                (df.withColumn(BATCH_ID, F.lit(batch_id)).write.format("delta").mode("append")
                 .option("txnAppId", f"{self.app_id}-{name}").option("txnVersion", batch_id).partitionBy(BATCH_ID)
                 .save(table))
            else:
                tmp = join(self.lay.staging, f"{name}-{batch_id}")
                storage.delete(tmp)  # what a crash left of this batch
                df.write.parquet(tmp)
                storage.makedirs(table)
                storage.replace_with(tmp, join(table, f"{BATCH_ID}={batch_id}"))
        done = {name: o.get for name, o in observed.items()}
        counts = {"predicted": done["predictions"]["n"], "rejected": done["rejected"]["n"],
                  "max_lag_s": done["predictions"]["lag"] or 0.0}
        storage.write_json(self.lay.commit(batch_id), {"batch_id": batch_id, "predicted": counts["predicted"],
                                                       "rejected": counts["rejected"], "model": self.model_name,
                                                       "committed_at": time.time()})
        return counts


def clean_leftovers(lay: StreamLayout) -> None:
    """A crash mid-batch leaves a staging folder, or a partition moved aside: the replay rewrites the batch."""
    storage.delete(lay.staging)
    for table in (lay.predictions, lay.rejected):
        for name in storage.listdir(table):
            if _LEFTOVER.match(name):
                storage.delete(join(table, name))


def _log_progress(query, seen: int) -> int:
    """Log the query's progress events since batch ``seen``; returns the last batch id logged."""
    for p in query.recentProgress:
        get = p.get if isinstance(p, dict) else lambda k, p=p: getattr(p, k, None)
        batch = get("batchId")
        if batch is None or batch <= seen:
            continue
        seen = batch
        if get("numInputRows"):
            log.info("stream: progress batch %s: %d files, %.1f files/s arriving, %.1f files/s processed", batch,
                     get("numInputRows"), get("inputRowsPerSecond") or 0.0, get("processedRowsPerSecond") or 0.0)
    return seen


LISTING_THRESHOLD = "spark.sql.sources.parallelPartitionDiscovery.threshold"


def _list_on_driver(spark: SparkSession, images: str, stream_cfg: dict) -> None:
    """Each micro-batch of the file source lists its files again; past 32 paths Spark does that in a Spark job
    of one task per file (1,000 tasks, seconds, for every 1,000-file batch). A local folder's files are stat'ed
    on the driver instead, in milliseconds. On an object store the listing job stays (a request per file from
    the driver alone would be slower); Auto Loader lists in its own way."""
    if source_kind(stream_cfg["source"]) != "binaryFile" or not storage.is_local(images):
        return
    want = max(int(stream_cfg["max_files_per_trigger"] or 0), 100_000)
    if int(spark.conf.get(LISTING_THRESHOLD, "32")) < want:
        spark.conf.set(LISTING_THRESHOLD, str(want))


def run(spark: SparkSession, cfg: dict, model_dir: str, model_name: str, images: str, out: str,
        trigger: str, checkpoint: str | None = None, timeout: float | None = None, runtime: dict | None = None) -> dict:
    """Run the stream until it has processed what is there (``available-now``) or until ``timeout`` seconds /
    a stop (``processing-time``); returns the totals of this run (also in ``OUT/stream.json``)."""
    lay, started = StreamLayout(out), time.time()
    storage.makedirs(lay.commits)
    clean_leftovers(lay)
    checkpoint = checkpoint or lay.checkpoint
    sink = BatchSink(model_dir, model_name, images, out, cfg, runtime or {}, checkpoint)
    sink.model()  # a model that cannot load fails here, before the query starts
    _list_on_driver(spark, images, cfg["stream"])
    query = (read_stream(spark, images, cfg["stream"]).writeStream.queryName("sparkvision_stream")
             .option("checkpointLocation", checkpoint)
             .trigger(**parse_trigger(trigger)).foreachBatch(sink).start())
    log.info("stream: query %s watching %s (trigger %s, checkpoint %s)", query.id, images, trigger, checkpoint)
    deadline, seen = (time.time() + timeout) if timeout else None, -1
    try:
        while query.isActive and not query.awaitTermination(5):
            seen = _log_progress(query, seen)
            if deadline and time.time() >= deadline:
                log.info("stream: --timeout %.0f s reached; stopping (an unfinished micro-batch is redone on the next start)", timeout)
                query.stop()
    finally:
        if query.isActive:
            query.stop()
    _log_progress(query, seen)
    if query.exception():
        raise RuntimeError(f"sparkvision stream: the query failed: {query.exception()}")
    # this run's batches, from their commit records (over Spark Connect the sink runs in the server's Python)
    mine = [c for c in (storage.read_json(join(lay.commits, n)) for n in storage.listdir(lay.commits)
                        if n.endswith(".json")) if c["committed_at"] >= started]
    totals = {"batches": len(mine), "predicted": sum(c["predicted"] for c in mine),
              "rejected": sum(c["rejected"] for c in mine)}
    summary = {**totals, "model": model_name, "images": images, "trigger": trigger,
               "checkpoint": checkpoint, "predictions": lay.predictions, "rejected_table": lay.rejected}
    storage.write_json(lay.summary, summary)
    return summary
