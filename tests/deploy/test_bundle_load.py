"""Reading the bundle: includes merged as the CLI merges them, YAML anchors kept apart, errors naming the file."""

import yaml

from sparkvision.deploy import bundle_load, bundle_resolve

from bundle_helpers import ROOT, CLASSIC, SERVERLESS, TARGETS, JOBS, CLUSTER_FIELDS, edit_yaml, problems_of, jobs_of


def test_tasks_are_written_once_and_compute_per_target():
    """The job files hold the tasks and no compute; compute.yml holds compute and nothing else of a task."""
    for name in JOBS:
        job = yaml.safe_load((ROOT / "jobs" / f"{name}.yml").read_text())["resources"]["jobs"][name]
        assert not {"job_clusters", "environments"} & set(job)
        for task in job["tasks"]:
            assert not (CLUSTER_FIELDS | {"environment_key", "libraries"}) & set(task)
    overlays = yaml.safe_load((ROOT / "jobs" / "compute.yml").read_text())["targets"]
    assert sorted(overlays) == sorted(TARGETS)
    for target, overlay in overlays.items():
        for name, job in overlay["resources"]["jobs"].items():
            for task in job["tasks"]:
                assert set(task) <= {"task_key", "job_cluster_key", "libraries", "environment_key"}


def test_yaml_anchors_do_not_leak_between_targets():
    """prod-serverless is `*prod` and the overlays are aliases: merging one target must not change another."""
    b = bundle_load.load(ROOT)
    for target in ["prod-serverless", "prod", "dev", "prod-serverless", "dev-serverless", "dev"]:
        job = jobs_of(bundle_resolve.resolve(b, target))["sparkvision_pipeline"]
        assert ("environments" in job) == (target in SERVERLESS) and ("job_clusters" in job) == (target in CLASSIC)


def test_missing_include(project):
    edit_yaml(project / "bundle.yml", lambda d: d["include"].append("pipelines/*.yml"))
    assert "bundle.yml: include[2]: 'pipelines/*.yml' matches no file" in problems_of(project)
