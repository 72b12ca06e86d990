"""What several test modules share that is not a fixture of every test: the loopback servers (moto's S3,
a Spark Connect server) as fixtures to import, and expected values."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> bool:
    """Whether something listens on 127.0.0.1:``port`` within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


#: ImageNet top-1 classes the darknet sample photos show (tests/fetch_photos.sh)
EXPECTED_TOP1 = {"dog.jpg": range(151, 269), "eagle.jpg": range(21, 24), "giraffe.jpg": [340]}  # the zebra in it

BUCKET = "sparkvision-runs"


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


def _keys(client, prefix=""):
    """Object keys under ``prefix``, without the empty "folder/" placeholders Arrow leaves on deletes."""
    keys = (o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))
    return sorted(k for k in keys if not k.endswith("/"))



# The Connect client: py4j's gateway cannot be launched, so any use of sparkContext, _jvm or _jsc fails.
NO_JVM_CLIENT = """
import sys
import pyspark.context, pyspark.java_gateway

def refuse(*args, **kwargs):
    raise RuntimeError("a Spark Connect client tried to start a JVM (py4j gateway)")

pyspark.java_gateway.launch_gateway = refuse
pyspark.context.launch_gateway = refuse
from sparkvision.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               SPARK_HOME=str(Path(__import__("pyspark").__file__).parent))
    env.update(extra)
    return env


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


