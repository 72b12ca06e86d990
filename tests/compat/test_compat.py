"""sparkvision.compat.sparkdl: the old names on the new engine, and both original recipes as examples."""

import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from sparkvision.compat import sparkdl
from sparkvision.compat.image import ImageSchemaCompatWarning
from sparkvision.compat.sparkdl import SparkdlCompatWarning

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_read_images_matches_sparks_own_image_source(spark, digits_small):
    """For lossless PNGs, readImages' struct is byte-for-byte what spark.read.format('image') gives."""
    folder = str(digits_small / "7")
    ours = sparkdl.readImages(folder)
    assert ours.columns == ["filePath", "image"]
    assert ours.schema["image"].dataType == sparkdl.IMAGE_SCHEMA
    theirs = spark.read.format("image").load(folder)
    cols = ["height", "width", "nChannels", "mode", "data"]
    assert_df_equality(ours.select(F.col("filePath").alias("origin"), *[F.col(f"image.{c}") for c in cols]),
                       theirs.select(F.regexp_replace("image.origin", "^file:///", "file:/").alias("origin"),
                                     *[F.col(f"image.{c}") for c in cols]),
                       ignore_row_order=True)


def test_read_images_reports_what_it_leaves_out(spark, tmp_path, digits_small):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(digits_small / "1", folder)
    good = sorted(folder.iterdir())[0].read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("not an image")
    with pytest.warns(SparkdlCompatWarning, match=r"2 of 12 files could not be used") as record:
        images, rejected = sparkdl.readImagesWithRejects(str(folder))
    message = next(str(w.message) for w in record if issubclass(w.category, SparkdlCompatWarning))
    assert "notes.jpg" in message and "truncated.png" in message
    assert images.count() == 10
    assert sorted(Path(r.path).name for r in rejected.collect()) == ["notes.jpg", "truncated.png"]


def test_featurizer_accepts_old_names_and_warns_once_about_differences():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = sparkdl.DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="InceptionV3",
                                        scaleHint="SCALE_AREA_AVERAGING")
    messages = [str(w.message) for w in caught if issubclass(w.category, SparkdlCompatWarning)]
    assert len(messages) == 1 and "2048 values for InceptionV3" in messages[0] and "131,072" in messages[0]
    assert f.getInputCol() == "image" and f.spec().name == "InceptionV3"
    for name in sparkdl.SPARKDL_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SparkdlCompatWarning)
            assert sparkdl.DeepImageFeaturizer(modelName=name).spec().name == name
    with pytest.raises(ValueError, match="unknown modelName 'Inception'.*InceptionV3, Xception, ResNet50, VGG16, VGG19"):
        sparkdl.DeepImageFeaturizer(modelName="Inception")


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_struct_input_gives_the_same_features_as_encoded_bytes(spark, digits_small):
    from sparkvision.ml.featurizer import DeepImageFeaturizer

    folder = str(digits_small / "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        old = sparkdl.DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="efficientnet_lite0")
    from_structs = old.transform(sparkdl.readImages(folder)).select(
        F.col("filePath").alias("path"), F.posexplode(vector_to_array("features")))
    raw = spark.read.format("binaryFile").load(folder)
    from_bytes = DeepImageFeaturizer(inputCol="content", modelName="efficientnet_lite0").transform(raw).select(
        "path", F.posexplode(vector_to_array("features")))
    assert from_structs.count() == 10 * 1280
    assert_approx_df_equality(from_structs, from_bytes, 1e-5, ignore_row_order=True)


def test_image_struct_helpers_round_trip_and_channel_order(spark):
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 2] = 255  # pure red, stored BGR
    struct = sparkdl.imageArrayToStruct(bgr, origin="mem:red")
    assert struct["mode"] == 16 and struct["nChannels"] == 3
    row = spark.createDataFrame([(struct,)], "image " + sparkdl.IMAGE_SCHEMA.simpleString()).first().image
    np.testing.assert_array_equal(sparkdl.imageStructToArray(row), bgr)
    assert sparkdl.imageStructToPIL(row).getpixel((0, 0)) == (255, 0, 0)
    gray = sparkdl.imageArrayToStruct(np.full((2, 2), 7, np.uint8))
    assert gray["mode"] == 0 and sparkdl.imageStructToPIL(gray).getpixel((1, 1)) == (7, 7, 7)
    with pytest.raises(ValueError, match="8-bit"):
        sparkdl.imageArrayToStruct(np.zeros((2, 2, 3), np.float32))


def _run_example(name: str, monkeypatch, *argv) -> dict:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        warnings.simplefilter("ignore", ImageSchemaCompatWarning)
        return runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")


@pytest.mark.slow
@pytest.mark.shared
def test_messi_ronaldo_example_reports_honest_metrics(spark, football, monkeypatch, capsys):
    from sklearn.metrics import accuracy_score, roc_auc_score

    env = _run_example("messi_ronaldo.py", monkeypatch, "--images", str(football))
    out = capsys.readouterr().out
    assert "Test set accuracy = " in out and "ROC AUC" in out
    for name, preds in (("maxIter=30", env["predictions"]),
                        ("regParam=0.05, elasticNetParam=0.3, maxIter=15", env["predictions2"])):
        rows = preds.select("label", "prediction", vector_to_array("probability").alias("p")).collect()
        y = np.array([r.label for r in rows])
        p1 = np.array([r.p[1] for r in rows])
        r = env["results"][name]
        assert r["n"] == len(rows) > 0 and set(y) == {0, 1}
        assert r["accuracy"] == pytest.approx(accuracy_score(y, [r_.prediction for r_ in rows]))
        assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-9)  # from probabilities
        assert r["auc_of_hard_labels"] == pytest.approx(roc_auc_score(y, [r_.prediction for r_ in rows]), abs=1e-9)
        assert r["accuracy"] > 0.5


@pytest.mark.slow
def test_digits_example_reports_honest_metrics(spark, tmp_path, monkeypatch, capsys):
    from sklearn.metrics import accuracy_score, roc_auc_score

    env = _run_example("digits_multiclass.py", monkeypatch, "--out", str(tmp_path))
    out = capsys.readouterr().out
    for metric in ("f1:", "weightedPrecision:", "weightedRecall:", "accuracy:", "one-vs-rest ROC AUC",
                   "the original's AUC of one-hot labels"):
        assert metric in out
    assert "ImageSchema.readImages" in (ROOT / "examples" / "digits_multiclass.py").read_text()
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    y, proba, pred = env["y_true"], env["proba"], env["y_pred"]
    assert env["results"]["n"] == len(y) and len(y) + env["train"].count() == 500
    assert env["results"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert len(np.unique(y)) == 10  # every class in the test rows, so one-vs-rest AUC is defined for each
    assert env["results"]["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-9)
    assert env["results"]["accuracy"] > 0.5
    one_hot = np.eye(10)
    assert env["results"]["auc_of_one_hot_labels"] == pytest.approx(
        roc_auc_score(one_hot[y], one_hot[pred], average="macro"), abs=1e-9)
