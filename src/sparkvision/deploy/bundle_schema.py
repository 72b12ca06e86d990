"""The official bundle JSON schema (``bundle-jsonschema.json`` of the Databricks CLI): finding it, checking a
file as written or a resolved configuration against it (each error named by file and YAML path), and the
fields it gives each resource kind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sparkvision.deploy._bundle_common import BundleError, yaml_path
from sparkvision.deploy.bundle_load import Bundle

SCHEMA_ENV = "SPARKVISION_BUNDLE_SCHEMA"


def schema_path(explicit: str | None = None, root: Path | None = None) -> Path | None:
    """The official bundle JSON schema: explicit, $SPARKVISION_BUNDLE_SCHEMA, or ../shared/databricks."""
    candidates = [explicit, os.environ.get(SCHEMA_ENV)]
    if root is not None:
        candidates.append(str(Path(root).resolve().parent / "shared" / "databricks" / "bundle-jsonschema.json"))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if explicit:
        raise BundleError([f"{explicit}: JSON schema not found"])
    return None


def _python_patterns(node):
    """The schema's patterns use \\p{L} / \\p{N}, which Python's re lacks: translate them."""
    if isinstance(node, dict):
        return {k: (_python_regex(v) if k == "pattern" and isinstance(v, str) else _python_patterns(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_python_patterns(v) for v in node]
    return node


def _python_regex(pattern: str) -> str:
    """Unicode classes as Python spells them: letter = [^\W\d_], number = \d, letter-or-number = [^\W_]."""
    return (pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d"))


_VALIDATORS: dict[str, Any] = {}


def _validator(path: Path):
    key = str(path.resolve())
    if key not in _VALIDATORS:
        try:
            from jsonschema import Draft202012Validator  # optional
        except ImportError:
            raise BundleError([f"{path}: checking the JSON schema needs jsonschema: pip install 'sparkvision[databricks]'"]) from None

        schema = _python_patterns(json.loads(path.read_text(encoding="utf-8")))
        _VALIDATORS[key] = Draft202012Validator(schema)
    return _VALIDATORS[key]


def _deepest(error):
    """For oneOf/anyOf failures, the error deepest in the document (where the offending key is); at equal
    depth a specific complaint (unknown key, missing field) beats "not valid under any" or the ${var} string form."""
    candidates = [error] + [_deepest(sub) for sub in error.context or ()]
    return max(candidates, key=lambda e: (len(e.absolute_path), e.validator not in ("oneOf", "anyOf", "type", "pattern")))


def schema_problems(document: dict, schema: Path, bundle: Bundle, prefix: str = "", target: str | None = None) -> list[str]:
    """Schema errors of ``document``: one file as written (``prefix`` names it), or the resolved
    configuration of ``target`` (each error named by the file and path where the key is written)."""
    out = []
    for error in sorted(_validator(schema).iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        deep = _deepest(error)
        path = tuple(deep.absolute_path)
        where = f"{prefix}: {yaml_path(path)}" if prefix else bundle.where(path, target, document)
        out.append(f"{where}: {deep.message}")
    return out


def resource_fields(schema_file: Path | None) -> dict[str, set[str]]:
    """``{kind: fields}`` of each resource kind in the official JSON schema (empty without a schema)."""
    if not schema_file:
        return {}
    defs = _validator(schema_file).schema.get("$defs", {})

    def get(ref: str):
        node = defs
        for part in ref.split("/")[2:]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node

    def obj(node):
        return next((alt for alt in node.get("oneOf", [node]) if alt.get("type") == "object"), {})

    resources = obj(get("#/$defs/github.com/databricks/cli/bundle/config.Resources"))
    out = {}
    for kind, prop in resources.get("properties", {}).items():
        item_ref = obj(get(prop.get("$ref", ""))).get("additionalProperties", {}).get("$ref", "")
        out[kind] = set(obj(get(item_ref)).get("properties", {}))
    return out
