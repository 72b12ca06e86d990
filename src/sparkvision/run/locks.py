"""The run lock: one run at a time writes an output folder. A lock file beside the run's outputs holds its
owner and a lease the run renews while it lives; another run takes it over only once the lease ran out, or
at once when the holder was a process of this host that is gone. Local disks, S3 (conditional puts) and
other stores (best effort) each get the strongest guarantee they allow.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from sparkvision.errors import OutputLocked
from sparkvision.run.storage import delete, exists, filesystem, is_local, local_path, read_bytes, write_bytes

log = logging.getLogger(__name__)

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
        import boto3  # optional

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
        from botocore.exceptions import ClientError  # optional (boto3's)

        try:
            call(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in self._LOST:
                return False
            raise
        return True
