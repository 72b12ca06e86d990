"""12-megapixel photos through load and featurize in a default 1 GB driver heap (issue 24 item 9).

Parquet's writer first measures a row group after 100 rows, and Spark's batches are counted in rows (256
a Parquet read batch, 64 an Arrow batch): for 2-3 MB JPEGs each meant one contiguous buffer of 100+ MB.
Before the fix, 200 such photos killed ``sparkvision load``'s JVM (heap OOM compressing one ~115 MB page),
and with bounded row groups alone ``featurize`` still ran out of heap (64-row batches of the UDF's output).
``images.parquet`` is now written with row groups bounded by bytes (``loader.IMAGE_PARQUET_OPTIONS``) and
read with batches sized from its measured bytes per row (``loader.image_read_settings``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from sparkvision.stages import load as loader
from sparkvision.run import spark as sv_spark

WIDTH, HEIGHT = 4000, 3000  # 12 MP
N_PHOTOS = 200


def _photo(args: tuple[str, int]) -> int:
    """One deterministic 12 MP JPEG: a smooth colour gradient + grain, quality 85 (about 2.3 MB, 0.15 s)."""
    import numpy as np
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.3, 1.0, 3)
    x = np.arange(WIDTH, dtype=np.float32) / WIDTH
    y = np.arange(HEIGHT, dtype=np.float32) / HEIGHT
    grain = rng.integers(-10, 11, size=(HEIGHT, WIDTH), dtype=np.int16)
    rgb = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    for channel, (gx, gy, offset) in enumerate(((150 * a, 60, 20), (40, 150 * b, 30), (-90 * c, -60, 220))):
        plane = np.add.outer((y * gy).astype(np.int16), (x * gx + offset).astype(np.int16))
        plane += grain
        rgb[..., channel] = np.clip(plane, 0, 255, out=plane)
    Image.fromarray(rgb).save(path, "JPEG", quality=85)
    return os.path.getsize(path)


def make_photos(root: Path, n: int = N_PHOTOS, processes: int = 2) -> int:
    """``n`` 12 MP JPEGs in two class folders under ``root``; returns their total bytes."""
    jobs = []
    for i in range(n):
        folder = root / ("grain" if i % 2 else "gradient")
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"photo_{i:04d}.jpg"), i))
    with ProcessPoolExecutor(processes) as pool:
        return sum(pool.map(_photo, jobs, chunksize=8))


# ---- quick: the row-group and batch arithmetic --------------------------------------------------------

MB = 2**20


def test_batch_rows_follow_bytes_per_row():
    # 2.5 MB photos: a 16 MB budget is 6 rows, not Spark's 4,096 (nor the 256 the session sets)
    assert sv_spark.batch_rows(2.5 * MB, budget=16 * MB) == 6
    # thumbnails: the cap, not the budget, decides
    assert sv_spark.batch_rows(10_000, budget=16 * MB, most=256) == 256
    # a row over the budget is still one row a batch
    assert sv_spark.batch_rows(200 * MB, budget=16 * MB) == 1
    # unknown size: the cautious default
    assert sv_spark.batch_rows(None) == sv_spark.batch_rows(0) == sv_spark.UNKNOWN_BATCH_ROWS


def test_image_batch_settings_never_raise_the_sessions_own(spark):
    budget = sv_spark.batch_budget(spark)
    assert MB <= budget <= sv_spark.IMAGE_BATCH_BYTES
    photos = sv_spark.image_batch_settings(spark, 2.5 * MB)
    assert set(photos) == {sv_spark.PARQUET_BATCH_ROWS, sv_spark.ARROW_BATCH_ROWS}
    assert all(v == str(max(1, int(budget // (2.5 * MB)))) for v in photos.values())
    # thumbnails: capped by what the session has (the test session sets 64 Arrow rows, Parquet's default 4,096)
    thumbs = sv_spark.image_batch_settings(spark, 1_000)
    assert thumbs[sv_spark.ARROW_BATCH_ROWS] == spark.conf.get(sv_spark.ARROW_BATCH_ROWS)
    assert int(thumbs[sv_spark.PARQUET_BATCH_ROWS]) <= 4096


def test_image_write_options_bound_row_groups_by_bytes():
    opts = loader.IMAGE_PARQUET_OPTIONS
    assert int(opts["parquet.block.size"]) == loader.IMAGE_ROW_GROUP_BYTES <= 32 * MB
    assert int(opts["parquet.page.size"]) <= MB
    # Parquet measures a row group (and a page) only every `row.check.min` rows: 100 by default, 250 MB of
    # photos before the first look. Here: after every row.
    assert opts["parquet.page.size.row.check.min"] == opts["parquet.page.size.row.check.max"] == "1"
    assert all(isinstance(v, str) for v in opts.values())  # DataFrameWriter.options takes strings


def test_row_groups_written_with_the_options_stay_near_the_target(spark, tmp_path):
    import random

    import pyarrow.parquet as pq

    # 24 rows of 1 MB (random: incompressible, like JPEG bytes), in one task, with a 4 MB target
    rng = random.Random(0)
    rows = spark.createDataFrame([(i, rng.randbytes(MB)) for i in range(24)], "id long, content binary").coalesce(1)
    opts = {**loader.IMAGE_PARQUET_OPTIONS, "parquet.block.size": str(4 * MB)}
    rows.write.options(**opts).parquet(str(tmp_path / "bounded"))
    rows.write.parquet(str(tmp_path / "default"))  # Parquet's defaults: one 24 MB row group (and page)

    def groups(folder):
        return [md.row_group(i).total_byte_size for f in sorted(folder.glob("*.parquet"))
                for md in [pq.ParquetFile(f).metadata] for i in range(md.num_row_groups)]

    bounded, default = groups(tmp_path / "bounded"), groups(tmp_path / "default")
    assert len(default) == 1 and default[0] > 24 * MB
    assert len(bounded) >= 5 and max(bounded) <= 5 * MB, bounded
    assert spark.read.parquet(str(tmp_path / "bounded")).count() == 24


def test_bytes_per_row_from_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "images.parquet"
    folder.mkdir()
    for part, rows in enumerate((3, 5)):
        table = pa.table({"image_id": [f"{part}-{i}" for i in range(rows)],
                          "content": [os.urandom(100_000) for _ in range(rows)]})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=2)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.parquet.crc").write_bytes(b"x" * 10_000_000)  # not data: ignored
    (folder / "_sparkvision.json").write_text("{}" * 100_000)
    measured = loader.image_bytes_per_row(str(folder), rows=8)
    assert 100_000 <= measured <= 110_000
    # the row count from the footers when the caller does not know it
    assert loader.image_bytes_per_row(str(folder)) == measured
    assert loader.image_bytes_per_row(str(tmp_path / "missing")) is None


def test_scoped_conf_puts_settings_back(spark):
    key = sv_spark.PARQUET_BATCH_ROWS
    original = spark.conf.get(key, None)
    try:
        spark.conf.set(key, "300")
        with sv_spark.scoped_conf(spark, {key: "7"}):
            assert spark.conf.get(key) == "7"
        assert spark.conf.get(key) == "300"
        with pytest.raises(RuntimeError):
            with sv_spark.scoped_conf(spark, {key: "9"}):
                raise RuntimeError("boom")
        assert spark.conf.get(key) == "300"
        spark.conf.unset(key)
        with sv_spark.scoped_conf(spark, {key: "5"}):
            assert spark.conf.get(key) == "5"
        assert spark.conf.get(key, None) is None  # unset again, not left at 5
        with sv_spark.scoped_conf(spark, None):
            pass
    finally:
        spark.conf.set(key, original) if original is not None else spark.conf.unset(key)


# ---- slow: 200 photos of 12 MP in a 1 GB heap -----------------------------------------------------------


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparkvision.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_12mp_photos_load_and_featurize_in_a_1gb_heap(tmp_path):
    started = time.time()
    photos = tmp_path / "photos"
    total = make_photos(photos)
    assert total > N_PHOTOS * 2**20  # at least 1 MB each on average: rows of MBs, the case under test
    generated = time.time() - started
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "PYSPARK_SUBMIT_ARGS")}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    # No spark.driver.memory anywhere: local mode's launcher default, a 1 GB heap for driver and executor.
    common = ["--output", str(out), "--master", "local[2]", "--set", "featurize.draft=true"]
    load = _cli("load", "--images", str(photos), *common, env=env)
    assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-5000:]
    featurize = _cli("featurize", *common, env=env)
    assert featurize.returncode == 0, featurize.stdout[-3000:] + featurize.stderr[-5000:]
    assert "OutOfMemoryError" not in featurize.stderr + load.stderr

    loaded = json.loads((out / "load.json").read_text())
    featurized = json.loads((out / "featurize.json").read_text())
    assert loaded["discovered"] == N_PHOTOS
    assert loaded["accepted"] + loaded["rejected"] == N_PHOTOS
    # every image featurized or rejected: none lost between the two stages
    assert featurized["images"] + featurized["rejected"] == loaded["accepted"]
    assert featurized["images"] == N_PHOTOS  # they are all valid JPEGs
    import pyarrow.parquet as pq

    assert pq.read_table(out / "features.parquet", columns=["image_id"]).num_rows == featurized["images"]

    # the table as written: row groups bounded by bytes, not by Parquet's 100-row first check
    groups = [(md.row_group(i).num_rows, md.row_group(i).total_byte_size)
              for f in sorted((out / "images.parquet").glob("*.parquet"))
              for md in [pq.ParquetFile(f).metadata] for i in range(md.num_row_groups)]
    assert sum(n for n, _ in groups) == N_PHOTOS
    assert max(size for _, size in groups) <= loader.IMAGE_ROW_GROUP_BYTES + 8 * MB, groups
    print(f"generated {N_PHOTOS} photos ({total / 2**20:.0f} MB) in {generated:.0f} s; load+featurize "
          f"{time.time() - started - generated:.0f} s; {len(groups)} row groups")
