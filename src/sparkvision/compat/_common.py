"""What the compat modules share: the warning they give where they differ from sparkdl, the session and a
task's cores, and the user's model carried to the Python workers (:class:`ShippedModel`).

A user's model (a Keras file, a SavedModel folder) travels to the workers inside the UDF, as sparkdl
shipped its frozen graph: the workers need no shared filesystem, and each loads it once per process.
The driver reads the file (a SavedModel folder as an uncompressed tar) and pins its sha256; a worker keeps
the models it loaded keyed by ``(origin, sha256)``, so a changed file is a new model, loaded afresh, and an
unchanged one is never loaded twice. PySpark broadcasts a UDF's pickled command once it is large, so a big
model crosses to each executor once, not with every task (over Spark Connect the plan carries it: keep
models under the server's message size, 128 MiB by default).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path

from pyspark import TaskContext
from pyspark.sql import SparkSession

from sparkvision.ml.graph import configure_tensorflow


class SparkdlCompatWarning(UserWarning):
    """Where the compat layer behaves differently from sparkdl."""


def active_spark() -> SparkSession:
    """The active session, else a new (or the default) one."""
    return SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()


def task_threads() -> int:
    """The cores of the Spark task running this code (1 outside a task)."""
    ctx = TaskContext.get()
    return ctx.cpus() if ctx else 1


# ---- the user's model, shipped to the workers -----------------------------------------------------------

MAX_WORKER_MODELS = 2
_LOADED: "OrderedDict[tuple[str, str], object]" = OrderedDict()
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ShippedModel:
    """``kind`` ``"keras"`` (a ``.keras``/``.h5`` file) or ``"saved_model"`` (a SavedModel folder, tarred)."""

    def __init__(self, origin: str, kind: str, data: bytes, suffix: str = ""):
        self.origin, self.kind, self.data, self.suffix = origin, kind, data, suffix
        self.sha256 = hashlib.sha256(data).hexdigest()

    @classmethod
    def keras_file(cls, path: str, what: str) -> "ShippedModel":
        """A saved Keras model; ``what`` names the caller and its param in errors."""
        p = Path(path).expanduser()
        if p.suffix.lower() not in KERAS_SUFFIXES:
            raise ValueError(f"{what}: {path} is not a saved Keras model (expected {', '.join(KERAS_SUFFIXES)})")
        if not p.is_file():
            raise FileNotFoundError(f"{what}: Keras model file not found: {path}")
        return cls(str(p), "keras", p.read_bytes(), p.suffix.lower())

    @classmethod
    def keras_model(cls, model, what: str) -> "ShippedModel":
        """An in-memory Keras model, saved (``.keras``) to ship it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            return cls(f"<keras model {model.name}>", "keras", Path(path).read_bytes(), ".keras")

    @classmethod
    def saved_model(cls, path: str, what: str, origin: str | None = None) -> "ShippedModel":
        p = Path(path).expanduser()
        if not (p / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{what}: {path} is not a SavedModel folder (no saved_model.pb)")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for item in sorted(p.rglob("*")):  # sorted, no timestamps: the same folder is the same bytes
                info = tar.gettarinfo(str(item), arcname=str(item.relative_to(p)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if item.is_file():
                    with open(item, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        return cls(origin or str(p), "saved_model", buffer.getvalue())

    def load(self, threads: int = 1):
        """The model in this process: loaded the first time, then from the process' cache."""
        key = (self.origin, self.sha256)
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        configure_tensorflow(threads)
        model = self._load()
        while len(_LOADED) >= MAX_WORKER_MODELS:
            _LOADED.popitem(last=False)
        _LOADED[key] = model
        return model

    def fresh(self):
        """A new copy of the model, not the process' shared one (to train it)."""
        return self._load()

    def _load(self):
        if self.kind == "keras":
            import keras  # optional

            with tempfile.TemporaryDirectory(prefix="sparkvision-model-") as tmp:
                path = os.path.join(tmp, "model" + self.suffix)
                Path(path).write_bytes(self.data)
                try:
                    return keras.saving.load_model(path, compile=False)
                except Exception as exc:  # Keras reports a bad file as almost anything
                    raise ValueError(f"cannot load the Keras model {self.origin}: {exc}") from exc
        import tensorflow as tf  # optional

        folder = tempfile.mkdtemp(prefix="sparkvision-savedmodel-")  # kept while loaded: assets may be read later
        atexit.register(shutil.rmtree, folder, True)
        _extract(self.data, folder, self.origin)
        try:
            return tf.saved_model.load(folder)
        except Exception as exc:
            raise ValueError(f"cannot load the SavedModel {self.origin}: {exc}") from exc


def _extract(data: bytes, folder: str, origin: str) -> None:
    """Unpack a tar made by :meth:`ShippedModel.saved_model`: folders and regular files under ``folder`` only.

    Checked here rather than with ``extractall(filter="data")``, which Python 3.11 gained only in 3.11.4
    (Debian bookworm ships 3.11.2)."""
    root = os.path.realpath(folder)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(root, member.name))
            if os.path.isabs(member.name) or os.path.commonpath([root, target]) != root:
                raise ValueError(f"SavedModel archive of {origin}: member {member.name!r} leaves its folder")
            if member.isdir():
                os.makedirs(target, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                raise ValueError(f"SavedModel archive of {origin}: member {member.name!r} is not a file or folder")
