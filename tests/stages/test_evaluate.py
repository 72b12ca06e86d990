import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from sparkvision.stages import evaluate as ev


def test_metrics_equal_a_hand_computed_confusion_matrix(spark):
    # true:      a a a a b b b c c c
    # predicted: a a a b b b a c c a
    classes = ["a", "b", "c"]
    y = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    yhat = [0, 0, 0, 1, 1, 1, 0, 2, 2, 0]
    rows = [(t, float(p), Vectors.dense(np.eye(3)[p] * 0.8 + 0.2 / 3)) for t, p in zip(y, yhat)]
    df = spark.createDataFrame(rows, ["label_index", "prediction", "probability"])
    m = ev.metrics_from_arrays(*ev.collect_predictions(df), classes, majority_class=0)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    # a: tp 3, predicted 5, support 4; b: tp 2, predicted 3, support 3; c: tp 2, predicted 2, support 3
    assert m["per_class"]["a"]["precision"] == pytest.approx(3 / 5)
    assert m["per_class"]["a"]["recall"] == pytest.approx(3 / 4)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    f1 = {"a": 2 * 0.6 * 0.75 / 1.35, "b": 2 / 3, "c": 2 * 1 * (2 / 3) / (5 / 3)}
    assert m["f1_weighted"] == pytest.approx(0.4 * f1["a"] + 0.3 * f1["b"] + 0.3 * f1["c"])
    assert m["precision_weighted"] == pytest.approx(0.4 * 0.6 + 0.3 * 2 / 3 + 0.3 * 1.0)
    assert m["baseline_accuracy"] == pytest.approx(0.4)
    lo, hi = m["accuracy_ci95"]
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)  # Wilson, z=1.96


def test_roc_auc_uses_probabilities_and_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 200), 0, 1).round(2)  # with ties
    proba = np.c_[1 - score, score]
    m = ev.metrics_from_arrays(y, (score > 0.5).astype(int), proba, ["neg", "pos"], 0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    hard = ev.metrics_from_arrays(y, (score > 0.5).astype(int), np.eye(2)[(score > 0.5).astype(int)], ["neg", "pos"], 0)
    assert hard["roc_auc"] != pytest.approx(m["roc_auc"])  # hard labels are not probabilities


def test_multiclass_auc_is_one_vs_rest_macro():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + np.eye(4)[y] * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = ev.metrics_from_arrays(y, proba.argmax(1), proba, list("abcd"), 0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_plots_are_pngs():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    cm = ev.plot_confusion_matrix([[2, 0], [1, 1]], ["x", "y"])
    roc = ev.plot_roc(y, proba, ["x", "y"])
    assert cm[:4] == b"\x89PNG" and roc[:4] == b"\x89PNG" and len(roc) > 1000
