"""Run settings: built-in defaults <- YAML file <- ``--set key=value`` overrides <- command-line flags,
parsed and validated once into frozen dataclasses, one per section (``cfg.featurize.engine``).

Every key, its type and its default are written once, in the section classes below (``examples/config.yml``
documents them; a test checks it says the same). Every error names the dotted key (``split.test_fraction``)
and what was wrong with it. A :class:`Settings` is never changed: :meth:`Settings.replace` returns a
validated copy. :meth:`FeaturizeSettings.to_params` is the one bridge to the featurizer's Spark ML Params.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar
from urllib.parse import urlsplit

import yaml

from sparkvision import secrets
from sparkvision.errors import ConfigError, CredentialInURL
from sparkvision.ml.engines import AUTO, ENGINES, PRECISIONS
from sparkvision.ml.models import registry
from sparkvision.run.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

__all__ = ["ConfigError", "DataSettings", "SplitSettings", "NetworkSettings", "FeaturizeSettings", "TrainSettings",
           "OutputSettings", "MlflowSettings", "StreamSettings", "SparkSettings", "Settings", "load", "dump",
           "defaults", "parse_trigger", "check_uri", "FrozenMap"]

log = logging.getLogger(__name__)

ENGINE_CHOICES = (AUTO, *ENGINES)
STREAM_SOURCES = ("auto", "binaryFile", "cloudFiles")
STREAM_FORMATS = ("parquet", "delta")


# --- values that need more than a type check ----------------------------------------------------------

_TRIGGER = re.compile(r"^(available-now|processing-time=(\d+(?:\.\d+)?)(ms|s|m)?)$")


def parse_trigger(text: str) -> dict:
    """``available-now`` or ``processing-time=30s`` (``ms``, ``s``, ``m``) -> ``DataStreamWriter.trigger`` kwargs."""
    m = _TRIGGER.match(text.strip())
    if not m:
        raise ValueError(f"--trigger {text!r}: use available-now or processing-time=<number>[ms|s|m], e.g. "
                         "processing-time=30s")
    if m.group(2) is None:
        return {"availableNow": True}
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(3)]
    return {"processingTime": f"{int(seconds * 1000)} milliseconds"}


def check_uri(uri: str | None, key: str) -> None:
    """A tracking or registry URI carries no credentials (they would land in configs and logs)."""
    if uri and "://" in uri and "@" in urlsplit(uri).netloc:
        raise ConfigError(f"{key}: the URL holds credentials (user or token before '@'); give them in "
                          "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")


class FrozenMap(Mapping):
    """A read-only mapping (``spark.conf``): a dict's view that cannot be changed, and that pickles."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name, value):
        raise AttributeError("settings are read-only: use Settings.replace()")

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self):
        return FrozenMap, (self._data,)


def _fraction(v):
    return 0.0 <= v < 1.0


def _positive(v):
    return v > 0


def _trigger(v):
    try:
        parse_trigger(v)
    except ValueError:
        return False
    return True


def _list_of(kind, check=None):
    return lambda v: all(isinstance(x, kind) and not isinstance(x, bool) and (check is None or check(x)) for x in v) and len(v) > 0


def _one_of(*choices):
    return lambda v: v in choices


def _key(default: Any, kind: type | tuple[type, ...], check: Callable[[Any], bool] | None = None, rule: str = "",
         nullable: bool = False):
    """A settings key: its default, type (``list``: a list of values, kept as a tuple; ``dict``: a mapping,
    kept read-only), an optional check, and the rule an error quotes."""
    meta = {"kind": kind, "check": check, "rule": rule, "nullable": nullable}
    if kind is dict:
        return field(default_factory=lambda: FrozenMap(default), metadata=meta)
    return field(default=tuple(default) if kind is list else default, metadata=meta)


def _checked(section: str, f: dataclasses.Field, value: Any, origin: str) -> Any:
    """``value`` for key ``section.f``, in its settings form (lists as tuples, mappings read-only), or
    :class:`ConfigError` naming the key."""
    kind, check = f.metadata["kind"], f.metadata["check"]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind is list:
        value = [value]  # ``--set train.max_iter=30`` means a one-point grid
    accepted = (list, tuple) if kind is list else Mapping if kind is dict else kind
    ok = (value is None and f.metadata["nullable"]) or (
        isinstance(value, accepted) and not (isinstance(value, bool) and kind is not bool)
    )
    if ok and value is not None and check is not None:
        ok = check(value)
    if not ok:
        rule = f.metadata["rule"] or (kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind))
        raise ConfigError(f"{origin}: config key {section + '.' + f.name!r} must be {rule}; got {value!r}")
    if kind is list:
        return tuple(value)
    if kind is dict:
        return value if isinstance(value, FrozenMap) else FrozenMap(value)
    return value


def _plain(value: Any) -> Any:
    """A settings value as YAML and JSON take it: tuples as lists, mappings as dicts (copies)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: copy.deepcopy(v) for k, v in value.items()}
    return value


# --- the sections ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Section:
    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _checked(self.SECTION, f, getattr(self, f.name), type(self).__name__))

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class DataSettings(_Section):
    SECTION: ClassVar[str] = "data"
    images: str | None = _key(None, str, nullable=True, rule="a folder with one sub-folder per class")
    manifest: str | None = _key(None, str, nullable=True, rule="a CSV with columns path,label")
    extensions: tuple[str, ...] = _key(IMAGE_EXTENSIONS, list, _list_of(str), "a non-empty list of file extensions")
    max_pixels: int = _key(DEFAULT_MAX_PIXELS, int, _positive, "a positive integer")
    max_file_mb: int | float = _key(64, (int, float), _positive, "a positive number of megabytes")
    # header: load reads each file's header (format, size, orientation) and the one full decode happens
    # in featurize, whose failures join rejected.*; full: load also decodes every image to validate it.
    validate: str = _key("header", str, _one_of("header", "full"), "one of header, full")


@dataclass(frozen=True)
class SplitSettings(_Section):
    SECTION: ClassVar[str] = "split"
    test_fraction: int | float = _key(1 / 3, (int, float), lambda v: 0 < v < 1, "a number in (0, 1)")
    validation_fraction: int | float = _key(0.0, (int, float), _fraction, "a number in [0, 1)")
    seed: int = _key(12, int)


@dataclass(frozen=True)
class NetworkSettings(_Section):
    """The pretrained CNN that featurizes images (``--network``); ``--model`` is always a trained model."""

    SECTION: ClassVar[str] = "network"
    name: str = _key(registry.DEFAULT_MODEL, str)
    weights: str | None = _key(None, str, nullable=True, rule="a path to a weights file")
    cache_dir: str | None = _key(None, str, nullable=True, rule="a folder")
    mirror_url: str | None = _key(None, str, nullable=True, rule="a base URL serving weight files by name")
    download: bool = _key(True, bool)

    def to_params(self) -> dict:
        """The featurizer Params naming the network and where its weights come from (None: not set)."""
        return {"modelName": self.name, "weightsPath": self.weights, "cacheDir": self.cache_dir,
                "mirrorUrl": self.mirror_url, "allowDownload": self.download}


@dataclass(frozen=True)
class FeaturizeSettings(_Section):
    SECTION: ClassVar[str] = "featurize"
    batch_size: int = _key(32, int, _positive, "a positive integer")
    threads: int = _key(0, int, lambda v: v >= 0, "0 (one per task core) or a positive integer")
    partitions: int = _key(0, int, lambda v: v >= 0,
                           "0 (the images table's own splits; two per executor core if fewer than the cores) "
                           "or a positive integer")
    # the inference engine (sparkvision.ml.engines): auto = the fastest installed one on CPU, TensorFlow on a GPU
    engine: str = _key(AUTO, str, _one_of(*ENGINE_CHOICES), "one of " + ", ".join(ENGINE_CHOICES))
    # bf16: OpenVINO on a CPU with bf16 instructions (features within cosine 0.999 of fp32, not bitwise)
    precision: str = _key(PRECISIONS[0], str, _one_of(*PRECISIONS), "one of " + ", ".join(PRECISIONS))
    # decode large JPEGs at a reduced scale (Pillow draft, DCT domain) before the resize: faster on big
    # photos, pixels differ slightly from keras.utils.load_img, so opt-in
    draft: bool = _key(False, bool)

    def to_params(self, network: NetworkSettings | None = None, max_pixels: int | None = None) -> dict:
        """The one bridge to :class:`~sparkvision.ml.featurizer.DeepImageFeaturizer`'s Params.

        Alone: how the network runs (engine, precision, draft, batch size, threads), which may be applied to
        a saved featurizer too. With ``network`` (and ``max_pixels``, ``data.max_pixels``): every Param a
        new featurizer takes from the settings. A None value means "not set" (``setParams`` skips it)."""
        params = {"batchSize": self.batch_size, "numThreads": self.threads, "engine": self.engine,
                  "precision": self.precision, "draft": self.draft}
        if network is not None:
            params = {**network.to_params(), **params}
        if max_pixels is not None:
            params["maxPixels"] = max_pixels
        return params


@dataclass(frozen=True)
class TrainSettings(_Section):
    SECTION: ClassVar[str] = "train"
    reg_param: tuple[int | float, ...] = _key([0.01, 0.1, 1.0], list, _list_of((int, float), lambda x: x >= 0),
                                              "a list of numbers >= 0")
    elastic_net_param: tuple[int | float, ...] = _key([0.0, 0.5], list, _list_of((int, float), lambda x: 0 <= x <= 1),
                                                      "a list of numbers in [0, 1]")
    max_iter: tuple[int, ...] = _key([100], list, _list_of(int, _positive), "a list of positive integers")
    folds: int = _key(3, int, lambda v: v >= 2, "an integer >= 2")
    # Pooled CNN features share one scale; standardizing them measured worse on the football set.
    standardization: bool = _key(False, bool)
    metric: str = _key("logLoss", str, _one_of("logLoss", "accuracy", "f1"), "one of logLoss, accuracy, f1")
    seed: int = _key(42, int)
    # local: grid points scored by Spark tasks solving Spark's LR objective in-process (training rows
    # must fit local_max_mb), winner refit by Spark ML; spark: CrossValidator; auto: local if they fit.
    tuning: str = _key("auto", str, _one_of("auto", "local", "spark"), "one of auto, local, spark")
    local_max_mb: int = _key(512, int, _positive, "a positive number of megabytes")


@dataclass(frozen=True)
class OutputSettings(_Section):
    SECTION: ClassVar[str] = "output"
    dir: str = _key("runs/latest", str)


@dataclass(frozen=True)
class MlflowSettings(_Section):
    """MLflow tracking (sparkvision.tracking): off unless a tracking URI is known (this key, else
    $MLFLOW_TRACKING_URI, else the workspace's own server when running on Databricks)."""

    SECTION: ClassVar[str] = "mlflow"
    tracking_uri: str | None = _key(None, str, nullable=True, rule="an MLflow tracking URI such as http://host:5000")
    experiment: str | None = _key(None, str, nullable=True,
                                  rule="an experiment name (on Databricks a workspace path such as /Shared/sparkvision)")
    run_name: str | None = _key(None, str, nullable=True, rule="a run name")
    registry_uri: str | None = _key(None, str, nullable=True, rule="an MLflow registry URI such as databricks-uc")
    # --register NAME: the pyfunc model registered after evaluate, with the alias "challenger"
    registered_model: str | None = _key(None, str, nullable=True,
                                        rule="a model name (catalog.schema.model on Unity Catalog)")
    # the new version also takes "champion" when its test accuracy beats the champion's on the same split
    promote_champion: bool = _key(False, bool)


@dataclass(frozen=True)
class StreamSettings(_Section):
    """``sparkvision stream`` (sparkvision.stages.stream): a Structured Streaming query over a folder of
    arriving images."""

    SECTION: ClassVar[str] = "stream"
    trigger: str = _key("available-now", str, _trigger, "available-now or processing-time=<number>[ms|s|m]")
    checkpoint: str | None = _key(None, str, nullable=True, rule="a folder (default OUT/_stream/checkpoint)")
    # auto: Auto Loader (cloudFiles) on a Databricks runtime, else Spark's binaryFile file source
    source: str = _key("auto", str, _one_of(*STREAM_SOURCES), "one of " + ", ".join(STREAM_SOURCES))
    format: str = _key("parquet", str, _one_of(*STREAM_FORMATS), "one of " + ", ".join(STREAM_FORMATS))
    max_files_per_trigger: int = _key(1000, int, lambda v: v >= 0, "0 (no cap) or a positive integer")
    max_bytes_per_trigger: int = _key(0, int, lambda v: v >= 0, "0 (no cap) or a positive number of bytes")
    # binaryFile's maxFileAge: null = never (a file copied in with an old modification time is still new;
    # the source remembers every path it saw). A duration such as 30d forgets older paths, and then
    # ignores a file older than the newest seen one minus that.
    max_file_age: str | None = _key(None, str, lambda v: re.fullmatch(r"\d+(ms|s|m|min|h|d)", v) is not None,
                                    nullable=True, rule="null (never) or a duration such as 30d, 12h")
    # files the file source never lists (names starting with '.' or '_') reported as rejected
    report_unlisted: bool = _key(True, bool)


@dataclass(frozen=True)
class SparkSettings(_Section):
    SECTION: ClassVar[str] = "spark"
    master: str | None = _key(None, str, nullable=True, rule="a Spark master URL such as local[2]")
    # Spark Connect (serverless, standard-access clusters, Databricks Connect): sc://host:port; null:
    # $SPARK_REMOTE if set, else classic Spark.
    remote: str | None = _key(None, str, nullable=True, rule="a Spark Connect URL such as sc://localhost:15002")
    app_name: str = _key("sparkvision", str)
    conf: Mapping[str, Any] = _key({}, dict, lambda v: all(isinstance(k, str) for k in v), "a mapping of Spark settings")


SECTIONS: dict[str, type[_Section]] = {cls.SECTION: cls for cls in (
    DataSettings, SplitSettings, NetworkSettings, FeaturizeSettings, TrainSettings, OutputSettings, MlflowSettings,
    StreamSettings, SparkSettings)}


@dataclass(frozen=True)
class Settings:
    """The resolved settings, one frozen section each: ``cfg.split.seed``, ``cfg.spark.conf``."""

    data: DataSettings = field(default_factory=DataSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    featurize: FeaturizeSettings = field(default_factory=FeaturizeSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)

    def __post_init__(self):
        """The checks that span keys, and the mirror URL without credentials."""
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"settings section {name!r} must be a {cls.__name__}; got {getattr(self, name)!r}")
        if self.data.images and self.data.manifest:
            raise ConfigError("config keys 'data.images' and 'data.manifest' are exclusive: give one")
        total = self.split.test_fraction + self.split.validation_fraction
        if total >= 1:
            raise ConfigError(
                f"config keys 'split.test_fraction' + 'split.validation_fraction' must be < 1; got {total:g}"
            )
        try:
            registry.get(self.network.name)
        except KeyError as exc:
            raise ConfigError(f"config key 'network.name': {exc.args[0]}") from None
        check_uri(self.mlflow.tracking_uri, "config key 'mlflow.tracking_uri'")
        check_uri(self.mlflow.registry_uri, "config key 'mlflow.registry_uri'")
        try:  # credentials never come from (nor stay in) the URL: see secrets.clean_mirror_url
            mirror = secrets.clean_mirror_url(self.network.mirror_url)
        except CredentialInURL as exc:
            raise ConfigError(str(exc)) from None
        if mirror != self.network.mirror_url:
            object.__setattr__(self, "network", dataclasses.replace(self.network, mirror_url=mirror))

    def replace(self, **dotted: Any) -> Settings:
        """A validated copy with some keys changed: ``cfg.replace(**{"output.dir": "x"})``."""
        raw = self.to_dict()
        for key, value in dotted.items():
            _set(raw, key, value, "replace")
        return _build(raw)

    def to_dict(self) -> dict:
        """The settings as plain YAML-able data (lists, dicts), in ``config.yaml``'s order."""
        return {name: getattr(self, name).to_dict() for name in SECTIONS}


def _field_of(dotted: str, origin: str) -> tuple[str, dataclasses.Field]:
    section, _, key = dotted.partition(".")
    known = {f.name: f for f in fields(SECTIONS[section])} if section in SECTIONS else {}
    if key not in known:
        listed = ", ".join(f"{section}.{k}" for k in known) or ", ".join(SECTIONS)
        raise ConfigError(f"{origin}: unknown config key {dotted!r}; known: {listed}")
    return section, known[key]


def _set(raw: dict, dotted: str, value: Any, origin: str) -> None:
    section, f = _field_of(dotted, origin)
    raw[section][f.name] = _checked(section, f, value, origin)


def _build(raw: dict) -> Settings:
    return Settings(**{name: cls(**raw[name]) for name, cls in SECTIONS.items()})


def defaults() -> Settings:
    """The built-in defaults (what ``examples/config.yml`` documents)."""
    return Settings()


def _merge(raw: dict, data: Any, origin: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in data.items():
        if section == "model" and "network" not in data:  # the section's name before 0.2
            log.warning("%s: section 'model' is now called 'network' (the pretrained CNN); reading it as 'network'",
                        origin)
            section = "network"
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(raw, f"{section}.{key}", value, origin)


def load(path: str | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> Settings:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides (values parsed as YAML),
    then ``values``: typed settings from command-line flags, taken as they are (``--output 2024`` is the
    folder "2024", not a number). Validated once; the result never changes."""
    raw = Settings().to_dict()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        _merge(raw, data, path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        if "#" in text and (value is None or isinstance(value, str)):
            value = text  # a value is never a YAML comment: --set output.dir="my runs #2" keeps its "#2"
        _set(raw, key.strip(), value, f"--set {key.strip()}")
    for key, value in (values or {}).items():
        _set(raw, key, value, f"flag for {key}")
    return _build(raw)


def dump(cfg: Settings) -> str:
    """The settings as YAML, credentials redacted (this is what a run's ``config.yaml`` holds)."""
    return yaml.safe_dump(secrets.redact(cfg.to_dict()), sort_keys=False)
