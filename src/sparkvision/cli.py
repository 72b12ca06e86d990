"""``sparkvision load | featurize | train | evaluate | predict | run``.

Settings come from built-in defaults, then ``--config FILE`` (YAML), then ``--set key=value``
and the shortcut flags. ``sparkvision run`` with no arguments runs the whole pipeline on the
built-in sample dataset (scikit-learn's digits) with the offline default model on local Spark.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from . import config as config_mod

DEMO_OUTPUT = os.path.join("runs", "demo")


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--config", help="YAML config file (see examples/config.yml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.folds=5 (repeatable)")
    p.add_argument("--output", help="output folder (config output.dir)")
    p.add_argument("--master", help="Spark master, e.g. local[2] or spark://host:7077 (config spark.master)")
    if data:
        p.add_argument("--images", help="folder with one sub-folder per class (config data.images)")
        p.add_argument("--manifest", help="CSV with columns path,label (config data.manifest)")
    p.add_argument("--model", dest="model_name", help="model name, e.g. efficientnet_lite0, InceptionV3")
    p.add_argument("--weights", help="explicit weights file for the model (config model.weights)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkvision", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "load": "read images into Parquet; bad files go to rejected.csv with a reason",
        "featurize": "compute CNN features once for all loaded images",
        "train": "split, cross-validate the LogisticRegression grid on training rows, save the model",
        "evaluate": "metrics.json, report.md, confusion matrix and ROC plots on the test split",
        "run": "load, featurize, train and evaluate (no arguments: the built-in demo)",
    }
    for name, text in helps.items():
        _common(sub.add_parser(name, help=text, description=text), data=name in ("load", "run"))
    p = sub.add_parser("predict", help="predict images with a saved model", description="predict images with a saved model")
    p.add_argument("--model-dir", "--model", dest="model_dir", required=True, help="saved model folder (OUT/model)")
    p.add_argument("--images", required=True, help="folder of images (any depth)")
    p.add_argument("--output", required=True, help="folder for predictions.parquet / predictions.csv")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--master", help="Spark master")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def resolve_config(args: argparse.Namespace) -> config_mod.Config:
    flags = {
        "output.dir": getattr(args, "output", None) if args.command != "predict" else None,
        "spark.master": args.master,
        "data.images": getattr(args, "images", None) if args.command != "predict" else None,
        "data.manifest": getattr(args, "manifest", None),
        "model.name": getattr(args, "model_name", None),
        "model.weights": getattr(args, "weights", None),
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    return config_mod.load(args.config, overrides)


def _demo_defaults(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    """``run`` without data: the sample digits, written next to the run's output."""
    from .sample_data import make_digits

    if not args.output and not (args.config or any(o.startswith("output.dir") for o in args.overrides)):
        cfg["output"]["dir"] = DEMO_OUTPUT
    dest = os.path.join(cfg["output"]["dir"], "sample_data", "digits")
    shutil.rmtree(dest, ignore_errors=True)
    make_digits(dest)
    cfg["data"]["images"] = dest
    logging.getLogger("sparkvision").info("demo: sample dataset (scikit-learn digits, 10 x 20 images) at %s", dest)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .loader import LoadError

    try:
        cfg = resolve_config(args)
        if args.command == "run" and not (cfg["data"]["images"] or cfg["data"]["manifest"]):
            _demo_defaults(cfg, args)
        from . import pipeline
        from .spark import spark_from_config

        spark = spark_from_config(cfg)
        if args.command == "predict":
            summary = pipeline.stage_predict(spark, cfg, args.model_dir, args.images, args.output)
            print(f"predictions: {summary['csv']} ({summary['accepted']} images, {summary['rejected']} rejected)")
            return 0
        if args.command == "load" or args.command == "run":
            if not (cfg["data"]["images"] or cfg["data"]["manifest"]):
                raise config_mod.ConfigError("no input: give --images DIR or --manifest CSV (or data.* in --config)")
        stages = {
            "load": pipeline.stage_load, "featurize": pipeline.stage_featurize, "train": pipeline.stage_train,
            "evaluate": pipeline.stage_evaluate,
        }
        if args.command == "run":
            pipeline.run_all(spark, cfg)
        else:
            stages[args.command](spark, cfg)
        if args.command in ("run", "evaluate"):
            paths = pipeline.paths(cfg)
            print(f"report: {paths['report']}\nmetrics: {paths['metrics']}")
        return 0
    except (config_mod.ConfigError, LoadError, FileNotFoundError) as exc:
        print(f"sparkvision: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
