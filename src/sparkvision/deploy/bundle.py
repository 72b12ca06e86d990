"""Offline checks of the Databricks bundle (``bundle.yml`` + includes), without the CLI or a workspace.

The public entry: :func:`validate` reads the bundle (:mod:`~sparkvision.deploy.bundle_load`), resolves a
target and its variables (:mod:`~sparkvision.deploy.bundle_resolve`) and checks the result against the
official JSON schema (:mod:`~sparkvision.deploy.bundle_schema`) and our own rules
(:mod:`~sparkvision.deploy.bundle_check`): entry points, referenced files, task dependencies, each task's
compute, unused job clusters and environments, credentials, resource references and keys, MLflow names, the
run-time stack's pins, and that the generated job-cluster include (:func:`render_clusters_include`) matches
``infra/clusters``. Every problem names the file and the YAML path where the offending key is written, a
target's override included. Names as a deployment gives them: :mod:`~sparkvision.deploy.bundle_naming`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sparkvision.deploy import bundle_check, clusters
from sparkvision.deploy._bundle_common import (BUNDLE_FILE, CLUSTERS_INCLUDE, KIND_MODES, OVERRIDES_FILE, BundleError,
                                               mapping)
from sparkvision.deploy.bundle_load import Bundle, default_target, load, read_yaml, target_mode, targets
from sparkvision.deploy.bundle_resolve import resolve, resolve_with_variables
from sparkvision.deploy.bundle_schema import schema_path, schema_problems

__all__ = ["BUNDLE_FILE", "CLUSTERS_INCLUDE", "OVERRIDES_FILE", "Bundle", "BundleError", "default_target", "load",
           "render_clusters_include", "resolve", "resolve_with_variables", "target_mode", "targets", "validate"]


def render_clusters_include(spec_dir: str | os.PathLike) -> str:
    """``infra/databricks/clusters.yml``: each cluster spec with a databricks section as a complex variable."""
    variables = {}
    for path in sorted(Path(spec_dir).glob("*.yml")):
        spec = clusters.load_spec(path)
        if not spec.databricks:
            continue
        var = spec.name.replace("-", "_")
        rel = f"infra/clusters/{path.name}"
        cluster = clusters.databricks_cluster(spec)
        if cluster.get("data_security_mode") in KIND_MODES:
            cluster.setdefault("kind", "CLASSIC_PREVIEW")  # the DATA_SECURITY_MODE_* names need a kind
        variables[f"{var}_cluster"] = {"description": f"Job cluster from {rel}", "type": "complex", "default": cluster}
        if spec.maven:
            variables[f"{var}_libraries"] = {"description": f"Task libraries (Maven) from {rel}", "type": "complex",
                                             "default": clusters.databricks_libraries(spec)}
    header = ("# Generated from infra/clusters/*.yml by `sparkvision bundle clusters --write`: edit those files,\n"
              "# not this one (`sparkvision bundle validate` fails when it is stale).\n")
    return header + yaml.safe_dump({"variables": variables}, sort_keys=False, width=110)


def validate(root: str | os.PathLike = ".", target: str | None = None, overrides: dict[str, str] | None = None,
             schema: str | None = None) -> dict[str, Any]:
    """Check the bundle for ``target`` (default: the default target); return a summary or raise BundleError."""
    bundle = load(root)
    problems = []
    schema_file = schema_path(schema, bundle.root)
    if schema_file:  # each file as written, so a typo is reported in the file that has it
        for rel in bundle.files:
            problems += schema_problems(read_yaml(bundle.root, rel), schema_file, bundle, prefix=rel)
    expected = render_clusters_include(bundle.root / "infra" / "clusters") if (bundle.root / "infra" / "clusters").is_dir() else None
    current = bundle.root / CLUSTERS_INCLUDE
    if expected is not None and (not current.is_file() or current.read_text(encoding="utf-8") != expected):
        problems.append(f"{CLUSTERS_INCLUDE}: stale or missing: run `sparkvision bundle clusters --write`")
    if problems:
        raise BundleError(problems)
    target = target or default_target(bundle)
    resolved, values = resolve_with_variables(bundle, target, overrides)
    outs, problems = bundle_check.artifact_outputs(bundle, resolved)
    problems += bundle_check.job_problems(bundle, resolved, outs, target)
    problems += bundle_check.credential_problems(bundle, resolved, target)
    if schema_file:
        problems += schema_problems(resolved, schema_file, bundle, target=target)
    problems += bundle_check.typed_job_problems(bundle, resolved)
    problems += bundle_check.stack_problems(bundle, resolved, target)
    problems += bundle_check.resource_key_problems(bundle, resolved, target)
    problems += bundle_check.resource_reference_problems(bundle, resolved, target, schema_file)
    problems += bundle_check.mlflow_problems(bundle, resolved, target)
    if problems:
        raise BundleError(problems)
    jobs = mapping(mapping(resolved.get("resources")).get("jobs"))
    return {"target": target, "jobs": {n: len(j.get("tasks") or []) for n, j in jobs.items()},
            "schema": str(schema_file) if schema_file else None, "config": resolved, "variables": values,
            "mode": target_mode(bundle, target)}
