"""Where a run's files are (sparkvision.run.layout): every file of a run named by one layout, under its output
folder whatever that folder is called, and the same relative paths on object stores."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sparkvision.run import layout, storage
from sparkvision.run.layout import EvaluationLayout, PredictionLayout, RunLayout, StreamLayout

ODD_NAMES = ["my runs #2", "2024", "runs/été 100%", "a%20b?x=1", "-dash"]


def _names(cls) -> list[str]:
    """The files and folders a layout class names (its ``_At`` attributes)."""
    return [n for n, v in vars(cls).items() if isinstance(v, layout._At)]


def _write_every_file(lay) -> dict[str, str]:
    """Write each file the layout names, holding its attribute's name; returns {name: path}."""
    paths = {name: getattr(lay, name) for name in _names(type(lay))}
    for name, path in paths.items():
        storage.write_text(path, name)
    return paths


def _files_under(root: Path) -> dict[str, str]:
    """What is on disk under ``root``: {relative path: contents}."""
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("cls", [RunLayout, EvaluationLayout, PredictionLayout, StreamLayout])
def test_every_file_of_a_layout_lands_once_under_its_output_folder(tmp_path, cls):
    out = tmp_path / "out"
    paths = _write_every_file(cls(str(out)))
    on_disk = _files_under(out)
    assert sorted(on_disk.values()) == sorted(paths)  # one file per name: no two names share a path
    assert set(os.listdir(out)) == {rel.split(os.sep)[0] for rel in on_disk}
    if hasattr(cls, "leftover_names"):
        assert cls(str(out)).leftover_names() == set(os.listdir(out))


@pytest.mark.parametrize("name", ODD_NAMES)
def test_an_odd_output_name_is_kept_exactly(tmp_path, name):
    out = tmp_path / name
    lay = RunLayout(str(out))
    paths = _write_every_file(lay)
    for attr, path in paths.items():
        assert Path(path).read_text() == attr
        assert Path(path).resolve().is_relative_to(out.resolve())
    assert sorted(_files_under(out).values()) == sorted(paths)
    # Nothing was written beside the output folder: the name was not split, escaped or cut.
    assert [p.name for p in tmp_path.iterdir()] == [Path(name).parts[0]]


def test_the_evaluation_is_one_folder_of_the_run(tmp_path):
    lay = RunLayout(str(tmp_path / "out"))
    evaluated = lay.evaluated
    assert evaluated.out == lay.evaluation
    assert lay.record("evaluate") == lay.metrics == evaluated.metrics
    assert lay.report == evaluated.report
    # The test split's predictions are the files `sparkvision predict` writes, inside the evaluation folder.
    assert evaluated.predictions == PredictionLayout(lay.evaluation)
    written = _write_every_file(evaluated) | _write_every_file(evaluated.predictions)
    assert set(_files_under(Path(lay.evaluation)).values()) == set(written)
    assert os.listdir(lay.out) == [os.path.basename(lay.evaluation)]


def test_each_stage_record_is_a_file_of_the_layout(tmp_path):
    lay = RunLayout(str(tmp_path / "out"))
    records = {stage: lay.record(stage) for stage in ("load", "featurize", "train", "evaluate")}
    named = {getattr(lay, n) for n in _names(RunLayout)} | {lay.metrics}
    assert set(records.values()) <= named and len(set(records.values())) == len(records)
    with pytest.raises(KeyError):
        lay.record("stream")


@pytest.mark.parametrize("prefix", ["s3://bucket", "s3a://bucket/runs", "s3a://bucket/runs/my runs #2", "gs://b/x/",
                                    "abfss://c@acct.dfs.core.windows.net/runs", "dbfs:/runs", "file:/tmp/runs"])
def test_uris_keep_their_scheme_and_the_same_relative_paths(tmp_path, prefix):
    remote, local = RunLayout(prefix), RunLayout(str(tmp_path / "out"))
    scheme = urlsplit(prefix).scheme
    base = prefix.rstrip("/")
    for name in _names(RunLayout):
        uri, path = getattr(remote, name), getattr(local, name)
        assert urlsplit(uri).scheme == scheme and urlsplit(uri).netloc == urlsplit(prefix).netloc
        assert uri.startswith(base + "/")
        assert uri[len(base) + 1:] == os.path.relpath(path, local.out).replace(os.sep, "/")
    assert remote.evaluated.metrics == posixpath.join(remote.evaluation, os.path.basename(local.evaluated.metrics))


def test_a_finished_run_holds_only_what_its_layout_names(digits_model):
    """The run the shared fixture made (load, featurize, train, evaluate): every entry is a layout name, every
    stage's record is there, and the evaluation folder holds only the evaluation's and its predictions' files."""
    run = digits_model.parent
    lay = RunLayout(str(run))
    entries = set(os.listdir(run))
    assert entries <= lay.leftover_names()
    assert all(Path(lay.record(stage)).is_file() for stage in ("load", "featurize", "train", "evaluate"))
    evaluation = set(os.listdir(lay.evaluation))
    expected = {os.path.basename(getattr(lay.evaluated, n)) for n in _names(EvaluationLayout)}
    expected |= lay.evaluated.predictions.leftover_names()
    assert evaluation <= expected
    assert not any(".tmp-" in e or ".old-" in e for e in entries | evaluation)
    assert not Path(lay.lock).exists()  # released when the run ended
