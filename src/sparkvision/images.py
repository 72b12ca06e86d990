"""Decode image bytes with Pillow into RGB, the same way for validation, featurizing and reference Keras.

``decode_rgb`` is the single decode path: EXIF orientation applied, any mode (L, P, RGBA, CMYK,
16-bit, float) turned into 8-bit RGB, alpha composited onto white. ``resize_for_model`` matches
``keras.utils.load_img(path, target_size=(s, s), interpolation="bilinear")`` for plain RGB files.
Failures raise :class:`ImageRejected` with a reason meant for the rejected-files report.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
RESAMPLE = Image.BILINEAR


class ImageRejected(ValueError):
    """An input file that cannot be used; ``str(exc)`` is the reason."""


def _allow_pixels(max_pixels: int) -> None:
    # Our own limit is checked explicitly; only raise Pillow's when the user allows more.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _is_deep_gray(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _deep_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float gray -> 8-bit ``L``, scaled (not truncated to its low byte)."""
    mode = img.mode
    arr = np.asarray(img, dtype=np.float64)
    if mode == "F":
        peak = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        scaled = arr / peak * 255.0
    else:
        scaled = arr / 257.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else arr
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; high bit depths are scaled, transparency goes onto white."""
    mode = img.mode
    if _is_deep_gray(mode):
        img, mode = _deep_to_l(img), "L"
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


@contextmanager
def _reasons(max_pixels: int):
    """Pillow's exceptions -> :class:`ImageRejected` with the reason the rejected-files report shows."""
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"too many pixels (decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image: Pillow cannot identify the file format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageRejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    # MemoryError is not caught: running out of memory says nothing about the file. It fails the task,
    # which Spark retries (on another executor, or once memory is free) instead of rejecting a good image.


def _open(data: bytes | None, max_pixels: int) -> Image.Image:
    """The image's header read (no pixels decoded yet), its size checked against ``max_pixels``."""
    if data is None or len(data) == 0:
        raise ImageRejected("empty file (0 bytes)")
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(f"too many pixels: {width}x{height} = {width * height:,} > max_pixels {max_pixels:,}")
    return img


def decode_rgb(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode encoded bytes fully into an upright RGB image, or raise :class:`ImageRejected`.

    ``draft`` lets a JPEG decode at a reduced scale in the DCT domain (1/2, 1/4 or 1/8), the largest
    that is still at least ``draft`` in both dimensions: every byte is still decoded.
    """
    with _reasons(max_pixels):
        img = _open(data, max_pixels)
        if draft and img.format == "JPEG":
            img.draft("RGB", draft)
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy when upright already
        return to_rgb(img)


def inspect_header(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int | None, int | None, str | None]:
    """Like :func:`inspect` from the header alone (format, size, orientation; no pixels decoded): what
    ``data.validate: header`` checks at load. A file whose pixels are corrupt or truncated passes here
    and is rejected by the featurizer's decode, with the same reason."""
    try:
        with _reasons(max_pixels):
            with _open(data, max_pixels) as img:
                w, h = img.size
                if _orientation_swaps_axes(img):
                    w, h = h, w
                return w, h, None
    except ImageRejected as exc:
        return None, None, str(exc)


def inspect(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int | None, int | None, str | None]:
    """``(width, height, None)`` for a usable image (upright size), else ``(None, None, reason)``."""
    try:
        img = decode_rgb(data, max_pixels, draft=(256, 256))
    except ImageRejected as exc:
        return None, None, str(exc)
    # draft may have scaled the JPEG down: report the original, upright size.
    with Image.open(io.BytesIO(data)) as original:
        w, h = original.size
        if _orientation_swaps_axes(original):
            w, h = h, w
    del img
    return w, h, None


def _orientation_swaps_axes(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: exif_transpose ignores it too
        return False


def center_crop(img: Image.Image, fraction: float) -> Image.Image:
    """Square crop of ``fraction`` x the short side, centred (TF's eval crop)."""
    w, h = img.size
    side = max(1, int(fraction * min(w, h)))
    left, top = (w - side + 1) // 2, (h - side + 1) // 2
    return img.crop((left, top, left + side, top + side))


def resize_for_model(img: Image.Image, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """RGB image -> ``(size, size, 3)`` uint8 array; bilinear like ``keras.utils.load_img``.

    ``crop_fraction < 1`` first takes the model's square centre crop (see the model registry).
    """
    if crop_fraction < 1.0:
        img = center_crop(img, crop_fraction)
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def decode_for_model(data: bytes, size: int, crop_fraction: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                     draft: bool = False) -> np.ndarray:
    """Encoded bytes -> the model's ``(size, size, 3)`` uint8 input.

    ``draft`` (``featurize.draft``, opt-in): a JPEG larger than twice what the model needs is decoded at a
    reduced scale first, never below what the crop and resize need (no upsampling), so a 12 MP photo
    costs a fraction of its full decode. Pixels then differ slightly from ``keras.utils.load_img``'s.
    """
    need = None
    if draft:
        side = math.ceil(size / crop_fraction)
        need = (side, side)
    return resize_for_model(decode_rgb(data, max_pixels, draft=need), size, crop_fraction)


# Spark's image struct (pyspark.ml.image.ImageSchema, and sparkdl's readImages): 8-bit pixels in
# OpenCV order (BGR / BGRA / gray), row-major, with the OpenCV type code in ``mode``.
OCV_TYPES = {1: 0, 3: 16, 4: 24}  # channels -> CV_8UC1, CV_8UC3, CV_8UC4


def from_image_struct(height: int, width: int, n_channels: int, mode: int, data: bytes | None) -> Image.Image:
    """Spark image-struct pixels -> upright RGB image (alpha onto white, like :func:`to_rgb`)."""
    if data is None or height is None or width is None:
        raise ImageRejected("image struct is null (the file could not be read)")
    if OCV_TYPES.get(n_channels) != mode:
        raise ImageRejected(f"image struct mode {mode} with {n_channels} channels: only 8-bit gray, BGR and BGRA are supported")
    if height <= 0 or width <= 0 or len(data) != height * width * n_channels:
        raise ImageRejected(f"image struct of {height}x{width}x{n_channels} holds {len(data)} bytes")
    # Pillow unpacks BGR(A) itself: one pass in C, no NumPy copies.
    if n_channels == 1:
        return Image.frombuffer("L", (width, height), data, "raw", "L", 0, 1).convert("RGB")
    if n_channels == 3:
        return Image.frombuffer("RGB", (width, height), data, "raw", "BGR", 0, 1)
    return to_rgb(Image.frombuffer("RGBA", (width, height), data, "raw", "BGRA", 0, 1))


def bgr_array_to_struct(arr: np.ndarray, origin: str = "") -> dict:
    """``(height, width[, channels])`` uint8 array in OpenCV order -> Spark image struct (a dict)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"image struct: 8-bit arrays only, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels not in OCV_TYPES:
        raise ValueError(f"image struct: 1, 3 or 4 channels, got {channels}")
    return {"origin": origin, "height": arr.shape[0], "width": arr.shape[1], "nChannels": channels,
            "mode": OCV_TYPES[channels], "data": np.ascontiguousarray(arr).tobytes()}


def decode_opencv_layout(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> ``(height, width, channels)`` uint8 pixels laid out as Spark's ``image`` source lays
    them out (``ImageSchema``): gray images 1 channel, images with transparency BGRA, the rest BGR, stored
    as the file stores them (no EXIF rotation: Java's ImageIO, which Spark decodes with, reads none).

    Unlike Spark's decoder, a truncated or corrupt file raises :class:`ImageRejected` (Spark returns
    its pixels, partly grey), and 16-bit gray is scaled to 8 bits (Spark keeps the low byte)."""
    with _reasons(max_pixels):
        img = _open(data, max_pixels)
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
        mode = img.mode
        if _is_deep_gray(mode):
            return np.asarray(_deep_to_l(img))[:, :, None]
        if mode in ("1", "L", "LA", "La"):  # Spark: a gray colour space is 1 channel, its alpha dropped
            return np.asarray(img.getchannel(0) if mode in ("LA", "La") else img.convert("L"))[:, :, None]
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
            return np.asarray(img.convert("RGBA"))[:, :, [2, 1, 0, 3]]
        return np.asarray(img.convert("RGB"))[:, :, ::-1]


def to_image_struct(img: Image.Image, origin: str = "") -> dict:
    """RGB image -> Spark image struct (BGR bytes, CV_8UC3)."""
    return bgr_array_to_struct(np.asarray(to_rgb(img), dtype=np.uint8)[:, :, ::-1], origin)
