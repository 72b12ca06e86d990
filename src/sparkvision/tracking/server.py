"""The MLflow server a command logs to: whether tracking is on, MLflow pointed at it, a check before any
work, and its errors as :class:`TrackingError` with credentials redacted (used by :mod:`.runs`,
:mod:`.registry` and :mod:`.pyfunc`).

Off unless a tracking URI is known: ``mlflow.tracking_uri`` in the config, else ``$MLFLOW_TRACKING_URI``,
else the workspace's own server when running on Databricks. Without one MLflow is never imported.

Credentials for the server come from MLflow's own environment variables (``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, Databricks' profile): never from the URI, never logged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager

from sparkvision.errors import ConfigError, TrackingError
from sparkvision.secrets import redact_text
from sparkvision.settings import Settings, check_uri

log = logging.getLogger(__name__)

ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION"


def tracking_uri(cfg: Settings) -> str | None:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and os.environ.get(ON_DATABRICKS):
        uri = "databricks"
    return uri or None


def enabled(cfg: Settings) -> bool:
    """Whether this command logs to MLflow. On Databricks, where tracking is on by default, a runtime
    without MLflow only gets a warning, unless tracking was asked for (a URI, or ``--register``)."""
    if tracking_uri(cfg) is None:
        return False
    asked = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.registered_model
    if not asked and importlib.util.find_spec("mlflow") is None:
        log.warning("mlflow: not installed on this Databricks runtime, so this run is not tracked "
                    "(add the library mlflow-skinny>=3.1,<4 to the task)")
        return False
    return True


def mlflow_for(cfg: Settings):
    """MLflow, pointed at the configured server (its extra must be installed)."""
    try:
        import mlflow  # optional
    except ImportError:
        raise TrackingError("MLflow tracking is on (a tracking URI is set) but MLflow is not installed: "
                            "pip install 'sparkvision[mlflow]', or unset MLFLOW_TRACKING_URI") from None
    mlflow.set_tracking_uri(tracking_uri(cfg))
    registry = cfg.mlflow.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI")
    name = cfg.mlflow.registered_model or ""
    if not registry and tracking_uri(cfg).startswith("databricks") and name.count(".") == 2:
        registry = "databricks-uc"  # three-level names live in Unity Catalog
    if registry:
        mlflow.set_registry_uri(registry)
    return mlflow


def shown(uri: str) -> str:
    """A URI or message as it may be logged: credentials redacted."""
    return redact_text(uri)


def connect(cfg: Settings) -> None:
    """Fail fast, before any work, when tracking is on but the server cannot be used."""
    check_uri(tracking_uri(cfg), "MLFLOW_TRACKING_URI / config key 'mlflow.tracking_uri'")
    mlflow = mlflow_for(cfg)
    with errors(cfg, "MLflow tracking server"), _few_retries():
        experiment(mlflow, cfg)


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
def errors(cfg: Settings, what: str):
    """Any MLflow client error as a :class:`TrackingError` naming the server, credentials redacted."""
    try:
        yield
    except (TrackingError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, HTTP and store errors mean the same to the user
        raise TrackingError(f"{what} {shown(tracking_uri(cfg) or '')}: {type(exc).__name__}: "
                            f"{shown(str(exc))[:500]}") from None


def experiment(mlflow, cfg: Settings) -> str | None:
    """The configured experiment's id (created if need be), else None after checking the server answers."""
    name = cfg.mlflow.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return mlflow.set_experiment(name).experiment_id
    mlflow.MlflowClient().search_experiments(max_results=1)  # reachable?
    return None


def default_experiment(mlflow) -> str:
    """The experiment ``mlflow.start_run()`` would use (``$MLFLOW_EXPERIMENT_ID``, a notebook's, else "0")."""
    from mlflow.tracking.fluent import _get_experiment_id  # optional

    return _get_experiment_id() or "0"
