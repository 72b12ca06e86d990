"""``sparkvision load | featurize | train | evaluate | predict | run | submit | cluster | weights``.

Settings come from built-in defaults, then ``--config FILE`` (YAML), then ``--set key=value``
and the shortcut flags. ``sparkvision run`` with no arguments runs the whole pipeline on the
built-in sample dataset (scikit-learn's digits) with the offline default model on local Spark.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
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

    text = "spark-submit a job (default: run) to a standalone master, sized by a cluster spec"
    p = sub.add_parser("submit", help=text, description=text + ". Arguments after the options (or after --) "
                       "are the job's, e.g. `sparkvision submit --cluster-spec ci --master spark://h:7077 -- run --images DIR`.")
    p.add_argument("--cluster-spec", required=True, help="infra/clusters/NAME.yml, or just NAME")
    p.add_argument("--master", required=True, help="spark://HOST:PORT")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the spark-submit command and exit")
    p.add_argument("job", nargs=argparse.REMAINDER, help="job and its arguments (default: run, the demo)")

    text = "show what a cluster spec becomes: spark-submit settings, or a standalone worker's environment"
    p = sub.add_parser("cluster", help=text, description=text)
    p.add_argument("what", choices=["conf", "worker-env"])
    p.add_argument("--cluster-spec", required=True, help="infra/clusters/NAME.yml, or just NAME")

    text = "check the Databricks bundle offline, or regenerate its job clusters from infra/clusters"
    p = sub.add_parser("bundle", help=text, description=text)
    p.add_argument("what", choices=["validate", "clusters"], help="validate: check bundle.yml for a target; "
                   "clusters: print (or --write) infra/databricks/clusters.yml")
    p.add_argument("--target", "-t", help="bundle target (default: the default target); validate only")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="set a bundle variable (repeatable)")
    p.add_argument("--schema", help="bundle JSON schema (default $SPARKVISION_BUNDLE_SCHEMA or ../shared/databricks/...)")
    p.add_argument("--root", default=".", help="folder with bundle.yml (default: .)")
    p.add_argument("--write", action="store_true", help="clusters: write the file instead of printing it")
    p.add_argument("--output-json", action="store_true", help="validate: print the resolved configuration as JSON")

    text = "run on Databricks with databricks-sdk (auth: DATABRICKS_* env vars or a ~/.databrickscfg profile)"
    p = sub.add_parser("databricks", help=text, description=text + ". submit: upload the wheel and run the bundle's "
                       "pipeline once; run: run a deployed job; status: show a run.")
    p.add_argument("action", choices=["submit", "run", "status"])
    p.add_argument("run_id", nargs="?", type=int, help="status: the run id")
    p.add_argument("--profile", help="~/.databrickscfg profile (default: the SDK's default resolution)")
    p.add_argument("--target", "-t", help="submit: bundle target whose variables and clusters to use")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="submit: bundle variable")
    p.add_argument("--root", default=".", help="submit: folder with bundle.yml")
    p.add_argument("--job", default="sparkvision_pipeline", help="submit: bundle job to submit")
    p.add_argument("--wheel", help="submit: wheel to upload (default: build one from --root)")
    p.add_argument("--job-name", default="sparkvision-pipeline", help="run: deployed job name (dev targets prefix it)")
    p.add_argument("--job-id", type=int, help="run: deployed job id (instead of --job-name)")
    p.add_argument("--output", help="run/status: the run's output folder, to fetch evaluation/metrics.json")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run (default 3600)")
    p.add_argument("--poll", type=float, default=15, help="seconds between status checks (default 15)")
    p.add_argument("--no-wait", action="store_true", help="print the run id and return")

    text = "make sure models' weights are on this machine (download into the cache if allowed); print where"
    p = sub.add_parser("weights", help=text, description=text)
    p.add_argument("models", nargs="+", help="model names, e.g. efficientnet_lite0 InceptionV3")
    p.add_argument("--cache-dir", help="weights cache (default $SPARKVISION_CACHE or ~/.cache/sparkvision/models)")
    p.add_argument("--mirror", help="base URL serving weight files by name (else $SPARKVISION_WEIGHTS_MIRROR)")
    p.add_argument("--offline", action="store_true", help="never download; fail if a file is missing")
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


def _submit(args: argparse.Namespace) -> int:
    import subprocess

    from . import clusters

    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    extra = _pairs(args.conf, "--conf")
    cmd = clusters.submit_command(clusters.load_spec(args.cluster_spec), args.master, job or ["run"], extra)
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def _cluster(args: argparse.Namespace) -> int:
    from . import clusters

    spec = clusters.load_spec(args.cluster_spec)
    if args.what == "conf":
        print("\n".join(f"{k}={v}" for k, v in clusters.submit_conf(spec).items()))
    else:
        print(clusters.shell_assignments(clusters.worker_env(spec)))
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise config_mod.ConfigError(f"{flag} {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


def _print_problems(exc) -> None:
    print(f"sparkvision: bundle invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def _bundle(args: argparse.Namespace) -> int:
    import json

    from . import bundle

    if args.what == "clusters":
        text = bundle.render_clusters_include(os.path.join(args.root, "infra", "clusters"))
        if not args.write:
            print(text, end="")
            return 0
        path = os.path.join(args.root, bundle.CLUSTERS_INCLUDE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path}")
        return 0
    try:
        result = bundle.validate(args.root, args.target, _pairs(args.var, "--var"), args.schema)
    except bundle.BundleError as exc:
        _print_problems(exc)
        return 1
    if args.output_json:
        print(json.dumps(result["config"], indent=2))
    jobs = ", ".join(f"{name} ({n} tasks)" for name, n in result["jobs"].items())
    schema = f"JSON schema {result['schema']}" if result["schema"] else "JSON schema not checked (none found; --schema FILE)"
    print(f"bundle valid for target {result['target']}: {jobs}; {schema}", file=sys.stderr if args.output_json else sys.stdout)
    return 0


def _build_wheel(root: str) -> str:
    import glob
    import subprocess
    import tempfile

    out = tempfile.mkdtemp(prefix="sparkvision-wheel-")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", out, root], check=True)
    return glob.glob(os.path.join(out, "*.whl"))[0]


def _databricks(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from databricks.sdk.errors import DatabricksError
    except ImportError:
        print("sparkvision: databricks: databricks-sdk is not installed: pip install 'sparkvision[databricks]'",
              file=sys.stderr)
        return 2
    from . import bundle
    from . import databricks as dbx

    try:
        w = dbx.client(args.profile)
        output = args.output
        if args.action == "status":
            if args.run_id is None:
                raise config_mod.ConfigError("status needs a RUN_ID")
            run_id = args.run_id
        elif args.action == "submit":
            result = bundle.validate(args.root, args.target, _pairs(args.var, "--var"))
            output = output or result["variables"].get("output")
            wheel = Path(args.wheel or _build_wheel(args.root))
            run_id = dbx.submit(w, result["config"], wheel, args.job)
        else:
            job_id = args.job_id or dbx.find_job(w, args.job_name)
            run_id = dbx.run_now(w, job_id)
        print(f"run id: {run_id}", flush=True)
        if args.no_wait and args.action != "status":
            return 0
        run = dbx.wait(w, run_id, args.timeout, args.poll) if args.action != "status" else w.jobs.get_run(run_id)
        rep = dbx.report(w, run, output)
        print("\n".join(rep.lines()))
        if args.action == "status" and rep.life_cycle_state not in dbx.TERMINAL:
            return 0
        return 0 if rep.succeeded else 1
    except dbx.RunTimeout as exc:
        print(f"sparkvision: databricks: {exc}", file=sys.stderr)
        return 3
    except bundle.BundleError as exc:
        _print_problems(exc)
        return 2
    except (DatabricksError, LookupError, ValueError) as exc:
        print(f"sparkvision: databricks: {exc}", file=sys.stderr)
        return 2


def _weights(args: argparse.Namespace) -> int:
    from .models import registry
    from .models.weights import file_digest, resolve_weights

    for name in args.models:
        try:
            spec = registry.get(name)
        except KeyError as exc:
            raise config_mod.ConfigError(exc.args[0]) from None
        path = resolve_weights(spec, cache_dir=args.cache_dir, mirror_url=args.mirror, allow_download=not args.offline)
        print(f"{spec.name}\t{path}\tsha256:{file_digest(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .clusters import ClusterSpecError
    from .loader import LoadError
    from .models.weights import WeightsNotFoundError

    tools = {"submit": _submit, "cluster": _cluster, "weights": _weights, "bundle": _bundle, "databricks": _databricks}
    try:
        if args.command in tools:
            return tools[args.command](args)
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
    except (config_mod.ConfigError, ClusterSpecError, LoadError, FileNotFoundError, WeightsNotFoundError) as exc:
        print(f"sparkvision: error: {exc}", file=sys.stderr)
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
run_main = _stage_entry("run")


if __name__ == "__main__":
    sys.exit(main())
