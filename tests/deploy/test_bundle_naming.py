"""Names as a deployment gives them: development mode's prefixes, and resource references filled in offline."""

import pytest

from sparkvision.deploy import bundle, bundle_naming

from bundle_helpers import ROOT, TARGETS, DEV, PROD, SP, task_params, mlflow_resources


@pytest.mark.parametrize("target", TARGETS)
def test_jobs_get_the_names_as_deployed(target):
    """References, so development mode's prefixes follow; offline they resolve as the CLI names the resources."""
    result = bundle.validate(ROOT, target, {"service_principal": SP} if target in PROD else {})
    assert result["mode"] == ("development" if target in DEV else "production")
    named = bundle_naming.with_resource_references(result["config"], result["config"], result["mode"])
    if target in DEV:
        name = f"/Workspace/Users/${{workspace.current_user.userName}}/[dev ${{workspace.current_user.short_name}}] sparkvision-{target}"
        model = "main.sparkvision.dev_${workspace.current_user.short_name}_sparkvision_classifier"
        model += "_serverless" if target == "dev-serverless" else ""
    else:
        name, model = f"/Workspace/Users/{SP}/sparkvision-{target}", "main.sparkvision.sparkvision_classifier"
    assert task_params(named, "train")[-2:] == ["--set", f"mlflow.experiment={name}"]
    evaluate = task_params(named, "evaluate")
    assert evaluate[evaluate.index("--set") + 1] == f"mlflow.experiment={name}"
    assert evaluate[evaluate.index("--register") + 1] == model
    assert mlflow_resources(named)[0]["name"] == mlflow_resources(result["config"])[0]["name"]  # only the references change


def test_name_prefixes_follow_the_cli():
    assert bundle_naming.deployed_name("registered_models", "m", "[dev jane_doe] ") == "dev_jane_doe_m"
    assert bundle_naming.deployed_name("registered_models", "m", "[Dev Jane.Doe] ") == "dev_jane_doe_m"
    assert bundle_naming.deployed_name("experiments", "/Workspace/Users/j@x.com/e", "[dev j] ") == "/Workspace/Users/j@x.com/[dev j] e"
    assert bundle_naming.deployed_name("jobs", "p", "[dev j] ") == "[dev j] p"
    assert bundle_naming.deployed_name("volumes", "data", "[dev j] ") == "data"
    assert bundle_naming.deployed_name("registered_models", "m", "") == "m"
    assert bundle_naming.name_prefix({"presets": {"name_prefix": "ci_"}}, "development") == "ci_"
    assert bundle_naming.name_prefix({}, "development") == bundle_naming.DEV_PREFIX and bundle_naming.name_prefix({}, "production") == ""
    ref = {"p": "x=${resources.experiments.e.name}", "q": "${resources.experiments.e.id}", "r": "${resources.jobs.nope.name}"}
    resolved = {"resources": {"experiments": {"e": {"name": "/Shared/e"}}}}
    assert bundle_naming.with_resource_references(ref, resolved, prefix="[dev j] ") == {
        "p": "x=/Shared/[dev j] e", "q": "${resources.experiments.e.id}", "r": "${resources.jobs.nope.name}"}
