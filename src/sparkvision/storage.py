"""All of a run's file I/O: Parquet and ML folders swapped in whole, JSON/CSV/text/PNG written atomically,
markers and the run lock, through one filesystem layer (``pyarrow.fs``) for local paths and URIs.

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
import re
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .layout import MARKER, join

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
    import pyarrow.fs as pafs

    if uri.startswith("dbfs:"):
        return pafs.LocalFileSystem(), "/dbfs/" + uri[len("dbfs:"):].lstrip("/")
    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    scheme, rest = uri.split("://", 1)
    return pafs.FileSystem.from_uri(f"{_SCHEMES.get(scheme.lower(), scheme)}://{rest}")


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Remove a file or a folder (with its contents); nothing if absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind != pafs.FileType.NotFound:
        fs.delete_file(path)


def listdir(uri: str) -> list[str]:
    """Names directly inside a folder (empty if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def size(uri: str) -> int | None:
    """A file's size in bytes, or None when it is not there."""
    import pyarrow.fs as pafs

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

    Object stores have no rename of a folder: there the folder's objects are copied, its marker
    (``_sparkvision.json``) last, and the staging deleted. A reader takes a folder as complete only when its
    marker carries the fingerprint of the stage record it reads (:mod:`sparkvision.provenance`), so a copy
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
    try:
        fs.move(src, dst)
    except Exception:
        if had_old:
            fs.move(old, dst)
        raise
    if had_old:
        delete(_same_scheme(target, old))


def _replace_by_copy(tmp: str, target: str) -> None:
    import pyarrow.fs as pafs

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
    import pyarrow.fs as pafs

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


_LEFTOVER = re.compile(r"^(?P<name>.+)\.(tmp|old)-[0-9a-f]{8}$")


def clean_leftovers(folder: str, names: set[str]) -> list[str]:
    """Remove what an interrupted run left in ``folder``: ``NAME.tmp-xxxxxxxx`` (staging) and
    ``NAME.old-xxxxxxxx`` (moved aside) for the ``names`` the run's layout writes there, nothing else."""
    removed = []
    for entry in listdir(folder):
        m = _LEFTOVER.match(entry)
        if m and m.group("name") in names:
            delete(join(folder, entry))
            removed.append(join(folder, entry))
    return removed


# ---- the run lock ----------------------------------------------------------------------------------------


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


@contextmanager
def run_lock(uri: str, command: str) -> Iterator[dict]:
    """Hold ``uri`` (the output folder's lock file) while a command runs; refuse if another run holds it.

    A lock left by a process that is gone from this host is taken over (with a warning); a lock held by a
    live process, or one on another host, is refused with its owner and age. On a local disk the lock is
    created atomically (O_EXCL); on object stores it is checked then written (best effort).
    """
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "user": _user(), "command": command,
             "started": time.time()}
    for _ in range(2):
        if _try_create(uri, owner):
            break
        try:
            held = read_json(uri)
        except (OSError, ValueError):
            held = {}
        if held.get("host") == owner["host"] and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
            log.warning("output lock %s was left by pid %s (no longer running); taking it over", uri, held["pid"])
            delete(uri)
            continue
        age = _age(time.time() - float(held.get("started", time.time())))
        raise OutputLocked(
            f"output folder is in use: {uri} is held by 'sparkvision {held.get('command', '?')}' (pid {held.get('pid')} "
            f"on {held.get('host')}, user {held.get('user')}, started {age} ago). Two runs must not write one output "
            f"folder; wait for it, use another --output, or delete the lock file if that run is gone."
        )
    else:  # pragma: no cover - the lock was re-created between our delete and create
        raise OutputLocked(f"output folder is in use: {uri}")
    try:
        yield owner
    finally:
        try:
            held = read_json(uri)
        except (OSError, ValueError):
            held = {}
        if held.get("pid") == owner["pid"] and held.get("host") == owner["host"]:
            delete(uri)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return str(os.getuid())


def _try_create(uri: str, owner: dict) -> bool:
    data = (json.dumps(owner) + "\n").encode()
    if is_local(uri):
        path = local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exists(uri):
        return False
    write_bytes(uri, data)
    return True
