"""Names as a deployment gives them: the prefix development mode (or ``presets.name_prefix``) puts before
resource names, the name a resource is deployed under, and ``${resources.KIND.KEY.FIELD}`` references
filled in where the value is known before deployment (for one-time runs)."""

from __future__ import annotations

import re

from sparkvision.deploy._bundle_common import REF, mapping, ref_parts

# The name field of each resource kind that development mode (or presets.name_prefix) prefixes, and how:
# "plain" puts the prefix in front, "path" in front of the last path part (experiments are workspace paths),
# "normalized" in front as lower-case letters, digits and underscores (Unity Catalog names: dev_<you>_).
# Volumes and catalogs are not prefixed. As the Databricks CLI's ApplyPresets does.
_PREFIXED_NAMES = {"jobs": ("name", "plain"), "pipelines": ("name", "plain"), "models": ("name", "plain"),
                   "clusters": ("cluster_name", "plain"), "sql_warehouses": ("name", "plain"),
                   "dashboards": ("display_name", "plain"), "alerts": ("display_name", "plain"),
                   "experiments": ("name", "path"), "registered_models": ("name", "normalized"),
                   "model_serving_endpoints": ("name", "normalized"), "schemas": ("name", "normalized")}
DEV_PREFIX = "[dev ${workspace.current_user.short_name}] "


def name_prefix(resolved: dict, mode: str | None) -> str:
    """The prefix the CLI puts before resource names: ``presets.name_prefix``, else development mode's
    ``[dev <short name>] ``, else none."""
    presets = mapping(resolved.get("presets"))
    if presets.get("name_prefix") is not None:
        return str(presets["name_prefix"])
    return DEV_PREFIX if mode == "development" else ""


def _normalized_prefix(prefix: str) -> str:
    """``[dev jane_doe] `` as Unity Catalog names take it: ``dev_jane_doe_`` (the CLI's normalizePrefix)."""
    text = prefix.replace("[", "").strip(" ")
    suffix = "_" if text.endswith("]") else ""
    parts = re.split(r"(\$\{[^}]*\})", text.lower())  # ${workspace.current_user.short_name}: already normalized
    text = "".join(p if p.startswith("${") else "".join(c if c.isalnum() else "_" for c in p) for p in parts)
    return re.sub(r"_+", "_", text).strip("_") + suffix


def deployed_name(kind: str, name: str, prefix: str) -> str:
    """The name a resource of ``kind`` declared as ``name`` gets with the CLI's name ``prefix``."""
    how = _PREFIXED_NAMES.get(kind, (None, None))[1]
    if not prefix or how is None:
        return name
    if how == "path":
        head, sep, tail = name.rpartition("/")
        return f"{head}{sep}{prefix}{tail}"
    if how == "normalized":
        return _normalized_prefix(prefix) + name
    return prefix + name


def with_resource_references(node, resolved: dict, mode: str | None = None, prefix: str | None = None):
    """``node`` with each ``${resources.KIND.KEY.FIELD}`` whose value is known before deployment replaced by it:
    a field the resource declares, its name as the CLI deploys it (``prefix``, default :func:`name_prefix` of
    ``mode``). What only a deployment knows (``.id``) stays a reference."""
    resources = mapping(resolved.get("resources"))
    prefix = name_prefix(resolved, mode) if prefix is None else prefix

    def value(ref: str):
        parts = ref_parts(ref)
        if len(parts) != 4:
            return None
        kind, key, name = parts[1:]
        field_value = mapping(mapping(resources.get(kind)).get(key)).get(name)
        if not isinstance(field_value, (str, int, float)) or isinstance(field_value, bool):
            return None
        if name == _PREFIXED_NAMES.get(kind, (None,))[0]:
            return deployed_name(kind, str(field_value), prefix)
        return str(field_value)

    def sub(item):
        if isinstance(item, dict):
            return {k: sub(v) for k, v in item.items()}
        if isinstance(item, list):
            return [sub(v) for v in item]
        if isinstance(item, str) and "${resources." in item:
            return REF.sub(replace, item)
        return item

    def replace(match):
        known = value(match.group(1)) if match.group(1).startswith("resources.") else None
        return match.group(0) if known is None else known

    return sub(node)
