"""The 1000 ImageNet-1k classes, offline: ``(wnid, name)`` in Keras' class order (``imagenet_classes.json``,
written once by ``tools/make_imagenet_classes.py`` from darknet's lists), and sparkdl-style decoding."""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np


@functools.cache
def classes() -> tuple[tuple[str, str], ...]:
    """``(wnid, name)`` for class index 0..999."""
    data = json.loads(resources.files(__package__).joinpath("imagenet_classes.json").read_text())
    if len(data) != 1000:
        raise RuntimeError(f"imagenet_classes.json holds {len(data)} classes, expected 1000")
    return tuple((wnid, name) for wnid, name in data)


def decode(probabilities, top: int) -> list[tuple[str, str, float]]:
    """The ``top`` most probable classes of one 1000-way vector as ``(wnid, name, probability)``, most
    probable first (``keras.applications.imagenet_utils.decode_predictions`` for one row, offline)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (1000,):
        raise ValueError(f"expected 1000 ImageNet probabilities, got shape {p.shape}")
    names = classes()
    order = np.argsort(-p, kind="stable")[:top]
    return [(names[i][0], names[i][1], float(p[i])) for i in order]
