"""Load labelled images into Spark: a folder per class, or a ``path,label`` manifest.

The driver lists the input itself (:mod:`sparkvision.run.listing`); files that can be images are read and
checked in Spark tasks: by their header (format, size, orientation) with ``data.validate: header``
(the default: the one full decode is the featurizer's, whose failures join ``rejected``), or by a
full Pillow decode with ``full``. Every listed entry ends up in exactly one of two tables:

* ``images``: ``image_id, path, label, label_index, width, height, content``
* ``rejected``: ``image_id, path, label, reason``

and ``accepted + rejected == listed`` is checked against the driver's listing, not Spark's. Class
indices follow sorted class names and travel with the data as ``label_index`` column metadata (like
``StringIndexer``'s).
"""

from __future__ import annotations

from sparkvision.errors import LoadError
import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Iterator, Tuple

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.columns import CONTENT, HEIGHT, IMAGE_COLUMNS, IMAGE_ID, LABEL, LABEL_INDEX, PATH, REASON, REJECTED_COLUMNS, WIDTH
from sparkvision.run import images as imglib
from sparkvision.run import listing, provenance, storage
from sparkvision.run.layout import RunLayout, join
from sparkvision.run.spark import default_parallelism, describe_jobs, image_batch_settings
from sparkvision.settings import DataSettings, Settings, dump

log = logging.getLogger(__name__)
progress = logging.getLogger("sparkvision")  # the stage's progress lines, under the CLI's name

READ_SCHEMA = T.StructType([
    T.StructField(CONTENT, T.BinaryType()),
    T.StructField(WIDTH, T.IntegerType()),
    T.StructField(HEIGHT, T.IntegerType()),
    T.StructField(REASON, T.StringType()),
])
ENTRY_SCHEMA = T.StructType([
    T.StructField(IMAGE_ID, T.StringType()),
    T.StructField(PATH, T.StringType()),
    T.StructField(LABEL, T.StringType()),
    T.StructField(REASON, T.StringType()),
])
# Bytes of candidate images per read task (tasks are balanced by count; this only sets how many).
BYTES_PER_TASK = 128 * 2**20
# Bytes of image content per Arrow batch a read task hands back to Spark: each batch is one buffer in the
# JVM, and Spark's 64 rows a batch would be 150 MB of 12 MP photos.
READ_BATCH_BYTES = 16 * 2**20
# images.parquet's row groups, bounded by bytes. Parquet's writer first measures a row group (and a page)
# after `parquet.page.size.row.check.min` rows, 100 by default: a read task's ~50 photos (128 MB) became
# one page, compressed into one growing array (a heap OOM in a 1 GB driver at 200 12 MP photos). Measured
# after every row, a row group closes under 16 MB and a page holds one photo. Readers gain as much: Spark
# reads a row group whole, and its vectorized reader never fills a batch across two (featurize sizes its
# batches too, for tables written before). Dictionaries and min/max statistics of image bytes are of no
# use (every value distinct, never filtered on): off for `content`.
IMAGE_ROW_GROUP_BYTES = 16 * 2**20
IMAGE_PARQUET_OPTIONS = {
    "parquet.block.size": str(IMAGE_ROW_GROUP_BYTES),
    "parquet.page.size": str(2**20),
    "parquet.page.size.row.check.min": "1",
    "parquet.page.size.row.check.max": "1",
    f"parquet.enable.dictionary#{CONTENT}": "false",
    f"parquet.column.statistics.enabled#{CONTENT}": "false",
}
ACCEPTED = "accepted"  # the staging table's partition column (images.parquet / rejected rows)


@dataclass
class Inventory:
    """What the driver found before reading any image: one row per entry, with a reason where rejected."""

    rows: list[tuple[str, str, str | None, str | None]]   # (image_id, path, label, reason)
    stamps: list[tuple[str, int | None, int | None]]      # (image_id, size, mtime_ns): the load's fingerprint
    source: str

    @property
    def candidate_bytes(self) -> int:
        sizes = {i: s for i, s, _ in self.stamps}
        return sum(sizes.get(r[0]) or 0 for r in self.rows if r[3] is None)


@dataclass
class LoadResult:
    images: DataFrame
    rejected: DataFrame
    classes: list[str]
    discovered: int
    accepted: int
    n_rejected: int

    def summary(self) -> dict:
        return {"discovered": self.discovered, "accepted": self.accepted, "rejected": self.n_rejected,
                "classes": self.classes}


def _max_bytes(data: DataSettings) -> int:
    return int(data.max_file_mb * 1024 * 1024)


def folder_inventory(root: str, data: DataSettings, labelled: bool = True) -> Inventory:
    """Every entry under ``root``; with ``labelled`` the class is the first sub-folder."""
    source = "data.images" if labelled else "--images"
    uri = root if not storage.is_local(root) else storage.local_path(root)
    if not storage.is_dir(uri):
        raise LoadError(f"{source}: {'not a folder' if storage.exists(uri) else 'path does not exist'}: {root}")
    entries = listing.walk(uri)
    if not entries:
        raise LoadError(f"{source}: no files under {root}")
    rows = []
    for e in entries:
        why = listing.reason(e, labelled, data.extensions, _max_bytes(data), data.max_file_mb)
        rows.append((e.image_id, e.path, listing.label_of(e.image_id) if labelled else None, why))
    return Inventory(rows, [(e.image_id, e.size, e.mtime_ns) for e in entries], f"{source} {root}")


def read_manifest(path: str) -> list[tuple[int, str, str]]:
    """``[(row_number, path, label)]`` from a CSV with a header naming ``path`` and ``label``."""
    if not storage.exists(path):
        raise LoadError(f"data.manifest: file not found: {path}")
    reader = csv.DictReader(io.StringIO(storage.read_bytes(path).decode("utf-8-sig"), newline=""))
    missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise LoadError(f"data.manifest {path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
    rows = []
    for i, row in enumerate(reader, start=2):
        p, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not p or not label:
            raise LoadError(f"data.manifest {path} row {i}: empty {'path' if not p else 'label'}")
        rows.append((i, p, label))
    if not rows:
        raise LoadError(f"data.manifest {path}: no rows")
    return rows


def _manifest_target(base: str, p: str) -> str:
    """A manifest row's file as a URI (``file:/abs`` for local files, like the folder listing's)."""
    if "://" in p or p.startswith(("file:", "dbfs:")):
        return "file:" + storage.local_path(p) if p.startswith("file:") else p
    if storage.is_local(base):
        return "file:" + os.path.normpath(os.path.join(storage.local_path(base), p))
    return base.rstrip("/") + "/" + p


def manifest_inventory(manifest: str, data: DataSettings) -> Inventory:
    """The files a manifest lists, and only those; a row naming a missing file is an error (with its row)."""
    rows = read_manifest(manifest)
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    import pyarrow.fs as pafs

    out, stamps, missing, first_row = [], [], [], {}
    for i, p, label in rows:
        target = _manifest_target(base, p)
        fs, inner = storage.filesystem(target)
        info = fs.get_file_info(inner)
        local = storage.is_local(target)
        broken = info.type == pafs.FileType.NotFound and local and os.path.islink(storage.local_path(target))
        if info.type == pafs.FileType.NotFound and not broken:
            missing.append((i, p))
            continue
        dup = first_row.setdefault(target, i)
        if dup != i:
            why = f"duplicate of manifest row {dup}"
        elif broken:
            why = "broken symlink (its target does not exist)"
        elif info.type != pafs.FileType.File:
            why = "not a regular file"
        else:
            why = listing.file_reason(p, info.size, data.extensions, _max_bytes(data), data.max_file_mb)
        out.append((p, target, label, why))
        stamps.append((p, info.size, info.mtime_ns))
    if missing:
        shown = "; ".join(f"row {i}: {p}" for i, p in sorted(missing)[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise LoadError(f"data.manifest {manifest}: file(s) not found: {shown}{more}")
    return Inventory(out, stamps, f"data.manifest {manifest}")


def inventory(data: DataSettings) -> Inventory:
    if data.manifest:
        return manifest_inventory(data.manifest, data)
    if data.images:
        return folder_inventory(data.images, data)
    raise LoadError("no input: set data.images (a folder per class) or data.manifest (a path,label CSV)")


def read_file(path: str) -> bytes:
    """A listed file's bytes (local path or URI), as the read tasks open it."""
    if storage.is_local(path):
        with open(storage.local_path(path), "rb") as f:
            return f.read()
    return storage.read_bytes(path)


def read_and_check(path: str, max_bytes: int, max_pixels: int, validate: str = "header"
                   ) -> tuple[bytes | None, int | None, int | None, str | None]:
    """``(content, width, height, None)`` for a usable image, else ``(None, None, None, reason)``;
    ``validate``: ``header`` reads the header only, ``full`` decodes the pixels too.

    A file that vanished or became unreadable since the listing is a rejected row, not a failed job.
    A ``MemoryError`` is not a property of the file: it propagates, so Spark retries the task.
    """
    try:
        data = read_file(path)
    except FileNotFoundError:
        return None, None, None, "vanished after listing (no longer there when read)"
    except PermissionError:
        return None, None, None, "not readable: permission denied"
    except OSError as exc:
        return None, None, None, f"not readable: {exc.strerror or exc}"
    if len(data) > max_bytes:
        return None, None, None, f"file too large: {len(data)} bytes (grew after listing)"
    check = imglib.inspect if validate == "full" else imglib.inspect_header
    width, height, why = check(data, max_pixels)
    return (None, None, None, why) if why else (data, width, height, None)


def _read_udf(max_bytes: int, max_pixels: int, validate: str, batch_bytes: int = READ_BATCH_BYTES):
    """The read-and-check UDF. An iterator UDF: its output batches are cut by bytes (``batch_bytes`` of
    content, at least one row), not by Spark's input batches of paths."""
    def frame(rows: list) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=READ_SCHEMA.fieldNames()).astype({WIDTH: "Int32", HEIGHT: "Int32"})

    @F.pandas_udf(READ_SCHEMA)
    def read(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        rows: list = []
        held = 0
        for paths, reasons in batches:
            for p, why in zip(paths, reasons):
                row = ((None, None, None, why) if why is not None
                       else read_and_check(p, max_bytes, max_pixels, validate))
                rows.append(row)
                held += len(row[0] or b"")
                if held >= batch_bytes:
                    yield frame(rows)
                    rows, held = [], 0
        if rows:
            yield frame(rows)

    return read


def read_tasks(spark: SparkSession, inv: Inventory) -> int:
    return max(2 * default_parallelism(spark), math.ceil(inv.candidate_bytes / BYTES_PER_TASK), 1)


def checked_table(spark: SparkSession, inv: Inventory, data: DataSettings, classes: list[str] | None) -> DataFrame:
    """All entries, candidates read and checked in Spark tasks: the image columns plus ``reason``."""
    entries = spark.createDataFrame(inv.rows, ENTRY_SCHEMA).repartition(min(read_tasks(spark, inv), len(inv.rows)))
    read = _read_udf(_max_bytes(data), data.max_pixels, data.validate)(
        F.col(PATH), F.col(REASON))
    checked = entries.withColumn("_read", read)
    if classes is not None:
        index = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col(LABEL)).cast("int") - 1
        meta = {"ml_attr": {"type": "nominal", "name": LABEL_INDEX, "vals": classes}}
        label_index = F.when(index >= 0, index).alias(LABEL_INDEX, metadata=meta)
    else:
        label_index = F.lit(None).cast("int").alias(LABEL_INDEX)
    return checked.select(IMAGE_ID, PATH, LABEL, label_index, F.col(f"_read.{WIDTH}").alias(WIDTH),
                          F.col(f"_read.{HEIGHT}").alias(HEIGHT), F.col(f"_read.{CONTENT}").alias(CONTENT),
                          F.col(f"_read.{REASON}").alias(REASON))


def class_names(inv: Inventory) -> list[str]:
    """Classes: labels of the entries that can be images (a folder of junk only is a class with no image)."""
    return sorted({label for _, _, label, why in inv.rows if label is not None and not _in_system_folder(why)})


def _in_system_folder(why: str | None) -> bool:
    return bool(why) and why.startswith("hidden or system folder")


def _summarize(table: DataFrame, inv: Inventory, classes: list[str]) -> tuple[int, int]:
    """``(accepted, rejected)`` of a checked table, after the checks a load must pass: every listed entry
    is in it exactly once (against the driver's own listing, not Spark's), every class has a valid
    image, and there are at least two classes."""
    counts = table.groupBy(ACCEPTED, LABEL).count().collect()
    accepted_by_class = {c: 0 for c in classes}
    n_accepted = n_rejected = 0
    for r in counts:
        if r[ACCEPTED]:
            accepted_by_class[r[LABEL]] = accepted_by_class.get(r[LABEL], 0) + r["count"]
            n_accepted += r["count"]
        else:
            n_rejected += r["count"]
    if n_accepted + n_rejected != len(inv.rows):
        raise AssertionError(f"{inv.source}: {n_accepted} accepted + {n_rejected} rejected != {len(inv.rows)} listed")
    empty = sorted(c for c, n in accepted_by_class.items() if n == 0)
    if empty:
        reasons = (table.filter(F.col(LABEL).isin(empty) & ~F.col(ACCEPTED)).groupBy(LABEL, REASON).count()
                   .orderBy(LABEL, REASON).collect())
        detail = "; ".join(f"{r[LABEL]}: {r['count']} x {r[REASON]}" for r in reasons)
        raise LoadError(f"{inv.source}: class(es) {', '.join(map(repr, empty))} have no valid image ({detail})")
    if len(classes) < 2:
        raise LoadError(f"{inv.source}: need at least 2 classes with valid images, found {classes or 'none'}")
    return n_accepted, n_rejected


def _checked(spark: SparkSession, inv: Inventory, data: DataSettings, classes: list[str] | None) -> DataFrame:
    return checked_table(spark, inv, data, classes).withColumn(ACCEPTED, F.col(REASON).isNull())


@dataclass
class Staged:
    """A load written to a staging folder beside its target, checked; the caller swaps it in or drops it."""

    staging: str
    result: LoadResult

    @property
    def accepted_part(self) -> str:
        return join(self.staging, f"{ACCEPTED}=true")


def stage(spark: SparkSession, inv: Inventory, data: DataSettings, target: str) -> Staged:
    """Read, check and write every entry once, to a staging folder beside ``target`` partitioned into
    accepted and rejected rows (no image is read twice); then the checks of :func:`_summarize`."""
    classes = class_names(inv)
    tmp = storage.staged_parquet(_checked(spark, inv, data, classes), target, IMAGE_PARQUET_OPTIONS,
                                 partition_by=ACCEPTED)
    try:
        # A partition column reads back as a string ('false' is truthy): typed again before it is counted.
        staged = spark.read.parquet(tmp).withColumn(ACCEPTED, F.col(ACCEPTED).cast("boolean"))
        n_accepted, n_rejected = _summarize(staged, inv, classes)
    except BaseException:
        storage.delete(tmp)
        raise
    images = spark.read.parquet(join(tmp, f"{ACCEPTED}=true")).select(*IMAGE_COLUMNS)
    part = join(tmp, f"{ACCEPTED}=false")
    rejected = (spark.read.parquet(part).select(*REJECTED_COLUMNS) if storage.exists(part)
                else spark.createDataFrame([], ", ".join(f"{c} string" for c in REJECTED_COLUMNS)))
    return Staged(tmp, LoadResult(images, rejected, classes, len(inv.rows), n_accepted, n_rejected))


def load_images(spark: SparkSession, data: DataSettings) -> LoadResult:
    """Load from ``data.images`` (folders) or ``data.manifest`` (CSV) into cached DataFrames (the Python
    API; ``sparkvision load`` writes them to its output folder instead)."""
    inv = inventory(data)
    classes = class_names(inv)
    table = _checked(spark, inv, data, classes).persist(StorageLevel.MEMORY_AND_DISK)
    n_accepted, n_rejected = _summarize(table, inv, classes)
    images = table.filter(F.col(ACCEPTED)).select(*IMAGE_COLUMNS)
    rejected = table.filter(~F.col(ACCEPTED)).select(*REJECTED_COLUMNS)
    return LoadResult(images, rejected, classes, len(inv.rows), n_accepted, n_rejected)


def _data_files(uri: str) -> list[tuple[str, int]]:
    """``(path, size)`` of a Parquet table's data files (Spark's names: not ``_*`` or ``.*``), any depth."""
    import pyarrow.fs as pafs

    fs, root = storage.filesystem(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    return [(info.path, info.size) for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if info.type == pafs.FileType.File and not info.base_name.startswith(("_", "."))
            and not any(part.startswith(("_", ".")) and "=" not in part
                        for part in info.path[len(root):].strip("/").split("/")[:-1])]


def image_bytes_per_row(uri: str, rows: int | None = None) -> float | None:
    """Mean bytes per row of an image table (``images.parquet``): its data files' sizes over ``rows``
    (``load.json`` knows them), else over the row counts in the files' footers. Image bytes do not compress,
    so a file's size is its content's; ``None`` where the table cannot be measured."""
    try:
        files = _data_files(uri)
        if not files:
            return None
        if not rows:
            import pyarrow.parquet as pq

            fs, _ = storage.filesystem(uri)
            rows = 0
            for path, _size in files:
                with fs.open_input_file(path) as f:
                    rows += pq.ParquetFile(f).metadata.num_rows
        total = sum(size for _, size in files)
        return total / rows if rows else None
    except Exception as exc:  # noqa: BLE001 - a size is a tuning input only: the caller's default applies
        log.warning("could not measure %s (%s)", uri, exc)
        return None


def image_read_settings(spark: SparkSession, uri: str, rows: int | None = None) -> dict[str, str]:
    """Session settings for the queries that read the image table at ``uri`` (content included): batches of
    about :data:`sparkvision.run.spark.IMAGE_BATCH_BYTES`, by its measured bytes per row. For
    :func:`sparkvision.run.spark.scoped_conf`, around those queries' actions only."""
    per_row = image_bytes_per_row(uri, rows)
    settings = image_batch_settings(spark, per_row)
    log.info("reading %s in batches of %s rows (%s a row)", uri, settings[next(iter(settings))],
             f"{per_row / 2**20:.2f} MB" if per_row else "size unknown")
    return settings


def classes_of(df: DataFrame, column: str = LABEL_INDEX) -> list[str]:
    """Class names stored in a column's ML metadata by :func:`load_images`."""
    meta = df.schema[column].metadata.get("ml_attr", {})
    if "vals" not in meta:
        raise LoadError(f"column {column!r} carries no class names; was it produced by sparkvision load?")
    return list(meta["vals"])


def stage_load(spark: SparkSession, cfg: Settings) -> dict:
    """``sparkvision load``: ``data.*`` -> ``images.parquet`` + ``rejected.*`` and the run's ``config.yaml``."""
    describe_jobs(spark, "load")
    lay = RunLayout(cfg.output.dir)
    storage.makedirs(lay.out)
    started = time.time()
    progress.info("load: listing %s", cfg.data.images or cfg.data.manifest)
    inv = inventory(cfg.data)
    fp = provenance.fingerprint("load", cfg.data.to_dict(), inv.stamps)
    staged = stage(spark, inv, cfg.data, lay.images)
    marker = provenance.marker("load", fp)
    try:
        result = staged.result
        storage.write_parquet(result.rejected, lay.rejected, marker=marker)
        storage.write_marker(staged.accepted_part, marker)
        storage.replace_with(staged.accepted_part, lay.images)
    finally:
        storage.delete(staged.staging)
    storage.write_csv(spark.read.parquet(lay.rejected).orderBy(IMAGE_ID), lay.rejected_csv)
    per_class = {r[LABEL]: r["count"] for r in spark.read.parquet(lay.images).groupBy(LABEL).count().collect()}
    storage.write_text(lay.config, dump(cfg))
    summary = {**result.summary(), "per_class": dict(sorted(per_class.items())), "seconds": time.time() - started,
               "fingerprint": fp}
    storage.write_json(lay.load, summary)
    progress.info("load: %d files, %d images accepted, %d rejected (reasons in %s)", result.discovered, result.accepted,
             result.n_rejected, lay.rejected_csv)
    return summary
