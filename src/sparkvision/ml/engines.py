"""Inference engines for the featurizer's network: TensorFlow, ONNX Runtime or OpenVINO, fp32 or bf16.

The network is always built in Keras from the registry (TensorFlow stays the modelling framework). For
ONNX Runtime and OpenVINO it is exported once per (model, weights sha256, engine) beside the weights
cache, and the ready graph loaded from there without TensorFlow (:mod:`sparkvision.ml.engine_exports`:
where exports live, when one is trusted, how it is made).

* ``tensorflow``: the frozen TF graph of :func:`sparkvision.ml.graph.inference_function`, built in
  the worker (the reference; also the engine on a GPU).
* ``onnxruntime``: that graph converted by tf2onnx (uint8 pixels in, the preprocessing inside).
* ``openvino``: OpenVINO IR converted from the same ONNX file; ``precision="bf16"`` asks OpenVINO
  for bf16 inference on CPUs with bf16 instructions (AVX512-BF16 or AMX).

``auto`` picks, on CPU, the first installed of :data:`AUTO_ORDER` (the order the benchmark measured,
fastest first), and TensorFlow where Spark assigned the task a GPU. Features of the fp32 engines equal
TensorFlow's within 1e-4 (tests); bf16's within cosine 0.999.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from sparkvision.errors import EngineError
from sparkvision.ml.engine_exports import EXPORTED, ensure_export, export
from sparkvision.ml.graph import configure_tensorflow, inference_function
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import file_digest, resolve_weights

log = logging.getLogger(__name__)

ENGINES = ("tensorflow", "onnxruntime", "openvino")
AUTO = "auto"
PRECISIONS = ("fp32", "bf16")
# Fastest first on CPU, as `python -m bench featurize` measured it (docs/performance.md).
AUTO_ORDER = ("openvino", "onnxruntime", "tensorflow")
# Python packages each engine needs in the process that runs it (the export also needs tf2onnx + onnx).
PACKAGES = {"tensorflow": ("tensorflow",), "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
EXPORT_PACKAGES = ("tensorflow", "tf2onnx", "onnx")

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
        import openvino as ov  # optional

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


# --- running -----------------------------------------------------------------------------------------

def build(spec, weights_path: str, engine: str, precision: str = "fp32", threads: int = 1,
          cache_dir: str | os.PathLike | None = None, sha256: str | None = None,
          gpus: list[str] | None = None) -> Predict:
    """``predict(uint8 (n, size, size, 3) RGB) -> float32 (n, feature_dim)`` on a concrete ``engine``
    (TensorFlow on ``gpus``, the GPUs Spark gave the task, where given)."""
    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r} is not one of {', '.join(ENGINES)} (resolve 'auto' first)")
    if precision != "fp32" and engine != "openvino":
        raise EngineError(f"precision {precision} runs on the openvino engine only, not {engine}")
    if engine == "tensorflow":
        configure_tensorflow(threads, gpus)
        return inference_function(spec, spec.build(weights_path))
    sha256 = sha256 or file_digest(weights_path)
    folder = ensure_export(spec.name, weights_path, sha256, engine, cache_dir)
    if engine == "onnxruntime":
        return _onnxruntime(folder / "model.onnx", threads)
    return _openvino(folder / "model.xml", threads, precision)


def _onnxruntime(path: Path, threads: int) -> Predict:
    import onnxruntime as ort  # optional

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
    import openvino as ov  # optional

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
        for name in argv[1:]:
            spec = registry.get(name)
            weights = str(resolve_weights(spec, None, None, None, allow_download=False))
            for engine in (e for e in EXPORTED if e in installed()):
                print(ensure_export(spec.name, weights, file_digest(weights), engine, in_process=True))
        return 0
    print("usage: python -m sparkvision.ml.engines export MODEL WEIGHTS SHA256 ENGINE ROOT\n"
          "       python -m sparkvision.ml.engines prepare MODEL [MODEL...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
