"""Where a run's files are: one object names every file a stage reads and writes.

``RunLayout(out)`` is README's stage table in code (:data:`STAGES` renders it): the CLI, every stage and
predict take their paths from here, and nothing else joins paths under an output folder. Paths are
local paths or URIs (``file:``, ``s3a://``, ``dbfs:/``, ...); :func:`join` keeps the scheme.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (``s3a://b/x`` + ``y`` -> ``s3a://b/x/y``)."""
    if "://" in base or base.startswith(("file:", "dbfs:")):
        return posixpath.join(base.rstrip("/") + "/" if base.endswith(":/") else base, *parts)
    return os.path.join(base, *parts)


# The marker written inside every data folder (Spark ignores files starting with "_" when reading Parquet
# and ML folders): which stage wrote it and the fingerprint of what it was made from.
MARKER = "_sparkvision.json"


class _At:
    """A file or folder of a layout, at ``parts`` below its ``out`` folder."""

    def __set_name__(self, owner, name):
        owner._names = getattr(owner, "_names", ()) + (self.parts,)

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, obj, owner=None):
        return self if obj is None else join(obj.out, *self.parts)


@dataclass(frozen=True)
class RunLayout:
    """The files of one run (``--output``)."""

    out: str

    config = _At("config.yaml")               # the run's settings, credentials redacted
    lock = _At(".sparkvision.lock")           # held while a command writes here
    tracking = _At("mlflow.json")             # the MLflow run this folder is logged to (with tracking only)
    # load
    images = _At("images.parquet")
    rejected = _At("rejected.parquet")
    rejected_csv = _At("rejected.csv")
    load = _At("load.json")
    # featurize
    features = _At("features.parquet")
    featurizer = _At("featurizer")
    featurize = _At("featurize.json")
    # train
    split = _At("split.parquet")
    model = _At("model")
    train = _At("train.json")
    # evaluate: one folder, written whole (see EvaluationLayout)
    evaluation = _At("evaluation")
    sample_data = _At("sample_data", "digits")  # the demo's generated images (``run`` without input)

    @property
    def evaluated(self) -> "EvaluationLayout":
        return EvaluationLayout(self.evaluation)

    @property
    def metrics(self) -> str:
        return self.evaluated.metrics

    @property
    def report(self) -> str:
        return self.evaluated.report

    def leftover_names(self) -> set[str]:
        """Names this layout writes directly in ``out``: what an interrupted run may have left staged there."""
        return {parts[0] for parts in self._names}

    def record(self, stage: str) -> str:
        """The JSON a stage writes last, as its commit record (holds its fingerprint)."""
        return {"load": self.load, "featurize": self.featurize, "train": self.train, "evaluate": self.metrics}[stage]


@dataclass(frozen=True)
class EvaluationLayout:
    """What ``sparkvision evaluate`` writes into ``OUT/evaluation`` (staged beside it, then swapped in whole)."""

    out: str

    metrics = _At("metrics.json")
    report = _At("report.md")
    report_html = _At("report.html")          # self-contained: metrics, plots, misclassified thumbnails
    confusion_matrix_png = _At("confusion_matrix.png")
    roc_curve_png = _At("roc_curve.png")

    @property
    def predictions(self) -> "PredictionLayout":
        """Predictions on the test split: the same files as ``sparkvision predict`` writes."""
        return PredictionLayout(self.out)


@dataclass(frozen=True)
class PredictionLayout:
    """What ``sparkvision predict --output OUT`` writes (and evaluation, under ``evaluation/``)."""

    out: str

    parquet = _At("predictions.parquet")
    csv = _At("predictions.csv")
    rejected_csv = _At("rejected.csv")
    summary = _At("predict.json")
    model = _At("model")  # --model models:/...: the registered model as a Spark pipeline, fetched here

    leftover_names = RunLayout.leftover_names


@dataclass(frozen=True)
class StreamLayout:
    """What ``sparkvision stream --output OUT`` writes."""

    out: str

    predictions = _At("predictions")            # Parquet (or Delta), partitioned by batch_id
    rejected = _At("rejected")
    checkpoint = _At("_stream", "checkpoint")   # Spark's offsets and commits (unless --checkpoint)
    commits = _At("_stream", "commits")         # N.json: batch N is in both tables
    staging = _At("_stream", "staging")         # a batch's tables before they are swapped in
    summary = _At("stream.json")                # the last run's settings and totals

    def commit(self, batch_id: int) -> str:
        return join(self.commits, f"{batch_id}.json")


# README's stage table: (command, reads, writes); a test keeps README in step with it.
STAGES = [
    ("sparkvision load", "`--images` / `--manifest`",
     "`images.parquet`, `rejected.parquet`, `rejected.csv`, `load.json`, `config.yaml`"),
    ("sparkvision featurize", "`images.parquet`", "`features.parquet` (computed once), `featurizer/`, `featurize.json`; "
     "images that do not decode join `rejected.parquet`, `rejected.csv`"),
    ("sparkvision train", "`features.parquet`, `featurizer/`",
     "`split.parquet`, `model/` (featurizer + classifier + labels), `train.json`"),
    ("sparkvision evaluate", "`model/`, `features.parquet`, `split.parquet`",
     "`evaluation/`: `metrics.json`, `report.md`, `report.html`, `confusion_matrix.png`, `roc_curve.png`, "
     "`predictions.parquet`, `predictions.csv`"),
    ("sparkvision predict", "`--model` (a folder or `models:/NAME@alias`), `--images`",
     "`predictions.parquet`, `predictions.csv`, `rejected.csv`, `predict.json`; `model/` when `--model` is registered"),
    ("sparkvision run", "all of the above", "all of the above; with no arguments, the built-in demo"),
    ("sparkvision stream", "`--model`, `--images` (files as they arrive)",
     "`predictions/`, `rejected/` (Parquet by `batch_id`), `_stream/` (checkpoint, batch commits), `stream.json`"),
    ("sparkvision run (MLflow tracking on)", "the files above", "also `mlflow.json`: the MLflow run's id, its "
     "logged models and registered version (`train` and `evaluate` too)"),
]


def stage_table() -> str:
    lines = ["| command | reads | writes |", "|---|---|---|"]
    lines += [f"| `{cmd}` | {reads} | {writes} |" for cmd, reads, writes in STAGES]
    return "\n".join(lines)
