"""What the bundle tests share: the targets and jobs, editing a copy of the bundle, and reading the resolved one."""

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from sparkvision.deploy import bundle, bundle_load

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "databricks" / "bundle-jsonschema.json"
TOKEN = "dapi" + "0123456789abcdef" * 2
CLASSIC, SERVERLESS = ["dev", "prod"], ["dev-serverless", "prod-serverless"]
TARGETS = CLASSIC + SERVERLESS
DEV, PROD = ["dev", "dev-serverless"], ["prod", "prod-serverless"]
JOBS = ("sparkvision_pipeline", "sparkvision_predict", "sparkvision_stream")
CLUSTER_FIELDS = {"job_cluster_key", "new_cluster", "existing_cluster_id"}
EXPERIMENT_REF = "${resources.experiments.sparkvision.name}"
MODEL_REF = ("${resources.registered_models.sparkvision_classifier.catalog_name}."
             "${resources.registered_models.sparkvision_classifier.schema_name}."
             "${resources.registered_models.sparkvision_classifier.name}")
SP = "6f1c2a4e-0000-4000-8000-00000000abcd"


def edit_yaml(path: Path, change) -> None:
    data = bundle_load.unshare(yaml.safe_load(path.read_text()))  # aliases (*classic) as copies: change one target
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def write_var_file(project: Path, target: str, values: dict) -> None:
    path = project / bundle.OVERRIDES_FILE.format(target=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def problems_of(project: Path, schema=None, target=None, **kw) -> str:
    with pytest.raises(bundle.BundleError) as info:
        bundle.validate(project, target, schema=str(schema) if schema else None, **kw)
    return "\n".join(info.value.problems)


def pipeline_job(data):
    return data["resources"]["jobs"]["sparkvision_pipeline"]


def compute_overlay(data, target, job="sparkvision_pipeline"):
    """A target's compute for a job in jobs/compute.yml."""
    return data["targets"][target]["resources"]["jobs"][job]


def jobs_of(resolved):
    return resolved["resources"]["jobs"]


def task_params(resolved, task, job="sparkvision_pipeline"):
    return next(t for t in jobs_of(resolved)[job]["tasks"] if t["task_key"] == task)["python_wheel_task"]["parameters"]


def mlflow_resources(resolved):
    return (resolved["resources"]["experiments"]["sparkvision"],
            resolved["resources"]["registered_models"]["sparkvision_classifier"])


def engines_extra() -> list[str]:
    """The wheel's `engines` extra (pyproject.toml): the bundle installs the faster inference engines too."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["engines"]
