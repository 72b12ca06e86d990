"""The run-time stack: the ranges come from the wheel's `stack` extra, and a job refuses to start outside them."""

from packaging.requirements import Requirement

from sparkvision import cli

from sparkvision.run import stack


def test_the_stack_ranges_are_the_wheels_stack_extra():
    names = {r.name for r in stack.requirements()}
    assert {"pyspark", "tensorflow", "keras", "pandas", "pyarrow"} <= names
    assert stack.problems() == []  # this environment is inside them


def test_versions_outside_the_ranges_stop_a_job_at_start(monkeypatch, capsys, tmp_path):
    real = stack.installed_version
    monkeypatch.setattr(stack, "installed_version",
                        lambda name: {"keras": "2.15.0", "tensorflow": None}.get(name, real(name)))
    assert cli.main(["train", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "keras 2.15.0 is installed, sparkvision needs <4,>=3.0" in err
    assert "tensorflow is not installed (needs <3,>=2.16)" in err
    assert not any(tmp_path.iterdir())  # refused before touching the output folder


def test_a_range_is_checked_against_the_installed_version():
    assert stack.problems([Requirement("pyspark>=99")]) == [
        f"pyspark {stack.installed_version('pyspark')} is installed, sparkvision needs >=99"]
