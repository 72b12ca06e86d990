"""What the benchmark runs, one workload per fresh process: ``python -m bench.workloads KIND 'JSON'``.

* ``engines``: the network's limits, no Spark, one process: (a) every installed engine (TensorFlow's
  frozen graph, ONNX Runtime, OpenVINO; OpenVINO bf16 beside them) on pre-decoded uint8 batches, with
  its features compared to TensorFlow's; (b) each fp32 engine end to end from the same encoded bytes
  (decode and resize on ``cores`` threads, then predict).
* ``spark``: sparkvision's featurize stage on the same files inside Spark on one engine, cold (fresh
  workers) then warm; with ``e2e`` also load + featurize timed together (files -> features on disk),
  with ``structs`` the featurizer on the same images already decoded (Spark image structs).
* ``pipeline``: load -> featurize -> one LogisticRegression fit vs a tuning grid on the persisted
  features, for the memory and tuning figures (the parent samples this process tree's RSS).

Each prints one ``BENCH_RESULT {json}`` line; :mod:`bench.procs` collects it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from bench.data import image_files
from bench.procs import RESULT_PREFIX

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def weights_for(args: dict) -> str | None:
    """The weights file: the registry's offline file, or a seeded random-weights file (same compute)."""
    from sparkvision.ml.models import registry
    from sparkvision.ml.models.weights import resolve_weights

    spec = registry.get(args["model"])
    if spec.offline:
        return str(resolve_weights(spec, None, None, None))
    path = os.path.join(args["work"], "weights", f"{spec.name}-random-seed0.weights.h5")
    if not os.path.exists(path):
        import keras

        os.makedirs(os.path.dirname(path), exist_ok=True)
        keras.utils.set_random_seed(0)
        tmp = path + ".tmp.weights.h5"
        spec.build(None).save_weights(tmp)
        os.replace(tmp, path)
    return path


def _best(fn, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls (seconds)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def engines_workload(args: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from sparkvision.ml import engines
    from sparkvision.run import images as imglib
    from sparkvision.ml.models import registry

    spec = registry.get(args["model"])
    weights, batch, cores, repeats = weights_for(args), args["batch_size"], args["cores"], args["repeats"]
    files = image_files(args["images"])
    encoded = []
    for f in files:
        with open(f, "rb") as fh:
            encoded.append(fh.read())

    def decode(data: bytes) -> np.ndarray:
        return imglib.decode_for_model(data, spec.input_size, spec.crop_fraction)

    started = time.perf_counter()
    pixels = np.stack([decode(d) for d in encoded])
    decode_ms = (time.perf_counter() - started) / len(encoded) * 1000
    chunks = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    variants = [(e, "fp32") for e in engines.ENGINES if e in engines.installed()]
    if engines.bf16_supported():
        variants.append(("openvino", "bf16"))
    out, reference = {}, None
    pool = ThreadPoolExecutor(cores)
    for engine, precision in variants:
        predict = engines.build(spec, weights, engine, precision, threads=cores)
        first = np.asarray(predict(chunks[0]))
        if reference is None:
            reference = first  # TensorFlow's, the first variant
        cosine = (first * reference).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(reference, axis=1)
        row = {"engine": engine, "precision": precision, "max_abs_diff": float(np.abs(first - reference).max()),
               "min_cosine": float(cosine.min())}
        row["a_ips"] = len(pixels) / _best(lambda: [predict(c) for c in chunks], repeats)
        if precision == "fp32":
            def from_bytes():
                for i in range(0, len(encoded), batch):
                    predict(np.stack(list(pool.map(decode, encoded[i:i + batch]))))

            row["b_ips"] = len(pixels) / _best(from_bytes, repeats)
        out[f"{engine}/{precision}"] = row
    pool.shutdown()
    return {"images": len(files), "decode_ms": decode_ms, "engines": out}


def _config(args: dict, out: str, grid: dict | None = None):
    """The run settings of a workload (``grid``: ``train.*`` keys, e.g. a smaller tuning grid)."""
    from sparkvision import settings as config

    values = {"data.images": args["images"], "network.name": args["model"], "network.weights": weights_for(args),
              "featurize.batch_size": args["batch_size"], "featurize.engine": args.get("engine", "auto"),
              "featurize.precision": args.get("precision", "fp32"), "output.dir": out}
    values.update({f"train.{key}": value for key, value in (grid or {}).items()})
    return config.load(None, values=values)


def _spark(args: dict, conf: dict | None = None):
    from sparkvision.run.spark import get_spark

    return get_spark(f"local[{args['cores']}]", "sparkvision-bench",
                     {"spark.ui.showConsoleProgress": "false", **(conf or {})})


def _timed(fn, *a):
    started = time.perf_counter()
    result = fn(*a)
    return time.perf_counter() - started, result


def spark_workload(args: dict) -> dict:
    from sparkvision.stages import pipeline

    # Decoded 640x480 structs are ~0.9 MB rows: the JVM needs more than local mode's 1 GB default heap
    # to read and pass them on (the pipeline workload, which the memory figures come from, keeps 1 GB).
    spark = _spark(args, {"spark.driver.memory": "3g"})
    label = f"{args['model']}-{args.get('engine', 'auto')}-{args.get('precision', 'fp32')}"
    cfg = _config(args, os.path.join(args["work"], "spark-out", label))
    n = pipeline.stage_load(spark, cfg)["accepted"]
    cold_s, cold = _timed(pipeline.stage_featurize, spark, cfg)
    warm_s = [_timed(pipeline.stage_featurize, spark, cfg)[0] for _ in range(args["repeats"])]
    result = {"images": n, "engine": cold["engine"], "precision": cold["precision"], "cold_ips": n / cold_s,
              "warm_ips": n / min(warm_s), "warm_s": warm_s, "cold_s": cold_s}
    if args.get("e2e"):
        # Files -> features on disk on warm workers: load and featurize timed together, best of the repeats.
        e2e = []
        for _ in range(args["repeats"]):
            load_s, _ = _timed(pipeline.stage_load, spark, cfg)
            featurize_s, _ = _timed(pipeline.stage_featurize, spark, cfg)
            e2e.append((load_s + featurize_s, load_s, featurize_s))
        best = min(e2e)
        result.update({"e2e_ips": n / best[0], "e2e_load_s": best[1], "e2e_featurize_s": best[2],
                       "e2e_featurize_ips": n / best[2]})
    if args.get("structs"):
        result.update(_structs(spark, cfg, args, n, label))
    spark.stop()
    return result


def _structs(spark, cfg, args: dict, n: int, label: str) -> dict:
    """The same images already decoded: Spark image structs (BGR pixels) at rest in Parquet, one file per
    featurize task (written untimed), each read back as one split; then the featurizer alone, its
    features written to Parquet."""
    from sparkvision.stages import featurize
    from sparkvision.run import storage
    from sparkvision.compat.sparkdl import readImages

    structs_path = os.path.join(args["work"], "spark-out", label, "structs.parquet")
    features_path = os.path.join(args["work"], "spark-out", label, "struct-features.parquet")
    parts = featurize.featurize_partitions(spark, cfg, n)
    (readImages(args["images"]).repartition(parts, "filePath").write.mode("overwrite")
     .option("parquet.block.size", 8 * 2**20).parquet(structs_path))
    largest = max(os.path.getsize(os.path.join(structs_path, f)) for f in os.listdir(structs_path))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(largest + 2**20))
    spark.conf.set("spark.sql.parquet.columnarReaderBatchSize", "32")  # ~1 MB rows
    featurizer = featurize.make_featurizer(cfg).setParams(inputCol="image")
    structs = spark.read.parquet(structs_path)

    def featurize_structs():
        (featurizer.transform(structs).select("filePath", "features").write.mode("overwrite")
         .options(**storage.VECTOR_PARQUET_OPTIONS).parquet(features_path))

    decoded_s = [_timed(featurize_structs)[0] for _ in range(args["repeats"])]
    return {"decoded_warm_ips": n / min(decoded_s), "decoded_s": decoded_s, "partitions": parts}


def pipeline_workload(args: dict) -> dict:
    """Load, featurize once, then one fit and a tuning grid on the same persisted training rows."""
    from pyspark import StorageLevel
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.sql import functions as F

    from sparkvision.stages import load as loader

    from sparkvision.stages import pipeline

    from sparkvision.stages import train
    from sparkvision.run.layout import RunLayout
    from sparkvision.run.split import TEST, TRAIN, stratified_split

    spark = _spark(args, {"spark.driver.memory": args["driver_memory"]} if args.get("driver_memory") else None)
    cfg = _config(args, os.path.join(args["work"], "pipeline-out", f"{args['model']}-{args['label']}"), args["grid"])
    load_s, loaded = _timed(pipeline.stage_load, spark, cfg)
    featurize_s, featurized = _timed(pipeline.stage_featurize, spark, cfg)

    features = spark.read.parquet(RunLayout(cfg.output.dir).features)
    classes = loader.classes_of(features)
    s = cfg.split
    rows = stratified_split(features, s.test_fraction, s.validation_fraction, s.seed).persist(
        StorageLevel.MEMORY_AND_DISK)
    train_rows = rows.filter(F.col("split") == TRAIN)
    test_rows = rows.filter(F.col("split") == TEST)
    n_train = train_rows.count()

    def single_fit():
        lr = train.make_classifier(len(classes), cfg.train.standardization)
        lr.setRegParam(cfg.train.reg_param[0]).setElasticNetParam(cfg.train.elastic_net_param[0])
        return lr.setMaxIter(cfg.train.max_iter[-1]).fit(train_rows)

    single_s = [_timed(single_fit)[0]]
    grid_s, tuned = _timed(train.tune, train_rows, len(classes), cfg.train)
    if args.get("repeat_fit", True):
        single_s.append(_timed(single_fit)[0])
    accuracy = MulticlassClassificationEvaluator(labelCol=train.LABEL, metricName="accuracy").evaluate(
        tuned.model.transform(test_rows))
    spark.stop()
    return {"images": loaded["accepted"], "rejected": loaded["rejected"], "load_s": load_s,
            "featurize_s": featurize_s, "engine": featurized["engine"], "train_rows": n_train, "classes": len(classes),
            "single_fit_s": single_s, "grid_s": grid_s, "grid_points": len(tuned.grid),
            "folds": cfg.train.folds, "best_params": tuned.best_params, "test_accuracy": accuracy}


def stages_workload(args: dict) -> dict:
    """``sparkvision run``'s stages as a user runs them (load, featurize, train, evaluate), each timed, with its
    wall-clock span for the per-stage peak RSS; Spark's settings are the project's own (local mode's heap)."""
    from sparkvision.stages import pipeline

    spark = _spark(args)
    cfg = _config(args, os.path.join(args["work"], "stages-out", f"{args['model']}-{args['label']}"), args["grid"])
    phases, results = {}, {}
    for name, stage in (("load", pipeline.stage_load), ("featurize", pipeline.stage_featurize),
                        ("train", pipeline.stage_train), ("evaluate", pipeline.stage_evaluate)):
        started = time.time()
        results[name] = stage(spark, cfg)
        phases[name] = [started, time.time()]
    spark.stop()
    seconds = {f"{name}_s": end - start for name, (start, end) in phases.items()}
    return {"images": results["load"]["accepted"], "rejected": results["load"]["rejected"], **seconds,
            "engine": results["featurize"]["engine"], "tuning_engine": results["train"]["tuning"]["engine"],
            "train_rows": sum(per_class["train"] for per_class in results["train"]["split"].values()),
            "test_accuracy": results["evaluate"]["accuracy"], "phases": phases}


WORKLOADS = {"engines": engines_workload, "spark": spark_workload, "pipeline": pipeline_workload,
             "stages": stages_workload}


def main(argv: list[str]) -> None:
    kind, args = argv[0], json.loads(argv[1])
    result = WORKLOADS[kind](args)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
