"""Cluster specs (``infra/clusters/*.yml``): one file per cluster shape, the one place for its sizes.

The same file becomes spark-submit settings for a standalone master (:func:`submit_conf`), the
cores/memory/GPUs of a standalone worker (:func:`worker_env`), and the Databricks job cluster of the
bundle. Specs hold no credentials: a setting that looks like one is refused with the key named.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparkvision import secrets
from sparkvision.run import auth

SPEC_DIR_ENV = "SPARKVISION_CLUSTERS"
_MEMORY = re.compile(r"^\d+[kmgt]?$", re.IGNORECASE)
_MAVEN = re.compile(r"^[\w.\-]+:[\w.\-]+:[\w.\-]+$")
_TOP_KEYS = {"name", "workers", "driver", "executor", "gpu", "spark_conf", "maven", "standalone", "databricks"}
# new_cluster fields a spec's ``databricks`` section may set (the rest is derived from the spec).
_DATABRICKS_KEYS = {"spark_version", "node_type_id", "driver_node_type_id", "autoscale", "data_security_mode",
                    "runtime_engine", "spark_env_vars", "custom_tags", "docker_image", "init_scripts", "policy_id",
                    "instance_pool_id", "driver_instance_pool_id", "aws_attributes", "azure_attributes", "gcp_attributes"}


class ClusterSpecError(ValueError):
    """A cluster spec is missing, malformed or holds a credential; the message names file and key."""


@dataclass(frozen=True)
class GpuSpec:
    amount: int
    task_amount: float
    discovery_script: Path
    vendor: str = "nvidia.com"


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    path: Path
    workers: int
    driver_memory: str
    executor_cores: int
    executor_memory: str
    executor_memory_overhead: str | None
    spark_conf: dict[str, str]
    maven: tuple[str, ...] = ()           # JVM packages for every target
    standalone_maven: tuple[str, ...] = ()  # only for standalone clusters (Databricks ships its own)
    gpu: GpuSpec | None = None
    databricks: dict[str, Any] = field(default_factory=dict)


def _conf_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def dotted_path(path) -> str:
    """``("resources", "jobs", "x", "tasks", 0)`` -> ``resources.jobs.x.tasks[0]``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_no_secrets(data: Any, origin: str, where: str = "") -> None:
    """Refuse credential-looking keys or values anywhere in ``data`` (Databricks secret references pass)."""
    for path, what in secrets.find_credentials(data, (where,) if where else ()):
        if what == "key":
            raise ClusterSpecError(
                f"{origin}: key {dotted_path(path)!r} looks like a credential; specs must not hold secrets. "
                "Use the environment, an instance profile or a Databricks secret reference {{secrets/scope/key}}"
            )
        raise ClusterSpecError(f"{origin}: the value of {dotted_path(path)!r} looks like a credential; specs must not hold secrets")


def _need(section: dict, key: str, kind, origin: str, where: str, check=None, rule: str = ""):
    if key not in section:
        raise ClusterSpecError(f"{origin}: missing key {where}{key!r}")
    value = section[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or (check and not check(value)):
        raise ClusterSpecError(f"{origin}: key '{where}{key}' must be {rule or kind}; got {value!r}")
    return value


def _memory(section: dict, key: str, origin: str, where: str, required: bool = True) -> str | None:
    if not required and section.get(key) is None:
        return None
    return _need(section, key, str, origin, where, lambda v: bool(_MEMORY.match(v)), "a size like 4g or 512m")


def resolve_path(path: str | os.PathLike) -> Path:
    """``cpu`` or ``cpu.yml`` -> the file in $SPARKVISION_CLUSTERS (or infra/clusters); paths pass through."""
    p = Path(path)
    if p.is_file():
        return p
    bases = [Path(os.environ[SPEC_DIR_ENV])] if os.environ.get(SPEC_DIR_ENV) else []
    bases += [Path("infra/clusters"), Path(os.environ.get("SPARKVISION_HOME", "/opt/sparkvision")) / "infra" / "clusters"]
    for base in bases:
        for candidate in (base / p, base / f"{p}.yml"):
            if candidate.is_file():
                return candidate
    raise ClusterSpecError(f"cluster spec not found: {path} (looked in {', '.join(str(b) for b in bases)})")


def load_spec(path: str | os.PathLike) -> ClusterSpec:
    path = resolve_path(path)
    origin = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ClusterSpecError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{origin}: a cluster spec is a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ClusterSpecError(f"{origin}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    check_no_secrets(data, origin)
    driver = _need(data, "driver", dict, origin, "", rule="a mapping")
    executor = _need(data, "executor", dict, origin, "", rule="a mapping")
    conf = data.get("spark_conf") or {}
    if not isinstance(conf, dict) or not all(isinstance(k, str) and k.startswith("spark.") for k in conf):
        raise ClusterSpecError(f"{origin}: key 'spark_conf' must map spark.* settings to values")
    maven = _coordinates(data.get("maven"), origin, "maven")
    standalone_maven = _coordinates((data.get("standalone") or {}).get("maven"), origin, "standalone.maven")
    databricks = dict(data.get("databricks") or {})
    if databricks:
        unknown = set(databricks) - _DATABRICKS_KEYS
        if unknown:
            raise ClusterSpecError(f"{origin}: unknown key(s) {sorted('databricks.' + k for k in unknown)}; "
                                   f"known: {sorted(_DATABRICKS_KEYS)}")
        for key in ("spark_version", "node_type_id"):
            _need(databricks, key, str, origin, "databricks.")
    gpu = None
    if data.get("gpu"):
        g = data["gpu"]
        amount = _need(g, "amount", int, origin, "gpu.", lambda v: v > 0, "a positive integer")
        task = _need(g, "task_amount", (int, float), origin, "gpu.",
                     lambda v: 0 < v <= amount and (v < 1 or float(v).is_integer()),
                     "a fraction of one GPU (< 1) or a whole number of GPUs, at most gpu.amount")
        script = Path(_need(g, "discovery_script", str, origin, "gpu."))
        script = script if script.is_absolute() else (path.parent / script).resolve()
        if not script.is_file():
            raise ClusterSpecError(f"{origin}: key 'gpu.discovery_script': {script} not found")
        gpu = GpuSpec(amount, float(task), script, str(g.get("vendor", "nvidia.com")))
    return ClusterSpec(
        name=_need(data, "name", str, origin, ""),
        path=path,
        workers=_need(data, "workers", int, origin, "", lambda v: v >= 0, "an integer >= 0"),
        driver_memory=_memory(driver, "memory", origin, "driver."),
        executor_cores=_need(executor, "cores", int, origin, "executor.", lambda v: v > 0, "a positive integer"),
        executor_memory=_memory(executor, "memory", origin, "executor."),
        executor_memory_overhead=_memory(executor, "memory_overhead", origin, "executor.", required=False),
        spark_conf={k: _conf_value(v) for k, v in conf.items()},
        maven=maven,
        standalone_maven=standalone_maven,
        gpu=gpu,
        databricks=databricks,
    )


def _coordinates(value, origin: str, where: str) -> tuple[str, ...]:
    coords = tuple(value or ())
    for coord in coords:
        if not isinstance(coord, str) or not _MAVEN.match(coord):
            raise ClusterSpecError(f"{origin}: key '{where}' entry {coord!r} is not group:artifact:version")
    return coords


def _amount(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def submit_conf(spec: ClusterSpec) -> dict[str, str]:
    """spark-submit ``--conf`` settings for a standalone master (the driver memory goes in too)."""
    conf = {
        "spark.driver.memory": spec.driver_memory,
        "spark.executor.memory": spec.executor_memory,
        "spark.executor.cores": str(spec.executor_cores),
    }
    if spec.executor_memory_overhead:
        conf["spark.executor.memoryOverhead"] = spec.executor_memory_overhead
    if spec.workers:
        conf["spark.cores.max"] = str(spec.workers * spec.executor_cores)
    if spec.maven or spec.standalone_maven:
        conf["spark.jars.packages"] = ",".join(spec.maven + spec.standalone_maven)
    if spec.gpu:
        g = spec.gpu
        conf.update({
            "spark.executor.resource.gpu.amount": str(g.amount),
            "spark.executor.resource.gpu.discoveryScript": str(g.discovery_script),
            "spark.executor.resource.gpu.vendor": g.vendor,
            "spark.task.resource.gpu.amount": _amount(g.task_amount),
        })
    conf.update(spec.spark_conf)
    check_no_secrets(conf, str(spec.path))
    return conf


def databricks_cluster(spec: ClusterSpec) -> dict[str, Any]:
    """The spec as a Databricks job cluster (``new_cluster``): executor memory and GPU share via spark_conf.

    Databricks runs one executor per worker node and sizes the driver by its node type, so executor
    cores and driver memory are not set; the GPU amount per executor comes from the GPU node type.
    """
    if not spec.databricks:
        raise ClusterSpecError(f"{spec.path}: no 'databricks' section: this spec is for standalone clusters only")
    d = dict(spec.databricks)
    cluster: dict[str, Any] = {"spark_version": d.pop("spark_version"), "node_type_id": d.pop("node_type_id")}
    if "driver_node_type_id" in d:
        cluster["driver_node_type_id"] = d.pop("driver_node_type_id")
    if "autoscale" not in d:
        cluster["num_workers"] = spec.workers
    conf = {"spark.executor.memory": spec.executor_memory}
    if spec.executor_memory_overhead:
        conf["spark.executor.memoryOverhead"] = spec.executor_memory_overhead
    if spec.gpu:
        conf["spark.task.resource.gpu.amount"] = _amount(spec.gpu.task_amount)
    conf.update(spec.spark_conf)
    cluster["spark_conf"] = conf
    cluster["spark_env_vars"] = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", **d.pop("spark_env_vars", {})}
    cluster["custom_tags"] = {"project": "sparkvision", "cluster_spec": spec.name, **d.pop("custom_tags", {})}
    cluster.update(d)
    check_no_secrets(cluster, str(spec.path))
    return cluster


def databricks_libraries(spec: ClusterSpec) -> list[dict[str, Any]]:
    """The spec's JVM packages as Databricks task libraries."""
    return [{"maven": {"coordinates": c}} for c in spec.maven]


def worker_env(spec: ClusterSpec) -> dict[str, str]:
    """What a standalone worker offers: one executor's cores and memory, plus its GPUs."""
    env = {"SPARKVISION_WORKER_CORES": str(spec.executor_cores), "SPARKVISION_WORKER_MEMORY": spec.executor_memory}
    if spec.gpu:
        opts = (f"-Dspark.worker.resource.gpu.amount={spec.gpu.amount} "
                f"-Dspark.worker.resource.gpu.discoveryScript={spec.gpu.discovery_script}")
        env["SPARK_WORKER_OPTS"] = (os.environ.get("SPARK_WORKER_OPTS", "") + " " + opts).strip()
    return env


def shell_assignments(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def spark_submit_executable() -> str:
    home = os.environ.get("SPARK_HOME")
    if not home:
        import pyspark  # optional

        home = os.path.dirname(pyspark.__file__)
    return os.path.join(home, "bin", "spark-submit")


def driver_script() -> str:
    return os.path.join(os.path.dirname(__file__), "sparkvision_driver.py")


def submit_command(spec: ClusterSpec, master: str, job_args: list[str], extra_conf: dict[str, str] | None = None,
                   insecure: bool | None = None) -> list[str]:
    """The spark-submit command line (client mode: Python apps cannot use cluster mode on standalone).

    For a ``spark://`` master with a shared secret configured (:mod:`.auth`) it turns on
    ``spark.authenticate``; the secret itself never goes on the command line (``ps`` shows it): the
    driver inherits the environment and reads it. Without a secret it raises
    :class:`~.auth.AuthError`, unless ``insecure`` (default: ``SPARKVISION_INSECURE=1``).
    """
    conf = {**submit_conf(spec), **(extra_conf or {})}
    check_no_secrets(conf, "--conf")
    conf.update(auth.submit_conf(master, insecure))
    cmd = [spark_submit_executable(), "--master", master, "--deploy-mode", "client", "--name", f"sparkvision-{spec.name}"]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + [driver_script(), *job_args]
