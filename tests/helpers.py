"""What several test modules share besides fixtures (those are in conftest.py): finding a free port on
loopback, the S3 bucket and the Spark Connect client the server fixtures use, expected values."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path


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
