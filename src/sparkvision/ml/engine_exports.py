"""The ONNX Runtime and OpenVINO engines' exports (:mod:`sparkvision.ml.engines`): the Keras network
exported once per (model, weights sha256, engine) beside the weights cache,
``<cache>/engines/<model>-<sha256[:16]>/<engine>/`` (or the user's cache where that is read-only, as in the
Docker image, which ships the default model's exports), with a ``manifest.json`` holding the sha256 of every
exported file; a process that finds a complete, unchanged export loads that ready graph instead of importing
TensorFlow and rebuilding the Keras model. The export itself runs in a short-lived subprocess
(``python -m sparkvision.ml.engines export ...``) under a file lock, so the converter's memory and
TensorFlow's threads never stay in a Spark worker, and two workers on one machine export once.

Exports are code the engines run, so one is used only from a folder nobody else can write: the export
folder, its parents up to the engines root, the manifest and every file owned by this user (or root, as
the Docker image's are) and not group- or world-writable, each file's sha256 as the manifest recorded it,
and no file the manifest does not list. A folder that fails is ignored with a warning saying why, and the
export is redone in a root that passes (the temp folder's predictable ``sparkvision-engines-<uid>``,
made mode 0700, only while it is this user's and writable by no one else; else a fresh private folder).

* ``onnxruntime``: the frozen graph of :func:`sparkvision.ml.graph.inference_function` converted by tf2onnx
  (uint8 pixels in, the preprocessing inside).
* ``openvino``: OpenVINO IR converted from the same ONNX file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sparkvision.errors import EngineError
from sparkvision.ml.graph import inference_function
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import default_cache_dir, file_digest

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the exported graph changes (inputs, opset, preprocessing inside)
ONNX_OPSET = 17
INPUT_NAME = "pixels"
# The engines that run an export.
EXPORTED = ("onnxruntime", "openvino")


# --- where exports live ----------------------------------------------------------------------------

def export_roots(cache_dir: str | os.PathLike | None) -> list[Path]:
    """Where exports are looked for, in order, and made in the first writable, trusted one: beside the
    weights cache (``<cache>/engines``), then the user's cache, then the temp folder (a read-only image
    cache). The temp folder's name is predictable, so another local user may have made it first: like
    every root, it is used only if :func:`_distrust` finds nothing wrong with it."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparkvision" / "engines"
    roots = [Path(cache_dir or default_cache_dir()) / "engines", user, _tmp_root()]
    return list(dict.fromkeys(roots))


def _tmp_root() -> Path:
    return Path(tempfile.gettempdir()) / f"sparkvision-engines-{os.getuid()}"


def export_dir(spec_name: str, sha256: str, engine: str, root: str | os.PathLike) -> Path:
    return Path(root) / f"{spec_name}-{sha256[:16]}" / engine


# --- trust -------------------------------------------------------------------------------------------

def _trusted_owners() -> tuple[int, ...]:
    """This user, and root (who can change anything anyway; the Docker image's exports are root's)."""
    return (os.geteuid(), 0)


def _path_distrust(path: Path, what: str) -> str | None:
    """Why ``path`` (which exists) may have been changed by someone else, or None."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{what} {path} cannot be checked: {exc.strerror or exc}"
    if st.st_uid not in _trusted_owners():
        return f"{what} {path} is owned by uid {st.st_uid}, not this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{what} {path} is group- or world-writable (mode {st.st_mode & 0o777:o})"
    return None


def _distrust(folder: Path, root: Path) -> str | None:
    """Why the existing parts of ``folder`` .. ``root`` (each folder from the export up to its engines
    root) could hold an export someone else planted or changed, or None. The temp folder's root must
    be a real folder, not a link another user placed under that predictable name."""
    if root == _tmp_root() and root.is_symlink():
        return f"engines root {root} is a symbolic link"
    path = folder
    while True:
        if _exists(path):
            why = _path_distrust(path, "engines root" if path == root else "export folder")
            if why:
                return why
        if path == root or path.parent == path:
            return None
        path = path.parent


def _exists(path: Path) -> bool:
    """``path.exists()``, False where it cannot be looked at (a folder of another user's, mode 0700)."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def _files_distrust(folder: Path, names) -> str | None:
    for name in names:
        why = _path_distrust(folder / name, "export file")
        if why:
            return why
    return None


# --- export ------------------------------------------------------------------------------------------

def _writable(root: Path) -> bool:
    try:
        if root == _tmp_root():  # in the shared temp folder: this user's alone
            root.mkdir(mode=0o700, exist_ok=True)
        else:
            root.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK | os.X_OK)


_PRIVATE_ROOTS: dict[tuple[int, str], Path] = {}


def _private_root() -> Path:
    """A fresh folder of this user's alone (mode 0700, under the temp folder), made once per process:
    where exports go when no root can be trusted."""
    key = (os.getuid(), tempfile.gettempdir())
    if key not in _PRIVATE_ROOTS or not _PRIVATE_ROOTS[key].is_dir():
        _PRIVATE_ROOTS[key] = Path(tempfile.mkdtemp(prefix=f"sparkvision-engines-{os.getuid()}-"))
    return _PRIVATE_ROOTS[key]


# Every file the engine reads from an export: each must be in the manifest (OpenVINO's weights too).
_ENGINE_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_ok(folder: Path, spec_name: str, sha256: str, engine: str) -> bool:
    """A complete export of exactly this (model, weights, engine, format): every file the engine reads
    listed, each file's sha256 the manifest's, and no file it does not list."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        present = {p.name for p in folder.iterdir()} - {"manifest.json"}
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or (manifest.get("model"), manifest.get("weights_sha256"),
                                          manifest.get("engine"), manifest.get("format")) != (
            spec_name, sha256, engine, EXPORT_FORMAT):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or any(not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")
                                          for n in files):
        log.warning("engine export %s: manifest.json's files are not plain file names; exporting again", folder)
        return False
    missing = [n for n in _ENGINE_FILES[engine] if n not in files]
    if missing:
        log.warning("engine export %s: manifest.json does not list %s; exporting again", folder, ", ".join(missing))
        return False
    unlisted = sorted(present - set(files))
    if unlisted:
        log.warning("engine export %s: %s not in its manifest; exporting again", folder, ", ".join(unlisted))
        return False
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            log.warning("engine export %s: %s changed since it was exported; exporting again", folder, name)
            return False
    return True


def _usable(folder: Path, root: Path, spec_name: str, sha256: str, engine: str) -> bool:
    """Whether ``folder`` holds an export to load: in a trusted place, with trusted files, as its
    manifest says. A distrusted one is named in a warning (it is never loaded, nor exported into)."""
    if not _exists(folder / "manifest.json"):
        return False
    why = _distrust(folder, root) or _files_distrust(folder, ["manifest.json", *_listing(folder)])
    if why:
        log.warning("engine export %s ignored: %s; another local user could have planted or changed it", folder, why)
        return False
    return _manifest_ok(folder, spec_name, sha256, engine)


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    except OSError:
        return []


def _export_root(roots: list[Path], spec_name: str, sha256: str, engine: str) -> Path:
    """The first root that is writable and trusted (its export folder included, if there), else a fresh
    private one; every root passed over for distrust is named in a warning."""
    for root in roots:
        if not _writable(root):
            continue
        why = _distrust(export_dir(spec_name, sha256, engine, root), root)
        if why is None:
            return root
        log.warning("engines root %s not used for the export: %s", root, why)
    private = _private_root()
    log.warning("exporting %s for %s into the private folder %s", spec_name, engine, private)
    return private


@contextlib.contextmanager
def _locked(folder: Path):
    folder.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_export(spec_name: str, weights_path: str, sha256: str, engine: str,
                  cache_dir: str | os.PathLike | None = None, in_process: bool = False) -> Path:
    """The export folder of (model, weights, engine), exported now if missing or changed.

    The export runs in a subprocess unless ``in_process``; either way under a file lock, so concurrent
    workers on one machine export once and the others wait for it.
    """
    if engine not in EXPORTED:
        raise EngineError(f"engine {engine} has no export")
    roots = export_roots(cache_dir)
    for root in roots:
        folder = export_dir(spec_name, sha256, engine, root)
        if _usable(folder, root, spec_name, sha256, engine):
            return folder
    root = _export_root(roots, spec_name, sha256, engine)
    folder = export_dir(spec_name, sha256, engine, root)
    try:
        with _locked(folder):
            if not _usable(folder, root, spec_name, sha256, engine):  # else another worker finished it meanwhile
                if in_process:
                    export(spec_name, weights_path, sha256, engine, root)
                else:
                    _export_subprocess(spec_name, weights_path, sha256, engine, root)
    except OSError as exc:
        raise EngineError(f"cannot export {spec_name} for {engine} into {folder}: {exc}") from exc
    if not _usable(folder, root, spec_name, sha256, engine):
        raise EngineError(f"export of {spec_name} for {engine} into {folder} did not complete")
    return folder


def _export_subprocess(spec_name: str, weights_path: str, sha256: str, engine: str, root: Path) -> None:
    cmd = [sys.executable, "-m", "sparkvision.ml.engines", "export", spec_name, weights_path, sha256, engine, str(root)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    log.info("exporting %s for %s (once per weights file)", spec_name, engine)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise EngineError(f"export of {spec_name} for {engine} failed (exit {done.returncode}):\n{tail}")


def export(spec_name: str, weights_path: str, sha256: str, engine: str, root: str | os.PathLike) -> Path:
    """Export into the engines folder ``root`` in this process (the subprocess's body): Keras model ->
    frozen TF graph -> ONNX [-> OpenVINO IR]."""
    if file_digest(weights_path) != sha256:
        raise EngineError(f"weights {weights_path} do not have sha256 {sha256}; not exported")
    spec = registry.get(spec_name)
    root = Path(root)
    folder = export_dir(spec.name, sha256, engine, root)
    folder.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{engine}-", dir=folder.parent))
    try:
        onnx_file = tmp / "model.onnx"
        onnx_source = export_dir(spec.name, sha256, "onnxruntime", root)
        if engine == "openvino" and _usable(onnx_source, root, spec.name, sha256, "onnxruntime"):
            onnx_file = onnx_source / "model.onnx"  # the ONNX Runtime export is already here: convert that
        else:
            _to_onnx(spec, weights_path, onnx_file)
        if engine == "openvino":
            import openvino as ov  # optional

            ov.save_model(ov.convert_model(str(onnx_file)), str(tmp / "model.xml"), compress_to_fp16=False)
            if onnx_file.parent == tmp:
                onnx_file.unlink()
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        manifest = {"model": spec.name, "weights_sha256": sha256, "engine": engine, "format": EXPORT_FORMAT,
                    "input": INPUT_NAME, "input_size": spec.input_size, "feature_dim": spec.feature_dim,
                    "versions": _versions(), "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _seal(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _seal(folder: Path) -> None:
    """An export's folder and files writable by their owner only (whatever the umask: a group-writable
    export would be distrusted and redone), readable by all (an image's exports serve every user)."""
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)


def _to_onnx(spec, weights_path: str, dest: Path) -> None:
    """The registry's Keras model as the featurizer's frozen graph (uint8 in), converted by tf2onnx."""
    import tensorflow as tf  # optional
    import tf2onnx  # optional
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # optional
    import onnx  # optional (tf2onnx imported it already)

    graph = inference_function(spec, spec.build(weights_path)).graph
    if spec.freeze_graph is False:  # inference_function left variables in: constants for the export
        graph = convert_variables_to_constants_v2(graph)
    graph_def = graph.graph.as_graph_def()
    inputs = [t.name for t in graph.inputs if t.dtype == tf.uint8]
    outputs = [t.name for t in graph.outputs]
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                              opset=ONNX_OPSET)
    model.graph.input[0].name, old = INPUT_NAME, model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [INPUT_NAME if i == old else i for i in node.input]
    onnx.save(model, str(dest))


def _versions() -> dict:
    out = {}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
