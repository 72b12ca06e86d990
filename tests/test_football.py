"""Messi vs Ronaldo with the offline default model: the original experiment, done honestly."""

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkvision import config, evaluate, train
from sparkvision.split import stratified_split

SEEDS = [12, 1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.shared
def test_mean_accuracy_over_five_stratified_splits(football_features, football_loaded, capsys):
    _, features = football_features
    assert football_loaded.accepted == 60 and football_loaded.classes == ["messi", "ronaldo"]
    train_cfg = {**config.defaults()["train"], "reg_param": [0.01, 0.1], "elastic_net_param": [0.0], "max_iter": [100]}
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
    with capsys.disabled():
        print(f"\nfootball accuracy per split {accuracies}, mean {np.mean(accuracies):.4f}; "
              f"ROC AUC mean {np.mean(aucs):.4f}")
    assert np.mean(accuracies) >= 0.90
