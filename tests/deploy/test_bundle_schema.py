"""The official bundle JSON schema: the resolved bundle passes it, and an error names the file and YAML path
where the offending key is written."""

import re

import pytest

from sparkvision.deploy import bundle, bundle_load, bundle_schema

from bundle_helpers import ROOT, TARGETS, edit_yaml, problems_of, pipeline_job, compute_overlay, jobs_of


@pytest.mark.parametrize("target", TARGETS)
def test_resolved_bundle_validates_against_the_official_schema(schema, target):
    result = bundle.validate(ROOT, target, schema=str(schema))
    assert result["schema"] == str(schema) and result["target"] == target
    job = jobs_of(result["config"])["sparkvision_pipeline"]
    assert [t["task_key"] for t in job["tasks"]] == ["load", "featurize", "train", "evaluate"]
    assert {"jobs", "experiments", "registered_models"} <= set(result["config"]["resources"])
    assert not bundle_schema.schema_problems(result["config"], schema, bundle_load.load(ROOT))


def test_unknown_key_names_file_and_path(project, schema):
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml", lambda d: pipeline_job(d)["tasks"][1].update(colour="red"))
    text = problems_of(project, schema)
    assert "jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[1]" in text
    assert "'colour' was unexpected" in text


def test_unknown_key_in_a_target_override_names_file_and_path(project, schema):
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "dev-serverless")["tasks"][2].update(colour="red"))
    text = problems_of(project, schema, target="dev-serverless")
    assert "jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[2]" in text


def test_one_of_failure_points_at_the_deepest_key(project, schema):
    def change(d):
        compute_overlay(d, "dev")["job_clusters"][0]["new_cluster"] = {"spark_version": "17.3.x-cpu-ml-scala2.13", "num_workers": "two"}
    edit_yaml(project / "jobs" / "compute.yml", change)
    text = problems_of(project, schema)
    assert "jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[0].new_cluster.num_workers" in text


def test_schema_patterns_are_translated_for_python(schema):
    pattern = bundle_schema._python_regex(r"\$\{(var(\.\p{L}+([-_]*[\p{L}\p{N}]+)*(\[[0-9]+\])*)+)\}")
    assert re.fullmatch(pattern, "${var.cpu_cluster}") and re.fullmatch(pattern, "${var.größe2}")
    assert not re.fullmatch(pattern, "${var.}") and not re.fullmatch(pattern, "${var.2x}")
