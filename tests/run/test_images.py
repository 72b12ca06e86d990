import io

import numpy as np
import pytest
from PIL import Image

from badfiles import png_bomb
from sparkvision.run import images as imglib


def _encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_grayscale_becomes_rgb_with_equal_channels():
    img = imglib.decode_rgb(_encode(Image.new("L", (4, 3), 77)))
    assert img.mode == "RGB" and img.size == (4, 3)
    assert np.all(np.asarray(img) == 77)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    out = np.asarray(imglib.decode_rgb(_encode(Image.fromarray(arr))))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(imglib.decode_rgb(_encode(rgba)))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_decodes_to_rgb():
    out = imglib.decode_rgb(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(out)[4, 4]
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.new("RGB", (40, 20), (0, 0, 255)), "JPEG", exif=exif)
    assert imglib.decode_rgb(data).size == (20, 40)
    assert imglib.inspect(data)[:2] == (20, 40)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"plain text, not an image", "not an image"),
        (png_bomb(20000, 20000), "too many pixels"),
    ],
)
def test_rejections_have_reasons(data, reason):
    with pytest.raises(imglib.ImageRejected, match=reason):
        imglib.decode_rgb(data)


def test_truncated_jpeg_is_rejected_even_though_it_has_a_valid_header():
    rng = np.random.default_rng(0)
    whole = _encode(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)), "JPEG")
    w, h, reason = imglib.inspect(whole[: len(whole) // 2])
    assert (w, h) == (None, None) and "truncated" in reason


def test_resize_matches_keras_load_img_bilinear(tmp_path):
    import keras

    rng = np.random.default_rng(1)
    path = tmp_path / "x.jpg"
    Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8)).save(path, quality=95)
    ours = imglib.decode_for_model(path.read_bytes(), 64)
    theirs = np.asarray(keras.utils.load_img(path, target_size=(64, 64), interpolation="bilinear"), dtype=np.uint8)
    assert ours.shape == (64, 64, 3)
    np.testing.assert_array_equal(ours, theirs)  # same pixels, same RGB order


def test_extension_check_is_case_insensitive():
    from sparkvision.run.listing import file_reason

    def ok(path):
        return file_reason(path, 10, imglib.IMAGE_EXTENSIONS, 100, 1) is None

    assert ok("a/B.JPG") and ok("a/x.Png")
    assert not ok("a/notes.txt") and not ok("a/jpg") and not ok("a.jpg/README")


def _deep_to_l_before_issue_24(img):
    """The whole-image float64 conversion that ``_deep_to_l`` replaced: the reference for its results."""
    import warnings

    mode = img.mode
    arr = np.asarray(img, dtype=np.float64)
    if mode == "F":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            peak = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        scaled = arr / peak * 255.0
    else:
        scaled = arr / 257.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else arr
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)


def _deep_images():
    rng = np.random.default_rng(5)
    sixteen = rng.integers(0, 65536, (37, 23), dtype=np.uint16)
    return {
        "16-bit": Image.fromarray(sixteen),
        "16-bit big-endian": Image.frombytes("I;16B", (23, 37), sixteen.astype(">u2").tobytes()),
        "32-bit over 255": Image.fromarray(sixteen.astype(np.int32) * 3, "I"),
        "32-bit within 255, negatives": Image.fromarray(rng.integers(-50, 250, (37, 23), dtype=np.int32), "I"),
        "float 0..1": Image.fromarray(rng.random((37, 23), dtype=np.float32), "F"),
        "float 0..300": Image.fromarray(rng.random((37, 23), dtype=np.float32) * 320 - 20, "F"),
        "float all NaN": Image.fromarray(np.full((5, 6), np.nan, np.float32), "F"),
        "float NaN and infinities": Image.fromarray(np.array([[np.nan, np.inf, -np.inf, 0.5, 0.25]], np.float32), "F"),
    }


@pytest.mark.parametrize("strip_pixels", [imglib.STRIP_PIXELS, 7, 1])
def test_deep_images_scale_as_before_a_strip_at_a_time(strip_pixels, monkeypatch):
    monkeypatch.setattr(imglib, "STRIP_PIXELS", strip_pixels)  # 7 and 1: several strips, one row each
    for name, img in _deep_images().items():
        got = np.asarray(imglib._deep_to_l(img))
        np.testing.assert_array_equal(got, _deep_to_l_before_issue_24(img), err_msg=name)


def test_deep_files_decode_as_before():
    for name, img in _deep_images().items():
        if img.mode == "I;16B":
            continue  # Pillow does not write it
        data = _encode(img, "PNG" if img.mode.startswith("I;16") else "TIFF")
        got = np.asarray(imglib.decode_rgb(data))
        want = _deep_to_l_before_issue_24(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(got[:, :, 0], want, err_msg=name)


def test_header_check_of_a_png_decodes_no_pixels(monkeypatch):
    """Pillow's PNG ``getexif`` decodes the whole image when no eXIf chunk precedes the pixels: the header
    check (data.validate: header) must not ask for it."""
    from PIL import PngImagePlugin

    data = _encode(Image.new("RGB", (40, 20)))

    def no_pixels(self, *a, **k):
        raise AssertionError("pixels decoded by a header check")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_pixels)
    assert imglib.inspect_header(data) == (40, 20, None)


def test_png_orientation_is_applied_in_both_checks():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.new("RGB", (40, 20)), exif=exif)  # Pillow writes eXIf before the pixels
    assert imglib.inspect_header(data) == imglib.inspect(data) == (20, 40, None)
