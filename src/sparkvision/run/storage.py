"""All of a run's file I/O: Parquet and ML folders swapped in whole, JSON/CSV/text/PNG written atomically,
markers and the run lock, through one filesystem layer (``pyarrow.fs``) for local paths and URIs.

Stage outputs are written beside their target and swapped in, so a re-run replaces them whole and a
crash mid-write leaves the previous output (or nothing) in place, never a half-written table. Files are
written to a temporary name and renamed (local disks), or put as one object (object stores, where a put
is atomic and visible whole).
"""

from __future__ import annotations

from sparkvision.errors import OutputLocked
import csv
import io
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
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


# ---- the run lock ----------------------------------------------------------------------------------------
#
# The lock file holds its owner (host, pid, user, command, start), a random ``token`` and ``expires``: a
# lease that a thread of the holder renews every lease/3 seconds while the run lives. Another run takes the
# lock over only once the lease has run out (a driver host that died stops renewing) or, at once, when the
# holder was a process of this host that is gone. Every change is conditional on the lock being the one
# read: created only if absent, renewed or released only while it still holds our token, taken over only
# while it is still the stale lock judged, so two starters racing for one stale lock cannot both win.
# Expiry is judged with the reader's clock: hosts' clocks must agree to well within a lease (NTP does).

LEASE_ENV = "SPARKVISION_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0


def lease_seconds() -> float:
    """How long a lock stays held without renewal: $SPARKVISION_LOCK_LEASE_S, else 120 s."""
    value = os.environ.get(LEASE_ENV) or str(DEFAULT_LEASE_S)
    try:
        lease = float(value)
    except ValueError:
        lease = float("nan")
    if not lease > 0:
        raise ValueError(f"${LEASE_ENV} must be a number of seconds above 0, not {value!r}")
    return lease


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

    Yields the lock's contents (``expires`` kept current by the renewals). A lock whose lease ran out, or left by a process gone from this host, is
    taken over (with a warning); a live one is refused with its owner, age and expiry. See the notes above
    this function for the protocol, and the lock classes below for what each store guarantees.
    """
    lease = lease_seconds()
    now = time.time()
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "user": _user(), "command": command,
             "started": now, "expires": now + lease, "token": uuid.uuid4().hex}
    store = _lock_store(uri)
    _acquire(store, uri, owner)
    try:
        with _renewing(store, uri, owner, lease):
            yield owner
    finally:
        _release(store, uri, owner)


def _acquire(store, uri: str, owner: dict) -> None:
    """Create the lock, or take over a stale one and create it then; raise :class:`OutputLocked` if held."""
    for _ in range(5):
        if store.create(_encode(owner)):
            return
        seen = store.read()
        if seen is None:  # released since: try again
            continue
        held, now = _decode(seen), time.time()
        why = _stale(held, now)
        if why is None:
            raise _in_use(uri, held, now)
        if store.delete_if(lambda current: current == seen):
            log.warning("output lock %s %s; taking it over", uri, why)
    raise OutputLocked(f"output folder is in use: {uri} changed hands several times while this run started; "
                       f"another run is starting on it")


def _stale(held: dict, now: float) -> str | None:
    """Why a lock no longer holds its folder, or None while it does."""
    pid, expires = held.get("pid"), held.get("expires")
    if held.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return f"was left by pid {pid}, no longer running"
    if isinstance(expires, (int, float)) and expires < now:
        return f"was left by {held.get('host')} (pid {pid}), whose lease ran out {_age(now - expires)} ago"
    return None


def _in_use(uri: str, held: dict, now: float) -> OutputLocked:
    age = _age(now - float(held.get("started", now)))
    expires = held.get("expires")
    lease = (f"its lease expires in {_age(expires - now)} unless that run renews it"
             if isinstance(expires, (int, float)) else "it has no lease, so it never expires")
    return OutputLocked(
        f"output folder is in use: {uri} is held by 'sparkvision {held.get('command', '?')}' (pid {held.get('pid')} "
        f"on {held.get('host')}, user {held.get('user')}, started {age} ago; {lease}). Two runs must not write one "
        f"output folder; wait for it, use another --output, or delete the lock file if that run is gone."
    )


@contextmanager
def _renewing(store, uri: str, owner: dict, lease: float) -> Iterator[None]:
    """Renew the lock's lease from a daemon thread every lease/3 s while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(target=_renew_until, args=(stop, store, uri, owner, lease), daemon=True,
                              name="sparkvision-lock-lease")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _renew_until(stop: threading.Event, store, uri: str, owner: dict, lease: float) -> None:
    ours = _holds(owner["token"])
    while not stop.wait(lease / 3):
        owner["expires"] = time.time() + lease
        try:
            renewed = store.replace_if(ours, _encode(owner))
        except Exception as e:  # noqa: BLE001 - a store's hiccup: the next renewal may get through
            log.warning("could not renew output lock %s: %s", uri, e)
            continue
        if not renewed:
            log.error("output lock %s is no longer this run's: another run took it over after its lease ran out "
                      "and may now write the same output folder", uri)


def _release(store, uri: str, owner: dict) -> None:
    """Delete the lock if it is still ours (not if another run took it over after our lease ran out)."""
    try:
        store.delete_if(_holds(owner["token"]))
    except Exception as e:  # noqa: BLE001 - the run is done; its lease will run out
        log.warning("could not release output lock %s (%s); it expires in %s", uri, e,
                    _age(owner["expires"] - time.time()))


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return str(os.getuid())


def _encode(owner: dict) -> bytes:
    return (json.dumps(owner) + "\n").encode()


def _decode(data: bytes) -> dict:
    """A lock's contents; {} when unreadable (being written right now, or not a lock)."""
    try:
        held = json.loads(data)
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def _holds(token: str):
    """A check that a lock's bytes carry ``token``."""
    return lambda data: _decode(data).get("token") == token


def _lock_store(uri: str):
    if is_local(uri):
        return _LocalLock(local_path(uri))
    if uri.split("://", 1)[0].lower() in ("s3", "s3a", "s3n"):
        try:
            return _S3Lock(uri)
        except ImportError:
            pass
    return _BestEffortLock(uri)


class _BestEffortLock:
    """A lock file on a store without a conditional put (Azure, GCS, HDFS, DBFS; S3 without boto3), through
    pyarrow: created if absent and read back (a starter that reads back another's token gives up), renewed
    and released after checking the token. Best effort: two runs that start within the same instant can
    both win there, where a conditional put would have refused one."""

    def __init__(self, uri: str):
        self.uri = uri

    def create(self, data: bytes) -> bool:
        if exists(self.uri):
            return False
        write_bytes(self.uri, data)
        return self.read() == data

    def read(self) -> bytes | None:
        try:
            return read_bytes(self.uri)
        except FileNotFoundError:
            return None

    def replace_if(self, check, data: bytes) -> bool:
        """Check then write: only the holder rewrites its lock, and another run takes it over only after a
        lease without renewal, so the two do not meet unless renewal stalls for most of a lease."""
        current = self.read()
        if current is None or not check(current):
            return False
        write_bytes(self.uri, data)
        return True

    def delete_if(self, check) -> bool:
        current = self.read()
        if current is None or not check(current):
            return False
        delete(self.uri)
        return True


class _LocalLock(_BestEffortLock):
    """A lock file on a local disk or a mount: created with O_EXCL; deleted by renaming it aside (atomic),
    checking the renamed file and deleting it only if it is the lock meant, else renaming it back. Left: a
    third run that starts in the instant another's fresh lock is aside creates its own there, which the
    put-back replaces (that run's renewal then logs the loss)."""

    def create(self, data: bytes) -> bool:
        os.makedirs(os.path.dirname(self.uri) or ".", exist_ok=True)
        try:
            fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def delete_if(self, check) -> bool:
        aside = f"{self.uri}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.uri, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            if check(f.read()):
                os.unlink(aside)
                return True
        os.rename(aside, self.uri)  # another run's lock, renamed aside for an instant: put back
        return False


class _S3Lock:
    """A lock object on S3 through boto3: created only if absent (If-None-Match: *), renewed and deleted only
    if unchanged since read (If-Match: its ETag). AWS honours both (deletes since 2025-09); an S3-compatible
    store that ignores them is as good as :class:`_BestEffortLock` (``create`` looks first for that)."""

    _LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")

    def __init__(self, uri: str):
        import boto3

        self.bucket, self.key = filesystem(uri)[1].split("/", 1)
        self.client = boto3.client("s3")

    def create(self, data: bytes) -> bool:
        return self._get() is None and self._conditional(self.client.put_object, Body=data, IfNoneMatch="*")

    def read(self) -> bytes | None:
        got = self._get()
        return got and got[0]

    def replace_if(self, check, data: bytes) -> bool:
        got = self._get()
        return bool(got) and check(got[0]) and self._conditional(self.client.put_object, Body=data, IfMatch=got[1])

    def delete_if(self, check) -> bool:
        got = self._get()
        return bool(got) and check(got[0]) and self._conditional(self.client.delete_object, IfMatch=got[1])

    def _get(self) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response["ETag"]

    def _conditional(self, call, **kwargs) -> bool:
        """Whether ``call`` on the lock object went through; False when its condition failed (another run)."""
        from botocore.exceptions import ClientError

        try:
            call(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in self._LOST:
                return False
            raise
        return True
