"""The Databricks bundle, checked offline: `sparkvision bundle validate` on the real files and on broken copies."""

import shutil
from pathlib import Path

import pytest
import yaml

from sparkvision import cli
from sparkvision.deploy import bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "databricks" / "bundle-jsonschema.json"
TOKEN = "dapi" + "0123456789abcdef" * 2


@pytest.fixture
def schema() -> Path:
    if not SCHEMA.is_file():
        pytest.skip(f"official bundle JSON schema not found at {SCHEMA} (../shared/databricks)")
    return SCHEMA


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of everything the bundle reads, to break."""
    dest = tmp_path / "proj"
    dest.mkdir()
    for name in ("bundle.yml", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("jobs", "infra/clusters", "infra/databricks"):
        shutil.copytree(ROOT / folder, dest / folder)
    return dest


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _problems(project: Path, schema=None, target=None, **kw) -> str:
    with pytest.raises(bundle.BundleError) as info:
        bundle.validate(project, target, schema=str(schema) if schema else None, **kw)
    return "\n".join(info.value.problems)


def _pipeline(data):
    return data["resources"]["jobs"]["sparkvision_pipeline"]


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_bundle_is_valid(target, capsys):
    assert cli.main(["bundle", "validate", "--root", str(ROOT), "--target", target]) == 0
    assert f"bundle valid for target {target}: sparkvision_pipeline (4 tasks), sparkvision_predict (1 tasks)" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_resolved_bundle_validates_against_the_official_schema(schema, target):
    result = bundle.validate(ROOT, target, schema=str(schema))
    assert result["schema"] == str(schema)
    job = result["config"]["resources"]["jobs"]["sparkvision_pipeline"]
    assert [t["task_key"] for t in job["tasks"]] == ["load", "featurize", "train", "evaluate"]
    assert job["tasks"][0]["job_cluster_key"] == "cpu"  # ${var.cluster_profile}
    assert job["job_clusters"][0]["new_cluster"]["spark_conf"]["spark.executor.memory"] == "8g"
    assert not bundle.schema_problems(result["config"], schema, bundle.load(ROOT))
    output = result["config"]["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]["python_wheel_task"]["parameters"][3]
    assert output == f"/Volumes/main/sparkvision/data/runs/{target}"


def test_task_dependencies_form_the_pipeline():
    job = bundle.resolve(bundle.load(ROOT), "dev")["resources"]["jobs"]["sparkvision_pipeline"]
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    assert deps == {"load": [], "featurize": ["load"], "train": ["featurize"], "evaluate": ["train"]}


def test_generated_cluster_include_is_current():
    assert (ROOT / bundle.CLUSTERS_INCLUDE).read_text() == bundle.render_clusters_include(ROOT / "infra" / "clusters")


def test_unknown_key_names_file_and_path(project, schema):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][1].update(colour="red"))
    text = _problems(project, schema)
    assert "jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[1]" in text
    assert "'colour' was unexpected" in text


def test_unknown_key_is_caught_without_the_schema_too(project):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][1].update(colour="red"))
    assert "colour" in _problems(project)


def test_one_of_failure_points_at_the_deepest_key(project, schema):
    def change(d):
        _pipeline(d)["job_clusters"][0]["new_cluster"] = {"spark_version": "17.3.x-cpu-ml-scala2.13", "num_workers": "two"}
    _edit(project / "jobs" / "sparkvision_pipeline.yml", change)
    text = _problems(project, schema)
    assert "resources.jobs.sparkvision_pipeline.job_clusters[0].new_cluster.num_workers" in text


def test_missing_entry_point(project):
    _edit(project / "jobs" / "sparkvision_pipeline.yml",
          lambda d: _pipeline(d)["tasks"][2]["python_wheel_task"].update(entry_point="sparkvision-fit"))
    text = _problems(project)
    assert "jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[2].python_wheel_task.entry_point" in text
    assert "'sparkvision-fit' is not an entry point of sparkvision" in text


def test_missing_include(project):
    _edit(project / "bundle.yml", lambda d: d["include"].append("pipelines/*.yml"))
    assert "bundle.yml: include[2]: 'pipelines/*.yml' matches no file" in _problems(project)


def test_token_literal_is_refused(project):
    def change(d):
        d["targets"]["prod"]["resources"] = {"jobs": {"sparkvision_pipeline": {"tasks": [
            {"task_key": "load", "python_wheel_task": {"named_parameters": {"token": TOKEN}}}]}}}
    _edit(project / "bundle.yml", change)
    text = _problems(project, target="prod")
    assert "looks like a credential" in text and TOKEN not in text


def test_token_in_a_variable_is_refused(project):
    assert "credential" in _problems(project, overrides={"network": TOKEN})


def test_unknown_dependency_and_job_cluster(project):
    def change(d):
        _pipeline(d)["tasks"][1]["depends_on"] = [{"task_key": "lode"}]
        _pipeline(d)["tasks"][3]["job_cluster_key"] = "tpu"
    _edit(project / "jobs" / "sparkvision_pipeline.yml", change)
    text = _problems(project)
    assert "tasks[1].depends_on[0].task_key: no task 'lode' in job sparkvision_pipeline" in text
    assert "tasks[3].job_cluster_key: job cluster 'tpu' is not defined" in text


def test_stale_cluster_include(project):
    spec = project / "infra" / "clusters" / "cpu.yml"
    spec.write_text(spec.read_text().replace("memory: 8g\n  memory_overhead", "memory: 9g\n  memory_overhead"))
    assert "infra/databricks/clusters.yml: stale or missing" in _problems(project)


def test_unknown_variable_and_target(project):
    _edit(project / "jobs" / "sparkvision_predict.yml",
          lambda d: d["resources"]["jobs"]["sparkvision_predict"]["tasks"][0]["python_wheel_task"]["parameters"].append("${var.nope}"))
    assert "jobs/sparkvision_predict.yml: resources.jobs.sparkvision_predict.tasks[0].python_wheel_task.parameters[6]: " \
           "unknown variable ${var.nope}" in _problems(project)
    with pytest.raises(bundle.BundleError, match="unknown target 'staging'"):
        bundle.resolve(bundle.load(ROOT), "staging")


def test_variables_from_cli_env_and_target(monkeypatch):
    b = bundle.load(ROOT)
    monkeypatch.setenv("BUNDLE_VAR_network", "ResNet50")
    cfg = bundle.resolve(b, "dev", {"cluster_profile": "gpu"})
    task = cfg["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]
    assert task["job_cluster_key"] == "gpu" and task["python_wheel_task"]["parameters"][-1] == "ResNet50"
    with pytest.raises(bundle.BundleError, match="variable 'colour' is not declared"):
        bundle.resolve(b, "dev", {"colour": "red"})


def test_cli_reports_problems_with_exit_1(project, capsys):
    _edit(project / "bundle.yml", lambda d: d["include"].append("pipelines/*.yml"))
    assert cli.main(["bundle", "validate", "--root", str(project)]) == 1
    assert "include[2]: 'pipelines/*.yml' matches no file" in capsys.readouterr().err


def test_schema_patterns_are_translated_for_python(schema):
    import re

    pattern = bundle._python_regex(r"\$\{(var(\.\p{L}+([-_]*[\p{L}\p{N}]+)*(\[[0-9]+\])*)+)\}")
    assert re.fullmatch(pattern, "${var.cpu_cluster}") and re.fullmatch(pattern, "${var.größe2}")
    assert not re.fullmatch(pattern, "${var.}") and not re.fullmatch(pattern, "${var.2x}")
