"""sparkvision stream: files dropped in waves, a driver SIGKILLed mid-batch, every file exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import functions as F

from sparkvision import cli
from sparkvision.stages.stream import StreamLayout, parse_trigger

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dir(digits_model) -> Path:
    return digits_model


def _drop(src: Path, dest: Path, data: bytes | None = None, age_days: float = 0) -> Path:
    """Write a file as a copy tool does: as ``NAME._COPYING_``, then renamed (the stream never sees half)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + "._COPYING_")
    part.write_bytes(src.read_bytes() if data is None else data)
    if age_days:
        old = time.time() - age_days * 86_400
        os.utime(part, (old, old))
    os.replace(part, dest)
    return dest


def _tables(spark, out: Path):
    lay = StreamLayout(str(out))
    preds = spark.read.parquet(lay.predictions) if Path(lay.predictions).exists() else None
    rejected = spark.read.parquet(lay.rejected) if Path(lay.rejected).exists() else None
    return preds, rejected


def _paths(df) -> list[str]:
    return [] if df is None else [Path(r.path.replace("file:", "", 1)).name for r in df.select("path").collect()]


def _exactly_once(spark, out: Path, dropped: list[Path]):
    preds, rejected = _tables(spark, out)
    seen = _paths(preds) + _paths(rejected)
    assert sorted(seen) == sorted(p.name for p in dropped), "every dropped file exactly once"
    return preds, rejected


def test_triggers_parse_and_bad_ones_say_how():
    assert parse_trigger("available-now") == {"availableNow": True}
    assert parse_trigger("processing-time=30s") == {"processingTime": "30000 milliseconds"}
    assert parse_trigger("processing-time=500ms") == {"processingTime": "500 milliseconds"}
    with pytest.raises(ValueError, match="processing-time=<number>"):
        parse_trigger("every 5 seconds")


def test_local_folders_are_listed_on_the_driver_object_stores_keep_the_listing_job(spark):
    """Past 32 paths Spark lists a micro-batch's files in a job of one task per file (seconds a batch)."""
    from sparkvision.settings import StreamSettings
    from sparkvision.stages.stream import LISTING_THRESHOLD, _list_on_driver

    before = spark.conf.get(LISTING_THRESHOLD)
    cfg = StreamSettings(source="binaryFile", max_files_per_trigger=1000)
    try:
        spark.conf.set(LISTING_THRESHOLD, "32")
        _list_on_driver(spark, "s3a://bucket/incoming", cfg)
        _list_on_driver(spark, "/data/incoming", StreamSettings(source="cloudFiles", max_files_per_trigger=1000))
        assert spark.conf.get(LISTING_THRESHOLD) == "32"
        _list_on_driver(spark, "/data/incoming", cfg)
        assert int(spark.conf.get(LISTING_THRESHOLD)) >= 100_000
        spark.conf.set(LISTING_THRESHOLD, "500000")  # never lowered
        _list_on_driver(spark, "file:/data/incoming", cfg)
        assert spark.conf.get(LISTING_THRESHOLD) == "500000"
    finally:
        spark.conf.set(LISTING_THRESHOLD, before)


def test_three_waves_each_file_exactly_once_and_equal_to_batch_predict(spark, model_dir, digits_small, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "out"
    good = sorted(digits_small.rglob("*.png"))
    truncated = good[0].read_bytes()[:200]
    waves = [
        [(good[0], "a/0.png", None), (good[11], "a/1.png", None), (good[22], "a/2.png", None),
         (good[0], "a/notes.txt", b"not an image"), (good[0], "a/cut.png", truncated)],
        [(good[1], "b/3.png", None), (good[12], "b/4.png", None), (good[0], "b/empty.png", b"")],
        [(good[2], "c/deep/5.png", None), (good[23], "c/deep/6.png", None), (good[0], "c/deep/x.jpg", b"\xff\xd8junk")],
    ]
    dropped = []
    for n, wave in enumerate(waves, 1):
        dropped += [_drop(src, drop / name, data) for src, name, data in wave]
        assert cli.main(["stream", "--model", str(model_dir), "--images", str(drop), "--output", str(out),
                         "--trigger", "available-now"]) == 0
        preds, rejected = _exactly_once(spark, out, dropped)
        assert len(list((out / "_stream" / "commits").glob("*.json"))) == n  # one micro-batch a wave
    reasons = {Path(r.path).name: r.reason for r in rejected.collect()}
    assert set(reasons) == {"notes.txt", "cut.png", "empty.png", "x.jpg"}
    assert "unsupported file extension" in reasons["notes.txt"] and "empty" in reasons["empty.png"]
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    row = preds.orderBy("image_id").first()
    assert row.model == str(model_dir) and row.arrived_at <= row.processed_at and row.image_id.startswith("a/")
    assert set(preds.columns) >= {"image_id", "path", "predicted_label", "confidence", "probability", "model",
                                  "arrived_at", "processed_at", "batch_id"}

    batch = tmp_path / "batch"
    assert cli.main(["predict", "--model", str(model_dir), "--images", str(drop), "--output", str(batch)]) == 0
    expected = spark.read.parquet(str(batch / "predictions.parquet"))
    cols = ["image_id", "predicted_label", F.posexplode("probability")]
    assert_approx_df_equality(preds.select(*cols), expected.select(*cols), 1e-6, ignore_row_order=True)
    summary = json.loads((out / "stream.json").read_text())
    assert summary["predicted"] == 2 and summary["batches"] == 1  # this run's own: the third wave


STREAM_CHILD = [sys.executable, "-m", "sparkvision.cli", "stream", "--master", "local[2]"]


def test_driver_killed_mid_batch_restarts_from_its_checkpoint_exactly_once(spark, model_dir, digits_small, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "out"
    dropped = [_drop(src, drop / f"{i:02d}.png") for i, src in enumerate(sorted(digits_small.rglob("*.png"))[:14])]
    dropped.append(_drop(dropped[0], drop / "bad.png", b"\x89PNG broken"))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen(STREAM_CHILD + ["--model", str(model_dir), "--images", str(drop), "--output", str(out),
                                            "--trigger", "processing-time=1s", "--max-files-per-trigger", "2",
                                            "--timeout", "300"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    staging, commits = out / "_stream" / "staging", out / "_stream" / "commits"
    killed_in = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            started = {p.name.rsplit("-", 1)[1] for p in staging.glob("predictions-*")} if staging.exists() else set()
            done = {p.stem for p in commits.glob("*.json")} if commits.exists() else set()
            midway = sorted(started - done)
            if midway and done:  # a batch is being written, after at least one was committed
                os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers, at once
                killed_in = int(midway[0])
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, "the driver was never caught inside a micro-batch: " + proc.stderr.read().decode()[-3000:]
    assert not (commits / f"{killed_in}.json").exists()
    before = {p.stem for p in commits.glob("*.json")}

    assert cli.main(["stream", "--model", str(model_dir), "--images", str(drop), "--output", str(out),
                     "--trigger", "available-now"]) == 0
    preds, rejected = _exactly_once(spark, out, dropped)
    assert before < {p.stem for p in commits.glob("*.json")} and (commits / f"{killed_in}.json").exists()
    assert preds.select("image_id").distinct().count() == preds.count() == 14
    assert _paths(rejected) == ["bad.png"]
    assert not any(staging.iterdir()) if staging.exists() else True
    leftovers = [p.name for t in ("predictions", "rejected") for p in (out / t).iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers


def _jpeg(src: Path) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(src).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _parquet_rows(table: Path) -> list[dict]:
    """A stream table's rows read with pyarrow, file by file (not with sparkvision's code)."""
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(table.glob("batch_id=*")) if table.exists() else []:
        for f in part.glob("*.parquet"):
            rows += [{**r, "batch_id": part.name.split("=", 1)[1]} for r in pq.read_table(f).to_pylist()]
    return rows


def _every_file(folder: Path) -> list[str]:
    """Every file under the dropped folder, as os.walk sees it, hidden names included."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _run_child(model_dir: Path, drop: Path, out: Path, fault: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.pop("SPARKVISION_FAULT", None)
    if fault:
        env["SPARKVISION_FAULT"] = fault
    return subprocess.run(STREAM_CHILD + ["--model", str(model_dir), "--images", str(drop), "--output", str(out),
                                          "--trigger", "available-now", *extra],
                          env=env, capture_output=True, text=True, start_new_session=True, timeout=600)


def test_waves_of_everyday_names_with_the_driver_killed_at_three_points(spark, model_dir, digits_small, tmp_path):
    """Four waves: spaces, accents, '_' and '.' names, a 9-day-old copy, a 2.2 GB sparse file, a changed
    checkpoint; the driver SIGKILLed while writing a partition, after the swap before the commit record, and
    while replacing a partition a crash left. Every file exactly once, counted with os.walk and pyarrow."""
    drop, out = tmp_path / "drop", tmp_path / "out"
    good = sorted(digits_small.rglob("*.png"))
    _drop(good[0], drop / "IMG 0001.jpg", _jpeg(good[0]))
    _drop(good[11], drop / "été.jpg", _jpeg(good[11]))
    _drop(good[1], drop / "_DSC0001.JPG", _jpeg(good[1]))
    _drop(good[2], drop / ".x.jpg", _jpeg(good[2]))
    _drop(good[22], drop / "a" / "plain.png")

    # 1. killed while writing the batch's partitions (predictions staged, rejected not yet)
    died = _run_child(model_dir, drop, out, "stream:staged-predictions")
    assert died.returncode == -9, died.stderr[-3000:]
    assert not list((out / "_stream" / "commits").glob("*.json"))

    # 2. a wave arrives; killed after batch 0's swap, before its commit record
    _drop(good[12], drop / "copied.jpg", _jpeg(good[12]), age_days=9)
    with open(drop / "huge.jpg", "wb") as f:
        f.truncate(2_200_000_000)
    died = _run_child(model_dir, drop, out, "stream:before-commit")
    assert died.returncode == -9, died.stderr[-3000:]
    assert (out / "predictions" / "batch_id=0").is_dir() and not (out / "_stream" / "commits" / "0.json").exists()

    # 3. the replay of batch 0 killed while replacing the partition the last crash left
    died = _run_child(model_dir, drop, out, "replace:after_aside")
    assert died.returncode == -9, died.stderr[-3000:]
    assert list(out.glob("*/batch_id=0.old-*")), "the kill came while a partition was moved aside"

    done = _run_child(model_dir, drop, out)
    assert done.returncode == 0, done.stderr[-3000:]

    # 4. a changed checkpoint is refused, naming both; the right one goes on with the last wave
    _drop(good[23], drop / "b" / "IMG 0002.jpg", _jpeg(good[23]))
    _drop(good[3], drop / "b" / "_DSC0002.JPG", _jpeg(good[3]))
    refused = _run_child(model_dir, drop, out, None, "--checkpoint", str(tmp_path / "other-checkpoint"))
    assert refused.returncode != 0 and str(tmp_path / "other-checkpoint") in refused.stderr
    assert str(out / "_stream" / "checkpoint") in refused.stderr
    done = _run_child(model_dir, drop, out)
    assert done.returncode == 0, done.stderr[-3000:]

    preds, rejected = _parquet_rows(out / "predictions"), _parquet_rows(out / "rejected")
    found = sorted(r["image_id"] for r in preds + rejected)
    assert found == _every_file(drop), "every file under --images exactly once in predictions or rejected"
    assert sorted(r["image_id"] for r in preds) == ["IMG 0001.jpg", "a/plain.png", "b/IMG 0002.jpg", "copied.jpg", "été.jpg"]
    reasons = {r["image_id"]: r["reason"] for r in rejected}
    assert all(reasons[n].startswith("hidden file") for n in ("_DSC0001.JPG", ".x.jpg", "b/_DSC0002.JPG"))
    assert reasons["huge.jpg"].startswith("file too large")
    assert not [p for p in out.rglob("*") if ".old-" in p.name or ".tmp-" in p.name]
