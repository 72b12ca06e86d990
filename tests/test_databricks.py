"""`sparkvision databricks` against a local fake of the Jobs, Workspace and Files endpoints (127.0.0.1)."""

import logging
import os
from pathlib import Path

import pytest

from sparkvision import cli

from fake_databricks import METRICS, TOKEN, FakeWorkspace

pytest.importorskip("databricks.sdk")
ROOT = Path(__file__).resolve().parents[1]


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


def _submit(capsys, caplog, wheel, *extra):
    return _cli(capsys, caplog, "databricks", "submit", "--root", str(ROOT), "--wheel", str(wheel), "--poll", "0.05",
                "--timeout", "30", *extra)


def test_submit_runs_the_bundle_pipeline_and_reports_metrics(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel)
    assert code == 0, text
    tasks = workspace.submitted["tasks"]
    assert [t["task_key"] for t in tasks] == ["load", "featurize", "train", "evaluate"]
    assert tasks[0]["python_wheel_task"]["parameters"][:2] == ["--images", "/Volumes/main/sparkvision/data/images"]
    assert tasks[0]["new_cluster"]["spark_conf"]["spark.executor.memory"] == "8g"  # infra/clusters/cpu.yml
    assert list(workspace.uploads) == [f"/Workspace/Users/someone@example.com/.sparkvision/wheels/{wheel.name}"]
    assert "run 101: TERMINATED SUCCESS" in text and f"{workspace.url}/#job/1/run/101" in text
    assert f"accuracy {METRICS['accuracy']}" in text


def test_submit_with_gpu_profile_uses_the_gpu_cluster(workspace, wheel, capsys, caplog):
    code, text = _submit(capsys, caplog, wheel, "--var", "cluster_profile=gpu")
    assert code == 0, text
    cluster = workspace.submitted["tasks"][0]["new_cluster"]
    assert cluster["spark_version"].endswith("gpu-ml-scala2.13")
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "0.25"


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
