"""sparkvision.compat.sparkdl.DeepImagePredictor: ImageNet predictions with the registry's classifier variant."""

import warnings

import numpy as np
import pytest
from chispa import assert_approx_df_equality
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from helpers import EXPECTED_TOP1  # the classes the darknet photos show

from sparkvision.compat import sparkdl
from sparkvision.compat.sparkdl import SparkdlCompatWarning
from sparkvision.ml.models import imagenet, registry
from sparkvision.ml.models.weights import WeightsNotFoundError

PHOTOS = sorted(EXPECTED_TOP1)


def _predictor(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        return sparkdl.DeepImagePredictor(**{"modelName": "efficientnet_lite0", "engine": "tensorflow", **kwargs})


@pytest.fixture(scope="module")
def photo_bytes(spark, photos):
    rows = [(name, (photos / name).read_bytes()) for name in PHOTOS]
    return spark.createDataFrame(rows, "name string, image binary")


@pytest.fixture(scope="module")
def raw(photo_bytes):
    """name -> the 1000 probabilities, from one Spark pass."""
    out = _predictor().transform(photo_bytes).select("name", vector_to_array("predicted_labels").alias("p"))
    return {r.name: np.asarray(r.p) for r in out.collect()}


def test_classifier_variant_is_described_by_the_registry():
    lite = registry.get("efficientnet_lite0").classifier()
    assert lite.name == "efficientnet_lite0-classifier" and lite.include_top and lite.feature_dim == 1000
    assert lite.weights == registry.get("efficientnet_lite0").weights  # the checkpoint has the head
    assert registry.get("EfficientNetLite0-classifier") == lite
    resnet = registry.get("ResNet50-classifier")
    assert resnet.base_name == "ResNet50"
    assert resnet.weights.filename == "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    assert resnet.weights.file_hash == "2cb95161c43110f7111970584f804107"  # Keras' include_top md5


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_top1_is_right_and_probabilities_sum_to_one(raw):
    classes = imagenet.classes()
    for name, allowed in EXPECTED_TOP1.items():
        p = raw[name]
        assert p.shape == (1000,) and np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        assert int(np.argmax(p)) in allowed, f"{name}: predicted {classes[int(np.argmax(p))]}"


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_decoded_predictions_are_the_top_k_of_the_raw_output(spark, photo_bytes, raw):
    decoded = _predictor(decodePredictions=True, topK=3).transform(photo_bytes)
    assert decoded.schema["predicted_labels"].dataType == sparkdl.DECODED_SCHEMA
    got = decoded.select("name", F.posexplode("predicted_labels").alias("rank", "c")).select(
        "name", "rank", "c.class", "c.description", "c.probability")
    classes = imagenet.classes()
    expected = [(name, rank, *classes[i], float(raw[name][i]))
                for name in PHOTOS for rank, i in enumerate(np.argsort(-raw[name])[:3])]
    assert_approx_df_equality(got, spark.createDataFrame(expected, got.schema), precision=1e-5,
                              ignore_row_order=True, ignore_nullable=True)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_image_structs_give_the_same_top_class(spark, photos, raw):
    from sparkvision.run import images as imglib

    rows = [(name, imglib.to_image_struct(imglib.decode_rgb((photos / name).read_bytes()), origin=name))
            for name in PHOTOS]
    structs = spark.createDataFrame(rows, T_STRUCT)
    out = _predictor().transform(structs).select("name", vector_to_array("predicted_labels").alias("p")).collect()
    for r in out:
        assert int(np.argmax(r.p)) == int(np.argmax(raw[r.name]))


T_STRUCT = f"name string, image {sparkdl.IMAGE_SCHEMA.simpleString()}"


def test_warns_once_and_checks_params():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparkdl.DeepImagePredictor(inputCol="image", outputCol="out", modelName="InceptionV3")
    assert len([w for w in caught if issubclass(w.category, SparkdlCompatWarning)]) == 1
    with pytest.raises(ValueError, match="topK must be between 1 and 1000"):
        _predictor(topK=0)
    with pytest.raises(ValueError, match="unknown modelName 'AlexNet'"):
        _predictor(modelName="AlexNet")


def test_keras_model_without_its_weights_file_names_it(spark, photo_bytes, tmp_path):
    p = _predictor(modelName="InceptionV3", allowDownload=False, cacheDir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"):
        p.transform(photo_bytes)


def test_save_and_load_keep_the_params(tmp_path):
    p = _predictor(inputCol="img", outputCol="top", decodePredictions=True, topK=2, batchSize=4)
    p.save(str(tmp_path / "p"))
    loaded = sparkdl.DeepImagePredictor.load(str(tmp_path / "p"))
    assert type(loaded) is sparkdl.DeepImagePredictor
    assert {k.name: v for k, v in loaded.extractParamMap().items()} == \
        {k.name: v for k, v in p.extractParamMap().items()}
