"""Run the pipeline on Databricks from Python (databricks-sdk), for environments without the CLI.

``submit``: upload the wheel and submit the bundle's pipeline once (``jobs.submit``, the tasks of
``jobs/sparkvision_pipeline.yml`` with the target's compute: each job cluster inlined as the task's
``new_cluster``, or, for the serverless targets, the job's environments with the wheel dependency pointed
at the upload). ``${workspace.current_user.*}`` (the dev targets' per-user output) becomes the caller, and
``${resources.*.name}`` (the MLflow experiment and registered model the tasks name) the resource's name as
a deployment of the target names it (development mode: ``[dev <you>] `` / ``dev_<you>_``); a reference only
a deployment can fill in (``.id``) is refused.
``run``: run a deployed job. ``status``: one run.
Waiting polls with a timeout and checks ``result_state`` (the SDK's waiter returns FAILED runs without
raising). Authentication comes only from the SDK's own sources (DATABRICKS_* environment variables,
~/.databrickscfg profiles); nothing here prints, logs or stores a credential.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sparkvision.deploy import bundle_naming

log = logging.getLogger(__name__)

TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}
PIPELINE_JOB = "sparkvision_pipeline"


class RunFailed(RuntimeError):
    pass


class RunTimeout(TimeoutError):
    pass


@dataclass
class RunReport:
    run_id: int
    url: str | None
    life_cycle_state: str
    result_state: str | None
    state_message: str
    tasks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.result_state == "SUCCESS"

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}: {self.life_cycle_state} {self.result_state or ''}".rstrip(),
               f"url: {self.url or '(none)'}"]
        if self.state_message:
            out.append(f"message: {self.state_message}")
        for t in self.tasks:
            line = f"  task {t['task_key']}: {t.get('result_state') or t.get('life_cycle_state')}"
            if t.get("error"):
                line += f" - {t['error']}"
            out.append(line)
        if self.metrics:
            m = self.metrics
            out.append(f"metrics: accuracy {m.get('accuracy')} (baseline {m.get('baseline_accuracy')}), "
                       f"ROC AUC {m.get('roc_auc')}, n {m.get('n')}")
        return out


def client(profile: str | None = None):
    """A WorkspaceClient configured by the SDK's standard sources only (env vars, config profile)."""
    from databricks.sdk import WorkspaceClient  # optional

    return WorkspaceClient(profile=profile) if profile else WorkspaceClient()


def upload_wheel(w, wheel: Path, remote_dir: str | None = None) -> str:
    """Put the wheel into the workspace (``/Workspace/Users/<me>/.sparkvision/wheels`` by default)."""
    from databricks.sdk.service.workspace import ImportFormat  # optional

    if remote_dir is None:
        me = w.current_user.me().user_name
        remote_dir = f"/Workspace/Users/{me}/.sparkvision/wheels"
    w.workspace.mkdirs(remote_dir)
    remote = f"{remote_dir}/{wheel.name}"
    w.workspace.upload(remote, io.BytesIO(wheel.read_bytes()), format=ImportFormat.AUTO, overwrite=True)
    log.info("uploaded %s to %s", wheel.name, remote)
    return remote


def _local_wheel(ref) -> bool:
    """A wheel the bundle builds (``../dist/*.whl``), as opposed to one already in the workspace or a volume."""
    return isinstance(ref, str) and ref.endswith(".whl") and not ref.startswith(("/", "dbfs:", "s3:", "abfss:", "gs:", "${"))


def submit_spec(resolved: dict[str, Any], job_key: str, wheel_remote: str) -> dict[str, Any]:
    """The bundle job as a one-time run (``jobs.submit`` arguments): ``tasks``, and ``environments`` for
    serverless tasks. One-time runs have no job clusters, so each task gets its cluster inlined as
    ``new_cluster``; serverless tasks keep their ``environment_key`` and the job's environments come along.
    The project's wheel (a task library or an environment dependency) points at the uploaded copy."""
    try:
        job = resolved["resources"]["jobs"][job_key]
    except KeyError:
        raise KeyError(f"no job {job_key!r} in the bundle") from None
    job_clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters") or []}
    tasks = []
    for task in job["tasks"]:
        task = copy.deepcopy(task)
        key = task.pop("job_cluster_key", None)
        if key is not None:
            if key not in job_clusters:
                raise KeyError(f"task {task.get('task_key')!r} of job {job_key!r} runs on job cluster {key!r}, "
                               "which the job does not declare")
            task["new_cluster"] = copy.deepcopy(job_clusters[key])
        if "libraries" in task:
            task["libraries"] = [({**lib, "whl": wheel_remote} if _local_wheel(lib.get("whl")) else lib)
                                 for lib in task["libraries"]]
        tasks.append(task)
    used = {t.get("environment_key") for t in tasks}
    environments = []
    for env in job.get("environments") or []:
        if env.get("environment_key") not in used:
            continue
        env = copy.deepcopy(env)
        spec = env.get("spec") or {}
        if "dependencies" in spec:
            spec["dependencies"] = [wheel_remote if _local_wheel(d) else d for d in spec["dependencies"]]
        environments.append(env)
    declared = {e.get("environment_key") for e in environments}
    missing = sorted(k for k in used if k is not None and k not in declared)
    if missing:
        raise KeyError(f"job {job_key!r}: tasks use environment(s) {', '.join(missing)}, which the job does not declare")
    out: dict[str, Any] = {"tasks": tasks}
    if environments:
        out["environments"] = environments
    left = sorted({m for m in re.findall(r"\$\{resources\.[^}]*\}", json.dumps(out))})
    if left:
        raise ValueError(f"job {job_key!r}: {', '.join(left)} is known only once the bundle is deployed: "
                         "deploy it (databricks bundle deploy) and run the job (sparkvision databricks run)")
    return out


def submit_tasks(resolved: dict[str, Any], job_key: str, wheel_remote: str) -> list[dict[str, Any]]:
    """The tasks of :func:`submit_spec`."""
    return submit_spec(resolved, job_key, wheel_remote)["tasks"]


def short_name(user_name: str, service_principal_display: str | None = None) -> str:
    """``${workspace.current_user.short_name}`` as the Databricks CLI derives it: the part of the user name
    before ``@`` (a service principal's display name), lower case, letters and digits kept, anything else ``_``."""
    local = (service_principal_display or user_name).split("@", 1)[0].lower()
    return "".join(c if c.isalpha() or unicodedata.category(c) == "Nd" else "_" for c in local)


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_CURRENT_USER = re.compile(r"\$\{workspace\.current_user\.(userName|short_name|domain_friendly_name)\}")


def current_user(w) -> dict[str, str]:
    """``workspace.current_user`` of the caller: userName, short_name, domain_friendly_name."""
    me = w.current_user.me()
    sp = me.display_name if _UUID.match(me.user_name or "") else None
    short = short_name(me.user_name or "", sp)
    unmarked = "".join(c for c in unicodedata.normalize("NFKD", short) if not unicodedata.combining(c))
    return {"userName": me.user_name or "", "short_name": short,
            "domain_friendly_name": re.sub(r"[^a-z0-9]", "-", unmarked.lower())}


def with_current_user(node, user: dict[str, str]):
    """``node`` with ``${workspace.current_user.*}`` replaced, as the CLI does at deploy time."""
    if isinstance(node, dict):
        return {k: with_current_user(v, user) for k, v in node.items()}
    if isinstance(node, list):
        return [with_current_user(v, user) for v in node]
    if isinstance(node, str) and "${workspace.current_user." in node:
        return _CURRENT_USER.sub(lambda m: user[m.group(1)], node)
    return node


def submit(w, resolved: dict[str, Any], wheel: Path, job_key: str = PIPELINE_JOB, run_name: str | None = None,
           timeout_seconds: int | None = None, mode: str | None = None) -> int:
    """Submit ``job_key`` of the resolved bundle once; ``mode``: the target's (development names resources
    as a dev deployment does)."""
    from databricks.sdk.service.jobs import JobEnvironment, SubmitTask  # optional

    remote = upload_wheel(w, wheel)
    user = current_user(w)
    resolved = with_current_user(resolved, user)
    prefix = with_current_user(bundle_naming.name_prefix(resolved, mode), user)
    resolved = bundle_naming.with_resource_references(resolved, resolved, prefix=prefix)
    spec = submit_spec(resolved, job_key, remote)
    tasks = [SubmitTask.from_dict(t) for t in spec["tasks"]]
    environments = [JobEnvironment.from_dict(e) for e in spec.get("environments") or []] or None
    waiter = w.jobs.submit(run_name=run_name or f"sparkvision {job_key}", tasks=tasks, environments=environments,
                           timeout_seconds=timeout_seconds)
    return waiter.run_id


def find_job(w, name: str) -> int:
    jobs = [j for j in w.jobs.list(name=name) if j.settings and j.settings.name == name]
    if not jobs:
        raise LookupError(f"no job named {name!r} in the workspace: deploy the bundle first (databricks bundle deploy)")
    if len(jobs) > 1:
        raise LookupError(f"{len(jobs)} jobs are named {name!r}: pass --job-id")
    return jobs[0].job_id


def run_now(w, job_id: int, job_parameters: dict[str, str] | None = None) -> int:
    return w.jobs.run_now(job_id=job_id, job_parameters=job_parameters or None).run_id


def wait(w, run_id: int, timeout: float, poll: float = 10.0, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> Any:
    """Poll until the run is terminal; RunTimeout after ``timeout`` seconds (the run keeps going)."""
    deadline = clock() + timeout
    while True:
        run = w.jobs.get_run(run_id)
        state = run.state.life_cycle_state.value if run.state and run.state.life_cycle_state else "UNKNOWN"
        if state in TERMINAL:
            return run
        if clock() >= deadline:
            raise RunTimeout(f"run {run_id} still {state} after {timeout:g} s: {run.run_page_url or ''}".rstrip(": "))
        log.info("run %s: %s", run_id, state)
        sleep(min(poll, max(0.0, deadline - clock())))


def report(w, run, output_dir: str | None = None) -> RunReport:
    """State of the run and its tasks, the error of each failed task, and the run's metrics if readable."""
    state = run.state
    tasks = []
    for t in run.tasks or []:
        ts = t.state
        entry = {"task_key": t.task_key, "run_id": t.run_id,
                 "life_cycle_state": ts.life_cycle_state.value if ts and ts.life_cycle_state else None,
                 "result_state": ts.result_state.value if ts and ts.result_state else None}
        if entry["result_state"] not in (None, "SUCCESS"):
            try:
                out = w.jobs.get_run_output(t.run_id)
                entry["error"] = out.error or (out.logs or "")[-500:]
            except Exception as exc:  # the output may be gone or not yet there; the state says enough
                entry["error"] = f"(output unavailable: {exc})"
        tasks.append(entry)
    result = RunReport(
        run_id=run.run_id, url=run.run_page_url,
        life_cycle_state=state.life_cycle_state.value if state and state.life_cycle_state else "UNKNOWN",
        result_state=state.result_state.value if state and state.result_state else None,
        state_message=(state.state_message or "") if state else "", tasks=tasks,
    )
    if result.succeeded and output_dir and output_dir.startswith("/Volumes/"):
        if "${workspace.current_user." in output_dir:  # a dev target's per-user folder: the caller's
            output_dir = with_current_user(output_dir, current_user(w))
        result.metrics = fetch_json(w, f"{output_dir.rstrip('/')}/evaluation/metrics.json")
    return result


def fetch_json(w, path: str) -> dict[str, Any] | None:
    """A JSON file from a Unity Catalog volume (Files API); None when it cannot be read."""
    try:
        with w.files.download(path).contents as f:
            return json.loads(f.read())
    except Exception as exc:  # reported as missing metrics, not as a failed run
        log.warning("could not read %s: %s", path, exc)
        return None
