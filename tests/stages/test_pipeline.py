"""End to end through the CLI on a small digits set: run, evaluate, predict, and the tuning guarantees."""

import csv
import json
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkvision import cli
from sparkvision import settings as config
from sparkvision.stages import featurize, pipeline

SMALL_GRID = ["train.reg_param=[0.01, 0.1]", "train.elastic_net_param=[0.0]", "train.max_iter=[30]", "train.folds=2"]


def _args(*extra):
    out = []
    for o in SMALL_GRID:
        out += ["--set", o]
    return out + list(extra)


# Planted credentials: a mirror URL with user:token@ and a secret Spark setting. Neither may reach any file
# the run writes, nor its logs.
MIRROR_TOKEN = "MirrorTok3n-5f1c9e2b7a"
CONF_SECRET = "ConfS3cret-8d2a4c6e0b"
SECRET_ARGS = ["--set", f"network.mirror_url=http://weights:{MIRROR_TOKEN}@127.0.0.1:9/mirror/",
               "--set", f"spark.conf={{spark.hadoop.fs.s3a.secret.key: {CONF_SECRET}, spark.sql.shuffle.partitions: 2}}"]


@pytest.fixture(scope="module")
def run_logs():
    return []


@pytest.fixture(scope="module")
def run_dir(spark, digits_small, tmp_path_factory, run_logs):
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    out = tmp_path_factory.mktemp("run")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        with redirect_stdout(stream), redirect_stderr(stream):
            code = cli.main(["run", "--images", str(digits_small), "--output", str(out), *_args(*SECRET_ARGS)])
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    run_logs.append(stream.getvalue())
    assert code == 0, stream.getvalue()[-3000:]
    return out


def test_no_credential_reaches_any_artifact_or_log(run_dir, run_logs):
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any("metadata" in p.parts for p in files)
    for token in (MIRROR_TOKEN, CONF_SECRET):
        leaked = [str(p) for p in files if token.encode() in p.read_bytes()]
        assert not leaked, (token, leaked)
        assert token not in run_logs[0]
    assert "mirror_url: http://127.0.0.1:9/mirror/" in (run_dir / "config.yaml").read_text()  # without userinfo


def test_run_writes_report_metrics_and_plots(run_dir):
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["n"] == 9  # a third of 3 x 10
    assert metrics["accuracy"] > metrics["baseline_accuracy"]
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and metrics["roc_auc_kind"] == "one-vs-rest macro"
    for name in ("report.md", "report.html", "confusion_matrix.png", "roc_curve.png", "predictions.csv"):
        assert (run_dir / "evaluation" / name).stat().st_size > 0
    assert not (run_dir / "mlflow.json").exists()  # no tracking URI: nothing tracked, nothing recorded
    load = json.loads((run_dir / "load.json").read_text())
    assert load["accepted"] + load["rejected"] == load["discovered"] == 30
    with open(run_dir / "evaluation" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {"image_id", "label", "predicted_label", "confidence", "probability"} <= set(rows[0])


def test_saved_model_reloads_and_predicts_raw_images(spark, run_dir, digits_small, tmp_path):
    out = tmp_path / "pred"
    assert cli.main(["predict", "--model", str(run_dir / "model"), "--images", str(digits_small), "--output", str(out)]) == 0
    pred = spark.read.parquet(str(out / "predictions.parquet"))
    assert pred.count() == 30
    assert {r.predicted_label for r in pred.select("predicted_label").distinct().collect()} <= {"0", "1", "7"}
    # The reloaded pipeline (CNN included) agrees with the evaluation made from cached features.
    evaluated = spark.read.parquet(str(run_dir / "evaluation" / "predictions.parquet"))
    joined = evaluated.alias("e").join(pred.alias("p"), "image_id").select("e.probability", "p.probability",
                                                                           "e.predicted_label", "p.predicted_label")
    rows = joined.collect()
    assert len(rows) == 9
    for r in rows:
        assert r[2] == r[3]
        np.testing.assert_allclose(r[0], r[1], atol=1e-6)


def _cfg(run_dir, **values):
    """The run's own settings (its config.yaml), with ``values`` (dotted keys) changed."""
    return config.load(str(run_dir / "config.yaml"), SMALL_GRID, values)


def test_tuning_never_sees_test_rows_and_never_refeaturizes(spark, run_dir, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work)
    cfg = _cfg(run_dir, **{"output.dir": str(work)})
    before = json.loads((run_dir / "train.json").read_text())
    # Scramble every test row's features and remove the raw images: if tuning used test rows, or
    # re-ran the CNN, the result would change or fail.
    features = spark.read.parquet(str(work / "features.parquet"))
    split = spark.read.parquet(str(work / "split.parquet"))
    from pyspark.ml.functions import array_to_vector, vector_to_array

    noisy = (
        features.join(split, ["image_id", "label"])
        .withColumn("features", F.when(F.col("split") == "test",
                                       array_to_vector(F.transform(vector_to_array("features"), lambda x: x * -7.0 + 3.0)))
                    .otherwise(F.col("features")))
        .select(*features.columns)
    )
    from sparkvision.run import storage

    path = str(work / "features.parquet")
    storage.write_parquet(noisy, path, marker=storage.read_marker(path))  # the same featurize output, edited
    shutil.rmtree(work / "images.parquet")
    after = pipeline.stage_train(spark, cfg)
    assert after["tuning"]["grid"] == before["tuning"]["grid"]
    assert after["tuning"]["best_params"] == before["tuning"]["best_params"]
    assert after["split"] == before["split"]


def test_rerun_replaces_outputs_without_duplicates(spark, run_dir, tmp_path):
    work = tmp_path / "again"
    shutil.copytree(run_dir, work)
    cfg = _cfg(run_dir, **{"output.dir": str(work)})
    pipeline.stage_load(spark, cfg)
    assert spark.read.parquet(str(work / "images.parquet")).count() == 30
    assert not list(work.glob("*.tmp-*")) and not list(work.glob("*.old-*"))


def _copy_run(run_dir, tmp_path, name="copy"):
    work = tmp_path / name
    shutil.copytree(run_dir, work)
    return work, _cfg(run_dir, **{"output.dir": str(work)})


def test_new_images_make_features_stale(spark, run_dir, digits_small, tmp_path, capsys):
    work, cfg = _copy_run(run_dir, tmp_path)
    images = tmp_path / "more"
    shutil.copytree(digits_small, images)
    (images / "7" / "7_000.png").unlink()
    # load re-run on other images; features.parquet is from the old ones
    pipeline.stage_load(spark, cfg.replace(**{"data.images": str(images)}))
    assert cli.main(["train", "--output", str(work), *_args()]) == 2
    err = capsys.readouterr().err
    assert "featurize.json was made from an earlier 'load' output" in err and "run 'sparkvision featurize' again" in err


def test_featurizer_from_another_featurize_is_refused(spark, run_dir, tmp_path, capsys):
    work, _ = _copy_run(run_dir, tmp_path)
    from sparkvision.run import storage

    marker = storage.read_marker(str(work / "featurizer"))
    storage.write_marker(str(work / "featurizer"), {**marker, "fingerprint": "0" * 32, "model": "InceptionV3"})
    assert cli.main(["train", "--output", str(work), *_args()]) == 2
    err = capsys.readouterr().err
    assert "featurizer does not belong to" in err and "run 'sparkvision featurize' again" in err
    assert cli.main(["evaluate", "--output", str(work)]) == 2
    assert "featurizer does not belong to" in capsys.readouterr().err


def test_a_second_run_on_one_output_folder_is_refused(run_dir, tmp_path, capsys):
    import subprocess

    work, _ = _copy_run(run_dir, tmp_path)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (work / ".sparkvision.lock").write_text(json.dumps(
            {"host": __import__("socket").gethostname(), "pid": holder.pid, "user": "someone", "command": "run",
             "started": 0}))
        assert cli.main(["evaluate", "--output", str(work)]) == 2
        err = capsys.readouterr().err
        assert "output folder is in use" in err and f"pid {holder.pid}" in err and "'sparkvision run'" in err
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale, taken over, and the folder's leftovers are cleaned.
    (work / "features.parquet.tmp-deadbeef").mkdir()
    assert cli.main(["evaluate", "--output", str(work)]) == 0
    assert not (work / ".sparkvision.lock").exists() and not (work / "features.parquet.tmp-deadbeef").exists()


def test_csv_cells_that_spreadsheets_would_run_are_quoted(tmp_path):
    from sparkvision.run import storage

    out = tmp_path / "x.csv"
    storage.write_csv_rows(str(out), ["image_id", "label", "p"],
                           [["=HYPERLINK(\"http://x\")", "+1", [0.5, 0.5]], ["@SUM(A1)", "-2", None], ["ok", "cat", None]])
    rows = list(csv.reader(out.open()))
    assert rows[1][:2] == ["'=HYPERLINK(\"http://x\")", "'+1"] and rows[2][:2] == ["'@SUM(A1)", "'-2"]
    assert rows[1][2] == "[0.5, 0.5]" and rows[3][:2] == ["ok", "cat"]


def test_readme_stage_table_is_the_layout():
    from pathlib import Path

    from sparkvision.run.layout import stage_table

    assert stage_table() in (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_missing_previous_stage_is_explained(tmp_path, capsys):
    assert cli.main(["train", "--output", str(tmp_path)]) == 2
    assert "run 'sparkvision featurize' first" in capsys.readouterr().err


def _shuffles(df) -> bool:
    return "Exchange" in df._jdf.queryExecution().executedPlan().toString()


def test_featurize_uses_parquet_splits_and_shuffles_only_when_they_are_too_few(spark, tmp_path):
    ids = spark.range(40).selectExpr("cast(id as string) as image_id")
    ids.repartition(4).write.parquet(str(tmp_path / "split"))
    ids.coalesce(1).write.parquet(str(tmp_path / "one"))
    cfg = config.Settings()
    cores = spark.sparkContext.defaultParallelism

    split = spark.read.parquet(str(tmp_path / "split"))
    assert split.rdd.getNumPartitions() >= cores
    tasks, n = featurize.featurize_tasks(spark, cfg, split)
    assert n == split.rdd.getNumPartitions() and not _shuffles(tasks)  # the image bytes are not shuffled

    one = spark.read.parquet(str(tmp_path / "one"))
    tasks, n = featurize.featurize_tasks(spark, cfg, one)  # one split would leave cores idle
    assert n == tasks.rdd.getNumPartitions() == 2 * cores and _shuffles(tasks)

    tasks, n = featurize.featurize_tasks(spark, cfg.replace(**{"featurize.partitions": 3}), split)  # a count wins
    assert n == tasks.rdd.getNumPartitions() == 3
    assert sorted(r.image_id for r in tasks.collect()) == sorted(r.image_id for r in ids.collect())


def test_predict_lists_images_the_saved_featurizer_cannot_use(spark, run_dir, digits_small, tmp_path):
    from PIL import Image
    from pyspark.ml import PipelineModel

    model = PipelineModel.load(str(run_dir / "model"))
    model.stages[0].setParams(maxPixels=5000)  # the digits are 64 x 64 = 4,096 pixels
    model.write().save(str(tmp_path / "model"))
    images = tmp_path / "new"
    shutil.copytree(digits_small / "1", images)
    Image.new("RGB", (100, 100), (200, 10, 10)).save(images / "big.png")
    out = tmp_path / "pred"
    assert cli.main(["predict", "--model", str(tmp_path / "model"), "--images", str(images), "--output", str(out)]) == 0
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["discovered"], summary["accepted"], summary["rejected"]) == (11, 10, 1)
    rejected = list(csv.DictReader((out / "rejected.csv").open()))
    assert [r["image_id"] for r in rejected] == ["big.png"]
    assert "featurizer cannot use it: too many pixels" in rejected[0]["reason"]
    assert spark.read.parquet(str(out / "predictions.parquet")).count() == 10


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_output_as_a_file_uri_writes_only_there(spark, run_dir, digits_small, tmp_path, monkeypatch):
    """`--output file:///...` is the folder, for every stage and predict: nothing lands in the working
    directory (a path join of a URI would make a local folder named "file:")."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "uri-run"
    assert cli.main(["run", "--images", str(digits_small), "--output", out.as_uri(), *_args()]) == 0
    assert cli.main(["predict", "--model", (out / "model").as_uri(), "--images", str(digits_small),
                     "--output", (tmp_path / "uri-pred").as_uri()]) == 0
    assert not any(cwd.iterdir()), list(cwd.rglob("*"))
    a, b = (json.loads((d / "evaluation" / "metrics.json").read_text()) for d in (run_dir, out))
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert spark.read.parquet(str(tmp_path / "uri-pred" / "predictions.parquet")).count() == 30


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_undecodable_images_reach_rejected_through_featurize(spark, tmp_path):
    """Decode once: with header validation the load accepts files whose pixels do not decode; featurize's
    decode rejects them into rejected.parquet / rejected.csv with the reason, nothing lost, and a second
    featurize replaces its rows instead of adding them again."""
    from badfiles import DECODE_ONLY, MAX_FILE_MB, make_bad_input_set

    root = tmp_path / "bad"
    expected = make_bad_input_set(root, tmp_path / "elsewhere")
    cfg = config.load(None, [f"data.images={root}", f"output.dir={tmp_path / 'out'}", f"data.max_file_mb={MAX_FILE_MB}"])
    loaded = pipeline.stage_load(spark, cfg)
    assert set(DECODE_ONLY) <= {r.image_id for r in spark.read.parquet(str(tmp_path / "out" / "images.parquet")).collect()}
    for _ in range(2):
        featurized = pipeline.stage_featurize(spark, cfg)
        assert featurized["rejected"] == len(DECODE_ONLY)
        assert featurized["images"] == loaded["accepted"] - len(DECODE_ONLY)
        with open(tmp_path / "out" / "rejected.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        reasons = {r["image_id"]: r["reason"] for r in rows}
        assert len(rows) == len(reasons) == loaded["rejected"] + len(DECODE_ONLY)  # once each, also after a re-run
        for image_id in DECODE_ONLY:
            assert reasons[image_id].startswith("featurize: corrupt or truncated image"), reasons[image_id]
        feature_ids = {r.image_id for r in spark.read.parquet(str(tmp_path / "out" / "features.parquet")).collect()}
        assert not feature_ids & set(reasons)
        assert len(feature_ids) + len(reasons) == len(expected)  # every listed entry in exactly one table
        assert {r.image_id for r in spark.read.parquet(str(tmp_path / "out" / "rejected.parquet")).collect()} == set(reasons)
