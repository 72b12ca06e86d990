"""sparkvision.compat.image (Spark 2.4's ImageSchema) and sparkvision.compat.imageIO (sparkdl's imageIO helpers)."""

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from PIL import Image
from pyspark.sql import Row
from pyspark.sql import functions as F

from sparkvision.compat import imageIO, sparkdl
from sparkvision.compat.image import ImageSchema, ImageSchemaCompatWarning
from sparkvision.compat.sparkdl import SparkdlCompatWarning

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ["origin", "height", "width", "nChannels", "mode", "data"]


def _png(path: Path, mode: str, size=(5, 4), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode).save(path)
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Gray, RGB and RGBA PNGs, a JPEG, and what real folders also hold."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    _png(folder / "gray.png", "L", seed=1)
    _png(folder / "rgb.png", "RGB", seed=2)
    _png(folder / "rgba.png", "RGBA", seed=3)
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(buf, "JPEG")
    (folder / "photo.jpg").write_bytes(buf.getvalue())
    buf = io.BytesIO()  # noisy, so that half the file is past its header: Spark's decoder then accepts it
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "sub").mkdir()
    _png(folder / "sub" / "nested.png", "RGB", seed=4)
    return folder


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSchemaCompatWarning)
        return fn(*args, **kwargs)


def test_schema_facts_are_sparks_own(spark):
    """The values kept in Python equal the ones Spark's JVM ImageSchema gives (classic session)."""
    from pyspark.ml.image import ImageSchema as Sparks

    assert ImageSchema.imageSchema == Sparks.imageSchema
    assert ImageSchema.columnSchema == Sparks.columnSchema
    assert ImageSchema.ocvTypes == Sparks.ocvTypes
    assert ImageSchema.imageFields == Sparks.imageFields == FIELDS
    assert ImageSchema.undefinedImageType == Sparks.undefinedImageType == "Undefined"


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_read_images_equals_sparks_image_source_for_lossless_files(spark, mixed):
    """Gray, BGR and BGRA structs: byte for byte what spark.read.format('image') gives for PNGs."""
    ours = _quiet(ImageSchema.readImages, str(mixed))
    assert ours.columns == ["image"]
    pngs = ["gray.png", "rgb.png", "rgba.png"]
    theirs = spark.read.format("image").load([str(mixed / n) for n in pngs])
    norm = F.regexp_replace("image.origin", "^file:(//)?", "file:")
    cols = [F.col(f"image.{c}") for c in FIELDS[1:]]
    assert_df_equality(ours.filter(F.col("image.origin").rlike(r"/(gray|rgb|rgba)\.png$")).select(norm.alias("o"), *cols),
                       theirs.select(norm.alias("o"), *cols), ignore_row_order=True)
    channels = {Path(r.origin).name: (r.nChannels, r.mode) for r in ours.select("image.*").collect()}
    assert channels["gray.png"] == (1, 0) and channels["rgb.png"] == (3, 16) and channels["rgba.png"] == (4, 24)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_failures_are_invalid_rows_reported_with_reasons_and_dropped_only_when_asked(spark, mixed):
    with pytest.warns(ImageSchemaCompatWarning, match=r"2 of 6 files are not decodable images") as record:
        images, rejected = ImageSchema.readImagesWithRejects(str(mixed))
    message = " ".join(str(w.message) for w in record)
    assert "truncated.jpg" in message and "notes.txt" in message and ".DS_Store" in message
    rows = {Path(r.origin).name: r for r in images.select("image.*").collect()}
    assert set(rows) == {"gray.png", "rgb.png", "rgba.png", "photo.jpg", "truncated.jpg", "notes.txt"}  # not sub/
    for bad in ("truncated.jpg", "notes.txt"):  # Spark's invalid-image row, path kept
        r = rows[bad]
        assert (r.height, r.width, r.nChannels, r.mode, bytes(r.data)) == (-1, -1, -1, -1, b"")
        assert r.origin.startswith("file:") and r.origin.endswith(bad)
    assert rows["photo.jpg"].height == 32 and len(rows["photo.jpg"].data) == 32 * 48 * 3
    reasons = {Path(r.path).name: r.reason for r in rejected.collect()}
    assert set(reasons) == {"truncated.jpg", "notes.txt", ".DS_Store"}
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["notes.txt"]
    assert "hidden file" in reasons[".DS_Store"]

    dropped = _quiet(ImageSchema.readImages, str(mixed), dropImageFailures=True)
    assert sorted(Path(r.origin).name for r in dropped.select("image.origin").collect()) == [
        "gray.png", "photo.jpg", "rgb.png", "rgba.png"]
    nested = _quiet(ImageSchema.readImages, str(mixed), recursive=True, dropImageFailures=True)
    assert "nested.png" in {Path(r.origin).name for r in nested.select("image.origin").collect()}


def test_no_decoded_image_is_ever_broken_where_sparks_source_passes_a_truncated_jpeg(spark, mixed):
    theirs = spark.read.format("image").option("dropInvalid", True).load(str(mixed / "truncated.jpg"))
    assert theirs.count() == 1  # Spark's decoder accepts half a JPEG as a valid image
    ours = _quiet(ImageSchema.readImages, str(mixed / "truncated.jpg"), dropImageFailures=True)
    assert ours.count() == 0


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_sample_ratio_partitions_and_arguments(spark, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        _png(folder / f"{i:02d}.png", "RGB", size=(2, 2), seed=i)
    names = lambda df: sorted(r.origin for r in df.select("image.origin").collect())  # noqa: E731
    half = names(_quiet(ImageSchema.readImages, str(folder), sampleRatio=0.5, seed=7))
    assert half == names(_quiet(ImageSchema.readImages, str(folder), sampleRatio=0.5, seed=7))  # deterministic
    assert 8 <= len(half) <= 32 and half != names(_quiet(ImageSchema.readImages, str(folder), sampleRatio=0.5, seed=8))
    assert _quiet(ImageSchema.readImages, str(folder), sampleRatio=0.0).count() == 0
    assert _quiet(ImageSchema.readImages, str(folder), numPartitions=3).rdd.getNumPartitions() == 3
    with pytest.raises(ValueError, match="sampleRatio should be between 0 and 1"):
        ImageSchema.readImages(str(folder), sampleRatio=1.5)
    with pytest.raises(ValueError, match="numPartitions"):
        ImageSchema.readImages(str(folder), numPartitions=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSchema.readImages(str(tmp_path / "missing"))


def test_to_ndarray_and_to_image_round_trip(spark):
    bgra = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    row = ImageSchema.toImage(bgra, origin="mem:x")
    assert list(row.asDict()) == FIELDS and row.mode == ImageSchema.ocvTypes["CV_8UC4"]
    df = spark.createDataFrame([Row(image=row)], ImageSchema.imageSchema)
    back = df.first().image
    np.testing.assert_array_equal(ImageSchema.toNDArray(back), bgra)
    assert ImageSchema.toImage(np.full((1, 1, 3), 7.0)).data == bytearray(b"\x07\x07\x07")
    with pytest.raises(ValueError, match="not an 8-bit image"):
        ImageSchema.toImage(np.full((1, 1, 3), 300.0))
    with pytest.raises(ValueError, match="Invalid number of channels"):
        ImageSchema.toImage(np.zeros((1, 1, 2), np.uint8))
    with pytest.raises(TypeError, match="should be pyspark.sql.types.Row"):
        ImageSchema.toNDArray({"height": 1})
    invalid = Row(**dict(zip(FIELDS, ["file:/x.txt", -1, -1, -1, -1, bytearray()])))
    with pytest.raises(ValueError, match="file:/x.txt is an invalid image"):
        ImageSchema.toNDArray(invalid)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_read_images_with_custom_fn_matches_read_images_and_keeps_failed_paths(spark, mixed):
    with pytest.warns(SparkdlCompatWarning, match="invalid-image row"):
        custom = imageIO.readImagesWithCustomFn(str(mixed), decode_f=imageIO.PIL_decode, numPartition=2)
    assert custom.columns == ["image"] and custom.rdd.getNumPartitions() == 2
    rows = {Path(r.origin).name: r for r in custom.select("image.*").collect()}
    assert set(rows) == {"gray.png", "rgb.png", "rgba.png", "photo.jpg", "truncated.jpg", "notes.txt"}
    assert rows["notes.txt"].mode == -1 and rows["truncated.jpg"].mode == -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        old = sparkdl.readImages(str(mixed))  # RGB-decoded structs, 3 channels: PIL_decode's layout
    ok = custom.filter("image.mode != -1").select(F.col("image.origin").alias("o"), "image.data")
    old = old.filter(~F.col("filePath").contains("/sub/"))  # readImages lists sub-folders too
    assert_df_equality(ok, old.select(F.col("filePath").alias("o"), "image.data"), ignore_row_order=True)


def test_pil_decode_helpers_and_resize_udf(spark, mixed):
    rgb = np.asarray(Image.open(mixed / "rgb.png"))
    np.testing.assert_array_equal(imageIO.PIL_decode((mixed / "rgb.png").read_bytes()), rgb[:, :, ::-1])
    assert imageIO.PIL_decode((mixed / "gray.png").read_bytes()).shape == (4, 5, 3)
    assert imageIO.PIL_decode_and_resize((7, 3))((mixed / "photo.jpg").read_bytes()).shape == (3, 7, 3)
    images = _quiet(ImageSchema.readImages, str(mixed))
    with pytest.warns(SparkdlCompatWarning, match="bilinear"):
        resize = imageIO.createResizeImageUDF((6, 8))
    out = {Path(r.origin).name: r for r in images.select(resize("image").alias("image")).select("image.*").collect()}
    for name, channels in (("gray.png", 1), ("rgb.png", 3), ("rgba.png", 4), ("photo.jpg", 3)):
        assert (out[name].height, out[name].width, out[name].nChannels) == (6, 8, channels)
        assert len(out[name].data) == 6 * 8 * channels
    expected = np.asarray(Image.fromarray(rgb).resize((8, 6), Image.BILINEAR))[:, :, ::-1]
    np.testing.assert_array_equal(imageIO.imageStructToArray(out["rgb.png"]), expected)
    assert out["notes.txt"].mode == -1  # passed through
    with pytest.raises(ValueError, match=r"\[height, width\]"):
        imageIO.createResizeImageUDF((1, 2, 3))


def test_image_input_placeholder_is_a_tf_function_signature_for_tf_image_transformer(spark, mixed):
    import tensorflow as tf

    spec = sparkdl.imageInputPlaceholder(nChannels=3)
    assert spec.shape.as_list() == [None, None, None, 3] and spec.name == "sparkdl_image_input"

    @tf.function(input_signature=[spec])
    def mean_channels(images):
        return {"mean": tf.reduce_mean(images, axis=[1, 2])}

    images = _quiet(ImageSchema.readImages, str(mixed / "rgb.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparkdlCompatWarning)
        t = sparkdl.TFImageTransformer(channelOrder="RGB", inputCol="image", outputCol="mean", graph=mean_channels,
                                       inputTensor="sparkdl_image_input", outputTensor="mean")
        got = np.asarray(t.transform(images).first()["mean"])
    rgb = np.asarray(Image.open(mixed / "rgb.png"), np.float32)
    np.testing.assert_allclose(got, rgb.mean(axis=(0, 1)), rtol=1e-5)


# Every public name of sparkdl 1.5 (sparkdl/__init__.py's __all__, sparkdl.image.imageIO's __all__ and the
# struct helpers, sparkdl.udf's registerKerasImageUDF) and of Spark 2.4's pyspark.ml.image.
SPARKDL_15 = ["TFImageTransformer", "TFInputGraph", "TFTransformer", "DeepImagePredictor", "DeepImageFeaturizer",
              "KerasImageFileTransformer", "KerasTransformer", "imageInputPlaceholder", "KerasImageFileEstimator",
              "HorovodRunner", "registerKerasImageUDF"]
IMAGE_IO = ["createResizeImageUDF", "PIL_decode", "readImagesWithCustomFn", "PIL_decode_and_resize",
            "imageStructToArray", "imageArrayToStruct", "imageStructToPIL"]
IMAGE_SCHEMA = ["imageSchema", "columnSchema", "ocvTypes", "imageFields", "undefinedImageType", "toNDArray", "toImage",
                "readImages"]


def test_every_public_name_is_here_or_listed_absent_in_the_migration_guide():
    readme = (ROOT / "docs" / "sparkdl-migration.md").read_text()
    absent = re.search(r"Deliberately absent:(.*?)\n\n", readme, re.S)
    assert absent, "docs/sparkdl-migration.md must list the deliberately absent names"
    missing = [n for n in SPARKDL_15 if not hasattr(sparkdl, n) and f"`{n}`" not in absent.group(1)]
    missing += [n for n in IMAGE_IO if not (hasattr(imageIO, n) and hasattr(sparkdl, n))]
    missing += [n for n in IMAGE_SCHEMA if not hasattr(ImageSchema, n)]
    assert not missing, f"neither importable from sparkvision.compat nor listed as absent in the guide: {missing}"
    for name in SPARKDL_15 + IMAGE_IO + ["ImageSchema"]:  # the guide's table names each one
        assert f"`{name}`" in readme, name


_FEATURIZE = """
import sys, warnings
warnings.simplefilter("ignore")
from pyspark.sql import SparkSession
from sparkvision.compat.image import ImageSchema
from sparkvision.compat import sparkdl
spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", "512m")
         .config("spark.ui.enabled", "false").getOrCreate())
mode, folder, out = sys.argv[1:4]
if mode == "structs":
    images = ImageSchema.readImages(folder, recursive=True, dropImageFailures=True)
else:  # Spark's own image source, the reference
    images = spark.read.format("image").option("dropInvalid", True).option("recursiveFileLookup", True).load(folder)
featurizer = sparkdl.DeepImageFeaturizer(inputCol="image", outputCol="features", modelName="efficientnet_lite0")
featurizer.transform(images).select("features").write.mode("overwrite").parquet(out)
decoded = None
if mode == "structs":  # sparkdl's readImages too: every struct decoded, its bytes counted in the executors
    decoded = sparkdl.readImages(folder).selectExpr("count(*) AS n", "sum(length(image.data)) AS size").first()
print("ROWS", spark.read.parquet(out).count(), *(decoded or ()))
"""


def _peak_rss(mode: str, folder, out) -> tuple[dict, list[str]]:
    import os
    import subprocess
    import sys
    import threading

    procs = pytest.importorskip("bench.procs", reason="bench/ is not in this checkout (it is not in the wheel)")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen([sys.executable, "-c", _FEATURIZE, mode, str(folder), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop, tree = threading.Event(), procs.TreeSample()
    sampler = threading.Thread(target=procs.sample_tree, args=(proc.pid, stop, 0.05, tree))
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        stop.set()
        sampler.join()
    assert proc.returncode == 0, stderr[-3000:]
    gib = {kind: b / 2**30 for kind, b in tree.peak_by_kind.items()}
    gib["workers"] = gib.get("python_worker", 0) + gib.get("python_daemon", 0)
    gib["total"] = tree.peak_bytes / 2**30
    return gib, next(line for line in stdout.splitlines() if line.startswith("ROWS")).split()


@pytest.mark.slow
@pytest.mark.shared
def test_struct_path_memory_is_bounded_on_the_football_images(football, tmp_path):
    """ImageSchema.readImages -> DeepImageFeaturizer -> Parquet (and sparkdl.readImages), in a fresh process with a
    512 MB driver heap, against the featurizer fed by Spark's own image source: no multi-GB JVM from structs."""
    ours, rows = _peak_rss("structs", football, tmp_path / "ours")
    assert rows[1:3] == ["60", "60"] and int(rows[3]) > 0
    spark_source, rows = _peak_rss("spark", football, tmp_path / "spark")
    assert rows[1] == "60"
    print("struct path on the 60 football images, peak RSS GiB, ImageSchema.readImages / Spark's image source: "
          + ", ".join(f"{k} {ours[k]:.2f} / {spark_source[k]:.2f}" for k in ("jvm", "workers", "total")))
    assert ours["jvm"] < 1.0 and ours["jvm"] < spark_source["jvm"] + 0.25
    assert ours["workers"] < 2.5 and ours["total"] < 3.5
