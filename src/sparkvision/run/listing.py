"""The input listing, made on the driver independently of Spark's own file listing: every entry under the
input folder, each either a candidate image or already rejected with its reason.

Spark's file sources skip names starting with ``.`` or ``_`` (whole folders too) and ``*._COPYING_``, stop
on a dangling symlink and fail a job on a file they cannot read. Real image folders hold all of these:
``__MACOSX/`` from zips made on a Mac, ``.ipynb_checkpoints/``, ``.git/``, ``_temporary/``, ``.Trash-1000/``,
broken links, files mid-copy. So the listing is ours: every entry found is reported exactly once, and
the count check of a load compares Spark's result with this listing.

Symlinks are followed the same way for listing and reading (a symlinked class folder is a class; its
hidden and empty files are reported like any other). A link whose target is missing is a rejected row
("broken symlink"); a link back to a folder already listed is a rejected row ("symlink loop").
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from sparkvision.run import storage

# Folders that tools and operating systems create beside real data; never classes.
SYSTEM_FOLDERS = frozenset({
    "__MACOSX", ".ipynb_checkpoints", ".git", ".svn", ".hg", "_temporary", "$RECYCLE.BIN", "System Volume Information",
    "lost+found", "@eaDir", ".Trashes", ".Spotlight-V100", ".fseventsd", ".DocumentRevisions-V100", ".TemporaryItems",
})
COPYING_SUFFIX = "._COPYING_"  # HDFS and `hadoop fs -put` name a file like this while it is being copied


def is_system_folder(name: str) -> bool:
    return name in SYSTEM_FOLDERS or name.startswith((".", "_")) or name.startswith(".Trash-")


@dataclass(frozen=True)
class Entry:
    """One thing found under the input root."""

    image_id: str            # path below the root, '/'-separated
    path: str                # full path or URI, as the reader opens it
    size: int | None
    mtime_ns: int | None
    problem: str | None = None   # set when the entry cannot be an image whatever its contents


def walk(root: str) -> list[Entry]:
    """Every file (and unusable entry) under ``root``, sorted by ``image_id``."""
    if storage.is_local(root):  # paths as Spark writes local files: file:/abs/path
        return sorted(_walk_local(storage.local_path(root)), key=lambda e: e.image_id)
    return sorted(_walk_fs(root), key=lambda e: e.image_id)


def _walk_local(root: str):
    def uri(path: str) -> str:
        return "file:" + path

    # Depth first, each folder with the real paths of the folders above it: a link to one of those is a
    # loop (reported once, not followed); any other folder link is listed where it is, as find -L does.
    stack = [(root, "", (os.path.realpath(root),), ("",))]
    while stack:
        folder, rel, above, above_rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: d.name, reverse=True)
        except OSError as exc:
            yield Entry(rel + "/", uri(folder), None, None, f"folder not readable: {exc.strerror or exc}")
            continue
        for child in children:
            child_rel = posixpath.join(rel, child.name) if rel else child.name
            try:
                st = os.stat(child.path)  # follows symlinks
            except FileNotFoundError:
                yield Entry(child_rel, uri(child.path), None, None,
                            "broken symlink (its target does not exist)" if child.is_symlink() else
                            "vanished while listing")
                continue
            except OSError as exc:
                yield Entry(child_rel, uri(child.path), None, None, f"not readable: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(child.path)
                if real in above:
                    target = above_rel[above.index(real)]
                    yield Entry(child_rel + "/", uri(child.path), None, None,
                                f"symlink loop: links back to '{target or '.'}', a folder above it")
                    continue
                stack.append((child.path, child_rel, above + (real,), above_rel + (child_rel,)))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(child_rel, uri(child.path), st.st_size, st.st_mtime_ns)
            else:
                yield Entry(child_rel, uri(child.path), None, None, "not a regular file (a pipe, socket or device)")


def _walk_fs(root: str):
    import pyarrow.fs as pafs  # optional

    fs, base = storage.filesystem(root)
    prefix = root.rstrip("/") + "/"
    base = base.rstrip("/")
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1:]
        mtime = info.mtime_ns if info.mtime_ns is not None else None
        yield Entry(rel, prefix + rel, info.size, mtime)


def reason(entry: Entry, labelled: bool, extensions, max_bytes: int, max_mb: float) -> str | None:
    """Why ``entry`` cannot be an image (before reading it), or None for a candidate."""
    if entry.problem:
        return entry.problem
    parts = entry.image_id.split("/")
    system = [p for p in parts[:-1] if is_system_folder(p)]
    if system:
        return f"hidden or system folder ({system[0]}): not a class, not read"
    name = parts[-1]
    if name.endswith(COPYING_SUFFIX):
        return "incomplete copy (name ends with ._COPYING_: still being copied)"
    if name.startswith((".", "_")):
        return "hidden file (name starts with '.' or '_')"
    if labelled and len(parts) < 2:
        return "not inside a class sub-folder"
    return file_reason(entry.image_id, entry.size, extensions, max_bytes, max_mb)


def file_reason(path: str, size: int | None, extensions, max_bytes: int, max_mb: float) -> str | None:
    """The checks every input file gets, listed in a folder or in a manifest: extension and size."""
    base = path.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext not in {e.lower().lstrip(".") for e in extensions}:
        return "unsupported file extension"
    if size == 0:
        return "empty file (0 bytes)"
    if size is not None and size > max_bytes:
        return f"file too large: {size} bytes > max_file_mb {max_mb}"
    return None


def spark_skips(name: str) -> bool:
    """Whether Spark's file sources leave out a file or folder of this name (``HadoopFSUtils``'s rule: ``_x``
    but not ``_x=1``, a partition folder; ``.x``; ``x._COPYING_``)."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith(COPYING_SUFFIX)


def unlisted_reason(image_id: str) -> str | None:
    """For a file below a streamed folder that Spark's file source never lists: why it is rejected (the
    reasons ``load`` gives), or None when the file source lists it, or when it is a copy in progress
    (``._COPYING_``: it is listed once renamed)."""
    parts = image_id.split("/")
    if parts[-1].endswith(COPYING_SUFFIX):
        return None
    hidden = [p for p in parts[:-1] if spark_skips(p)]
    if hidden:
        return f"hidden or system folder ({hidden[0]}): not read"
    if spark_skips(parts[-1]):
        return "hidden file (name starts with '.' or '_')"
    return None


def label_of(image_id: str) -> str | None:
    """The class of a listed file: its first folder below the root (None at the root, in a system folder,
    and for a folder-level row: an unreadable folder or a loop is not an image of a class)."""
    parts = image_id.split("/")
    if len(parts) < 2 or image_id.endswith("/") or is_system_folder(parts[0]):
        return None
    return parts[0]
