"""Messi vs Ronaldo with the offline default model: the original experiment, done honestly."""

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkvision.settings import DataSettings, TrainSettings

from sparkvision.stages import evaluate

from sparkvision.stages import train
from sparkvision.run.split import stratified_split

SEEDS = [12, 1, 2, 3, 4]


def split_accuracies(features) -> tuple[list[float], list[float]]:
    """Test accuracy and ROC AUC on each of the :data:`SEEDS` splits, the model tuned on each split's train rows."""
    train_cfg = TrainSettings(reg_param=(0.01, 0.1), elastic_net_param=(0.0,), max_iter=(100,))
    accuracies, aucs = [], []
    for seed in SEEDS:
        split = stratified_split(features, test_fraction=1 / 3, seed=seed)
        train_rows = split.filter(F.col("split") == "train")
        test_rows = split.filter(F.col("split") == "test")
        assert test_rows.count() == 20 and train_rows.count() == 40
        result = train.tune(train_rows, 2, train_cfg)  # chosen by CV on the 40 training images only
        y, yhat, proba = evaluate.collect_predictions(result.model.transform(test_rows))
        m = evaluate.metrics_from_arrays(y, yhat, proba, ["messi", "ronaldo"], majority_class=0)
        accuracies.append(m["accuracy"])
        aucs.append(m["roc_auc"])
    return accuracies, aucs


@pytest.mark.slow
@pytest.mark.shared
def test_mean_accuracy_over_five_stratified_splits(football_features, football_loaded, capsys):
    _, features = football_features
    assert football_loaded.accepted == 60 and football_loaded.classes == ["messi", "ronaldo"]
    accuracies, aucs = split_accuracies(features)
    with capsys.disabled():
        print(f"\nfootball accuracy per split {accuracies}, mean {np.mean(accuracies):.4f}; "
              f"ROC AUC mean {np.mean(aucs):.4f}")
    assert np.mean(accuracies) >= 0.90


@pytest.mark.slow
@pytest.mark.shared
def test_engines_and_precision_leave_the_accuracy_unchanged(football_features, football_loaded, capsys):
    """The same five splits featurized on each engine, and in bf16 where the CPU has it: the mean accuracy is
    TensorFlow's (fp32 engines compute the same features within 1e-4)."""
    from sparkvision.ml import engines
    from sparkvision.ml.featurizer import DeepImageFeaturizer

    variants = [("tensorflow", "fp32")] + [(e, "fp32") for e in engines.installed() if e != "tensorflow"]
    if engines.bf16_supported():
        variants.append(("openvino", "bf16"))
    means = {}
    for engine, precision in variants:
        f = DeepImageFeaturizer(modelName="efficientnet_lite0", engine=engine, precision=precision)
        accuracies, _ = split_accuracies(f.transform(football_loaded.images).drop("content").cache())
        means[(engine, precision)] = float(np.mean(accuracies))
    with capsys.disabled():
        print("\nfootball mean accuracy over 5 splits by (engine, precision): "
              + ", ".join(f"{k}: {v:.4f}" for k, v in means.items()))
    reference = means[("tensorflow", "fp32")]
    for key, mean in means.items():  # 100 test predictions over the 5 splits: at most one of them may differ
        assert abs(mean - reference) <= 0.01, (key, mean, reference)


@pytest.mark.slow
@pytest.mark.shared
def test_draft_decoding_of_12_megapixel_photos(spark, football, tmp_path, capsys):
    """featurize.draft on phone-sized photos: the football images enlarged to 4032x3024 JPEGs (the
    originals are under 600 px, where draft changes nothing), featurized with the full decode and with
    the DCT-scaled one; the mean accuracy over the five splits is printed and must hold."""
    from PIL import Image

    from sparkvision.stages import load as loader
    from sparkvision.ml.featurizer import DeepImageFeaturizer

    for src in sorted(football.glob("*/*")):
        (tmp_path / src.parent.name).mkdir(exist_ok=True)
        with Image.open(src) as img:
            big = img.convert("RGB").resize((4032, 3024), Image.BICUBIC)
        big.save(tmp_path / src.parent.name / f"{src.stem}.jpg", quality=92)
    images = loader.load_images(spark, DataSettings(images=str(tmp_path))).images
    means = {}
    for draft in (False, True):
        f = DeepImageFeaturizer(modelName="efficientnet_lite0", draft=draft)
        accuracies, _ = split_accuracies(f.transform(images).drop("content").cache())
        means[draft] = float(np.mean(accuracies))
    with capsys.disabled():
        print(f"\nfootball as 12 MP JPEGs, mean accuracy over 5 splits: full decode {means[False]:.4f}, "
              f"draft {means[True]:.4f}")
    assert means[False] >= 0.90 and means[True] >= 0.90
    assert abs(means[True] - means[False]) <= 0.02  # at most two of the 100 test predictions differ
