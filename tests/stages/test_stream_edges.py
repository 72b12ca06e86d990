"""sparkvision stream at the edges, in the quick suite: everyday names (spaces, accents, a leading '_' or '.'),
a file copied with an old modification time, a 2.2 GB file, a second checkpoint on the same output, readers
of a table while a batch is uncommitted. Every file is checked against what was dropped, read back with
pyarrow (not with the project's code)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sparkvision import cli

from sparkvision.run import listing

from sparkvision.stages import stream
from sparkvision.run.layout import StreamLayout

DAY = 86_400


@pytest.fixture(scope="module")
def model_dir(digits_model) -> Path:
    return digits_model


def _jpeg(src: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(src).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _drop(dest: Path, data: bytes, age_days: float = 0) -> Path:
    """As a copy tool does: written under a ``._COPYING_`` name (the stream waits for those), then renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + listing.COPYING_SUFFIX)
    part.write_bytes(data)
    if age_days:
        old = time.time() - age_days * DAY
        os.utime(part, (old, old))
    os.replace(part, dest)
    return dest


def _rows(table: Path) -> list[dict]:
    """Every row of a stream table, straight from its Parquet files (with the batch_id of its folder)."""
    rows = []
    for part in sorted(table.glob("batch_id=*")):
        for f in part.glob("*.parquet"):
            for r in pq.read_table(f).to_pylist():
                rows.append({**r, "batch_id": int(part.name.split("=")[1])})
    return rows


def _names(rows: list[dict]) -> list[str]:
    return sorted(r["path"].rsplit("/", 1)[-1] for r in rows)


def _stream(model_dir: Path, drop: Path, out: Path, *extra: str) -> int:
    return cli.main(["stream", "--model", str(model_dir), "--images", str(drop), "--output", str(out),
                     "--trigger", "available-now", *extra])


def test_source_log_paths_are_decoded_as_the_path_column_has_them():
    assert stream._decoded("file:///in/IMG%200001.jpg") == "file:/in/IMG 0001.jpg"
    assert stream._decoded("file:///in/%C3%A9t%C3%A9.jpg") == "file:/in/été.jpg"
    assert stream._decoded("file:///in/été.jpg") == "file:/in/été.jpg"
    assert stream._decoded("file:///in/100%25%20sure.jpg") == "file:/in/100% sure.jpg"
    assert stream._decoded("s3a://b/in/a%20b.jpg") == "s3a://b/in/a b.jpg"


@pytest.mark.parametrize("image_id, reason", [
    ("_DSC0001.JPG", "hidden file"), (".x.jpg", "hidden file"), ("a/.DS_Store", "hidden file"),
    ("_tmp/x.jpg", "hidden or system folder (_tmp)"), (".git/x.png", "hidden or system folder (.git)"),
    ("x.jpg._COPYING_", None), ("_tmp/x.jpg._COPYING_", None),  # in progress: reported once renamed
    ("IMG 0001.jpg", None), ("été.jpg", None), ("a/b_c.jpg", None), ("_part=1/x.jpg", None),
])
def test_what_the_file_source_never_lists(image_id, reason):
    got = listing.unlisted_reason(image_id)
    assert (got is None) if reason is None else got.startswith(reason)


def test_everyday_names_old_copies_and_a_huge_file_each_land_once(spark, model_dir, digits_small, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "out"
    good = sorted(digits_small.rglob("*.png"))
    dropped = [
        _drop(drop / "IMG 0001.jpg", _jpeg(good[0])),
        _drop(drop / "été.jpg", _jpeg(good[11])),
        _drop(drop / "sub dir" / "100% sure.png", good[12].read_bytes()),
        _drop(drop / "_DSC0001.JPG", _jpeg(good[1])),
        _drop(drop / ".x.jpg", _jpeg(good[2])),
        _drop(drop / "copied.jpg", _jpeg(good[22]), age_days=9),  # cp -p of a 9-day-old photo
        _drop(drop / "new.jpg", _jpeg(good[23])),
    ]
    huge = drop / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: 2.2 GB on paper, nothing on disk
        f.truncate(2_200_000_000)
    dropped.append(huge)
    assert _stream(model_dir, drop, out) == 0

    lay = StreamLayout(str(out))
    preds, rejected = _rows(Path(lay.predictions)), _rows(Path(lay.rejected))
    assert sorted(_names(preds) + _names(rejected)) == sorted(p.name for p in dropped)
    assert _names(preds) == sorted(["IMG 0001.jpg", "été.jpg", "100% sure.png", "copied.jpg", "new.jpg"])
    why = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in rejected}
    assert why["_DSC0001.JPG"].startswith("hidden file") and why[".x.jpg"].startswith("hidden file")
    assert why["huge.jpg"] == f"file too large: {2_200_000_000} bytes > max_file_mb 64"
    # the ids are the paths below the folder, decoded
    assert {r["image_id"] for r in preds} >= {"IMG 0001.jpg", "sub dir/100% sure.png"}

    # a second wave: one ordinary file, one hidden only; then a wave of hidden names alone (no micro-batch
    # runs: the end-of-run sweep reports them)
    dropped.append(_drop(drop / "later.jpg", _jpeg(good[3])))
    dropped.append(_drop(drop / "_later.jpg", _jpeg(good[4])))
    assert _stream(model_dir, drop, out) == 0
    dropped.append(_drop(drop / "_alone.jpg", _jpeg(good[5])))
    assert _stream(model_dir, drop, out) == 0
    assert _stream(model_dir, drop, out) == 0  # nothing new: nothing written twice
    preds, rejected = _rows(Path(lay.predictions)), _rows(Path(lay.rejected))
    assert sorted(_names(preds) + _names(rejected)) == sorted(p.name for p in dropped)
    sweep = [r for r in rejected if r["batch_id"] < 0]
    assert _names(sweep) == ["_alone.jpg"]
    summary = json.loads((out / "stream.json").read_text())
    assert summary["predicted"] == 0 and summary["rejected"] == 0  # the last run found nothing new

    # readers: committed() leaves out a partition swapped in whose commit record is not written yet
    (Path(lay.commits) / "1.json").rename(Path(lay.commits) / "1.json.hold")
    try:
        seen = {r.path.rsplit("/", 1)[-1] for r in stream.committed(spark, str(out), "predictions").collect()}
        assert "later.jpg" not in seen and "new.jpg" in seen
    finally:
        (Path(lay.commits) / "1.json.hold").rename(Path(lay.commits) / "1.json")


def test_a_new_checkpoint_on_an_output_of_another_query_is_refused_naming_both(spark, model_dir, digits_small,
                                                                               tmp_path, capsys):
    drop, out = tmp_path / "drop", tmp_path / "out"
    good = sorted(digits_small.rglob("*.png"))
    _drop(drop / "a.png", good[0].read_bytes())
    assert _stream(model_dir, drop, out) == 0
    _drop(drop / "b.png", good[1].read_bytes())
    other = tmp_path / "elsewhere-checkpoint"
    capsys.readouterr()
    assert _stream(model_dir, drop, out, "--checkpoint", str(other)) == 2
    err = capsys.readouterr().err
    assert str(out / "_stream" / "checkpoint") in err and str(other) in err
    # the checkpoint deleted to reprocess: the same folder, but a new query
    import shutil

    shutil.rmtree(out / "_stream" / "checkpoint")
    assert _stream(model_dir, drop, out) == 2
    assert "is new" in capsys.readouterr().err
    assert _names(_rows(out / "predictions")) == ["a.png"]  # nothing was skipped or written twice
