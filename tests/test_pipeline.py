"""End to end through the CLI on a small digits set: run, evaluate, predict, and the tuning guarantees."""

import csv
import json
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkvision import cli, config, pipeline

SMALL_GRID = ["train.reg_param=[0.01, 0.1]", "train.elastic_net_param=[0.0]", "train.max_iter=[30]", "train.folds=2"]


def _args(*extra):
    out = []
    for o in SMALL_GRID:
        out += ["--set", o]
    return out + list(extra)


@pytest.fixture(scope="module")
def run_dir(spark, digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["run", "--images", str(digits_small), "--output", str(out), *_args()]) == 0
    return out


def test_run_writes_report_metrics_and_plots(run_dir):
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["n"] == 9  # a third of 3 x 10
    assert metrics["accuracy"] > metrics["baseline_accuracy"]
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and metrics["roc_auc_kind"] == "one-vs-rest macro"
    for name in ("report.md", "confusion_matrix.png", "roc_curve.png", "predictions.csv"):
        assert (run_dir / "evaluation" / name).stat().st_size > 0
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


def _cfg(run_dir):
    cfg = config.load(str(run_dir / "config.yaml"), SMALL_GRID)
    return cfg


def test_tuning_never_sees_test_rows_and_never_refeaturizes(spark, run_dir, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work)
    cfg = _cfg(run_dir)
    cfg["output"]["dir"] = str(work)
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
    from sparkvision import storage

    storage.write_parquet(noisy, str(work / "features.parquet"))
    shutil.rmtree(work / "images.parquet")
    after = pipeline.stage_train(spark, cfg)
    assert after["tuning"]["grid"] == before["tuning"]["grid"]
    assert after["tuning"]["best_params"] == before["tuning"]["best_params"]
    assert after["split"] == before["split"]


def test_rerun_replaces_outputs_without_duplicates(spark, run_dir, tmp_path):
    work = tmp_path / "again"
    shutil.copytree(run_dir, work)
    cfg = _cfg(run_dir)
    cfg["output"]["dir"] = str(work)
    pipeline.stage_load(spark, cfg)
    assert spark.read.parquet(str(work / "images.parquet")).count() == 30
    assert not list(work.glob("*.tmp-*")) and not list(work.glob("*.old-*"))


def test_config_errors_name_the_key(capsys):
    assert cli.main(["run", "--set", "split.test_fration=0.2"]) == 2
    assert "split.test_fration" in capsys.readouterr().err
    assert cli.main(["run", "--set", "split.test_fraction=1.5"]) == 2
    assert "split.test_fraction" in capsys.readouterr().err
    with pytest.raises(config.ConfigError, match="'model.name'"):
        config.load(overrides=["model.name=AlexNet"])


def test_bad_yaml_config_names_file_and_section(tmp_path):
    bad = tmp_path / "c.yml"
    bad.write_text("trian:\n  folds: 3\n")
    with pytest.raises(config.ConfigError, match=r"c.yml: unknown section 'trian'"):
        config.load(str(bad))


@pytest.mark.parametrize("command", ["load", "featurize", "train", "evaluate", "predict", "run"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "--" in capsys.readouterr().out


def test_missing_previous_stage_is_explained(tmp_path, capsys):
    assert cli.main(["train", "--output", str(tmp_path)]) == 2
    assert "run 'sparkvision featurize' first" in capsys.readouterr().err


def test_example_config_documents_the_defaults():
    example = config.load("examples/config.yml")
    defaults = config.defaults()
    assert example["split"]["test_fraction"] == pytest.approx(defaults["split"]["test_fraction"], abs=1e-4)
    example["split"]["test_fraction"] = defaults["split"]["test_fraction"]
    assert example == defaults


def _shuffles(df) -> bool:
    return "Exchange" in df._jdf.queryExecution().executedPlan().toString()


def test_featurize_uses_parquet_splits_and_shuffles_only_when_they_are_too_few(spark, tmp_path):
    ids = spark.range(40).selectExpr("cast(id as string) as image_id")
    ids.repartition(4).write.parquet(str(tmp_path / "split"))
    ids.coalesce(1).write.parquet(str(tmp_path / "one"))
    cfg = config.defaults()
    cores = spark.sparkContext.defaultParallelism

    split = spark.read.parquet(str(tmp_path / "split"))
    assert split.rdd.getNumPartitions() >= cores
    tasks, n = pipeline.featurize_tasks(spark, cfg, split)
    assert n == split.rdd.getNumPartitions() and not _shuffles(tasks)  # the image bytes are not shuffled

    one = spark.read.parquet(str(tmp_path / "one"))
    tasks, n = pipeline.featurize_tasks(spark, cfg, one)  # one split would leave cores idle
    assert n == tasks.rdd.getNumPartitions() == 2 * cores and _shuffles(tasks)

    cfg["featurize"]["partitions"] = 3  # an explicit count always wins
    tasks, n = pipeline.featurize_tasks(spark, cfg, split)
    assert n == tasks.rdd.getNumPartitions() == 3
    assert sorted(r.image_id for r in tasks.collect()) == sorted(r.image_id for r in ids.collect())
