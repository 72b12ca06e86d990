"""Shared fixtures: one local[2] SparkSession for the whole session, sample data paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# The suite never logs to a developer's MLflow server, nor acts as if it ran on Databricks: the tracking
# tests start their own server and set the URI themselves.
_NOT_INHERITED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "DATABRICKS_RUNTIME_VERSION")
for _var in _NOT_INHERITED:
    os.environ.pop(_var, None)


@pytest.fixture(autouse=True, scope="module")
def _no_tracking_after_the_module():
    """``mlflow.set_tracking_uri`` sets $MLFLOW_TRACKING_URI: a module that points MLflow at its server must
    not leave later modules' subprocesses (CLI runs, Spark workers) logging to it after it stopped."""
    yield
    for var in _NOT_INHERITED:
        os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FOOTBALL = SHARED / "data" / "football"
# Debian's darknet package ships recognisable photos; `make photos` unpacks them here.
PHOTOS = Path(os.environ.get("SPARKVISION_TEST_PHOTOS", ROOT / ".cache" / "photos"))


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("sparkvision-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def football() -> Path:
    if not FOOTBALL.is_dir():
        pytest.skip(f"../shared/data/football not found at {FOOTBALL}: the football images live outside the project")
    return FOOTBALL


@pytest.fixture(scope="session")
def photos() -> Path:
    if not (PHOTOS / "dog.jpg").is_file():
        pytest.skip(f"darknet sample photos not found in {PHOTOS}: run `make photos` (apt-get download darknet)")
    return PHOTOS


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> Path:
    """3 digit classes x 10 images: small enough to featurize in a few seconds."""
    from sparkvision.run.sample_data import make_digits

    return Path(make_digits(str(tmp_path_factory.mktemp("digits")), per_class=10, digits=(0, 1, 7)))


@pytest.fixture(scope="session")
def digits_model(spark, digits_small, tmp_path_factory) -> Path:
    """A model trained once on ``digits_small`` (the smallest grid), for the tests that predict or stream."""
    from sparkvision import cli

    out = tmp_path_factory.mktemp("trained")
    assert cli.main(["run", "--images", str(digits_small), "--output", str(out), "--set", "train.reg_param=[0.1]",
                     "--set", "train.elastic_net_param=[0.0]", "--set", "train.folds=2"]) == 0
    return out / "model"


@pytest.fixture(scope="session")
def football_loaded(spark, football):
    from sparkvision.settings import DataSettings
    from sparkvision.stages import load as loader

    return loader.load_images(spark, DataSettings(images=str(football)))


@pytest.fixture(scope="session")
def football_features(spark, football_loaded):
    """Football images featurized once with the offline default model, cached for every test that needs them."""
    from pyspark import StorageLevel

    from sparkvision.ml.featurizer import DeepImageFeaturizer

    featurizer = DeepImageFeaturizer(modelName="efficientnet_lite0")
    features = featurizer.transform(football_loaded.images).drop("content").persist(StorageLevel.MEMORY_AND_DISK)
    features.count()
    return featurizer, features


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """A copy of everything the Databricks bundle reads (bundle.yml, jobs/, cluster specs), to edit."""
    import shutil

    dest = tmp_path / "proj"
    dest.mkdir()
    for name in ("bundle.yml", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("jobs", "infra/clusters", "infra/databricks"):
        shutil.copytree(ROOT / folder, dest / folder)
    return dest


