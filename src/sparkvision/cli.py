"""``sparkvision load | featurize | train | evaluate | predict | run | weights`` (and the deploy commands
``submit | cluster | bundle | databricks`` from :mod:`sparkvision.deploy.cli`).

Settings come from built-in defaults, then ``--config FILE`` (YAML), then ``--set key=value``, then the
flags, which are taken as typed values (``--output 2024`` is a folder named "2024"). ``sparkvision run``
with no input runs the whole pipeline on the built-in sample dataset (scikit-learn's digits) with the
offline default network on local Spark. ``--network NAME`` picks the pretrained CNN; ``--model`` is
always a trained model (``predict``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from sparkvision import secrets
from sparkvision import settings as config_mod
from sparkvision.deploy import cli as deploy_cli
from sparkvision.deploy.clusters import ClusterSpecError
from sparkvision.errors import (CheckpointError, ChecksumMismatchError, ConfigError, LoadError, OutputLocked, StackError,
                                StaleOutput, StreamConflict, TrackingError, WeightsChecksumError, WeightsNotFoundError)
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import file_digest, resolve_weights
from sparkvision.run import stack
from sparkvision.run.layout import PredictionLayout, RunLayout
from sparkvision.run.sample_data import make_digits
from sparkvision.run.spark import quiet, spark_from_config
from sparkvision.settings import Settings

DEMO_OUTPUT = os.path.join("runs", "demo")


def _common(p: argparse.ArgumentParser, data: bool, network: bool) -> None:
    p.add_argument("--config", help="YAML config file (see examples/config.yml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.folds=5 (repeatable; the value is read as YAML)")
    p.add_argument("--output", help="output folder (config output.dir)")
    p.add_argument("--master", help="Spark master, e.g. local[2] or spark://host:7077 (config spark.master)")
    p.add_argument("--remote", help="Spark Connect server, e.g. sc://localhost:15002 (config spark.remote; "
                   "default $SPARK_REMOTE)")
    if data:
        p.add_argument("--images", help="folder with one sub-folder per class (config data.images)")
        p.add_argument("--manifest", help="CSV with columns path,label (config data.manifest)")
    if network:
        p.add_argument("--network", help="pretrained CNN, e.g. efficientnet_lite0, InceptionV3 (config network.name)")
        p.add_argument("--weights", help="explicit weights file for the network (config network.weights)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, with Spark's and TensorFlow's own")


def _tracked(p: argparse.ArgumentParser) -> None:
    p.add_argument("--register", metavar="NAME",
                   help="register the trained model in MLflow as NAME (catalog.schema.model on Unity Catalog) with "
                        "the alias 'challenger' (config mlflow.registered_model; needs MLflow tracking)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkvision", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "load": "read images into Parquet; bad files go to rejected.csv with a reason",
        "featurize": "compute CNN features once for all loaded images",
        "train": "split, cross-validate the LogisticRegression grid on training rows, save the model",
        "evaluate": "metrics.json, report.md, confusion matrix and ROC plots on the test split",
        "run": "load, featurize, train and evaluate (no input: the built-in demo)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p, data=name in ("load", "run"), network=True)
        if name in ("evaluate", "run"):  # registration needs the test accuracy: it happens in evaluate
            _tracked(p)
    text = "predict images with a trained model"
    p = sub.add_parser("predict", help=text, description=text)
    _common(p, data=False, network=False)
    p.add_argument("--model", required=True,
                   help="trained model: a run's OUT/model folder, or a registered model such as "
                        "models:/NAME@champion (needs MLflow tracking)")
    p.add_argument("--images", required=True, help="folder of images (any depth)")

    text = "classify images as they arrive in a folder (Structured Streaming, exactly once across restarts)"
    p = sub.add_parser("stream", help=text, description=text)
    _common(p, data=False, network=False)
    p.add_argument("--model", required=True, help="trained model: a run's OUT/model folder, or models:/NAME@alias")
    p.add_argument("--images", required=True, help="folder (or volume / bucket path) that images arrive in")
    p.add_argument("--trigger", help="available-now (process what is there, then stop) or processing-time=30s "
                   "(config stream.trigger)")
    p.add_argument("--checkpoint", help="the query's checkpoint folder (config stream.checkpoint; default "
                   "OUT/_stream/checkpoint)")
    p.add_argument("--max-files-per-trigger", type=int, help="files per micro-batch at most (config "
                   "stream.max_files_per_trigger)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds (processing-time triggers run "
                   "until stopped otherwise)")

    text = "make sure networks' weights are on this machine (download into the cache if allowed); print where"
    p = sub.add_parser("weights", help=text, description=text)
    p.add_argument("networks", nargs="+", help="network names, e.g. efficientnet_lite0 InceptionV3")
    p.add_argument("--cache-dir", help="weights cache (default $SPARKVISION_CACHE or ~/.cache/sparkvision/models)")
    p.add_argument("--mirror", help="base URL serving weight files by name (else $SPARKVISION_WEIGHTS_MIRROR)")
    p.add_argument("--offline", action="store_true", help="never download; fail if a file is missing")
    deploy_cli.add_parsers(sub)
    return parser


# flag -> config key; values are set as typed (strings), never re-parsed as YAML.
FLAGS = {"output": "output.dir", "master": "spark.master", "remote": "spark.remote", "images": "data.images", "manifest": "data.manifest",
         "network": "network.name", "weights": "network.weights", "register": "mlflow.registered_model",
         "trigger": "stream.trigger", "checkpoint": "stream.checkpoint", "max_files_per_trigger": "stream.max_files_per_trigger"}


def resolve_config(args: argparse.Namespace) -> Settings:
    """The settings of this command: ``--config``, then ``--set``, then the flags (typed, never YAML)."""
    values = {key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag, None) is not None}
    if args.command in ("predict", "stream"):
        values.pop("data.images", None)  # predict's --images is its unlabelled input, not training data
    return config_mod.load(args.config, list(args.overrides), values)


def _is_demo(cfg: Settings, args: argparse.Namespace) -> bool:
    """``run`` without input: the demo, on the sample digits."""
    return args.command == "run" and not (cfg.data.images or cfg.data.manifest)


def demo_settings(cfg: Settings, args: argparse.Namespace) -> Settings:
    """The demo's settings: its output folder (runs/demo unless one was given) and the sample images in it."""
    out = cfg.output.dir
    if not args.output and not (args.config or any(o.startswith("output.dir") for o in args.overrides)):
        out = DEMO_OUTPUT
    return cfg.replace(**{"output.dir": out, "data.images": RunLayout(out).sample_data})


def _demo_data(cfg: Settings) -> None:
    """The sample digits, written where the demo's settings say (``data.images``, in the run's output folder;
    under its lock: a second demo on the same folder is refused before it touches the first one's images)."""
    make_digits(cfg.data.images, clean=True)
    logging.getLogger("sparkvision").info("demo: sample dataset (scikit-learn digits, 10 x 20 images) at %s",
                                          cfg.data.images)


def _weights(args: argparse.Namespace) -> int:
    for name in args.networks:
        try:
            spec = registry.get(name)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        path = resolve_weights(spec, cache_dir=args.cache_dir, mirror_url=args.mirror, allow_download=not args.offline)
        print(f"{spec.name}\t{path}\tsha256:{file_digest(path)}")
    return 0


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    secrets.install_log_redaction()
    quiet(verbose)


def _pipeline(args: argparse.Namespace) -> int:
    from sparkvision.stages import pipeline  # lazy: pyspark (optional) comes with the stages
    from sparkvision.tracking import runs as tracking  # lazy: pyspark (optional) comes with the tracking

    stack.check()
    cfg = resolve_config(args)
    demo = _is_demo(cfg, args)
    if demo:
        cfg = demo_settings(cfg, args)
    if args.command == "load" and not (cfg.data.images or cfg.data.manifest):
        raise ConfigError("no input: give --images DIR or --manifest CSV (or data.* in --config)")
    tracked = tracking.enabled(cfg)
    if cfg.mlflow.registered_model and not tracked:
        raise ConfigError("--register (mlflow.registered_model) needs MLflow tracking: set "
                          "MLFLOW_TRACKING_URI or mlflow.tracking_uri")
    if args.command == "stream":
        return _stream(args, cfg, tracked)
    if args.command == "predict":
        if not args.output:
            raise ConfigError("predict needs --output DIR (the predictions folder)")
        registered = tracking.is_model_uri(args.model)
        if registered and not tracked:
            raise ConfigError(f"--model {args.model}: a registered model needs MLflow tracking: set "
                              "MLFLOW_TRACKING_URI or mlflow.tracking_uri")
        with pipeline.output_lock(args.output, "predict"):
            spark = spark_from_config(cfg, args.verbose)
            model, source = args.model, None
            if registered:
                model = PredictionLayout(args.output).model
                source = tracking.fetch_model(cfg, args.model, model)
            summary = pipeline.stage_predict(spark, cfg, model, args.images, args.output, source)
        print(f"predictions: {summary['csv']} ({summary['accepted']} images, {summary['rejected']} rejected)")
        return 0
    out = cfg.output.dir
    started = time.time()
    if tracked and args.command in tracking.GROUPS:
        tracking.connect(cfg)  # before any work: an unreachable server fails now, not after training
    with pipeline.output_lock(out, args.command):
        if demo:
            _demo_data(cfg)
        spark = spark_from_config(cfg, args.verbose)
        if args.command == "run":
            pipeline.run_all(spark, cfg)
        else:
            pipeline.STAGES[args.command](spark, cfg)
        if tracked:
            tracking.track(spark, cfg, args.command, started)
    if args.command in ("run", "evaluate"):
        lay = RunLayout(out)
        print(f"report: {lay.report}\nmetrics: {lay.metrics}")
    return 0


def _stream(args: argparse.Namespace, cfg: Settings, tracked: bool) -> int:
    from sparkvision.stages import pipeline, stream  # lazy: pyspark (optional) comes with the stages
    from sparkvision.tracking import runs as tracking  # lazy: pyspark (optional) comes with the tracking

    if not args.output:
        raise ConfigError("stream needs --output DIR (its predictions and rejected tables)")
    model, name = args.model, args.model
    with pipeline.output_lock(args.output, "stream"):
        spark = spark_from_config(cfg, args.verbose)
        if tracking.is_model_uri(args.model):
            if not tracked:
                raise ConfigError(f"--model {args.model}: a registered model needs MLflow tracking: set "
                                  "MLFLOW_TRACKING_URI or mlflow.tracking_uri")
            model = PredictionLayout(args.output).model
            source = tracking.fetch_model(cfg, args.model, model)
            name = source.get("version") or args.model
        summary = stream.run(spark, cfg, model, name, args.images, args.output, args.timeout)
    print(f"stream: {summary['predicted']} images predicted, {summary['rejected']} rejected in "
          f"{summary['batches']} micro-batches; tables {summary['predictions']} and {summary['rejected_table']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        if args.command in deploy_cli.COMMANDS:
            return deploy_cli.COMMANDS[args.command](args)
        if args.command == "weights":
            return _weights(args)
        return _pipeline(args)
    except (ConfigError, ClusterSpecError, LoadError, FileNotFoundError, WeightsNotFoundError,
            StaleOutput, OutputLocked, CheckpointError, WeightsChecksumError, ChecksumMismatchError,
            StackError, StreamConflict, TrackingError) as exc:
        print(f"sparkvision: error: {secrets.redact_text(str(exc))}", file=sys.stderr)
        return 2


def _stage_entry(command: str):
    def entry() -> None:
        sys.exit(main([command, *sys.argv[1:]]))

    entry.__name__ = entry.__qualname__ = f"{command}_main"
    entry.__doc__ = f"``sparkvision-{command} ARGS`` = ``sparkvision {command} ARGS`` (wheel-task entry point)."
    return entry


load_main = _stage_entry("load")
featurize_main = _stage_entry("featurize")
train_main = _stage_entry("train")
evaluate_main = _stage_entry("evaluate")
predict_main = _stage_entry("predict")
stream_main = _stage_entry("stream")
run_main = _stage_entry("run")


if __name__ == "__main__":
    sys.exit(main())
