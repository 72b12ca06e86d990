"""The stages behind the CLI. Each reads the previous stage's output under ``output.dir``:

``images.parquet`` (+ ``rejected.*``) -> ``features.parquet`` -> ``model/`` + ``split.parquet``
-> ``evaluation/`` (metrics.json, report.md, plots, predictions). Outputs are replaced atomically.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

from pyspark import InheritableThread, StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from . import evaluate as ev
from . import loader, predict as pr, storage
from .config import Config, dump
from .featurizer import DeepImageFeaturizer
from .split import TEST, TRAIN, split_report, stratified_split
from .train import assemble, classify_features, tune

log = logging.getLogger("sparkvision")


def paths(cfg: Config) -> dict[str, str]:
    out = cfg["output"]["dir"]
    return {
        "out": out,
        "images": os.path.join(out, "images.parquet"),
        "rejected": os.path.join(out, "rejected.parquet"),
        "rejected_csv": os.path.join(out, "rejected.csv"),
        "load": os.path.join(out, "load.json"),
        "features": os.path.join(out, "features.parquet"),
        "featurize": os.path.join(out, "featurize.json"),
        "model": os.path.join(out, "model"),
        "split": os.path.join(out, "split.parquet"),
        "train": os.path.join(out, "train.json"),
        "evaluation": os.path.join(out, "evaluation"),
        "metrics": os.path.join(out, "evaluation", "metrics.json"),
        "report": os.path.join(out, "evaluation", "report.md"),
    }


def _require(path: str, stage: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run 'sparkvision {stage}' first (same --output)")


def make_featurizer(cfg: Config) -> DeepImageFeaturizer:
    m, f = cfg["model"], cfg["featurize"]
    return DeepImageFeaturizer(
        inputCol="content", outputCol="features", modelName=m["name"], weightsPath=m["weights"],
        cacheDir=m["cache_dir"], mirrorUrl=m["mirror_url"], batchSize=f["batch_size"], numThreads=f["threads"],
        maxPixels=cfg["data"]["max_pixels"],
    )


def featurize_partitions(spark: SparkSession, cfg: Config, n_images: int) -> int:
    """Tasks for featurization: ``featurize.partitions``, or two per executor core, at most one per image."""
    configured = cfg["featurize"]["partitions"]
    return max(1, configured or min(n_images, 2 * spark.sparkContext.defaultParallelism))


def featurize_tasks(spark: SparkSession, cfg: Config, images: DataFrame) -> tuple[DataFrame, int]:
    """The images split into featurize tasks, and how many.

    Parquet's own splits are byte-balanced and deterministic (a retried task reads the same rows), so
    they are used as they are when they keep every core busy: no shuffle of the image bytes. A set
    ``featurize.partitions``, or a scan with fewer splits than cores, hash-partitions by ``image_id``.
    """
    scan = images.rdd.getNumPartitions()
    if not cfg["featurize"]["partitions"] and scan >= spark.sparkContext.defaultParallelism:
        return images, scan
    parts = featurize_partitions(spark, cfg, images.count())
    return images.repartition(parts, "image_id"), parts


def _describe(spark: SparkSession, stage: str) -> None:
    """Name the Spark jobs of a stage (UI, event log): ``sparkvision featurize``."""
    spark.sparkContext.setJobDescription(f"sparkvision {stage}")


@contextmanager
def _beside(fn, *args):
    """Run ``fn(*args)`` on a thread that carries this one's Spark job settings, while the ``with``
    body runs; wait for it on the way out and raise its error, unless the body raised first."""
    failure: list[BaseException] = []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    thread = InheritableThread(target=run, name="sparkvision-beside")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failure:
        raise failure[0]


def stage_load(spark: SparkSession, cfg: Config) -> dict:
    _describe(spark, "load")
    p = paths(cfg)
    os.makedirs(p["out"], exist_ok=True)
    storage.write_text(os.path.join(p["out"], "config.yaml"), dump(cfg))
    started = time.time()
    log.info("load: scanning %s", cfg["data"]["images"] or cfg["data"]["manifest"])
    result = loader.load_images(spark, cfg["data"])
    storage.write_parquet(result.images, p["images"])
    storage.write_parquet(result.rejected, p["rejected"])
    pr.write_csv(spark.read.parquet(p["rejected"]).orderBy("image_id"), p["rejected_csv"])
    per_class = {r["label"]: r["count"] for r in spark.read.parquet(p["images"]).groupBy("label").count().collect()}
    summary = {**result.summary(), "per_class": dict(sorted(per_class.items())), "seconds": time.time() - started}
    storage.write_json(p["load"], summary)
    log.info("load: %d discovered, %d accepted, %d rejected (see %s)", result.discovered, result.accepted,
             result.n_rejected, p["rejected_csv"])
    return summary


def stage_featurize(spark: SparkSession, cfg: Config) -> dict:
    _describe(spark, "featurize")
    p = paths(cfg)
    _require(p["images"], "load")
    images = spark.read.parquet(p["images"])
    featurizer = make_featurizer(cfg)
    featurizer.resolveWeights()
    started = time.time()
    images, parts = featurize_tasks(spark, cfg, images)
    log.info("featurize: %s, batch %d, %d tasks", featurizer.spec().name, cfg["featurize"]["batch_size"], parts)
    features = featurizer.transform(images).select("image_id", "path", "label", "label_index", "features")
    # Counted while written (no second pass over the features): rows, and rows whose image failed to decode.
    counts = Observation("featurize")
    features = features.observe(counts, F.count(F.lit(1)).alias("images"),
                                F.count_if(F.col("features").isNull()).alias("missing"))
    # Saving the featurizer's parameters is a small Spark job of its own: run it beside the big one.
    with _beside(storage.save_ml, spark, featurizer, os.path.join(p["out"], "featurizer")):
        storage.write_parquet(features, p["features"], storage.VECTOR_PARQUET_OPTIONS)
    seconds = time.time() - started
    n, missing = counts.get["images"], counts.get["missing"]
    if missing:
        raise RuntimeError(f"featurize: {missing} images could not be decoded; see the worker logs")
    summary = {
        "model": featurizer.spec().name,
        "weights_sha256": featurizer.getOrDefault(featurizer.weightsChecksum),
        "feature_dim": featurizer.spec().feature_dim,
        "images": n,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds else None,
    }
    storage.write_json(p["featurize"], summary)
    log.info("featurize: %d images in %.1f s", n, seconds)
    return summary


def stage_train(spark: SparkSession, cfg: Config) -> dict:
    _describe(spark, "train")
    p = paths(cfg)
    _require(p["features"], "featurize")
    features = spark.read.parquet(p["features"])
    classes = loader.classes_of(features)
    s = cfg["split"]
    assigned = stratified_split(features, s["test_fraction"], s["validation_fraction"], s["seed"])
    storage.write_parquet(assigned.select("image_id", "label", "split"), p["split"])
    split = spark.read.parquet(p["split"])
    report = split_report(split)
    train_rows = features.join(split.filter(F.col("split") == TRAIN), ["image_id", "label"]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    counts = {r["label_index"]: r["count"] for r in train_rows.groupBy("label_index").count().collect()}
    majority = max(sorted(counts), key=lambda k: counts[k])
    result = tune(train_rows, len(classes), cfg["train"])
    train_rows.unpersist()
    featurizer = DeepImageFeaturizer.load(os.path.join(p["out"], "featurizer"))
    model = assemble(featurizer, result.model, classes)
    storage.save_ml(spark, model, p["model"])
    summary = {
        "classes": classes,
        "split": report,
        "majority_class": majority,
        "tuning": {"metric": result.metric, "folds": cfg["train"]["folds"], "engine": result.engine, "grid": result.grid,
                   "best_params": result.best_params, "seconds": result.seconds},
    }
    storage.write_json(p["train"], summary)
    log.info("train: best %s (%s CV, %s engine, %.1f s); model saved to %s", result.best_params, result.metric,
             result.engine, result.seconds, p["model"])
    return summary


def stage_evaluate(spark: SparkSession, cfg: Config, which: str = TEST) -> dict:
    _describe(spark, "evaluate")
    p = paths(cfg)
    for key, stage in (("model", "train"), ("split", "train"), ("features", "featurize")):
        _require(p[key], stage)
    model = pr.load_model(p["model"])
    trained = storage.read_json(p["train"])
    classes = trained["classes"]
    rows = spark.read.parquet(p["features"]).join(
        spark.read.parquet(p["split"]).filter(F.col("split") == which), ["image_id", "label"]
    )
    predictions = classify_features(model, rows).persist(StorageLevel.MEMORY_AND_DISK)
    y, yhat, proba = ev.collect_predictions(predictions)
    metrics = ev.metrics_from_arrays(y, yhat, proba, classes, trained["majority_class"])
    metrics.update({"split": which, "model": storage.read_json(p["featurize"])["model"]})
    out = p["evaluation"]
    os.makedirs(out, exist_ok=True)
    storage.write_json(p["metrics"], metrics)
    ev.plot_confusion_matrix(metrics["confusion_matrix"], classes, os.path.join(out, "confusion_matrix.png"))
    ev.plot_roc(y, proba, classes, os.path.join(out, "roc_curve.png"))
    pr.write_predictions(ev.predictions_table(predictions).orderBy("image_id"), out)
    storage.write_text(p["report"], ev.report_markdown(metrics, trained["split"], trained["tuning"]))
    predictions.unpersist()
    log.info("evaluate: accuracy %.4f (baseline %.4f), ROC AUC %s; report %s", metrics["accuracy"],
             metrics["baseline_accuracy"], metrics["roc_auc"], p["report"])
    return metrics


def stage_predict(spark: SparkSession, cfg: Config, model_dir: str, images_dir: str, out_dir: str) -> dict:
    _describe(spark, "predict")
    model = pr.load_model(model_dir)
    images, rejected, counts = pr.unlabelled_images(spark, images_dir, cfg["data"])
    os.makedirs(out_dir, exist_ok=True)
    log.info("predict: %d images (%d rejected)", counts["accepted"], counts["rejected"])
    written = pr.write_predictions(pr.predict(model, images).orderBy("image_id"), out_dir)
    rejected_csv = os.path.join(out_dir, "rejected.csv")
    pr.write_csv(rejected.orderBy("image_id"), rejected_csv)
    summary = {**counts, **written, "rejected_csv": rejected_csv}
    storage.write_json(os.path.join(out_dir, "predict.json"), summary)
    return summary


def run_all(spark: SparkSession, cfg: Config) -> dict:
    return {
        "load": stage_load(spark, cfg),
        "featurize": stage_featurize(spark, cfg),
        "train": stage_train(spark, cfg),
        "evaluate": stage_evaluate(spark, cfg),
    }
