"""MLflow without a server: tracking off unless asked for, the exported classifier equal to Spark's, and the
Spark-free image model equal to the Spark featurizer + classifier (the real-server tests are in
test_mlflow_server.py, marked slow)."""

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from sparkvision import cli

from sparkvision import settings as config

from sparkvision.ml import image_model

from sparkvision.run import storage
from sparkvision.run.layout import RunLayout
from sparkvision.tracking import pyfunc, server
from sparkvision.tracking import runs as tracking
from sparkvision.columns import CONTENT, FEATURES, IMAGE_ID, LABEL_INDEX, PREDICTED_LABEL, PROBABILITY
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.ml.logistic import LogisticModel
from sparkvision.stages.train import assemble


def test_without_a_tracking_uri_mlflow_is_never_imported():
    code = """
import sys
from sparkvision import cli
from sparkvision import settings as config
from sparkvision.stages import pipeline
from sparkvision.tracking import runs as tracking
cfg = config.load()
assert not tracking.enabled(cfg)
assert tracking.track(None, cfg, "run") is None
assert "mlflow" not in sys.modules, "mlflow imported without a tracking URI"
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "DATABRICKS_"))}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tracking_uri_comes_from_config_then_environment_then_databricks(monkeypatch):
    cfg = config.load()
    assert tracking.tracking_uri(cfg) is None
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert tracking.tracking_uri(cfg) == "databricks"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:5000"
    cfg = config.load(overrides=["mlflow.tracking_uri=http://tracking.example:5000"])
    assert tracking.tracking_uri(cfg) == "http://tracking.example:5000"


@pytest.mark.parametrize("uri", ["https://me:s3cretPassw0rd@tracking.example", "https://dapiTOKEN123@tracking.example"])
def test_credentials_in_a_tracking_uri_are_refused(uri, monkeypatch):
    with pytest.raises(config.ConfigError, match="mlflow.tracking_uri.*MLFLOW_TRACKING_TOKEN") as exc:
        config.load(overrides=[f"mlflow.tracking_uri={uri}"])
    assert "s3cret" not in str(exc.value) and "TOKEN123" not in str(exc.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment's URI too, before any request
    with pytest.raises(config.ConfigError, match="MLFLOW_TRACKING_URI"):
        tracking.connect(config.load())


def test_register_and_registered_models_need_tracking(tmp_path, capsys):
    assert cli.main(["run", "--register", "m", "--output", str(tmp_path / "a")]) == 2
    assert "--register (mlflow.registered_model) needs MLflow tracking" in capsys.readouterr().err
    assert cli.main(["predict", "--model", "models:/m@champion", "--images", str(tmp_path),
                     "--output", str(tmp_path / "p")]) == 2
    assert "a registered model needs MLflow tracking" in capsys.readouterr().err


def test_metric_keys_keep_class_names_readable():
    assert tracking.metric_key("f1.Cristiano Ronaldo") == "f1.Cristiano Ronaldo"
    assert tracking.metric_key("recall.<b>café:*") == "recall._b_café:_"
    assert tracking.metric_key("f1.a//b/") == "f1.a__b_"  # MLflow refuses keys that are not normal paths


@pytest.mark.parametrize("classes, family", [(2, "auto"), (2, "multinomial"), (3, "auto")])
def test_exported_classifier_equals_spark_logistic_regression(spark, classes, family):
    rng = np.random.default_rng(classes)
    rows = [(int(k), Vectors.dense(rng.normal(size=5) + k)) for k in rng.integers(0, classes, 60)]
    df = spark.createDataFrame(rows, [LABEL_INDEX, FEATURES])
    spark_lr = LogisticRegression(labelCol=LABEL_INDEX, featuresCol=FEATURES, regParam=0.1, maxIter=50,
                                  family=family).fit(df)
    assert spark_lr.coefficientMatrix.numRows == (1 if (classes, family) == (2, "auto") else classes)
    x = np.array([r[1].toArray() for r in rows])
    for model in (spark_lr, LogisticModel(coefficients=rng.normal(size=(1 if classes == 2 else classes, 5)).tolist(),
                                          intercepts=rng.normal(size=1 if classes == 2 else classes).tolist(),
                                          multinomial=classes > 2)):
        expected = np.array([r[0] for r in model.transform(df).select(vector_to_array(PROBABILITY)).collect()])
        np.testing.assert_allclose(image_model.classifier_of(model).probabilities(x), expected, atol=1e-9)


@pytest.fixture(scope="module")
def photo_pipeline(spark, photos, tmp_path_factory):
    """The default network + a random 3-class classifier, as a saved pipeline would be, and the photos'
    Spark predictions (one undecodable file among them)."""
    rng = np.random.default_rng(7)
    featurizer = DeepImageFeaturizer(modelName="efficientnet_lite0", batchSize=2)
    weights = featurizer.resolveWeights()
    dim = featurizer.spec().feature_dim
    classifier = LogisticModel(coefficients=(rng.normal(size=(3, dim)) * 0.05).tolist(),
                               intercepts=[0.1, -0.2, 0.0], multinomial=True)
    pipeline = assemble(featurizer, classifier, ["cat", "dog", "bird"])
    files = sorted(photos.glob("*.jpg"))
    data = [(p.name, p.read_bytes()) for p in files] + [("broken.jpg", files[0].read_bytes()[:200])]
    df = spark.createDataFrame(data, f"{IMAGE_ID} string, {CONTENT} binary")
    featurized = featurizer.copy({featurizer.errorCol: "err"}).transform(df)
    classified = PipelineModel(stages=pipeline.stages[1:]).transform(featurized.filter(F.col("err").isNull()))
    rows = {r[IMAGE_ID]: r for r in classified.select(IMAGE_ID, vector_to_array(FEATURES).alias("f"),
                                                      vector_to_array(PROBABILITY).alias("p"), PREDICTED_LABEL).collect()}
    return pipeline, weights, data, rows


def test_image_model_equals_the_spark_featurizer_and_classifier(photo_pipeline):
    pipeline, weights, data, spark_rows = photo_pipeline
    model = image_model.ImageClassifier(image_model.describe(pipeline), weights)
    features, errors = model.features([content for _, content in data])
    out = model.predict([content for _, content in data])
    for i, (image_id, _) in enumerate(data):
        if image_id == "broken.jpg":
            assert errors[i] and "truncated" in errors[i] and out["label"][i] is None
            continue
        row = spark_rows[image_id]
        np.testing.assert_allclose(features[i], row["f"], atol=1e-4)
        np.testing.assert_allclose(out["probabilities"][i], row["p"], atol=1e-5)
        assert out["label"][i] == row[PREDICTED_LABEL] and out["error"][i] is None
        assert out["class_index"][i] == int(np.argmax(row["p"]))
    assert len(spark_rows) == len(data) - 1


def test_image_model_takes_base64_text_and_says_what_is_not_an_image(photo_pipeline):
    pipeline, weights, data, _ = photo_pipeline
    model = image_model.ImageClassifier(image_model.describe(pipeline), weights)
    raw = data[0][1]
    out = model.predict([raw, base64.b64encode(raw).decode(), "not base64 !", 42])
    np.testing.assert_allclose(out["probabilities"][0], out["probabilities"][1], atol=0)
    assert out["error"][2].startswith("not base64") and out["error"][3].startswith("not an image")
    import pandas as pd

    assert image_model.image_column(pd.DataFrame({"image": [raw]})) == [raw]
    with pytest.raises(ValueError, match="needs a column 'image'"):
        image_model.image_column(pd.DataFrame({"a": [1], "b": [2]}))


def test_on_databricks_without_mlflow_the_default_tracking_only_warns(monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    cfg = config.load()
    assert not tracking.enabled(cfg) and "not tracked" in caplog.text
    # Asked for explicitly (--register), a missing MLflow is an error later, not a silent skip.
    assert tracking.enabled(config.load(overrides=["mlflow.registered_model=main.vision.classifier"]))


def test_an_alias_is_resolved_once_and_the_version_used_is_the_one_recorded(tmp_path, monkeypatch):
    """``--model models:/NAME@alias``: the alias moves (a new champion) while the model is being fetched. The
    version downloaded and put in the pipeline must be the one recorded (predict.json, stream's model column)."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'sparkvision[mlflow]')")

    from sparkvision.ml.models import weights

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # restored after the test
    cfg = config.load()
    client = server.mlflow_for(cfg).MlflowClient()
    client.create_registered_model("m")
    for v in ("1", "2"):
        artifacts = tmp_path / f"v{v}" / "artifacts"
        artifacts.mkdir(parents=True)
        (artifacts / "classifier.json").write_text(json.dumps(
            {"network": "efficientnet_lite0", "weights_sha256": v * 64, "classes": [f"class-of-v{v}"]}))
        (artifacts / "weights.h5").write_bytes(b"weights")
        assert str(client.create_model_version("m", source=str(tmp_path / f"v{v}")).version) == v
    client.set_registered_model_alias("m", "champion", "1")

    download, downloaded = mlflow.artifacts.download_artifacts, []

    def alias_moves_first(artifact_uri, dst_path):
        client.set_registered_model_alias("m", "champion", "2")
        downloaded.append(artifact_uri)
        return download(artifact_uri=artifact_uri, dst_path=dst_path)

    saved = []

    class Pipeline:  # what fetch_model saves, without Spark: the classifier.json it was built from
        def __init__(self, info, cfg):
            self.info = info

        def write(self):
            return self

        overwrite = write

        def save(self, dest):
            saved.append(self.info)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", alias_moves_first)
    monkeypatch.setattr(weights, "resolve_weights", lambda *args, **kwargs: None)
    monkeypatch.setattr(pyfunc, "pipeline_of", Pipeline)
    source = tracking.fetch_model(cfg, "models:/m@champion", str(tmp_path / "model"))
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"  # the alias did move
    assert downloaded == ["models:/m/1"] and source["version"] == "models:/m/1"
    assert source["uri"] == "models:/m@champion" and source["classes"] == saved[0]["classes"] == ["class-of-v1"]
    with pytest.raises(tracking.TrackingError, match="--model models:/m@nobody"):
        tracking.fetch_model(cfg, "models:/m@nobody", str(tmp_path / "model"))


@pytest.mark.parametrize("engine, precision", [("onnxruntime", "fp32"), ("openvino", "bf16")])
def test_the_logged_engine_and_precision_are_the_ones_featurize_json_says_ran(tmp_path, monkeypatch, engine,
                                                                              precision):
    """The config says ``auto`` (or anything): MLflow gets the engine and precision that ran, as the run's
    featurize.json records them."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'sparkvision[mlflow]')")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # restored after the test
    cfg = config.load(overrides=[f"output.dir={tmp_path / 'run'}"])
    lay = RunLayout(cfg.output.dir)
    storage.makedirs(cfg.output.dir)
    storage.write_json(lay.featurize, {"model": "efficientnet_lite0", "weights_sha256": "0" * 64, "feature_dim": 1280,
                                       "engine": engine, "precision": precision, "images_per_second": 9.5})
    mlflow = server.mlflow_for(cfg)
    experiment = mlflow.create_experiment("engines", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        tracking.LOGGERS["featurize"](mlflow, None, cfg, lay, {})
    params = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    ran = json.loads((tmp_path / "run" / "featurize.json").read_text())
    assert cfg.featurize.engine != ran["engine"]  # what ran, not what was asked for
    assert params["featurize.engine"] == ran["engine"] and params["featurize.precision"] == ran["precision"]
    assert params["network"] == ran["model"] and params["featurize.batch_size"] == str(cfg.featurize.batch_size)
