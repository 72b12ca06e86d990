"""Offline checks of the Databricks bundle (``bundle.yml`` + includes), without the CLI or a workspace.

:func:`load` reads the root file and its includes, :func:`resolve` applies a target and the variables
(``--var``, ``BUNDLE_VAR_*``, ``.databricks/bundle/TARGET/variable-overrides.json``, target values,
defaults) and :func:`validate` checks the result: the official JSON schema, entry points against the
wheel's metadata, referenced files, task dependencies, each task's compute (a declared job cluster, or a
declared serverless environment), job clusters and environments no task uses, credentials, that every
``${resources.KIND.KEY.FIELD}`` reference names a declared resource, resource keys unique across kinds,
MLflow experiments and Unity Catalog registered models named as the workspace takes them, and that the
generated job-cluster include matches ``infra/clusters``. Every problem names the file and the YAML path
where the offending key is written, a target's override included. :func:`with_resource_references` fills
in the references known before deployment (names, as development mode prefixes them), for one-time runs.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparkvision import secrets
from sparkvision.deploy import clusters

BUNDLE_FILE = "bundle.yml"
CLUSTERS_INCLUDE = "infra/databricks/clusters.yml"
SCHEMA_ENV = "SPARKVISION_BUNDLE_SCHEMA"
_REF = re.compile(r"\$\{([A-Za-z][\w.\-\[\]]*)\}")
# Sections a target may override, as the Databricks CLI merges them.
_TARGET_SECTIONS = ("bundle", "workspace", "artifacts", "resources", "sync", "permissions", "run_as", "presets",
                    "experimental")
_KEYED_LISTS = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}
OVERRIDES_FILE = ".databricks/bundle/{target}/variable-overrides.json"  # the CLI's per-target variable file
_CLUSTER_FIELDS = ("job_cluster_key", "new_cluster", "existing_cluster_id")
# Data security modes that only exist for clusters with a `kind` (the current, "simple form" cluster spec).
_KIND_MODES = ("DATA_SECURITY_MODE_AUTO", "DATA_SECURITY_MODE_STANDARD", "DATA_SECURITY_MODE_DEDICATED")
# Resource fields a ${resources.KIND.KEY.FIELD} reference may name though no file writes them: set at deploy.
_DEPLOY_FIELDS = ("id",)
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


class BundleError(ValueError):
    """The bundle is invalid; ``problems`` holds one line per problem (file: yaml.path: what)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Bundle:
    root: Path
    config: dict[str, Any]
    files: list[str] = field(default_factory=list)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # each file as written (anchors expanded)

    def file_of(self, path: tuple) -> str:
        """The file that defines the YAML path ``path`` (resources.jobs.X... or variables.X...)."""
        for n in (3, 2):
            if tuple(path[:n]) in self.origin:
                return self.origin[tuple(path[:n])]
        return BUNDLE_FILE

    def locate(self, path: tuple, target: str | None = None, resolved: Any = None) -> tuple[str, tuple]:
        """Where the value at ``path`` of the resolved configuration is written: ``(file, path in that file)``.

        A target's override (``targets.T.resources...``) wins over the base definition, as when the CLI
        merges them; list items of tasks, job clusters and environments are matched by their key, so
        ``tasks[2]`` of the merged job can be ``targets.dev.resources.jobs.x.tasks[0]`` of another file. Where
        no file has the whole path (a value that came from a variable), the deepest written key is named."""
        path = tuple(path)
        roots = []
        if target and path and path[0] in _TARGET_SECTIONS:
            roots += [(f, ("targets", target)) for f in reversed(self.files)]
        roots += [(f, ()) for f in reversed(self.files)]
        best = None
        for rel, prefix in roots:
            node = self.raw.get(rel)
            for key in prefix:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                continue
            matched, translated = _walk(node, path, resolved)
            if matched == len(path):
                return rel, prefix + translated
            if matched and (best is None or matched > best[0]):
                best = (matched, rel, prefix + translated + path[matched:])
        if best is not None and best[0] >= min(len(path), 3):
            return best[1], best[2]
        return self.file_of(path), path

    def where(self, path: tuple, target: str | None = None, resolved: Any = None) -> str:
        """``file: yaml.path`` for a problem at ``path`` of the resolved configuration."""
        rel, in_file = self.locate(path, target, resolved)
        return f"{rel}: {yaml_path(in_file)}"


def _walk(node, path: tuple, resolved) -> tuple[int, tuple]:
    """How much of ``path`` (a path in the merged configuration ``resolved``) exists in ``node`` (one file's
    data), and that much of the path as the file spells it (keyed list items by their key)."""
    out: list = []
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            if not isinstance(node, list) or not isinstance(resolved, list) or seg >= len(resolved):
                return i, tuple(out)
            keyfield = _KEYED_LISTS.get(path[i - 1]) if i else None
            if keyfield and isinstance(resolved[seg], dict):
                want = resolved[seg].get(keyfield)
                idx = next((j for j, item in enumerate(node) if isinstance(item, dict) and item.get(keyfield) == want), None)
            else:
                idx = seg if seg < len(node) else None
            if idx is None:
                return i, tuple(out)
            node, resolved = node[idx], resolved[seg]
            out.append(idx)
        else:
            if not isinstance(node, dict) or seg not in node:
                return i, tuple(out)
            node = node[seg]
            resolved = resolved.get(seg) if isinstance(resolved, dict) else None
            out.append(seg)
    return len(path), tuple(out)


def yaml_path(path) -> str:
    return clusters.dotted_path(path) or "(top level)"


def _unshare(node):
    """A tree without shared nodes: YAML aliases (``*classic``) and merge keys (``<<: *dev``) load as one
    object in several places, and merging a target into one of them must not change the others."""
    if isinstance(node, dict):
        return {k: _unshare(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshare(v) for v in node]
    return node


def _read_yaml(root: Path, rel: str) -> Any:
    try:
        return _unshare(yaml.safe_load((root / rel).read_text(encoding="utf-8")) or {})
    except FileNotFoundError:
        raise BundleError([f"{rel}: not found"]) from None
    except yaml.YAMLError as exc:
        raise BundleError([f"{rel}: not valid YAML: {exc}"]) from None


def load(root: str | os.PathLike = ".") -> Bundle:
    """``bundle.yml`` and every file its ``include`` globs match, merged as the CLI merges them."""
    root = Path(root)
    config = _read_yaml(root, BUNDLE_FILE)
    if not isinstance(config, dict):
        raise BundleError([f"{BUNDLE_FILE}: the top level must be a mapping"])
    bundle = Bundle(root, config, [BUNDLE_FILE], raw={BUNDLE_FILE: copy.deepcopy(config)})
    problems = []
    for section in ("resources", "variables"):
        for key, value in _mapping(config.get(section)).items():
            for name in (_mapping(value) if section == "resources" else {key: None}):
                bundle.origin[(section, key, name) if section == "resources" else (section, key)] = BUNDLE_FILE
    for i, pattern in enumerate(config.get("include") or []):
        matches = sorted(glob.glob(str(root / pattern)))
        if not matches:
            problems.append(f"{BUNDLE_FILE}: include[{i}]: {pattern!r} matches no file")
        for path in matches:
            rel = os.path.relpath(path, root)
            data = _read_yaml(root, rel)
            if not isinstance(data, dict):
                problems.append(f"{rel}: the top level must be a mapping")
                continue
            bundle.files.append(rel)
            bundle.raw[rel] = copy.deepcopy(data)
            problems += _merge_include(bundle, data, rel)
    if problems:
        raise BundleError(problems)
    return bundle


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _merge_include(bundle: Bundle, data: dict, rel: str) -> list[str]:
    problems = []
    for section, value in data.items():
        if section == "resources":
            for kind, items in _mapping(value).items():
                dest = bundle.config.setdefault("resources", {}).setdefault(kind, {})
                for name, body in _mapping(items).items():
                    if name in dest:
                        problems.append(f"{rel}: resources.{kind}.{name}: already defined in "
                                        f"{bundle.origin.get(('resources', kind, name), BUNDLE_FILE)}")
                    dest[name] = body
                    bundle.origin[("resources", kind, name)] = rel
        elif section == "variables":
            dest = bundle.config.setdefault("variables", {})
            for name, body in _mapping(value).items():
                if name in dest:
                    problems.append(f"{rel}: variables.{name}: already defined in "
                                    f"{bundle.origin.get(('variables', name), BUNDLE_FILE)}")
                dest[name] = body
                bundle.origin[("variables", name)] = rel
        elif section in ("targets", "artifacts", "sync", "permissions", "presets"):
            _deep_merge(bundle.config.setdefault(section, {} if isinstance(value, dict) else []), value)
        else:
            problems.append(f"{rel}: {section}: not allowed in an included file "
                            "(resources, variables, targets, artifacts, sync, permissions, presets)")
    return problems


def _deep_merge(dest, src):
    """Merge ``src`` into ``dest``: mappings by key, task-like lists by their key field, other values replaced."""
    if isinstance(dest, dict) and isinstance(src, dict):
        for key, value in src.items():
            if key in dest and isinstance(dest[key], (dict, list)) and isinstance(value, type(dest[key])):
                if isinstance(value, list) and key not in _KEYED_LISTS:
                    dest[key] = copy.deepcopy(value)
                else:
                    dest[key] = _deep_merge(dest[key], value) if isinstance(value, dict) else _merge_keyed(dest[key], value, _KEYED_LISTS[key])
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
            _deep_merge(index[item[key]], item)
        else:
            dest.append(copy.deepcopy(item))
    return dest


def targets(bundle: Bundle) -> list[str]:
    return list(_mapping(bundle.config.get("targets")))


def default_target(bundle: Bundle) -> str:
    defaults = [name for name, t in _mapping(bundle.config.get("targets")).items() if _mapping(t).get("default")]
    if len(defaults) > 1:
        raise BundleError([f"{BUNDLE_FILE}: targets: more than one default target ({', '.join(defaults)})"])
    if defaults:
        return defaults[0]
    names = targets(bundle)
    if not names:
        raise BundleError([f"{BUNDLE_FILE}: targets: no target defined"])
    return names[0]


def resolve(bundle: Bundle, target: str | None = None, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The configuration the CLI would deploy for ``target``: target merged in, variables substituted."""
    return resolve_with_variables(bundle, target, overrides)[0]


def resolve_with_variables(bundle: Bundle, target: str | None = None,
                           overrides: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`resolve`, and the variables' resolved values."""
    cfg = copy.deepcopy(bundle.config)
    all_targets = cfg.pop("targets", None) or {}
    target = target or default_target(bundle)
    if target not in all_targets:
        raise BundleError([f"{BUNDLE_FILE}: targets: unknown target {target!r}; defined: {', '.join(all_targets)}"])
    chosen = all_targets[target] or {}
    for section in _TARGET_SECTIONS:
        if section not in chosen:
            continue
        if section == "run_as":  # replaced, not merged (as the CLI does)
            cfg[section] = copy.deepcopy(chosen[section])
        else:
            cfg[section] = _deep_merge(cfg.get(section, {} if isinstance(chosen[section], dict) else []), chosen[section])
    values = _variable_values(bundle, cfg, chosen, target, overrides or {})
    merged = copy.deepcopy(cfg)

    def where(path):
        return bundle.where(path, target, merged)

    problems: list[str] = []
    context = {"bundle": {**_mapping(cfg.get("bundle")), "target": target}, "var": values, "workspace": {}}
    # The workspace first: ${workspace.root_path} and friends then read resolved values.
    if "workspace" in cfg:
        cfg["workspace"] = _substitute(cfg["workspace"], context, ("workspace",), where, problems)
        context["workspace"] = _mapping(cfg["workspace"])
    for section in list(cfg):
        if section not in ("variables", "workspace"):
            cfg[section] = _substitute(cfg[section], context, (section,), where, problems)
    if problems:
        raise BundleError(problems)
    return cfg, values


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


def _variable_values(bundle, cfg, chosen, target, overrides) -> dict[str, Any]:
    declared = _mapping(cfg.get("variables"))
    env = {k[len("BUNDLE_VAR_"):]: v for k, v in os.environ.items() if k.startswith("BUNDLE_VAR_")}
    problems, values = [], {}
    from_file = _read_overrides_file(bundle, target, problems)
    file_rel = OVERRIDES_FILE.format(target=target)
    target_vars = _mapping(chosen.get("variables"))
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
        elif name in target_vars:
            v = target_vars[name]
            if complex_ or not isinstance(v, dict):
                values[name] = v  # a complex value, or the shorthand for {default: v}
            elif "default" in v:
                values[name] = v["default"]
            elif "lookup" in v:
                values[name] = "${var." + name + "}"  # resolved by the CLI against the workspace
            else:
                problems.append(f"{bundle.where(('targets', target, 'variables', name))}: neither a value, a default "
                                "nor a lookup")
        elif "default" in decl:
            values[name] = decl["default"]
        elif "lookup" in decl:
            values[name] = "${var." + name + "}"  # resolved by the CLI against the workspace
        else:
            problems.append(f"{bundle.file_of(('variables', name))}: variables.{name}: no value: give it a default, "
                            f"a target value, --var {name}=VALUE or BUNDLE_VAR_{name}")
    if problems:
        raise BundleError(problems)
    # Variables may refer to each other and to ${bundle.*}: substitute until nothing changes.
    context = {"bundle": {**_mapping(cfg.get("bundle")), "target": target}, "var": values,
               "workspace": _mapping(cfg.get("workspace"))}

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
    whole = _REF.fullmatch(node)

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

    return _REF.sub(text, node)


# ---- checks --------------------------------------------------------------------------------------------


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
            from jsonschema import Draft202012Validator
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


def _project_scripts(root: Path) -> tuple[str | None, set[str]]:
    """Package name and entry points from pyproject.toml: the metadata the wheel is built with."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from importlib import metadata

        dist = metadata.distribution("sparkvision")
        return dist.metadata["Name"], {ep.name for ep in dist.entry_points}
    path = root / "pyproject.toml"
    if not path.is_file():
        return None, set()
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    names = set(project.get("scripts", {}))
    for group in project.get("entry-points", {}).values():
        names |= set(group)
    return project.get("name"), names


def _stack_ranges(root: Path) -> dict[str, str]:
    """``{package: specifier}`` of the wheel's ``stack`` extra in pyproject.toml (what a job needs at run time)."""
    try:
        import tomllib
        from packaging.requirements import Requirement
    except ImportError:  # Python 3.10: nothing to compare with
        return {}
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    extras = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("optional-dependencies", {})
    return {Requirement(r).name: str(Requirement(r).specifier) for r in extras.get("stack", [])}


def _stack_problems(bundle: Bundle, cfg: dict, target: str) -> list[str]:
    """Packages of the run-time stack that tasks install (``pypi`` libraries, serverless dependencies) must
    carry the ranges of the wheel's ``stack`` extra: one place for them, pyproject.toml."""
    from packaging.requirements import InvalidRequirement, Requirement

    ranges = _stack_ranges(bundle.root)
    out = []
    for name, job in _mapping(_mapping(cfg.get("resources")).get("jobs")).items():
        specs = []
        for i, task in enumerate(job.get("tasks") or []):
            for k, lib in enumerate(task.get("libraries") or []):
                pkg = _mapping(_mapping(lib).get("pypi")).get("package")
                if pkg:
                    specs.append((("resources", "jobs", name, "tasks", i, "libraries", k, "pypi", "package"), pkg))
        for i, env in enumerate(job.get("environments") or []):
            for k, dep in enumerate(_mapping(_mapping(env).get("spec")).get("dependencies") or []):
                if isinstance(dep, str) and "/" not in dep and not dep.endswith(".whl"):  # a pip requirement
                    specs.append((("resources", "jobs", name, "environments", i, "spec", "dependencies", k), dep))
        for path, text in specs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.name in ranges and str(req.specifier) != ranges[req.name]:
                out.append(f"{bundle.where(path, target, cfg)}: {text!r}: the run-time stack's range for {req.name} is "
                           f"{ranges[req.name]!r} (pyproject.toml, extra 'stack')")
    return out


def _is_local_path(ref: str) -> bool:
    return not ref.startswith(("/", "dbfs:", "s3:", "s3a:", "abfss:", "gs:", "${"))


def _job_problems(bundle: Bundle, cfg: dict, artifacts_out: list[Path], target: str | None = None) -> list[str]:
    problems = []
    package, entry_points = _project_scripts(bundle.root)

    def where(path):
        return bundle.where(path, target, cfg)

    def local_wheel_problem(path, whl: str) -> str | None:
        """A relative wheel path, relative to the file that writes it: it must match a file or a whl artifact's output."""
        rel, _ = bundle.locate(path, target, cfg)
        wheel = ((bundle.root / rel).parent / whl).resolve()
        if glob.glob(str(wheel)) or any(wheel.parent == out for out in artifacts_out):
            return None
        return f"{where(path)}: {whl!r} matches no file and no whl artifact builds into that folder"

    for name, job in _mapping(_mapping(cfg.get("resources")).get("jobs")).items():
        base = ("resources", "jobs", name)
        tasks = job.get("tasks") or []
        keys = [t.get("task_key") for t in tasks]
        clusters_defined = [c.get("job_cluster_key") for c in job.get("job_clusters") or []]
        envs_defined = [e.get("environment_key") for e in job.get("environments") or [] if isinstance(e, dict)]
        clusters_used, envs_used = set(), set()
        for dup in sorted({k for k in keys if keys.count(k) > 1}):
            problems.append(f"{where(base + ('tasks',))}: task_key {dup!r} used twice")
        for i, task in enumerate(tasks):
            tpath = base + ("tasks", i)
            for j, dep in enumerate(task.get("depends_on") or []):
                if dep.get("task_key") not in keys:
                    problems.append(f"{where(tpath + ('depends_on', j, 'task_key'))}: "
                                    f"no task {dep.get('task_key')!r} in job {name} (tasks: {', '.join(map(str, keys))})")
            problems += _compute_problems(task, tpath, name, clusters_defined, envs_defined, where)
            clusters_used.add(task.get("job_cluster_key"))
            envs_used.add(task.get("environment_key"))
            wheel = task.get("python_wheel_task")
            if wheel and wheel.get("package_name") == package and wheel.get("entry_point") not in entry_points:
                problems.append(f"{where(tpath + ('python_wheel_task', 'entry_point'))}: "
                                f"{wheel.get('entry_point')!r} is not an entry point of {package} "
                                f"(pyproject.toml: {', '.join(sorted(entry_points))})")
            elif wheel and wheel.get("package_name") != package:
                problems.append(f"{where(tpath + ('python_wheel_task', 'package_name'))}: "
                                f"{wheel.get('package_name')!r} is not this project's package ({package})")
            for k, lib in enumerate(task.get("libraries") or []):
                whl = lib.get("whl") if isinstance(lib, dict) else None
                if isinstance(whl, str) and _is_local_path(whl) and (p := local_wheel_problem(tpath + ("libraries", k, "whl"), whl)):
                    problems.append(p)
            for field_path in (("spark_python_task", "python_file"), ("notebook_task", "notebook_path")):
                ref = _mapping(task.get(field_path[0])).get(field_path[1])
                if ref and _is_local_path(ref):
                    rel, _ = bundle.locate(tpath + field_path, target, cfg)
                    if not ((bundle.root / rel).parent / ref).exists():
                        problems.append(f"{where(tpath + field_path)}: {ref!r} not found")
        # The Jobs API refuses job clusters no task runs on; an unused environment is the same mistake.
        for k, key in enumerate(clusters_defined):
            if key not in clusters_used:
                problems.append(f"{where(base + ('job_clusters', k, 'job_cluster_key'))}: job cluster {key!r} is "
                                f"declared but no task of job {name} runs on it: declare only the clusters the tasks use")
        for k, env in enumerate(job.get("environments") or []):
            if not isinstance(env, dict):
                continue
            epath = base + ("environments", k)
            if env.get("environment_key") not in envs_used:
                problems.append(f"{where(epath + ('environment_key',))}: environment {env.get('environment_key')!r} "
                                f"is declared but no task of job {name} uses it")
            for d, dep in enumerate(_mapping(env.get("spec")).get("dependencies") or []):
                if isinstance(dep, str) and dep.endswith(".whl") and _is_local_path(dep) and (
                        p := local_wheel_problem(epath + ("spec", "dependencies", d), dep)):
                    problems.append(p)
        for k, jc in enumerate(job.get("job_clusters") or []):
            problems += _cluster_kind_problems(_mapping(jc).get("new_cluster"), base + ("job_clusters", k, "new_cluster"), where)
        for i, task in enumerate(tasks):
            problems += _cluster_kind_problems(task.get("new_cluster"), base + ("tasks", i, "new_cluster"), where)
    return problems


def _compute_problems(task: dict, tpath: tuple, job: str, clusters: list, environments: list, where) -> list[str]:
    """A task runs on a classic cluster (job_cluster_key, new_cluster, existing_cluster_id) or serverless
    (environment_key naming one of the job's environments); Python tasks need one of the two."""
    out = []
    classic = [f for f in _CLUSTER_FIELDS if task.get(f) is not None]
    env_key = task.get("environment_key")
    key = task.get("job_cluster_key")
    if key is not None and key not in clusters:
        out.append(f"{where(tpath + ('job_cluster_key',))}: job cluster {key!r} is not defined in job_clusters "
                   f"({', '.join(sorted(map(str, clusters)))})")
    if env_key is not None and env_key not in environments:
        declared = ", ".join(map(str, environments)) or "none"
        out.append(f"{where(tpath + ('environment_key',))}: environment {env_key!r} is not declared in job {job}'s "
                   f"environments (declared: {declared}); a serverless task needs an environment with the wheel "
                   "in spec.dependencies")
    if env_key is not None and classic:
        out.append(f"{where(tpath + ('environment_key',))}: the task has both environment_key (serverless) and "
                   f"{', '.join(classic)} (a cluster): give it one of the two")
    if env_key is not None and not classic and task.get("libraries"):
        out.append(f"{where(tpath + ('libraries',))}: serverless tasks take no libraries: put them in the "
                   f"environment's spec.dependencies")
    needs_compute = any(task.get(t) for t in ("python_wheel_task", "spark_python_task", "spark_jar_task", "spark_submit_task"))
    if needs_compute and env_key is None and not classic:
        out.append(f"{where(tpath)}: task {task.get('task_key')!r} has no compute: give it job_cluster_key (a "
                   "classic job cluster) or environment_key (serverless); this bundle adds them per target in "
                   "jobs/compute.yml")
    return out


def _cluster_kind_problems(cluster, path: tuple, where) -> list[str]:
    if not isinstance(cluster, dict):
        return []
    mode = cluster.get("data_security_mode")
    if mode in _KIND_MODES and not cluster.get("kind"):
        return [f"{where(path + ('data_security_mode',))}: {mode} is only valid for a cluster with a kind: "
                "add kind: CLASSIC_PREVIEW (or use the legacy names SINGLE_USER / USER_ISOLATION)"]
    return []


def _artifact_outputs(bundle: Bundle, cfg: dict) -> tuple[list[Path], list[str]]:
    outs, problems = [], []
    for name, art in _mapping(cfg.get("artifacts")).items():
        path = bundle.root / str(art.get("path", "."))
        if not path.is_dir():
            problems.append(f"{BUNDLE_FILE}: artifacts.{name}.path: {art.get('path')!r} is not a folder")
        elif art.get("type") == "whl":
            if not any((path / f).is_file() for f in ("pyproject.toml", "setup.py")):
                problems.append(f"{BUNDLE_FILE}: artifacts.{name}.path: no pyproject.toml or setup.py in {path}")
            outs.append((path / "dist").resolve())
    return outs, problems


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
        if cluster.get("data_security_mode") in _KIND_MODES:
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
            problems += schema_problems(_read_yaml(bundle.root, rel), schema_file, bundle, prefix=rel)
    expected = render_clusters_include(bundle.root / "infra" / "clusters") if (bundle.root / "infra" / "clusters").is_dir() else None
    current = bundle.root / CLUSTERS_INCLUDE
    if expected is not None and (not current.is_file() or current.read_text(encoding="utf-8") != expected):
        problems.append(f"{CLUSTERS_INCLUDE}: stale or missing: run `sparkvision bundle clusters --write`")
    if problems:
        raise BundleError(problems)
    target = target or default_target(bundle)
    cfg, values = resolve_with_variables(bundle, target, overrides)
    outs, problems = _artifact_outputs(bundle, cfg)
    problems += _job_problems(bundle, cfg, outs, target)
    for path, what in secrets.find_credentials(cfg):
        problems.append(f"{bundle.where(path, target, cfg)}: {'key' if what == 'key' else 'value'} looks like "
                        "a credential; keep secrets out of the bundle (environment, profile, or {{secrets/scope/key}})")
    if schema_file:
        problems += schema_problems(cfg, schema_file, bundle, target=target)
    problems += _typed_job_problems(bundle, cfg)
    problems += _stack_problems(bundle, cfg, target)
    problems += _resource_key_problems(bundle, cfg, target)
    problems += _resource_reference_problems(bundle, cfg, target, schema_file)
    problems += _mlflow_problems(bundle, cfg, target)
    if problems:
        raise BundleError(problems)
    jobs = _mapping(_mapping(cfg.get("resources")).get("jobs"))
    return {"target": target, "jobs": {n: len(j.get("tasks") or []) for n, j in jobs.items()},
            "schema": str(schema_file) if schema_file else None, "config": cfg, "variables": values,
            "mode": target_mode(bundle, target)}


def target_mode(bundle: Bundle, target: str) -> str | None:
    """The target's ``mode`` (development, production) or None."""
    return _mapping(_mapping(bundle.config.get("targets")).get(target)).get("mode")


def _references(node, head: str, path: tuple = ()):
    """``(path, reference)`` for every ``${head...}`` in the strings of ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _references(v, head, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, head, path + (i,))
    elif isinstance(node, str) and "${" in node:
        for match in _REF.finditer(node):
            if match.group(1).split(".", 1)[0] == head:
                yield path, match.group(1)


def _resource_key_problems(bundle: Bundle, cfg: dict, target: str) -> list[str]:
    """The CLI refuses two resources with one key, even of different kinds (references name kind and key, but
    ``bundle run KEY`` and the deployment state name only the key)."""
    kinds: dict[str, list[str]] = {}
    for kind, items in _mapping(cfg.get("resources")).items():
        for key in _mapping(items):
            kinds.setdefault(key, []).append(kind)
    out = []
    for key, found in kinds.items():
        if len(found) > 1:
            places = [f"resources.{kind}.{key} ({bundle.file_of(('resources', kind, key))})" for kind in found]
            out.append(f"{bundle.file_of(('resources', found[-1], key))}: resources.{found[-1]}.{key}: resource key "
                       f"{key!r} is used by {' and '.join(places)}: keys must be unique across resource kinds")
    return out


def _schema_resource_fields(schema_file: Path | None) -> dict[str, set[str]]:
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


def _resource_reference_problems(bundle: Bundle, cfg: dict, target: str, schema_file: Path | None) -> list[str]:
    """Every ``${resources.KIND.KEY.FIELD}`` names a resource this target declares, and a field it writes, sets
    at deploy (id) or, with the schema, has."""
    resources = _mapping(cfg.get("resources"))
    fields = _schema_resource_fields(schema_file)
    out = []
    for path, ref in _references({k: v for k, v in cfg.items() if k != "variables"}, "resources"):
        parts = re.findall(r"[^.\[\]]+", ref)
        where = bundle.where(path, target, cfg)
        if len(parts) < 4:
            out.append(f"{where}: ${{{ref}}}: a resource reference names resources.KIND.KEY.FIELD")
            continue
        kind, key, name = parts[1:4]
        declared = _mapping(resources.get(kind))
        if key not in declared:
            known = ", ".join(f"{k}.{n}" for k, items in resources.items() for n in _mapping(items)) or "none"
            out.append(f"{where}: ${{{ref}}}: target {target} declares no resources.{kind}.{key} (declared: {known})")
        elif name not in _mapping(declared[key]) and name not in _DEPLOY_FIELDS and kind in fields and name not in fields[kind]:
            out.append(f"{where}: ${{{ref}}}: resources.{kind} have no field {name!r}")
    return out


def _mlflow_problems(bundle: Bundle, cfg: dict, target: str) -> list[str]:
    """Names the workspace refuses: an experiment name is an absolute workspace path; a Unity Catalog registered
    model has a catalog, a schema and a one-part name (the three-level name is catalog.schema.name)."""
    resources = _mapping(cfg.get("resources"))
    out = []
    for key, exp in _mapping(resources.get("experiments")).items():
        name = _mapping(exp).get("name")
        if isinstance(name, str) and not name.startswith(("/", "${")):
            out.append(f"{bundle.where(('resources', 'experiments', key, 'name'), target, cfg)}: {name!r}: an "
                       "experiment name is a workspace path such as /Workspace/Users/<you>/sparkvision or /Shared/...")
    for key, model in _mapping(resources.get("registered_models")).items():
        model = _mapping(model)
        base = ("resources", "registered_models", key)
        missing = [f for f in ("catalog_name", "schema_name", "name") if not model.get(f)]
        if missing:
            out.append(f"{bundle.where(base, target, cfg)}: a Unity Catalog registered model needs "
                       f"{', '.join(missing)}")
        for f in ("catalog_name", "schema_name", "name"):
            value = model.get(f)
            if isinstance(value, str) and "." in _REF.sub("", value):
                out.append(f"{bundle.where(base + (f,), target, cfg)}: {value!r}: one part of the three-level name, "
                           "without dots (catalog_name.schema_name.name)")
    return out


def name_prefix(cfg: dict, mode: str | None) -> str:
    """The prefix the CLI puts before resource names: ``presets.name_prefix``, else development mode's
    ``[dev <short name>] ``, else none."""
    presets = _mapping(cfg.get("presets"))
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


def with_resource_references(node, cfg: dict, mode: str | None = None, prefix: str | None = None):
    """``node`` with each ``${resources.KIND.KEY.FIELD}`` whose value is known before deployment replaced by it:
    a field the resource declares, its name as the CLI deploys it (``prefix``, default :func:`name_prefix` of
    ``mode``). What only a deployment knows (``.id``) stays a reference."""
    resources = _mapping(cfg.get("resources"))
    prefix = name_prefix(cfg, mode) if prefix is None else prefix

    def value(ref: str):
        parts = re.findall(r"[^.\[\]]+", ref)
        if len(parts) != 4:
            return None
        kind, key, name = parts[1:]
        field_value = _mapping(_mapping(resources.get(kind)).get(key)).get(name)
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
            return _REF.sub(replace, item)
        return item

    def replace(match):
        known = value(match.group(1)) if match.group(1).startswith("resources.") else None
        return match.group(0) if known is None else known

    return sub(node)


def _typed_job_problems(bundle: Bundle, cfg: dict) -> list[str]:
    """databricks-bundles' typed Job model, where installed: it rejects unknown fields."""
    try:
        from databricks.bundles.jobs import Job
    except ImportError:
        return []
    out = []
    for name, job in _mapping(_mapping(cfg.get("resources")).get("jobs")).items():
        try:
            Job.from_dict(copy.deepcopy(job))
        except Exception as exc:  # its errors are ValueError/TypeError/KeyError subclasses, all worth reporting
            out.append(f"{bundle.file_of(('resources', 'jobs', name))}: resources.jobs.{name}: {exc}")
    return out
