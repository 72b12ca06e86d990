"""`sparkvision databricks` against a local fake of the Jobs, Workspace and Files endpoints (127.0.0.1)."""

import json
import logging
import os
from pathlib import Path

import pytest

from sparkvision import cli
from sparkvision.deploy import bundle, databricks

from bundle_helpers import ROOT, engines_extra
from fake_databricks import METRICS, SHORT_NAME, TOKEN, USER, FakeWorkspace

pytest.importorskip("databricks.sdk")
# The run-time stack's TensorFlow and Keras, which classic tasks install beside the wheel (jobs/compute.yml).
ENGINES = engines_extra()  # the bundle installs them too
STACK_LIBRARIES = [{"pypi": {"package": "tensorflow>=2.16,<3"}}, {"pypi": {"package": "keras>=3.0,<4"}},
                   *({"pypi": {"package": p}} for p in ENGINES)]
WHEEL_DIR = f"/Workspace/Users/{USER}/.sparkvision/wheels"


@pytest.fixture
def wheel(tmp_path) -> Path:
    path = tmp_path / "sparkvision-0.1.0-py3-none-any.whl"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: the fake only checks it arrives
    return path


@pytest.fixture
def workspace(request, monkeypatch, tmp_path):
    """A fake workspace, with auth from environment variables only (no profile file)."""
    with FakeWorkspace(getattr(request, "param", "success")) as ws:
        for key in [k for k in os.environ if k.startswith(("DATABRICKS_", "BUNDLE_VAR_"))]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("DATABRICKS_HOST", ws.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such-databrickscfg"))
        yield ws
        assert ws.problems == []


def _cli(capsys, caplog, *argv) -> tuple[int, str]:
    caplog.set_level(logging.DEBUG)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert TOKEN not in text and TOKEN[4:] not in text, "the token leaked into output or logs"
    return code, text


def _submit(capsys, caplog, wheel, *extra, root=ROOT):
    return _cli(capsys, caplog, "databricks", "submit", "--root", str(root), "--wheel", str(wheel), "--poll", "0.05",
                "--timeout", "30", *extra)


def test_submit_runs_the_bundle_pipeline_and_reports_metrics(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel)
    assert code == 0, text
    tasks = workspace.submitted["tasks"]
    assert [t["task_key"] for t in tasks] == ["load", "featurize", "train", "evaluate"]
    params = tasks[0]["python_wheel_task"]["parameters"]
    assert params[:2] == ["--images", "/Volumes/main/sparkvision/data/images"]
    # dev: the caller's own run folder (${workspace.current_user.short_name}, resolved like the CLI does)
    assert params[2:4] == ["--output", f"/Volumes/main/sparkvision/data/runs/dev/{SHORT_NAME}"]
    cluster = tasks[0]["new_cluster"]
    assert cluster["spark_conf"]["spark.executor.memory"] == "8g"  # infra/clusters/cpu.yml
    assert cluster["data_security_mode"] == "DATA_SECURITY_MODE_DEDICATED" and cluster["kind"] == "CLASSIC_PREVIEW"
    assert all(t["libraries"] == [{"whl": f"{WHEEL_DIR}/{wheel.name}"}, *STACK_LIBRARIES] for t in tasks)
    assert "environments" not in workspace.submitted
    assert list(workspace.uploads) == [f"{WHEEL_DIR}/{wheel.name}"]
    assert "run 101: TERMINATED SUCCESS" in text and f"{workspace.url}/#job/1/run/101" in text
    assert f"accuracy {METRICS['accuracy']}" in text  # read from the per-user folder
    # The bundle's experiment and registered model, named as a dev deployment of the caller names them
    experiment = ["--set", f"mlflow.experiment=/Workspace/Users/{USER}/[dev {SHORT_NAME}] sparkvision-dev"]
    assert tasks[2]["python_wheel_task"]["parameters"][-2:] == experiment
    assert tasks[3]["python_wheel_task"]["parameters"][4:] == [
        *experiment, "--register", f"main.sparkvision.dev_{SHORT_NAME}_sparkvision_classifier",
        "--set", "mlflow.promote_champion=false"]


def test_submit_with_the_gpu_cluster_from_the_variable_file(workspace, wheel, project, capsys, caplog):
    overrides = project / bundle.OVERRIDES_FILE.format(target="dev")
    overrides.parent.mkdir(parents=True)
    overrides.write_text(json.dumps({"cluster": "${var.gpu_cluster}"}))
    code, text = _submit(capsys, caplog, wheel, root=project)
    assert code == 0, text
    cluster = workspace.submitted["tasks"][0]["new_cluster"]
    assert cluster["spark_version"].endswith("gpu-ml-scala2.13")
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "0.25"


def test_gpu_cluster_by_var_is_refused_like_the_cli_does(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel, "--var", "cluster=${var.gpu_cluster}")
    assert code == 2 and "'cluster' is a complex variable" in text and "variable-overrides.json" in text
    assert workspace.submitted is None


def test_submit_serverless_sends_environments_and_environment_keys(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel, "--target", "dev-serverless")
    assert code == 0, text
    body = workspace.submitted
    assert body["environments"] == [{"environment_key": "default", "spec": {
        "environment_version": "4", "dependencies": [f"{WHEEL_DIR}/{wheel.name}", "tensorflow>=2.16,<3",
                                                      "keras>=3.0,<4", *ENGINES, "mlflow-skinny>=3.1,<4"]}}]
    tasks = body["tasks"]
    assert [t["task_key"] for t in tasks] == ["load", "featurize", "train", "evaluate"]
    for t in tasks:
        assert t["environment_key"] == "default"
        assert not {"new_cluster", "job_cluster_key", "existing_cluster_id", "libraries"} & set(t)
    assert tasks[1]["python_wheel_task"]["parameters"][:2] == [
        "--output", f"/Volumes/main/sparkvision/data/runs/dev-serverless/{SHORT_NAME}"]
    evaluate = tasks[3]["python_wheel_task"]["parameters"]
    assert f"mlflow.experiment=/Workspace/Users/{USER}/[dev {SHORT_NAME}] sparkvision-dev-serverless" in evaluate
    assert evaluate[evaluate.index("--register") + 1] == f"main.sparkvision.dev_{SHORT_NAME}_sparkvision_classifier_serverless"
    assert "run 101: TERMINATED SUCCESS" in text and f"accuracy {METRICS['accuracy']}" in text


def test_submit_predict_serverless_on_prod_paths(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel, "--target", "prod-serverless", "--job", "sparkvision_predict",
                         "--var", "catalog=vision", "--var", "service_principal=0000-sp")
    assert code == 0, text
    (task,) = workspace.submitted["tasks"]
    assert task["python_wheel_task"]["parameters"] == [
        "--model", "/Volumes/vision/sparkvision/data/runs/prod-serverless/model",
        "--images", "/Volumes/vision/sparkvision/data/new_images",
        "--output", "/Volumes/vision/sparkvision/data/predictions/prod-serverless"]
    assert task["environment_key"] == "default" and len(workspace.submitted["environments"]) == 1


def test_submit_prod_registers_in_the_prod_model(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel, "--target", "prod", "--var", "service_principal=0000-sp",
                         "--var", "catalog=vision", "--var", "promote_champion=true")
    assert code == 0, text
    evaluate = workspace.submitted["tasks"][3]["python_wheel_task"]["parameters"]
    assert evaluate[4:] == ["--set", "mlflow.experiment=/Workspace/Users/0000-sp/sparkvision-prod",
                            "--register", "vision.sparkvision.sparkvision_classifier",
                            "--set", "mlflow.promote_champion=true"]


def test_submit_spec_refuses_references_only_a_deployment_knows():
    resolved = {"resources": {"jobs": {"j": {
        "environments": [{"environment_key": "default", "spec": {"environment_version": "4"}}],
        "tasks": [{"task_key": "a", "environment_key": "default", "python_wheel_task": {
            "parameters": ["--set", "mlflow.experiment_id=${resources.experiments.e.id}"]}}]}}}}
    with pytest.raises(ValueError, match=r"\$\{resources.experiments.e.id\} is known only once the bundle is deployed"):
        databricks.submit_spec(resolved, "j", "/Workspace/w.whl")


def test_submit_spec_points_only_the_built_wheel_at_the_upload():
    resolved = {"resources": {"jobs": {"j": {
        "job_clusters": [{"job_cluster_key": "main", "new_cluster": {"spark_version": "17.3.x", "node_type_id": "n"}}],
        "environments": [{"environment_key": "default", "spec": {"environment_version": "4", "dependencies": [
            "../dist/*.whl", "/Volumes/c/s/v/other-1.0-py3-none-any.whl", "tensorflow>=2.16,<3"]}},
                         {"environment_key": "unused", "spec": {"environment_version": "4"}}],
        "tasks": [{"task_key": "a", "job_cluster_key": "main", "libraries": [{"whl": "../dist/*.whl"}, {"pypi": {"package": "x"}}]},
                  {"task_key": "b", "environment_key": "default"}]}}}}
    spec = databricks.submit_spec(resolved, "j", "/Workspace/w.whl")
    a, b = spec["tasks"]
    assert a["new_cluster"]["spark_version"] == "17.3.x" and "job_cluster_key" not in a
    assert a["libraries"] == [{"whl": "/Workspace/w.whl"}, {"pypi": {"package": "x"}}]
    assert b == {"task_key": "b", "environment_key": "default"}
    assert spec["environments"] == [{"environment_key": "default", "spec": {"environment_version": "4", "dependencies": [
        "/Workspace/w.whl", "/Volumes/c/s/v/other-1.0-py3-none-any.whl", "tensorflow>=2.16,<3"]}}]
    assert resolved["resources"]["jobs"]["j"]["tasks"][0]["libraries"][0] == {"whl": "../dist/*.whl"}  # not modified
    with pytest.raises(KeyError, match="no job 'nope'"):
        databricks.submit_spec(resolved, "nope", "/w.whl")


@pytest.mark.parametrize("user, short", [("someone@example.com", "someone"), ("Jane.Doe+ml@example.com", "jane_doe_ml"),
                                         ("Zoë-Ann@example.com", "zoë_ann")])
def test_short_name_is_the_clis(user, short):
    assert databricks.short_name(user) == short
    assert databricks.with_current_user({"p": ["/x/${workspace.current_user.short_name}/y"]},
                                        {"short_name": short}) == {"p": [f"/x/{short}/y"]}


@pytest.mark.parametrize("workspace", ["failed"], indirect=True)
def test_failed_run_is_an_error_with_the_task_error(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel)
    assert code == 1
    assert "TERMINATED FAILED" in text and "task train: FAILED - ValueError: no features" in text
    assert "task evaluate: UPSTREAM_FAILED" in text


@pytest.mark.parametrize("workspace", ["running"], indirect=True)
def test_timeout_stops_waiting(workspace, wheel, capsys, caplog):
    code, text = _cli(capsys, caplog, "databricks", "submit", "--root", str(ROOT), "--wheel", str(wheel),
                      "--poll", "0.05", "--timeout", "0.3")
    assert code == 3 and "run 101 still RUNNING after 0.3 s" in text


@pytest.mark.parametrize("workspace", ["unauthorized"], indirect=True)
def test_401_is_a_clear_error_without_the_token(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel)
    assert code == 2 and "Invalid access token" in text
    assert workspace.submitted is None


@pytest.mark.parametrize("workspace", ["throttled"], indirect=True)
def test_429_is_retried_by_the_sdk(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel)
    assert code == 0, text
    assert workspace.throttled == 1
    assert workspace.requests.count(("POST", "/api/2.2/jobs/runs/submit")) == 2


def test_run_deployed_job_by_name(workspace, capsys, caplog):
    code, text = _cli(capsys, caplog, "databricks", "run", "--job-name", "sparkvision-pipeline", "--poll", "0.05",
                      "--output", "/Volumes/main/sparkvision/data/runs/dev")
    assert code == 0, text
    assert ("POST", "/api/2.2/jobs/run-now") in workspace.requests and "run 102: TERMINATED SUCCESS" in text


def test_run_unknown_job_says_deploy_first(workspace, capsys, caplog):
    code, text = _cli(capsys, caplog, "databricks", "run", "--job-name", "nope")
    assert code == 2 and "no job named 'nope'" in text and "databricks bundle deploy" in text


def test_status_of_a_run(workspace, capsys, caplog):
    code, text = _cli(capsys, caplog, "databricks", "status", "101")
    assert code == 0 and "run 101: RUNNING" in text
