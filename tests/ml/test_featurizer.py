import dataclasses

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F

from sparkvision.run import images as imglib
from sparkvision.ml.featurizer import DeepImageFeaturizer, WeightsChecksumError
from sparkvision.ml.graph import inference_function
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import resolve_weights
from sparkvision.settings import DataSettings
from sparkvision.stages import load as loader


@pytest.fixture(scope="module")
def digits_images(spark, digits_small):
    return loader.load_images(spark, DataSettings(images=str(digits_small))).images


@pytest.fixture(scope="module")
def digits_features(digits_images):
    f = DeepImageFeaturizer(modelName="efficientnet_lite0", batchSize=8)
    return f, f.transform(digits_images).select("image_id", "content", "features").orderBy("image_id").collect()


def test_shape_and_vector_type(digits_features):
    _, rows = digits_features
    assert len(rows) == 30
    assert {r.features.size for r in rows} == {1280}
    assert all(np.isfinite(r.features.toArray()).all() for r in rows)


def test_spark_features_equal_plain_keras_predict(digits_features):
    featurizer, rows = digits_features
    spec = registry.get("efficientnet_lite0")
    model = spec.build(str(resolve_weights(spec)))
    batch = np.stack([imglib.decode_for_model(r.content, spec.input_size, spec.crop_fraction)
                      for r in rows]).astype(np.float32)
    keras_features = model.predict(spec.preprocess_fn()(batch), batch_size=16, verbose=0)
    spark_features = np.stack([r.features.toArray() for r in rows])
    np.testing.assert_allclose(spark_features, keras_features, atol=1e-4, rtol=0)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_inference_graph_is_frozen_and_equals_keras():
    spec = registry.get("efficientnet_lite0")
    model = spec.build(str(resolve_weights(spec)))
    pixels = np.random.default_rng(0).integers(0, 256, (3, spec.input_size, spec.input_size, 3), dtype=np.uint8)
    expected = model.predict(spec.preprocess_fn()(pixels.astype(np.float32)), verbose=0)
    features = inference_function(spec, model)
    assert spec.freeze_graph and not features.graph.variables  # constants: batch norms folded into the convs
    np.testing.assert_allclose(features(pixels), expected, atol=1e-4, rtol=0)
    unfrozen = inference_function(dataclasses.replace(spec, freeze_graph=False), model)
    assert unfrozen.graph.variables
    np.testing.assert_allclose(unfrozen(pixels), expected, atol=1e-4, rtol=0)


def test_network_batches_span_arrow_batches(spark, digits_images, digits_features):
    # Arrow batches of 7 rows, network batches of 5: rows carried across Arrow batches keep their order.
    _, reference = digits_features
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")
    try:
        rows = (DeepImageFeaturizer(modelName="efficientnet_lite0", batchSize=5).transform(digits_images.coalesce(1))
                .select("image_id", "features").orderBy("image_id").collect())
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert [r.image_id for r in rows] == [r.image_id for r in reference]
    np.testing.assert_allclose(np.stack([r.features.toArray() for r in rows]),
                               np.stack([r.features.toArray() for r in reference]), atol=1e-4, rtol=0)


def test_pins_weights_checksum(digits_features):
    featurizer, _ = digits_features
    assert featurizer.getOrDefault(featurizer.weightsChecksum) == registry.get("efficientnet_lite0").weights.file_hash


def test_persists_by_name_and_checksum_in_a_pipeline(tmp_path, digits_images, digits_features):
    featurizer, rows = digits_features
    model = Pipeline(stages=[featurizer]).fit(digits_images)
    model.write().save(str(tmp_path / "m"))
    size = sum(p.stat().st_size for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert size < 100_000  # params only, no weights pickled in
    loaded = PipelineModel.load(str(tmp_path / "m"))
    stage = loaded.stages[0]
    assert isinstance(stage, DeepImageFeaturizer)
    assert stage.getOrDefault(stage.weightsChecksum) == featurizer.getOrDefault(featurizer.weightsChecksum)
    again = loaded.transform(digits_images.filter(F.col("image_id") == rows[0].image_id)).first()
    np.testing.assert_allclose(again.features.toArray(), rows[0].features.toArray(), atol=1e-5)


def test_driver_refuses_weights_that_differ_from_the_pinned_checksum(digits_images):
    f = DeepImageFeaturizer(modelName="efficientnet_lite0", weightsChecksum="0" * 64)
    with pytest.raises(WeightsChecksumError, match="this featurizer was built with 0000"):
        f.transform(digits_images)


def test_workers_refuse_weights_that_differ_from_the_pinned_checksum(digits_images):
    """The worker's own check, reached in a Python worker: the driver's check is bypassed, as when a
    worker's cache or package holds other weights than the driver's."""
    from sparkvision.ml.featurizer import WorkerModelKey, featurize_udf

    key = WorkerModelKey.of("efficientnet_lite0", None, None, None, False, "0" * 64)
    udf = featurize_udf(key, 8, 1, imglib.DEFAULT_MAX_PIXELS)
    with pytest.raises(Exception, match=r"worker found weights for efficientnet_lite0 .* driver pinned 0{64}") as exc:
        digits_images.select(udf("content")).collect()
    assert "PythonException" in type(exc.value).__name__ or "Py4J" in type(exc.value).__name__


def test_wrong_input_column_type_is_a_clear_error(spark):
    df = spark.createDataFrame([("a",)], "content string")
    with pytest.raises(ValueError, match="must hold encoded image bytes"):
        DeepImageFeaturizer().transform(df)
