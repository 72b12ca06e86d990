import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from badfiles import DECODE_ONLY, MAX_FILE_MB, count_entries, make_bad_input_set
from sparkvision.settings import DataSettings
from sparkvision.stages import load as loader


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad input")
    return root, make_bad_input_set(root, tmp_path_factory.mktemp("elsewhere"))


@pytest.fixture(scope="module")
def bad_loaded(spark, bad_set):
    """The bad set loaded with every image fully decoded (data.validate: full): every reason at load."""
    root, _ = bad_set
    return loader.load_images(spark, DataSettings(images=str(root), max_file_mb=MAX_FILE_MB, validate="full"))


def test_header_validation_leaves_only_pixel_errors_to_featurize(spark, bad_set, bad_loaded):
    """The default: load reads headers only. It rejects everything the full decode rejects, except the
    files whose header is fine and pixels are not (featurize rejects those; test_pipeline)."""
    root, expected = bad_set
    header = loader.load_images(spark, DataSettings(images=str(root), max_file_mb=MAX_FILE_MB))
    full = {r.image_id: r.reason for r in bad_loaded.rejected.collect()}
    reasons = {r.image_id: r.reason for r in header.rejected.collect()}
    assert set(full) - set(reasons) == set(DECODE_ONLY)
    assert {i: reasons[i] for i in reasons} == {i: full[i] for i in reasons}  # same reasons, same words
    accepted = {r.image_id: (r.width, r.height) for r in header.images.select("image_id", "width", "height").collect()}
    full_sizes = {r.image_id: (r.width, r.height) for r in bad_loaded.images.select("image_id", "width", "height").collect()}
    assert set(accepted) == set(full_sizes) | set(DECODE_ONLY)
    assert {i: accepted[i] for i in full_sizes} == full_sizes  # upright sizes from the header alone
    assert header.accepted + header.n_rejected == header.discovered == len(expected)


def test_corpus_has_at_least_30_kinds(bad_set):
    _, expected = bad_set
    assert len(expected) >= 45 and len({v for v in expected.values()}) >= 15


def test_nothing_is_lost(bad_loaded, bad_set):
    root, expected = bad_set
    r = bad_loaded
    on_disk = count_entries(root)  # counted by find(1), not by sparkvision's listing
    assert r.discovered == on_disk == len(expected)
    assert r.accepted + r.n_rejected == on_disk
    ids = [row.image_id for row in r.images.select("image_id").union(r.rejected.select("image_id")).collect()]
    assert sorted(ids) == sorted(expected)  # each file exactly once


def test_accepted_and_rejected_with_reasons(bad_loaded, bad_set):
    _, expected = bad_set
    accepted = {row.image_id for row in bad_loaded.images.select("image_id").collect()}
    assert accepted == {k for k, v in expected.items() if v is None}
    reasons = {row.image_id: row.reason for row in bad_loaded.rejected.collect()}
    wrong = {i: reasons[i] for i, needle in expected.items() if needle is not None and needle not in reasons[i]}
    assert not wrong


def test_system_folders_are_never_classes(bad_loaded):
    assert bad_loaded.classes == ["birds", "cats", "dogs", "robins"]
    labels = {r.image_id: r.label for r in bad_loaded.rejected.collect()}
    assert labels["__MACOSX/cats/._good1.jpg"] is None and labels[".git/HEAD"] is None
    assert labels["cats/.ipynb_checkpoints/good1-checkpoint.jpg"] == "cats"


def test_macosx_folder_alone_does_not_abort_a_load(spark, tmp_path):
    from sparkvision.run.sample_data import make_digits

    make_digits(str(tmp_path), per_class=2, digits=(1, 2), size=16)
    (tmp_path / "__MACOSX" / "1").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "1" / "._1_000.png").write_bytes(b"\x00\x05\x16\x07")
    r = loader.load_images(spark, DataSettings(images=str(tmp_path)))
    assert r.classes == ["1", "2"] and (r.accepted, r.n_rejected) == (4, 1)


def test_file_vanishing_between_listing_and_reading_is_a_rejected_row(spark, tmp_path, monkeypatch):
    from sparkvision.run import listing
    from sparkvision.run.sample_data import make_digits

    make_digits(str(tmp_path), per_class=3, digits=(1, 2), size=16)
    real_walk = listing.walk

    def walk_then_delete(root):
        entries = real_walk(root)
        (tmp_path / "1" / "1_000.png").unlink()  # gone after the listing, before any task reads it
        return entries

    monkeypatch.setattr(listing, "walk", walk_then_delete)
    r = loader.load_images(spark, DataSettings(images=str(tmp_path)))
    assert (r.discovered, r.accepted, r.n_rejected) == (6, 5, 1)
    row = r.rejected.first()
    assert row.image_id == "1/1_000.png" and "vanished after listing" in row.reason


def test_memory_error_while_decoding_is_not_a_corrupt_image(monkeypatch):
    from PIL import Image

    from sparkvision.run import images as imglib

    def no_memory(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(Image, "open", no_memory)
    with pytest.raises(MemoryError):
        imglib.decode_rgb(b"\xff\xd8\xff not really a jpeg")


def test_labels_and_indices_follow_sorted_class_names(spark, bad_loaded):
    got = bad_loaded.images.select("image_id", "label", "label_index").filter(
        F.col("image_id").isin("cats/good1.jpg", "dogs/good3.jpg")
    )
    want = spark.createDataFrame(
        [("cats/good1.jpg", "cats", 1), ("dogs/good3.jpg", "dogs", 2)], "image_id string, label string, label_index int"
    )
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)
    assert loader.classes_of(bad_loaded.images) == ["birds", "cats", "dogs", "robins"]


def test_exif_rotated_size_is_upright(bad_loaded):
    row = bad_loaded.images.filter(F.col("image_id") == "cats/exif_rotated.jpg").first()
    assert (row.width, row.height) == (20, 40)


def test_oversized_file_is_rejected_from_the_listing(spark, bad_set):
    root, _ = bad_set
    r = loader.load_images(spark, DataSettings(images=str(root), max_file_mb=0.01))
    reasons = {row.image_id: row.reason for row in r.rejected.collect()}
    assert "file too large" in reasons["dogs/bomb.png"]
    assert r.accepted + r.n_rejected == r.discovered


def test_manifest(spark, bad_set, tmp_path):
    root, _ = bad_set
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n"
        f"{root}/cats/good1.jpg,tabby\n"
        f"{root}/cats/good2.png,tabby\n"
        f"{root}/dogs/good3.jpg,hound\n"
        f"{root}/dogs/truncated.jpg,hound\n"
        f"{root}/dogs/good3.jpg,hound\n",
        encoding="utf-8",
    )
    r = loader.load_images(spark, DataSettings(manifest=str(manifest), validate="full"))
    assert (r.discovered, r.accepted, r.n_rejected) == (5, 3, 2)
    assert r.classes == ["hound", "tabby"]
    reasons = sorted(row.reason for row in r.rejected.collect())
    assert "truncated" in reasons[0] and reasons[1] == "duplicate of manifest row 4"


def test_manifest_relative_paths_and_missing_file_error_names_row(spark, bad_set, tmp_path):
    root, _ = bad_set
    manifest = root / "m.csv"
    manifest.write_text("path,label\ncats/good1.jpg,a\ndogs/missing.jpg,b\n", encoding="utf-8")
    try:
        with pytest.raises(loader.LoadError, match=r"row 3: dogs/missing.jpg"):
            loader.load_images(spark, DataSettings(manifest=str(manifest)))
    finally:
        manifest.unlink()


def test_manifest_without_label_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,class\na.jpg,x\n")
    with pytest.raises(loader.LoadError, match="missing column"):
        loader.read_manifest(str(m))


def test_missing_path(spark, tmp_path):
    with pytest.raises(loader.LoadError, match="does not exist"):
        loader.load_images(spark, DataSettings(images=str(tmp_path / "nope")))


def test_fewer_than_two_classes(spark, tmp_path):
    from sparkvision.run.sample_data import make_digits

    make_digits(str(tmp_path), per_class=2, digits=(3,), size=16)
    with pytest.raises(loader.LoadError, match="at least 2 classes"):
        loader.load_images(spark, DataSettings(images=str(tmp_path)))


def test_class_without_valid_image(spark, tmp_path):
    from sparkvision.run.sample_data import make_digits

    make_digits(str(tmp_path), per_class=2, digits=(1, 2), size=16)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(loader.LoadError, match=r"'broken' have no valid image.*not an image"):
        loader.load_images(spark, DataSettings(images=str(tmp_path)))


def test_unreadable_files_and_folders_are_rejected_rows_on_any_host(tmp_path, monkeypatch):
    """As root, permissions do not stop a read, so the failures are simulated where they happen: the
    listing's scandir and the read task's open (tests/badfiles.py covers the real thing as a normal user)."""
    import os

    from sparkvision.run import listing

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"\xff\xd8")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("/b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    entries = listing.walk(str(tmp_path))
    assert [(e.image_id, e.problem) for e in entries] == [("b/", "folder not readable: Permission denied")]
    assert listing.label_of("b/") is None  # a folder row is never a class

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(loader, "read_file", denied)
    assert loader.read_and_check("file:/x.jpg", 100, 100) == (None, None, None, "not readable: permission denied")


def test_memory_error_in_a_read_task_fails_the_task(monkeypatch):
    from sparkvision.run import images as imglib

    def no_memory(data, max_pixels):
        raise MemoryError("simulated")

    monkeypatch.setattr(loader, "read_file", lambda path: b"\xff\xd8\xff")
    monkeypatch.setattr(imglib, "inspect", no_memory)
    monkeypatch.setattr(imglib, "inspect_header", no_memory)
    for validate in ("header", "full"):
        with pytest.raises(MemoryError):
            loader.read_and_check("file:/x.jpg", 100, 100, validate)
