"""The built-in, license-clean sample dataset: scikit-learn's handwritten digits as PNG folders.

scikit-learn ships the 1,797 8x8 digits (BSD-3); each is upscaled to ``size`` pixels and written
as ``<dest>/<digit>/<digit>_<n>.png``. Deterministic: same arguments, same files.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image


def make_digits(dest: str, per_class: int = 20, digits: tuple[int, ...] = tuple(range(10)), size: int = 64,
                clean: bool = False) -> str:
    """Write ``per_class`` images of each digit under ``dest`` (one folder per digit); return ``dest``.

    ``clean`` removes what ``dest`` held first (the demo regenerates its set on every run)."""
    from sklearn.datasets import load_digits  # optional

    if clean:
        shutil.rmtree(dest, ignore_errors=True)
    data = load_digits()
    for digit in digits:
        folder = os.path.join(dest, str(digit))
        os.makedirs(folder, exist_ok=True)
        picks = np.flatnonzero(data.target == digit)[:per_class]
        if len(picks) < per_class:
            raise ValueError(f"scikit-learn has only {len(picks)} images of digit {digit}, asked for {per_class}")
        for n, i in enumerate(picks):
            pixels = (data.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            img = Image.fromarray(255 - pixels, "L").resize((size, size), Image.BILINEAR).convert("RGB")
            img.save(os.path.join(folder, f"{digit}_{n:03d}.png"))
    return dest
