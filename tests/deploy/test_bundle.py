"""The Databricks bundle, checked offline: `sparkvision bundle validate` on the real files and on broken copies."""

import json
from pathlib import Path

import pytest
import yaml

from sparkvision import cli
from sparkvision.deploy import bundle

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "databricks" / "bundle-jsonschema.json"
TOKEN = "dapi" + "0123456789abcdef" * 2
CLASSIC, SERVERLESS = ["dev", "prod"], ["dev-serverless", "prod-serverless"]
TARGETS = CLASSIC + SERVERLESS
DEV, PROD = ["dev", "dev-serverless"], ["prod", "prod-serverless"]
JOBS = ("sparkvision_pipeline", "sparkvision_predict", "sparkvision_stream")
CLUSTER_FIELDS = {"job_cluster_key", "new_cluster", "existing_cluster_id"}


@pytest.fixture
def schema() -> Path:
    if not SCHEMA.is_file():
        pytest.skip(f"official bundle JSON schema not found at {SCHEMA} (../shared/databricks)")
    return SCHEMA


@pytest.fixture
def project(bundle_copy) -> Path:
    """A copy of everything the bundle reads, to break."""
    return bundle_copy


@pytest.fixture(autouse=True)
def _no_bundle_vars(monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("BUNDLE_VAR_")]:
        monkeypatch.delenv(key)


def _edit(path: Path, change) -> None:
    data = bundle._unshare(yaml.safe_load(path.read_text()))  # aliases (*classic) as copies: change one target
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _var_file(project: Path, target: str, values: dict) -> None:
    path = project / bundle.OVERRIDES_FILE.format(target=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def _problems(project: Path, schema=None, target=None, **kw) -> str:
    with pytest.raises(bundle.BundleError) as info:
        bundle.validate(project, target, schema=str(schema) if schema else None, **kw)
    return "\n".join(info.value.problems)


def _pipeline(data):
    return data["resources"]["jobs"]["sparkvision_pipeline"]


def _overlay(data, target, job="sparkvision_pipeline"):
    """A target's compute for a job in jobs/compute.yml."""
    return data["targets"][target]["resources"]["jobs"][job]


def _jobs(cfg):
    return cfg["resources"]["jobs"]


# ---- the bundle as it is ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_is_valid(target, capsys):
    assert cli.main(["bundle", "validate", "--root", str(ROOT), "--target", target]) == 0
    assert (f"bundle valid for target {target}: sparkvision_pipeline (4 tasks), sparkvision_predict (1 tasks), "
            "sparkvision_stream (1 tasks)") in capsys.readouterr().out


@pytest.mark.parametrize("target", TARGETS)
def test_resolved_bundle_validates_against_the_official_schema(schema, target):
    result = bundle.validate(ROOT, target, schema=str(schema))
    assert result["schema"] == str(schema) and result["target"] == target
    job = _jobs(result["config"])["sparkvision_pipeline"]
    assert [t["task_key"] for t in job["tasks"]] == ["load", "featurize", "train", "evaluate"]
    assert {"jobs", "experiments", "registered_models"} <= set(result["config"]["resources"])
    assert not bundle.schema_problems(result["config"], schema, bundle.load(ROOT))


def test_default_target_is_dev():
    assert bundle.validate(ROOT)["target"] == "dev"


@pytest.mark.parametrize("target", CLASSIC)
def test_classic_targets_declare_only_the_job_cluster_they_use(target):
    cfg = bundle.resolve(bundle.load(ROOT), target)
    for name in JOBS:
        job = _jobs(cfg)[name]
        assert [c["job_cluster_key"] for c in job["job_clusters"]] == ["main"]
        assert "environments" not in job
        for task in job["tasks"]:
            assert task["job_cluster_key"] == "main" and task["libraries"] == [
                {"whl": "../dist/*.whl"}, {"pypi": {"package": "tensorflow>=2.16,<3"}}, {"pypi": {"package": "keras>=3.0,<4"}},
                *({"pypi": {"package": p}} for p in _engines_extra())]
            assert "environment_key" not in task
        cluster = job["job_clusters"][0]["new_cluster"]  # infra/clusters/cpu.yml, Spark tuning included
        assert cluster["spark_version"] == "17.3.x-cpu-ml-scala2.13"
        assert cluster["spark_conf"]["spark.executor.memory"] == "8g"
        assert cluster["spark_conf"]["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
        assert cluster["data_security_mode"] == "DATA_SECURITY_MODE_DEDICATED" and cluster["kind"] == "CLASSIC_PREVIEW"


@pytest.mark.parametrize("target", SERVERLESS)
def test_serverless_targets_run_every_task_in_a_declared_environment(target):
    cfg = bundle.resolve(bundle.load(ROOT), target)
    for name in JOBS:
        job = _jobs(cfg)[name]
        assert "job_clusters" not in job
        (env,) = job["environments"]
        assert env["environment_key"] == "default"
        assert env["spec"]["environment_version"] == "4"
        assert env["spec"]["dependencies"][0] == "../dist/*.whl"
        for task in job["tasks"]:
            assert task["environment_key"] == "default"
            assert not (CLUSTER_FIELDS | {"libraries"}) & set(task)


def test_environment_version_is_a_variable():
    cfg = bundle.resolve(bundle.load(ROOT), "dev-serverless", {"environment_version": "5"})
    assert _jobs(cfg)["sparkvision_pipeline"]["environments"][0]["spec"]["environment_version"] == "5"


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
    b = bundle.load(ROOT)
    for target in ["prod-serverless", "prod", "dev", "prod-serverless", "dev-serverless", "dev"]:
        job = _jobs(bundle.resolve(b, target))["sparkvision_pipeline"]
        assert ("environments" in job) == (target in SERVERLESS) and ("job_clusters" in job) == (target in CLASSIC)


def test_task_dependencies_form_the_pipeline():
    job = bundle.resolve(bundle.load(ROOT), "dev")["resources"]["jobs"]["sparkvision_pipeline"]
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    assert deps == {"load": [], "featurize": ["load"], "train": ["featurize"], "evaluate": ["train"]}


@pytest.mark.parametrize("target", TARGETS)
def test_job_parameters(target):
    cfg = bundle.resolve(bundle.load(ROOT), target, {"network": "ResNet50"})
    jobs = _jobs(cfg)
    out = cfg["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]["python_wheel_task"]["parameters"][3]
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
        cfg = bundle.resolve(bundle.load(ROOT), target, {"catalog": "x", "schema": "y", "volume": "z"})
        assert cfg["resources"]["volumes"] == {"sparkvision_data": {
            "catalog_name": "x", "schema_name": "y", "name": "z", "volume_type": "MANAGED",
            "comment": cfg["resources"]["volumes"]["sparkvision_data"]["comment"], "lifecycle": {"prevent_destroy": True}}}
        assert "sparkvision" in cfg["resources"]["volumes"]["sparkvision_data"]["comment"]
    for target in ("dev", "dev-serverless"):  # one deployment owns the volume; developers' deployments use it
        assert "volumes" not in bundle.resolve(bundle.load(ROOT), target)["resources"]


@pytest.mark.parametrize("target", ["prod", "prod-serverless"])
def test_prod_runs_as_the_service_principal_under_its_root_path(target):
    cfg, values = bundle.resolve_with_variables(bundle.load(ROOT), target)
    # Looked up by name (sparkvision-prod) at deploy time: left as a reference offline
    assert values["service_principal"] == "${var.service_principal}"
    assert cfg["run_as"] == {"service_principal_name": "${var.service_principal}"}
    cfg = bundle.validate(ROOT, target, {"service_principal": "6f1c2a4e-0000-4000-8000-00000000abcd"})["config"]
    assert cfg["run_as"] == {"service_principal_name": "6f1c2a4e-0000-4000-8000-00000000abcd"}
    assert cfg["workspace"]["root_path"] == f"/Workspace/Users/6f1c2a4e-0000-4000-8000-00000000abcd/.bundle/sparkvision/{target}"
    targets = yaml.safe_load((ROOT / "bundle.yml").read_text())["targets"]
    assert targets[target]["mode"] == "production"
    assert targets[target]["variables"]["service_principal"] == {"lookup": {"service_principal": "sparkvision-prod"}}


@pytest.mark.parametrize("target", ["dev", "dev-serverless"])
def test_dev_runs_as_the_developer(target):
    cfg = bundle.resolve(bundle.load(ROOT), target)
    assert "run_as" not in cfg and "root_path" not in cfg.get("workspace", {})


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_queue(target):
    for job in _jobs(bundle.resolve(bundle.load(ROOT), target)).values():
        assert job["queue"] == {"enabled": True}


@pytest.mark.parametrize("target", ["prod", "prod-serverless"])
def test_notifications_come_from_variables(project, schema, target):
    cfg = bundle.resolve(bundle.load(project), target)
    for job in _jobs(cfg).values():  # empty by default: nobody is notified, and the bundle still validates
        assert job["email_notifications"] == {"on_failure": []} and job["webhook_notifications"] == {"on_failure": []}
    _var_file(project, target, {"notify_emails": ["ml-team@example.com"], "notify_webhooks": [{"id": "0f0e-dest"}]})
    cfg = bundle.validate(project, target, schema=str(schema))["config"]
    for job in _jobs(cfg).values():
        assert job["email_notifications"] == {"on_failure": ["ml-team@example.com"]}
        assert job["webhook_notifications"] == {"on_failure": [{"id": "0f0e-dest"}]}


def test_dev_output_is_per_developer():
    for target in ("dev", "dev-serverless"):
        values = bundle.resolve_with_variables(bundle.load(ROOT), target)[1]
        for name, folder in (("output", "runs"), ("predictions", "predictions")):
            assert values[name] == f"/Volumes/main/sparkvision/data/{folder}/{target}/${{workspace.current_user.short_name}}"
    for target in ("prod", "prod-serverless"):
        values = bundle.resolve_with_variables(bundle.load(ROOT), target)[1]
        assert values["output"] == f"/Volumes/main/sparkvision/data/runs/{target}"
        assert "current_user" not in values["predictions"]


def test_generated_cluster_include_is_current():
    assert (ROOT / bundle.CLUSTERS_INCLUDE).read_text() == bundle.render_clusters_include(ROOT / "infra" / "clusters")
    variables = yaml.safe_load((ROOT / bundle.CLUSTERS_INCLUDE).read_text())["variables"]
    for name in ("cpu_cluster", "gpu_cluster"):
        assert variables[name]["default"]["kind"] == "CLASSIC_PREVIEW"


# ---- MLflow: the experiment and the registered model ----------------------------------------------------

EXPERIMENT_REF = "${resources.experiments.sparkvision.name}"
MODEL_REF = ("${resources.registered_models.sparkvision_classifier.catalog_name}."
             "${resources.registered_models.sparkvision_classifier.schema_name}."
             "${resources.registered_models.sparkvision_classifier.name}")
SP = "6f1c2a4e-0000-4000-8000-00000000abcd"


def _params(cfg, task, job="sparkvision_pipeline"):
    return next(t for t in _jobs(cfg)[job]["tasks"] if t["task_key"] == task)["python_wheel_task"]["parameters"]


def _mlflow(cfg):
    return cfg["resources"]["experiments"]["sparkvision"], cfg["resources"]["registered_models"]["sparkvision_classifier"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_experiment_and_the_registered_model_are_declared(target):
    cfg, values = bundle.resolve_with_variables(bundle.load(ROOT), target, {"catalog": "vision", "schema": "ml"})
    experiment, model = _mlflow(cfg)
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
    cfg = bundle.resolve(bundle.load(ROOT), "prod", {"experiment": "/Shared/vision", "registered_model": "vision_model"})
    experiment, model = _mlflow(cfg)
    assert experiment["name"] == "/Shared/vision" and model["name"] == "vision_model"


@pytest.mark.parametrize("target", TARGETS)
def test_train_and_evaluate_log_to_the_experiment_and_evaluate_registers(target):
    cfg = bundle.validate(ROOT, target)["config"]
    experiment = ["--set", f"mlflow.experiment={EXPERIMENT_REF}"]
    assert _params(cfg, "train") == ["--output", _params(cfg, "load")[3], "--network", "efficientnet_lite0", *experiment]
    evaluate = _params(cfg, "evaluate")
    assert evaluate[4:] == [*experiment, "--register", MODEL_REF, "--set", "mlflow.promote_champion=false"]
    for task in ("load", "featurize"):
        assert not any("mlflow" in p or p == "--register" for p in _params(cfg, task))
    # predict keeps the run's model folder: the champion alias exists only once a version was promoted
    assert _params(cfg, "predict", "sparkvision_predict")[:2] == ["--model", f"{_params(cfg, 'load')[3]}/model"]
    champion = "models:/main.sparkvision.sparkvision_classifier@champion"
    cfg = bundle.validate(ROOT, target, {"promote_champion": "true", "predict_model": champion})["config"]
    assert _params(cfg, "evaluate")[-2:] == ["--set", "mlflow.promote_champion=true"]
    assert _params(cfg, "predict", "sparkvision_predict")[:2] == ["--model", champion]


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_get_the_names_as_deployed(target):
    """References, so development mode's prefixes follow; offline they resolve as the CLI names the resources."""
    result = bundle.validate(ROOT, target, {"service_principal": SP} if target in PROD else {})
    assert result["mode"] == ("development" if target in DEV else "production")
    cfg = bundle.with_resource_references(result["config"], result["config"], result["mode"])
    if target in DEV:
        name = f"/Workspace/Users/${{workspace.current_user.userName}}/[dev ${{workspace.current_user.short_name}}] sparkvision-{target}"
        model = "main.sparkvision.dev_${workspace.current_user.short_name}_sparkvision_classifier"
        model += "_serverless" if target == "dev-serverless" else ""
    else:
        name, model = f"/Workspace/Users/{SP}/sparkvision-{target}", "main.sparkvision.sparkvision_classifier"
    assert _params(cfg, "train")[-2:] == ["--set", f"mlflow.experiment={name}"]
    evaluate = _params(cfg, "evaluate")
    assert evaluate[evaluate.index("--set") + 1] == f"mlflow.experiment={name}"
    assert evaluate[evaluate.index("--register") + 1] == model
    assert _mlflow(cfg)[0]["name"] == _mlflow(result["config"])[0]["name"]  # only the references change


def test_name_prefixes_follow_the_cli():
    assert bundle.deployed_name("registered_models", "m", "[dev jane_doe] ") == "dev_jane_doe_m"
    assert bundle.deployed_name("registered_models", "m", "[Dev Jane.Doe] ") == "dev_jane_doe_m"
    assert bundle.deployed_name("experiments", "/Workspace/Users/j@x.com/e", "[dev j] ") == "/Workspace/Users/j@x.com/[dev j] e"
    assert bundle.deployed_name("jobs", "p", "[dev j] ") == "[dev j] p"
    assert bundle.deployed_name("volumes", "data", "[dev j] ") == "data"
    assert bundle.deployed_name("registered_models", "m", "") == "m"
    assert bundle.name_prefix({"presets": {"name_prefix": "ci_"}}, "development") == "ci_"
    assert bundle.name_prefix({}, "development") == bundle.DEV_PREFIX and bundle.name_prefix({}, "production") == ""
    ref = {"p": "x=${resources.experiments.e.name}", "q": "${resources.experiments.e.id}", "r": "${resources.jobs.nope.name}"}
    cfg = {"resources": {"experiments": {"e": {"name": "/Shared/e"}}}}
    assert bundle.with_resource_references(ref, cfg, prefix="[dev j] ") == {
        "p": "x=/Shared/[dev j] e", "q": "${resources.experiments.e.id}", "r": "${resources.jobs.nope.name}"}


@pytest.mark.parametrize("target", PROD)
def test_prod_grants_the_readers_from_variables(project, schema, target):
    experiment, model = _mlflow(bundle.resolve(bundle.load(ROOT), target))
    assert model["grants"] == [{"principal": "account users", "privileges": ["EXECUTE"]}]
    assert experiment["permissions"] == [{"group_name": "users", "level": "CAN_READ"}]
    assert experiment["lifecycle"] == model["lifecycle"] == {"prevent_destroy": True}
    _var_file(project, target, {"model_readers": "ml-consumers", "experiment_readers": "ml-viewers"})
    experiment, model = _mlflow(bundle.validate(project, target, schema=str(schema))["config"])
    assert model["grants"] == [{"principal": "ml-consumers", "privileges": ["EXECUTE"]}]
    assert experiment["permissions"] == [{"group_name": "ml-viewers", "level": "CAN_READ"}]


@pytest.mark.parametrize("target", DEV)
def test_dev_grants_nothing(target):
    for resource in _mlflow(bundle.resolve(bundle.load(ROOT), target)):
        assert not {"grants", "permissions", "lifecycle"} & set(resource)


def test_reference_to_an_undeclared_resource(project):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][2]["python_wheel_task"][
        "parameters"].append("mlflow.experiment=${resources.experiments.sparkvison.name}"))
    text = _problems(project)
    assert ("jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[2].python_wheel_task.parameters[6]: "
            "${resources.experiments.sparkvison.name}: target dev declares no resources.experiments.sparkvison") in text
    assert "experiments.sparkvision, registered_models.sparkvision_classifier" in text


def test_reference_to_a_field_resources_do_not_have(project, schema):
    def change(d):
        params = _pipeline(d)["tasks"][3]["python_wheel_task"]["parameters"]
        params += ["${resources.registered_models.sparkvision_classifier.catalog}",  # catalog_name
                   "${resources.registered_models.sparkvision_classifier.full_name}",  # set at deploy: fine
                   "${resources.experiments.sparkvision.id}"]
    _edit(project / "jobs" / "sparkvision_pipeline.yml", change)
    text = _problems(project, schema)
    assert ("parameters[10]: ${resources.registered_models.sparkvision_classifier.catalog}: resources.registered_models "
            "have no field 'catalog'") in text
    assert "full_name" not in text and ".id" not in text


def test_resource_keys_are_unique_across_kinds(project):
    _edit(project / "jobs" / "sparkvision_mlflow.yml",
          lambda d: d["resources"]["experiments"].update(sparkvision_pipeline={"name": "/Shared/x"}))
    assert ("resource key 'sparkvision_pipeline' is used by resources.experiments.sparkvision_pipeline "
            "(jobs/sparkvision_mlflow.yml) and resources.jobs.sparkvision_pipeline (jobs/sparkvision_pipeline.yml)"
            ) in _problems(project)


def test_mlflow_names_the_workspace_refuses(project):
    text = _problems(project, overrides={"experiment": "sparkvision", "registered_model": "main.sparkvision.m"})
    assert ("jobs/sparkvision_mlflow.yml: resources.experiments.sparkvision.name: 'sparkvision': an experiment name is "
            "a workspace path") in text
    assert ("jobs/sparkvision_mlflow.yml: resources.registered_models.sparkvision_classifier.name: 'main.sparkvision.m': "
            "one part of the three-level name") in text


# ---- variables ----------------------------------------------------------------------------------------


def test_variables_from_cli_env_and_target(monkeypatch):
    b = bundle.load(ROOT)
    monkeypatch.setenv("BUNDLE_VAR_network", "ResNet50")
    cfg = bundle.resolve(b, "dev", {"catalog": "vision"})
    task = cfg["resources"]["jobs"]["sparkvision_pipeline"]["tasks"][0]
    assert task["python_wheel_task"]["parameters"][-1] == "ResNet50"
    assert task["python_wheel_task"]["parameters"][1] == "/Volumes/vision/sparkvision/data/images"
    with pytest.raises(bundle.BundleError, match="variable 'colour' is not declared"):
        bundle.resolve(b, "dev", {"colour": "red"})


def test_complex_variables_are_not_taken_from_var_or_environment(monkeypatch):
    """The Databricks CLI refuses --var and BUNDLE_VAR_ for complex variables: so does validate."""
    b = bundle.load(ROOT)
    with pytest.raises(bundle.BundleError, match=r"--var: 'cluster' is a complex variable.*variable-overrides.json"):
        bundle.resolve(b, "dev", {"cluster": "${var.gpu_cluster}"})
    monkeypatch.setenv("BUNDLE_VAR_notify_emails", '["a@example.com"]')
    with pytest.raises(bundle.BundleError, match="BUNDLE_VAR_notify_emails: 'notify_emails' is a complex variable"):
        bundle.resolve(b, "prod")


def test_gpu_cluster_from_the_variable_file_or_a_target(project):
    _var_file(project, "dev", {"cluster": "${var.gpu_cluster}"})
    cluster = _jobs(bundle.validate(project, "dev")["config"])["sparkvision_pipeline"]["job_clusters"][0]["new_cluster"]
    assert cluster["spark_version"] == "17.3.x-gpu-ml-scala2.13"
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "0.25"
    assert _jobs(bundle.validate(project, "prod")["config"])["sparkvision_pipeline"]["job_clusters"][0][
        "new_cluster"]["spark_version"] == "17.3.x-cpu-ml-scala2.13"  # the file is per target
    _edit(project / "bundle.yml", lambda d: d["targets"]["prod"].setdefault("variables", {}).update(cluster="${var.gpu_cluster}"))
    cfg = bundle.validate(project, "prod")["config"]
    assert all(j["job_clusters"][0]["new_cluster"]["node_type_id"] == "g5.2xlarge" for j in _jobs(cfg).values())


def test_variable_file_problems(project):
    _var_file(project, "dev", {"colour": "red"})
    assert ".databricks/bundle/dev/variable-overrides.json: colour: variable 'colour' is not declared" in _problems(project)
    path = project / bundle.OVERRIDES_FILE.format(target="dev")
    path.write_text("{not json")
    assert ".databricks/bundle/dev/variable-overrides.json: not valid JSON" in _problems(project)


# ---- broken copies ------------------------------------------------------------------------------------


def test_serverless_task_without_a_declared_environment(project):
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "dev-serverless")["tasks"][1].update(environment_key="gpu"))
    text = _problems(project, target="dev-serverless")
    assert ("jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[1].environment_key: "
            "environment 'gpu' is not declared in job sparkvision_pipeline's environments (declared: default)") in text
    bundle.validate(project, "prod-serverless")  # the other serverless target is untouched


def test_serverless_job_without_environments(project):
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "prod-serverless", "sparkvision_predict").pop("environments"))
    text = _problems(project, target="prod-serverless")
    assert ("jobs/compute.yml: targets.prod-serverless.resources.jobs.sparkvision_predict.tasks[0].environment_key: "
            "environment 'default' is not declared in job sparkvision_predict's environments (declared: none)") in text


def test_serverless_task_with_libraries_or_a_cluster(project):
    def change(d):
        tasks = _overlay(d, "dev-serverless")["tasks"]
        tasks[0]["libraries"] = [{"whl": "../dist/*.whl"}]
        tasks[2]["job_cluster_key"] = "main"
    _edit(project / "jobs" / "compute.yml", change)
    text = _problems(project, target="dev-serverless")
    assert ("targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[0].libraries: serverless tasks take no "
            "libraries") in text
    assert "tasks[2].environment_key: the task has both environment_key (serverless) and job_cluster_key" in text


def test_task_without_compute(project):
    _edit(project / "bundle.yml", lambda d: d["targets"].update(staging={"mode": "production", "workspace": {
        "root_path": "/Workspace/Users/x/.bundle/sparkvision/staging"}, "variables": {"service_principal": "x"}}))
    text = _problems(project, target="staging")
    assert ("jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[0]: task 'load' has no compute: "
            "give it job_cluster_key") in text
    assert "jobs/sparkvision_predict.yml: resources.jobs.sparkvision_predict.tasks[0]: task 'predict' has no compute" in text


def test_unused_job_cluster_is_refused(project):
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "dev")["job_clusters"].append(
        {"job_cluster_key": "gpu", "new_cluster": "${var.gpu_cluster}"}))
    text = _problems(project)
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[1].job_cluster_key: "
            "job cluster 'gpu' is declared but no task of job sparkvision_pipeline runs on it") in text


def test_unused_environment_is_refused(project):
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "dev-serverless")["environments"].append(
        {"environment_key": "spare", "spec": {"environment_version": "4"}}))
    assert ("targets.dev-serverless.resources.jobs.sparkvision_pipeline.environments[1].environment_key: environment "
            "'spare' is declared but no task") in _problems(project, target="dev-serverless")


def test_environment_wheel_must_be_built(project):
    def change(d):
        _overlay(d, "dev-serverless")["environments"][0]["spec"]["dependencies"][0] = "../build/*.whl"
    _edit(project / "jobs" / "compute.yml", change)
    assert ("jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.environments[0].spec."
            "dependencies[0]: '../build/*.whl' matches no file") in _problems(project, target="dev-serverless")


def test_current_security_mode_needs_a_kind(project):
    def change(d):
        _overlay(d, "dev")["job_clusters"][0]["new_cluster"] = {
            "spark_version": "17.3.x-cpu-ml-scala2.13", "node_type_id": "m5d.2xlarge", "num_workers": 1,
            "data_security_mode": "DATA_SECURITY_MODE_DEDICATED"}
    _edit(project / "jobs" / "compute.yml", change)
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[0].new_cluster."
            "data_security_mode: DATA_SECURITY_MODE_DEDICATED is only valid for a cluster with a kind") in _problems(project)


def test_unknown_key_names_file_and_path(project, schema):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][1].update(colour="red"))
    text = _problems(project, schema)
    assert "jobs/sparkvision_pipeline.yml: resources.jobs.sparkvision_pipeline.tasks[1]" in text
    assert "'colour' was unexpected" in text


def test_unknown_key_in_a_target_override_names_file_and_path(project, schema):
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "dev-serverless")["tasks"][2].update(colour="red"))
    text = _problems(project, schema, target="dev-serverless")
    assert "jobs/compute.yml: targets.dev-serverless.resources.jobs.sparkvision_pipeline.tasks[2]" in text


def test_unknown_key_is_caught_without_the_schema_too(project):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][1].update(colour="red"))
    assert "colour" in _problems(project)


def test_one_of_failure_points_at_the_deepest_key(project, schema):
    def change(d):
        _overlay(d, "dev")["job_clusters"][0]["new_cluster"] = {"spark_version": "17.3.x-cpu-ml-scala2.13", "num_workers": "two"}
    _edit(project / "jobs" / "compute.yml", change)
    text = _problems(project, schema)
    assert "jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.job_clusters[0].new_cluster.num_workers" in text


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
    assert "bundle.yml: targets.prod.resources.jobs.sparkvision_pipeline.tasks[0].python_wheel_task.named_parameters" in text
    assert "looks like a credential" in text and TOKEN not in text


def test_token_in_a_variable_is_refused(project):
    assert "credential" in _problems(project, overrides={"network": TOKEN})


def test_unknown_dependency_and_job_cluster(project):
    _edit(project / "jobs" / "sparkvision_pipeline.yml", lambda d: _pipeline(d)["tasks"][1].update(depends_on=[{"task_key": "lode"}]))
    _edit(project / "jobs" / "compute.yml", lambda d: _overlay(d, "dev")["tasks"][3].update(job_cluster_key="tpu"))
    text = _problems(project)
    assert "tasks[1].depends_on[0].task_key: no task 'lode' in job sparkvision_pipeline" in text
    assert ("jobs/compute.yml: targets.dev.resources.jobs.sparkvision_pipeline.tasks[3].job_cluster_key: "
            "job cluster 'tpu' is not defined") in text


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


def test_cli_reports_problems_with_exit_1(project, capsys):
    _edit(project / "bundle.yml", lambda d: d["include"].append("pipelines/*.yml"))
    assert cli.main(["bundle", "validate", "--root", str(project)]) == 1
    assert "include[2]: 'pipelines/*.yml' matches no file" in capsys.readouterr().err


def test_schema_patterns_are_translated_for_python(schema):
    import re

    pattern = bundle._python_regex(r"\$\{(var(\.\p{L}+([-_]*[\p{L}\p{N}]+)*(\[[0-9]+\])*)+)\}")
    assert re.fullmatch(pattern, "${var.cpu_cluster}") and re.fullmatch(pattern, "${var.größe2}")
    assert not re.fullmatch(pattern, "${var.}") and not re.fullmatch(pattern, "${var.2x}")


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


def _engines_extra() -> list[str]:
    """The wheel's `engines` extra (pyproject.toml): the bundle installs the faster inference engines too."""
    import tomllib

    with open(Path(__file__).parents[2] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["engines"]
