"""Where a run's files are: one object names every file a stage reads and writes.

``RunLayout(out)`` is README's stage table in code (:data:`STAGES` renders it): the CLI, every stage and
predict take their paths from here, and nothing else joins paths under an output folder. Paths are
local paths or URIs (``file:``, ``s3a://``, ``dbfs:/``, ...); :func:`join` keeps the scheme.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (``s3a://b/x`` + ``y`` -> ``s3a://b/x/y``)."""
    if "://" in base or base.startswith(("file:", "dbfs:")):
        return posixpath.join(base.rstrip("/") + "/" if base.endswith(":/") else base, *parts)
    import os

    return os.path.join(base, *parts)


# The marker written inside every data folder (Spark ignores files starting with "_" when reading Parquet
# and ML folders): which stage wrote it and the fingerprint of what it was made from.
MARKER = "_sparkvision.json"


@dataclass(frozen=True)
class RunLayout:
    """The files of one run (``--output``)."""

    out: str

    def path(self, *parts: str) -> str:
        return join(self.out, *parts)

    # load
    @property
    def config(self) -> str:
        return self.path("config.yaml")

    @property
    def lock(self) -> str:
        return self.path(".sparkvision.lock")

    @property
    def images(self) -> str:
        return self.path("images.parquet")

    @property
    def rejected(self) -> str:
        return self.path("rejected.parquet")

    @property
    def rejected_csv(self) -> str:
        return self.path("rejected.csv")

    @property
    def load(self) -> str:
        return self.path("load.json")

    # featurize
    @property
    def features(self) -> str:
        return self.path("features.parquet")

    @property
    def featurizer(self) -> str:
        return self.path("featurizer")

    @property
    def featurize(self) -> str:
        return self.path("featurize.json")

    # train
    @property
    def split(self) -> str:
        return self.path("split.parquet")

    @property
    def model(self) -> str:
        return self.path("model")

    @property
    def train(self) -> str:
        return self.path("train.json")

    # evaluate
    @property
    def evaluation(self) -> str:
        return self.path("evaluation")

    @property
    def metrics(self) -> str:
        return self.path("evaluation", "metrics.json")

    @property
    def report(self) -> str:
        return self.path("evaluation", "report.md")

    @property
    def confusion_matrix_png(self) -> str:
        return self.path("evaluation", "confusion_matrix.png")

    @property
    def roc_curve_png(self) -> str:
        return self.path("evaluation", "roc_curve.png")

    @property
    def predictions(self) -> "PredictionLayout":
        """Evaluation's predictions on the test split (same files as ``sparkvision predict`` writes)."""
        return PredictionLayout(self.evaluation)

    @property
    def sample_data(self) -> str:
        """The demo's generated images (``sparkvision run`` without input)."""
        return self.path("sample_data", "digits")

    def record(self, stage: str) -> str:
        """The JSON a stage writes last, as its commit record (holds its fingerprint)."""
        return {"load": self.load, "featurize": self.featurize, "train": self.train, "evaluate": self.metrics}[stage]


@dataclass(frozen=True)
class PredictionLayout:
    """What ``sparkvision predict --output OUT`` writes (and evaluation, under ``evaluation/``)."""

    out: str

    @property
    def parquet(self) -> str:
        return join(self.out, "predictions.parquet")

    @property
    def csv(self) -> str:
        return join(self.out, "predictions.csv")

    @property
    def rejected_csv(self) -> str:
        return join(self.out, "rejected.csv")

    @property
    def summary(self) -> str:
        return join(self.out, "predict.json")


# README's stage table: (command, reads, writes); a test keeps README in step with it.
STAGES = [
    ("sparkvision load", "`--images` / `--manifest`",
     "`images.parquet`, `rejected.parquet`, `rejected.csv`, `load.json`, `config.yaml`"),
    ("sparkvision featurize", "`images.parquet`", "`features.parquet` (computed once), `featurizer/`, `featurize.json`"),
    ("sparkvision train", "`features.parquet`, `featurizer/`",
     "`split.parquet`, `model/` (featurizer + classifier + labels), `train.json`"),
    ("sparkvision evaluate", "`model/`, `features.parquet`, `split.parquet`",
     "`evaluation/`: `metrics.json`, `report.md`, `confusion_matrix.png`, `roc_curve.png`, `predictions.parquet`, "
     "`predictions.csv`"),
    ("sparkvision predict", "`--model`, `--images`", "`predictions.parquet`, `predictions.csv`, `rejected.csv`, `predict.json`"),
    ("sparkvision run", "all of the above", "all of the above; with no arguments, the built-in demo"),
]


def stage_table() -> str:
    lines = ["| command | reads | writes |", "|---|---|---|"]
    lines += [f"| `{cmd}` | {reads} | {writes} |" for cmd, reads, writes in STAGES]
    return "\n".join(lines)
