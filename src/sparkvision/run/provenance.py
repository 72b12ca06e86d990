"""Stage provenance: each stage output records a fingerprint of its inputs, and the next stage refuses a
mismatch, saying which stage to re-run.

A stage's fingerprint hashes what its output depends on: ``load`` the listing (every file's id, size and
modification time) and the data settings; ``featurize`` load's fingerprint, the model name, the weights'
sha256 and the decoding settings; ``train`` featurize's fingerprint and the split and training settings.
The stage writes it into its record (``load.json``, ``featurize.json``, ``train.json``) and into a marker
inside each data folder it writes (``images.parquet``, ``features.parquet``, ``featurizer/``, ``model/``,
``split.parquet``). The record is written last, after the folders were swapped in, so a stage that failed
halfway leaves folders whose markers disagree with the record, and the next stage says so.
"""

from __future__ import annotations

from sparkvision.errors import StaleOutput
import hashlib
import json

from sparkvision.run import storage
from sparkvision.run.layout import RunLayout


def fingerprint(*parts) -> str:
    """sha256 (hex, first 16 bytes) of the JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def marker(stage: str, fp: str, **extra) -> dict:
    return {"stage": stage, "fingerprint": fp, **extra}


# What each stage's output folders are, and which stage writes them.
_FOLDERS = {
    "load": ("images",),
    "featurize": ("features", "featurizer"),
    "train": ("model", "split"),
}
_UPSTREAM = {"featurize": "load", "train": "featurize", "evaluate": "train"}


def record(layout: RunLayout, stage: str) -> dict:
    path = layout.record(stage)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: run 'sparkvision {stage}' first (same --output)")
    return storage.read_json(path)


def check_stage(layout: RunLayout, stage: str) -> dict:
    """The record of ``stage``'s output after checking its folders carry its fingerprint; returns the record."""
    rec = record(layout, stage)
    fp = rec.get("fingerprint")
    for key in _FOLDERS[stage]:
        folder = getattr(layout, key)
        if not storage.exists(folder):
            raise FileNotFoundError(f"{folder} not found: run 'sparkvision {stage}' again (same --output)")
        found = storage.read_marker(folder)
        if found is None or found.get("fingerprint") != fp:
            raise StaleOutput(
                f"{folder} does not belong to {layout.record(stage)} (an earlier or interrupted "
                f"'sparkvision {stage}' left it): run 'sparkvision {stage}' again (same --output)")
    return rec


def check_inputs(layout: RunLayout, stage: str) -> dict:
    """Check the output ``stage`` reads (its upstream stage's) and that it is current; returns that record.

    Current means: it was made from what the stage before it holds now (re-running ``load`` on new images
    makes ``features.parquet`` stale even if its widths still match).
    """
    upstream = _UPSTREAM[stage]
    rec = check_stage(layout, upstream)
    before = _UPSTREAM.get(upstream)
    if before is not None and storage.exists(layout.record(before)):
        current = record(layout, before).get("fingerprint")
        used = rec.get("inputs", {}).get(before)
        if used != current:
            raise StaleOutput(
                f"{layout.record(upstream)} was made from an earlier '{before}' output than the one in "
                f"{layout.out} now: run 'sparkvision {upstream}' again (then the stages after it)")
    return rec
