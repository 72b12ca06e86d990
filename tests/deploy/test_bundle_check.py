"""Our own rules on broken copies of the bundle: compute, entry points, wheels, credentials, the stack's pins,
resource references and keys, MLflow names; each problem names the file and YAML path."""

import pytest

from sparkvision.deploy import bundle

from bundle_helpers import TOKEN, edit_yaml, problems_of, pipeline_job, compute_overlay


def test_serverless_task_without_a_declared_environment(project):
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "dev-serverless")["tasks"][1].update(environment_key="gpu"))
    text = problems_of(project, target="dev-serverless")
    assert ("jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[1].environment_key: "
            "environment 'gpu' is not declared in job sparkvision_pipeline's environments (declared: default)") in text
    bundle.validate(project, "prod-serverless")  # the other serverless target is untouched


def test_serverless_job_without_environments(project):
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "prod-serverless", "sparkvision_predict").pop("environments"))
    text = problems_of(project, target="prod-serverless")
    assert ("jobs/compute.yml: targets.prod-serverless.resources.jobs.sparkvision_predict.tasks[0].environment_key: "
            "environment 'default' is not declared in job sparkvision_predict's environments (declared: none)") in text


def test_serverless_task_with_libraries_or_a_cluster(project):
    def change(d):
        tasks = compute_overlay(d, "dev-serverless")["tasks"]
        tasks[0]["libraries"] = [{"whl": "../dist/*.whl"}]
        tasks[2]["job_cluster_key"] = "main"
    edit_yaml(project / "jobs" / "compute.yml", change)
    text = problems_of(project, target="dev-serverless")
    assert ("targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[0].libraries: serverless tasks take no "
            "libraries") in text
    assert "tasks[2].environment_key: the task has both environment_key (serverless) and job_cluster_key" in text


def test_task_without_compute(project):
    edit_yaml(project / "bundle.yml", lambda d: d["targets"].update(staging={"mode": "production", "workspace": {
        "root_path": "/Workspace/Users/x/.bundle/sparkvision/staging"}, "variables": {"service_principal": "x"}}))
    text = problems_of(project, target="staging")
    assert ("jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[0]: task 'load' has no compute: "
            "give it job_cluster_key") in text
    assert "jobs/sparkvision_predict.yml: resources.jobs.sparkvision_predict.tasks[0]: task 'predict' has no compute" in text


def test_unused_job_cluster_is_refused(project):
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "dev")["job_clusters"].append(
        {"job_cluster_key": "gpu", "new_cluster": "${var.gpu_cluster}"}))
    text = problems_of(project)
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[1].job_cluster_key: "
            "job cluster 'gpu' is declared but no task of job sparkvision_pipeline runs on it") in text


def test_unused_environment_is_refused(project):
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "dev-serverless")["environments"].append(
        {"environment_key": "spare", "spec": {"environment_version": "4"}}))
    assert ("targets.dev-serverless.resources.jobs.sparkvision_pipeline.environments[1].environment_key: environment "
            "'spare' is declared but no task") in problems_of(project, target="dev-serverless")


def test_environment_wheel_must_be_built(project):
    def change(d):
        compute_overlay(d, "dev-serverless")["environments"][0]["spec"]["dependencies"][0] = "../build/*.whl"
    edit_yaml(project / "jobs" / "compute.yml", change)
    assert ("jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.environments[0].spec."
            "dependencies[0]: '../build/*.whl' matches no file") in problems_of(project, target="dev-serverless")


def test_current_security_mode_needs_a_kind(project):
    def change(d):
        compute_overlay(d, "dev")["job_clusters"][0]["new_cluster"] = {
            "spark_version": "17.3.x-cpu-ml-scala2.13", "node_type_id": "m5d.2xlarge", "num_workers": 1,
            "data_security_mode": "DATA_SECURITY_MODE_DEDICATED"}
    edit_yaml(project / "jobs" / "compute.yml", change)
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[0].new_cluster."
            "data_security_mode: DATA_SECURITY_MODE_DEDICATED is only valid for a cluster with a kind") in problems_of(project)


def test_unknown_key_is_caught_without_the_schema_too(project):
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml", lambda d: pipeline_job(d)["tasks"][1].update(colour="red"))
    assert "colour" in problems_of(project)


def test_missing_entry_point(project):
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml",
          lambda d: pipeline_job(d)["tasks"][2]["python_wheel_task"].update(entry_point="sparkvision-fit"))
    text = problems_of(project)
    assert "jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[2].python_wheel_task.entry_point" in text
    assert "'sparkvision-fit' is not an entry point of sparkvision" in text


def test_token_literal_is_refused(project):
    def change(d):
        d["targets"]["prod"]["resources"] = {"jobs": {"sparkvision_pipeline": {"tasks": [
            {"task_key": "load", "python_wheel_task": {"named_parameters": {"token": TOKEN}}}]}}}
    edit_yaml(project / "bundle.yml", change)
    text = problems_of(project, target="prod")
    assert "bundle.yml: targets.prod.resources.jobs.sparkvision_pipeline.tasks[0].python_wheel_task.named_parameters" in text
    assert "looks like a credential" in text and TOKEN not in text


def test_token_in_a_variable_is_refused(project):
    assert "credential" in problems_of(project, overrides={"network": TOKEN})


def test_unknown_dependency_and_job_cluster(project):
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml", lambda d: pipeline_job(d)["tasks"][1].update(depends_on=[{"task_key": "lode"}]))
    edit_yaml(project / "jobs" / "compute.yml", lambda d: compute_overlay(d, "dev")["tasks"][3].update(job_cluster_key="tpu"))
    text = problems_of(project)
    assert "tasks[1].depends_on[0].task_key: no task 'lode' in job sparkvision_pipeline" in text
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.tasks[3].job_cluster_key: "
            "job cluster 'tpu' is not defined") in text


@pytest.mark.parametrize("target", ["dev", "dev-serverless"])
def test_the_stack_tasks_install_is_the_wheels_stack_extra(bundle_copy, target):
    """Task libraries and serverless dependencies carry pyproject.toml's `stack` ranges; another range is refused."""
    bundle.validate(bundle_copy, target)
    compute = bundle_copy / "jobs" / "compute.yml"
    compute.write_text(compute.read_text().replace("tensorflow>=2.16,<3", "tensorflow>=2.10"))
    with pytest.raises(bundle.BundleError) as info:
        bundle.validate(bundle_copy, target)
    assert "the run-time stack's range for tensorflow is '<3,>=2.16'" in str(info.value)
    assert "jobs/compute.yml" in str(info.value)


def test_reference_to_an_undeclared_resource(project):
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml", lambda d: pipeline_job(d)["tasks"][2]["python_wheel_task"][
        "parameters"].append("mlflow.experiment=${resources.experiments.sparkvison.name}"))
    text = problems_of(project)
    assert ("jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[2].python_wheel_task.parameters[6]: "
            "${resources.experiments.sparkvison.name}: target dev declares no resources.experiments.sparkvison") in text
    assert "experiments.sparkvision, registered_models.sparkvision_classifier" in text


def test_reference_to_a_field_resources_do_not_have(project, schema):
    def change(d):
        params = pipeline_job(d)["tasks"][3]["python_wheel_task"]["parameters"]
        params += ["${resources.registered_models.sparkvision_classifier.catalog}",  # catalog_name
                   "${resources.registered_models.sparkvision_classifier.full_name}",  # set at deploy: fine
                   "${resources.experiments.sparkvision.id}"]
    edit_yaml(project / "jobs" / "sparkvision_pipeline.yml", change)
    text = problems_of(project, schema)
    assert ("parameters[10]: ${resources.registered_models.sparkvision_classifier.catalog}: resources.registered_models "
            "have no field 'catalog'") in text
    assert "full_name" not in text and ".id" not in text


def test_resource_keys_are_unique_across_kinds(project):
    edit_yaml(project / "jobs" / "sparkvision_mlflow.yml",
          lambda d: d["resources"]["experiments"].update(sparkvision_pipeline={"name": "/Shared/x"}))
    assert ("resource key 'sparkvision_pipeline' is used by resources.experiments.sparkvision_pipeline "
            "(jobs/sparkvision_mlflow.yml) and resources.jobs.sparkvision_pipeline (jobs/sparkvision_pipeline.yml)"
            ) in problems_of(project)


def test_mlflow_names_the_workspace_refuses(project):
    text = problems_of(project, overrides={"experiment": "sparkvision", "registered_model": "main.sparkvision.m"})
    assert ("jobs/sparkvision_mlflow.yml: resources.experiments.sparkvision.name: 'sparkvision': an experiment name is "
            "a workspace path") in text
    assert ("jobs/sparkvision_mlflow.yml: resources.registered_models.sparkvision_classifier.name: 'main.sparkvision.m': "
            "one part of the three-level name") in text
