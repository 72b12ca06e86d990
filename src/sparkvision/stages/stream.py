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

**Every file, whatever its name or age.** Spark's file source skips names starting with ``.`` or ``_`` (and
everything in such folders): the sink lists those itself and reports each once as rejected ("hidden file"),
with the next micro-batch or, when no batch comes, in a sweep at the end of the run (``batch_id`` < 0). Names
ending ``._COPYING_`` are copies in progress (Hadoop's convention) and wait for their rename. Paths in the
source's log are URL-encoded where the ``path`` column is not: they are decoded before they are compared.
``maxFileAge`` is set to :data:`NO_MAX_AGE` unless ``stream.max_file_age`` says otherwise, so a file copied
with an old modification time (``cp -p``, ``rsync -a``) is still new to the stream; the price is that the
source remembers every path it has seen (a few hundred bytes each, in the driver and the checkpoint).
``latestFirst`` stays false: oldest files first.

**Sizes before bytes.** The source's scan filters ``length <= data.max_file_mb`` (pushed into the reader), so
an oversized file's bytes are never read; it is found in the source's log and rejected with its size, and
the stream goes on.

**One query per output.** Each commit record names its query (the checkpoint's id and folder). A run whose
checkpoint is not the one that committed the output's batches is refused, naming both, instead of taking
their batch ids for its own.

**Readers** see a batch's partitions from the moment they are swapped in, a moment before its commit
record; :func:`committed` reads a table's committed batches only, and is the way to read these tables while
a stream may be running or may have crashed.

Files must appear whole: copy them in under a name ending ``._COPYING_`` and rename, or move them in from
the same file system; a half-copied file would be rejected as truncated.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time
import urllib.parse

import pandas as pd
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.columns import (ARRIVED, BATCH_ID, CONTENT, HEIGHT, IMAGE_ID, LABEL, LABEL_INDEX, MODEL, PATH,
                                 PROCESSED, REASON, WIDTH)
from sparkvision.errors import StreamConflict
from sparkvision.run import faults, listing, storage
from sparkvision.run import images as imglib
from sparkvision.run.layout import StreamLayout, join
from sparkvision.settings import DataSettings, Settings, StreamSettings, parse_trigger
from sparkvision.stages.featurize import featurize_partitions
from sparkvision.stages.predict import load_model, predicted

log = logging.getLogger(__name__)

# The binaryFile format's fixed schema (a file stream must be given its schema).
BINARY_FILE_SCHEMA = T.StructType([
    T.StructField("path", T.StringType(), False), T.StructField("modificationTime", T.TimestampType(), False),
    T.StructField("length", T.LongType(), False), T.StructField("content", T.BinaryType(), True)])
_LEFTOVER = re.compile(rf"^(?P<name>{BATCH_ID}=-?\d+)\.(tmp|old)-[0-9a-f]{{8}}$")
# maxFileAge for "never": the file source ignores a file older than the newest one seen minus this.
NO_MAX_AGE = "100000d"


def source_kind(configured: str) -> str:
    if configured != "auto":
        return configured
    return "cloudFiles" if os.environ.get("DATABRICKS_RUNTIME_VERSION") else "binaryFile"


def read_stream(spark: SparkSession, images: str, stream: StreamSettings, max_bytes: int | None = None) -> DataFrame:
    """The file stream: ``path, modificationTime, length, content`` for each new file under ``images``; with
    ``max_bytes``, a larger file's row is filtered in the scan, before its bytes are read (the sink finds it
    in the source's log)."""
    kind = source_kind(stream.source)
    prefix = "cloudFiles." if kind == "cloudFiles" else ""
    reader = spark.readStream.format(kind).schema(BINARY_FILE_SCHEMA)
    if kind == "cloudFiles":
        reader = reader.option("cloudFiles.format", "binaryFile")
    reader = reader.option("recursiveFileLookup", "true")
    if stream.max_files_per_trigger:
        reader = reader.option(prefix + "maxFilesPerTrigger", str(stream.max_files_per_trigger))
    if stream.max_bytes_per_trigger:
        reader = reader.option(prefix + "maxBytesPerTrigger", str(stream.max_bytes_per_trigger))
    if kind == "binaryFile":  # Auto Loader keeps no age limit unless told (cloudFiles.maxFileAge)
        reader = reader.option("maxFileAge", stream.max_file_age or NO_MAX_AGE).option("latestFirst", "false")
    files = reader.load(images)
    return files if max_bytes is None else files.where(F.col("length") <= F.lit(max_bytes))


_CHECKED = "_check_reason"  # the check's verdict, carried through the featurizer to the rejected table
_CHECK_SCHEMA = T.StructType([T.StructField(WIDTH, T.IntegerType()), T.StructField(HEIGHT, T.IntegerType()),
                              T.StructField(REASON, T.StringType())])


def _check_udf(data: DataSettings):
    """Each arrived file checked as ``load`` checks a listed one: extension and size, then its header."""
    max_bytes = int(data.max_file_mb * 2**20)

    @F.pandas_udf(_CHECK_SCHEMA)
    def check(paths: pd.Series, sizes: pd.Series, contents: pd.Series) -> pd.DataFrame:
        rows = []
        for path, size, content in zip(paths, sizes, contents):
            why = listing.file_reason(path, int(size), data.extensions, max_bytes, data.max_file_mb)
            rows.append((None, None, why) if why else imglib.inspect_header(content, data.max_pixels))
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


def _decoded(logged: str) -> str:
    """A path as the ``path`` column has it, from the source log's URI form (``IMG%200001.jpg``: Hadoop writes
    ``Path.toUri``, which escapes spaces, ``%`` and the like)."""
    return _normal(urllib.parse.unquote(logged))


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
                        files[_decoded(entry["path"])] = int(entry["timestamp"])
                break
        else:
            return None
    return files


def query_id(checkpoint: str) -> str | None:
    """The id Spark keeps in a query's checkpoint (``metadata``), the same on every restart; None before the
    query first started."""
    uri = join(checkpoint, "metadata")
    try:
        return json.loads(storage.read_text(uri).splitlines()[0])["id"] if storage.exists(uri) else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def commit_records(lay: StreamLayout) -> list[dict]:
    """Every commit record of the output, in batch order (the end-of-run sweeps' negative ids first)."""
    names = [n for n in storage.listdir(lay.commits) if re.fullmatch(r"-?\d+\.json", n)]
    return [storage.read_json(join(lay.commits, n)) for n in sorted(names, key=lambda n: int(n[:-5]))]


def check_same_query(lay: StreamLayout, checkpoint: str) -> None:
    """Refuse a checkpoint that did not commit the output's batches: its batch ids would start again at 0
    and meet the other query's commit records (its files would be skipped as already done)."""
    mine = query_id(checkpoint)
    for record in commit_records(lay):
        theirs = record.get("query_id")
        if theirs is None or theirs == mine:  # a record from before query ids, or ours
            continue
        raise StreamConflict(
            f"sparkvision stream: {lay.out} holds micro-batches committed by another query (checkpoint "
            f"{record.get('checkpoint')}, query id {theirs}); this run's checkpoint {checkpoint} is "
            + (f"query {mine}" if mine else "new (no query has run from it)")
            + ". Its batch ids would collide with theirs and skip new files. Continue that query with --checkpoint "
            f"{record.get('checkpoint')}, or stream into another --output to process every file again.")


def unlisted(root: str, exclude: tuple[str, ...] = ()) -> dict[str, tuple[str, str, int | None]]:
    """The files under ``root`` that Spark's file source never lists (hidden names, hidden folders): path ->
    (image_id, reason, modification time in ms). Folders in ``exclude`` (the output, the checkpoint, when
    they are inside ``root``) are not looked at."""
    skip = tuple(_normal(("file:" + storage.local_path(e)) if storage.is_local(e) else e).rstrip("/") + "/"
                 for e in exclude)
    found = {}
    for entry in listing.walk(root):
        why = None if entry.problem else listing.unlisted_reason(entry.image_id)
        if why and not _normal(entry.path).startswith(skip):
            found[_normal(entry.path)] = (entry.image_id, why, entry.mtime_ns // 1_000_000 if entry.mtime_ns else None)
    return found


_REJECTED_ROW = T.StructType([T.StructField(IMAGE_ID, T.StringType()), T.StructField(PATH, T.StringType()),
                              T.StructField(REASON, T.StringType()), T.StructField(ARRIVED, T.TimestampType())])


def _ms_to_time(ms: int | None):
    return None if ms is None else datetime.datetime.fromtimestamp(ms / 1000)


def _rejected_rows(spark: SparkSession, rows: list[tuple], root: str) -> DataFrame:
    """``(path, path, reason, arrived_at)`` tuples found by the driver as rows of the rejected table."""
    df = spark.createDataFrame(rows, _REJECTED_ROW)
    return (df.withColumn(IMAGE_ID, image_id(F.col(PATH), root)).withColumn(PROCESSED, F.current_timestamp())
            .select(IMAGE_ID, PATH, REASON, ARRIVED, PROCESSED))


class BatchSink:
    """``foreachBatch``: one micro-batch predicted and committed exactly once (see the module docstring)."""

    def __init__(self, model_dir: str, model_name: str, root: str, out: str, cfg: Settings, checkpoint: str):
        self.model_dir, self.model_name, self.root, self.checkpoint = model_dir, model_name, root, checkpoint
        self.app_id = "sparkvision-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:16]  # the same on restarts
        self.lay, self.cfg = StreamLayout(out), cfg
        self._model = None
        self._query_id = None
        self._reported: set[str] | None = None  # unlisted files already in a committed batch (read once)

    def model(self):
        if self._model is None:
            self._model = load_model(self.model_dir)
            self._model.stages[0].setParams(**self.cfg.featurize.to_params())  # this run's engine, batch ...
        return self._model

    def query(self) -> str | None:
        if self._query_id is None:
            self._query_id = query_id(self.checkpoint)
        return self._query_id

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if storage.exists(self.lay.commit(batch_id)):
            record = storage.read_json(self.lay.commit(batch_id))
            if record.get("query_id") not in (None, self.query()):
                raise StreamConflict(f"sparkvision stream: batch {batch_id} of {self.lay.out} was committed by query "
                                     f"{record.get('query_id')} (checkpoint {record.get('checkpoint')}), not by this "
                                     f"query {self.query()} (checkpoint {self.checkpoint})")
            log.info("stream: batch %d was committed before a restart; skipped", batch_id)
            return
        started = time.time()
        # One pass over the files: each is checked (extension, size, header) and, where the check passes, its
        # bytes go on to the network in the same task; a failed check's bytes are nulled, so the featurizer
        # rejects the row at once and the check's reason is the one recorded. The network's output (no image
        # bytes) is cached once for both tables. Featurize tasks as `predict` makes them (two per core): the
        # source's splits of ~30 files each would pay the network UDF's per-task cost thirty times a batch.
        check = _check_udf(self.cfg.data)(F.col("path"), F.col("length"), F.col("content"))
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
            unread = self._unread(predictions, rejected, batch_id)
            hidden = self.unlisted_rows()
            rejected = rejected.unionByName(
                _rejected_rows(predictions.sparkSession, [r for r, _ in unread + hidden], self.root))
            counts = self._write(batch_id, predictions, rejected, [p for _, p in hidden])
        seconds = time.time() - started
        log.info("stream: batch %d: %d predicted, %d rejected in %.1f s (%.1f files/s); arrival-to-prediction lag "
                 "up to %.1f s", batch_id, counts["predicted"], counts["rejected"], seconds,
                 (counts["predicted"] + counts["rejected"]) / max(seconds, 1e-9), counts["max_lag_s"])

    def _unread(self, predictions: DataFrame, rejected: DataFrame, batch_id: int) -> list[tuple[tuple, str]]:
        """Rejected rows for the files the source listed in this batch but the scan did not read: zero bytes
        (Spark reads none), larger than ``data.max_file_mb`` (filtered before their bytes), vanished."""
        listed = source_files(self.checkpoint, batch_id) if source_kind(self.cfg.stream.source) == "binaryFile" else None
        rows = []
        if listed:  # the paths of both outputs, from the cached network output: no file is read again
            read = {_normal(r[PATH]) for r in predictions.select(PATH).unionByName(rejected.select(PATH)).collect()}
            data = self.cfg.data
            for path in sorted(set(listed) - read):
                size = storage.size(path)
                why = ("empty file (0 bytes): Spark's file source does not read it" if size == 0 else
                       "listed by the stream but not read (it vanished or could not be read)" if size is None else
                       listing.file_reason(path, size, data.extensions, int(data.max_file_mb * 2**20),
                                           data.max_file_mb)
                       or "listed by the stream but not read (it vanished or could not be read)")
                rows.append(((path, path, why, _ms_to_time(listed[path])), path))
        return rows

    def unlisted_rows(self) -> list[tuple[tuple, str]]:
        """Rejected rows for the files Spark's source never lists (hidden names) not in a committed batch yet."""
        if not self.cfg.stream.report_unlisted or not storage.is_dir(self.root):
            return []
        if self._reported is None:
            self._reported = {p for c in commit_records(self.lay) for p in c.get("unlisted", ())}
        found = unlisted(self.root, (self.lay.out, self.checkpoint))
        return [((path, path, why, _ms_to_time(ms)), path)
                for path, (_, why, ms) in sorted(found.items()) if path not in self._reported]

    def _write(self, batch_id: int, predictions: DataFrame, rejected: DataFrame, unlisted_paths: list[str]) -> dict:
        """Both tables' rows of this batch, counted while written, then its commit record (last)."""
        observed = {}
        for name, df in (("predictions", predictions), ("rejected", rejected)):
            observed[name] = Observation(f"sparkvision_stream_{name}_{batch_id}")
            df = df.observe(observed[name], F.count(F.lit(1)).alias("n"),
                            F.max(F.col(PROCESSED).cast("double") - F.col(ARRIVED).cast("double")).alias("lag"))
            write_partition(self.lay, name, df, batch_id, self.cfg.stream.format, self.app_id)
        done = {name: o.get for name, o in observed.items()}
        counts = {"predicted": done["predictions"]["n"], "rejected": done["rejected"]["n"],
                  "max_lag_s": done["predictions"]["lag"] or 0.0}
        faults.point("stream:before-commit")
        commit(self.lay, batch_id, counts, self.model_name, self.query(), self.checkpoint, unlisted_paths)
        if self._reported is not None:
            self._reported.update(unlisted_paths)
        return counts


def write_partition(lay: StreamLayout, name: str, df: DataFrame, batch_id: int, fmt: str, app_id: str) -> None:
    """One table's rows of one batch: staged, then swapped into ``batch_id=N`` (replacing what a crash left)."""
    table = getattr(lay, name)
    if fmt == "delta":  # Delta's idempotent append: one version per batch id
        (df.withColumn(BATCH_ID, F.lit(batch_id)).write.format("delta").mode("append")
         .option("txnAppId", f"{app_id}-{name}").option("txnVersion", batch_id).partitionBy(BATCH_ID).save(table))
        return
    tmp = join(lay.staging, f"{name}-{batch_id}")
    storage.delete(tmp)  # what a crash left of this batch
    df.write.parquet(tmp)
    faults.point(f"stream:staged-{name}")
    storage.makedirs(table)
    storage.replace_with(tmp, join(table, f"{BATCH_ID}={batch_id}"))


def commit(lay: StreamLayout, batch_id: int, counts: dict, model: str, query: str | None, checkpoint: str,
           unlisted_paths: list[str]) -> None:
    """The batch's commit record, written last: the batch is in both tables, once."""
    storage.write_json(lay.commit(batch_id), {
        "batch_id": batch_id, "predicted": counts["predicted"], "rejected": counts["rejected"], "model": model,
        "query_id": query, "checkpoint": checkpoint, "unlisted": unlisted_paths, "committed_at": time.time()})


def committed(spark: SparkSession, out: str, table: str = "predictions") -> DataFrame:
    """``OUT/predictions`` (or ``rejected``) with only its committed micro-batches: the way to read a stream's
    output while it runs, or after a crash that nobody restarted (a batch swapped in whose commit record
    was never written is left out; the next start rewrites it)."""
    lay = StreamLayout(out)
    if table not in ("predictions", "rejected"):
        raise ValueError(f"table {table!r}: one of predictions, rejected")
    done = [int(c["batch_id"]) for c in commit_records(lay)]
    path = getattr(lay, table)
    # Delta's appends are atomic already (one version per batch); the filter is the same for both
    df = spark.read.format("delta").load(path) if storage.exists(join(path, "_delta_log")) else spark.read.parquet(path)
    return df.where(F.col(BATCH_ID).isin(done)) if done else df.limit(0)


def sweep_unlisted(spark: SparkSession, sink: BatchSink) -> int:
    """After the query stopped: the unlisted files no micro-batch reported (a wave of only hidden names), as
    a batch of their own with the next negative id, committed like any other. Returns how many."""
    hidden = sink.unlisted_rows()
    if not hidden:
        return 0
    ids = [int(c["batch_id"]) for c in commit_records(sink.lay)]
    batch_id = min([0] + ids) - 1
    rejected = _rejected_rows(spark, [r for r, _ in hidden], sink.root)
    write_partition(sink.lay, "rejected", rejected, batch_id, sink.cfg.stream.format, sink.app_id)
    counts = {"predicted": 0, "rejected": len(hidden)}
    commit(sink.lay, batch_id, counts, sink.model_name, sink.query(), sink.checkpoint, [p for _, p in hidden])
    log.info("stream: %d files the file source does not list (hidden names) reported as rejected in batch %d",
             len(hidden), batch_id)
    return len(hidden)


def clean_leftovers(lay: StreamLayout) -> None:
    """A crash mid-batch leaves a staging folder, or a partition moved aside while it was being replaced:
    the staging goes, a partition moved aside comes back where the replacement never arrived (the batch's
    replay then replaces it again), and is dropped where it did."""
    storage.delete(lay.staging)
    for table in (lay.predictions, lay.rejected):
        for name in {m.group("name") for m in map(_LEFTOVER.match, storage.listdir(table)) if m}:
            storage.recover(join(table, name))


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


def _list_on_driver(spark: SparkSession, images: str, stream: StreamSettings) -> None:
    """Each micro-batch of the file source lists its files again; past 32 paths Spark does that in a Spark job
    of one task per file (1,000 tasks, seconds, for every 1,000-file batch). A local folder's files are stat'ed
    on the driver instead, in milliseconds. On an object store the listing job stays (a request per file from
    the driver alone would be slower); Auto Loader lists in its own way."""
    if source_kind(stream.source) != "binaryFile" or not storage.is_local(images):
        return
    want = max(int(stream.max_files_per_trigger or 0), 100_000)
    if int(spark.conf.get(LISTING_THRESHOLD, "32")) < want:
        spark.conf.set(LISTING_THRESHOLD, str(want))


def run(spark: SparkSession, cfg: Settings, model_dir: str, model_name: str, images: str, out: str,
        timeout: float | None = None) -> dict:
    """Run the stream (``stream.*``: trigger, checkpoint, source ...) until it has processed what is there
    (``available-now``) or until ``timeout`` seconds / a stop (``processing-time``); returns the totals of this
    run (also in ``OUT/stream.json``)."""
    lay, started = StreamLayout(out), time.time()
    storage.makedirs(lay.commits)
    trigger, checkpoint = cfg.stream.trigger, cfg.stream.checkpoint or lay.checkpoint
    check_same_query(lay, checkpoint)
    clean_leftovers(lay)
    sink = BatchSink(model_dir, model_name, images, out, cfg, checkpoint)
    sink.model()  # a model that cannot load fails here, before the query starts
    _list_on_driver(spark, images, cfg.stream)
    max_bytes = int(cfg.data.max_file_mb * 2**20)
    query = (read_stream(spark, images, cfg.stream, max_bytes).writeStream.queryName("sparkvision_stream")
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
    sweep_unlisted(spark, sink)
    # this run's batches, from their commit records (over Spark Connect the sink runs in the server's Python)
    mine = [c for c in commit_records(lay) if c["committed_at"] >= started]
    totals = {"batches": len(mine), "predicted": sum(c["predicted"] for c in mine),
              "rejected": sum(c["rejected"] for c in mine)}
    summary = {**totals, "model": model_name, "images": images, "trigger": trigger,
               "checkpoint": checkpoint, "predictions": lay.predictions, "rejected_table": lay.rejected}
    storage.write_json(lay.summary, summary)
    return summary
