"""The stages behind the CLI, composed. Each stage is a module of its own and reads the previous stage's
output under ``output.dir`` (the files are named by :class:`sparkvision.run.layout.RunLayout`):

``load`` (:mod:`~sparkvision.stages.load`): ``images.parquet`` (+ ``rejected.*``) -> ``featurize``
(:mod:`~sparkvision.stages.featurize`): ``features.parquet`` + ``featurizer/`` -> ``train``
(:mod:`~sparkvision.stages.train`): ``model/`` + ``split.parquet`` -> ``evaluate``
(:mod:`~sparkvision.stages.evaluate`): ``evaluation/``; ``predict`` (:mod:`~sparkvision.stages.predict`) and
``stream`` (:mod:`~sparkvision.stages.stream`) apply a trained model to new images. Each stage checks that
what it reads belongs together (:mod:`sparkvision.run.provenance`), writes its folders beside their targets,
swaps them in only after every check passed, and writes its JSON record last.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from pyspark.sql import SparkSession

from sparkvision.run import storage
from sparkvision.run.locks import run_lock
from sparkvision.run.layout import PredictionLayout, RunLayout
from sparkvision.settings import Settings
from sparkvision.stages.evaluate import stage_evaluate
from sparkvision.stages.featurize import stage_featurize
from sparkvision.stages.load import stage_load
from sparkvision.stages.predict import stage_predict
from sparkvision.stages.train import stage_train

__all__ = ["STAGES", "output_lock", "run_all", "stage_load", "stage_featurize", "stage_train", "stage_evaluate",
           "stage_predict"]

log = logging.getLogger("sparkvision")


@contextmanager
def output_lock(out: str, command: str):
    """Hold an output folder for one command: refuse a second run on it, clean what an interrupted one left."""
    storage.makedirs(out)
    lay = PredictionLayout(out) if command == "predict" else RunLayout(out)
    with run_lock(RunLayout(out).lock, command):
        for path in storage.clean_leftovers(out, lay.leftover_names()):
            log.info("removed %s, left by an interrupted run", path)
        yield


STAGES = {"load": stage_load, "featurize": stage_featurize, "train": stage_train, "evaluate": stage_evaluate}


def run_all(spark: SparkSession, cfg: Settings) -> dict:
    """``sparkvision run``: every stage in order, each on the previous one's output."""
    return {name: stage(spark, cfg) for name, stage in STAGES.items()}
