"""The evaluation's numbers from plain arrays: accuracy with a Wilson 95 % interval, per-class and weighted
precision/recall/F1, the confusion matrix, ROC AUC (binary; one-vs-rest macro for more classes), log loss
and the majority-class baseline. NumPy and SciPy only, so the numbers are easy to check by hand; the
evaluate stage (:mod:`sparkvision.stages.evaluate`) and the in-process tuning (:mod:`sparkvision.ml.local_lr`)
both use them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

Z95 = 1.959963984540054


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(int), y_pred.astype(int)), 1)
    return cm


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None when a class is absent."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y_true: np.ndarray, proba: np.ndarray | None, eps: float = 1e-15) -> float | None:
    """Mean negative log of the probability given to the true class (clipped at ``eps``, like scikit-learn)."""
    if proba is None or not len(proba):
        return None
    p = np.clip(proba[np.arange(len(y_true)), y_true.astype(int)], eps, 1.0)
    return float(-np.mean(np.log(p)))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    pos, s = positive[order].astype(bool), score[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps, fps = np.cumsum(pos)[distinct], np.cumsum(~pos)[distinct]
    tpr = np.r_[0.0, tps / max(pos.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~pos).sum(), 1)]
    return fpr, tpr


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def metrics_from_arrays(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: list[str], majority_class: int
) -> dict:
    """All metrics for one evaluated set. ``majority_class`` is the training set's most common class."""
    n_classes = len(classes)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    n = int(cm.sum())
    correct = int(np.trace(cm))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = {}
    for k, name in enumerate(classes):
        tp = int(cm[k, k])
        precision, recall = _safe_div(tp, predicted[k]), _safe_div(tp, support[k])
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _safe_div(2 * precision * recall, precision + recall),
            "support": int(support[k]),
        }
    weights = support / n if n else np.zeros(n_classes)

    def weighted(key):
        return float(sum(w * per_class[c][key] for w, c in zip(weights, classes)))

    def macro(key):
        return float(np.mean([per_class[c][key] for c in classes]))

    auc = None
    auc_per_class = {}
    if proba is not None and len(proba):
        if n_classes == 2:
            auc = roc_auc(y_true == 1, proba[:, 1])
        else:
            auc_per_class = {c: roc_auc(y_true == k, proba[:, k]) for k, c in enumerate(classes)}
            defined = [v for v in auc_per_class.values() if v is not None]
            auc = float(np.mean(defined)) if defined else None
    low, high = wilson_interval(correct, n)
    return {
        "log_loss": log_loss(y_true, proba),
        "n": n,
        "accuracy": _safe_div(correct, n),
        "accuracy_ci95": [low, high],
        "baseline_accuracy": _safe_div(int(support[majority_class]), n),
        "baseline_class": classes[majority_class],
        "precision_weighted": weighted("precision"),
        "recall_weighted": weighted("recall"),
        "f1_weighted": weighted("f1"),
        "precision_macro": macro("precision"),
        "recall_macro": macro("recall"),
        "f1_macro": macro("f1"),
        "roc_auc": auc,
        "roc_auc_kind": "binary" if n_classes == 2 else "one-vs-rest macro",
        "roc_auc_per_class": auc_per_class or None,
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }
