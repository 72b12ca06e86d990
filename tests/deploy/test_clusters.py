"""Cluster specs (infra/clusters): rendering to spark-submit settings, validation, no secrets."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sparkvision import cli
from sparkvision.deploy import clusters
from sparkvision.run import auth
from sparkvision.deploy.clusters import ClusterSpecError

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "infra" / "clusters"
ENTRYPOINT = shutil.which("sparkvision-entrypoint") or str(ROOT / "infra" / "docker" / "entrypoint.sh")
TOKEN = "dapi" + "0123456789abcdef" * 2
SPARK_SECRET = "s3cr3t-" + "0123456789abcdef" * 2
AUTH_ENV = (auth.SECRET_FILE_ENV, auth.SECRET_ENV, auth.INSECURE_ENV, auth.SPARK_DAEMON_SECRET_ENV)
#: RPC encryption on a daemon's command line, as auth.ENCRYPTION has it for drivers and executors.
DAEMON_ENCRYPTION = {f"-D{key}={value}" for key, value in auth.ENCRYPTION.items()}


@pytest.fixture(autouse=True)
def no_spark_secret(monkeypatch):
    """Each test starts without a configured Spark secret (and without SPARKVISION_INSECURE)."""
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)


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
    monkeypatch.setenv(auth.SECRET_ENV, SPARK_SECRET)
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


def test_submit_dry_run_prints_the_spark_submit_command(capsys, monkeypatch):
    monkeypatch.setenv(auth.SECRET_ENV, SPARK_SECRET)
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run",
                     "--conf", "spark.ui.port=4050", "--", "run", "--images", "/data/x"]) == 0
    cmd = capsys.readouterr().err
    assert "spark-submit --master spark://127.0.0.1:7077 --deploy-mode client" in cmd
    assert "--conf spark.executor.memory=1g" in cmd and "--conf spark.ui.port=4050" in cmd
    assert "--conf spark.authenticate=true" in cmd and SPARK_SECRET not in cmd
    assert cmd.rstrip().endswith("sparkvision_driver.py run --images /data/x")


@pytest.mark.parametrize("job_arg", [
    "network.mirror_url=https://u:Tok3n-9f8e7d6c@mirror.example.com/",
    "spark.conf={spark.hadoop.fs.s3a.secret.key: Tok3n-9f8e7d6c}",
    "spark.conf={fs.azure.account.key.acct.dfs.core.windows.net: Tok3n-9f8e7d6c}",
])
def test_submit_refuses_credentials_in_job_arguments(capsys, monkeypatch, job_arg):
    monkeypatch.setenv(auth.SECRET_ENV, SPARK_SECRET)
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run",
                     "--", "run", "--set", job_arg]) == 2
    err = capsys.readouterr().err
    assert "holds a credential" in err and "Tok3n-9f8e7d6c" not in err and "spark-submit --master" not in err


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
    proc = subprocess.run(["bash", ENTRYPOINT, *argv], capture_output=True, text=True)
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


# --- Spark authentication (deploy/auth.py, the entrypoint's daemons) --------------------------------

def _secret_file(tmp_path, text: str = SPARK_SECRET + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "spark_secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secret_from_file_or_environment(tmp_path, caplog):
    path = _secret_file(tmp_path)
    assert auth.read_secret({auth.SECRET_FILE_ENV: str(path)}) == SPARK_SECRET
    assert auth.read_secret({auth.SECRET_ENV: f" {SPARK_SECRET} "}) == SPARK_SECRET
    assert auth.read_secret({auth.SECRET_FILE_ENV: str(path), auth.SECRET_ENV: SPARK_SECRET}) == SPARK_SECRET
    assert auth.read_secret({}) is None and auth.read_secret({auth.SECRET_ENV: ""}) is None
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level("WARNING"):
        assert auth.read_secret({auth.SECRET_FILE_ENV: str(path)}) == SPARK_SECRET
    assert "readable by group or others" in caplog.text and SPARK_SECRET not in caplog.text


@pytest.mark.parametrize("env, message", [
    ({auth.SECRET_FILE_ENV: "{tmp}/missing"}, "cannot read the secret file"),
    ({auth.SECRET_FILE_ENV: "{tmp}"}, "cannot read the secret file"),
    ({auth.SECRET_FILE_ENV: "{tmp}/empty"}, "is empty"),
    ({auth.SECRET_FILE_ENV: "{tmp}/two-lines"}, "more than one line"),
    ({auth.SECRET_FILE_ENV: "{tmp}/spark_secret", auth.SECRET_ENV: "other"}, "both set and differ"),
])
def test_bad_secret_settings_are_refused_without_showing_the_secret(tmp_path, env, message):
    _secret_file(tmp_path)
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "two-lines").write_text(SPARK_SECRET + "\n" + SPARK_SECRET + "\n")
    with pytest.raises(auth.AuthError, match=message) as info:
        auth.read_secret({k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert SPARK_SECRET not in str(info.value) and "other" not in str(info.value)


def test_session_conf_only_for_standalone_masters():
    env = {auth.SECRET_ENV: SPARK_SECRET}
    assert auth.session_conf("spark://h:7077", environ=env) == {
        "spark.authenticate": "true", "spark.authenticate.secret": SPARK_SECRET,
        "spark.network.crypto.enabled": "true", "spark.network.crypto.cipher": "AES/GCM/NoPadding",
        "spark.network.crypto.authEngineVersion": "2"}
    assert auth.session_conf("spark://a:7077,b:7077", environ=env)["spark.authenticate"] == "true"
    for master in ("local[2]", None, "yarn"):
        assert auth.session_conf(master, environ=env) == {}
    assert auth.session_conf("spark://h:7077", environ={}) == {}
    with pytest.raises(auth.AuthError, match="spark.authenticate=true for spark://h:7077 but no shared secret"):
        auth.session_conf("spark://h:7077", authenticate=True, environ={})


def test_configure_session_sets_the_secret_in_process(tmp_path, monkeypatch):
    from pyspark import SparkConf

    monkeypatch.setenv(auth.SECRET_FILE_ENV, str(_secret_file(tmp_path)))
    conf = SparkConf(loadDefaults=False).set("spark.master", "spark://127.0.0.1:7077")
    assert auth.configure_session(conf) is True
    assert conf.get("spark.authenticate") == "true" and conf.get("spark.authenticate.secret") == SPARK_SECRET
    assert conf.get("spark.network.crypto.enabled") == "true"
    local = SparkConf(loadDefaults=False).set("spark.master", "local[2]")
    assert auth.configure_session(local) is False and local.get("spark.authenticate.secret") is None
    assert local.get("spark.network.crypto.enabled") is None
    monkeypatch.delenv(auth.SECRET_FILE_ENV)
    asked = SparkConf(loadDefaults=False).setAll([("spark.master", "spark://h:7077"), ("spark.authenticate", "true")])
    with pytest.raises(auth.AuthError, match=auth.SECRET_FILE_ENV):
        auth.configure_session(asked)


def test_submit_turns_authentication_on_and_never_shows_the_secret(tmp_path, monkeypatch, capsys):
    spec = clusters.load_spec("ci")
    monkeypatch.setenv(auth.SECRET_FILE_ENV, str(_secret_file(tmp_path)))
    cmd = clusters.submit_command(spec, "spark://h:7077", ["run"], {"spark.authenticate": "false",
                                                                      "spark.network.crypto.enabled": "false"})
    assert cmd[cmd.index("spark.authenticate=true") - 1] == "--conf" and "spark.authenticate=false" not in cmd
    for key, value in auth.ENCRYPTION.items():  # encryption comes with the authentication, not to be turned off
        assert cmd[cmd.index(f"{key}={value}") - 1] == "--conf"
    assert "spark.network.crypto.enabled=false" not in cmd
    assert not any(SPARK_SECRET in c for c in cmd)
    assert not any("spark.authenticate" in c or "spark.network.crypto" in c
                   for c in clusters.submit_command(spec, "local[2]", ["run"]))
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "--conf spark.authenticate=true" in captured.err and SPARK_SECRET not in captured.out + captured.err
    assert "--conf spark.network.crypto.enabled=true" in captured.err
    # Nor can the secret be passed as a setting.
    with pytest.raises(ClusterSpecError, match="credential"):
        clusters.submit_command(spec, "spark://h:7077", ["run"], {"spark.authenticate.secret": SPARK_SECRET})


def test_submit_to_a_master_without_a_secret_is_refused(monkeypatch, capsys):
    spec = clusters.load_spec("ci")
    with pytest.raises(auth.AuthError, match="refusing to submit to spark://h:7077 without Spark authentication"):
        clusters.submit_command(spec, "spark://h:7077", ["run"])
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert auth.SECRET_FILE_ENV in err and auth.INSECURE_ENV in err
    insecure = " ".join(clusters.submit_command(spec, "spark://h:7077", ["run"], insecure=True))
    assert "spark.authenticate" not in insecure and "spark.network.crypto" not in insecure
    monkeypatch.setenv(auth.INSECURE_ENV, "1")
    assert cli.main(["submit", "--cluster-spec", "ci", "--master", "spark://127.0.0.1:7077", "--dry-run"]) == 0


@pytest.fixture
def fake_spark(tmp_path):
    """A SPARK_HOME whose bin/spark-class records its arguments and environment instead of starting Java."""
    home, record = tmp_path / "spark", tmp_path / "record"
    (home / "bin").mkdir(parents=True)
    record.mkdir()
    stub = home / "bin" / "spark-class"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > {record}/args\nenv -0 > {record}/env\n')
    stub.chmod(0o755)

    def run(*argv, **env):
        for old in record.iterdir():
            old.unlink()
        base = {k: v for k, v in os.environ.items() if k not in AUTH_ENV and not k.startswith(("SPARK_", "SPARKVISION_"))}
        proc = subprocess.run(["bash", ENTRYPOINT, *argv], env={**base, "SPARK_HOME": str(home), **env},
                              capture_output=True, text=True, timeout=60)
        args = env_vars = None
        if (record / "args").exists():
            args = (record / "args").read_text().split("\0")[:-1]
            env_vars = dict(v.split("=", 1) for v in (record / "env").read_text().split("\0") if "=" in v)
        return proc, args, env_vars

    return run


@pytest.mark.parametrize("role", ["master", "worker"])
def test_entrypoint_refuses_daemons_without_a_secret(fake_spark, role):
    proc, args, _ = fake_spark(role, *(["spark://127.0.0.1:7077"] if role == "worker" else []))
    assert proc.returncode == 2 and args is None, proc.stderr
    assert f"refusing to start the {role} without a shared secret" in proc.stderr
    assert "SPARKVISION_SPARK_SECRET_FILE" in proc.stderr and "SPARKVISION_INSECURE=1" in proc.stderr


def test_entrypoint_master_binds_the_configured_host_and_gets_the_secret_by_environment(fake_spark, tmp_path):
    proc, args, env = fake_spark("master", SPARKVISION_SPARK_SECRET_FILE=str(_secret_file(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert args[:6] == ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "7077", "--webui-port"]
    assert not any(SPARK_SECRET in a for a in args) and SPARK_SECRET not in proc.stdout + proc.stderr
    assert env["_SPARK_AUTH_SECRET"] == SPARK_SECRET and env["SPARK_LOCAL_IP"] == "127.0.0.1"  # the UI binds there too
    assert "-Dspark.authenticate=true" in env["SPARK_MASTER_OPTS"].split()
    assert DAEMON_ENCRYPTION <= set(env["SPARK_MASTER_OPTS"].split())  # the drivers' and executors' settings
    assert "-Dspark.master.rest.enabled=false" in env["SPARK_MASTER_OPTS"].split()  # unauthenticated REST API off
    assert not any(SPARK_SECRET in v for k, v in env.items() if k != "_SPARK_AUTH_SECRET")

    proc, args, env = fake_spark("master", SPARK_AUTH_SECRET=SPARK_SECRET, SPARK_LOCAL_IP="10.1.2.3",
                                 SPARK_MASTER_PORT="7177", SPARK_MASTER_WEBUI_PORT="8180")
    assert proc.returncode == 0, proc.stderr
    assert args[1:7] == ["--host", "10.1.2.3", "--port", "7177", "--webui-port", "8180"]
    assert env["_SPARK_AUTH_SECRET"] == SPARK_SECRET and "SPARK_AUTH_SECRET" not in env


def test_entrypoint_worker_with_secret_and_insecure_mode(fake_spark, tmp_path):
    secret = _secret_file(tmp_path, mode=0o640)
    proc, args, env = fake_spark("worker", "spark://10.0.0.1:7077", SPARKVISION_SPARK_SECRET_FILE=str(secret),
                                 SPARK_LOCAL_IP="10.0.0.2")
    assert proc.returncode == 0, proc.stderr
    assert "readable by group or others" in proc.stderr
    assert args[0] == "org.apache.spark.deploy.worker.Worker" and args[-1] == "spark://10.0.0.1:7077"
    assert args[args.index("--host") + 1] == "10.0.0.2" and not any(SPARK_SECRET in a for a in args)
    assert env["_SPARK_AUTH_SECRET"] == SPARK_SECRET and "-Dspark.authenticate=true" in env["SPARK_WORKER_OPTS"]
    assert DAEMON_ENCRYPTION <= set(env["SPARK_WORKER_OPTS"].split())

    proc, args, env = fake_spark("worker", "spark://127.0.0.1:7077", SPARKVISION_INSECURE="1")
    assert proc.returncode == 0 and "WITHOUT authentication" in proc.stderr
    assert "_SPARK_AUTH_SECRET" not in env and "-Dspark.authenticate=false" in env["SPARK_WORKER_OPTS"]
    assert "spark.network.crypto" not in env["SPARK_WORKER_OPTS"]  # encryption needs the authentication
    assert args[args.index("--host") + 1] == "127.0.0.1" and env["SPARK_LOCAL_IP"] == "127.0.0.1"

    proc, args, _ = fake_spark("worker", "spark://127.0.0.1:7077", SPARKVISION_SPARK_SECRET_FILE=str(secret),
                               SPARK_AUTH_SECRET="something-else")
    assert proc.returncode == 2 and args is None and "differ" in proc.stderr and "something-else" not in proc.stderr


def test_local_cluster_daemons_start_with_authentication_and_encryption(tmp_path):
    """infra/standalone/local-cluster.sh with a spark-class that records each daemon's environment."""
    home, record, state = tmp_path / "spark", tmp_path / "record", tmp_path / "state"
    (home / "bin").mkdir(parents=True)
    record.mkdir()
    stub = home / "bin" / "spark-class"
    stub.write_text(f'#!/bin/sh\nenv -0 > "{record}/${{1##*.}}"\n'  # record/Master, record/Worker
                    'echo "I have been elected leader"; echo "Successfully registered with master"\n')
    stub.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in AUTH_ENV and not k.startswith(("SPARK_", "SPARKVISION_"))}
    env = {**base, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable, "SPARKVISION_WORKERS": "1"}
    script = str(ROOT / "infra" / "standalone" / "local-cluster.sh")
    try:
        proc = subprocess.run(["bash", script, "start", str(state)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run(["bash", script, "stop", str(state)], env=env, capture_output=True, timeout=60)
    for daemon, var in (("Master", "SPARK_MASTER_OPTS"), ("Worker", "SPARK_WORKER_OPTS")):
        daemon_env = dict(v.split("=", 1) for v in (record / daemon).read_text().split("\0") if "=" in v)
        assert {"-Dspark.authenticate=true", *DAEMON_ENCRYPTION} <= set(daemon_env[var].split()), daemon
        assert len(daemon_env["_SPARK_AUTH_SECRET"]) == 64


# --- build-offline.sh: the Debian mirror from this machine's apt sources ------------------------------

def _print_mirror(etc: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    return subprocess.run(["bash", str(ROOT / "infra" / "docker" / "build-offline.sh"), "--print-mirror"],
                          env={**base, "SPARKVISION_APT_ETC": str(etc), **env}, capture_output=True, text=True, timeout=30)


def _apt(tmp_path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


@pytest.mark.parametrize("files, mirror", [
    ({"sources.list": "# comment\ndeb-src http://src.example/debian bookworm main\n"
                      "deb http://security.debian.org/debian-security bookworm-security main\n"
                      "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ bookworm main\n"},
     "http://mirror.example/debian"),
    ({"sources.list.d/debian.sources":  # deb822, as on this machine (bookworm images)
      "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\n"
      "Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
      "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n"},
     "http://deb.debian.org/debian"),
    ({"sources.list": "deb https://packages.cloud.google.com/apt cloud-sdk main\n",
      "sources.list.d/00-off.sources": "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n",
      "sources.list.d/10-src.sources": "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n",
      "sources.list.d/20-multi.sources": "Types: deb deb-src\nURIs: https://deb.nodesource.com/node_20.x\n"
                                         " https://mirror2.example/debian\nSuites: bookworm\nComponents: main\n",
      "sources.list.d/30-later.list": "deb http://later.example/debian bookworm main\n",
      "sources.list.d/05-ignored.list.disabled": "deb http://ignored.example/debian bookworm main\n"},
     "https://mirror2.example/debian"),
    ({"sources.list.d/debian.sources": "Types: deb\nURIs: mirror+file:///{apt}/mirrors.list\nSuites: bookworm\n",
      "mirrors.list": "# the cloud's mirrors\nhttp://cloud-mirror.example/debian priority:1\nhttp://deb.debian.org/debian\n"},
     "http://cloud-mirror.example/debian"),
])
def test_build_offline_takes_the_debian_mirror_from_apt(tmp_path, files, mirror):
    etc = tmp_path / "apt"
    etc = _apt(tmp_path, {name: text.replace("/{apt}", str(etc)) for name, text in files.items()})
    proc = _print_mirror(etc)
    assert proc.returncode == 0 and proc.stdout.strip() == mirror, proc.stderr


def test_build_offline_mirror_override_and_failure(tmp_path):
    etc = _apt(tmp_path, {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"})
    proc = _print_mirror(etc)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no Debian archive found" in proc.stderr and "DEBIAN_MIRROR" in proc.stderr
    proc = _print_mirror(etc, DEBIAN_MIRROR="http://override.example/debian")
    assert proc.returncode == 0 and proc.stdout.strip() == "http://override.example/debian"
