"""Builds the bad-input test set: what real image folders contain, beside the images.

``make_bad_input_set(root)`` writes it and returns ``{image_id: None | reason substring}``: None for a file
that must be accepted, else a substring of its rejection reason. Load it with ``max_file_mb=1``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MAX_FILE_MB = 1  # the corpus' too-large file is over this

# image_id -> None (must be accepted) or a substring of the rejection reason
EXPECTED = {
    # images, in every form a folder may hold them
    "cats/good1.jpg": None,
    "cats/good2.png": None,
    "cats/gray.png": None,
    "cats/cmyk.jpg": None,
    "cats/rgba.png": None,
    "cats/sixteen_bit.png": None,
    "cats/exif_rotated.jpg": None,
    "cats/upper_case.JPG": None,
    "cats/progressive.jpg": None,
    "cats/bitmap.bmp": None,
    "cats/scan.tiff": None,
    "cats/float.tif": None,
    "cats/photo.webp": None,
    "cats/sub/folder/nested.jpg": None,
    "dogs/good3.jpg": None,
    "dogs/palette.gif": None,
    "dogs/animated.gif": None,
    "dogs/gray_alpha.png": None,
    "dogs/jpeg_named.png": None,
    "dogs/ünïcode dir with spaces/é photo 1.jpg": None,
    "dogs/link_to_cat.jpg": None,                      # a symlink to a good file
    "birds/robin.jpg": None,                           # birds/ is a symlink to a folder elsewhere
    # not images, or not usable
    "dogs/corrupt.jpg": "not an image",
    "dogs/truncated.jpg": "truncated",
    "dogs/bad_crc.png": "corrupt",
    "dogs/empty.jpg": "empty file",
    "dogs/text.jpg": "not an image",
    "dogs/bomb.png": "too many pixels",
    "dogs/big.bmp": "file too large",
    "dogs/notes.txt": "unsupported file extension",
    "dogs/Thumbs.db": "unsupported file extension",
    "stray.jpg": "not inside a class sub-folder",
    "dogs/.hidden.jpg": "hidden file",
    "dogs/_underscore.jpg": "hidden file",
    "dogs/.DS_Store": "hidden file",
    "dogs/upload.jpg._COPYING_": "incomplete copy",
    "dogs/dangling.jpg": "broken symlink",
    "dogs/pipe.jpg": "not a regular file",
    "cats/loop/": "symlink loop",
    "birds/.hidden.jpg": "hidden file",                # inside the symlinked class folder
    "birds/empty.jpg": "empty file",
    "robins/robin.jpg": None,                          # robins/ links to the same folder as birds/: listed
    "robins/.hidden.jpg": "hidden file",               # again, as find -L does (an alias, not a loop)
    "robins/empty.jpg": "empty file",
    "self/": "symlink loop",                           # self -> . at the root: a loop, not a class
    # folders that tools and systems leave beside data: never classes, never fatal
    "__MACOSX/cats/._good1.jpg": "hidden or system folder",
    "__MACOSX/._cats": "hidden or system folder",
    ".ipynb_checkpoints/untitled-checkpoint.jpg": "hidden or system folder",
    "cats/.ipynb_checkpoints/good1-checkpoint.jpg": "hidden or system folder",
    ".git/HEAD": "hidden or system folder",
    ".git/objects/ab/cdef": "hidden or system folder",
    "_temporary/0/part-00000.jpg": "hidden or system folder",
    ".Trash-1000/files/old.jpg": "hidden or system folder",
}
# Headers that read fine over pixels that do not decode: rejected by load with data.validate: full, else by
# featurize's decode (which adds them to rejected.* with the same reason, prefixed "featurize: ").
DECODE_ONLY = ("dogs/truncated.jpg", "dogs/bad_crc.png")
UNREADABLE = "dogs/no_permission.jpg"  # added when not running as root (root reads any file)
UNREADABLE_FOLDER = "locked/"          # likewise: a class folder nobody may list


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


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    return _save(img, "JPEG", quality=90, **kw)


def _files() -> dict[str, bytes]:
    f: dict[str, bytes] = {}
    f["cats/good1.jpg"] = _jpeg_bytes(_rgb(1))
    f["cats/good2.png"] = _save(_rgb(2), "PNG")
    f["cats/gray.png"] = _save(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (32, 1)), "L"), "PNG")
    f["cats/cmyk.jpg"] = _jpeg_bytes(Image.new("CMYK", (40, 30), (0, 255, 255, 0)))
    f["cats/rgba.png"] = _save(Image.new("RGBA", (30, 30), (255, 0, 0, 0)), "PNG")
    f["cats/sixteen_bit.png"] = _save(Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    f["cats/exif_rotated.jpg"] = _jpeg_bytes(_rgb(3, (40, 20)), exif=exif)
    f["cats/upper_case.JPG"] = _jpeg_bytes(_rgb(11))
    f["cats/progressive.jpg"] = _jpeg_bytes(_rgb(12, (64, 48)), progressive=True)
    f["cats/bitmap.bmp"] = _save(_rgb(13), "BMP")
    f["cats/scan.tiff"] = _save(_rgb(14), "TIFF")
    f["cats/float.tif"] = _save(Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20), "F"), "TIFF")
    f["cats/photo.webp"] = _save(_rgb(15), "WEBP")
    f["cats/sub/folder/nested.jpg"] = _jpeg_bytes(_rgb(16))
    f["dogs/good3.jpg"] = _jpeg_bytes(_rgb(4))
    f["dogs/palette.gif"] = _save(_rgb(5).convert("P"), "GIF")
    frames = [_rgb(s).convert("P") for s in (17, 18, 19)]
    f["dogs/animated.gif"] = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    f["dogs/gray_alpha.png"] = _save(Image.new("LA", (20, 20), (128, 100)), "PNG")
    f["dogs/jpeg_named.png"] = _jpeg_bytes(_rgb(20))
    f["dogs/ünïcode dir with spaces/é photo 1.jpg"] = _jpeg_bytes(_rgb(6))
    f["dogs/corrupt.jpg"] = np.random.default_rng(7).integers(0, 255, 4000, dtype=np.uint8).tobytes()
    whole = _jpeg_bytes(_rgb(8, (256, 256)))
    f["dogs/truncated.jpg"] = whole[: len(whole) // 2]
    png = bytearray(_save(_rgb(21), "PNG"))
    png[50] ^= 0xFF  # inside IDAT's data: its CRC no longer matches
    f["dogs/bad_crc.png"] = bytes(png)
    f["dogs/empty.jpg"] = b""
    f["dogs/text.jpg"] = b"this is not a picture, just text saved with a .jpg name\n"
    f["dogs/bomb.png"] = png_bomb()
    f["dogs/big.bmp"] = _save(_rgb(22, (640, 640)), "BMP")  # 1.2 MB > MAX_FILE_MB
    f["dogs/notes.txt"] = b"a stray note\n"
    f["dogs/Thumbs.db"] = b"\xd0\xcf\x11\xe0 windows thumbnail cache"
    f["stray.jpg"] = _jpeg_bytes(_rgb(9))
    f["dogs/.hidden.jpg"] = _jpeg_bytes(_rgb(10))
    f["dogs/_underscore.jpg"] = _jpeg_bytes(_rgb(23))
    f["dogs/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    f["dogs/upload.jpg._COPYING_"] = _jpeg_bytes(_rgb(24))[:100]
    f["__MACOSX/cats/._good1.jpg"] = b"\x00\x05\x16\x07 AppleDouble"
    f["__MACOSX/._cats"] = b"\x00\x05\x16\x07 AppleDouble"
    f[".ipynb_checkpoints/untitled-checkpoint.jpg"] = _jpeg_bytes(_rgb(25))
    f["cats/.ipynb_checkpoints/good1-checkpoint.jpg"] = _jpeg_bytes(_rgb(1))
    f[".git/HEAD"] = b"ref: refs/heads/main\n"
    f[".git/objects/ab/cdef"] = b"x\x01blob"
    f["_temporary/0/part-00000.jpg"] = _jpeg_bytes(_rgb(26))
    f[".Trash-1000/files/old.jpg"] = _jpeg_bytes(_rgb(27))
    return f


def make_bad_input_set(root: Path, elsewhere: Path) -> dict:
    """Write the set under ``root`` (the symlinked class folder's target under ``elsewhere``); return
    what each entry must become."""
    for rel, data in _files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    birds = elsewhere / "birds_real"
    birds.mkdir(parents=True)
    (birds / "robin.jpg").write_bytes(_jpeg_bytes(_rgb(28)))
    (birds / ".hidden.jpg").write_bytes(_jpeg_bytes(_rgb(29)))
    (birds / "empty.jpg").write_bytes(b"")
    os.symlink(birds, root / "birds")
    os.symlink(birds, root / "robins")
    os.symlink(".", root / "self")
    os.symlink("../cats/good1.jpg", root / "dogs" / "link_to_cat.jpg")
    os.symlink(root / "nowhere.jpg", root / "dogs" / "dangling.jpg")
    os.symlink("..", root / "cats" / "loop")  # cats/loop -> the root folder, already listed
    os.mkfifo(root / "dogs" / "pipe.jpg")
    expected = dict(EXPECTED)
    if os.geteuid() != 0:
        path = root / UNREADABLE
        path.write_bytes(_jpeg_bytes(_rgb(30)))
        path.chmod(0)
        expected[UNREADABLE] = "not readable: permission denied"
        locked = root / UNREADABLE_FOLDER
        locked.mkdir()
        (locked / "x.jpg").write_bytes(_jpeg_bytes(_rgb(31)))
        locked.chmod(0)
        expected[UNREADABLE_FOLDER] = "folder not readable"
    return expected


def count_entries(root: Path) -> int:
    """Files on disk, counted without sparkvision's listing: every non-folder that `find -L` reaches (broken
    links, pipes), plus each folder link that `find -L` refuses as a loop."""
    import subprocess

    found = subprocess.run(["find", "-L", str(root), "!", "-type", "d"], capture_output=True, text=True)
    loops = found.stderr.count("File system loop detected")
    unreadable = found.stderr.count("Permission denied")  # a folder find cannot list: one row for it
    return len(found.stdout.splitlines()) + loops + unreadable
