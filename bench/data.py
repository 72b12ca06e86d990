"""Benchmark images: deterministic, generated, photo-sized JPEGs in class folders.

Each class has its own palette and shape, so a classifier trained on the features has something to
learn (the tuning figures then come from a real fit, not from noise). Same ``n`` and seed, same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circles", "boxes", "stripes", "dots")
SIZE = (640, 480)  # a typical web photo; decode and resize cost scale with it


def _draw(kind: str, rng: np.random.Generator, size=SIZE) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = {"circles": (200, 60, 40), "boxes": (40, 160, 60), "stripes": (50, 70, 200), "dots": (190, 180, 40)}[kind]
    c0 = np.clip(np.array(base) + rng.integers(-40, 40, 3), 0, 255)
    c1 = rng.integers(0, 256, 3)
    t = (xx * rng.random() + yy * rng.random()) / (w + h)
    arr = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    arr += rng.normal(0, 12, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        s = int(rng.integers(30, 180))
        if kind == "circles":
            d.ellipse([x0, y0, x0 + s, y0 + s], fill=colour())
        elif kind == "boxes":
            d.rectangle([x0, y0, x0 + s, y0 + s // 2], fill=colour())
        elif kind == "stripes":
            d.line([x0, 0, x0 + s, h], fill=colour(), width=int(rng.integers(6, 20)))
        else:
            for _ in range(12):
                px, py = int(rng.integers(0, w)), int(rng.integers(0, h))
                d.ellipse([px, py, px + 10, py + 10], fill=colour())
    return img


def generated_images(root: str | os.PathLike, n: int, seed: int = 0) -> Path:
    """``root/n<n>/<class>/<class>_<i>.jpg``: ``n`` images spread over :data:`CLASSES`; made once."""
    dest = Path(root) / f"n{n}"
    done = Path(root) / f"n{n}.complete"  # outside the image tree: the loader would list it
    if done.exists():
        return dest
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = CLASSES[i % len(CLASSES)]
        folder = dest / kind
        folder.mkdir(parents=True, exist_ok=True)
        _draw(kind, rng).save(folder / f"{kind}_{i:05d}.jpg", quality=90)
    done.write_text(f"{n} images, seed {seed}\n")
    return dest


def image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (class sub-folders), sorted."""
    exts = (".jpg", ".jpeg", ".png")
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in exts)
