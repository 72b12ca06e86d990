"""What the bundle modules share: the file names, the ``${...}`` reference pattern, :class:`BundleError`,
and merging YAML trees as the Databricks CLI merges them (includes into the root, a target into the base)."""

from __future__ import annotations

import copy
import re

from sparkvision.deploy import clusters

BUNDLE_FILE = "bundle.yml"
CLUSTERS_INCLUDE = "infra/databricks/clusters.yml"
OVERRIDES_FILE = ".databricks/bundle/{target}/variable-overrides.json"  # the CLI's per-target variable file
REF = re.compile(r"\$\{([A-Za-z][\w.\-\[\]]*)\}")
# Sections a target may override, as the Databricks CLI merges them.
TARGET_SECTIONS = ("bundle", "workspace", "artifacts", "resources", "sync", "permissions", "run_as", "presets",
                   "experimental")
KEYED_LISTS = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}
# Data security modes that only exist for clusters with a `kind` (the current, "simple form" cluster spec).
KIND_MODES = ("DATA_SECURITY_MODE_AUTO", "DATA_SECURITY_MODE_STANDARD", "DATA_SECURITY_MODE_DEDICATED")


class BundleError(ValueError):
    """The bundle is invalid; ``problems`` holds one line per problem (file: yaml.path: what)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def yaml_path(path) -> str:
    return clusters.dotted_path(path) or "(top level)"


def ref_parts(ref: str) -> list[str]:
    """``resources.jobs.x.name`` -> ``["resources", "jobs", "x", "name"]`` (list indexes dropped)."""
    return re.findall(r"[^.\[\]]+", ref)


def deep_merge(dest, src):
    """Merge ``src`` into ``dest``: mappings by key, task-like lists by their key field, other values replaced."""
    if isinstance(dest, dict) and isinstance(src, dict):
        for key, value in src.items():
            if key in dest and isinstance(dest[key], (dict, list)) and isinstance(value, type(dest[key])):
                if isinstance(value, list) and key not in KEYED_LISTS:
                    dest[key] = copy.deepcopy(value)
                else:
                    dest[key] = deep_merge(dest[key], value) if isinstance(value, dict) else _merge_keyed(dest[key], value, KEYED_LISTS[key])
            else:
                dest[key] = copy.deepcopy(value)
        return dest
    if isinstance(dest, list) and isinstance(src, list):
        dest.extend(copy.deepcopy(src))
        return dest
    return copy.deepcopy(src)


def _merge_keyed(dest: list, src: list, key: str) -> list:
    index = {item.get(key): item for item in dest if isinstance(item, dict)}
    for item in src:
        if isinstance(item, dict) and item.get(key) in index:
            deep_merge(index[item[key]], item)
        else:
            dest.append(copy.deepcopy(item))
    return dest
