"""A local stand-in for the Databricks REST endpoints sparkvision's SDK code uses, on 127.0.0.1.

It checks each request's shape (auth header, paths, bodies) and records what it saw; scenarios:
``success``, ``failed`` (the train task fails), ``running`` (never finishes), ``unauthorized``
(every call 401), ``throttled`` (the first submit gets 429 with Retry-After).
"""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = "dapi" + "5f3c9a7e1b2d4c6f8a0e2b4d6f8a1c3e"
USER = "someone@example.com"
SHORT_NAME = "someone"   # ${workspace.current_user.short_name} of USER
ENTRY_POINTS = {"sparkvision-load", "sparkvision-featurize", "sparkvision-train", "sparkvision-evaluate",
                "sparkvision-predict", "sparkvision-run"}
METRICS = {"accuracy": 0.95, "baseline_accuracy": 0.5, "roc_auc": 0.976, "n": 20}


class FakeWorkspace:
    def __init__(self, scenario: str = "success"):
        self.scenario = scenario
        self.requests: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.uploads: dict[str, bytes] = {}
        self.submitted: dict | None = None
        self.polls = 0
        self.throttled = 0
        # The runs' metrics where each target writes them (the dev targets: the user's own folder).
        self.files = {f"/Volumes/main/sparkvision/data/runs/{folder}/evaluation/metrics.json": json.dumps(METRICS).encode()
                      for folder in ("dev", f"dev/{SHORT_NAME}", f"dev-serverless/{SHORT_NAME}", "prod", "prod-serverless")}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ---- the API ------------------------------------------------------------------------------------

    def _run(self, run_id: int) -> dict:
        self.polls += 1
        tasks = (self.submitted or {}).get("tasks") or [{"task_key": "load"}]
        done = self.scenario != "running" and self.polls >= 2
        failed_at = next((i for i, t in enumerate(tasks) if t["task_key"] == "train"), None) if self.scenario == "failed" else None
        task_states = []
        for i, t in enumerate(tasks):
            if not done:
                state = {"life_cycle_state": "RUNNING" if i == 0 else "PENDING"}
            elif failed_at is not None and i == failed_at:
                state = {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "Workload failed"}
            elif failed_at is not None and i > failed_at:
                state = {"life_cycle_state": "SKIPPED", "result_state": "UPSTREAM_FAILED"}
            else:
                state = {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"}
            task_states.append({"task_key": t["task_key"], "run_id": 1000 + i, "state": state})
        if not done:
            state = {"life_cycle_state": "RUNNING", "state_message": ""}
        else:
            result = "FAILED" if failed_at is not None else "SUCCESS"
            state = {"life_cycle_state": "TERMINATED", "result_state": result,
                     "state_message": "Task train failed" if failed_at is not None else ""}
        return {"run_id": run_id, "state": state, "tasks": task_states,
                "run_page_url": f"{self.url}/#job/1/run/{run_id}"}

    def _check_submit(self, body: dict) -> None:
        """As runs/submit checks a one-time run: a task runs on an inline new_cluster with the wheel as a
        library (classic), or names one of the run's environments, which installs the wheel (serverless)."""
        tasks = body.get("tasks") or []
        if not tasks:
            self.problems.append("submit: no tasks")
        environments = {e.get("environment_key"): e for e in body.get("environments") or []}
        for key, env in environments.items():
            spec = env.get("spec") or {}
            deps = spec.get("dependencies") or []
            if not (spec.get("environment_version") or spec.get("client")):
                self.problems.append(f"submit: environment {key}: no environment_version")
            if not any(d in self.uploads for d in deps):
                self.problems.append(f"submit: environment {key}: dependencies {deps} hold no uploaded wheel {sorted(self.uploads)}")
            if any(d.endswith(".whl") and d not in self.uploads for d in deps):
                self.problems.append(f"submit: environment {key}: a wheel dependency was not uploaded: {deps}")
        used = {t.get("environment_key") for t in tasks} - {None}
        if set(environments) - used:
            self.problems.append(f"submit: environments {sorted(set(environments) - used)} used by no task")
        seen = set()
        for t in tasks:
            key = t.get("task_key")
            wheel = t.get("python_wheel_task") or {}
            if wheel.get("package_name") != "sparkvision" or wheel.get("entry_point") not in ENTRY_POINTS:
                self.problems.append(f"submit: task {key}: python_wheel_task {wheel}")
            if any("${" in str(p) for p in wheel.get("parameters") or []):
                self.problems.append(f"submit: task {key}: unresolved reference in parameters {wheel.get('parameters')}")
            if "job_cluster_key" in t:
                self.problems.append(f"submit: task {key}: one-time runs have no job clusters, got {sorted(t)}")
            if "environment_key" in t:
                if t["environment_key"] not in environments:
                    self.problems.append(f"submit: task {key}: environment {t['environment_key']!r} not in {sorted(environments)}")
                if "new_cluster" in t or "existing_cluster_id" in t or t.get("libraries"):
                    self.problems.append(f"submit: task {key}: a serverless task with a cluster or libraries: {sorted(t)}")
            else:
                cluster = t.get("new_cluster") or {}
                if not (cluster.get("spark_version") and cluster.get("node_type_id")):
                    self.problems.append(f"submit: task {key}: needs an inline new_cluster or an environment_key, got {sorted(t)}")
                libs = [lib.get("whl") for lib in t.get("libraries") or [] if "whl" in lib]
                if not libs or any(lib not in self.uploads for lib in libs):
                    self.problems.append(f"submit: task {key}: libraries {libs} are not uploaded wheels {sorted(self.uploads)}")
            for dep in t.get("depends_on") or []:
                if dep.get("task_key") not in seen:
                    self.problems.append(f"submit: task {key} depends on unknown/later task {dep}")
            seen.add(key)

    def _handler(self):
        ws = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload=None, raw: bytes | None = None, headers=None):
                data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, message: str, headers=None):
                self._send(status, {"error_code": code, "message": message}, headers=headers)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _dispatch(self, method: str):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = self._body() if method == "POST" else b""
                ws.requests.append((method, url.path))
                if url.path.startswith("/.well-known/"):  # the SDK's host discovery, unauthenticated
                    return self._error(404, "NOT_FOUND", "not a unified host")
                if ws.scenario == "unauthorized":
                    return self._error(401, "UNAUTHENTICATED", "Invalid access token.")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    ws.problems.append(f"{method} {url.path}: missing or wrong bearer token")
                    return self._error(401, "UNAUTHENTICATED", "Invalid access token.")
                route = (method, url.path)
                if route == ("GET", "/api/2.0/preview/scim/v2/Me"):
                    return self._send(200, {"id": "1", "userName": USER})
                if route == ("POST", "/api/2.0/workspace/mkdirs"):
                    path = json.loads(body).get("path", "")
                    if not path.startswith(f"/Workspace/Users/{USER}/"):
                        ws.problems.append(f"mkdirs outside the user's folder: {path}")
                    return self._send(200, {})
                if route == ("POST", "/api/2.0/workspace/import"):
                    msg = BytesParser(policy=HTTP).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
                    parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                             for p in msg.iter_parts()}
                    path = parts.get("path", b"").decode()
                    if parts.get("format") != b"AUTO" or not path.endswith(".whl") or not parts.get("content"):
                        ws.problems.append(f"import: unexpected form {sorted(parts)} for {path}")
                    ws.uploads[path] = parts.get("content") or b""
                    return self._send(200, {})
                if route == ("POST", "/api/2.2/jobs/runs/submit"):
                    if ws.scenario == "throttled" and ws.throttled == 0:
                        ws.throttled += 1
                        return self._error(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests", {"Retry-After": "1"})
                    ws.submitted = json.loads(body)
                    ws._check_submit(ws.submitted)
                    return self._send(200, {"run_id": 101})
                if route == ("GET", "/api/2.2/jobs/runs/get"):
                    return self._send(200, ws._run(int(query["run_id"])))
                if route == ("GET", "/api/2.2/jobs/runs/get-output"):
                    return self._send(200, {"error": "ValueError: no features for class 'ronaldo'",
                                            "metadata": {"run_id": int(query["run_id"])}})
                if route == ("GET", "/api/2.2/jobs/list"):
                    jobs = [{"job_id": 7, "settings": {"name": "sparkvision-pipeline"}}]
                    return self._send(200, {"jobs": [j for j in jobs if j["settings"]["name"] == query.get("name")]})
                if route == ("POST", "/api/2.2/jobs/run-now"):
                    if json.loads(body).get("job_id") != 7:
                        ws.problems.append(f"run-now: unexpected body {body!r}")
                    return self._send(200, {"run_id": 102, "number_in_job": 1})
                if method == "GET" and url.path.startswith("/api/2.0/fs/files/"):
                    path = url.path[len("/api/2.0/fs/files"):]
                    if path in ws.files:
                        return self._send(200, raw=ws.files[path])
                    return self._error(404, "NOT_FOUND", f"{path} not found")
                return self._error(404, "ENDPOINT_NOT_FOUND", f"no fake for {method} {url.path}")

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_HEAD(self):
                self._dispatch("HEAD")

        return Handler
