import io

import numpy as np
import pytest
from PIL import Image

from badfiles import png_bomb
from sparkvision import images as imglib


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
    from sparkvision.listing import file_reason

    def ok(path):
        return file_reason(path, 10, imglib.IMAGE_EXTENSIONS, 100, 1) is None

    assert ok("a/B.JPG") and ok("a/x.Png")
    assert not ok("a/notes.txt") and not ok("a/jpg") and not ok("a.jpg/README")
