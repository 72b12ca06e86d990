"""Spark Connect: a real Connect server from PySpark's own distribution on 127.0.0.1 (its
``sbin/start-connect-server.sh``), the pipeline and predict run through it by the CLI, in a client process
that cannot start a JVM (py4j's gateway launcher raises), and the same results as the classic run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from helpers import NO_JVM_CLIENT, _env
from pyspark.sql import functions as F

pytestmark = [pytest.mark.slow]

JOB = ["--set", "train.reg_param=[0.01, 0.1]", "--set", "train.elastic_net_param=[0.0, 0.5]",
       "--set", "train.max_iter=[50]", "--set", "train.folds=2"]
METRICS = ("accuracy", "baseline_accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro",
           "roc_auc")
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from sparkvision.run.sample_data import make_digits

    return Path(make_digits(str(tmp_path_factory.mktemp("digits")), per_class=10, digits=(0, 1, 7)))


def _cli(args: list[str], connect: bool = False) -> str:
    cmd = [sys.executable, "-c", NO_JVM_CLIENT] if connect else [sys.executable, "-m", "sparkvision.cli"]
    proc = subprocess.run(cmd + args, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout + proc.stderr


# The demo: `sparkvision run` without input (scikit-learn's digits, 10 classes x 20 images), as is.
@pytest.fixture(scope="module")
def classic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classic")
    _cli(["run", "--master", "local[2]", "--output", str(out)])
    return out


@pytest.fixture(scope="module")
def over_connect(connect_server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("over-connect")
    _cli(["run", "--remote", connect_server, "--output", str(out)], connect=True)
    return out


def test_demo_over_connect_equals_the_classic_run(spark, classic, over_connect):
    a, b = (json.loads((d / "evaluation" / "metrics.json").read_text()) for d in (classic, over_connect))
    for key in METRICS:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert a["confusion_matrix"] == b["confusion_matrix"]
    ta, tb = (json.loads((d / "train.json").read_text())["tuning"] for d in (classic, over_connect))
    assert ta["engine"] == tb["engine"] == "local" and ta["best_params"] == tb["best_params"]
    pa, pb = (spark.read.parquet(str(d / "evaluation" / "predictions.parquet")) for d in (classic, over_connect))
    cols = ["image_id", "label", "predicted_label"]
    assert_df_equality(pa.select(cols), pb.select(cols), ignore_row_order=True)
    probs = [p.select("image_id", F.posexplode("probability")) for p in (pa, pb)]
    assert_approx_df_equality(probs[0], probs[1], 1e-6, ignore_row_order=True)


def test_predict_over_connect_with_a_model_saved_classically(spark, connect_server, classic, images, tmp_path):
    outs = {}
    for mode in ("classic", "connect"):
        outs[mode] = tmp_path / mode
        where = ["--remote", connect_server] if mode == "connect" else ["--master", "local[2]"]
        _cli(["predict", *where, "--model", str(classic / "model"), "--images", str(images),
              "--output", str(outs[mode])], connect=mode == "connect")
    pa, pb = (spark.read.parquet(str(outs[m] / "predictions.parquet")) for m in ("classic", "connect"))
    assert pa.count() == 30
    assert_df_equality(pa.select("image_id", "predicted_label"), pb.select("image_id", "predicted_label"),
                       ignore_row_order=True)
    probs = [p.select("image_id", F.posexplode("probability")) for p in (pa, pb)]
    assert_approx_df_equality(probs[0], probs[1], 1e-6, ignore_row_order=True)


def test_stream_over_connect_equals_batch_predict(spark, connect_server, classic, images, tmp_path):
    """sparkvision stream through Spark Connect (foreachBatch runs in the server's Python), available-now."""
    out = tmp_path / "stream"
    _cli(["stream", "--remote", connect_server, "--model", str(classic / "model"), "--images", str(images),
          "--output", str(out), "--trigger", "available-now"], connect=True)
    streamed = spark.read.parquet(str(out / "predictions"))
    assert streamed.count() == 30 and streamed.select("image_id").distinct().count() == 30
    assert json.loads((out / "stream.json").read_text())["predicted"] == 30  # from the batches' commit records
    batch = tmp_path / "batch"
    _cli(["predict", "--master", "local[2]", "--model", str(classic / "model"), "--images", str(images),
          "--output", str(batch)])
    expected = spark.read.parquet(str(batch / "predictions.parquet"))
    cols = ["image_id", "predicted_label", F.posexplode("probability")]
    assert_approx_df_equality(streamed.select(*cols), expected.select(*cols), 1e-6, ignore_row_order=True)


COMPAT = """
import json, sys
import numpy as np
from pyspark.sql import SparkSession
from sparkvision.compat.sparkdl import DeepImageFeaturizer, readImages

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate() if sys.argv[1] != "classic" else (
    SparkSession.builder.master("local[2]").getOrCreate())
images = readImages(sys.argv[2])
featurizer = DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="efficientnet_lite0")
rows = featurizer.transform(images).select("filePath", "features").orderBy("filePath").collect()
print("RESULT " + json.dumps([[r.filePath.rsplit("/", 2)[-2:], r.features.toArray().tolist()] for r in rows]))
from sparkvision.compat.image import ImageSchema
from sparkvision.compat.imageIO import PIL_decode, readImagesWithCustomFn
structs = ImageSchema.readImages(sys.argv[2], recursive=True, sampleRatio=0.5, seed=3)
custom = readImagesWithCustomFn(sys.argv[2] + "/7", PIL_decode)
print("IMAGESCHEMA " + json.dumps([structs.selectExpr("count(*)", "sum(length(image.data))", "min(image.nChannels)").first()[:],
                                   custom.selectExpr("count(*)", "sum(length(image.data))").first()[:]]))
"""


def test_the_sparkdl_compat_layer_over_connect(connect_server, images):
    """readImages + the sparkdl-style featurizer, ImageSchema.readImages and readImagesWithCustomFn through Spark
    Connect (a client without a JVM) give the classic results."""
    results = {}
    for mode in ("classic", connect_server):
        code = COMPAT if mode == "classic" else NO_JVM_CLIENT.split("from sparkvision.cli")[0] + COMPAT
        proc = subprocess.run([sys.executable, "-c", code, mode, str(images)], env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results[mode] = json.loads(line[len("RESULT "):])
        line = next(x for x in proc.stdout.splitlines() if x.startswith("IMAGESCHEMA "))
        results[mode, "ImageSchema"] = json.loads(line[len("IMAGESCHEMA "):])
    # ImageSchema.readImages (sampled) and readImagesWithCustomFn: the same structs over Connect
    assert results["classic", "ImageSchema"] == results[connect_server, "ImageSchema"]
    assert results["classic", "ImageSchema"][1][0] == 10 and 0 < results["classic", "ImageSchema"][0][0] < 30
    a, b = results["classic"], results[connect_server]
    assert [r[0] for r in a] == [r[0] for r in b] and len(a) == 30
    import numpy as np

    np.testing.assert_allclose(np.array([r[1] for r in b]), np.array([r[1] for r in a]), atol=1e-5)
