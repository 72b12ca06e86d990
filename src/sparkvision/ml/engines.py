"""Inference engines for the featurizer's network: TensorFlow, ONNX Runtime or OpenVINO, fp32 or bf16.

The network is always built in Keras from the registry (TensorFlow stays the modelling framework). For
ONNX Runtime and OpenVINO it is exported once per (model, weights sha256, engine) beside the weights
cache, ``<cache>/engines/<model>-<sha256[:16]>/<engine>/`` (or the user's cache where that is
read-only, as in the Docker image, which ships the default model's exports), with a ``manifest.json`` holding the
sha256 of every exported file; a process that finds a complete, unchanged export loads that ready
graph instead of importing TensorFlow and rebuilding the Keras model. The export itself runs in a
short-lived subprocess (``python -m sparkvision.ml.engines export ...``) under a file lock, so the
converter's memory and TensorFlow's threads never stay in a Spark worker, and two workers on one
machine export once.

Exports are code the engines run, so one is used only from a folder nobody else can write: the export
folder, its parents up to the engines root, the manifest and every file owned by this user (or root, as
the Docker image's are) and not group- or world-writable, each file's sha256 as the manifest recorded it,
and no file the manifest does not list. A folder that fails is ignored with a warning saying why, and the
export is redone in a root that passes (the temp folder's predictable ``sparkvision-engines-<uid>``,
made mode 0700, only while it is this user's and writable by no one else; else a fresh private folder).

* ``tensorflow``: the frozen TF graph of :func:`sparkvision.ml.network.inference_function`, built in
  the worker (the reference; also the engine on a GPU).
* ``onnxruntime``: that graph converted by tf2onnx (uint8 pixels in, the preprocessing inside).
* ``openvino``: OpenVINO IR converted from the same ONNX file; ``precision="bf16"`` asks OpenVINO
  for bf16 inference on CPUs with bf16 instructions (AVX512-BF16 or AMX).

``auto`` picks, on CPU, the first installed of :data:`AUTO_ORDER` (the order the benchmark measured,
fastest first), and TensorFlow where Spark assigned the task a GPU. Features of the fp32 engines equal
TensorFlow's within 1e-4 (tests); bf16's within cosine 0.999.
"""

from __future__ import annotations

from sparkvision.errors import EngineError
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("tensorflow", "onnxruntime", "openvino")
AUTO = "auto"
PRECISIONS = ("fp32", "bf16")
# Fastest first on CPU, as `python -m bench featurize` measured it (README's performance section).
AUTO_ORDER = ("openvino", "onnxruntime", "tensorflow")
# Python packages each engine needs in the process that runs it (the export also needs tf2onnx + onnx).
PACKAGES = {"tensorflow": ("tensorflow",), "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
EXPORT_PACKAGES = ("tensorflow", "tf2onnx", "onnx")
EXPORT_FORMAT = 1  # bump when the exported graph changes (inputs, opset, preprocessing inside)
ONNX_OPSET = 17
INPUT_NAME = "pixels"

Predict = Callable[[np.ndarray], np.ndarray]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed() -> list[str]:
    """Engines whose packages this Python has (ONNX-based ones also need the exporter's)."""
    found = []
    for engine in ENGINES:
        needs = PACKAGES[engine] + (EXPORT_PACKAGES if engine != "tensorflow" else ())
        if all(_has(m) for m in needs):
            found.append(engine)
    return found


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether OpenVINO is installed and reports bf16 on this CPU (AVX512-BF16 or AMX)."""
    if not _has("openvino"):
        return False
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as exc:  # noqa: BLE001 - a CPU plugin that cannot say: treat as unsupported
        log.debug("OpenVINO could not report the CPU's capabilities: %s", exc)
        return False


def resolve(engine: str = AUTO, precision: str = "fp32", gpu: bool = False) -> str:
    """The concrete engine for ``engine`` (``auto`` included) and ``precision`` here, or :class:`EngineError`."""
    if precision not in PRECISIONS:
        raise EngineError(f"featurize.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if engine != AUTO and engine not in ENGINES:
        raise EngineError(f"featurize.engine: {engine!r} is not one of {AUTO}, {', '.join(ENGINES)}")
    have = installed()
    if precision == "bf16":
        if engine not in (AUTO, "openvino"):
            raise EngineError(f"featurize.precision bf16 runs on the openvino engine only, not {engine}")
        if "openvino" not in have:
            raise EngineError("featurize.precision bf16 needs the openvino engine: pip install 'sparkvision[engines]'")
        if not bf16_supported():
            raise EngineError("featurize.precision bf16 is not supported on this CPU (no AVX512-BF16 or AMX)")
        return "openvino"
    if engine == AUTO:
        if gpu and "tensorflow" in have:
            return "tensorflow"
        for candidate in AUTO_ORDER:
            if candidate in have:
                return candidate
        raise EngineError("no inference engine installed: install tensorflow (and for speed onnxruntime or openvino)")
    if engine not in have:
        missing = [m for m in PACKAGES[engine] + (EXPORT_PACKAGES if engine != "tensorflow" else ()) if not _has(m)]
        raise EngineError(f"featurize.engine {engine}: not installed here (missing {', '.join(missing)}); "
                          "pip install 'sparkvision[engines]'")
    return engine


# --- export ------------------------------------------------------------------------------------------

def export_roots(cache_dir: str | os.PathLike | None) -> list[Path]:
    """Where exports are looked for, in order, and made in the first writable, trusted one: beside the
    weights cache (``<cache>/engines``), then the user's cache, then the temp folder (a read-only image
    cache). The temp folder's name is predictable, so another local user may have made it first: like
    every root, it is used only if :func:`_distrust` finds nothing wrong with it."""
    from sparkvision.ml.models.weights import default_cache_dir

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
    import fcntl

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
    if engine not in ("onnxruntime", "openvino"):
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
    from sparkvision.ml.models import registry
    from sparkvision.ml.models.weights import file_digest

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
            import openvino as ov

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
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        import shutil

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
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from sparkvision.ml.network import inference_function

    graph = inference_function(spec, spec.build(weights_path)).graph
    if spec.freeze_graph is False:  # inference_function left variables in: constants for the export
        graph = convert_variables_to_constants_v2(graph)
    graph_def = graph.graph.as_graph_def()
    inputs = [t.name for t in graph.inputs if t.dtype == tf.uint8]
    outputs = [t.name for t in graph.outputs]
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                              opset=ONNX_OPSET)
    import onnx

    model.graph.input[0].name, old = INPUT_NAME, model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [INPUT_NAME if i == old else i for i in node.input]
    onnx.save(model, str(dest))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# --- running -----------------------------------------------------------------------------------------

def build(spec, weights_path: str, engine: str, precision: str = "fp32", threads: int = 1,
          cache_dir: str | os.PathLike | None = None, sha256: str | None = None) -> Predict:
    """``predict(uint8 (n, size, size, 3) RGB) -> float32 (n, feature_dim)`` on a concrete ``engine``."""
    from sparkvision.ml.models.weights import file_digest

    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r} is not one of {', '.join(ENGINES)} (resolve 'auto' first)")
    if precision != "fp32" and engine != "openvino":
        raise EngineError(f"precision {precision} runs on the openvino engine only, not {engine}")
    if engine == "tensorflow":
        from sparkvision.ml.network import configure_tensorflow, inference_function

        configure_tensorflow(threads)
        return inference_function(spec, spec.build(weights_path))
    sha256 = sha256 or file_digest(weights_path)
    folder = ensure_export(spec.name, weights_path, sha256, engine, cache_dir)
    if engine == "onnxruntime":
        return _onnxruntime(folder / "model.onnx", threads)
    return _openvino(folder / "model.xml", threads, precision)


def _onnxruntime(path: Path, threads: int) -> Predict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads <= 1:  # the calling thread only: no spinning pool competing with the other task's process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]

    return predict


def _openvino(path: Path, threads: int, precision: str) -> Predict:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": max(1, threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              # Spark runs one worker per task core: pinning each to "its" cores would stack them on the same ones
              "ENABLE_CPU_PINNING": False}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def predict(pixels: np.ndarray) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return np.array(result[output], dtype=np.float32, copy=True)  # the request reuses its buffer

    return predict


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "export":
        _, name, weights_path, sha256, engine, root = argv
        logging.basicConfig(level=logging.WARNING)
        export(name, weights_path, sha256, engine, root)
        return 0
    if len(argv) >= 2 and argv[0] == "prepare":  # e.g. at image build time: python -m sparkvision.ml.engines prepare MODEL...
        from sparkvision.ml.models import registry
        from sparkvision.ml.models.weights import file_digest, resolve_weights

        for name in argv[1:]:
            spec = registry.get(name)
            weights = str(resolve_weights(spec, None, None, None, allow_download=False))
            for engine in (e for e in ("onnxruntime", "openvino") if e in installed()):
                print(ensure_export(spec.name, weights, file_digest(weights), engine, in_process=True))
        return 0
    print("usage: python -m sparkvision.ml.engines export MODEL WEIGHTS SHA256 ENGINE ROOT\n"
          "       python -m sparkvision.ml.engines prepare MODEL [MODEL...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
