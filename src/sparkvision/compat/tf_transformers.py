"""sparkdl's ``TFImageTransformer``, ``TFTransformer`` and ``TFInputGraph`` on TensorFlow 2.

TensorFlow 2 has no graphs and sessions to hand around: a model is a SavedModel folder (a path, which a saved
stage keeps) or a ``tf.function`` / concrete function (saved to a SavedModel here, so it cannot be persisted
with the stage). ``inputTensor`` / ``outputTensor`` (and ``TFTransformer``'s mappings) name a signature's
inputs and outputs (``serving_default`` unless ``signature`` says otherwise); a TF1 tensor name's ``:0`` is
ignored. A ``tf.Graph`` or ``GraphDef`` is refused with an error saying why, and ``TFInputGraph``'s TF1-only
constructors (``fromGraph``, ``fromGraphDef``, ``fromCheckpoint*``) raise ``NotImplementedError``.

The model is carried to the workers with the UDF and loaded once per Python worker (:mod:`sparkvision.compat._common`). Where
they differ from sparkdl (said once each, as a SparkdlCompatWarning):

* ``TFImageTransformer`` runs images in batches of ``batchSize`` (consecutive images of one shape), not one by
  one; an image of another size than the signature's fixed input is an error naming its origin (no resize);
* ``outputMode="image"`` structs keep the input's ``origin`` and carry the output's own channel count;
* ``TFTransformer`` outputs ``array<float>`` columns, one per ``outputMapping`` entry; a null input row gives
  null outputs.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.ml.featurizer import IMAGE_STRUCT_FIELDS, is_image_struct
from sparkvision.compat._common import ShippedModel, SparkdlCompatWarning, task_threads
from sparkvision.compat.keras_transformers import FLOAT_IMAGE_SCHEMA, OUTPUT_MODES, cv_32f_mode

CHANNEL_ORDERS = ("RGB", "BGR", "L")
DEFAULT_SIGNATURE = "serving_default"
_UINT8_MODES = {0: 1, 16: 3, 24: 4}            # CV_8UC1/3/4 -> channels
_FLOAT_MODES = {cv_32f_mode(c): c for c in (1, 3, 4)}
_TF1 = ("TensorFlow 1 graphs and sessions do not exist in TensorFlow 2: save the model as a SavedModel "
        "(tf.saved_model.save) and pass its folder, or pass a tf.function with an input_signature")


IMAGE_INPUT_PLACEHOLDER_NAME = "sparkdl_image_input"


def imageInputPlaceholder(nChannels: int | None = None):
    """sparkdl's image placeholder, in TensorFlow 2's form: the ``tf.TensorSpec`` of a batch of float32 images
    (``[None, None, None, nChannels]``, named ``sparkdl_image_input``), for a ``tf.function``'s
    ``input_signature``. TensorFlow 2 has no placeholders; the function (or the SavedModel it is saved to) is
    what :class:`TFImageTransformer` takes, with ``inputTensor="sparkdl_image_input"``."""
    import tensorflow as tf  # optional

    return tf.TensorSpec([None, None, None, nChannels], tf.float32, name=IMAGE_INPUT_PLACEHOLDER_NAME)


def _warn(message: str) -> None:
    warnings.warn(message, SparkdlCompatWarning, stacklevel=4)


def _tensor_name(name: str | None) -> str | None:
    """A signature key from a TF1-style tensor name (``"input:0"`` -> ``"input"``)."""
    return None if name is None else name.split(":", 1)[0]


def _refuse_tf1(graph, what: str) -> None:
    if type(graph).__name__ in ("Graph", "GraphDef", "Session", "MetaGraphDef"):
        raise TypeError(f"{what}: got a {type(graph).__name__}. {_TF1}")


def shipped_function(fn, what: str) -> ShippedModel:
    """A ``tf.function`` (with an input signature) or a concrete function, saved as a SavedModel to ship."""
    import tensorflow as tf  # optional

    concrete = fn
    if not hasattr(fn, "structured_input_signature"):
        try:
            concrete = fn.get_concrete_function()
        except Exception as exc:
            raise ValueError(f"{what}: a tf.function needs an input_signature to be used here: {exc}") from exc
    holder = tf.Module()
    holder.fn = fn  # saved with the module, and with them the variables the function captures
    holder.captured = list(concrete.variables)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(holder, tmp, signatures={DEFAULT_SIGNATURE: concrete})
        return ShippedModel.saved_model(tmp, what, origin=f"<tf.function {getattr(fn, '__name__', 'fn')}>")


class Signature:
    """A SavedModel signature's input and output names, dtypes and shapes (resolved where it is loaded)."""

    def __init__(self, loaded, key: str, origin: str):
        if key not in loaded.signatures:
            raise ValueError(f"{origin} has no signature {key!r}; it has {', '.join(loaded.signatures) or 'none'}")
        self.fn = loaded.signatures[key]
        self.inputs = dict(self.fn.structured_input_signature[1])
        self.outputs = dict(self.fn.structured_outputs)
        self.origin, self.key = origin, key

    def input(self, name: str | None, what: str) -> str:
        return self._pick(_tensor_name(name), self.inputs, "input", what)

    def output(self, name: str | None, what: str) -> str:
        return self._pick(_tensor_name(name), self.outputs, "output", what)

    def _pick(self, name, names: dict, kind: str, what: str) -> str:
        if name is None:
            if len(names) != 1:
                raise ValueError(f"{what}: signature {self.key!r} of {self.origin} has {kind}s {sorted(names)}; "
                                 f"name one")
            return next(iter(names))
        if name not in names:
            raise ValueError(f"{what}: signature {self.key!r} of {self.origin} has no {kind} {name!r}; it has "
                             f"{sorted(names)}")
        return name

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf  # optional

        args = {k: tf.convert_to_tensor(v, dtype=self.inputs[k].dtype) for k, v in feeds.items()}
        return {k: np.asarray(v) for k, v in self.fn(**args).items()}


class _TFImageParams(HasInputCol, HasOutputCol):
    graph = Param(Params._dummy(), "graph", "SavedModel folder (a tf.function is held by the stage, not saved)",
                  TypeConverters.toString)
    signature = Param(Params._dummy(), "signature", "the SavedModel signature to run", TypeConverters.toString)
    inputTensor = Param(Params._dummy(), "inputTensor", "the signature's image input (optional with one input)",
                        TypeConverters.toString)
    outputTensor = Param(Params._dummy(), "outputTensor", "the signature's output (optional with one output)",
                         TypeConverters.toString)
    outputMode = Param(Params._dummy(), "outputMode", "'vector' (a Vector) or 'image' (a float32 image struct)",
                       TypeConverters.toString)
    channelOrder = Param(Params._dummy(), "channelOrder", "channel order the graph expects: RGB, BGR or L",
                         TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "images per graph call", TypeConverters.toInt)

    def __init__(self):
        super().__init__()
        self._setDefault(signature=DEFAULT_SIGNATURE, outputMode="vector", channelOrder="RGB", batchSize=32)

    def getGraph(self) -> str | None:
        return self.getOrDefault(self.graph) if self.isDefined(self.graph) else None

    def getSignature(self) -> str:
        return self.getOrDefault(self.signature)

    def getInputTensor(self) -> str | None:
        return self.getOrDefault(self.inputTensor) if self.isDefined(self.inputTensor) else None

    def getOutputTensor(self) -> str | None:
        return self.getOrDefault(self.outputTensor) if self.isDefined(self.outputTensor) else None

    def getOutputMode(self) -> str:
        return self.getOrDefault(self.outputMode)

    def getChannelOrder(self) -> str:
        return self.getOrDefault(self.channelOrder)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)


class TFImageTransformer(Transformer, _TFImageParams, DefaultParamsReadable, DefaultParamsWritable):
    """Apply a SavedModel signature (or a tf.function) to a column of Spark image structs."""

    @keyword_only
    def __init__(self, *, channelOrder: str | None = None, inputCol: str | None = None, outputCol: str | None = None,
                 graph=None, inputTensor: str | None = None, outputTensor: str | None = None,
                 outputMode: str | None = None, signature: str | None = None, batchSize: int | None = None):
        super().__init__()
        self._function = None
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        if kwargs.get("outputMode") is not None and kwargs["outputMode"] not in OUTPUT_MODES:
            raise ValueError(f"TFImageTransformer: outputMode {kwargs['outputMode']!r} is not one of "
                             f"{', '.join(OUTPUT_MODES)}")
        if kwargs.get("channelOrder") is not None and kwargs["channelOrder"] not in CHANNEL_ORDERS:
            raise ValueError(f"TFImageTransformer: channelOrder {kwargs['channelOrder']!r} is not one of "
                             f"{', '.join(CHANNEL_ORDERS)}")
        graph = kwargs.pop("graph", None)
        if graph is not None:
            self.setGraph(graph)
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setGraph(self, value):
        """A SavedModel folder (kept as the ``graph`` param) or a tf.function / concrete function (held here)."""
        _refuse_tf1(value, "TFImageTransformer graph")
        if isinstance(value, str):
            self._function = None
            return self._set(graph=value)
        if not callable(value):
            raise TypeError(f"TFImageTransformer graph must be a SavedModel folder or a tf.function, got {value!r}")
        self._function = value
        self.clear(self.graph)
        return self

    def copy(self, extra=None):
        that = super().copy(extra)
        that._function = self._function
        return that

    def write(self):
        if self._function is not None:
            raise ValueError(f"TFImageTransformer: a tf.function graph cannot be saved with the stage; save it as a "
                             f"SavedModel (tf.saved_model.save) and set graph to its folder. {_TF1}")
        return super().write()

    def _shipped(self) -> ShippedModel:
        if self._function is not None:
            return shipped_function(self._function, "TFImageTransformer graph")
        if self.getGraph() is None:
            raise ValueError("TFImageTransformer: graph is not set")
        return ShippedModel.saved_model(self.getGraph(), "TFImageTransformer graph")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        col = self.getInputCol()
        if col not in dataset.columns or not is_image_struct(dataset.schema[col].dataType):
            raise ValueError(f"TFImageTransformer: input column {col!r} must be a Spark image struct column "
                             f"({', '.join(IMAGE_STRUCT_FIELDS)}); columns: {dataset.columns}")
        shipped = self._shipped()
        sig = Signature(shipped.load(), self.getSignature(), shipped.origin)
        names = (sig.input(self.getInputTensor(), "TFImageTransformer inputTensor"),
                 sig.output(self.getOutputTensor(), "TFImageTransformer outputTensor"))
        _warn("sparkvision.compat.sparkdl.TFImageTransformer: images run in batches of one shape, without resizing; "
              "an image the signature cannot take is an error. See sparkvision.compat.tf_transformers' docstring.")
        image = self.getOutputMode() == "image"
        udf = _image_udf(shipped, self.getSignature(), names, self.getChannelOrder(), self.getBatchSize(), image)
        fields = ("origin", *IMAGE_STRUCT_FIELDS) if "origin" in dataset.schema[col].dataType.fieldNames() \
            else IMAGE_STRUCT_FIELDS
        raw = udf(F.struct(*[F.col(f"{col}.{f}") for f in fields]))
        out = dataset.withColumn(self.getOutputCol(), F.when(F.col(col).isNotNull(), raw))
        if not image:
            out = out.withColumn(self.getOutputCol(), array_to_vector(F.col(self.getOutputCol())))
        return out


def struct_pixels(row: dict, channel_order: str) -> np.ndarray:
    """An image struct's pixels as ``(height, width, channels)`` in ``channel_order`` (structs are BGR)."""
    mode, c = row["mode"], row["nChannels"]
    if _UINT8_MODES.get(mode) == c:
        dtype = np.uint8
    elif _FLOAT_MODES.get(mode) == c:
        dtype = np.float32
    else:
        raise ValueError(f"image {row.get('origin') or ''!r}: unsupported mode {mode} with {c} channels")
    arr = np.frombuffer(row["data"], dtype=dtype).reshape(row["height"], row["width"], c)
    if channel_order == "L":
        if c != 1:
            raise ValueError(f"image {row.get('origin') or ''!r}: channelOrder 'L' needs 1 channel, it has {c}")
        return arr
    if channel_order == "RGB" and c >= 3:
        return np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=-1)  # BGR(A) -> RGB(A)
    return arr


def _image_udf(shipped: ShippedModel, signature: str, names: tuple[str, str], channel_order: str,
               batch_size: int, image: bool):
    input_name, output_name = names
    schema = FLOAT_IMAGE_SCHEMA if image else T.ArrayType(T.FloatType())

    def run(sig: Signature, arrays: list[np.ndarray], origins: list) -> list:
        expected = tuple(sig.inputs[input_name].shape)[1:]
        shape = arrays[0].shape
        if len(expected) != len(shape) or any(e is not None and e != s for s, e in zip(shape, expected)):
            raise ValueError(f"TFImageTransformer: image {origins[0]!r} has shape {shape}; signature input "
                             f"{input_name!r} takes {expected}")
        out = sig.run({input_name: np.stack(arrays)})[output_name]
        if not image:
            return [row.astype(np.float32).ravel() for row in out]
        if out.ndim != 4:
            raise ValueError(f"TFImageTransformer: outputMode 'image' needs a 4-D output, {output_name!r} is {out.shape}")
        return [{"origin": o, "height": r.shape[0], "width": r.shape[1], "nChannels": r.shape[2],
                 "mode": cv_32f_mode(r.shape[2]), "data": r.astype(np.float32).tobytes()} for o, r in zip(origins, out)]

    def as_result(outputs: list):  # a struct result is a DataFrame of its fields (null input rows: null fields)
        if not image:
            return pd.Series(outputs, dtype=object)
        empty = dict.fromkeys(FLOAT_IMAGE_SCHEMA.fieldNames())
        return pd.DataFrame([o or empty for o in outputs], columns=FLOAT_IMAGE_SCHEMA.fieldNames())

    def run_all(batches):
        sig = Signature(shipped.load(task_threads()), signature, shipped.origin)
        for batch in batches:
            outputs: list = [None] * len(batch)
            group: list[int] = []
            rows = batch.to_dict("records")

            def flush():
                arrays = [struct_pixels(rows[i], channel_order) for i in group]
                for i, out in zip(group, run(sig, arrays, [rows[i].get("origin") for i in group])):
                    outputs[i] = out
                group.clear()

            shape = None
            for i, row in enumerate(rows):
                if row["data"] is None:
                    continue
                key = (row["height"], row["width"], row["nChannels"], row["mode"])
                if group and (key != shape or len(group) >= batch_size):
                    flush()
                shape = key
                group.append(i)
            if group:
                flush()
            yield as_result(outputs)

    if image:
        @F.pandas_udf(schema)
        def apply_images(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            yield from run_all(batches)

        return apply_images

    @F.pandas_udf(schema)
    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        yield from run_all(batches)

    return apply


# ---- TFInputGraph / TFTransformer -------------------------------------------------------------------------


class TFInputGraph:
    """A SavedModel signature with the input and output names to use (sparkdl's holder of a frozen TF1 graph).

    ``feed_names`` / ``fetch_names`` are the signature's input / output names (TF1 tensor names' ``:0`` is
    ignored); a saved ``TFTransformer`` keeps the folder and names.
    """

    def __init__(self, saved_model_dir: str, signature_def_key: str = DEFAULT_SIGNATURE,
                 feed_names: list[str] | None = None, fetch_names: list[str] | None = None):
        self.saved_model_dir, self.signature_def_key = saved_model_dir, signature_def_key
        self.feed_names = [_tensor_name(n) for n in feed_names] if feed_names else None
        self.fetch_names = [_tensor_name(n) for n in fetch_names] if fetch_names else None

    def to_dict(self) -> dict:
        return {"savedModelDir": self.saved_model_dir, "signature": self.signature_def_key,
                "feedNames": self.feed_names, "fetchNames": self.fetch_names}

    @classmethod
    def from_dict(cls, d: dict) -> "TFInputGraph":
        return cls(d["savedModelDir"], d["signature"], d.get("feedNames"), d.get("fetchNames"))

    @classmethod
    def fromSavedModel(cls, saved_model_dir: str, tag_set=None, feed_names=None, fetch_names=None) -> "TFInputGraph":
        """The ``serving_default`` signature, restricted to ``feed_names`` / ``fetch_names`` (its input and
        output names). ``tag_set`` is accepted for old code: TF2 loads the folder's only MetaGraph."""
        return cls(saved_model_dir, DEFAULT_SIGNATURE, feed_names, fetch_names)

    @classmethod
    def fromSavedModelWithSignature(cls, saved_model_dir: str, tag_set=None,
                                    signature_def_key: str = DEFAULT_SIGNATURE) -> "TFInputGraph":
        return cls(saved_model_dir, signature_def_key)

    @classmethod
    def fromGraph(cls, *args, **kwargs):
        raise NotImplementedError(f"TFInputGraph.fromGraph: {_TF1}; then use TFInputGraph.fromSavedModel")

    @classmethod
    def fromGraphDef(cls, *args, **kwargs):
        raise NotImplementedError(f"TFInputGraph.fromGraphDef: {_TF1}; then use TFInputGraph.fromSavedModel")

    @classmethod
    def fromCheckpoint(cls, *args, **kwargs):
        raise NotImplementedError(f"TFInputGraph.fromCheckpoint: TF1 checkpoints hold no graph to run in TensorFlow 2; "
                                  f"{_TF1}; then use TFInputGraph.fromSavedModel")

    @classmethod
    def fromCheckpointWithSignature(cls, *args, **kwargs):
        raise NotImplementedError(f"TFInputGraph.fromCheckpointWithSignature: TF1 checkpoints hold no graph to run in "
                                  f"TensorFlow 2; {_TF1}; then use TFInputGraph.fromSavedModelWithSignature")


def _to_input_graph(value):
    if isinstance(value, TFInputGraph):
        return value.to_dict()
    if isinstance(value, dict) and "savedModelDir" in value:
        return value
    _refuse_tf1(value, "TFTransformer tfInputGraph")
    raise TypeError(f"tfInputGraph must be a TFInputGraph, got {type(value).__name__}")


def _to_mapping(value):
    if isinstance(value, dict):
        value = value.items()
    pairs = sorted((str(k), str(v)) for k, v in value)
    if not pairs:
        raise ValueError("a TFTransformer mapping must not be empty")
    return [list(p) for p in pairs]


class TFTransformer(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Apply a SavedModel signature to array columns: ``inputMapping`` {column: input name},
    ``outputMapping`` {output name: column}; each row is one example, reshaped to the input's shape."""

    tfInputGraph = Param(Params._dummy(), "tfInputGraph", "the SavedModel signature (a TFInputGraph)", _to_input_graph)
    inputMapping = Param(Params._dummy(), "inputMapping", "column -> signature input", _to_mapping)
    outputMapping = Param(Params._dummy(), "outputMapping", "signature output -> column", _to_mapping)
    batchSize = Param(Params._dummy(), "batchSize", "rows per call", TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, tfInputGraph=None, inputMapping=None, outputMapping=None, tfHParms=None,
                 batchSize: int | None = None):
        super().__init__()
        self._setDefault(batchSize=32)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        if kwargs.pop("tfHParms", None):
            raise ValueError("TFTransformer: tfHParms (TF1 graph hyper-parameters) have no TensorFlow 2 equivalent")
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def getTFInputGraph(self) -> TFInputGraph:
        return TFInputGraph.from_dict(self.getOrDefault(self.tfInputGraph))

    def getInputMapping(self) -> list[list[str]]:
        return self.getOrDefault(self.inputMapping)

    def getOutputMapping(self) -> list[list[str]]:
        return self.getOrDefault(self.outputMapping)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        graph = self.getTFInputGraph()
        shipped = ShippedModel.saved_model(graph.saved_model_dir, "TFTransformer tfInputGraph")
        sig = Signature(shipped.load(), graph.signature_def_key, shipped.origin)
        inputs = [(c, sig.input(n, "TFTransformer inputMapping")) for c, n in self.getInputMapping()]
        outputs = [(sig.output(n, "TFTransformer outputMapping"), c) for n, c in self.getOutputMapping()]
        for names, kind in ((graph.feed_names, [n for _, n in inputs]), (graph.fetch_names, [n for n, _ in outputs])):
            if names and not set(kind) <= set(names):
                raise ValueError(f"TFTransformer: mappings use {sorted(set(kind) - set(names))}, which the "
                                 f"TFInputGraph does not list ({names})")
        for col, _ in inputs:
            if col not in dataset.columns or not isinstance(dataset.schema[col].dataType, T.ArrayType):
                raise ValueError(f"TFTransformer: input column {col!r} must be an array column; columns: {dataset.columns}")
        shapes = {n: tuple(sig.inputs[n].shape)[1:] for _, n in inputs}
        for n, shape in shapes.items():
            if any(d is None for d in shape):
                raise ValueError(f"TFTransformer: input {n!r} has shape {shape}; a fixed shape is needed")
        _warn("sparkvision.compat.sparkdl.TFTransformer: outputs are array<float> columns; a null input row gives "
              "null outputs. See sparkvision.compat.tf_transformers' docstring.")
        udf = _tensor_udf(shipped, graph.signature_def_key, inputs, outputs, shapes, self.getBatchSize())
        result = "_sparkvision_tf"
        out = dataset.withColumn(result, udf(*[F.col(c) for c, _ in inputs]))
        for i, (_, col) in enumerate(outputs):
            out = out.withColumn(col, F.col(f"{result}.o{i}"))
        return out.drop(result)


def _tensor_udf(shipped, signature, inputs, outputs, shapes, batch_size):
    schema = T.StructType([T.StructField(f"o{i}", T.ArrayType(T.FloatType())) for i in range(len(outputs))])

    @F.pandas_udf(schema)
    def apply(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        sig = Signature(shipped.load(task_threads()), signature, shipped.origin)
        for columns in batches:
            columns = columns if isinstance(columns, tuple) else (columns,)
            n = len(columns[0])
            result = {f"o{i}": [None] * n for i in range(len(outputs))}
            rows = [i for i in range(n) if all(c.iloc[i] is not None for c in columns)]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                feeds = {}
                for (col, name), series in zip(inputs, columns):
                    size = int(np.prod(shapes[name]))
                    arrays = [np.asarray(series.iloc[i], dtype=np.float64) for i in chunk]
                    bad = next((a.size for a in arrays if a.size != size), None)
                    if bad is not None:
                        raise ValueError(f"TFTransformer: a row of {col!r} has {bad} values; input {name!r} takes "
                                         f"{size} (shape {shapes[name]})")
                    feeds[name] = np.stack([a.reshape(shapes[name]) for a in arrays])
                got = sig.run(feeds)
                for k, (name, _) in enumerate(outputs):
                    for i, row in zip(chunk, got[name]):
                        result[f"o{k}"][i] = row.astype(np.float32).ravel()
            yield pd.DataFrame(result)

    return apply
