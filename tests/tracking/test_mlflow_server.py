"""MLflow against a real tracking server (``mlflow server``, SQLite backend, local artifact root) on
127.0.0.1: the demo logged and registered, the football model predicted from the registry by Spark, by
the pyfunc model in a fresh process without Spark, and by ``mlflow models serve`` over REST."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import free_port, wait_for_port

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'sparkvision[mlflow]')")

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DATABRICKS_"))}
    # `mlflow models serve` starts uvicorn by name: the venv's bin first on PATH.
    env.update(MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(""), start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _cli(uri: str, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run([str(BIN / "sparkvision"), *args], env=_env(uri), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def client(server):
    # This also sets $MLFLOW_TRACKING_URI in this process; conftest removes it after the module.
    mlflow.set_tracking_uri(server)
    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def demo(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "demo"
    logs = _cli(server, "run", "--output", str(out), "--register", "sparkvision_demo",
                "--set", "mlflow.experiment=sparkvision-demo", "--set", "mlflow.promote_champion=true")
    return out, logs


def _artifact(client, run_id: str, path: str, tmp: Path) -> bytes:
    return Path(client.download_artifacts(run_id, path, str(tmp))).read_bytes()


def test_the_demo_logs_one_run_equal_to_its_folder(client, demo, tmp_path):
    out, _ = demo
    record = json.loads((out / "mlflow.json").read_text())
    exp = client.get_experiment_by_name("sparkvision-demo")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [record["run_id"]]
    run = runs[0]
    load, featurize = json.loads((out / "load.json").read_text()), json.loads((out / "featurize.json").read_text())
    train, metrics = json.loads((out / "train.json").read_text()), json.loads((out / "evaluation" / "metrics.json").read_text())
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert p["network"] == featurize["model"] and p["weights_sha256"] == featurize["weights_sha256"]
    assert p["split.seed"] == "12" and float(p["split.test_fraction"]) == pytest.approx(1 / 3)
    assert {k: p[f"best.{k}"] for k in train["tuning"]["best_params"]} == {
        k: str(v) for k, v in train["tuning"]["best_params"].items()}
    assert p["tuning.engine"] == train["tuning"]["engine"]
    # The engine and precision that ran, as the run's featurize.json records them.
    assert (p["featurize.engine"], p["featurize.precision"]) == (featurize["engine"], featurize["precision"])
    for key in ("accuracy", "baseline_accuracy", "roc_auc", "log_loss", "f1_weighted", "precision_weighted",
                "recall_weighted"):
        assert m[key] == pytest.approx(metrics[key], abs=1e-12), key
    assert (m["accuracy_ci95_low"], m["accuracy_ci95_high"]) == pytest.approx(tuple(metrics["accuracy_ci95"]))
    assert m["f1.7"] == pytest.approx(metrics["per_class"]["7"]["f1"])
    assert (m["images_accepted"], m["images_rejected"]) == (load["accepted"], load["rejected"])
    assert m["featurize_images_per_second"] == pytest.approx(featurize["images_per_second"])
    assert tags["runtime"] == "classic" and tags["spark_version"].startswith("4.")
    if (Path(__file__).parents[2] / ".git").exists():
        assert len(tags["git_commit"]) == 40
    # Every artifact is byte for byte the run folder's file.
    files = {"run/load.json": out / "load.json", "run/featurize.json": out / "featurize.json",
             "run/train.json": out / "train.json", "run/config.yaml": out / "config.yaml",
             "run/rejected.csv": out / "rejected.csv"}
    for name in ("metrics.json", "report.md", "report.html", "confusion_matrix.png", "roc_curve.png", "predictions.csv"):
        files[f"evaluation/{name}"] = out / "evaluation" / name
    for artifact, path in files.items():
        assert _artifact(client, run.info.run_id, artifact, tmp_path) == path.read_bytes(), artifact
    cv = json.loads(_artifact(client, run.info.run_id, "cv_results.json", tmp_path))
    assert len(cv["data"]) == len(train["tuning"]["grid"])
    # Without tracking the folder is what it always is: the tracked one only adds mlflow.json.
    from sparkvision.run.layout import RunLayout

    written = {p.name for p in out.iterdir()}
    assert "mlflow.json" in written and written <= RunLayout(str(out)).leftover_names()


def test_the_demo_model_is_registered_with_aliases_and_signature(client, demo):
    out, _ = demo
    record = json.loads((out / "mlflow.json").read_text())
    version = client.get_model_version_by_alias("sparkvision_demo", "challenger")
    assert version.version == record["registered"]["version"] == "1"
    assert client.get_model_version_by_alias("sparkvision_demo", "champion").version == "1"  # the first one
    assert version.tags["split_seed"] == "12"
    info = mlflow.models.get_model_info("models:/sparkvision_demo@challenger")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image"]
    assert {c["name"] for c in info.signature.outputs.to_dict()} >= {"label", "class_index", "probabilities"}
    assert info.metadata["network"] == "efficientnet_lite0" and len(info.metadata["classes"]) == 10
    spark_info = mlflow.models.get_model_info(record["spark_model_uri"])
    assert "spark" in spark_info.flavors


def test_separate_train_and_evaluate_commands_log_one_run(client, demo, server, tmp_path):
    """As the Databricks job runs them: train, then evaluate in another process, log into one run; a second
    evaluate registers nothing new; a deleted run is not resumed."""
    out = tmp_path / "steps"
    shutil.copytree(demo[0], out)
    _cli(server, "train", "--output", str(out), "--set", "mlflow.experiment=steps")
    trained = json.loads((out / "mlflow.json").read_text())
    assert trained["logged"] == ["load", "featurize", "train"] and "registered" not in trained
    _cli(server, "evaluate", "--output", str(out), "--set", "mlflow.experiment=steps", "--register", "steps_model")
    evaluated = json.loads((out / "mlflow.json").read_text())
    assert evaluated["run_id"] == trained["run_id"] and evaluated["registered"]["version"] == "1"
    run = client.get_run(trained["run_id"])
    assert "best.reg_param" in run.data.params and "accuracy" in run.data.metrics
    assert run.data.tags["mlflow.runName"].startswith("efficientnet_lite0")
    _cli(server, "evaluate", "--output", str(out), "--set", "mlflow.experiment=steps", "--register", "steps_model")
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == trained["run_id"]
    assert [v.version for v in client.search_model_versions("name='steps_model'")] == ["1"]
    client.delete_run(trained["run_id"])
    _cli(server, "evaluate", "--output", str(out), "--set", "mlflow.experiment=steps", "--register", "steps_model")
    again = json.loads((out / "mlflow.json").read_text())
    assert again["run_id"] != trained["run_id"] and again["logged"] == ["load", "featurize", "train", "evaluate"]
    assert again["registered"]["version"] == "2"


def test_champion_moves_only_for_a_better_model_on_the_same_split(client, demo, server):
    from sparkvision.tracking import registry

    out, _ = demo
    uri = json.loads((out / "mlflow.json").read_text())["pyfunc_model_uri"]
    name = "sparkvision_promotion"
    first = registry.register(mlflow, uri, name, 0.80, 12, promote=True)
    assert first["aliases"] == ["challenger", "champion"]
    worse = registry.register(mlflow, uri, name, 0.70, 12, promote=True)
    other_split = registry.register(mlflow, uri, name, 0.99, 13, promote=True)
    assert worse["aliases"] == other_split["aliases"] == ["challenger"]
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]
    better = registry.register(mlflow, uri, name, 0.90, 12, promote=True)
    not_asked = registry.register(mlflow, uri, name, 0.95, 12, promote=False)
    assert client.get_model_version_by_alias(name, "champion").version == better["version"]
    assert client.get_model_version_by_alias(name, "challenger").version == not_asked["version"]


def test_an_unreachable_server_fails_before_any_work(tmp_path):
    port = free_port()
    proc = subprocess.run([str(BIN / "sparkvision"), "run", "--output", str(tmp_path / "x")],
                          env=_env(f"http://127.0.0.1:{port}"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"MLflow tracking server http://127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "x" / "images.parquet").exists()


# ---- the football model: Spark predict from the registry == pyfunc without Spark == REST -------------------

PYFUNC_CLIENT = """
import json, sys
sys.modules["pyspark"] = None  # the image model needs no Spark: importing it would fail here
import mlflow, pandas as pd
files = json.loads(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/sparkvision_football@challenger")
out = model.predict(pd.DataFrame({"image": [open(f, "rb").read() for f in files]}))
print(json.dumps({"label": list(out["label"]), "probabilities": [list(p) for p in out["probabilities"]]}))
"""


@pytest.fixture(scope="module")
def football_registered(server, football, tmp_path_factory):
    root = tmp_path_factory.mktemp("football")
    _cli(server, "run", "--images", str(football), "--output", str(root / "run"), "--register", "sparkvision_football",
         "--set", "mlflow.experiment=football")
    _cli(server, "predict", "--model", "models:/sparkvision_football@challenger", "--images", str(football),
         "--output", str(root / "predicted"))
    return root


def test_pyfunc_in_a_fresh_process_equals_spark_predict_from_the_registry(server, football, football_registered):
    predicted = pd.read_parquet(football_registered / "predicted" / "predictions.parquet").sort_values("image_id")
    summary = json.loads((football_registered / "predicted" / "predict.json").read_text())
    assert summary["model"]["uri"] == "models:/sparkvision_football@challenger" and summary["accepted"] == 60
    files = [str(football / i) for i in predicted["image_id"]]
    proc = subprocess.run([sys.executable, "-c", PYFUNC_CLIENT, json.dumps(files)], env=_env(server),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["label"] == list(predicted["predicted_label"])
    np.testing.assert_allclose(np.array(out["probabilities"]), np.stack(predicted["probability"]), atol=1e-5)


def test_served_model_answers_a_rest_request_with_one_jpeg(server, football, football_registered):
    predicted = pd.read_parquet(football_registered / "predicted" / "predictions.parquet").sort_values("image_id")
    first = predicted.iloc[0]
    port = free_port()
    log = open(football_registered / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/sparkvision_football@challenger",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=_env(server), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(port, 180), (football_registered / "serve.log").read_text()[-3000:]
        image = (football / first["image_id"]).read_bytes()
        rows = [[base64.b64encode(image).decode()], [base64.b64encode(b"not an image").decode()]]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}})
        for _ in range(60):  # the port opens before the model has loaded
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(),
                                             {"Content-Type": "application/json"})
                text = urllib.request.urlopen(req, timeout=120).read().decode()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail((football_registered / "serve.log").read_text()[-3000:])
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
    # Strict JSON: a failed row is null, never a bare NaN that JSON clients other than Python's refuse.
    answer = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c} in {text[:500]}"))
    row, bad = answer["predictions"]
    assert row["label"] == first["predicted_label"] and row["error"] is None
    np.testing.assert_allclose(row["probabilities"], first["probability"], atol=1e-5)
    assert bad["label"] is bad["confidence"] is bad["probabilities"] is None and "not an image" in bad["error"]


def test_ui_screenshot(server, demo, tmp_path):
    """With SPARKVISION_SCREENSHOTS=DIR: the MLflow UI's run page and the demo's report.html, as docs/mlflow.md
    shows them (Chromium)."""
    dest = os.environ.get("SPARKVISION_SCREENSHOTS")
    chromium = shutil.which("chromium")
    if not dest or not chromium:
        pytest.skip("set SPARKVISION_SCREENSHOTS=DIR (and install chromium) to make docs/mlflow.md's screenshots")
    out, _ = demo
    record = json.loads((out / "mlflow.json").read_text())
    url = f"{server}/#/experiments/{record['experiment_id']}/runs/{record['run_id']}"
    png = Path(dest) / "mlflow-run.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=20000",
                    f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    assert png.stat().st_size > 10_000
    sys.path.insert(0, str(Path(__file__).parents[1] / "run"))
    from test_report_html import screenshot

    screenshot(out / "evaluation" / "report.html", Path(dest) / "report-html.png", width=1200, height=1800)
