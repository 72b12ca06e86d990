"""Evaluation: accuracy with a Wilson 95 % interval, per-class and weighted precision/recall/F1,
confusion matrix, ROC AUC from the probability column (binary; one-vs-rest macro for more
classes), the majority-class baseline, and the plots.

The numbers come from numpy on the collected ``(label, prediction, probability)`` of the
evaluated rows, so they are easy to check by hand.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.stats import rankdata

from sparkvision.columns import CONFIDENCE, IMAGE_ID, LABEL, LABEL_INDEX, PATH, PREDICTED_LABEL, PREDICTION, PROBABILITY

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


def collect_predictions(predictions: DataFrame, label_col: str = LABEL_INDEX) -> tuple[np.ndarray, ...]:
    rows = predictions.select(
        label_col, PREDICTION, vector_to_array(PROBABILITY).alias("p")
    ).collect()
    y = np.array([r[label_col] for r in rows], dtype=int)
    yhat = np.array([r[PREDICTION] for r in rows], dtype=int)
    proba = np.array([r["p"] for r in rows], dtype=float) if rows else np.zeros((0, 0))
    return y, yhat, proba


def predictions_table(predictions: DataFrame, *extra: str) -> DataFrame:
    """``image_id, path, label, predicted_label, confidence, probability`` (probability as an array), then
    the ``extra`` columns."""
    proba = vector_to_array(PROBABILITY)
    return predictions.select(
        IMAGE_ID, PATH, LABEL, PREDICTED_LABEL, F.array_max(proba).alias(CONFIDENCE), proba.alias(PROBABILITY), *extra,
    )


def _png(fig) -> bytes:
    """The figure as PNG bytes (closed after); storage writes them wherever the run's output is."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: list[list[int]], classes: list[str], title: str = "Confusion matrix") -> bytes:
    """The confusion matrix as a PNG."""
    plt = _pyplot()

    cm = np.asarray(cm)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > peak / 2 else "black")
    return _png(fig)


def plot_roc(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> bytes:
    """ROC curves from the probabilities (one-vs-rest for more than two classes) as a PNG."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(5, 5))
    pairs = [(classes[1], y == 1, proba[:, 1])] if len(classes) == 2 else [
        (c, y == k, proba[:, k]) for k, c in enumerate(classes)
    ]
    for name, positive, score in pairs:
        auc = roc_auc(positive, score)
        if auc is None:
            continue
        fpr, tpr = roc_curve(positive, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" + (" (one-vs-rest)" if len(classes) > 2 else ""))
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def report_markdown(metrics: dict, split: dict | None = None, tuning: dict | None = None) -> str:
    """A human-readable report of ``metrics.json``."""
    lo, hi = metrics["accuracy_ci95"]
    auc = metrics["roc_auc"]
    lines = [
        "# sparkvision evaluation",
        "",
        f"- images evaluated: {metrics['n']}",
        f"- accuracy: {metrics['accuracy']:.4f} (95 % CI {lo:.4f} to {hi:.4f})",
        f"- majority-class baseline ({metrics['baseline_class']}): {metrics['baseline_accuracy']:.4f}",
        f"- weighted precision / recall / F1: {metrics['precision_weighted']:.4f} / "
        f"{metrics['recall_weighted']:.4f} / {metrics['f1_weighted']:.4f}",
        f"- ROC AUC ({metrics['roc_auc_kind']}, from probabilities): " + ("n/a" if auc is None else f"{auc:.4f}"),
        "- log loss: " + ("n/a" if metrics.get("log_loss") is None else f"{metrics['log_loss']:.4f}"),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in metrics["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    classes = metrics["classes"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if split:
        lines += ["", "Split per class", "", "| class | train | validation | test |", "|---|---|---|---|"]
        for name, counts in split.items():
            lines.append(f"| {name} | {counts['train']} | {counts['validation']} | {counts['test']} |")
    if tuning:
        lines += ["", f"Tuning ({tuning['metric']}, {tuning['folds']}-fold CV on training rows only)", "",
                  "| reg_param | elastic_net_param | max_iter | mean | std |", "|---|---|---|---|---|"]
        for g in tuning["grid"]:
            lines.append(f"| {g['reg_param']} | {g['elastic_net_param']} | {g['max_iter']} | "
                         f"{g['mean']:.4f} | {g['std']:.4f} |")
        lines.append(f"\nBest: {tuning['best_params']}")
    return "\n".join(lines) + "\n"
