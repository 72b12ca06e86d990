"""Builds the bad-input test set: every file type users actually drop into image folders."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# image_id -> None (must be accepted) or a substring of the rejection reason
EXPECTED = {
    "cats/good1.jpg": None,
    "cats/good2.png": None,
    "cats/gray.png": None,
    "cats/cmyk.jpg": None,
    "cats/rgba.png": None,
    "cats/sixteen_bit.png": None,
    "cats/exif_rotated.jpg": None,
    "dogs/good3.jpg": None,
    "dogs/palette.gif": None,
    "dogs/ünïcode dir with spaces/é photo 1.jpg": None,
    "dogs/corrupt.jpg": "not an image",
    "dogs/truncated.jpg": "truncated",
    "dogs/empty.jpg": "empty file",
    "dogs/text.jpg": "not an image",
    "dogs/bomb.png": "too many pixels",
    "dogs/notes.txt": "unsupported file extension",
    "stray.jpg": "not inside a class sub-folder",
    "dogs/.hidden.jpg": "hidden file",
}


def _rgb(seed: int, size=(48, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of width x height: ~50 KB on disk, 400 megapixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def make_bad_input_set(root: Path) -> dict:
    """Write the set under ``root``; return EXPECTED."""
    files: dict[str, bytes | Image.Image] = {}
    files["cats/good1.jpg"] = _jpeg_bytes(_rgb(1))
    _rgb(2).save(buf := io.BytesIO(), "PNG")
    files["cats/good2.png"] = buf.getvalue()
    gray = Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (32, 1)), "L")
    gray.save(buf := io.BytesIO(), "PNG")
    files["cats/gray.png"] = buf.getvalue()
    files["cats/cmyk.jpg"] = _jpeg_bytes(Image.new("CMYK", (40, 30), (0, 255, 255, 0)))
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    rgba.save(buf := io.BytesIO(), "PNG")
    files["cats/rgba.png"] = buf.getvalue()
    sixteen = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    sixteen.save(buf := io.BytesIO(), "PNG")
    files["cats/sixteen_bit.png"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    files["cats/exif_rotated.jpg"] = _jpeg_bytes(_rgb(3, (40, 20)), exif=exif)
    files["dogs/good3.jpg"] = _jpeg_bytes(_rgb(4))
    _rgb(5).convert("P").save(buf := io.BytesIO(), "GIF")
    files["dogs/palette.gif"] = buf.getvalue()
    files["dogs/ünïcode dir with spaces/é photo 1.jpg"] = _jpeg_bytes(_rgb(6))
    files["dogs/corrupt.jpg"] = np.random.default_rng(7).integers(0, 255, 4000, dtype=np.uint8).tobytes()
    whole = _jpeg_bytes(_rgb(8, (256, 256)))
    files["dogs/truncated.jpg"] = whole[: len(whole) // 2]
    files["dogs/empty.jpg"] = b""
    files["dogs/text.jpg"] = b"this is not a picture, just text saved with a .jpg name\n"
    files["dogs/bomb.png"] = png_bomb()
    files["dogs/notes.txt"] = b"a stray note\n"
    files["stray.jpg"] = _jpeg_bytes(_rgb(9))
    files["dogs/.hidden.jpg"] = _jpeg_bytes(_rgb(10))
    assert set(files) == set(EXPECTED)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return EXPECTED
