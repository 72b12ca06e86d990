"""The featurize stage: ``images.parquet`` -> ``features.parquet`` + ``featurizer/`` (the network's Params,
never its weights), once for all loaded images. Images the network cannot decode join ``rejected.*``
with their reason.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from pyspark import InheritableThread
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from sparkvision.columns import CONTENT, FEATURE_COLUMNS, FEATURES, FEATURIZE_ERROR, IMAGE_ID, LABEL, PATH, REASON
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.run import provenance, storage
from sparkvision.run.layout import RunLayout
from sparkvision.run.spark import default_parallelism, describe_jobs, gpu_tasks, is_remote, num_partitions, scoped_conf
from sparkvision.settings import Settings
from sparkvision.stages.load import image_read_settings

log = logging.getLogger("sparkvision")

# Reasons featurize adds to rejected.* start with this; a new featurize replaces the previous one's rows.
FEATURIZE_REJECTED = "featurize: "


def make_featurizer(cfg: Settings) -> DeepImageFeaturizer:
    """The featurizer the settings describe (network, how it runs, the largest image it decodes)."""
    return DeepImageFeaturizer(inputCol=CONTENT, outputCol=FEATURES,
                               **cfg.featurize.to_params(cfg.network, cfg.data.max_pixels))


def featurize_partitions(spark: SparkSession, cfg: Settings, n_images: int | None = None) -> int:
    """Tasks for featurization: ``featurize.partitions``, or two per executor core, at most one per image
    where ``n_images`` is known."""
    configured = cfg.featurize.partitions
    cores = 2 * default_parallelism(spark)
    return max(1, configured or (cores if n_images is None else min(n_images, cores)))


def featurize_tasks(spark: SparkSession, cfg: Settings, images: DataFrame) -> tuple[DataFrame, int]:
    """The images split into featurize tasks, and how many.

    Parquet's own splits are byte-balanced and deterministic (a retried task reads the same rows), so
    they are used as they are when they keep every core busy: no shuffle of the image bytes. A set
    ``featurize.partitions``, or a scan with fewer splits than cores, hash-partitions by ``image_id``.
    """
    scan = num_partitions(images)
    if not cfg.featurize.partitions and scan >= default_parallelism(spark):
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


def stage_featurize(spark: SparkSession, cfg: Settings) -> dict:
    describe_jobs(spark, "featurize")
    lay = RunLayout(cfg.output.dir)
    load = provenance.check_inputs(lay, "featurize")
    images = spark.read.parquet(lay.images)
    # Its rows are photos: the queries reading them run with batches sized by bytes (set, then put back).
    image_reads = image_read_settings(spark, lay.images, load.get("accepted"))
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
             ", draft decode" if featurizer.getDraft() else "", cfg.featurize.batch_size, parts)
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
