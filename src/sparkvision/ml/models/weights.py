"""Find a model's weights file: explicit file -> installed package -> cache -> download -> clear error.

Downloads go to a temporary file in the cache, are checked against the published checksum and
only then renamed into place, so a broken download never poisons the cache. An explicit file is
also kept in the cache by its sha256 (``<cache>/sha256/<digest>``), so a model trained with it
still finds it when the path is gone. Mirror credentials come from :mod:`sparkvision.secrets`, go
to the mirror's origin only, and never appear in a log line or an error message.
"""

from __future__ import annotations

from sparkvision.errors import WeightsNotFoundError, ChecksumMismatchError
import functools
import hashlib
import http.client
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sparkvision import secrets
from sparkvision.ml.models.registry import ModelSpec

log = logging.getLogger(__name__)

CACHE_ENV = "SPARKVISION_CACHE"
MIRROR_ENV = "SPARKVISION_WEIGHTS_MIRROR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparkvision" / "models")


def _hasher(expected: str):
    return hashlib.md5() if len(expected) == 32 else hashlib.sha256()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    st = os.stat(path)
    return _cached_digest(os.fspath(os.path.realpath(path)), st.st_size, st.st_mtime_ns, algorithm)


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, _size: int, _mtime: int, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, expected: str | None) -> None:
    if not expected:
        return
    algorithm = "md5" if len(expected) == 32 else "sha256"
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumMismatchError(f"{path}: {algorithm} is {actual}, expected {expected}")


def _package_file(spec: ModelSpec) -> Path | None:
    src = spec.weights
    if not src.package:
        return None
    found = importlib.util.find_spec(src.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / src.package_path
    return path if path.is_file() else None


def _cache_candidates(cache_dir: Path, filename: str) -> list[Path]:
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return [cache_dir / filename, keras_home / "models" / filename]


# --- URLs and credentials ------------------------------------------------------------------------

def _shown(url: str) -> str:
    """``url`` as it may appear in a log line or an error message: no userinfo, no signatures."""
    return secrets.redact_text(secrets.strip_userinfo(url)[0])


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _join(base: str, name: str) -> str:
    """``name`` under the base URL ``base`` (a query string, e.g. a SAS token, stays at the end)."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + name, parts.query, parts.fragment))


def _mirror_auth(url: str, mirror: str | None) -> str | None:
    """The mirror's Authorization header, for requests to the mirror's origin only."""
    if not mirror or _origin(url) is None or _origin(url) != _origin(mirror):
        return None
    return secrets.mirror_auth_header(url)


class _SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Keeps the Authorization header on redirects within the origin it was meant for, drops it elsewhere."""

    def __init__(self, origin, header: str):
        super().__init__()
        self.origin, self.header = origin, header

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) == self.origin:
            new.add_unredirected_header("Authorization", self.header)
        return new


def _open(url: str, auth_header: str | None, timeout: float):
    request = urllib.request.Request(url)
    if not auth_header:
        return urllib.request.urlopen(request, timeout=timeout)
    request.add_unredirected_header("Authorization", auth_header)  # never copied to a redirect's target
    opener = urllib.request.build_opener(_SameOriginAuthRedirect(_origin(url), auth_header))
    return opener.open(request, timeout=timeout)


_FETCH_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


def download(url: str, dest: Path, expected_hash: str | None, timeout: float = 60.0,
             auth_header: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``expected_hash`` (md5 or sha256) when given.

    ``auth_header`` is sent to ``url``'s origin only; credentials in ``url``'s userinfo become a Basic
    header. Messages name the URL without credentials.
    """
    url, creds = secrets.strip_userinfo(url)
    if creds and any(creds) and auth_header is None:
        auth_header = secrets.basic_auth_header(*creds)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    hasher = _hasher(expected_hash) if expected_hash else None
    try:
        with os.fdopen(fd, "wb") as out, _open(url, auth_header, timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                if hasher:
                    hasher.update(chunk)
        if hasher and hasher.hexdigest() != expected_hash.lower():
            raise ChecksumMismatchError(
                f"download of {_shown(url)} has {hasher.name} {hasher.hexdigest()}, expected {expected_hash}; not cached"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch(url: str, dest: Path, expected_hash: str | None, mirror: str | None, errors: list[str],
           what: str) -> Path | None:
    try:
        log.info("downloading %s from %s", what, _shown(url))
        return download(url, dest, expected_hash, auth_header=_mirror_auth(url, mirror))
    except _FETCH_ERRORS as exc:
        errors.append(f"{_shown(url)}: {secrets.redact_text(str(exc))}")
        return None


# --- content-addressed cache ----------------------------------------------------------------------

def content_path(cache_dir: str | os.PathLike, sha256: str) -> Path:
    """Where the cache keeps a weights file by its content: ``<cache>/sha256/<hex digest>``."""
    return Path(cache_dir) / "sha256" / sha256.lower()


def _suffix(name: str) -> str:
    """The file type suffix Keras needs to load a weights file (``.weights.h5``, ``.h5``, ``.keras``...)."""
    if name.lower().endswith(".weights.h5"):
        return name[-len(".weights.h5"):]
    suffix = Path(name).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def _store_content(path: Path, cache: Path, digest: str) -> None:
    """Copy ``path`` to ``<cache>/sha256/<digest>`` (atomically, once); a cache we cannot write is no error."""
    entry = content_path(cache, digest)
    if entry.is_file():
        return
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".part", dir=entry.parent)
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
        if h.hexdigest() != digest:  # changed while we copied: a later run copies it again
            log.debug("weights file %s changed while it was copied into the cache; not cached", path)
            return
        os.replace(tmp, entry)
        log.debug("weights file %s cached as %s", path, entry)
    except OSError as exc:
        log.debug("could not copy weights file %s into the cache %s: %s", path, entry.parent, exc)
    finally:
        if tmp and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _named(entry: Path, suffix: str) -> Path:
    """``entry`` under a name with ``suffix`` (a hard link beside it), so Keras can load it; else ``entry``."""
    if not suffix:
        return entry
    named = entry.with_name(entry.name + suffix)
    if named.is_file() and (os.path.samefile(named, entry) or _has_sha256(named, entry.name)):
        return named
    tmp = named.with_name(f".{named.name}.{os.getpid()}.{threading.get_ident()}.link")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        try:
            os.link(entry, tmp)
        except OSError:
            shutil.copyfile(entry, tmp)
        os.replace(tmp, named)
        return named
    except OSError as exc:
        log.debug("could not name cached weights %s%s: %s", entry, suffix, exc)
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return entry


def _has_sha256(path: Path, expected: str) -> bool:
    try:
        return path.is_file() and file_digest(path) == expected
    except OSError:
        return False


def _by_checksum(spec: ModelSpec, expected: str, cache: Path, mirror: str | None, allow_download: bool,
                 names: list[str], errors: list[str], usual: bool = True) -> Path | None:
    """A weights file with sha256 ``expected``: the cache's content entry, then (``usual``) the package
    and the cache by file name, then the mirror (``sha256/<digest>``, then by name) and the origin."""
    src = spec.weights
    entry = content_path(cache, expected)
    suffix = next((_suffix(n) for n in names if _suffix(n)), "")
    if _has_sha256(entry, expected):
        return _named(entry, suffix)
    if usual:
        local = [p for p in [_package_file(spec)] if p is not None]
        for name in names:
            local += _cache_candidates(cache, name)
        for candidate in local:
            if _has_sha256(candidate, expected):
                return candidate
            if candidate.is_file():
                log.debug("%s is not the weights file with sha256 %s", candidate, expected)
    if not allow_download:
        if mirror or (usual and src.url):
            errors.append("downloads disabled")
        return None
    # The published files are only worth fetching when their published checksum could be this one.
    published_may_match = not (src.file_hash and len(src.file_hash) == 64 and src.file_hash.lower() != expected)
    urls = []
    if mirror:
        urls.append(_join(mirror, f"sha256/{expected}"))
        if usual:
            urls += [_join(mirror, n) for n in names if n != src.filename or published_may_match]
    if usual and src.url and published_may_match:
        urls.append(src.url)
    for url in dict.fromkeys(urls):
        got = _fetch(url, entry, expected, mirror, errors, f"{spec.name} weights with sha256 {expected}")
        if got is not None:
            return _named(got, suffix)
    return None


def resolve_weights(
    spec: ModelSpec,
    weights_path: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror_url: str | None = None,
    allow_download: bool = True,
    expected_sha256: str | None = None,
) -> Path:
    """Return a verified local weights file for ``spec``.

    An explicit ``weights_path`` wins; a copy of it is kept in the cache by content
    (``<cache>/sha256/<digest>``). Where that path is gone, ``expected_sha256`` (the sha256 a model
    was trained with) finds the same file: in the content cache, the package, the cache by file name,
    or the mirror (``sha256/<digest>`` or by name); only a file with that checksum is accepted.
    Without an explicit path, ``expected_sha256`` is a fallback: when the usual file has another
    checksum (or none is found) the content cache and the mirror's ``sha256/<digest>`` are tried; the
    caller still checks what it gets.

    Credentials in ``mirror_url``'s userinfo are dropped, unused (:func:`sparkvision.secrets.clean_mirror_url`);
    the mirror's credentials come from the environment or netrc
    (:func:`sparkvision.secrets.mirror_auth_header`) and go to its origin only.
    """
    src = spec.weights
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    raw_mirror = mirror_url or os.environ.get(MIRROR_ENV)
    mirror = secrets.clean_mirror_url(raw_mirror, "weights mirror") if raw_mirror else None
    expected = expected_sha256.strip().lower() if expected_sha256 else None
    if expected and not re.fullmatch(r"[0-9a-f]{64}", expected):
        log.warning("ignoring expected_sha256 %r for %s: not a sha256 (64 hex digits)", expected_sha256, spec.name)
        expected = None
    if weights_path:
        return _explicit(spec, Path(weights_path).expanduser(), cache, mirror, allow_download, expected)
    errors: list[str] = []
    try:
        path = _usual(spec, cache, mirror, allow_download)
    except (WeightsNotFoundError, ChecksumMismatchError):
        if expected:
            found = _by_checksum(spec, expected, cache, mirror, allow_download, [src.filename], errors, usual=False)
            if found is not None:
                return found
        raise
    if expected and not _has_sha256(path, expected):
        found = _by_checksum(spec, expected, cache, mirror, allow_download, [src.filename], errors, usual=False)
        if found is not None:
            log.info("%s has another sha256 than expected; using %s", path, found)
            return found
    return path


def _explicit(spec: ModelSpec, path: Path, cache: Path, mirror: str | None, allow_download: bool,
              expected: str | None) -> Path:
    src = spec.weights
    names = list(dict.fromkeys([path.name, src.filename]))
    errors: list[str] = []
    if path.is_file():
        digest = file_digest(path)
        _store_content(path, cache, digest)
        if expected and digest != expected:
            found = _by_checksum(spec, expected, cache, None, False, names, errors, usual=False)
            if found is not None:
                log.warning("weights file %s has changed (sha256 %s); using the cached copy with sha256 %s: %s",
                            path, digest, expected, found)
                return found
        return path
    if not expected:
        raise WeightsNotFoundError(f"weights file for {spec.name} not found: {path}")
    found = _by_checksum(spec, expected, cache, mirror, allow_download, names, errors)
    if found is not None:
        log.info("weights file %s not found; using %s (same sha256 %s)", path, found, expected)
        return found
    tried = "; ".join(dict.fromkeys(errors)) if errors else "no mirror set"
    where = _shown(_join(mirror, f"sha256/{expected}")) if mirror else f"<mirror>/sha256/{expected} and set {MIRROR_ENV}"
    raise WeightsNotFoundError(
        f"weights file for {spec.name} not found: {path} (the path it was trained with is gone), and no file "
        f"with its sha256 {expected} was found in {content_path(cache, expected)}, the package, the cache "
        f"({cache}) or the mirror ({tried}). To supply it: copy the file to {content_path(cache, expected)} "
        f"(the cache is {CACHE_ENV} or --cache-dir), or serve it at {where}."
    )


def _usual(spec: ModelSpec, cache: Path, mirror: str | None, allow_download: bool) -> Path:
    """Package -> cache (by file name) -> mirror -> origin, verified against the published checksum."""
    src = spec.weights
    packaged = _package_file(spec)
    if packaged is not None:
        verify(packaged, src.file_hash)
        return packaged
    for candidate in _cache_candidates(cache, src.filename):
        if candidate.is_file():
            verify(candidate, src.file_hash)
            return candidate
    urls = ([_join(mirror, src.filename)] if mirror else []) + ([src.url] if src.url else [])
    errors: list[str] = []
    if allow_download:
        for url in urls:
            got = _fetch(url, cache / src.filename, src.file_hash, mirror, errors, f"{spec.name} weights")
            if got is not None:
                return got
    how = (
        f"pip install {src.package.replace('_', '-')}" if src.package else
        f"copy {src.filename} into {cache} (or set {CACHE_ENV}), pass --weights FILE, "
        f"or set {MIRROR_ENV} to a mirror that serves it"
    )
    tried = "; ".join(errors) if errors else ("downloads disabled" if urls else "no download source")
    raise WeightsNotFoundError(f"no weights for {spec.name} ({tried}). To supply them offline: {how}.")
