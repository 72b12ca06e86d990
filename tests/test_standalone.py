"""A real standalone cluster on loopback (master + 2 workers from infra/standalone/local-cluster.sh).

The pipeline submitted to it with ``sparkvision submit --cluster-spec ci`` must give what local mode
gives; and with a worker SIGKILLed in the middle of featurization it must still finish, with every
image featurized exactly once and the same result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "standalone" / "local-cluster.sh"
PARTITIONS = 8
JOB = [
    "--set", f"featurize.partitions={PARTITIONS}", "--set", "featurize.batch_size=8",
    "--set", "train.reg_param=[0.01, 0.1]", "--set", "train.elastic_net_param=[0.0]",
    "--set", "train.max_iter=[50]", "--set", "train.folds=2",
]
METRICS = ("accuracy", "baseline_accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
           "f1_macro", "roc_auc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", SPARKVISION_CLUSTER_SPEC="ci",
               SPARK_HOME=str(Path(__import__("pyspark").__file__).parent))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        pytest.skip("no Java: a standalone master needs a JVM")
    state = tmp_path_factory.mktemp("cluster")
    env = _env(SPARK_MASTER_PORT=str(_free_port()), SPARK_MASTER_WEBUI_PORT=str(_free_port()))
    url = subprocess.run(["bash", str(SCRIPT), "start", str(state)], env=env, check=True, capture_output=True,
                         text=True, timeout=180).stdout.strip().splitlines()[-1]
    yield {"url": url, "state": state}
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], env=env, timeout=120)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from sparkvision.sample_data import make_digits

    return Path(make_digits(str(tmp_path_factory.mktemp("digits")), per_class=8, digits=(0, 1, 2, 3, 4, 7)))


def _run(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparkvision.cli", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _submit(cluster, images: Path, out: Path, ui_port: int) -> subprocess.Popen:
    return _run(["submit", "--cluster-spec", "ci", "--master", cluster["url"], "--conf", f"spark.ui.port={ui_port}",
                 "--", "run", "--images", str(images), "--output", str(out), *JOB])


@pytest.fixture(scope="module")
def local_run(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    _finish(_run(["run", "--master", "local[2]", "--images", str(images), "--output", str(out), *JOB]))
    return out


@pytest.fixture(scope="module")
def cluster_run(cluster, images, local_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("on-cluster")
    log = _finish(_submit(cluster, images, out, _free_port()))
    return out, log


def _assert_same_result(spark, a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "evaluation" / "metrics.json").read_text()) for d in (a, b))
    for key in METRICS:
        assert mb[key] == pytest.approx(ma[key], abs=1e-6), key
    assert ma["confusion_matrix"] == mb["confusion_matrix"]
    pa, pb = (spark.read.parquet(str(d / "evaluation" / "predictions.parquet")) for d in (a, b))
    cols = ["image_id", "label", "predicted_label"]
    assert_df_equality(pa.select(cols), pb.select(cols), ignore_row_order=True)
    probs = [pa.select("image_id", F.posexplode("probability")), pb.select("image_id", F.posexplode("probability"))]
    assert_approx_df_equality(probs[0], probs[1], 1e-5, ignore_row_order=True)


def _assert_each_image_once(spark, out: Path) -> None:
    load = json.loads((out / "load.json").read_text())
    features = spark.read.parquet(str(out / "features.parquet"))
    images = spark.read.parquet(str(out / "images.parquet")).select("image_id")
    assert features.count() == features.select("image_id").distinct().count() == load["accepted"] == load["discovered"]
    assert_df_equality(features.select("image_id"), images, ignore_row_order=True)


def test_cluster_is_two_workers_on_loopback(cluster):
    assert cluster["url"].startswith("spark://127.0.0.1:")
    assert len(list(cluster["state"].glob("worker-*.pid"))) == 2


def test_cluster_run_equals_local_run(spark, cluster_run, local_run):
    out, log = cluster_run
    assert f"{PARTITIONS} tasks" in log
    _assert_each_image_once(spark, out)
    _assert_same_result(spark, local_run, out)


def _rest(ui_port: int, path: str = ""):
    """GET the driver's REST API for the (only) application; None while it is not up."""
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    try:
        app = json.load(urllib.request.urlopen(base, timeout=2))[0]["id"]
        return json.load(urllib.request.urlopen(f"{base}/{app}{path}", timeout=2))
    except (OSError, ValueError, IndexError, KeyError):
        return None


def _featurize_job(ui_port: int) -> dict | None:
    """The running featurization job (the write of features.parquet), with its task counts."""
    for job in _rest(ui_port, "/jobs?status=running") or []:
        if job.get("description") == "sparkvision featurize" and job["numTasks"] >= PARTITIONS:
            return job
    return None


def test_worker_killed_during_featurization(spark, cluster, cluster_run, images, tmp_path):
    """SIGKILL worker 1 (and its executor and Python workers) while both workers are featurizing."""
    out, ui_port = tmp_path / "fault", _free_port()
    proc = _submit(cluster, images, out, ui_port)
    deadline, job = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        job = _featurize_job(ui_port)
        if job and job["numActiveTasks"] == 2:  # one task on each 1-core worker
            break
        time.sleep(0.2)
    assert job and proc.poll() is None, "never saw featurization running on both workers"
    os.killpg(int((cluster["state"] / "worker-1.pid").read_text()), signal.SIGKILL)
    after = job
    while proc.poll() is None and after.get("status") == "RUNNING":
        time.sleep(0.5)
        after = _rest(ui_port, f"/jobs/{job['jobId']}") or after
    log = _finish(proc)
    assert "Lost executor" in log, "the driver never noticed the lost worker"
    assert after["status"] == "SUCCEEDED" and after["numFailedTasks"] >= 1, after
    _assert_each_image_once(spark, out)
    _assert_same_result(spark, cluster_run[0], out)
