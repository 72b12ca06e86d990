"""Offline checks of the Databricks bundle (``bundle.yml`` + includes), without the CLI or a workspace.

:func:`load` reads the root file and its includes, :func:`resolve` applies a target and the variables
(``--var``, ``BUNDLE_VAR_*``, target overrides, defaults) and :func:`validate` checks the result: the
official JSON schema, entry points against the wheel's metadata, referenced files, task dependencies,
job clusters, credentials, and that the generated job-cluster include matches ``infra/clusters``.
Every problem names the file and the YAML path.
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

from . import clusters

BUNDLE_FILE = "bundle.yml"
CLUSTERS_INCLUDE = "infra/databricks/clusters.yml"
SCHEMA_ENV = "SPARKVISION_BUNDLE_SCHEMA"
_REF = re.compile(r"\$\{([A-Za-z][\w.\-\[\]]*)\}")
# Sections a target may override, as the Databricks CLI merges them.
_TARGET_SECTIONS = ("bundle", "workspace", "artifacts", "resources", "sync", "permissions", "run_as", "presets",
                    "experimental")
_KEYED_LISTS = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}


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

    def file_of(self, path: tuple) -> str:
        """The file that defines the YAML path ``path`` (resources.jobs.X... or variables.X...)."""
        for n in (3, 2):
            if tuple(path[:n]) in self.origin:
                return self.origin[tuple(path[:n])]
        return BUNDLE_FILE


def yaml_path(path) -> str:
    return clusters.dotted_path(path) or "(top level)"


def _read_yaml(root: Path, rel: str) -> Any:
    try:
        return yaml.safe_load((root / rel).read_text(encoding="utf-8")) or {}
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
    bundle = Bundle(root, config, [BUNDLE_FILE])
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
        if section in chosen:
            cfg[section] = _deep_merge(cfg.get(section, {} if isinstance(chosen[section], dict) else []), chosen[section])
    values = _variable_values(bundle, cfg, chosen, target, overrides or {})
    context = {"bundle": {**_mapping(cfg.get("bundle")), "target": target}, "var": values,
               "workspace": _mapping(cfg.get("workspace"))}
    problems: list[str] = []
    for section in list(cfg):
        if section != "variables":
            cfg[section] = _substitute(cfg[section], context, (section,), bundle, problems)
    if problems:
        raise BundleError(problems)
    return cfg, values


def _variable_values(bundle, cfg, chosen, target, overrides) -> dict[str, Any]:
    declared = _mapping(cfg.get("variables"))
    env = {k[len("BUNDLE_VAR_"):]: v for k, v in os.environ.items() if k.startswith("BUNDLE_VAR_")}
    problems, values = [], {}
    for name, raw in {**_mapping(chosen.get("variables")), **env, **overrides}.items():
        if name not in declared:
            where = "--var" if name in overrides else ("BUNDLE_VAR_" + name if name in env else f"targets.{target}.variables")
            problems.append(f"{where}: variable {name!r} is not declared under variables")
    for name, decl in declared.items():
        decl = decl if isinstance(decl, dict) else {"default": decl}
        if name in overrides:
            values[name] = overrides[name]
        elif name in env:
            values[name] = env[name]
        elif name in _mapping(chosen.get("variables")):
            v = chosen["variables"][name]
            values[name] = v["default"] if isinstance(v, dict) and "default" in v and decl.get("type") != "complex" else v
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
    for _ in range(10):
        before = json.dumps(values, sort_keys=True, default=str)
        for name in values:
            values[name] = _substitute(values[name], context, ("variables", name), bundle, problems)
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


def _substitute(node, context, path, bundle, problems):
    if isinstance(node, dict):
        return {k: _substitute(v, context, path + (k,), bundle, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, context, path + (i,), bundle, problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _REF.fullmatch(node)

    def value(ref: str):
        head = ref.split(".", 1)[0]
        try:
            return _lookup(context, ref)
        except (KeyError, IndexError, TypeError):
            if head == "var":
                problems.append(f"{bundle.file_of(path)}: {yaml_path(path)}: unknown variable ${{{ref}}}")
            return "${" + ref + "}"  # workspace.current_user, resources.*, artifacts.*: known only at deploy

    if whole:
        return value(whole.group(1))

    def text(match):
        v = value(match.group(1))
        if isinstance(v, (dict, list)):
            problems.append(f"{bundle.file_of(path)}: {yaml_path(path)}: complex value ${{{match.group(1)}}} inside a string")
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


def schema_problems(document: dict, schema: Path, bundle: Bundle, prefix: str = "") -> list[str]:
    out = []
    for error in sorted(_validator(schema).iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        deep = _deepest(error)
        path = tuple(deep.absolute_path)
        out.append(f"{prefix or bundle.file_of(path)}: {yaml_path(path)}: {deep.message}")
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


def _job_problems(bundle: Bundle, cfg: dict, artifacts_out: list[Path]) -> list[str]:
    problems = []
    package, entry_points = _project_scripts(bundle.root)
    for name, job in _mapping(_mapping(cfg.get("resources")).get("jobs")).items():
        base = ("resources", "jobs", name)
        where = bundle.file_of(base)
        job_dir = (bundle.root / where).parent
        tasks = job.get("tasks") or []
        keys = [t.get("task_key") for t in tasks]
        clusters_defined = {c.get("job_cluster_key") for c in job.get("job_clusters") or []}
        for dup in sorted({k for k in keys if keys.count(k) > 1}):
            problems.append(f"{where}: {yaml_path(base + ('tasks',))}: task_key {dup!r} used twice")
        for i, task in enumerate(tasks):
            tpath = base + ("tasks", i)
            for j, dep in enumerate(task.get("depends_on") or []):
                if dep.get("task_key") not in keys:
                    problems.append(f"{where}: {yaml_path(tpath + ('depends_on', j, 'task_key'))}: "
                                    f"no task {dep.get('task_key')!r} in job {name} (tasks: {', '.join(map(str, keys))})")
            key = task.get("job_cluster_key")
            if key is not None and key not in clusters_defined:
                problems.append(f"{where}: {yaml_path(tpath + ('job_cluster_key',))}: job cluster {key!r} is not "
                                f"defined in job_clusters ({', '.join(sorted(map(str, clusters_defined)))})")
            wheel = task.get("python_wheel_task")
            if wheel and wheel.get("package_name") == package and wheel.get("entry_point") not in entry_points:
                problems.append(f"{where}: {yaml_path(tpath + ('python_wheel_task', 'entry_point'))}: "
                                f"{wheel.get('entry_point')!r} is not an entry point of {package} "
                                f"(pyproject.toml: {', '.join(sorted(entry_points))})")
            elif wheel and wheel.get("package_name") != package:
                problems.append(f"{where}: {yaml_path(tpath + ('python_wheel_task', 'package_name'))}: "
                                f"{wheel.get('package_name')!r} is not this project's package ({package})")
            for k, lib in enumerate(task.get("libraries") or []):
                whl = lib.get("whl") if isinstance(lib, dict) else None
                if whl and not whl.startswith(("/", "dbfs:", "s3:", "abfss:", "gs:")):
                    target = (job_dir / whl).resolve()
                    built = any(target.parent == out for out in artifacts_out)
                    if not glob.glob(str(target)) and not built:
                        problems.append(f"{where}: {yaml_path(tpath + ('libraries', k, 'whl'))}: {whl!r} matches no "
                                        "file and no whl artifact builds into that folder")
            for field_path in (("spark_python_task", "python_file"), ("notebook_task", "notebook_path")):
                ref = _mapping(task.get(field_path[0])).get(field_path[1])
                if ref and not ref.startswith(("/", "${")) and not (job_dir / ref).exists():
                    problems.append(f"{where}: {yaml_path(tpath + field_path)}: {ref!r} not found")
    return problems


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
        variables[f"{var}_cluster"] = {"description": f"Job cluster from {rel}", "type": "complex",
                                       "default": clusters.databricks_cluster(spec)}
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
    cfg, values = resolve_with_variables(bundle, target, overrides)
    outs, problems = _artifact_outputs(bundle, cfg)
    problems += _job_problems(bundle, cfg, outs)
    for path, what in clusters.find_credentials(cfg):
        problems.append(f"{bundle.file_of(path)}: {yaml_path(path)}: {'key' if what == 'key' else 'value'} looks like "
                        "a credential; keep secrets out of the bundle (environment, profile, or {{secrets/scope/key}})")
    if schema_file:
        problems += schema_problems(cfg, schema_file, bundle)
    problems += _typed_job_problems(bundle, cfg)
    if problems:
        raise BundleError(problems)
    jobs = _mapping(_mapping(cfg.get("resources")).get("jobs"))
    return {"target": target or default_target(bundle), "jobs": {n: len(j.get("tasks") or []) for n, j in jobs.items()},
            "schema": str(schema_file) if schema_file else None, "config": cfg, "variables": values}


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
