"""The MLflow model registry: a trained model registered with the aliases ``challenger`` / ``champion``,
and a registered model (``models:/NAME@alias``, ``models:/NAME/N``, ``runs:/...``) fetched back as a
Spark pipeline folder for ``predict`` and ``stream``, its alias resolved once."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

from sparkvision.errors import TrackingError
from sparkvision.ml.models import registry as networks
from sparkvision.ml.models import weights as weights_cache
from sparkvision.run import storage
from sparkvision.settings import Settings
from sparkvision.tracking import pyfunc
from sparkvision.tracking.server import mlflow_for, shown

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"


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


def fetch_model(cfg: Settings, uri: str, dest: str) -> dict:
    """Download a registered (pyfunc) model and put its Spark pipeline at ``dest`` (a folder on the
    output's storage, which the cluster can read) and its weights file in the weights cache, so
    ``predict`` runs exactly as with a folder. Returns what was fetched (for ``predict.json``): ``version``
    is the ``models:/NAME/N`` that was downloaded, a ``models:/NAME@alias`` being resolved once, before."""
    mlflow = mlflow_for(cfg)
    version = _pinned(mlflow, uri)
    with tempfile.TemporaryDirectory(prefix="sparkvision-fetch-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=version or uri, dst_path=tmp)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"--model {uri}: {type(exc).__name__}: {shown(str(exc))[:500]}") from None
        artifacts = Path(local, "artifacts")
        classifier = artifacts / "classifier.json"
        if not classifier.is_file():
            raise TrackingError(f"--model {uri} is not a sparkvision image model (no artifacts/classifier.json)")
        info = json.loads(classifier.read_text(encoding="utf-8"))
        weights = next((p for p in artifacts.iterdir() if p.name != "classifier.json"), None)
        if weights is None:
            raise TrackingError(f"--model {uri}: the model holds no weights file beside classifier.json")
        weights_cache.resolve_weights(networks.get(info["network"]), str(weights), cache_dir=cfg.network.cache_dir,
                                      allow_download=False, expected_sha256=info["weights_sha256"])
        storage.delete(dest)
        pyfunc.pipeline_of(info, cfg).write().overwrite().save(dest)
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
            raise TrackingError(f"--model {uri}: {type(exc).__name__}: {shown(str(exc))[:500]}") from None
    return f"models:/{name}/{number}"
