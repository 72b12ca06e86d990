"""sparkvision.compat.keras_estimator: sparkdl's KerasImageFileEstimator, alone and inside CrossValidator."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_approx_df_equality
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkvision.compat import sparkdl
from sparkvision.compat.keras_estimator import KerasImageFileModel
from sparkvision.compat.sparkdl import SparkdlCompatWarning

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.05}}


def _head(path: Path, shape: tuple, seed: int = 0) -> str:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    model.save(path)
    return str(path)


def _schema() -> T.StructType:
    from pyspark.ml.linalg import VectorUDT

    return T.StructType([T.StructField("uri", T.StringType()), T.StructField("label", T.DoubleType()),
                         T.StructField("one_hot", VectorUDT())])


@pytest.fixture(scope="module")
def blobs(spark, tmp_path_factory):
    """24 arrays of 4x4x3 in two separable classes, as .npy files read by the loader 'numpy:load'."""
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = i % 2
        path = folder / f"{i:02d}.npy"
        np.save(path, rng.normal(1.0 if label else -1.0, 0.7, (4, 4, 3)).astype(np.float32))
        rows.append((str(path), float(label), Vectors.dense([1.0 - label, float(label)])))
    df = spark.createDataFrame(rows, _schema())
    return df, _head(folder / "head.keras", (4, 4, 3))


def _estimator(model_file: str, **fit) -> "sparkdl.KerasImageFileEstimator":
    return sparkdl.KerasImageFileEstimator(
        inputCol="uri", outputCol="prob", labelCol="one_hot", modelFile=model_file, imageLoader="numpy:load",
        kerasOptimizer=ADAM, kerasLoss="categorical_crossentropy", kerasFitParams=fit, seed=3)


def _accuracy(df) -> float:
    rows = df.select("label", vector_to_array("prob").alias("p")).collect()
    return float(np.mean([np.argmax(r.p) == r.label for r in rows]))


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_fit_trains_streams_and_the_model_persists(spark, blobs, tmp_path):
    df, head = blobs
    bad = spark.createDataFrame([(str(tmp_path / "missing.npy"), 0.0, Vectors.dense([1.0, 0.0]))], df.schema)
    with pytest.warns(SparkdlCompatWarning, match=r"1 of 25 rows left out because imageLoader failed: .*missing\.npy"):
        model = _estimator(head, epochs=8, batch_size=8).fit(df.unionByName(bad))
    assert isinstance(model, KerasImageFileModel) and model.getModelFile() != head
    losses = model.history["loss"]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        assert _accuracy(model.transform(df)) == 1.0
        model.write().overwrite().save(str(tmp_path / "fitted"))
        again = KerasImageFileModel.load(str(tmp_path / "fitted"))
        assert again.getModelFile() == str(tmp_path / "fitted" / "kerasModel.keras")
        expected = model.transform(df).select("uri", F.posexplode(vector_to_array("prob")))
        got = again.transform(df).select("uri", F.posexplode(vector_to_array("prob")))
    assert_approx_df_equality(got, expected, 1e-6, ignore_row_order=True)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_the_starting_model_file_is_not_changed_and_numeric_labels_work(spark, blobs):
    df, head = blobs
    before = Path(head).read_bytes()
    est = sparkdl.KerasImageFileEstimator(inputCol="uri", outputCol="prob", labelCol="label", modelFile=head,
                                          imageLoader=lambda uri: np.load(uri), kerasOptimizer=ADAM,
                                          kerasLoss="sparse_categorical_crossentropy",
                                          kerasFitParams={"epochs": 6, "batch_size": 5, "shuffle": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        model = est.fit(df)
        assert _accuracy(model.transform(df)) == 1.0
    assert Path(head).read_bytes() == before
    with pytest.raises(ValueError, match="function imageLoader cannot be saved"):
        model.write()


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_cross_validator_tunes_keras_fit_params(spark, blobs):
    df, head = blobs
    est = _estimator(head)
    grid = ParamGridBuilder().addGrid(est.kerasFitParams, [{"epochs": 1, "batch_size": 12},
                                                           {"epochs": 4, "batch_size": 4}]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=2, seed=1,
                        evaluator=BinaryClassificationEvaluator(rawPredictionCol="prob", labelCol="label"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        fitted = cv.fit(df)
    assert len(fitted.avgMetrics) == 2 and fitted.avgMetrics[1] >= fitted.avgMetrics[0]
    chosen = grid[int(np.argmax(fitted.avgMetrics))][est.kerasFitParams]  # refit on all rows with the winner
    assert isinstance(fitted.bestModel, KerasImageFileModel)
    assert len(fitted.bestModel.history["loss"]) == chosen["epochs"]


def test_bad_settings_name_the_problem(spark, blobs):
    df, head = blobs
    with pytest.raises(ValueError, match="'validation_split' not supported"):
        _estimator(head, validation_split=0.2)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        _estimator(head, epochs=0)
    with pytest.raises(ValueError, match="label column 'nope' not in"):
        _estimator(head).setParams(labelCol="nope").fit(df)
    with pytest.raises(ValueError, match="kerasLoss is not set"):
        sparkdl.KerasImageFileEstimator(inputCol="uri", outputCol="p", labelCol="one_hot", modelFile=head,
                                        imageLoader="numpy:load", kerasOptimizer="adam").fit(df)
    nothing = df.withColumn("uri", F.concat("uri", F.lit(".gone")))
    with pytest.raises(ValueError, match=r"no array for any of the 24 rows, e\.g\. .*\.gone"):
        _estimator(head).fit(nothing)


@pytest.mark.slow
@pytest.mark.shared
def test_fine_tuning_a_head_on_football_features_beats_the_random_head(spark, football_features, tmp_path):
    """The football images' EfficientNet-Lite0 features, one .npy file each; a 1280 -> 2 softmax head."""
    from sklearn.metrics import log_loss

    _, features = football_features
    rows = []
    for r in features.select("image_id", "label_index", vector_to_array("features").alias("f")).collect():
        path = tmp_path / (r.image_id.replace("/", "_") + ".npy")
        np.save(path, np.asarray(r.f, np.float32))
        rows.append((str(path), float(r.label_index), Vectors.dense(np.eye(2)[r.label_index]), r.image_id))
    rows.sort(key=lambda r: r[3])
    test_ids = {r[3] for c in (0.0, 1.0) for r in [x for x in rows if x[1] == c][::3]}  # every third of each class
    df = spark.createDataFrame(rows, _schema().add("image_id", T.StringType()))
    train, test = df.filter(~F.col("image_id").isin(test_ids)), df.filter(F.col("image_id").isin(test_ids))
    head = _head(tmp_path / "head.keras", (1280,), seed=0)
    est = sparkdl.KerasImageFileEstimator(inputCol="uri", outputCol="prob", labelCol="one_hot", modelFile=head,
                                          imageLoader="numpy:load", kerasOptimizer="adam",
                                          kerasLoss="categorical_crossentropy",
                                          kerasFitParams={"epochs": 40, "batch_size": 8}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        fitted = est.fit(train)
        random_head = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="prob", modelFile=head,
                                                        imageLoader="numpy:load")
        scores = {}
        for name, stage in (("fitted", fitted), ("random", random_head)):
            got = stage.transform(test).select("label", vector_to_array("prob").alias("p")).collect()
            y, p = np.array([g.label for g in got]), np.array([g.p for g in got])
            scores[name] = (float(np.mean(p.argmax(1) == y)), log_loss(y, p[:, 1], labels=[0, 1]))
    print(f"football head, {test.count()} test images: fitted accuracy {scores['fitted'][0]:.3f} "
          f"log loss {scores['fitted'][1]:.3f}; random head {scores['random'][0]:.3f} / {scores['random'][1]:.3f}")
    assert scores["fitted"][0] >= 0.85 and scores["fitted"][0] > scores["random"][0]
    assert scores["fitted"][1] < scores["random"][1]
