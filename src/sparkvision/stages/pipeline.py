"""The stages behind the CLI. Each reads the previous stage's output under ``output.dir`` (the files are
named by :class:`sparkvision.run.layout.RunLayout`):

``images.parquet`` (+ ``rejected.*``) -> ``features.parquet`` + ``featurizer/`` -> ``model/`` +
``split.parquet`` -> ``evaluation/``. Each stage checks that what it reads belongs together
(:mod:`sparkvision.run.provenance`), writes its folders beside their targets, swaps them in only after every
check passed, and writes its JSON record last.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from pyspark import InheritableThread
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from sparkvision.stages import evaluate as ev
from sparkvision.stages import load as loader
from sparkvision.stages import predict as pr
from sparkvision.run import provenance
from sparkvision.run import report_html
from sparkvision.run import storage
from sparkvision.columns import (CONTENT, FEATURE_COLUMNS, FEATURES, FEATURIZE_ERROR, IMAGE_ID, LABEL, LABEL_INDEX, PATH,
                      REASON, SPLIT)
from sparkvision.settings import Config, dump
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.run.layout import EvaluationLayout, PredictionLayout, RunLayout
from sparkvision.run.spark import default_parallelism, describe_jobs, gpu_tasks, is_remote, num_partitions, scoped_conf
from sparkvision.run.split import TEST, TRAIN, split_report, stratified_split
from sparkvision.stages.train import assemble, classify_features, tune

log = logging.getLogger("sparkvision")


def layout_of(cfg: Config) -> RunLayout:
    return RunLayout(cfg["output"]["dir"])


@contextmanager
def output_lock(out: str, command: str):
    """Hold an output folder for one command: refuse a second run on it, clean what an interrupted one left."""
    storage.makedirs(out)
    lay = PredictionLayout(out) if command == "predict" else RunLayout(out)
    with storage.run_lock(RunLayout(out).lock, command):
        for path in storage.clean_leftovers(out, lay.leftover_names()):
            log.info("removed %s, left by an interrupted run", path)
        yield


def make_featurizer(cfg: Config) -> DeepImageFeaturizer:
    n, f = cfg["network"], cfg["featurize"]
    return DeepImageFeaturizer(
        inputCol=CONTENT, outputCol=FEATURES, modelName=n["name"], weightsPath=n["weights"], cacheDir=n["cache_dir"],
        mirrorUrl=n["mirror_url"], allowDownload=n["download"], batchSize=f["batch_size"], numThreads=f["threads"],
        maxPixels=cfg["data"]["max_pixels"], engine=f["engine"], precision=f["precision"], draft=f["draft"],
    )


def runtime_settings(cfg: Config) -> dict:
    """How this run executes the network (not what it computes): applied to a saved featurizer too."""
    f = cfg["featurize"]
    return {"engine": f["engine"], "precision": f["precision"], "draft": f["draft"], "batchSize": f["batch_size"],
            "numThreads": f["threads"]}


def featurize_partitions(spark: SparkSession, cfg: Config, n_images: int | None = None) -> int:
    """Tasks for featurization: ``featurize.partitions``, or two per executor core, at most one per image
    where ``n_images`` is known."""
    configured = cfg["featurize"]["partitions"]
    cores = 2 * default_parallelism(spark)
    return max(1, configured or (cores if n_images is None else min(n_images, cores)))


def featurize_tasks(spark: SparkSession, cfg: Config, images: DataFrame) -> tuple[DataFrame, int]:
    """The images split into featurize tasks, and how many.

    Parquet's own splits are byte-balanced and deterministic (a retried task reads the same rows), so
    they are used as they are when they keep every core busy: no shuffle of the image bytes. A set
    ``featurize.partitions``, or a scan with fewer splits than cores, hash-partitions by ``image_id``.
    """
    scan = num_partitions(images)
    if not cfg["featurize"]["partitions"] and scan >= default_parallelism(spark):
        return images, scan
    parts = featurize_partitions(spark, cfg, images.count())
    return images.repartition(parts, IMAGE_ID), parts


@contextmanager
def _beside(spark: SparkSession, fn, *args):
    """Run ``fn(*args)`` on a thread that carries this one's Spark job settings, while the ``with``
    body runs; wait for it on the way out and raise its error, unless the body raised first."""
    failure: list[BaseException] = []
    result: list = []

    def run():
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    thread = InheritableThread(target=run, name="sparkvision-beside", session=spark)
    thread.start()
    try:
        yield result
    finally:
        thread.join()
    if failure:
        raise failure[0]


def _data_settings(cfg: Config) -> dict:
    d = cfg["data"]
    return {k: d[k] for k in ("images", "manifest", "extensions", "max_pixels", "max_file_mb", "validate")}


def stage_load(spark: SparkSession, cfg: Config) -> dict:
    describe_jobs(spark, "load")
    lay = layout_of(cfg)
    storage.makedirs(lay.out)
    started = time.time()
    log.info("load: listing %s", cfg["data"]["images"] or cfg["data"]["manifest"])
    inv = loader.inventory(cfg["data"])
    fp = provenance.fingerprint("load", _data_settings(cfg), inv.stamps)
    staged = loader.stage(spark, inv, cfg["data"], lay.images)
    marker = provenance.marker("load", fp)
    try:
        result = staged.result
        storage.write_parquet(result.rejected, lay.rejected, marker=marker)
        storage.write_marker(staged.accepted_part, marker)
        storage.replace_with(staged.accepted_part, lay.images)
    finally:
        storage.delete(staged.staging)
    storage.write_csv(spark.read.parquet(lay.rejected).orderBy(IMAGE_ID), lay.rejected_csv)
    per_class = {r[LABEL]: r["count"] for r in spark.read.parquet(lay.images).groupBy(LABEL).count().collect()}
    storage.write_text(lay.config, dump(cfg))
    summary = {**result.summary(), "per_class": dict(sorted(per_class.items())), "seconds": time.time() - started,
               "fingerprint": fp}
    storage.write_json(lay.load, summary)
    log.info("load: %d files, %d images accepted, %d rejected (reasons in %s)", result.discovered, result.accepted,
             result.n_rejected, lay.rejected_csv)
    return summary


def stage_featurize(spark: SparkSession, cfg: Config) -> dict:
    describe_jobs(spark, "featurize")
    lay = layout_of(cfg)
    load = provenance.check_inputs(lay, "featurize")
    images = spark.read.parquet(lay.images)
    # Its rows are photos: the queries reading them run with batches sized by bytes (set, then put back).
    image_reads = loader.image_read_settings(spark, lay.images, load.get("accepted"))
    featurizer = make_featurizer(cfg)
    featurizer.resolveWeights()
    spec = featurizer.spec()
    engine = featurizer.resolveEngine(gpu=gpu_tasks(spark), strict=not is_remote(spark))
    # The engine and precision change features in the last digits (bf16: more), draft changes pixels: all
    # three are part of what the features are.
    fp = provenance.fingerprint("featurize", load["fingerprint"], spec.name, featurizer.getWeightsChecksum(),
                                featurizer.getMaxPixels(), engine, featurizer.getPrecision(), featurizer.getDraft())
    marker = provenance.marker("featurize", fp, model=spec.name, weights_sha256=featurizer.getWeightsChecksum())
    started = time.time()
    images, parts = featurize_tasks(spark, cfg, images)
    log.info("featurize: %s on %s (%s%s), batch %d, %d tasks", spec.name, engine, featurizer.getPrecision(),
             ", draft decode" if featurizer.getDraft() else "", cfg["featurize"]["batch_size"], parts)
    featurized = featurizer.copy({featurizer.errorCol: FEATURIZE_ERROR}).transform(images)
    # Counted while written (no second pass over the features): rows, and images the network could not use.
    counts = Observation("featurize")
    failed = F.col(FEATURIZE_ERROR).isNotNull()
    featurized = featurized.observe(
        counts, F.count(F.lit(1)).alias("images"), F.count_if(failed).alias("failed"),
        F.first(F.when(failed, F.concat_ws(": ", IMAGE_ID, FEATURIZE_ERROR)), ignorenulls=True).alias("example"))
    # Saving the featurizer's parameters is a small Spark job of its own: run it beside the big one.
    with scoped_conf(spark, image_reads), \
            _beside(spark, storage.save_ml, featurizer, lay.featurizer, marker) as saved:
        features_tmp = storage.staged_parquet(featurized.select(*FEATURE_COLUMNS), lay.features,
                                              storage.VECTOR_PARQUET_OPTIONS, marker)
    featurizer_tmp = saved[0]
    seconds = time.time() - started
    n, missing = counts.get["images"], counts.get["failed"]
    try:
        if missing == n:
            raise RuntimeError(f"featurize: none of the {n} images could be decoded, e.g. {counts.get['example']}")
        if missing:
            features_tmp = _without_unusable(spark, lay, featurizer, features_tmp, marker)
        _sync_rejected(spark, lay, featurizer if missing else None, features_tmp, image_reads)
    except BaseException:
        for tmp in (features_tmp, featurizer_tmp):
            storage.delete(tmp)
        raise
    storage.replace_with(features_tmp, lay.features)
    storage.replace_with(featurizer_tmp, lay.featurizer)
    summary = {
        "model": spec.name,
        "weights_sha256": featurizer.getWeightsChecksum(),
        "feature_dim": spec.feature_dim,
        "engine": engine,
        "precision": featurizer.getPrecision(),
        "draft": featurizer.getDraft(),
        "images": n - missing,
        "rejected": missing,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds else None,
        "fingerprint": fp,
        "inputs": {"load": load["fingerprint"]},
    }
    storage.write_json(lay.featurize, summary)
    log.info("featurize: %d images in %.1f s%s", n, seconds,
             f"; {missing} could not be decoded (added to {lay.rejected_csv})" if missing else "")
    return summary


# Reasons featurize adds to rejected.* start with this; a new featurize replaces the previous one's rows.
FEATURIZE_REJECTED = "featurize: "


def _without_unusable(spark: SparkSession, lay: RunLayout, featurizer: DeepImageFeaturizer, features_tmp: str,
                      marker: dict) -> str:
    """The staged features without the rows the featurizer could not decode (rewritten once, only when
    some failed), after checking every class still has an image."""
    written = spark.read.parquet(features_tmp)
    classes = {r[LABEL] for r in written.select(LABEL).distinct().collect()}
    kept = storage.staged_parquet(written.filter(F.col(FEATURES).isNotNull()), lay.features,
                                  storage.VECTOR_PARQUET_OPTIONS, marker)
    storage.delete(features_tmp)
    empty = sorted(classes - {r[LABEL] for r in spark.read.parquet(kept).select(LABEL).distinct().collect()})
    if empty:
        storage.delete(kept)
        raise RuntimeError(f"featurize: class(es) {', '.join(map(repr, empty))} have no image that decodes "
                           f"(reasons: run with data.validate=full, or see the featurizer's errors)")
    return kept


def _sync_rejected(spark: SparkSession, lay: RunLayout, featurizer: DeepImageFeaturizer | None,
                   features_tmp: str, image_reads: dict[str, str] | None = None) -> None:
    """``rejected.*`` = load's rows + this featurize's undecodable images with their reasons (a previous
    featurize's rows replaced). Nothing to do, and nothing read or rewritten, when neither has any (the
    previous featurize's record says how many it added; without a record, the table is looked at)."""
    previous = storage.read_json(lay.featurize) if storage.exists(lay.featurize) else {}
    rejected = spark.read.parquet(lay.rejected)
    if featurizer is None and (previous.get("rejected") == 0 or (
            "rejected" not in previous and rejected.filter(F.col(REASON).startswith(FEATURIZE_REJECTED)).isEmpty())):
        return
    rows = rejected.filter(~F.col(REASON).startswith(FEATURIZE_REJECTED))
    if featurizer is not None:
        # The failed images' reasons: the featurizer's decode again, on those images only (the network does
        # not run on them: none decodes). Everything else was featurized once, in the big job.
        ok = spark.read.parquet(features_tmp).select(IMAGE_ID)
        failed = spark.read.parquet(lay.images).join(ok, IMAGE_ID, "left_anti")
        reasons = featurizer.copy({featurizer.errorCol: FEATURIZE_ERROR}).transform(failed)
        rows = rows.unionByName(reasons.select(
            IMAGE_ID, PATH, LABEL, F.concat(F.lit(FEATURIZE_REJECTED),
                                            F.coalesce(F.col(FEATURIZE_ERROR), F.lit("could not be featurized"))
                                            ).alias(REASON)))
    with scoped_conf(spark, image_reads if featurizer is not None else None):  # reads images.parquet again
        storage.write_parquet(rows, lay.rejected, marker=storage.read_marker(lay.rejected))
    storage.write_csv(spark.read.parquet(lay.rejected).orderBy(IMAGE_ID), lay.rejected_csv)


def stage_train(spark: SparkSession, cfg: Config) -> dict:
    describe_jobs(spark, "train")
    lay = layout_of(cfg)
    featurized = provenance.check_inputs(lay, "train")
    fp = provenance.fingerprint("train", featurized["fingerprint"], cfg["split"], cfg["train"])
    marker = provenance.marker("train", fp)
    features = spark.read.parquet(lay.features)
    classes = loader.classes_of(features)
    s = cfg["split"]
    assigned = stratified_split(features, s["test_fraction"], s["validation_fraction"], s["seed"])
    split_tmp = storage.staged_parquet(assigned.select(IMAGE_ID, LABEL, SPLIT), lay.split, marker=marker)
    model_tmp = None
    try:
        split = spark.read.parquet(split_tmp)
        report = split_report(split)
        train_rows = features.join(split.filter(F.col(SPLIT) == TRAIN), [IMAGE_ID, LABEL])
        counts = {r[LABEL_INDEX]: r["count"] for r in train_rows.groupBy(LABEL_INDEX).count().collect()}
        majority = max(sorted(counts), key=lambda k: counts[k])
        result = tune(train_rows, len(classes), cfg["train"])
        featurizer = DeepImageFeaturizer.load(lay.featurizer)
        model_tmp = storage.save_ml(assemble(featurizer, result.model, classes), lay.model, marker)
        storage.replace_with(split_tmp, lay.split)
        storage.replace_with(model_tmp, lay.model)
    finally:
        for tmp in (split_tmp, model_tmp):
            if tmp:
                storage.delete(tmp)
    summary = {
        "classes": classes,
        "split": report,
        "majority_class": majority,
        "tuning": {"metric": result.metric, "folds": cfg["train"]["folds"], "engine": result.engine, "grid": result.grid,
                   "best_params": result.best_params, "seconds": result.seconds},
        "fingerprint": fp,
        "inputs": {"featurize": featurized["fingerprint"]},
    }
    storage.write_json(lay.train, summary)
    log.info("train: best %s (%s CV, %s engine, %.1f s); model saved to %s", result.best_params, result.metric,
             result.engine, result.seconds, lay.model)
    return summary


def stage_evaluate(spark: SparkSession, cfg: Config, which: str = TEST) -> dict:
    describe_jobs(spark, "evaluate")
    lay = layout_of(cfg)
    trained = provenance.check_inputs(lay, "evaluate")
    featurized = provenance.check_stage(lay, "featurize")
    model = pr.load_model(lay.model)
    classes = trained["classes"]
    rows = spark.read.parquet(lay.features).join(
        spark.read.parquet(lay.split).filter(F.col(SPLIT) == which), [IMAGE_ID, LABEL]
    )
    predictions = classify_features(model, rows).localCheckpoint()
    y, yhat, proba = ev.collect_predictions(predictions)
    metrics = ev.metrics_from_arrays(y, yhat, proba, classes, trained["majority_class"])
    metrics.update({"split": which, "model": featurized["model"],
                    "inputs": {"train": trained["fingerprint"], "featurize": featurized["fingerprint"]}})
    # The whole folder is written beside evaluation/ and swapped in: a failed evaluate leaves the old one.
    tmp = storage.staging(lay.evaluation)
    ev_out = EvaluationLayout(tmp)
    try:
        storage.makedirs(tmp)
        confusion_png = ev.plot_confusion_matrix(metrics["confusion_matrix"], classes)
        roc_png = ev.plot_roc(y, proba, classes)
        storage.write_bytes(ev_out.confusion_matrix_png, confusion_png)
        storage.write_bytes(ev_out.roc_curve_png, roc_png)
        pr.write_predictions(ev.predictions_table(predictions).orderBy(IMAGE_ID), ev_out.predictions)
        storage.write_text(ev_out.report, ev.report_markdown(metrics, trained["split"], trained["tuning"]))
        thumbnails = report_html.gallery(predictions, spark.read.parquet(lay.images))
        storage.write_text(ev_out.report_html, report_html.render(metrics, trained["split"], trained["tuning"],
                                                                 confusion_png, roc_png, thumbnails))
        storage.write_json(ev_out.metrics, metrics)
        storage.replace_with(tmp, lay.evaluation)
    finally:
        storage.delete(tmp)
    auc = "n/a" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
    log.info("evaluate: accuracy %.4f (baseline %.4f), ROC AUC %s; report %s", metrics["accuracy"],
             metrics["baseline_accuracy"], auc, lay.report)
    return metrics


def stage_predict(spark: SparkSession, cfg: Config, model_dir: str, images_dir: str, out_dir: str,
                  source: dict | None = None) -> dict:
    """Predict ``images_dir`` with the model at ``model_dir`` (``source``: where it came from, e.g. the
    registered model it was fetched from, recorded in ``predict.json``)."""
    describe_jobs(spark, "predict")
    out = PredictionLayout(out_dir)
    model = pr.load_model(model_dir)
    model.stages[0].setParams(**runtime_settings(cfg))  # any engine runs a model saved with another
    images, rejected, counts = pr.unlabelled_images(spark, images_dir, cfg["data"])
    predictions, unusable = pr.predict(model, images)
    storage.makedirs(out_dir)
    written = pr.write_predictions(predictions.orderBy(IMAGE_ID), out)
    rejected = rejected.unionByName(unusable)
    storage.write_csv(rejected.orderBy(IMAGE_ID), out.rejected_csv)
    n_unusable = counts["accepted"] - written["images"]
    summary = {**counts, "accepted": written["images"], "rejected": counts["rejected"] + n_unusable,
               "parquet": out.parquet, "csv": out.csv, "rejected_csv": out.rejected_csv,
               "model": source or {"path": model_dir}}
    storage.write_json(out.summary, summary)
    log.info("predict: %d images predicted, %d rejected (reasons in %s)", summary["accepted"], summary["rejected"],
             out.rejected_csv)
    return summary


STAGES = {"load": stage_load, "featurize": stage_featurize, "train": stage_train, "evaluate": stage_evaluate}


def run_all(spark: SparkSession, cfg: Config) -> dict:
    return {name: stage(spark, cfg) for name, stage in STAGES.items()}
