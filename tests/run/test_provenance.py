"""Stage provenance (sparkvision.run.provenance): fingerprints that stay the same for the same inputs and
change with any of them, and stale or interrupted outputs refused naming the stage to run again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sparkvision.errors import StaleOutput
from sparkvision.run import provenance, storage
from sparkvision.run.layout import RunLayout

PARTS = ({"images": "/data/x", "max_pixels": 10**6, "extensions": ["jpg", "png"]}, "efficientnet_lite0", "ab" * 32, 0.2)


def test_a_fingerprint_is_stable_across_calls_key_order_and_processes():
    fp = provenance.fingerprint(*PARTS)
    assert provenance.fingerprint(*PARTS) == fp
    reordered = dict(reversed(list(PARTS[0].items())))
    assert provenance.fingerprint(reordered, *PARTS[1:]) == fp
    code = ("import json, sys; from sparkvision.run.provenance import fingerprint; "
            "print(fingerprint(*json.loads(sys.argv[1])))")
    other = subprocess.run([sys.executable, "-c", code, json.dumps(PARTS)], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == fp  # another process (another hash seed) computes the same
    assert len(fp) == 32 and int(fp, 16) >= 0


@pytest.mark.parametrize("change", [
    lambda p: ({**p[0], "max_pixels": p[0]["max_pixels"] + 1}, *p[1:]),
    lambda p: ({**p[0], "extensions": list(reversed(p[0]["extensions"]))}, *p[1:]),
    lambda p: ({**p[0], "manifest": None}, *p[1:]),
    lambda p: (p[0], "efficientnet_lite1", *p[2:]),
    lambda p: (*p[:2], "cd" * 32, p[3]),
    lambda p: (*p[:3], "0.2"),
    lambda p: p[:3],
    lambda p: (*p, None),
], ids=["value", "list order", "new key", "model", "weights", "type", "one part fewer", "one part more"])
def test_a_fingerprint_changes_with_any_input(change):
    assert provenance.fingerprint(*change(PARTS)) != provenance.fingerprint(*PARTS)


def test_marker_names_the_stage_and_its_fingerprint():
    fp = provenance.fingerprint("x")
    assert provenance.marker("featurize", fp, model="m") == {"stage": "featurize", "fingerprint": fp, "model": "m"}


# ---- a run's outputs, as the stages leave them ---------------------------------------------------------------

def _stage(lay: RunLayout, stage: str, fp: str, folders: tuple[str, ...], inputs: dict | None = None) -> None:
    """What a stage leaves: each data folder with its marker, then its record (written last)."""
    for key in folders:
        storage.write_marker(getattr(lay, key), provenance.marker(stage, fp))
    storage.write_json(lay.record(stage), {"fingerprint": fp, **({"inputs": inputs} if inputs else {})})


@pytest.fixture
def run(tmp_path) -> RunLayout:
    """load -> featurize -> train, each made from the one before."""
    lay = RunLayout(str(tmp_path / "my runs #2"))
    load, featurize, train = (provenance.fingerprint(stage) for stage in ("load", "featurize", "train"))
    _stage(lay, "load", load, ("images",))
    _stage(lay, "featurize", featurize, ("features", "featurizer"), {"load": load})
    _stage(lay, "train", train, ("model", "split"), {"featurize": featurize})
    return lay


def test_current_outputs_pass_and_give_the_record_read(run):
    assert provenance.check_inputs(run, "featurize") == storage.read_json(run.load)
    assert provenance.check_inputs(run, "train") == storage.read_json(run.featurize)
    assert provenance.check_inputs(run, "evaluate") == storage.read_json(run.train)


def test_outputs_made_from_an_earlier_upstream_name_the_stage_to_rerun(run):
    _stage(run, "load", provenance.fingerprint("load", "new images"), ("images",))  # load ran again
    with pytest.raises(StaleOutput) as e:
        provenance.check_inputs(run, "train")
    assert "'sparkvision featurize' again" in str(e.value) and run.featurize in str(e.value)
    assert provenance.check_inputs(run, "featurize") == storage.read_json(run.load)  # load itself is current


@pytest.mark.parametrize("stage, folder, reader", [
    ("load", "images", "featurize"), ("featurize", "features", "train"), ("featurize", "featurizer", "train"),
    ("train", "model", "evaluate"), ("train", "split", "evaluate"),
])
def test_a_folder_an_interrupted_stage_left_names_that_stage(run, stage, folder, reader):
    path = getattr(run, folder)
    storage.write_marker(path, provenance.marker(stage, provenance.fingerprint("an earlier", stage)))
    with pytest.raises(StaleOutput) as e:
        provenance.check_inputs(run, reader)
    assert f"'sparkvision {stage}' again" in str(e.value) and path in str(e.value)


def test_a_missing_output_names_the_stage_that_makes_it(run):
    storage.delete(run.features)
    with pytest.raises(FileNotFoundError) as e:
        provenance.check_inputs(run, "train")
    assert "'sparkvision featurize' again" in str(e.value) and run.features in str(e.value)
    storage.delete(run.train)
    with pytest.raises(FileNotFoundError) as e:
        provenance.check_inputs(run, "evaluate")
    assert "'sparkvision train' first" in str(e.value) and run.train in str(e.value)
