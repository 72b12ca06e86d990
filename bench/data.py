"""Benchmark images: deterministic, generated, photo-sized JPEGs in class folders.

Each class has its own palette and shape, so a classifier trained on the features has something to
learn (the tuning figures then come from a real fit, not from noise). Same ``n`` and seed, same bytes:
image ``i`` is drawn from its own generator (seed, i), so the 50,000-image set is made by a process
pool over the cores, and its sensor noise is a window of one noise bank per seed (drawing fresh
normal noise per image was most of the cost).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circles", "boxes", "stripes", "dots")
SIZE = (640, 480)  # a typical web photo; decode and resize cost scale with it


VERSION = 2  # bump when the drawing changes: a cached set of another version is not reused
_BANK: dict[int, np.ndarray] = {}


def _noise(seed: int, size=SIZE) -> np.ndarray:
    if seed not in _BANK:
        w, h = size
        _BANK[seed] = np.random.default_rng([seed, 2**31]).normal(0, 12, (h + 64, w + 64, 3)).astype(np.float32)
    return _BANK[seed]


def _draw(kind: str, rng: np.random.Generator, size=SIZE, seed: int = 0) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = {"circles": (200, 60, 40), "boxes": (40, 160, 60), "stripes": (50, 70, 200), "dots": (190, 180, 40)}[kind]
    c0 = np.clip(np.array(base) + rng.integers(-40, 40, 3), 0, 255)
    c1 = rng.integers(0, 256, 3)
    t = (xx * rng.random() + yy * rng.random()) / (w + h)
    arr = c0[None, None, :].astype(np.float32) * (1 - t[..., None]) + c1[None, None, :].astype(np.float32) * t[..., None]
    ox, oy = int(rng.integers(0, 64)), int(rng.integers(0, 64))
    arr += _noise(seed, size)[oy:oy + h, ox:ox + w]
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


def _make(job: tuple[str, int, int]) -> None:
    dest, i, seed = job
    kind = CLASSES[i % len(CLASSES)]
    rng = np.random.default_rng([seed, i])
    _draw(kind, rng, seed=seed).save(Path(dest) / kind / f"{kind}_{i:05d}.jpg", quality=90)


def generated_images(root: str | os.PathLike, n: int, seed: int = 0, workers: int | None = None) -> Path:
    """``root/v<VERSION>-n<n>/<class>/<class>_<i>.jpg``: ``n`` images spread over :data:`CLASSES`; made once."""
    dest = Path(root) / f"v{VERSION}-n{n}"
    done = Path(root) / f"v{VERSION}-n{n}.complete"  # outside the image tree: the loader would list it
    if done.exists():
        return dest
    for kind in CLASSES:
        (dest / kind).mkdir(parents=True, exist_ok=True)
    jobs = [(str(dest), i, seed) for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and n > 50:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make, jobs, chunksize=64):
                pass
    else:
        for job in jobs:
            _make(job)
    done.write_text(f"{n} images, seed {seed}\n")
    return dest


def image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (class sub-folders), sorted."""
    exts = (".jpg", ".jpeg", ".png")
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in exts)
