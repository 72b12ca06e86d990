"""Run configuration: built-in defaults <- YAML file <- ``--set key=value`` overrides, validated.

Every error names the dotted key (``split.test_fraction``) and what was wrong with it.
"""

from __future__ import annotations

from sparkvision.errors import ConfigError
import copy
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from sparkvision.run.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from sparkvision.ml.models.registry import DEFAULT_MODEL


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Field:
    default: Any
    kind: type | tuple[type, ...]
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    nullable: bool = False


def _fraction(v):
    return 0.0 <= v < 1.0


def _positive(v):
    return v > 0


def _trigger(v):
    from sparkvision.stages.stream import parse_trigger

    try:
        parse_trigger(v)
    except ValueError:
        return False
    return True


def _list_of(kind, check=None):
    return lambda v: all(isinstance(x, kind) and not isinstance(x, bool) and (check is None or check(x)) for x in v) and len(v) > 0


SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "images": Field(None, str, nullable=True, rule="a folder with one sub-folder per class"),
        "manifest": Field(None, str, nullable=True, rule="a CSV with columns path,label"),
        "extensions": Field(list(IMAGE_EXTENSIONS), list, _list_of(str), "a non-empty list of file extensions"),
        "max_pixels": Field(DEFAULT_MAX_PIXELS, int, _positive, "a positive integer"),
        "max_file_mb": Field(64, (int, float), _positive, "a positive number of megabytes"),
        # header: load reads each file's header (format, size, orientation) and the one full decode happens
        # in featurize, whose failures join rejected.*; full: load also decodes every image to validate it.
        "validate": Field("header", str, lambda v: v in ("header", "full"), "one of header, full"),
    },
    "split": {
        "test_fraction": Field(1 / 3, (int, float), lambda v: 0 < v < 1, "a number in (0, 1)"),
        "validation_fraction": Field(0.0, (int, float), _fraction, "a number in [0, 1)"),
        "seed": Field(12, int),
    },
    # The pretrained CNN that featurizes images (``--network``); ``--model`` is always a trained model.
    "network": {
        "name": Field(DEFAULT_MODEL, str),
        "weights": Field(None, str, nullable=True, rule="a path to a weights file"),
        "cache_dir": Field(None, str, nullable=True, rule="a folder"),
        "mirror_url": Field(None, str, nullable=True, rule="a base URL serving weight files by name"),
        "download": Field(True, bool),
    },
    "featurize": {
        "batch_size": Field(32, int, _positive, "a positive integer"),
        "threads": Field(0, int, lambda v: v >= 0, "0 (one per task core) or a positive integer"),
        "partitions": Field(0, int, lambda v: v >= 0,
                            "0 (the images table's own splits; two per executor core if fewer than the cores) "
                            "or a positive integer"),
        # the inference engine (sparkvision.ml.engines): auto = the fastest installed one on CPU, TensorFlow on a GPU
        "engine": Field("auto", str, lambda v: v in ("auto", "tensorflow", "onnxruntime", "openvino"),
                        "one of auto, tensorflow, onnxruntime, openvino"),
        # bf16: OpenVINO on a CPU with bf16 instructions (features within cosine 0.999 of fp32, not bitwise)
        "precision": Field("fp32", str, lambda v: v in ("fp32", "bf16"), "one of fp32, bf16"),
        # decode large JPEGs at a reduced scale (Pillow draft, DCT domain) before the resize: faster on big
        # photos, pixels differ slightly from keras.utils.load_img, so opt-in
        "draft": Field(False, bool),
    },
    "train": {
        "reg_param": Field([0.01, 0.1, 1.0], list, _list_of((int, float), lambda x: x >= 0), "a list of numbers >= 0"),
        "elastic_net_param": Field([0.0, 0.5], list, _list_of((int, float), lambda x: 0 <= x <= 1), "a list of numbers in [0, 1]"),
        "max_iter": Field([100], list, _list_of(int, _positive), "a list of positive integers"),
        "folds": Field(3, int, lambda v: v >= 2, "an integer >= 2"),
        # Pooled CNN features share one scale; standardizing them measured worse on the football set.
        "standardization": Field(False, bool),
        "metric": Field("logLoss", str, lambda v: v in ("logLoss", "accuracy", "f1"), "one of logLoss, accuracy, f1"),
        "seed": Field(42, int),
        # local: grid points scored by Spark tasks solving Spark's LR objective in-process (training rows
        # must fit local_max_mb), winner refit by Spark ML; spark: CrossValidator; auto: local if they fit.
        "tuning": Field("auto", str, lambda v: v in ("auto", "local", "spark"), "one of auto, local, spark"),
        "local_max_mb": Field(512, int, _positive, "a positive number of megabytes"),
    },
    "output": {
        "dir": Field("runs/latest", str),
    },
    # MLflow tracking (sparkvision.tracking.runs): off unless a tracking URI is known (this key, else
    # $MLFLOW_TRACKING_URI, else the workspace's own server when running on Databricks).
    "mlflow": {
        "tracking_uri": Field(None, str, nullable=True, rule="an MLflow tracking URI such as http://host:5000"),
        "experiment": Field(None, str, nullable=True,
                            rule="an experiment name (on Databricks a workspace path such as /Shared/sparkvision)"),
        "run_name": Field(None, str, nullable=True, rule="a run name"),
        "registry_uri": Field(None, str, nullable=True, rule="an MLflow registry URI such as databricks-uc"),
        # --register NAME: the pyfunc model registered after evaluate, with the alias "challenger"
        "registered_model": Field(None, str, nullable=True, rule="a model name (catalog.schema.model on Unity Catalog)"),
        # the new version also takes "champion" when its test accuracy beats the champion's on the same split
        "promote_champion": Field(False, bool),
    },
    # sparkvision stream (sparkvision.stages.stream): a Structured Streaming query over a folder of arriving images
    "stream": {
        "trigger": Field("available-now", str, _trigger, "available-now or processing-time=<number>[ms|s|m]"),
        "checkpoint": Field(None, str, nullable=True, rule="a folder (default OUT/_stream/checkpoint)"),
        # auto: Auto Loader (cloudFiles) on a Databricks runtime, else Spark's binaryFile file source
        "source": Field("auto", str, lambda v: v in ("auto", "binaryFile", "cloudFiles"),
                        "one of auto, binaryFile, cloudFiles"),
        "format": Field("parquet", str, lambda v: v in ("parquet", "delta"), "one of parquet, delta"),
        "max_files_per_trigger": Field(1000, int, lambda v: v >= 0, "0 (no cap) or a positive integer"),
        "max_bytes_per_trigger": Field(0, int, lambda v: v >= 0, "0 (no cap) or a positive number of bytes"),
        # binaryFile's maxFileAge: null = never (a file copied in with an old modification time is still new;
        # the source remembers every path it saw). A duration such as 30d forgets older paths, and then
        # ignores a file older than the newest seen one minus that.
        "max_file_age": Field(None, str, lambda v: re.fullmatch(r"\d+(ms|s|m|min|h|d)", v) is not None, nullable=True,
                              rule="null (never) or a duration such as 30d, 12h"),
        # files the file source never lists (names starting with '.' or '_') reported as rejected
        "report_unlisted": Field(True, bool),
    },
    "spark": {
        "master": Field(None, str, nullable=True, rule="a Spark master URL such as local[2]"),
        # Spark Connect (serverless, standard-access clusters, Databricks Connect): sc://host:port; null:
        # $SPARK_REMOTE if set, else classic Spark.
        "remote": Field(None, str, nullable=True, rule="a Spark Connect URL such as sc://localhost:15002"),
        "app_name": Field("sparkvision", str),
        "conf": Field({}, dict, lambda v: all(isinstance(k, str) for k in v), "a mapping of Spark settings"),
    },
}


class Config(dict):
    """The resolved settings: ``cfg["split"]["seed"]``."""


def defaults() -> Config:
    return Config({s: {k: copy.deepcopy(f.default) for k, f in fields.items()} for s, fields in SCHEMA.items()})


def _merge(cfg: Config, data: dict, origin: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections ({', '.join(SCHEMA)})")
    for section, values in data.items():
        if section == "model" and "network" not in data:  # the section's name before 0.2
            log.warning("%s: section 'model' is now called 'network' (the pretrained CNN); reading it as 'network'",
                        origin)
            section = "network"
        if section not in SCHEMA:
            raise ConfigError(f"{origin}: unknown section {section!r}; known: {', '.join(SCHEMA)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            set_key(cfg, f"{section}.{key}", value, origin)


def set_key(cfg: Config, dotted: str, value: Any, origin: str = "override") -> None:
    section, _, key = dotted.partition(".")
    if section not in SCHEMA or key not in SCHEMA[section]:
        known = ", ".join(f"{section}.{k}" for k in SCHEMA.get(section, {})) or ", ".join(SCHEMA)
        raise ConfigError(f"{origin}: unknown config key {dotted!r}; known: {known}")
    f = SCHEMA[section][key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and f.kind is list:
        value = [value]  # ``--set train.max_iter=30`` means a one-point grid
    ok = (value is None and f.nullable) or (
        isinstance(value, f.kind) and not (isinstance(value, bool) and f.kind is not bool)
    )
    if ok and value is not None and f.check is not None:
        ok = f.check(value)
    if not ok:
        rule = f.rule or (f.kind.__name__ if isinstance(f.kind, type) else " or ".join(k.__name__ for k in f.kind))
        raise ConfigError(f"{origin}: config key {dotted!r} must be {rule}; got {value!r}")
    cfg[section][key] = value


def load(path: str | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides (values parsed as YAML),
    then ``values``: typed settings from command-line flags, taken as they are (``--output 2024`` is the
    folder "2024", not a number)."""
    cfg = defaults()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        _merge(cfg, data, path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        set_key(cfg, key.strip(), value, origin=f"--set {key.strip()}")
    for key, value in (values or {}).items():
        set_key(cfg, key, value, origin=f"flag for {key}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that span keys."""
    if cfg["data"]["images"] and cfg["data"]["manifest"]:
        raise ConfigError("config keys 'data.images' and 'data.manifest' are exclusive: give one")
    total = cfg["split"]["test_fraction"] + cfg["split"]["validation_fraction"]
    if total >= 1:
        raise ConfigError(
            f"config keys 'split.test_fraction' + 'split.validation_fraction' must be < 1; got {total:g}"
        )
    from sparkvision.ml.models import registry

    try:
        registry.get(cfg["network"]["name"])
    except KeyError as exc:
        raise ConfigError(f"config key 'network.name': {exc.args[0]}") from None
    from sparkvision import secrets
    from sparkvision.tracking.runs import check_uri

    check_uri(cfg["mlflow"]["tracking_uri"], "config key 'mlflow.tracking_uri'")
    check_uri(cfg["mlflow"]["registry_uri"], "config key 'mlflow.registry_uri'")
    try:  # credentials never come from (nor stay in) the URL: see secrets.clean_mirror_url
        cfg["network"]["mirror_url"] = secrets.clean_mirror_url(cfg["network"]["mirror_url"])
    except secrets.CredentialInURL as exc:
        raise ConfigError(str(exc)) from None


def dump(cfg: Config) -> str:
    """The settings as YAML, credentials redacted (this is what a run's ``config.yaml`` holds)."""
    from sparkvision import secrets

    return yaml.safe_dump(secrets.redact(dict(cfg)), sort_keys=False)
