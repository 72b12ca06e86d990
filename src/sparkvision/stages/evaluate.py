"""The evaluate stage: the trained model on the test split's cached features -> ``evaluation/``: metrics.json
(:mod:`sparkvision.ml.metrics`: accuracy with a Wilson 95 % interval, per-class and weighted
precision/recall/F1, confusion matrix, ROC AUC, the majority-class baseline), report.md / report.html,
the plots and the predictions.

The numbers come from numpy on the collected ``(label, prediction, probability)`` of the
evaluated rows, so they are easy to check by hand.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision.columns import IMAGE_ID, LABEL, LABEL_INDEX, PREDICTION, PROBABILITY, SPLIT
from sparkvision.ml.metrics import metrics_from_arrays, roc_auc, roc_curve
from sparkvision.run import provenance, report_html, storage
from sparkvision.run.layout import EvaluationLayout, RunLayout
from sparkvision.run.spark import describe_jobs
from sparkvision.run.split import TEST
from sparkvision.settings import Settings
from sparkvision.stages.predict import load_model, predictions_table, write_predictions
from sparkvision.stages.train import classify_features

progress = logging.getLogger("sparkvision")  # the stage's progress lines, under the CLI's name


def collect_predictions(predictions: DataFrame, label_col: str = LABEL_INDEX) -> tuple[np.ndarray, ...]:
    rows = predictions.select(
        label_col, PREDICTION, vector_to_array(PROBABILITY).alias("p")
    ).collect()
    y = np.array([r[label_col] for r in rows], dtype=int)
    yhat = np.array([r[PREDICTION] for r in rows], dtype=int)
    proba = np.array([r["p"] for r in rows], dtype=float) if rows else np.zeros((0, 0))
    return y, yhat, proba


def _png(fig) -> bytes:
    """The figure as PNG bytes (closed after); storage writes them wherever the run's output is."""
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


def stage_evaluate(spark: SparkSession, cfg: Settings, which: str = TEST) -> dict:
    """``sparkvision evaluate``: the model on the ``which`` split's features -> ``evaluation/`` (swapped in whole)."""
    describe_jobs(spark, "evaluate")
    lay = RunLayout(cfg.output.dir)
    trained = provenance.check_inputs(lay, "evaluate")
    featurized = provenance.check_stage(lay, "featurize")
    model = load_model(lay.model)
    classes = trained["classes"]
    rows = spark.read.parquet(lay.features).join(
        spark.read.parquet(lay.split).filter(F.col(SPLIT) == which), [IMAGE_ID, LABEL]
    )
    predictions = classify_features(model, rows).localCheckpoint()
    y, yhat, proba = collect_predictions(predictions)
    metrics = metrics_from_arrays(y, yhat, proba, classes, trained["majority_class"])
    metrics.update({"split": which, "model": featurized["model"],
                    "inputs": {"train": trained["fingerprint"], "featurize": featurized["fingerprint"]}})
    # The whole folder is written beside evaluation/ and swapped in: a failed evaluate leaves the old one.
    tmp = storage.staging(lay.evaluation)
    ev_out = EvaluationLayout(tmp)
    try:
        storage.makedirs(tmp)
        confusion_png = plot_confusion_matrix(metrics["confusion_matrix"], classes)
        roc_png = plot_roc(y, proba, classes)
        storage.write_bytes(ev_out.confusion_matrix_png, confusion_png)
        storage.write_bytes(ev_out.roc_curve_png, roc_png)
        write_predictions(predictions_table(predictions).orderBy(IMAGE_ID), ev_out.predictions)
        storage.write_text(ev_out.report, report_markdown(metrics, trained["split"], trained["tuning"]))
        thumbnails = report_html.gallery(predictions, spark.read.parquet(lay.images))
        storage.write_text(ev_out.report_html, report_html.render(metrics, trained["split"], trained["tuning"],
                                                                 confusion_png, roc_png, thumbnails))
        storage.write_json(ev_out.metrics, metrics)
        storage.replace_with(tmp, lay.evaluation)
    finally:
        storage.delete(tmp)
    auc = "n/a" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
    progress.info("evaluate: accuracy %.4f (baseline %.4f), ROC AUC %s; report %s", metrics["accuracy"],
                  metrics["baseline_accuracy"], auc, lay.report)
    return metrics
