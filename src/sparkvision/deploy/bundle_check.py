"""Our own rules for a resolved bundle, beyond the JSON schema: entry points against the wheel's metadata,
referenced files and wheels, task dependencies, each task's compute (a declared job cluster, or a declared
serverless environment), job clusters and environments no task uses, cluster kinds, the run-time stack's
pins (pyproject.toml's ``stack`` extra), credentials, ``${resources.KIND.KEY.FIELD}`` references, resource
keys unique across kinds, MLflow names the workspace takes, and databricks-bundles' typed Job model. Each
returns problems as ``file: yaml.path: what``."""

from __future__ import annotations

import copy
import glob
from importlib import metadata
from pathlib import Path

from sparkvision import secrets
from sparkvision.deploy._bundle_common import BUNDLE_FILE, KIND_MODES, REF, mapping, ref_parts
from sparkvision.deploy.bundle_load import Bundle
from sparkvision.deploy.bundle_schema import resource_fields

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

_CLUSTER_FIELDS = ("job_cluster_key", "new_cluster", "existing_cluster_id")
# Resource fields a ${resources.KIND.KEY.FIELD} reference may name though no file writes them: set at deploy.
_DEPLOY_FIELDS = ("id",)


def _project_scripts(root: Path) -> tuple[str | None, set[str]]:
    """Package name and entry points from pyproject.toml: the metadata the wheel is built with."""
    if tomllib is None:  # Python 3.10
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
    if tomllib is None:  # Python 3.10: nothing to compare with
        return {}
    try:
        from packaging.requirements import Requirement  # optional
    except ImportError:
        return {}
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    extras = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("optional-dependencies", {})
    return {Requirement(r).name: str(Requirement(r).specifier) for r in extras.get("stack", [])}


def stack_problems(bundle: Bundle, resolved: dict, target: str) -> list[str]:
    """Packages of the run-time stack that tasks install (``pypi`` libraries, serverless dependencies) must
    carry the ranges of the wheel's ``stack`` extra: one place for them, pyproject.toml."""
    from packaging.requirements import InvalidRequirement, Requirement  # optional

    ranges = _stack_ranges(bundle.root)
    out = []
    for name, job in mapping(mapping(resolved.get("resources")).get("jobs")).items():
        specs = []
        for i, task in enumerate(job.get("tasks") or []):
            for k, lib in enumerate(task.get("libraries") or []):
                pkg = mapping(mapping(lib).get("pypi")).get("package")
                if pkg:
                    specs.append((("resources", "jobs", name, "tasks", i, "libraries", k, "pypi", "package"), pkg))
        for i, env in enumerate(job.get("environments") or []):
            for k, dep in enumerate(mapping(mapping(env).get("spec")).get("dependencies") or []):
                if isinstance(dep, str) and "/" not in dep and not dep.endswith(".whl"):  # a pip requirement
                    specs.append((("resources", "jobs", name, "environments", i, "spec", "dependencies", k), dep))
        for path, text in specs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.name in ranges and str(req.specifier) != ranges[req.name]:
                out.append(f"{bundle.where(path, target, resolved)}: {text!r}: the run-time stack's range for {req.name} is "
                           f"{ranges[req.name]!r} (pyproject.toml, extra 'stack')")
    return out


def _is_local_path(ref: str) -> bool:
    return not ref.startswith(("/", "dbfs:", "s3:", "s3a:", "abfss:", "gs:", "${"))


def job_problems(bundle: Bundle, resolved: dict, artifacts_out: list[Path], target: str | None = None) -> list[str]:
    problems = []
    package, entry_points = _project_scripts(bundle.root)

    def where(path):
        return bundle.where(path, target, resolved)

    def local_wheel_problem(path, whl: str) -> str | None:
        """A relative wheel path, relative to the file that writes it: it must match a file or a whl artifact's output."""
        rel, _ = bundle.locate(path, target, resolved)
        wheel = ((bundle.root / rel).parent / whl).resolve()
        if glob.glob(str(wheel)) or any(wheel.parent == out for out in artifacts_out):
            return None
        return f"{where(path)}: {whl!r} matches no file and no whl artifact builds into that folder"

    for name, job in mapping(mapping(resolved.get("resources")).get("jobs")).items():
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
                ref = mapping(task.get(field_path[0])).get(field_path[1])
                if ref and _is_local_path(ref):
                    rel, _ = bundle.locate(tpath + field_path, target, resolved)
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
            for d, dep in enumerate(mapping(env.get("spec")).get("dependencies") or []):
                if isinstance(dep, str) and dep.endswith(".whl") and _is_local_path(dep) and (
                        p := local_wheel_problem(epath + ("spec", "dependencies", d), dep)):
                    problems.append(p)
        for k, jc in enumerate(job.get("job_clusters") or []):
            problems += _cluster_kind_problems(mapping(jc).get("new_cluster"), base + ("job_clusters", k, "new_cluster"), where)
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
    if mode in KIND_MODES and not cluster.get("kind"):
        return [f"{where(path + ('data_security_mode',))}: {mode} is only valid for a cluster with a kind: "
                "add kind: CLASSIC_PREVIEW (or use the legacy names SINGLE_USER / USER_ISOLATION)"]
    return []


def artifact_outputs(bundle: Bundle, resolved: dict) -> tuple[list[Path], list[str]]:
    outs, problems = [], []
    for name, art in mapping(resolved.get("artifacts")).items():
        path = bundle.root / str(art.get("path", "."))
        if not path.is_dir():
            problems.append(f"{BUNDLE_FILE}: artifacts.{name}.path: {art.get('path')!r} is not a folder")
        elif art.get("type") == "whl":
            if not any((path / f).is_file() for f in ("pyproject.toml", "setup.py")):
                problems.append(f"{BUNDLE_FILE}: artifacts.{name}.path: no pyproject.toml or setup.py in {path}")
            outs.append((path / "dist").resolve())
    return outs, problems


def credential_problems(bundle: Bundle, resolved: dict, target: str) -> list[str]:
    """Keys or values that look like credentials (the value itself is never repeated)."""
    return [f"{bundle.where(path, target, resolved)}: {'key' if what == 'key' else 'value'} looks like a credential; "
            "keep secrets out of the bundle (environment, profile, or {{secrets/scope/key}})"
            for path, what in secrets.find_credentials(resolved)]


def _references(node, head: str, path: tuple = ()):
    """``(path, reference)`` for every ``${head...}`` in the strings of ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _references(v, head, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, head, path + (i,))
    elif isinstance(node, str) and "${" in node:
        for match in REF.finditer(node):
            if match.group(1).split(".", 1)[0] == head:
                yield path, match.group(1)


def resource_key_problems(bundle: Bundle, resolved: dict, target: str) -> list[str]:
    """The CLI refuses two resources with one key, even of different kinds (references name kind and key, but
    ``bundle run KEY`` and the deployment state name only the key)."""
    kinds: dict[str, list[str]] = {}
    for kind, items in mapping(resolved.get("resources")).items():
        for key in mapping(items):
            kinds.setdefault(key, []).append(kind)
    out = []
    for key, found in kinds.items():
        if len(found) > 1:
            places = [f"resources.{kind}.{key} ({bundle.file_of(('resources', kind, key))})" for kind in found]
            out.append(f"{bundle.file_of(('resources', found[-1], key))}: resources.{found[-1]}.{key}: resource key "
                       f"{key!r} is used by {' and '.join(places)}: keys must be unique across resource kinds")
    return out


def resource_reference_problems(bundle: Bundle, resolved: dict, target: str, schema_file: Path | None) -> list[str]:
    """Every ``${resources.KIND.KEY.FIELD}`` names a resource this target declares, and a field it writes, sets
    at deploy (id) or, with the schema, has."""
    resources = mapping(resolved.get("resources"))
    fields = resource_fields(schema_file)
    out = []
    for path, ref in _references({k: v for k, v in resolved.items() if k != "variables"}, "resources"):
        parts = ref_parts(ref)
        where = bundle.where(path, target, resolved)
        if len(parts) < 4:
            out.append(f"{where}: ${{{ref}}}: a resource reference names resources.KIND.KEY.FIELD")
            continue
        kind, key, name = parts[1:4]
        declared = mapping(resources.get(kind))
        if key not in declared:
            known = ", ".join(f"{k}.{n}" for k, items in resources.items() for n in mapping(items)) or "none"
            out.append(f"{where}: ${{{ref}}}: target {target} declares no resources.{kind}.{key} (declared: {known})")
        elif name not in mapping(declared[key]) and name not in _DEPLOY_FIELDS and kind in fields and name not in fields[kind]:
            out.append(f"{where}: ${{{ref}}}: resources.{kind} have no field {name!r}")
    return out


def mlflow_problems(bundle: Bundle, resolved: dict, target: str) -> list[str]:
    """Names the workspace refuses: an experiment name is an absolute workspace path; a Unity Catalog registered
    model has a catalog, a schema and a one-part name (the three-level name is catalog.schema.name)."""
    resources = mapping(resolved.get("resources"))
    out = []
    for key, exp in mapping(resources.get("experiments")).items():
        name = mapping(exp).get("name")
        if isinstance(name, str) and not name.startswith(("/", "${")):
            out.append(f"{bundle.where(('resources', 'experiments', key, 'name'), target, resolved)}: {name!r}: an "
                       "experiment name is a workspace path such as /Workspace/Users/<you>/sparkvision or /Shared/...")
    for key, model in mapping(resources.get("registered_models")).items():
        model = mapping(model)
        base = ("resources", "registered_models", key)
        missing = [f for f in ("catalog_name", "schema_name", "name") if not model.get(f)]
        if missing:
            out.append(f"{bundle.where(base, target, resolved)}: a Unity Catalog registered model needs "
                       f"{', '.join(missing)}")
        for f in ("catalog_name", "schema_name", "name"):
            value = model.get(f)
            if isinstance(value, str) and "." in REF.sub("", value):
                out.append(f"{bundle.where(base + (f,), target, resolved)}: {value!r}: one part of the three-level name, "
                           "without dots (catalog_name.schema_name.name)")
    return out


def typed_job_problems(bundle: Bundle, resolved: dict) -> list[str]:
    """databricks-bundles' typed Job model, where installed: it rejects unknown fields."""
    try:
        from databricks.bundles.jobs import Job  # optional
    except ImportError:
        return []
    out = []
    for name, job in mapping(mapping(resolved.get("resources")).get("jobs")).items():
        try:
            Job.from_dict(copy.deepcopy(job))
        except Exception as exc:  # its errors are ValueError/TypeError/KeyError subclasses, all worth reporting
            out.append(f"{bundle.file_of(('resources', 'jobs', name))}: resources.jobs.{name}: {exc}")
    return out
