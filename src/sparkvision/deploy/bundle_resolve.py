"""Resolving a bundle for a target: the target merged into the base configuration, the variables' values
(``--var``, ``BUNDLE_VAR_*``, ``.databricks/bundle/TARGET/variable-overrides.json``, target values, defaults)
and every ``${var.*}``, ``${bundle.*}`` and ``${workspace.*}`` substituted; references known only at deploy
(``${workspace.current_user.*}``, ``${resources.*}``) stay as written."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

from sparkvision.deploy._bundle_common import (BUNDLE_FILE, OVERRIDES_FILE, REF, TARGET_SECTIONS, BundleError,
                                               deep_merge, mapping, yaml_path)
from sparkvision.deploy.bundle_load import Bundle, default_target


def resolve(bundle: Bundle, target: str | None = None, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The configuration the CLI would deploy for ``target``: target merged in, variables substituted."""
    return resolve_with_variables(bundle, target, overrides)[0]


def resolve_with_variables(bundle: Bundle, target: str | None = None,
                           overrides: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`resolve`, and the variables' resolved values."""
    doc = copy.deepcopy(bundle.config)
    all_targets = doc.pop("targets", None) or {}
    target = target or default_target(bundle)
    if target not in all_targets:
        raise BundleError([f"{BUNDLE_FILE}: targets: unknown target {target!r}; defined: {', '.join(all_targets)}"])
    chosen = all_targets[target] or {}
    for section in TARGET_SECTIONS:
        if section not in chosen:
            continue
        if section == "run_as":  # replaced, not merged (as the CLI does)
            doc[section] = copy.deepcopy(chosen[section])
        else:
            doc[section] = deep_merge(doc.get(section, {} if isinstance(chosen[section], dict) else []), chosen[section])
    values = _variable_values(bundle, doc, chosen, target, overrides or {})
    merged = copy.deepcopy(doc)

    def where(path):
        return bundle.where(path, target, merged)

    problems: list[str] = []
    context = {"bundle": {**mapping(doc.get("bundle")), "target": target}, "var": values, "workspace": {}}
    # The workspace first: ${workspace.root_path} and friends then read resolved values.
    if "workspace" in doc:
        doc["workspace"] = _substitute(doc["workspace"], context, ("workspace",), where, problems)
        context["workspace"] = mapping(doc["workspace"])
    for section in list(doc):
        if section not in ("variables", "workspace"):
            doc[section] = _substitute(doc[section], context, (section,), where, problems)
    if problems:
        raise BundleError(problems)
    return doc, values


def overrides_file(bundle: Bundle, target: str) -> Path:
    """The CLI's per-target variable file (values for complex variables too): not part of the bundle's files."""
    return bundle.root / OVERRIDES_FILE.format(target=target)


def _read_overrides_file(bundle: Bundle, target: str, problems: list[str]) -> dict[str, Any]:
    path = overrides_file(bundle, target)
    if not path.is_file():
        return {}
    rel = OVERRIDES_FILE.format(target=target)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        problems.append(f"{rel}: not valid JSON: {exc}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{rel}: must be a JSON object of variable names and values")
        return {}
    return data


def _variable_values(bundle, doc, chosen, target, overrides) -> dict[str, Any]:
    declared = mapping(doc.get("variables"))
    env = {k[len("BUNDLE_VAR_"):]: v for k, v in os.environ.items() if k.startswith("BUNDLE_VAR_")}
    problems, values = [], {}
    from_file = _read_overrides_file(bundle, target, problems)
    file_rel = OVERRIDES_FILE.format(target=target)
    target_vars = mapping(chosen.get("variables"))
    labels = [(target_vars, lambda n: bundle.where(("targets", target, "variables", n))),
              (from_file, lambda n: f"{file_rel}: {n}"), (env, lambda n: f"BUNDLE_VAR_{n}"), (overrides, lambda n: f"--var {n}")]
    for given, label in labels:
        problems += [f"{label(n)}: variable {n!r} is not declared under variables" for n in given if n not in declared]
    for name, decl in declared.items():
        decl = decl if isinstance(decl, dict) else {"default": decl}
        complex_ = decl.get("type") == "complex"
        if complex_ and (name in overrides or name in env):
            flag = "--var" if name in overrides else "BUNDLE_VAR_" + name
            problems.append(f"{flag}: {name!r} is a complex variable: the Databricks CLI does not take those from "
                            f"--var or BUNDLE_VAR_*; set it in targets.{target}.variables or in {file_rel}")
        elif name in overrides:
            values[name] = overrides[name]
        elif name in env:
            values[name] = env[name]
        elif name in from_file:
            values[name] = from_file[name]
        elif name in target_vars and (complex_ or not isinstance(target_vars[name], dict)):
            values[name] = target_vars[name]  # a complex value, or the shorthand for {default: v}
        else:
            in_target = name in target_vars
            source = target_vars[name] if in_target else decl  # the target's {default | lookup}, or the declaration's
            if "default" in source:
                values[name] = source["default"]
            elif "lookup" in source:
                values[name] = "${var." + name + "}"  # resolved by the CLI against the workspace
            elif in_target:
                problems.append(f"{bundle.where(('targets', target, 'variables', name))}: neither a value, a default "
                                "nor a lookup")
            else:
                problems.append(f"{bundle.file_of(('variables', name))}: variables.{name}: no value: give it a default, "
                                f"a target value, --var {name}=VALUE or BUNDLE_VAR_{name}")
    if problems:
        raise BundleError(problems)
    # Variables may refer to each other and to ${bundle.*}: substitute until nothing changes.
    context = {"bundle": {**mapping(doc.get("bundle")), "target": target}, "var": values,
               "workspace": mapping(doc.get("workspace"))}

    def where(path):
        return f"{bundle.file_of(path)}: {yaml_path(path)}"

    for _ in range(10):
        before = json.dumps(values, sort_keys=True, default=str)
        for name in values:
            values[name] = _substitute(values[name], context, ("variables", name), where, problems)
        if problems:
            raise BundleError(problems)
        if json.dumps(values, sort_keys=True, default=str) == before:
            return values
    raise BundleError([f"{BUNDLE_FILE}: variables: references do not settle (a cycle?)"])


def _lookup(context: dict, ref: str):
    """Value of ``var.x.y`` / ``bundle.name`` / ``workspace.root_path``; KeyError when unknown."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", ref)
    node: Any = context
    for part in parts:
        if part.startswith("["):
            node = node[int(part[1:-1])]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(ref)
    return node


def _substitute(node, context, path, where, problems):
    """``node`` with ``${...}`` references replaced; ``where(path)`` names a problem's file and YAML path."""
    if isinstance(node, dict):
        return {k: _substitute(v, context, path + (k,), where, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, context, path + (i,), where, problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = REF.fullmatch(node)

    def value(ref: str):
        head = ref.split(".", 1)[0]
        try:
            return _lookup(context, ref)
        except (KeyError, IndexError, TypeError):
            if head == "var":
                problems.append(f"{where(path)}: unknown variable ${{{ref}}}")
            return "${" + ref + "}"  # workspace.current_user, resources.*, artifacts.*: known only at deploy

    if whole:
        return value(whole.group(1))

    def text(match):
        v = value(match.group(1))
        if isinstance(v, (dict, list)):
            problems.append(f"{where(path)}: complex value ${{{match.group(1)}}} inside a string")
            return match.group(0)
        return str(v).lower() if isinstance(v, bool) else str(v)

    return REF.sub(text, node)
