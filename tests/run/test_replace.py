"""Swapping an output in (sparkvision.run.storage.replace_with) and repairing a swap a crash interrupted
(recover, clean_leftovers): killed at each step, the target ends up whole, old or new, never missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparkvision.run import faults

from sparkvision.run import storage
from sparkvision.run.layout import RunLayout

# The S3 server and bucket of the storage tests (pytest finds fixtures imported into a module).
from helpers import BUCKET, _keys

OLD = {"part-0": b"old 0", "part-1": b"old 1", "_sparkvision.json": b"{\"fingerprint\": \"old\"}"}
NEW = {"part-0": b"new 0", "_sparkvision.json": b"{\"fingerprint\": \"new\"}"}


def _swap_in_a_child(tmp: str, target: str, fault: str | None) -> int:
    """replace_with in another process, killed with SIGKILL at ``fault``; its exit status."""
    env = {**os.environ, faults.ENV: fault or ""}
    code = "import sys; from sparkvision.run import storage; storage.replace_with(sys.argv[1], sys.argv[2])"
    return subprocess.run([sys.executable, "-c", code, tmp, target], env=env, timeout=120).returncode


def _put(target: str, files: dict[str, bytes], kind: str) -> None:
    if kind == "file":
        storage.write_bytes(target, b"".join(files.values()))
    for name, data in files.items() if kind == "folder" else ():
        storage.write_bytes(storage.join(target, name), data)


def _content(target: Path, kind: str):
    if kind == "file":
        return target.read_bytes()
    return {p.name: p.read_bytes() for p in target.iterdir()}


def _expected(files: dict[str, bytes], kind: str):
    return b"".join(files.values()) if kind == "file" else files


@pytest.mark.parametrize("kind", ["folder", "file"])
@pytest.mark.parametrize("fault, survivor", [("replace:after_aside", OLD), ("replace:after_move", NEW), (None, NEW)])
def test_a_swap_killed_at_any_step_is_recovered_whole(tmp_path, kind, fault, survivor):
    target = tmp_path / ("features.parquet" if kind == "folder" else "load.json")
    _put(str(target), OLD, kind)
    tmp = storage.staging(str(target))
    _put(tmp, NEW, kind)
    assert _swap_in_a_child(tmp, str(target), fault) == (-signal.SIGKILL if fault else 0)
    if fault == "replace:after_aside":
        assert not target.exists()  # the crash this is about: only NAME.old-* and the staging are left
    storage.recover(str(target))
    assert _content(target, kind) == _expected(survivor, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no .old-* nor .tmp-* left


def test_recover_restores_the_newest_of_several_moved_aside(tmp_path):
    target = tmp_path / "model"
    for age, suffix in ((300, "0000aaaa"), (100, "ffff0000"), (200, "1234abcd")):
        (tmp_path / f"model.old-{suffix}").write_text(f"{age} s old")
        os.utime(tmp_path / f"model.old-{suffix}", (0, os.path.getmtime(tmp_path) - age))
    storage.recover(str(target))
    assert target.read_text() == "100 s old" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_without_leftovers_changes_nothing(tmp_path):
    (tmp_path / "model").write_text("x")
    storage.recover(str(tmp_path / "model"))
    storage.recover(str(tmp_path / "absent"))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_clean_leftovers_restores_where_the_output_is_missing(tmp_path, caplog):
    lay = RunLayout(str(tmp_path))
    (tmp_path / "features.parquet.old-0123abcd").mkdir()  # moved aside, then the crash: put back
    (tmp_path / "features.parquet.old-0123abcd" / "part-0").write_text("features")
    (tmp_path / "features.parquet.tmp-89abcdef").mkdir()  # the staging that never went in: deleted
    (tmp_path / "model").mkdir()
    (tmp_path / "model.old-deadbeef").mkdir()  # the swap went through: the old one is deleted
    (tmp_path / "notes.old-0123abcd").write_text("not a name of the layout: kept")
    with caplog.at_level("WARNING", logger="sparkvision.run.storage"):
        gone = storage.clean_leftovers(str(tmp_path), lay.leftover_names())
    assert gone == [str(tmp_path / n) for n in
                    ("features.parquet.old-0123abcd", "features.parquet.tmp-89abcdef", "model.old-deadbeef")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet", "model", "notes.old-0123abcd"]
    assert (tmp_path / "features.parquet" / "part-0").read_text() == "features"
    assert f"restored {tmp_path / 'features.parquet'} from features.parquet.old-0123abcd" in caplog.text


def test_on_s3_a_file_swap_killed_after_moving_aside_is_recovered(s3):
    lay = RunLayout(f"s3://{BUCKET}/runs/swap")
    storage.write_json(lay.load, {"accepted": 1})
    tmp = storage.staging(lay.load)
    storage.write_json(tmp, {"accepted": 2})
    assert _swap_in_a_child(tmp, lay.load, "replace:after_aside") == -signal.SIGKILL
    assert not storage.exists(lay.load)
    gone = storage.clean_leftovers(lay.out, lay.leftover_names())
    assert len(gone) == 2 and storage.read_json(lay.load) == {"accepted": 1}
    assert _keys(s3, "runs/swap") == ["runs/swap/load.json"]
