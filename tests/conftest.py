"""Shared fixtures: one local[2] SparkSession for the whole session, sample data paths."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BUCKET, _env, free_port, wait_for_port

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


# --- servers on 127.0.0.1 that several test modules start (one per module) ---------------------------

@pytest.fixture(scope="module")
def s3_server():
    # `python -m moto.server`, not the moto_server script: the image installs the test packages with
    # pip --target, which puts scripts where no PATH looks
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto's server is not installed (pip install 'moto[server]'; the test extra has it)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for_port(port, 30), "moto's S3 server did not start"
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """The environment an S3 client reads (endpoint, keys, region), a fresh bucket, and an empty working
    directory: anything written to a local path by mistake would show up there."""
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    monkeypatch.chdir(tmp_path)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))  # nothing local


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java: a Spark Connect server needs a JVM")
    state = tmp_path_factory.mktemp("connect")
    port = free_port()
    env = _env(SPARK_LOG_DIR=str(state), SPARK_PID_DIR=str(state), SPARK_IDENT_STRING="sparkvision-test")
    sbin = Path(env["SPARK_HOME"]) / "sbin"
    subprocess.run(["bash", str(sbin / "start-connect-server.sh"), "--master", "local[2]",
                    "--conf", f"spark.connect.grpc.binding.port={port}",
                    "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
                    "--conf", "spark.ui.enabled=false"], env=env, check=True, capture_output=True, timeout=120)
    if not wait_for_port(port, 120):
        logs = "\n".join(p.read_text()[-3000:] for p in state.glob("*.out"))
        subprocess.run(["bash", str(sbin / "stop-connect-server.sh")], env=env, timeout=60)
        pytest.fail(f"the Spark Connect server did not listen on {port}:\n{logs}")
    yield f"sc://127.0.0.1:{port}"
    subprocess.run(["bash", str(sbin / "stop-connect-server.sh")], env=env, timeout=120)
