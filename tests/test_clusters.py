"""Cluster specs (infra/clusters): rendering to spark-submit settings, validation, no secrets."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sparkvision import cli, clusters
from sparkvision.clusters import ClusterSpecError

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "infra" / "clusters"
TOKEN = "dapi" + "0123456789abcdef" * 2


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "spec.yml"
    path.write_text(text)
    return path


MINIMAL = "name: t\nworkers: 1\ndriver: {memory: 1g}\nexecutor: {cores: 2, memory: 2g}\n"


@pytest.mark.parametrize("name", ["cpu", "gpu", "ci", "legacy-sparkdl"])
def test_shipped_specs_load(name):
    spec = clusters.load_spec(SPECS / f"{name}.yml")
    conf = clusters.submit_conf(spec)
    assert conf["spark.executor.cores"] == str(spec.executor_cores)
    assert conf["spark.cores.max"] == str(spec.workers * spec.executor_cores)


def test_gpu_spec_renders_settings_spark_accepts(spark):
    """Spark's own parsers read the rendered settings: sizes, executor GPUs and the per-task GPU share."""
    spec = clusters.load_spec("gpu")  # by name, from infra/clusters
    conf = clusters.submit_conf(spec)
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.task.resource.gpu.amount"] == "0.25"
    assert conf["spark.jars.packages"] == "org.apache.hadoop:hadoop-aws:3.5.0"
    script = Path(conf["spark.executor.resource.gpu.discoveryScript"])
    assert script.is_absolute() and script.stat().st_mode & stat.S_IXUSR

    jconf = spark._jvm.org.apache.spark.SparkConf(False)
    for key, value in conf.items():
        jconf.set(key, value)
    assert jconf.getSizeAsBytes("spark.executor.memory") == 12 * 1024**3
    assert jconf.getSizeAsBytes("spark.executor.memoryOverhead") == 12 * 1024**3
    utils = spark._jvm.org.apache.spark.resource.ResourceUtils
    executor = utils.parseAllResourceRequests(jconf, "spark.executor")
    assert executor.size() == 1 and executor.head().amount() == 1 and executor.head().id().resourceName() == "gpu"
    task = utils.parseResourceRequirements(jconf, "spark.task").head()
    # Four tasks share one GPU, and the executor's CPUs allow exactly four tasks: neither is idle.
    tasks_per_gpu = task.numParts()
    assert tasks_per_gpu == spec.executor_cores // int(conf["spark.task.cpus"]) == 4


def test_gpu_discovery_script_lists_gpus(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([str(SPECS / "gpu-discovery.sh")], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["0", "1"]}
    out = subprocess.run([str(SPECS / "gpu-discovery.sh")], env={**env, "CUDA_VISIBLE_DEVICES": "3"},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["addresses"] == ["3"]


def test_worker_env_carries_gpu_resources():
    env = clusters.worker_env(clusters.load_spec("gpu"))
    assert env["SPARKVISION_WORKER_CORES"] == "8" and env["SPARKVISION_WORKER_MEMORY"] == "12g"
    assert "-Dspark.worker.resource.gpu.amount=1" in env["SPARK_WORKER_OPTS"]
    assert "gpu-discovery.sh" in env["SPARK_WORKER_OPTS"]
    assert "SPARK_WORKER_OPTS" not in clusters.worker_env(clusters.load_spec("cpu"))


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "spark_conf: {spark.hadoop.fs.s3a.secret.key: abc123}\n", "spark_conf.spark.hadoop.fs.s3a.secret.key"),
    (MINIMAL + f"spark_conf: {{spark.executorEnv.HELPER: {TOKEN}}}\n", "spark_conf.spark.executorEnv.HELPER"),
    (MINIMAL + "databricks: {token: abc}\n", "databricks.token"),
])
def test_specs_with_credentials_are_refused(tmp_path, text, message):
    with pytest.raises(ClusterSpecError, match="credential") as info:
        clusters.load_spec(_write(tmp_path, text))
    assert message in str(info.value) and "abc123" not in str(info.value) and TOKEN not in str(info.value)


def test_secret_references_and_flags_are_not_credentials(tmp_path):
    spec = clusters.load_spec(_write(tmp_path, MINIMAL + "spark_conf:\n  spark.hadoop.fs.s3a.secret.key: '{{secrets/aws/key}}'\n"
                                     "  spark.security.credentials.hive.enabled: false\n"))
    assert spec.spark_conf["spark.security.credentials.hive.enabled"] == "false"


def test_rendered_commands_never_carry_secrets(monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    spec = clusters.load_spec("gpu")
    cmd = clusters.submit_command(spec, "spark://h:7077", ["run"])
    assert TOKEN not in " ".join(cmd)
    with pytest.raises(ClusterSpecError, match="credential"):
        clusters.submit_command(spec, "spark://h:7077", ["run"], {"spark.hadoop.fs.s3a.access.key": "AKIAABCDEFGHIJKLMNOP"})


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "colour: red\n", "unknown key(s) ['colour']"),
    (MINIMAL.replace("memory: 2g", "memory: lots"), "'executor.memory' must be a size like 4g"),
    (MINIMAL.replace("cores: 2", "cores: 0"), "'executor.cores' must be a positive integer"),
    (MINIMAL + "gpu: {amount: 1, task_amount: 2, discovery_script: x.sh}\n", "'gpu.task_amount'"),
    (MINIMAL + "gpu: {amount: 1, task_amount: 0.5, discovery_script: missing.sh}\n", "missing.sh not found"),
    (MINIMAL + "standalone: {maven: [hadoop-aws]}\n", "not group:artifact:version"),
    (MINIMAL.replace("driver: {memory: 1g}\n", ""), "missing key 'driver'"),
])
def test_bad_specs_name_the_key(tmp_path, text, message):
    with pytest.raises(ClusterSpecError) as info:
        clusters.load_spec(_write(tmp_path, text))
    assert message in str(info.value) and str(tmp_path / "spec.yml") in str(info.value)


def test_submit_dry_run_prints_the_spark_submit_command(capsys):
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run",
                     "--conf", "spark.ui.port=4050", "--", "run", "--images", "/data/x"]) == 0
    cmd = capsys.readouterr().err
    assert "spark-submit --master spark://127.0.0.1:7077 --deploy-mode client" in cmd
    assert "--conf spark.executor.memory=1g" in cmd and "--conf spark.ui.port=4050" in cmd
    assert cmd.rstrip().endswith("sparkvision_driver.py run --images /data/x")


def test_submit_reports_missing_spec(capsys):
    assert cli.main(["submit", "--cluster-spec", "nope", "--master", "spark://h:7077", "--dry-run"]) == 2
    assert "cluster spec not found: nope" in capsys.readouterr().err


def test_cluster_worker_env_is_shell(capsys):
    assert cli.main(["cluster", "worker-env", "--cluster-spec", "ci"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["export SPARKVISION_WORKER_CORES=1", "export SPARKVISION_WORKER_MEMORY=1g"]


def test_driver_script_runs_the_cli():
    out = subprocess.run([sys.executable, clusters.driver_script(), "--help"], capture_output=True, text=True, check=True)
    assert "submit" in out.stdout and "weights" in out.stdout


@pytest.mark.parametrize("argv, code, text", [
    (["help"], 0, "worker SPARK_MASTER_URL"),
    (["worker"], 2, "usage: worker spark://HOST:PORT"),
])
def test_entrypoint_modes(argv, code, text):
    # Inside the image: the installed entrypoint; in a checkout: the script it is copied from.
    entrypoint = shutil.which("sparkvision-entrypoint") or str(ROOT / "infra" / "docker" / "entrypoint.sh")
    proc = subprocess.run(["bash", entrypoint, *argv], capture_output=True, text=True)
    assert proc.returncode == code and text in proc.stdout + proc.stderr


def test_databricks_cluster_from_the_same_spec():
    cpu, gpu = clusters.load_spec("cpu"), clusters.load_spec("gpu")
    cluster = clusters.databricks_cluster(cpu)
    assert cluster["num_workers"] == cpu.workers and cluster["spark_version"].endswith("cpu-ml-scala2.13")
    assert cluster["spark_conf"]["spark.executor.memory"] == cpu.executor_memory
    assert cluster["spark_conf"]["spark.executor.memoryOverhead"] == cpu.executor_memory_overhead
    assert "spark.driver.memory" not in cluster["spark_conf"] and "spark.jars.packages" not in cluster["spark_conf"]
    assert clusters.databricks_cluster(gpu)["spark_conf"]["spark.task.resource.gpu.amount"] == "0.25"
    with pytest.raises(ClusterSpecError, match="no 'databricks' section"):
        clusters.databricks_cluster(clusters.load_spec("ci"))


def test_legacy_sparkdl_profile_carries_the_sparkdl_package():
    legacy = clusters.load_spec("legacy-sparkdl")
    assert clusters.databricks_libraries(legacy) == [{"maven": {"coordinates": "databricks:spark-deep-learning:1.5.0-spark2.4-s_2.11"}}]
    assert clusters.submit_conf(legacy)["spark.jars.packages"] == "databricks:spark-deep-learning:1.5.0-spark2.4-s_2.11"
    assert clusters.databricks_cluster(legacy)["spark_version"].startswith("6.4.x")
    # the standalone-only hadoop-aws never reaches a Databricks library list
    assert clusters.databricks_libraries(clusters.load_spec("cpu")) == []
