"""stages/predict.py, piece by piece and without a CNN: a stand-in featurizer (features = width, height) in
front of a real classifier, on a few tiny images. The whole command is tested in test_pipeline.py."""

from __future__ import annotations

import csv
import shutil

import pytest
from PIL import Image
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import functions as F

from sparkvision.columns import CONTENT, FEATURES, FEATURIZE_ERROR, HEIGHT, WIDTH
from sparkvision.ml.logistic import LogisticModel
from sparkvision.run.layout import PredictionLayout
from sparkvision.settings import DataSettings
from sparkvision.stages import predict as pr
from sparkvision.stages.train import assemble


class SizeFeaturizer(Transformer):
    """Stands in for DeepImageFeaturizer: features = (width, height); an image wider than 50 px cannot be used."""

    errorCol = Param(Params._dummy(), "errorCol", "why an image could not be used", TypeConverters.toString)

    def _transform(self, df):
        usable = F.col(CONTENT).isNotNull() & (F.col(WIDTH) <= 50)
        out = df.withColumn(FEATURES, F.when(usable, array_to_vector(F.array(F.col(WIDTH).cast("double"),
                                                                             F.col(HEIGHT).cast("double")))))
        if self.isDefined(self.errorCol):
            out = out.withColumn(self.getOrDefault(self.errorCol), F.when(~usable, F.lit("too wide")))
        return out


@pytest.fixture(scope="module")
def model():
    # tall (height > width) -> "tall", else "wide": margin = height - width
    classifier = LogisticModel(coefficients=[[-1.0, 1.0]], intercepts=[0.0], multinomial=False)
    return assemble(SizeFeaturizer(), classifier, ["wide", "tall"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict in")
    (root / "deeper" / "still").mkdir(parents=True)
    Image.new("RGB", (10, 30), (1, 2, 3)).save(root / "tall.png")
    Image.new("RGB", (30, 10), (1, 2, 3)).save(root / "deeper" / "wide.png")
    Image.new("RGB", (80, 90), (1, 2, 3)).save(root / "deeper" / "still" / "huge.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_a_missing_model_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: .*train one with 'sparkvision train'"):
        pr.load_model(str(tmp_path / "nope"))


def test_unlabelled_images_lists_every_file_at_any_depth(spark, images):
    found, rejected, counts = pr.unlabelled_images(spark, str(images), DataSettings())
    assert counts == {"discovered": 5, "accepted": 3, "rejected": 2}
    assert sorted(r.image_id for r in found.collect()) == ["deeper/still/huge.png", "deeper/wide.png", "tall.png"]
    reasons = {r.image_id: r.reason for r in rejected.collect()}
    assert set(reasons) == {"notes.txt", "broken.jpg"} and all(reasons.values())
    assert found.filter(F.col("label").isNotNull()).count() == 0  # no labels needed, none made up


def test_unlabelled_images_follow_the_data_settings(spark, images):
    _, rejected, counts = pr.unlabelled_images(spark, str(images), DataSettings(extensions=("jpg",)))
    assert counts == {"discovered": 5, "accepted": 0, "rejected": 5}
    assert {r.image_id: r.reason for r in rejected.collect()}["tall.png"] == "unsupported file extension"
    _, _, counts = pr.unlabelled_images(spark, str(images), DataSettings(max_pixels=1000))
    assert counts["accepted"] == 2  # 80 x 90 is over 1,000 pixels


def test_predict_splits_usable_images_from_the_rest_with_reasons(spark, images, model):
    found, _, _ = pr.unlabelled_images(spark, str(images), DataSettings())
    predictions, unusable = pr.predict(model, found)
    rows = {r.image_id: r for r in predictions.collect()}
    assert {k: r.predicted_label for k, r in rows.items()} == {"tall.png": "tall", "deeper/wide.png": "wide"}
    assert predictions.columns == ["image_id", "path", "predicted_label", "confidence", "probability"]
    for r in rows.values():
        assert r.confidence == pytest.approx(max(r.probability)) and sum(r.probability) == pytest.approx(1.0)
    bad = unusable.collect()
    assert [(r.image_id, r.reason) for r in bad] == [("deeper/still/huge.png",
                                                     "the model's featurizer cannot use it: too wide")]


def test_predicted_carries_the_given_columns_into_both_outputs(spark, images, model):
    found, _, _ = pr.unlabelled_images(spark, str(images), DataSettings())
    with pr.predicted(model, found.withColumn("batch", F.lit(7)), carry=("batch",)) as (predictions, unusable):
        assert {r.batch for r in predictions.collect() + unusable.collect()} == {7}
        assert FEATURIZE_ERROR not in predictions.columns


def test_predictions_table_and_its_files(spark, images, model, tmp_path):
    found, _, _ = pr.unlabelled_images(spark, str(images), DataSettings())
    predictions, _ = pr.predict(model, found)
    out = PredictionLayout(str(tmp_path / "out"))
    written = pr.write_predictions(predictions.orderBy("image_id"), out)
    assert written == {"parquet": out.parquet, "csv": out.csv, "images": 2}
    with open(out.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ["deeper/wide.png", "tall.png"]
    assert {"predicted_label", "confidence", "probability"} <= set(rows[0])
    assert spark.read.parquet(out.parquet).count() == 2


def test_a_model_saved_before_the_packages_by_role_still_loads(digits_model, tmp_path):
    """Models saved by earlier versions name their stages' classes by the old modules
    (``sparkvision.featurizer.DeepImageFeaturizer``); they load as the same classes and params."""
    old = tmp_path / "model"
    shutil.copytree(digits_model, old)
    renamed = 0
    for meta in old.rglob("metadata/part-*"):
        text = meta.read_text()
        before = text.replace('"class":"sparkvision.ml.featurizer.', '"class":"sparkvision.featurizer.')
        before = before.replace('"class":"sparkvision.ml.logistic.', '"class":"sparkvision.logistic.')
        renamed += before != text
        meta.write_text(before)
    for crc in old.rglob(".part-*.crc"):  # the checksums of the files just rewritten
        crc.unlink()
    assert renamed >= 2  # the featurizer's and the classifier's metadata
    fresh, loaded = pr.load_model(str(digits_model)), pr.load_model(str(old))
    assert [type(s) for s in loaded.stages] == [type(s) for s in fresh.stages]

    def params(stage):
        return {p.name: v for p, v in stage.extractParamMap().items()}

    assert [params(s) for s in loaded.stages] == [params(s) for s in fresh.stages]
