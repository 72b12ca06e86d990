"""Resolving the bundle for a target: compute per target, variables (--var, BUNDLE_VAR_*, the variable file,
target values), the paths, identities and MLflow resources each target gets."""

import json

import pytest
import yaml

from sparkvision.deploy import bundle, bundle_load, bundle_resolve

from bundle_helpers import (CLASSIC, CLUSTER_FIELDS, DEV, EXPERIMENT_REF, JOBS, MODEL_REF, PROD, ROOT, SERVERLESS,
                            TARGETS, edit_yaml, engines_extra, jobs_of, mlflow_resources, problems_of, task_params,
                            write_var_file)


@pytest.mark.parametrize("target", CLASSIC)
def test_classic_targets_declare_only_the_job_cluster_they_use(target):
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), target)
    for name in JOBS:
        job = jobs_of(resolved)[name]
        assert [c["job_cluster_key"] for c in job["job_clusters"]] == ["main"]
        assert "environments" not in job
        for task in job["tasks"]:
            assert task["job_cluster_key"] == "main" and task["libraries"] == [
                {"whl": "../dist/*.whl"}, {"pypi": {"package": "tensorflow>=2.16,<3"}}, {"pypi": {"package": "keras>=3.0,<4"}},
                *({"pypi": {"package": p}} for p in engines_extra())]
            assert "environment_key" not in task
        cluster = job["job_clusters"][0]["new_cluster"]  # infra/clusters/cpu.yml, Spark tuning included
        assert cluster["spark_version"] == "17.3.x-cpu-ml-scala2.13"
        assert cluster["spark_conf"]["spark.executor.memory"] == "8g"
        assert cluster["spark_conf"]["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
        assert cluster["data_security_mode"] == "DATA_SECURITY_MODE_DEDICATED" and cluster["kind"] == "CLASSIC_PREVIEW"


@pytest.mark.parametrize("target", SERVERLESS)
def test_serverless_targets_run_every_task_in_a_declared_environment(target):
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), target)
    for name in JOBS:
        job = jobs_of(resolved)[name]
        assert "job_clusters" not in job
        (env,) = job["environments"]
        assert env["environment_key"] == "default"
        assert env["spec"]["environment_version"] == "4"
        assert env["spec"]["dependencies"][0] == "../dist/*.whl"
        for task in job["tasks"]:
            assert task["environment_key"] == "default"
            assert not (CLUSTER_FIELDS | {"libraries"}) & set(task)


def test_environment_version_is_a_variable():
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), "dev-serverless", {"environment_version": "5"})
    assert jobs_of(resolved)["sparkvision_pipeline"]["environments"][0]["spec"]["environment_version"] == "5"


def test_task_dependencies_form_the_pipeline():
    job = bundle_resolve.resolve(bundle_load.load(ROOT), "dev")["resources"]["jobs"]["sparkvision_pipeline"]
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    assert deps == {"load": [], "featurize": ["load"], "train": ["featurize"], "evaluate": ["train"]}


@pytest.mark.parametrize("target", TARGETS)
def test_job_parameters(target):
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), target, {"network": "ResNet50"})
    jobs = jobs_of(resolved)
    out = resolved["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]["python_wheel_task"]["parameters"][3]
    for task in jobs["sparkvision_pipeline"]["tasks"]:
        params = task["python_wheel_task"]["parameters"]
        assert params[params.index("--output") + 1] == out and params[params.index("--network") + 1] == "ResNet50"
    assert jobs["sparkvision_pipeline"]["tasks"][0]["python_wheel_task"]["parameters"][:2] == [
        "--images", "/Volumes/main/sparkvision/data/images"]
    predict = jobs["sparkvision_predict"]["tasks"][0]["python_wheel_task"]["parameters"]
    assert predict[:2] == ["--model", f"{out}/model"]
    assert predict[2:4] == ["--images", "/Volumes/main/sparkvision/data/new_images"]
    assert predict[4] == "--output" and predict[5].startswith(f"/Volumes/main/sparkvision/data/predictions/{target}")
    stream = jobs["sparkvision_stream"]
    assert stream["tasks"][0]["python_wheel_task"]["parameters"] == [
        "--model", f"{out}/model", "--images", "/Volumes/main/sparkvision/data/incoming",
        "--output", f"/Volumes/main/sparkvision/data/stream/{target}", "--trigger", "available-now"]
    assert stream["trigger"]["file_arrival"]["url"] == "/Volumes/main/sparkvision/data/incoming/"
    assert stream["trigger"]["pause_status"] == "PAUSED" and stream["max_concurrent_runs"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_every_path_derives_from_catalog_schema_and_volume(target):
    result = bundle.validate(ROOT, target, {"catalog": "x", "schema": "y", "volume": "z"})
    text = json.dumps(result["config"])
    assert "/Volumes/main" not in text and "sparkvision/data" not in text
    for name in ("images", "output", "predict_images", "predictions", "stream_images", "stream_output"):
        assert result["variables"][name].startswith("/Volumes/x/y/z/"), name
    # pipeline: images + 4 outputs; predict: model, images, output; stream: model, images, output, trigger url
    assert text.count("/Volumes/x/y/z/") == 12


def test_the_volume_is_a_prod_resource():
    for target in ("prod", "prod-serverless"):
        resolved = bundle_resolve.resolve(bundle_load.load(ROOT), target, {"catalog": "x", "schema": "y", "volume": "z"})
        assert resolved["resources"]["volumes"] == {"sparkvision_data": {
            "catalog_name": "x", "schema_name": "y", "name": "z", "volume_type": "MANAGED",
            "comment": resolved["resources"]["volumes"]["sparkvision_data"]["comment"], "lifecycle": {"prevent_destroy": True}}}
        assert "sparkvision" in resolved["resources"]["volumes"]["sparkvision_data"]["comment"]
    for target in ("dev", "dev-serverless"):  # one deployment owns the volume; developers' deployments use it
        assert "volumes" not in bundle_resolve.resolve(bundle_load.load(ROOT), target)["resources"]


@pytest.mark.parametrize("target", ["prod", "prod-serverless"])
def test_prod_runs_as_the_service_principal_under_its_root_path(target):
    resolved, values = bundle_resolve.resolve_with_variables(bundle_load.load(ROOT), target)
    # Looked up by name (sparkvision-prod) at deploy time: left as a reference offline
    assert values["service_principal"] == "${var.service_principal}"
    assert resolved["run_as"] == {"service_principal_name": "${var.service_principal}"}
    resolved = bundle.validate(ROOT, target, {"service_principal": "6f1c2a4e-0000-4000-8000-00000000abcd"})["config"]
    assert resolved["run_as"] == {"service_principal_name": "6f1c2a4e-0000-4000-8000-00000000abcd"}
    assert resolved["workspace"]["root_path"] == f"/Workspace/Users/6f1c2a4e-0000-4000-8000-00000000abcd/.bundle/sparkvision/{target}"
    targets = yaml.safe_load((ROOT / "bundle.yml").read_text())["targets"]
    assert targets[target]["mode"] == "production"
    assert targets[target]["variables"]["service_principal"] == {"lookup": {"service_principal": "sparkvision-prod"}}


@pytest.mark.parametrize("target", ["dev", "dev-serverless"])
def test_dev_runs_as_the_developer(target):
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), target)
    assert "run_as" not in resolved and "root_path" not in resolved.get("workspace", {})


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_queue(target):
    for job in jobs_of(bundle_resolve.resolve(bundle_load.load(ROOT), target)).values():
        assert job["queue"] == {"enabled": True}


@pytest.mark.parametrize("target", ["prod", "prod-serverless"])
def test_notifications_come_from_variables(project, schema, target):
    resolved = bundle_resolve.resolve(bundle_load.load(project), target)
    for job in jobs_of(resolved).values():  # empty by default: nobody is notified, and the bundle still validates
        assert job["email_notifications"] == {"on_failure": []} and job["webhook_notifications"] == {"on_failure": []}
    write_var_file(project, target, {"notify_emails": ["ml-team@example.com"], "notify_webhooks": [{"id": "0f0e-dest"}]})
    resolved = bundle.validate(project, target, schema=str(schema))["config"]
    for job in jobs_of(resolved).values():
        assert job["email_notifications"] == {"on_failure": ["ml-team@example.com"]}
        assert job["webhook_notifications"] == {"on_failure": [{"id": "0f0e-dest"}]}


def test_dev_output_is_per_developer():
    for target in ("dev", "dev-serverless"):
        values = bundle_resolve.resolve_with_variables(bundle_load.load(ROOT), target)[1]
        for name, folder in (("output", "runs"), ("predictions", "predictions")):
            assert values[name] == f"/Volumes/main/sparkvision/data/{folder}/{target}/${{workspace.current_user.short_name}}"
    for target in ("prod", "prod-serverless"):
        values = bundle_resolve.resolve_with_variables(bundle_load.load(ROOT), target)[1]
        assert values["output"] == f"/Volumes/main/sparkvision/data/runs/{target}"
        assert "current_user" not in values["predictions"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_experiment_and_the_registered_model_are_declared(target):
    resolved, values = bundle_resolve.resolve_with_variables(bundle_load.load(ROOT), target, {"catalog": "vision", "schema": "ml"})
    experiment, model = mlflow_resources(resolved)
    home = "${var.service_principal}" if target in PROD else "${workspace.current_user.userName}"
    assert experiment["name"] == values["experiment"] == f"/Workspace/Users/{home}/sparkvision-{target}"
    assert (model["catalog_name"], model["schema_name"]) == ("vision", "ml")  # the volume's catalog and schema
    # dev and dev-serverless are two deployments of one developer: two models (a name is one model)
    assert model["name"] == values["registered_model"] == (
        "sparkvision_classifier_serverless" if target == "dev-serverless" else "sparkvision_classifier")
    assert "sparkvision" in model["comment"]
    doc = yaml.safe_load((ROOT / "jobs" / "sparkvision_mlflow.yml").read_text())
    assert doc["resources"]["experiments"]["sparkvision"]["name"] == "${var.experiment}"
    assert doc["resources"]["registered_models"]["sparkvision_classifier"]["name"] == "${var.registered_model}"


def test_mlflow_names_come_from_variables():
    resolved = bundle_resolve.resolve(bundle_load.load(ROOT), "prod", {"experiment": "/Shared/vision", "registered_model": "vision_model"})
    experiment, model = mlflow_resources(resolved)
    assert experiment["name"] == "/Shared/vision" and model["name"] == "vision_model"


@pytest.mark.parametrize("target", TARGETS)
def test_train_and_evaluate_log_to_the_experiment_and_evaluate_registers(target):
    resolved = bundle.validate(ROOT, target)["config"]
    experiment = ["--set", f"mlflow.experiment={EXPERIMENT_REF}"]
    assert task_params(resolved, "train") == ["--output", task_params(resolved, "load")[3], "--network", "efficientnet_lite0", *experiment]
    evaluate = task_params(resolved, "evaluate")
    assert evaluate[4:] == [*experiment, "--register", MODEL_REF, "--set", "mlflow.promote_champion=false"]
    for task in ("load", "featurize"):
        assert not any("mlflow" in p or p == "--register" for p in task_params(resolved, task))
    # predict keeps the run's model folder: the champion alias exists only once a version was promoted
    assert task_params(resolved, "predict", "sparkvision_predict")[:2] == ["--model", f"{task_params(resolved, 'load')[3]}/model"]
    champion = "models:/main.sparkvision.sparkvision_classifier@champion"
    resolved = bundle.validate(ROOT, target, {"promote_champion": "true", "predict_model": champion})["config"]
    assert task_params(resolved, "evaluate")[-2:] == ["--set", "mlflow.promote_champion=true"]
    assert task_params(resolved, "predict", "sparkvision_predict")[:2] == ["--model", champion]


@pytest.mark.parametrize("target", PROD)
def test_prod_grants_the_readers_from_variables(project, schema, target):
    experiment, model = mlflow_resources(bundle_resolve.resolve(bundle_load.load(ROOT), target))
    assert model["grants"] == [{"principal": "account users", "privileges": ["EXECUTE"]}]
    assert experiment["permissions"] == [{"group_name": "users", "level": "CAN_READ"}]
    assert experiment["lifecycle"] == model["lifecycle"] == {"prevent_destroy": True}
    write_var_file(project, target, {"model_readers": "ml-consumers", "experiment_readers": "ml-viewers"})
    experiment, model = mlflow_resources(bundle.validate(project, target, schema=str(schema))["config"])
    assert model["grants"] == [{"principal": "ml-consumers", "privileges": ["EXECUTE"]}]
    assert experiment["permissions"] == [{"group_name": "ml-viewers", "level": "CAN_READ"}]


@pytest.mark.parametrize("target", DEV)
def test_dev_grants_nothing(target):
    for resource in mlflow_resources(bundle_resolve.resolve(bundle_load.load(ROOT), target)):
        assert not {"grants", "permissions", "lifecycle"} & set(resource)


def test_variables_from_cli_env_and_target(monkeypatch):
    b = bundle_load.load(ROOT)
    monkeypatch.setenv("BUNDLE_VAR_network", "ResNet50")
    resolved = bundle_resolve.resolve(b, "dev", {"catalog": "vision"})
    task = resolved["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]
    assert task["python_wheel_task"]["parameters"][-1] == "ResNet50"
    assert task["python_wheel_task"]["parameters"][1] == "/Volumes/vision/sparkvision/data/images"
    with pytest.raises(bundle.BundleError, match="variable 'colour' is not declared"):
        bundle_resolve.resolve(b, "dev", {"colour": "red"})


def test_complex_variables_are_not_taken_from_var_or_environment(monkeypatch):
    """The Databricks CLI refuses --var and BUNDLE_VAR_ for complex variables: so does validate."""
    b = bundle_load.load(ROOT)
    with pytest.raises(bundle.BundleError, match=r"--var: 'cluster' is a complex variable.*variable-overrides.json"):
        bundle_resolve.resolve(b, "dev", {"cluster": "${var.gpu_cluster}"})
    monkeypatch.setenv("BUNDLE_VAR_notify_emails", '["a@example.com"]')
    with pytest.raises(bundle.BundleError, match="BUNDLE_VAR_notify_emails: 'notify_emails' is a complex variable"):
        bundle_resolve.resolve(b, "prod")


def test_gpu_cluster_from_the_variable_file_or_a_target(project):
    write_var_file(project, "dev", {"cluster": "${var.gpu_cluster}"})
    cluster = jobs_of(bundle.validate(project, "dev")["config"])["sparkvision_pipeline"]["job_clusters"][0]["new_cluster"]
    assert cluster["spark_version"] == "17.3.x-gpu-ml-scala2.13"
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "0.25"
    assert jobs_of(bundle.validate(project, "prod")["config"])["sparkvision_pipeline"]["job_clusters"][0][
        "new_cluster"]["spark_version"] == "17.3.x-cpu-ml-scala2.13"  # the file is per target
    edit_yaml(project / "bundle.yml", lambda d: d["targets"]["prod"].setdefault("variables", {}).update(cluster="${var.gpu_cluster}"))
    resolved = bundle.validate(project, "prod")["config"]
    assert all(j["job_clusters"][0]["new_cluster"]["node_type_id"] == "g5.2xlarge" for j in jobs_of(resolved).values())


def test_variable_file_problems(project):
    write_var_file(project, "dev", {"colour": "red"})
    assert ".databricks/bundle/dev/variable-overrides.json: colour: variable 'colour' is not declared" in problems_of(project)
    path = project / bundle.OVERRIDES_FILE.format(target="dev")
    path.write_text("{not json")
    assert ".databricks/bundle/dev/variable-overrides.json: not valid JSON" in problems_of(project)


def test_unknown_variable_and_target(project):
    edit_yaml(project / "jobs" / "sparkvision_predict.yml",
          lambda d: d["resources"]["jobs"]["sparkvision_predict"]["tasks"][0]["python_wheel_task"]["parameters"].append("${var.nope}"))
    assert "jobs/sparkvision_predict.yml: resources.jobs.sparkvision_predict.tasks[0].python_wheel_task.parameters[6]: " \
           "unknown variable ${var.nope}" in problems_of(project)
    with pytest.raises(bundle.BundleError, match="unknown target 'staging'"):
        bundle_resolve.resolve(bundle_load.load(ROOT), "staging")
