"""Load labelled images into Spark: a folder per class, or a ``path,label`` manifest.

Bytes are read with Spark's ``binaryFile`` source and checked by a full Pillow decode in the
Python workers. Every discovered file ends up in exactly one of two tables:

* ``images``: ``image_id, path, label, label_index, width, height, content``
* ``rejected``: ``image_id, path, label, reason``

so ``accepted + rejected == discovered`` always holds. Class indices follow sorted class names
and travel with the data as ``label_index`` column metadata (like ``StringIndexer``'s).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import images as imglib

CHECK_SCHEMA = T.StructType(
    [
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("reason", T.StringType()),
    ]
)
REJECTED_COLUMNS = ["image_id", "path", "label", "reason"]
IMAGE_COLUMNS = ["image_id", "path", "label", "label_index", "width", "height", "content"]


class LoadError(ValueError):
    """The input as a whole cannot be used (missing path, fewer than two classes, ...)."""


@dataclass
class LoadResult:
    images: DataFrame
    rejected: DataFrame
    classes: list[str]
    discovered: int
    accepted: int
    n_rejected: int

    def summary(self) -> dict:
        return {
            "discovered": self.discovered,
            "accepted": self.accepted,
            "rejected": self.n_rejected,
            "classes": self.classes,
        }


def _qualified(spark: SparkSession, path: str) -> tuple[str, bool]:
    """Hadoop-qualified URI of ``path`` (``file:/abs`` for local paths) and whether it exists."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.makeQualified(hpath).toString(), bool(fs.exists(hpath))


def _check_udf(max_pixels: int):
    @F.pandas_udf(CHECK_SCHEMA)
    def check(content: pd.Series) -> pd.DataFrame:
        rows = [imglib.inspect(data, max_pixels) for data in content]
        return pd.DataFrame(rows, columns=["width", "height", "reason"]).astype(
            {"width": "Int32", "height": "Int32"}
        )

    return check


def _extension_ok(path_col, extensions) -> F.Column:
    pattern = r"(?i)\.(" + "|".join(e.lower().lstrip(".") for e in extensions) + r")$"
    return path_col.rlike(pattern)


def _binary_files(spark: SparkSession, paths: list[str], recursive: bool) -> DataFrame:
    reader = spark.read.format("binaryFile")
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    return reader.load(paths if len(paths) > 1 else paths[0])


HIDDEN_REASON = "hidden file (name starts with '.' or '_'): Spark's file listing skips it"
EMPTY_REASON = "empty file (0 bytes)"


def _skipped_by_spark(spark: SparkSession, uri: str) -> list[tuple[str, str]]:
    """``[(uri, reason)]`` for files Spark's file scan never returns: hidden names and zero-byte files."""
    def reason(rel_parts: list[str], size: int) -> str | None:
        if any(part.startswith((".", "_")) for part in rel_parts):
            return HIDDEN_REASON
        return EMPTY_REASON if size == 0 else None

    found = []
    if uri.startswith("file:"):
        root = uri[len("file:"):]
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                full = os.path.join(dirpath, name)
                why = reason(os.path.relpath(full, root).split(os.sep), os.path.getsize(full))
                if why:
                    found.append(("file:" + full, why))
        return sorted(found)
    fs_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    fs = fs_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    files = fs.listFiles(fs_path, True)
    prefix = uri.rstrip("/") + "/"
    while files.hasNext():
        status = files.next()
        full = status.getPath().toString()
        why = reason(full[len(prefix):].split("/"), status.getLen())
        if why:
            found.append((full, why))
    return sorted(found)


def _check(df: DataFrame, data_cfg: dict) -> DataFrame:
    """Add ``width, height, reason`` by decoding ``content`` (rows that already have a reason are not decoded)."""
    checked = df.withColumn(
        "_check",
        F.when(F.col("reason").isNull(), _check_udf(data_cfg["max_pixels"])(F.col("content"))),
    )
    return checked.select(
        *[c for c in df.columns if c != "reason"],
        F.col("_check.width").alias("width"),
        F.col("_check.height").alias("height"),
        F.coalesce(F.col("reason"), F.col("_check.reason")).alias("reason"),
    )


def _finish(checked: DataFrame, discovered: int, source: str) -> LoadResult:
    checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
    rows = checked.groupBy("label").agg(
        F.count(F.lit(1)).alias("files"),
        F.count(F.when(F.col("reason").isNull(), 1)).alias("ok"),
    ).collect()
    accepted_by_class = {r["label"]: r["ok"] for r in rows if r["label"] is not None}
    empty = sorted(c for c, n in accepted_by_class.items() if n == 0)
    if empty:
        reasons = (
            checked.filter(F.col("label").isin(empty)).groupBy("label", "reason").count().collect()
        )
        detail = "; ".join(f"{r['label']}: {r['count']} x {r['reason']}" for r in reasons)
        raise LoadError(f"{source}: class(es) {', '.join(map(repr, empty))} have no valid image ({detail})")
    classes = sorted(accepted_by_class)
    if len(classes) < 2:
        raise LoadError(f"{source}: need at least 2 classes with valid images, found {classes or 'none'}")
    index = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col("label")).cast("int") - 1
    meta = {"ml_attr": {"type": "nominal", "name": "label_index", "vals": classes}}
    images = checked.filter(F.col("reason").isNull()).select(
        "image_id", "path", "label", index.alias("label_index", metadata=meta), "width", "height", "content"
    )
    rejected = checked.filter(F.col("reason").isNotNull()).select(*REJECTED_COLUMNS)
    accepted = sum(accepted_by_class.values())
    n_rejected = sum(r["files"] for r in rows) - accepted
    if accepted + n_rejected != discovered:  # the invariant every caller relies on
        raise AssertionError(f"{source}: {accepted} accepted + {n_rejected} rejected != {discovered} discovered")
    return LoadResult(images, rejected, classes, discovered, accepted, n_rejected)


def scan_folder(spark: SparkSession, root: str, data_cfg: dict, labelled: bool = True) -> tuple[DataFrame, int]:
    """Every file under ``root``, decoded-checked: ``(image_id, path, label, content, width, height, reason)``.

    With ``labelled`` the class is the first sub-folder and files outside one are rejected;
    without, ``label`` is null (prediction input). Returns the table and the number discovered.
    """
    source = "data.images" if labelled else "--images"
    uri, exists = _qualified(spark, _local_or_uri(root))
    if not exists:
        raise LoadError(f"{source}: path does not exist: {root}")
    prefix = uri.rstrip("/") + "/"
    max_bytes = int(data_cfg["max_file_mb"] * 1024 * 1024)
    rel = F.when(F.col("path").startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})")).otherwise(F.col("path"))
    parts = F.split(rel, "/")
    label = F.when(F.size(parts) > 1, parts.getItem(0)) if labelled else F.lit(None).cast("string")
    too_big = F.concat(F.lit("file too large: "), F.col("length").cast("string"),
                       F.lit(f" bytes > max_file_mb {data_cfg['max_file_mb']}"))

    def annotate(df: DataFrame, *keep: str) -> DataFrame:
        reason = (
            F.when(label.isNull() & F.lit(labelled), F.lit("not inside a class sub-folder"))
            .when(~_extension_ok(F.col("path"), data_cfg["extensions"]), F.lit("unsupported file extension"))
            .when(F.col("length") > max_bytes, too_big)
        )
        return df.select(rel.alias("image_id"), "path", label.alias("label"), "length", reason.alias("reason"), *keep)

    listing = annotate(_binary_files(spark, [uri], recursive=True).select("path", "length"))
    small = _binary_files(spark, [uri], recursive=True).filter(F.col("length") <= max_bytes)
    # Files too large to read keep the reason from the listing, without content.
    too_large = listing.filter(F.col("length") > max_bytes).withColumn("content", F.lit(None).cast("binary"))
    candidates = annotate(small, "content").unionByName(too_large).drop("length")
    skipped = _skipped_by_spark(spark, uri)
    if skipped:
        rows = []
        for path, why in skipped:
            image_id = path[len(prefix):]
            first = image_id.split("/")[0] if labelled and "/" in image_id else None
            if labelled and first is None and why == EMPTY_REASON:
                why = "not inside a class sub-folder"
            rows.append((image_id, path, first, why))
        skipped_df = spark.createDataFrame(rows, "image_id string, path string, label string, reason string")
        candidates = candidates.unionByName(skipped_df.withColumn("content", F.lit(None).cast("binary")))
    discovered = listing.count() + len(skipped)
    if discovered == 0:
        raise LoadError(f"{source}: no files under {root}")
    return _check(candidates, data_cfg), discovered


def _is_uri(path: str) -> bool:
    return "://" in path or path.startswith(("file:", "dbfs:"))


def _local_or_uri(path: str) -> str:
    return path if _is_uri(path) else os.path.abspath(path)


def load_folder(spark: SparkSession, root: str, data_cfg: dict) -> LoadResult:
    """Class = first sub-folder below ``root``; files elsewhere are rejected with a reason."""
    checked, discovered = scan_folder(spark, root, data_cfg, labelled=True)
    return _finish(checked, discovered, f"data.images {root}")


def read_manifest(path: str) -> list[tuple[int, str, str]]:
    """``[(row_number, path, label)]`` from a CSV with a header naming ``path`` and ``label``."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise LoadError(f"data.manifest: file not found: {path}") from None
    with f:
        reader = csv.DictReader(f)
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


def load_manifest(spark: SparkSession, manifest: str, data_cfg: dict) -> LoadResult:
    rows = read_manifest(manifest)
    base = os.path.dirname(os.path.abspath(manifest))
    resolved = []
    for i, p, label in rows:
        local = not _is_uri(p)
        full = os.path.normpath(os.path.join(base, p)) if local else p
        resolved.append((i, p, full, label, local))
    missing = [(i, p) for i, p, full, _, local in resolved if local and not os.path.isfile(full)]
    missing += [(i, p) for i, p, full, _, local in resolved if not local and not _qualified(spark, full)[1]]
    if missing:
        shown = "; ".join(f"row {i}: {p}" for i, p in sorted(missing)[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise LoadError(f"data.manifest {manifest}: file(s) not found: {shown}{more}")
    first_row: dict[str, int] = {}
    entries = []
    for i, p, full, label, local in resolved:
        uri = "file:" + full if local else _qualified(spark, full)[0]
        dup = first_row.setdefault(uri, i)
        reason = None if dup == i else f"duplicate of manifest row {dup}"
        if reason is None and local and os.path.getsize(full) == 0:
            reason = EMPTY_REASON  # Spark's scan skips empty files: say why here
        entries.append((p, uri, label, reason))
    table = spark.createDataFrame(entries, "image_id string, path string, label string, reason string")
    max_bytes = int(data_cfg["max_file_mb"] * 1024 * 1024)
    folders = sorted({u.rsplit("/", 1)[0] for _, u, _, _ in entries})
    files = _binary_files(spark, folders, recursive=False)
    sized = table.join(files.select("path", "length"), "path", "left")
    too_big = F.concat(F.lit("file too large: "), F.col("length").cast("string"),
                       F.lit(f" bytes > max_file_mb {data_cfg['max_file_mb']}"))
    sized = sized.withColumn("reason", F.coalesce("reason", F.when(F.col("length") > max_bytes, too_big)))
    content = files.filter(F.col("length") <= max_bytes).select("path", "content")
    with_content = sized.join(content, "path", "left").withColumn(
        "reason",
        F.coalesce("reason", F.when(F.col("content").isNull(), F.lit("listed in manifest but not readable by Spark"))),
    ).drop("length")
    return _finish(_check(with_content, data_cfg), len(entries), f"data.manifest {manifest}")


def load_images(spark: SparkSession, data_cfg: dict) -> LoadResult:
    """Load from ``data.images`` (folders) or ``data.manifest`` (CSV)."""
    if data_cfg.get("manifest"):
        return load_manifest(spark, data_cfg["manifest"], data_cfg)
    if data_cfg.get("images"):
        return load_folder(spark, data_cfg["images"], data_cfg)
    raise LoadError("no input: set data.images (a folder per class) or data.manifest (a path,label CSV)")


def classes_of(df: DataFrame, column: str = "label_index") -> list[str]:
    """Class names stored in a column's ML metadata by :func:`load_images`."""
    meta = df.schema[column].metadata.get("ml_attr", {})
    if "vals" not in meta:
        raise LoadError(f"column {column!r} carries no class names; was it produced by sparkvision load?")
    return list(meta["vals"])
