"""MLflow tracking: every ``train`` / ``evaluate`` / ``run`` logged as one MLflow run, the model in two
flavours, registered on request.

Off unless a tracking URI is known: ``mlflow.tracking_uri`` in the config, else ``$MLFLOW_TRACKING_URI``,
else the workspace's own server when running on Databricks. Without one nothing here is imported by
the pipeline, nothing is logged and the run folder is exactly what it is without MLflow.

What is logged comes from the run folder's files after the stage wrote them (so the MLflow run and the
folder agree): ``load.json`` / ``featurize.json`` / ``train.json`` / ``evaluation/metrics.json`` give the
params and metrics, the files themselves are the artifacts. The run's id is kept in ``OUT/mlflow.json``,
so the stages of a Databricks job (separate tasks, separate processes) log into one MLflow run as long
as they belong to the same trained model (the train fingerprint).

Credentials for the server come from MLflow's own environment variables (``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, Databricks' profile): never from the URI, never logged.
"""

from __future__ import annotations

from sparkvision.errors import TrackingError
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from sparkvision.run import storage
from sparkvision.settings import Config, ConfigError
from sparkvision.run.layout import RunLayout

log = logging.getLogger(__name__)

SPARK_MODEL = "spark-model"      # the Spark PipelineModel (mlflow.spark flavour)
PYFUNC_MODEL = "image-model"     # raw image bytes -> label + probabilities, no Spark (pyfunc flavour)
CHALLENGER, CHAMPION = "challenger", "champion"
ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION"


def tracking_uri(cfg: Config) -> str | None:
    uri = cfg["mlflow"]["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and os.environ.get(ON_DATABRICKS):
        uri = "databricks"
    return uri or None


def enabled(cfg: Config) -> bool:
    """Whether this command logs to MLflow. On Databricks, where tracking is on by default, a runtime
    without MLflow only gets a warning, unless tracking was asked for (a URI, or ``--register``)."""
    if tracking_uri(cfg) is None:
        return False
    asked = cfg["mlflow"]["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI") or cfg["mlflow"]["registered_model"]
    if not asked:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            log.warning("mlflow: not installed on this Databricks runtime, so this run is not tracked "
                        "(add the library mlflow-skinny>=3.1,<4 to the task)")
            return False
    return True


def check_uri(uri: str | None, key: str) -> None:
    """A tracking or registry URI carries no credentials (they would land in configs and logs)."""
    from urllib.parse import urlsplit

    if uri and "://" in uri and "@" in urlsplit(uri).netloc:
        raise ConfigError(f"{key}: the URL holds credentials (user or token before '@'); give them in "
                          "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")


def _mlflow(cfg: Config):
    """MLflow, pointed at the configured server (its extra must be installed)."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError("MLflow tracking is on (a tracking URI is set) but MLflow is not installed: "
                            "pip install 'sparkvision[mlflow]', or unset MLFLOW_TRACKING_URI") from None
    mlflow.set_tracking_uri(tracking_uri(cfg))
    registry = cfg["mlflow"]["registry_uri"] or os.environ.get("MLFLOW_REGISTRY_URI")
    name = cfg["mlflow"]["registered_model"] or ""
    if not registry and tracking_uri(cfg).startswith("databricks") and name.count(".") == 2:
        registry = "databricks-uc"  # three-level names live in Unity Catalog
    if registry:
        mlflow.set_registry_uri(registry)
    return mlflow


def _shown(uri: str) -> str:
    from sparkvision.secrets import redact_text

    return redact_text(uri)


def connect(cfg: Config) -> None:
    """Fail fast, before any work, when tracking is on but the server cannot be used."""
    check_uri(tracking_uri(cfg), "MLFLOW_TRACKING_URI / config key 'mlflow.tracking_uri'")
    mlflow = _mlflow(cfg)
    with _errors(cfg, "MLflow tracking server"), _few_retries():
        _experiment(mlflow, cfg)


# MLflow's defaults (7 retries with backoff, 120 s timeouts) take minutes to report a server that is not
# there: the check before any work uses fewer, unless the user set their own; logging later keeps MLflow's.
QUICK_CHECK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextmanager
def _few_retries():
    added = [k for k in QUICK_CHECK if k not in os.environ]
    os.environ.update({k: QUICK_CHECK[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def _errors(cfg: Config, what: str):
    """Any MLflow client error as a :class:`TrackingError` naming the server, credentials redacted."""
    try:
        yield
    except (TrackingError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, HTTP and store errors mean the same to the user
        raise TrackingError(f"{what} {_shown(tracking_uri(cfg) or '')}: {type(exc).__name__}: "
                            f"{_shown(str(exc))[:500]}") from None


def _experiment(mlflow, cfg: Config) -> str | None:
    name = cfg["mlflow"]["experiment"] or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return mlflow.set_experiment(name).experiment_id
    mlflow.MlflowClient().search_experiments(max_results=1)  # reachable?
    return None


def _default_experiment(mlflow) -> str:
    """The experiment ``mlflow.start_run()`` would use (``$MLFLOW_EXPERIMENT_ID``, a notebook's, else "0")."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id() or "0"


# ---- what a command logs ----------------------------------------------------------------------------------

GROUPS = {"train": ("load", "featurize", "train"), "evaluate": ("load", "featurize", "train", "evaluate"),
          "run": ("load", "featurize", "train", "evaluate")}


def track(spark, cfg: Config, command: str, started: float | None = None) -> dict | None:
    """Log what ``command`` (begun at ``started``, epoch seconds) left in the run folder; returns the MLflow
    record (``OUT/mlflow.json``)."""
    if command not in GROUPS or not enabled(cfg):
        return None
    with _errors(cfg, f"{command}: logging to the MLflow tracking server"):
        return _track(spark, cfg, command, started)


def _track(spark, cfg: Config, command: str, started: float | None) -> dict:
    mlflow = _mlflow(cfg)
    lay = RunLayout(cfg["output"]["dir"])
    trained = storage.read_json(lay.train)
    experiment_id = _experiment(mlflow, cfg)
    record = _resumable(mlflow, lay, trained["fingerprint"], experiment_id) if command == "evaluate" else None
    if record is None:
        record = {"run_id": None, "train_fingerprint": trained["fingerprint"], "logged": []}
    if not record["run_id"]:  # a new run, dated from the command's start (the UI shows the command's duration)
        record["run_id"] = mlflow.MlflowClient().create_run(
            experiment_id or _default_experiment(mlflow), start_time=int((started or time.time()) * 1000),
            run_name=cfg["mlflow"]["run_name"] or _run_name(cfg)).info.run_id
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
             _shown(tracking_uri(cfg)))
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


def _run_name(cfg: Config) -> str:
    return f"{cfg['network']['name']}-{Path(cfg['output']['dir'].rstrip('/')).name}"


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
    from sparkvision.run.spark import is_remote

    mode = "connect" if is_remote(spark) else "classic"
    return f"databricks ({mode})" if os.environ.get(ON_DATABRICKS) else mode


def _tags(spark, cfg: Config) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("sparkvision")
    except PackageNotFoundError:
        ours = "unknown"
    tags = {"spark_version": spark.version, "runtime": runtime(spark), "sparkvision.version": ours,
            "sparkvision.output": _shown(cfg["output"]["dir"])}
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


def _log_load(mlflow, spark, cfg, lay: RunLayout, record: dict) -> None:
    load = storage.read_json(lay.load)
    mlflow.log_params({"data.source": _shown(cfg["data"]["images"] or cfg["data"]["manifest"] or ""),
                       "data.max_pixels": cfg["data"]["max_pixels"]})
    mlflow.log_metrics({"images_discovered": load["discovered"], "images_accepted": load["accepted"],
                        "images_rejected": load["rejected"]})
    _artifacts(mlflow, {"load.json": lay.load, "rejected.csv": lay.rejected_csv, "config.yaml": lay.config}, "run")


def _log_featurize(mlflow, spark, cfg, lay: RunLayout, record: dict) -> None:
    f = storage.read_json(lay.featurize)
    mlflow.log_params({"network": f["model"], "weights_sha256": f["weights_sha256"], "feature_dim": f["feature_dim"],
                       "featurize.engine": "tensorflow", "featurize.batch_size": cfg["featurize"]["batch_size"]})
    if f.get("images_per_second"):
        mlflow.log_metric("featurize_images_per_second", f["images_per_second"])
    _artifacts(mlflow, {"featurize.json": lay.featurize}, "run")


def _log_train(mlflow, spark, cfg, lay: RunLayout, record: dict) -> None:
    import pandas as pd

    t = storage.read_json(lay.train)
    tuning, s = t["tuning"], cfg["split"]
    best = tuning["best_params"]
    mlflow.log_params({
        "split.seed": s["seed"], "split.test_fraction": s["test_fraction"],
        "split.validation_fraction": s["validation_fraction"], "classes": len(t["classes"]),
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


def _log_evaluate(mlflow, spark, cfg, lay: RunLayout, record: dict) -> None:
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
    name = cfg["mlflow"]["registered_model"]
    if name and (record.get("registered") or {}).get("name") == name:
        log.info("mlflow: this model is already %s version %s; not registered again", name,
                 record["registered"]["version"])
    elif name:
        record["registered"] = register(mlflow, record["pyfunc_model_uri"], name, m["accuracy"],
                                        cfg["split"]["seed"], cfg["mlflow"]["promote_champion"])


LOGGERS = {"load": _log_load, "featurize": _log_featurize, "train": _log_train, "evaluate": _log_evaluate}


# ---- the model, two flavours -----------------------------------------------------------------------------

def pinned_requirements(spark_flavour: bool) -> list[str]:
    """The packages the model runs with, at the versions this process runs (what was tested)."""
    from importlib.metadata import PackageNotFoundError, version

    wanted = ["mlflow", "numpy", "pandas", "pillow", "keras", "h5py"]
    wanted += ["tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"]
    if spark_flavour:
        wanted += ["pyspark", "pyarrow", "pyyaml", "scipy", "threadpoolctl"]
    out = []
    for dist in wanted:
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            if dist == "mlflow":  # mlflow-skinny alone
                out.append(f"mlflow-skinny=={version('mlflow-skinny')}")
    return out


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _package_dir() -> str:
    """The sparkvision package's folder (shipped whole as the models' code path)."""
    return str(Path(__file__).resolve().parents[1])


def _example_image(spark, lay: RunLayout) -> bytes:
    """The smallest accepted image of the run: the models' input example."""
    from pyspark.sql import functions as F

    from sparkvision.columns import CONTENT

    row = (spark.read.parquet(lay.images).select(CONTENT).orderBy(F.length(CONTENT), CONTENT).limit(1).first())
    return bytes(row[CONTENT])


def log_models(mlflow, spark, cfg: Config, lay: RunLayout) -> dict:
    """Log the trained pipeline with ``mlflow.spark`` and as the pyfunc image model; return their URIs."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from sparkvision.ml import image_model

    from sparkvision.stages import predict
    from sparkvision.columns import CONTENT, PREDICTION
    from sparkvision.run.spark import is_remote

    pipeline = predict.load_model(lay.model)
    featurizer = pipeline.stages[0]
    weights = featurizer.resolveWeights()
    info = image_model.describe(pipeline)
    example = _example_image(spark, lay)
    metadata = {k: info[k] for k in ("network", "weights_sha256", "classes")}
    out = {}
    with tempfile.TemporaryDirectory(prefix="sparkvision-model-") as tmp:
        classifier_json = os.path.join(tmp, "classifier.json")
        with open(classifier_json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        signature = ModelSignature(
            Schema([ColSpec(DataType.binary, image_model.INPUT)]),
            Schema([ColSpec(DataType.string, image_model.LABEL), ColSpec(DataType.long, image_model.CLASS_INDEX),
                    ColSpec(DataType.double, image_model.CONFIDENCE),
                    ColSpec(Array(DataType.double), image_model.PROBABILITIES),
                    ColSpec(DataType.string, image_model.ERROR, required=False)]))
        with warnings.catch_warnings():  # the signature is given: MLflow's advice to infer one from type hints is moot
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            pyfunc = mlflow.pyfunc.log_model(
                name=PYFUNC_MODEL, python_model=os.path.join(_package_dir(), "tracking", "pyfunc_model.py"),
                artifacts={"classifier": classifier_json, "weights": weights}, code_paths=[_package_dir()],
                signature=signature, input_example=pd.DataFrame({image_model.INPUT: [example]}),
                pip_requirements=pinned_requirements(spark_flavour=False), metadata=metadata)
        out["pyfunc_model_uri"] = pyfunc.model_uri
        spark_signature = ModelSignature(Schema([ColSpec(DataType.binary, CONTENT)]),
                                         Schema([ColSpec(DataType.double, PREDICTION)]))
        if is_remote(spark):
            # mlflow.spark needs the JVM (py4j) to copy the model; over Spark Connect the saved folder is
            # logged as it is (PipelineModel.load reads it), with the same requirements beside it.
            local = os.path.join(tmp, SPARK_MODEL)
            storage.copy_tree(lay.model, local)
            mlflow.log_artifacts(local, SPARK_MODEL)
            out["spark_model_folder"] = f"runs:/{mlflow.active_run().info.run_id}/{SPARK_MODEL}"  # not an MLmodel
        else:
            spark_model = mlflow.spark.log_model(
                pipeline, SPARK_MODEL, code_paths=[_package_dir()], signature=spark_signature,
                pip_requirements=pinned_requirements(spark_flavour=True), metadata=metadata)
            out["spark_model_uri"] = spark_model.model_uri
    log.info("mlflow: models logged (%s)", ", ".join(out.values()))
    return out


# ---- registry ---------------------------------------------------------------------------------------------

def register(mlflow, model_uri: str, name: str, accuracy: float, split_seed: int, promote: bool) -> dict:
    """Register the pyfunc model as ``name`` with the alias ``challenger``; with ``promote`` it also takes
    ``champion`` when its test accuracy beats the champion's on the same split seed (or there is none)."""
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    client.set_model_version_tag(name, version, "test_accuracy", repr(float(accuracy)))
    client.set_model_version_tag(name, version, "split_seed", str(split_seed))
    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = [CHALLENGER]
    if promote:
        champion = _by_alias(client, name, CHAMPION)
        why = None
        if champion is None:
            why = "no champion yet"
        elif champion.tags.get("split_seed") != str(split_seed):
            log.info("mlflow: %s champion v%s was tested on split seed %s, this model on %s: not comparable, "
                     "champion kept", name, champion.version, champion.tags.get("split_seed"), split_seed)
        elif accuracy > float(champion.tags.get("test_accuracy", "nan")):
            why = f"test accuracy {accuracy:.4f} > {float(champion.tags['test_accuracy']):.4f}"
        if why:
            client.set_registered_model_alias(name, CHAMPION, version)
            aliases.append(CHAMPION)
            log.info("mlflow: %s v%s is the new champion (%s)", name, version, why)
    log.info("mlflow: registered %s version %s (%s)", name, version, ", ".join(aliases))
    return {"name": name, "version": str(version), "aliases": aliases}


def _by_alias(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST: no such alias yet
        return None


# ---- predict from the registry ------------------------------------------------------------------------------

def is_model_uri(path: str) -> bool:
    return path.startswith(("models:/", "runs:/"))


def fetch_model(cfg: Config, uri: str, dest: str) -> dict:
    """Download a registered (pyfunc) model and put its Spark pipeline at ``dest`` (a folder on the
    output's storage, which the cluster can read) and its weights file in the weights cache, so
    ``predict`` runs exactly as with a folder. Returns what was fetched (for ``predict.json``): ``version``
    is the ``models:/NAME/N`` that was downloaded, a ``models:/NAME@alias`` being resolved once, before."""
    from sparkvision.ml.models import registry
    from sparkvision.ml.models.weights import resolve_weights

    mlflow = _mlflow(cfg)
    version = _pinned(mlflow, uri)
    with tempfile.TemporaryDirectory(prefix="sparkvision-fetch-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=version or uri, dst_path=tmp)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"--model {uri}: {type(exc).__name__}: {_shown(str(exc))[:500]}") from None
        artifacts = Path(local, "artifacts")
        classifier = artifacts / "classifier.json"
        if not classifier.is_file():
            raise TrackingError(f"--model {uri} is not a sparkvision image model (no artifacts/classifier.json)")
        info = json.loads(classifier.read_text(encoding="utf-8"))
        weights = next((p for p in artifacts.iterdir() if p.name != "classifier.json"), None)
        if weights is None:
            raise TrackingError(f"--model {uri}: the model holds no weights file beside classifier.json")
        resolve_weights(registry.get(info["network"]), str(weights), cache_dir=cfg["network"]["cache_dir"],
                        allow_download=False, expected_sha256=info["weights_sha256"])
        storage.delete(dest)
        _pipeline_of(info, cfg).write().overwrite().save(dest)
    return {"uri": uri, "version": version, "network": info["network"],
            "weights_sha256": info["weights_sha256"], "classes": info["classes"]}


def _pinned(mlflow, uri: str) -> str | None:
    """``models:/NAME/N`` for a registered model's URI, its alias resolved here, once; None for other URIs
    (``runs:/...``). The caller downloads this exact version and records it: resolving the alias again
    after the download would record another version than the one used if the alias moved meanwhile."""
    m = re.match(r"^models:/([^/@]+)(?:@(.+)|/(\d+))$", uri)
    if not m:
        return None
    name, alias, number = m.groups()
    if alias:
        try:
            number = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
        except Exception as exc:  # noqa: BLE001 - MlflowException: no such model or alias, server unreachable
            raise TrackingError(f"--model {uri}: {type(exc).__name__}: {_shown(str(exc))[:500]}") from None
    return f"models:/{name}/{number}"


def _pipeline_of(info: dict, cfg: Config):
    """The Spark pipeline (featurizer -> classifier -> labels) that ``classifier.json`` describes."""
    from sparkvision.ml.featurizer import DeepImageFeaturizer
    from sparkvision.ml.logistic import LogisticModel
    from sparkvision.stages.train import assemble

    n = cfg["network"]
    featurizer = DeepImageFeaturizer(modelName=info["network"], weightsChecksum=info["weights_sha256"],
                                     maxPixels=info["max_pixels"], batchSize=info["batch_size"],
                                     cacheDir=n["cache_dir"], mirrorUrl=n["mirror_url"], allowDownload=n["download"])
    classifier = LogisticModel(coefficients=info["coefficients"], intercepts=info["intercepts"],
                               multinomial=info["multinomial"])
    return assemble(featurizer, classifier, info["classes"])
