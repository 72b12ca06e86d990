"""Decode image bytes with Pillow into RGB, the same way for validation, featurizing and reference Keras.

``decode_rgb`` is the single decode path: EXIF orientation applied, any mode (L, P, RGBA, CMYK,
16-bit, float) turned into 8-bit RGB, alpha composited onto white. ``resize_for_model`` matches
``keras.utils.load_img(path, target_size=(s, s), interpolation="bilinear")`` for plain RGB files.
Failures raise :class:`ImageRejected` with a reason meant for the rejected-files report.

Hostile bytes: every path opens images through :func:`open_image`, which lets Pillow run only the
decoders of :data:`IMAGE_FORMATS` (an EPS or PDF renamed ``.jpg`` never reaches Ghostscript); the pixel
budget is checked from the header before any pixel is decoded, 16-bit and float images are scaled to
8 bits a strip at a time (never a full-size float64 copy), and running out of memory while decoding an
image of known size is a rejected image, not a failed task.
"""

from __future__ import annotations

from sparkvision.errors import ImageRejected
import io
import math
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp")
# Pillow's names for the formats of IMAGE_EXTENSIONS: the only decoders any bytes are handed to.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
# Pillow's JPEG opener returns a camera's multi-picture JPEG as "MPO": still JPEG bytes and decoder.
_SAME_FORMAT = {"MPO": "JPEG"}
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
RESAMPLE = Image.BILINEAR
# Pixels of a 16-bit/float image scaled to 8 bits at a time: a few 8 MB float64 strips, whatever its size.
STRIP_PIXELS = 1 << 20


def _allow_pixels(max_pixels: int) -> None:
    # Our own limit is checked explicitly; only raise Pillow's when the user allows more.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _sniffed_format(prefix: bytes) -> str | None:
    """The Pillow format whose signature ``prefix`` carries, among those we do not accept; only the
    plugins' signature checks run (no header parser, no decoder), so naming a format is harmless."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if name in IMAGE_FORMATS or name in _SAME_FORMAT or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # noqa: BLE001 - a signature check that chokes on these bytes did not match
            continue
    return None


def _unaccepted_reason(data: bytes) -> str:
    accepted = ", ".join(IMAGE_FORMATS)
    found = _sniffed_format(data[:16])
    if found:
        return f"unsupported image format {found} (accepted: {accepted})"
    return f"not an image of an accepted format: Pillow cannot identify it as one of {accepted}"


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy open of ``data`` (the header read, no pixels), restricted to :data:`IMAGE_FORMATS`.

    Every image this project opens goes through here: Pillow otherwise runs whichever decoder the bytes
    ask for (EPS calls Ghostscript), whatever the file's extension. Raises :class:`ImageRejected`
    naming the format when the bytes are an image of another one.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(_unaccepted_reason(data)) from None
    if _SAME_FORMAT.get(img.format, img.format) not in IMAGE_FORMATS:  # a plugin that returned another kind
        img.close()
        raise ImageRejected(f"unsupported image format {img.format} (accepted: {', '.join(IMAGE_FORMATS)})")
    return img


def _is_deep_gray(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _strips(img: Image.Image, dtype=np.float64):
    """``(top, rows)`` of ``img`` a strip of at most :data:`STRIP_PIXELS` at a time (one row at least):
    each strip is its own small copy, so no full-size array of ``dtype`` ever exists."""
    width, height = img.size
    step = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, step):
        yield top, np.asarray(img.crop((0, top, width, min(height, top + step))), dtype=dtype)


def _float_peak(img: Image.Image) -> float:
    """A float image's NaN-ignoring maximum (NaN when every pixel is NaN), a strip at a time."""
    peaks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN strip: its peak is NaN
        for _, strip in _strips(img, np.float32):
            peaks.append(np.nanmax(strip))
        return float(np.nanmax(peaks))


def _deep_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float gray -> 8-bit ``L``, scaled (not truncated to its low byte).

    A strip at a time into a preallocated uint8 array: the same float64 arithmetic per pixel as a
    whole-image conversion (so the same result), without a float64 copy of a large image (8 bytes a
    pixel, several times over in temporaries: gigabytes for an image of a few MB on disk)."""
    mode = img.mode
    width, height = img.size
    divisor, factor = 1.0, None
    if mode == "F":
        peak = 1.0 if width * height and _float_peak(img) <= 1.0 else 255.0
        divisor, factor = peak, 255.0
    elif mode.startswith("I;16") or (width * height and img.getextrema()[1] > 255):
        divisor = 257.0
    out = np.empty((height, width), np.uint8)
    for top, strip in _strips(img):
        if divisor != 1.0:
            strip /= divisor
        if factor is not None:
            strip *= factor
        out[top:top + strip.shape[0]] = np.clip(np.rint(np.nan_to_num(strip, copy=False)), 0, 255)
    return Image.fromarray(out, "L")


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


@dataclass
class _Header:
    """What the header said of the image being decoded: the memory-failure reason names it."""

    size: tuple[int, int] | None = None
    mode: str | None = None


@contextmanager
def _reasons(max_pixels: int):
    """Pillow's exceptions -> :class:`ImageRejected` with the reason the rejected-files report shows.

    Yields a :class:`_Header` that :func:`_open` fills in. A ``MemoryError`` once the header is read is
    this image's: decoding ``width x height`` pixels of its mode needs more memory than the worker has,
    and a retry would fail the same way until the job fails, so it is a rejected image with the size that
    did it. One before the header (nothing of this file allocated yet) propagates: Spark retries the task.
    """
    _allow_pixels(max_pixels)
    header = _Header()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield header
    except ImageRejected:
        raise
    except MemoryError:
        if header.size is None:
            raise
        width, height = header.size
        raise ImageRejected(f"not enough memory to decode {width}x{height} mode {header.mode}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"too many pixels (decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image: Pillow cannot identify the file format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageRejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def _open(data: bytes | None, max_pixels: int, header: _Header | None = None) -> Image.Image:
    """The image's header read (no pixels decoded yet), its size checked against ``max_pixels``: the
    budget holds before any decode, draft or widening allocates anything of that size."""
    if data is None or len(data) == 0:
        raise ImageRejected("empty file (0 bytes)")
    img = open_image(data)
    width, height = img.size
    if header is not None:
        header.size, header.mode = img.size, img.mode
    if width * height > max_pixels:
        img.close()
        raise ImageRejected(f"too many pixels: {width}x{height} = {width * height:,} > max_pixels {max_pixels:,}")
    return img


def _load_rgb(img: Image.Image, draft: tuple[int, int] | None) -> Image.Image:
    """An opened image's pixels decoded, turned upright and into RGB (see :func:`decode_rgb`)."""
    if draft and img.format in ("JPEG", "MPO"):
        img.draft("RGB", draft)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # no copy when upright already
    return to_rgb(img)


def decode_rgb(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode encoded bytes fully into an upright RGB image, or raise :class:`ImageRejected`.

    ``draft`` lets a JPEG decode at a reduced scale in the DCT domain (1/2, 1/4 or 1/8), the largest
    that is still at least ``draft`` in both dimensions: every byte is still decoded.
    """
    with _reasons(max_pixels) as header:
        return _load_rgb(_open(data, max_pixels, header), draft)


def inspect_header(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int | None, int | None, str | None]:
    """Like :func:`inspect` from the header alone (format, size, orientation; no pixels decoded): what
    ``data.validate: header`` checks at load. A file whose pixels are corrupt or truncated passes here
    and is rejected by the featurizer's decode, with the same reason."""
    try:
        with _reasons(max_pixels) as header:
            with _open(data, max_pixels, header) as img:
                return (*_upright_size(img, header_only=True), None)
    except ImageRejected as exc:
        return None, None, str(exc)


def inspect(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int | None, int | None, str | None]:
    """``(width, height, None)`` for a usable image (upright size), else ``(None, None, reason)``."""
    try:
        with _reasons(max_pixels) as header:
            img = _open(data, max_pixels, header)
            w, h = _upright_size(img, header_only=True)  # the original size: a draft scales a JPEG down
            rgb = _load_rgb(img, draft=(256, 256))
            if img.format == "PNG":  # never drafted, and its EXIF may follow the pixels: as decoded
                w, h = rgb.size
    except ImageRejected as exc:
        return None, None, str(exc)
    return w, h, None


def _upright_size(img: Image.Image, header_only: bool) -> tuple[int, int]:
    """The image's size once its EXIF orientation is applied. ``header_only``: never decode pixels to
    find the EXIF (Pillow's PNG ``getexif`` decodes the whole image when no eXIf chunk precedes them)."""
    w, h = img.size
    if header_only and img.format == "PNG" and "exif" not in img.info:
        return w, h
    return (h, w) if _orientation_swaps_axes(img) else (w, h)


def _orientation_swaps_axes(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112) in (5, 6, 7, 8)
    except MemoryError:
        raise
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
    The pixel budget is checked on the header's full size, before the draft: the same verdict as load's.
    """
    need = None
    if draft:
        side = math.ceil(size / crop_fraction)
        need = (side, side)
    with _reasons(max_pixels) as header:  # the crop and resize too: a MemoryError there is this image's
        return resize_for_model(_load_rgb(_open(data, max_pixels, header), need), size, crop_fraction)


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
    with _reasons(max_pixels) as header:
        img = _open(data, max_pixels, header)
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
