"""A trained sparkvision model as plain Python: encoded image bytes in, label and probabilities out.

No Spark, no JVM: the network is built and run by :mod:`sparkvision.ml.network` (the decode, preprocessing
and TensorFlow graph the Spark featurizer's UDF runs), the logistic regression is applied with NumPy
from its coefficients. This is what the MLflow pyfunc model (:mod:`sparkvision.tracking.pyfunc_model`) serves, so
it can run behind Databricks Model Serving or ``mlflow models serve``.

Its parameters live in one JSON file (``classifier.json``, :func:`describe`): the network's name and
weights sha256, the class names, the coefficients and the decode limits. It is written from a saved
Spark ``PipelineModel`` (featurizer -> classifier -> labels) on the driver.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

import numpy as np

from sparkvision.ml import network
from sparkvision.run.images import DEFAULT_MAX_PIXELS
from sparkvision.ml.models import registry

# The output columns of :meth:`ImageClassifier.predict` (and of the pyfunc model's signature).
LABEL, CLASS_INDEX, CONFIDENCE, PROBABILITIES, ERROR = "label", "class_index", "confidence", "probabilities", "error"
INPUT = "image"  # the input column: encoded image bytes, or the same as base64 text
FORMAT = "sparkvision.image_classifier/1"


@dataclass(frozen=True)
class Classifier:
    """A logistic regression as Spark ML applies one: a sigmoid of one margin (binomial) or a softmax."""

    coefficients: np.ndarray  # (1 or k, d)
    intercepts: np.ndarray    # (1 or k,)
    multinomial: bool

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        margins = x.astype(np.float64) @ self.coefficients.T + self.intercepts
        if self.multinomial:
            e = np.exp(margins - margins.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        p1 = 1.0 / (1.0 + np.exp(-margins[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)


def classifier_of(stage) -> Classifier:
    """The coefficients of a fitted classifier stage: sparkvision's ``LogisticModel`` or Spark ML's
    ``LogisticRegressionModel`` (read on the driver; both apply the same formula)."""
    from sparkvision.ml.logistic import LogisticModel  # lazy: needs pyspark, which serving does not have

    if isinstance(stage, LogisticModel):
        fit = stage.fit_result()
        return Classifier(np.asarray(fit.coefficients, np.float64), np.asarray(fit.intercepts, np.float64),
                          bool(fit.multinomial))
    if hasattr(stage, "coefficientMatrix") and hasattr(stage, "interceptVector"):
        coefficients = np.asarray(stage.coefficientMatrix.toArray(), np.float64)
        intercepts = np.asarray(stage.interceptVector.toArray(), np.float64)
        return Classifier(coefficients, intercepts, multinomial=stage.numClasses > 2 or coefficients.shape[0] > 1)
    raise TypeError(f"cannot export a classifier of type {type(stage).__name__}: expected a logistic regression")


def describe(pipeline, weights_sha256: str | None = None) -> dict:
    """``classifier.json`` for a saved pipeline (featurizer, classifier, labels)."""
    featurizer, classifier, to_label = pipeline.stages
    c = classifier_of(classifier)
    return {
        "format": FORMAT,
        "network": featurizer.spec().name,
        "weights_sha256": weights_sha256 or featurizer.getWeightsChecksum(),
        "max_pixels": featurizer.getMaxPixels(),
        "batch_size": featurizer.getBatchSize(),
        "classes": list(to_label.getLabels()),
        "coefficients": c.coefficients.tolist(),
        "intercepts": c.intercepts.tolist(),
        "multinomial": c.multinomial,
    }


ENGINE_ENV = "SPARKVISION_ENGINE"  # the served model's inference engine (featurize.engine's values)


class ImageClassifier:
    """The network + classifier in this process. ``predict`` takes encoded images (bytes or base64 text)."""

    def __init__(self, info: dict, weights_path: str, threads: int = 0, engine: str | None = None):
        if info.get("format") != FORMAT:
            raise ValueError(f"classifier.json: format {info.get('format')!r}, expected {FORMAT!r}")
        self.info = info
        self.classes: list[str] = list(info["classes"])
        self.classifier = Classifier(np.asarray(info["coefficients"], np.float64),
                                     np.asarray(info["intercepts"], np.float64), bool(info["multinomial"]))
        self.spec = registry.get(info["network"])
        self.max_pixels = int(info.get("max_pixels") or DEFAULT_MAX_PIXELS)
        self.batch_size = int(info.get("batch_size") or 32)
        network.configure(threads or os.cpu_count() or 1)
        # The weights file travels with the model; its sha256 is checked like a Spark worker checks it.
        # ``engine`` (else $SPARKVISION_ENGINE, else auto: the fastest installed) is how it runs, not what it computes.
        self.key = network.WorkerModelKey.of(self.spec.name, weights_path, None, None, False, info["weights_sha256"],
                                             engine or os.environ.get(ENGINE_ENV) or "auto")
        network.load_worker_model(self.key)

    @classmethod
    def from_files(cls, classifier_json: str, weights_path: str, threads: int = 0) -> "ImageClassifier":
        with open(classifier_json, encoding="utf-8") as f:
            return cls(json.load(f), weights_path, threads)

    def features(self, images: list) -> tuple[np.ndarray, list[str | None]]:
        """``(features, errors)``: one feature row per image (NaN where it could not be used) and why.

        Each row is decoded on its own by :mod:`sparkvision.run.images`, the featurizer's decode: bytes of a
        format not accepted (an EPS or PDF sent as an image), a header over ``max_pixels`` or an image
        this process has not the memory to decode are that row's error, never decoded by another
        plugin, never a failed request."""
        data = [_as_bytes(v) for v in images]
        features = np.full((len(data), self.spec.feature_dim), np.nan, np.float32)
        errors: list[str | None] = [None] * len(data)
        for start in range(0, len(data), self.batch_size):
            rows = data[start:start + self.batch_size]
            decodable = [r for r in rows if isinstance(r, bytes)]
            where = [i for i, r in enumerate(rows) if isinstance(r, bytes)]
            for i, r in enumerate(rows):
                if not isinstance(r, bytes):
                    errors[start + i] = r  # the reason the input could not be read as bytes
            errs, positions, arrays = network.decode_rows(decodable, self.spec, self.max_pixels)
            for j, err in enumerate(errs):
                if err is not None:
                    errors[start + where[j]] = err
            if arrays:
                out = network.featurize_arrays(self.key, np.stack(arrays))
                for p, row in zip(positions, out):
                    features[start + where[p]] = row
        return features, errors

    def predict(self, images: list):
        """A pandas DataFrame: ``label, class_index, confidence, probabilities, error`` per input image."""
        import pandas as pd  # optional

        features, errors = self.features(images)
        ok = np.array([e is None for e in errors], dtype=bool)
        proba = np.full((len(errors), len(self.classes)), np.nan)
        if ok.any():
            proba[ok] = self.classifier.probabilities(features[ok])
        index = [int(np.argmax(p)) if good else None for p, good in zip(proba, ok)]  # first largest, like Spark
        return pd.DataFrame({
            LABEL: [self.classes[i] if i is not None else None for i in index],
            CLASS_INDEX: pd.array(index, dtype="Int64"),
            # Nullable dtypes: a row that failed is null, never NaN (a bare NaN is not JSON for a REST client).
            CONFIDENCE: pd.array([float(p.max()) if good else None for p, good in zip(proba, ok)], dtype="Float64"),
            PROBABILITIES: [p.tolist() if good else None for p, good in zip(proba, ok)],
            ERROR: errors,
        })


def _as_bytes(value) -> bytes | str:
    """Encoded image bytes from bytes, a bytearray/memoryview, a NumPy bytes scalar or base64 text;
    otherwise the reason (a string) why the value is not an image."""
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "not base64: a text input must be the image's bytes in base64"
    return f"not an image: expected bytes or base64 text, got {type(value).__name__}"


def image_column(model_input) -> list:
    """The images of a pyfunc input: a DataFrame's ``image`` column (or its only column), a Series, a
    list, a NumPy array, or one image."""
    import pandas as pd  # optional

    if isinstance(model_input, pd.DataFrame):
        if INPUT in model_input.columns:
            return list(model_input[INPUT])
        if len(model_input.columns) == 1:
            return list(model_input.iloc[:, 0])
        raise ValueError(f"input DataFrame needs a column {INPUT!r} (encoded image bytes or base64); "
                         f"got columns {list(model_input.columns)}")
    if isinstance(model_input, (pd.Series, list, tuple, np.ndarray)):
        return list(model_input)
    if isinstance(model_input, dict) and INPUT in model_input:
        value = model_input[INPUT]
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return [model_input]
