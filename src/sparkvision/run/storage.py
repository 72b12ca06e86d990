"""All of a run's file I/O: Parquet and ML folders swapped in whole, JSON/CSV/text/PNG written atomically,
and markers, through one filesystem layer (``pyarrow.fs``) for local paths and URIs (the run lock on top of
it: :mod:`sparkvision.run.locks`).

Stage outputs are written beside their target and swapped in, so a re-run replaces them whole and a
crash mid-write leaves the previous output (or nothing) in place, never a half-written table. Files are
written to a temporary name and renamed (local disks), or put as one object (object stores, where a put
is atomic and visible whole).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import re
import uuid
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from sparkvision.run import faults
from sparkvision.run.layout import MARKER, join

log = logging.getLogger(__name__)


# ---- the filesystem layer --------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith(("file:", "dbfs:")) or uri.startswith("file:")


def local_path(uri: str) -> str:
    """``file:/x``, ``file:///x`` or a plain path -> an absolute local path."""
    if uri.startswith("file://"):
        return uri[len("file://"):] or "/"
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return os.path.abspath(uri)


# Hadoop's names for the object stores pyarrow knows by another.
_SCHEMES = {"s3a": "s3", "s3n": "s3"}


def filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` for a local path or a URI.

    ``s3a://`` / ``s3n://`` (Hadoop's S3 names, what Spark writes to) are S3; ``dbfs:/x`` is Databricks'
    FUSE mount ``/dbfs/x``; ``/Volumes/...`` is a local path there. Credentials and endpoints come from the
    environment as each store's SDK reads them (AWS_*, AZURE_*, GOOGLE_*), never from the URI."""
    import pyarrow.fs as pafs  # optional

    if uri.startswith("dbfs:"):
        return pafs.LocalFileSystem(), "/dbfs/" + uri[len("dbfs:"):].lstrip("/")
    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    scheme, rest = uri.split("://", 1)
    return pafs.FileSystem.from_uri(f"{_SCHEMES.get(scheme.lower(), scheme)}://{rest}")


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs  # optional

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs  # optional

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Remove a file or a folder (with its contents); nothing if absent."""
    import pyarrow.fs as pafs  # optional

    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind != pafs.FileType.NotFound:
        fs.delete_file(path)


def listdir(uri: str) -> list[str]:
    """Names directly inside a folder (empty if it does not exist)."""
    import pyarrow.fs as pafs  # optional

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def size(uri: str) -> int | None:
    """A file's size in bytes, or None when it is not there."""
    import pyarrow.fs as pafs  # optional

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


@contextmanager
def open_output(uri: str, mode: str = "wb") -> Iterator[Any]:
    """A file object whose contents appear at ``uri`` whole, or not at all if the block raises."""
    if is_local(uri):
        path = local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    buffer = io.BytesIO()  # object stores: one put of the whole object
    if "b" in mode:
        yield buffer
    else:
        text = io.TextIOWrapper(buffer, encoding="utf-8", newline="", write_through=True)
        yield text
        text.flush()
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(buffer.getvalue())


def write_bytes(uri: str, data: bytes) -> None:
    with open_output(uri, "wb") as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_json(uri: str, data) -> None:
    write_text(uri, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(uri: str):
    return json.loads(read_bytes(uri))


# ---- CSV -------------------------------------------------------------------------------------------------

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> Any:
    """A value as a CSV cell: arrays as JSON, text that a spreadsheet would run as a formula quoted with '."""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv_rows(uri: str, header: list[str], rows: Iterable[Iterable]) -> None:
    with open_output(uri, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_cell(v) for v in row])


def write_csv(df, uri: str) -> None:
    """A DataFrame as one CSV file, streamed to the driver partition by partition."""
    write_csv_rows(uri, df.columns, df.toLocalIterator())


# ---- Spark outputs, swapped in whole ---------------------------------------------------------------------


def staging(uri: str) -> str:
    return f"{uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"


def replace_with(tmp: str, target: str) -> None:
    """Move ``tmp`` to ``target``, replacing what was there (the old one is moved aside first).

    A crash between the two moves leaves ``target`` missing and its previous content at
    ``target.old-xxxxxxxx``; a crash after them leaves that ``.old-*`` beside the new ``target``.
    :func:`recover` (and :func:`clean_leftovers`, at a command's start) puts the old one back in the first
    case and deletes it in the second, so ``target`` always ends up whole: old or new, never missing.

    Object stores have no rename of a folder: there the folder's objects are copied, its marker
    (``_sparkvision.json``) last, and the staging deleted. A reader takes a folder as complete only when its
    marker carries the fingerprint of the stage record it reads (:mod:`sparkvision.run.provenance`), so a copy
    interrupted halfway is refused, never read as a whole output: the write-then-commit-marker protocol.
    """
    if not is_local(target) and is_dir(tmp):
        _replace_by_copy(tmp, target)
        return
    fs, dst = filesystem(target)
    _, src = filesystem(tmp)
    old = f"{dst.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
    had_old = exists(target)
    if had_old:
        fs.move(dst, old)
        faults.point("replace:after_aside")  # tests/run/test_replace.py crashes here and after the move
    try:
        fs.move(src, dst)
    except Exception:
        if had_old:
            fs.move(old, dst)
        raise
    faults.point("replace:after_move")
    if had_old:
        delete(_same_scheme(target, old))


def _replace_by_copy(tmp: str, target: str) -> None:
    import pyarrow.fs as pafs  # optional

    fs, src = filesystem(tmp)
    _, dst = filesystem(target)
    delete(target)
    files = [i for i in fs.get_file_info(pafs.FileSelector(src, recursive=True)) if i.type == pafs.FileType.File]
    files.sort(key=lambda i: i.base_name == MARKER)  # the marker last: it commits the folder
    for info in files:
        fs.copy_file(info.path, dst + info.path[len(src):])
    delete(tmp)


def copy_tree(src: str, dst: str) -> None:
    """Copy a folder between any two storages (local, object stores); ``dst`` is created."""
    import pyarrow.fs as pafs  # optional

    sfs, spath = filesystem(src)
    dfs, dpath = filesystem(dst)
    dfs.create_dir(dpath, recursive=True)
    pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs)


def _same_scheme(uri: str, path: str) -> str:
    """``path`` (inside ``uri``'s filesystem) as a URI of the same kind as ``uri``."""
    if is_local(uri):
        return path
    scheme = uri.split("://", 1)[0]
    return f"{scheme}://{path}"


# For tables of feature vectors: every value is distinct, so Parquet's dictionary encoding would only be
# tried (hashing each double) and dropped.
VECTOR_PARQUET_OPTIONS = {"parquet.enable.dictionary": "false"}


def write_marker(folder: str, marker: dict) -> None:
    write_json(join(folder, MARKER), marker)


def read_marker(folder: str) -> dict | None:
    uri = join(folder, MARKER)
    return read_json(uri) if exists(uri) else None


def write_parquet(df, uri: str, options: dict[str, str] | None = None, marker: dict | None = None) -> None:
    """Write ``df`` next to ``uri`` (with ``marker`` inside), then swap it in."""
    tmp = staged_parquet(df, uri, options, marker)
    replace_with(tmp, uri)


def staged_parquet(df, uri: str, options: dict[str, str] | None = None, marker: dict | None = None,
                   partition_by: str | None = None) -> str:
    """Write ``df`` to a staging folder beside ``uri`` and return it (for callers that check before swapping)."""
    tmp = staging(uri)
    writer = df.write.mode("error").options(**(options or {}))
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.parquet(tmp)
    if marker is not None:
        write_marker(tmp, marker)
    return tmp


def save_ml(stage, uri: str, marker: dict | None = None) -> str:
    """Save a Spark ML stage/pipeline to a staging folder beside ``uri``; returns it (swap with replace_with)."""
    tmp = staging(uri)
    stage.write().save(tmp)
    if marker is not None:
        write_marker(tmp, marker)
    return tmp


_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")


def recover(target: str) -> None:
    """Repair what an interrupted :func:`replace_with` (or staging write) left of ``target``: when ``target``
    is missing, its newest ``target.old-xxxxxxxx`` (the previous content, moved aside) is moved back; the
    other ``target.old-*`` and ``target.tmp-*`` are deleted.

    Call it while holding the output folder's run lock: a ``.tmp-*`` may otherwise be a live run's staging."""
    folder, name = posixpath.split(target.rstrip("/"))
    _recover(folder or ".", name, listdir(folder or "."))


def clean_leftovers(folder: str, names: set[str]) -> list[str]:
    """Repair what an interrupted run left in ``folder``, as :func:`recover` does, for the ``names`` the run's
    layout writes there, nothing else: ``NAME.old-xxxxxxxx`` is moved back where ``NAME`` is missing, and
    the rest (``NAME.tmp-xxxxxxxx`` staging, ``NAME.old-*`` beside a ``NAME``) is deleted.

    Returns the leftovers that are gone from ``folder`` (deleted or moved back), in listing order."""
    entries = listdir(folder)
    gone = {path for name in names for path in _recover(folder, name, entries)}
    return [join(folder, entry) for entry in entries if join(folder, entry) in gone]


def _recover(folder: str, name: str, entries: list[str]) -> list[str]:
    """:func:`recover` for ``folder/name``, given the names in ``folder``; returns the leftovers handled."""
    leftovers = [m for m in map(_LEFTOVER.match, entries) if m and m.group("name") == name]
    olds = [m.group(0) for m in leftovers if m.group("kind") == "old"]
    restored = _restore_newest(folder, name, olds) if olds and name not in entries else None
    for m in leftovers:
        if m.group(0) != restored:
            delete(join(folder, m.group(0)))
    return [join(folder, m.group(0)) for m in leftovers]


def _restore_newest(folder: str, name: str, olds: list[str]) -> str:
    """Move the newest of ``olds`` back to ``folder/name`` (several: a crash again before any recovery)."""
    newest = max(olds, key=lambda entry: _mtime_ns(join(folder, entry)))
    fs, src = filesystem(join(folder, newest))
    fs.move(src, filesystem(join(folder, name))[1])
    log.warning("restored %s from %s, which an interrupted run had moved aside", join(folder, name), newest)
    return newest


def _mtime_ns(uri: str) -> int:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).mtime_ns or 0
