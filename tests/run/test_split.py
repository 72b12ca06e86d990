from chispa import assert_df_equality
from pyspark.sql import functions as F

from sparkvision.run.split import assign_folds, split_report, stratified_split


def _rows(spark, counts):
    data = [(f"{label}/{i:03d}.jpg", label) for label, n in counts.items() for i in range(n)]
    return spark.createDataFrame(data, "image_id string, label string")


def test_stratified_counts_per_class(spark):
    df = stratified_split(_rows(spark, {"a": 30, "b": 30, "c": 7}), test_fraction=1 / 3, validation_fraction=0.1, seed=12)
    report = split_report(df)
    assert report["a"] == {"train": 17, "validation": 3, "test": 10}
    assert report["c"] == {"train": 4, "validation": 1, "test": 2}
    assert df.count() == 67


def test_deterministic_across_partitioning_and_runs(spark):
    base = _rows(spark, {"a": 40, "b": 25})
    one = stratified_split(base.coalesce(1), 0.25, seed=7).select("image_id", "split")
    many = stratified_split(base.repartition(7), 0.25, seed=7).select("image_id", "split")
    assert_df_equality(one, many, ignore_row_order=True)
    again = stratified_split(base.orderBy(F.rand(3)), 0.25, seed=7).select("image_id", "split")
    assert_df_equality(one, again, ignore_row_order=True)


def test_seed_changes_the_split(spark):
    base = _rows(spark, {"a": 40, "b": 40})
    s1 = {r.image_id for r in stratified_split(base, 0.25, seed=1).filter("split = 'test'").collect()}
    s2 = {r.image_id for r in stratified_split(base, 0.25, seed=2).filter("split = 'test'").collect()}
    assert s1 != s2 and len(s1) == len(s2) == 20


def test_every_class_keeps_training_rows(spark):
    report = split_report(stratified_split(_rows(spark, {"a": 2, "b": 3}), test_fraction=0.9, seed=1))
    assert report["a"]["train"] >= 1 and report["b"]["train"] >= 1


def test_folds_are_stratified(spark):
    df = assign_folds(_rows(spark, {"a": 9, "b": 6}), folds=3, seed=5)
    counts = {(r.label, r.fold): r["count"] for r in df.groupBy("label", "fold").count().collect()}
    assert all(counts[("a", k)] == 3 and counts[("b", k)] == 2 for k in range(3))
