"""MLflow run logging: every ``train`` / ``evaluate`` / ``run`` logged as one MLflow run, the model in two
flavours (:mod:`.pyfunc`), registered on request (:mod:`.registry`).

Off unless a tracking URI is known (:mod:`.server`). Without one nothing here is imported by the pipeline,
nothing is logged and the run folder is exactly what it is without MLflow.

What is logged comes from the run folder's files after the stage wrote them (so the MLflow run and the
folder agree): ``load.json`` / ``featurize.json`` / ``train.json`` / ``evaluation/metrics.json`` give the
params and metrics, the files themselves are the artifacts. The run's id is kept in ``OUT/mlflow.json``,
so the stages of a Databricks job (separate tasks, separate processes) log into one MLflow run as long
as they belong to the same trained model (the train fingerprint).

The commands (``cli``) use this module alone: what they call from the others is named here too.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sparkvision.errors import TrackingError
from sparkvision.run import storage
from sparkvision.run.layout import RunLayout
from sparkvision.run.spark import is_remote
from sparkvision.settings import Settings
from sparkvision.tracking.pyfunc import log_models
from sparkvision.tracking.registry import fetch_model, is_model_uri, register
from sparkvision.tracking.server import (ON_DATABRICKS, connect, default_experiment, enabled, errors, experiment,
                                         mlflow_for, shown, tracking_uri)

__all__ = ["GROUPS", "TrackingError", "connect", "enabled", "fetch_model", "is_model_uri", "metric_key", "register",
           "track", "tracking_uri"]

log = logging.getLogger(__name__)

GROUPS = {"train": ("load", "featurize", "train"), "evaluate": ("load", "featurize", "train", "evaluate"),
          "run": ("load", "featurize", "train", "evaluate")}


def track(spark, cfg: Settings, command: str, started: float | None = None) -> dict | None:
    """Log what ``command`` (begun at ``started``, epoch seconds) left in the run folder; returns the MLflow
    record (``OUT/mlflow.json``)."""
    if command not in GROUPS or not enabled(cfg):
        return None
    with errors(cfg, f"{command}: logging to the MLflow tracking server"):
        return _track(spark, cfg, command, started)


def _track(spark, cfg: Settings, command: str, started: float | None) -> dict:
    mlflow = mlflow_for(cfg)
    lay = RunLayout(cfg.output.dir)
    trained = storage.read_json(lay.train)
    experiment_id = experiment(mlflow, cfg)
    record = _resumable(mlflow, lay, trained["fingerprint"], experiment_id) if command == "evaluate" else None
    if record is None:
        record = {"run_id": None, "train_fingerprint": trained["fingerprint"], "logged": []}
    if not record["run_id"]:  # a new run, dated from the command's start (the UI shows the command's duration)
        record["run_id"] = mlflow.MlflowClient().create_run(
            experiment_id or default_experiment(mlflow), start_time=int((started or time.time()) * 1000),
            run_name=cfg.mlflow.run_name or _run_name(cfg)).info.run_id
    with mlflow.start_run(run_id=record["run_id"]) as run:
        record["run_id"], record["experiment_id"] = run.info.run_id, run.info.experiment_id
        if not record["logged"]:
            mlflow.set_tags(_tags(spark, cfg))
        for group in GROUPS[command]:
            if group in record["logged"] and group != "evaluate":
                continue
            LOGGERS[group](mlflow, spark, cfg, lay, record)
            if group not in record["logged"]:
                record["logged"].append(group)
            storage.write_json(lay.tracking, record)  # after each group: a crash leaves what was logged
    log.info("mlflow: run %s in experiment %s (%s)", record["run_id"], record["experiment_id"],
             shown(tracking_uri(cfg)))
    return record


def _resumable(mlflow, lay: RunLayout, fingerprint: str, experiment_id: str | None) -> dict | None:
    """The earlier record of this run folder, if it belongs to the same trained model and its run is still
    there (not deleted, in the experiment this command logs to)."""
    if not storage.exists(lay.tracking):
        return None
    record = storage.read_json(lay.tracking)
    if record.get("train_fingerprint") != fingerprint:
        return None
    try:
        run = mlflow.MlflowClient().get_run(record["run_id"])
    except Exception:  # noqa: BLE001 - another server, or purged
        run = None
    if run is None or run.info.lifecycle_stage == "deleted" or (
            experiment_id is not None and run.info.experiment_id != experiment_id):
        log.info("mlflow: run %s of %s is gone or in another experiment; starting a new run", record["run_id"],
                 lay.tracking)
        return None
    return record


def _run_name(cfg: Settings) -> str:
    return f"{cfg.network.name}-{Path(cfg.output.dir.rstrip('/')).name}"


def git_commit() -> str | None:
    """The project's commit: ``$SPARKVISION_GIT_COMMIT`` (images, wheels), else the checkout this package
    runs from (an editable install), else unknown."""
    if os.environ.get("SPARKVISION_GIT_COMMIT"):
        return os.environ["SPARKVISION_GIT_COMMIT"]
    here = str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()) else None


def runtime(spark) -> str:
    mode = "connect" if is_remote(spark) else "classic"
    return f"databricks ({mode})" if os.environ.get(ON_DATABRICKS) else mode


def _tags(spark, cfg: Settings) -> dict:
    try:
        ours = version("sparkvision")
    except PackageNotFoundError:
        ours = "unknown"
    tags = {"spark_version": spark.version, "runtime": runtime(spark), "sparkvision.version": ours,
            "sparkvision.output": shown(cfg.output.dir)}
    if os.environ.get(ON_DATABRICKS):
        tags["databricks_runtime"] = os.environ[ON_DATABRICKS]
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def _artifacts(mlflow, files: dict[str, str], artifact_path: str | None) -> None:
    """Copy the run folder's files (any storage) to a temporary folder under their names, and log them."""
    with tempfile.TemporaryDirectory(prefix="sparkvision-mlflow-") as tmp:
        for name, uri in files.items():
            if storage.exists(uri):
                Path(tmp, name).write_bytes(storage.read_bytes(uri))
        mlflow.log_artifacts(tmp, artifact_path)


def metric_key(name: str) -> str:
    """An MLflow metric/param key from free text (class names): what MLflow accepts (letters, digits and
    ``_-. :``), anything else as ``_``."""
    return re.sub(r"[^\w.\- :]", "_", name)[:250]  # no "/": "a/" or "a//b" fail MLflow's path check


# ---- what each stage's files give ---------------------------------------------------------------------------

def _log_load(mlflow, spark, cfg: Settings, lay: RunLayout, record: dict) -> None:
    load = storage.read_json(lay.load)
    mlflow.log_params({"data.source": shown(cfg.data.images or cfg.data.manifest or ""),
                       "data.max_pixels": cfg.data.max_pixels})
    mlflow.log_metrics({"images_discovered": load["discovered"], "images_accepted": load["accepted"],
                        "images_rejected": load["rejected"]})
    _artifacts(mlflow, {"load.json": lay.load, "rejected.csv": lay.rejected_csv, "config.yaml": lay.config}, "run")


def _log_featurize(mlflow, spark, cfg: Settings, lay: RunLayout, record: dict) -> None:
    f = storage.read_json(lay.featurize)
    # The engine and precision that ran (featurize.json), not the configured ones ("auto" picks one).
    ran = {f"featurize.{key}": f[key] for key in ("engine", "precision") if f.get(key) is not None}
    mlflow.log_params({"network": f["model"], "weights_sha256": f["weights_sha256"], "feature_dim": f["feature_dim"],
                       **ran, "featurize.batch_size": cfg.featurize.batch_size})
    if f.get("images_per_second"):
        mlflow.log_metric("featurize_images_per_second", f["images_per_second"])
    _artifacts(mlflow, {"featurize.json": lay.featurize}, "run")


def _log_train(mlflow, spark, cfg: Settings, lay: RunLayout, record: dict) -> None:
    import pandas as pd  # optional

    t = storage.read_json(lay.train)
    tuning, s = t["tuning"], cfg.split
    best = tuning["best_params"]
    mlflow.log_params({
        "split.seed": s.seed, "split.test_fraction": s.test_fraction,
        "split.validation_fraction": s.validation_fraction, "classes": len(t["classes"]),
        "tuning.engine": tuning["engine"], "tuning.metric": tuning["metric"], "tuning.folds": tuning["folds"],
        "tuning.grid_points": len(tuning["grid"]),
        **{f"best.{k}": v for k, v in best.items()},
    })
    means = {tuple(sorted((k, v) for k, v in g.items() if k not in ("mean", "std"))): g["mean"] for g in tuning["grid"]}
    chosen = means.get(tuple(sorted(best.items())))
    if chosen is not None:
        mlflow.log_metric(f"cv_{tuning['metric']}", chosen)
    mlflow.log_table(pd.DataFrame(tuning["grid"]), "cv_results.json")
    _artifacts(mlflow, {"train.json": lay.train}, "run")
    record.update(log_models(mlflow, spark, cfg, lay))


def _log_evaluate(mlflow, spark, cfg: Settings, lay: RunLayout, record: dict) -> None:
    m = storage.read_json(lay.metrics)
    lo, hi = m["accuracy_ci95"]
    values = {"accuracy": m["accuracy"], "accuracy_ci95_low": lo, "accuracy_ci95_high": hi,
              "baseline_accuracy": m["baseline_accuracy"], "test_images": m["n"]}
    for key in ("precision", "recall", "f1"):
        values[f"{key}_weighted"], values[f"{key}_macro"] = m[f"{key}_weighted"], m[f"{key}_macro"]
    for key in ("roc_auc", "log_loss"):
        if m.get(key) is not None:
            values[key] = m[key]
    for k, (name, per) in enumerate(m["per_class"].items()):
        for key in ("precision", "recall", "f1"):
            mkey = metric_key(f"{key}.{name}")
            values[mkey if mkey not in values else f"{mkey}_{k}"] = per[key]  # two names made alike: keep both
    mlflow.log_metrics(values)
    ev = lay.evaluated
    _artifacts(mlflow, {"metrics.json": ev.metrics, "report.md": ev.report, "report.html": ev.report_html,
                        "confusion_matrix.png": ev.confusion_matrix_png, "roc_curve.png": ev.roc_curve_png,
                        "predictions.csv": ev.predictions.csv}, "evaluation")
    name = cfg.mlflow.registered_model
    if name and (record.get("registered") or {}).get("name") == name:
        log.info("mlflow: this model is already %s version %s; not registered again", name,
                 record["registered"]["version"])
    elif name:
        record["registered"] = register(mlflow, record["pyfunc_model_uri"], name, m["accuracy"], cfg.split.seed,
                                        cfg.mlflow.promote_champion)


LOGGERS = {"load": _log_load, "featurize": _log_featurize, "train": _log_train, "evaluate": _log_evaluate}
