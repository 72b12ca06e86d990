"""The artifact layer (sparkvision.run.storage) against a real S3-compatible server on loopback (moto's server).

Spark itself cannot reach S3 here (no hadoop-aws jars offline), so this covers what Python writes: JSON,
CSV, text, PNG, markers, the run lock and the folder swap, each landing in the bucket and read back from
it, with nothing written to a local path.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import BUCKET, _keys

from sparkvision.run import locks, storage
from sparkvision.run.layout import MARKER, EvaluationLayout, RunLayout

@pytest.mark.parametrize("scheme", ["s3", "s3a"])
def test_every_artifact_kind_lands_in_the_bucket_and_reads_back(s3, scheme):
    from sparkvision.stages import evaluate as ev

    lay = RunLayout(f"{scheme}://{BUCKET}/runs/one")
    storage.write_json(lay.load, {"accepted": 3, "fingerprint": "f" * 32})
    storage.write_text(lay.config, "data:\n  images: x\n")
    storage.write_csv_rows(lay.rejected_csv, ["image_id", "reason"], [["=cmd|x", "not an image"], ["b.jpg", "empty file"]])
    png = ev.plot_confusion_matrix([[2, 0], [1, 1]], ["x", "y"])
    evaluation = EvaluationLayout(lay.evaluation)
    storage.write_bytes(evaluation.confusion_matrix_png, png)
    storage.write_marker(lay.features, {"stage": "featurize", "fingerprint": "a" * 32})
    assert _keys(s3, "runs/one") == ["runs/one/config.yaml", "runs/one/evaluation/confusion_matrix.png",
                                     f"runs/one/features.parquet/{MARKER}", "runs/one/load.json",
                                     "runs/one/rejected.csv"]
    assert storage.read_json(lay.load)["accepted"] == 3
    assert storage.read_text(lay.config).startswith("data:")
    assert storage.read_bytes(lay.rejected_csv).decode().splitlines()[1] == "'=cmd|x,not an image"
    assert storage.read_bytes(evaluation.confusion_matrix_png) == png
    assert storage.read_marker(lay.features)["fingerprint"] == "a" * 32
    assert storage.exists(lay.load) and storage.is_dir(lay.features) and not storage.exists(lay.train)
    assert storage.listdir(lay.out) == ["config.yaml", "evaluation", "features.parquet", "load.json", "rejected.csv"]


def test_a_folder_is_swapped_in_by_copy_with_its_marker_last(s3):
    lay = RunLayout(f"s3a://{BUCKET}/runs/two")
    storage.write_bytes(storage.join(lay.features, "part-0.parquet"), b"old")
    tmp = storage.staging(lay.features)
    for name in ("part-0.parquet", "part-1.parquet"):
        storage.write_bytes(storage.join(tmp, name), name.encode())
    storage.write_marker(tmp, {"stage": "featurize", "fingerprint": "b" * 32})
    storage.replace_with(tmp, lay.features)
    assert _keys(s3, "runs/two") == [f"runs/two/features.parquet/{MARKER}", "runs/two/features.parquet/part-0.parquet",
                                     "runs/two/features.parquet/part-1.parquet"]
    assert storage.read_bytes(storage.join(lay.features, "part-0.parquet")) == b"part-0.parquet"
    assert not storage.exists(tmp)


def test_leftovers_are_cleaned_by_name(s3):
    lay = RunLayout(f"s3://{BUCKET}/runs/three")
    storage.write_bytes(storage.join(lay.out, "features.parquet.tmp-0123abcd", "part-0"), b"x")
    storage.write_bytes(storage.join(lay.out, "notes.tmp-0123abcd"), b"user file")  # not ours: kept
    removed = storage.clean_leftovers(lay.out, lay.leftover_names())
    assert removed == [storage.join(lay.out, "features.parquet.tmp-0123abcd")]
    assert _keys(s3, "runs/three") == ["runs/three/notes.tmp-0123abcd"]


def test_the_run_lock_on_the_bucket(s3):
    lay = RunLayout(f"s3://{BUCKET}/runs/four")
    with locks.run_lock(lay.lock, "run") as owner:
        assert json.loads(s3.get_object(Bucket=BUCKET, Key="runs/four/.sparkvision.lock")["Body"].read())["pid"] == owner["pid"]
        holder = subprocess.Popen(["sleep", "30"])
        try:  # another live process holds a second folder's lock: refused, with its owner
            other = RunLayout(f"s3://{BUCKET}/runs/five")
            storage.write_json(other.lock, {**owner, "pid": holder.pid, "command": "train"})
            with pytest.raises(locks.OutputLocked, match=rf"'sparkvision train' \(pid {holder.pid}"):
                with locks.run_lock(other.lock, "evaluate"):
                    pass
        finally:
            holder.kill()
            holder.wait()
    assert not storage.exists(lay.lock)  # released
    assert _keys(s3, "runs/four") == []
