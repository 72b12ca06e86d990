"""The deploy commands of ``sparkvision``: ``submit``, ``cluster``, ``bundle`` and ``databricks``.

:func:`add_parsers` adds them to the main parser; :data:`COMMANDS` maps each to its handler, which
returns the process exit code. The pipeline's own commands live in :mod:`sparkvision.cli`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sparkvision import secrets
from sparkvision import settings as config_mod
from sparkvision.deploy import bundle, clusters
from sparkvision.deploy import databricks as dbx


def add_parsers(sub) -> None:
    text = "spark-submit a job (default: run) to a standalone master, sized by a cluster spec"
    p = sub.add_parser("submit", help=text, description=text + ". Arguments after the options (or after --) "
                       "are the job's, e.g. `sparkvision submit --cluster-spec ci --master spark://h:7077 -- run --images DIR`.")
    p.add_argument("--cluster-spec", required=True, help="infra/clusters/NAME.yml, or just NAME")
    p.add_argument("--master", required=True, help="spark://HOST:PORT")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the spark-submit command and exit")
    p.add_argument("job", nargs=argparse.REMAINDER, help="job and its arguments (default: run, the demo)")

    text = "show what a cluster spec becomes: spark-submit settings, or a standalone worker's environment"
    p = sub.add_parser("cluster", help=text, description=text)
    p.add_argument("what", choices=["conf", "worker-env"])
    p.add_argument("--cluster-spec", required=True, help="infra/clusters/NAME.yml, or just NAME")

    text = "check the Databricks bundle offline, or regenerate its job clusters from infra/clusters"
    p = sub.add_parser("bundle", help=text, description=text)
    p.add_argument("what", choices=["validate", "clusters"], help="validate: check bundle.yml for a target; "
                   "clusters: print (or --write) infra/databricks/clusters.yml")
    p.add_argument("--target", "-t", help="bundle target (default: the default target); validate only")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="set a bundle variable (repeatable)")
    p.add_argument("--schema", help="bundle JSON schema (default $SPARKVISION_BUNDLE_SCHEMA or ../shared/databricks/...)")
    p.add_argument("--root", default=".", help="folder with bundle.yml (default: .)")
    p.add_argument("--write", action="store_true", help="clusters: write the file instead of printing it")
    p.add_argument("--output-json", action="store_true", help="validate: print the resolved configuration as JSON")

    text = "run on Databricks with databricks-sdk (auth: DATABRICKS_* env vars or a ~/.databrickscfg profile)"
    p = sub.add_parser("databricks", help=text, description=text + ". submit: upload the wheel and run the bundle's "
                       "pipeline once; run: run a deployed job; status: show a run.")
    p.add_argument("action", choices=["submit", "run", "status"])
    p.add_argument("run_id", nargs="?", type=int, help="status: the run id")
    p.add_argument("--profile", help="~/.databrickscfg profile (default: the SDK's default resolution)")
    p.add_argument("--target", "-t", help="submit: bundle target whose variables and clusters to use")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="submit: bundle variable")
    p.add_argument("--root", default=".", help="submit: folder with bundle.yml")
    p.add_argument("--job", default="sparkvision_pipeline", help="submit: bundle job to submit")
    p.add_argument("--wheel", help="submit: wheel to upload (default: build one from --root)")
    p.add_argument("--job-name", default="sparkvision-pipeline", help="run: deployed job name (dev targets prefix it)")
    p.add_argument("--job-id", type=int, help="run: deployed job id (instead of --job-name)")
    p.add_argument("--output", help="run/status: the run's output folder, to fetch evaluation/metrics.json")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run (default 3600)")
    p.add_argument("--poll", type=float, default=15, help="seconds between status checks (default 15)")
    p.add_argument("--no-wait", action="store_true", help="print the run id and return")


def pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise config_mod.ConfigError(f"{flag} {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


def _submit(args: argparse.Namespace) -> int:
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    # The job's arguments end up on spark-submit's command line (ps, /proc): no credential may be among them.
    for i, arg in enumerate(job, start=1):
        key, sep, value = arg.partition("=")
        if secrets.looks_like_secret(arg) or (sep and secrets.is_secret_setting(key.rsplit(".", 1)[-1], value)) or (
                sep and any(secrets.find_credentials(_yaml_or_text(value)))):
            raise clusters.ClusterSpecError(
                f"job argument {i} ({key + '=...' if sep else 'a value'}) holds a credential, which would be visible "
                "on the spark-submit command line: give it through the environment or a profile instead")
    # A spark:// master needs the cluster's shared secret (deploy/auth.py: SPARKVISION_SPARK_SECRET_FILE or
    # SPARK_AUTH_SECRET; SPARKVISION_INSECURE=1 for an unauthenticated cluster). The command line only says
    # spark.authenticate=true: the driver inherits the environment and reads the secret in-process.
    cmd = clusters.submit_command(clusters.load_spec(args.cluster_spec), args.master, job or ["run"],
                                  pairs(args.conf, "--conf"))
    print("+ " + secrets.redact_text(" ".join(shlex.quote(c) for c in cmd)), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def _yaml_or_text(value: str):
    """A ``--set`` value as the pipeline will read it (YAML), so credentials inside a mapping are found."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _cluster(args: argparse.Namespace) -> int:
    spec = clusters.load_spec(args.cluster_spec)
    if args.what == "conf":
        print("\n".join(f"{k}={v}" for k, v in clusters.submit_conf(spec).items()))
    else:
        print(clusters.shell_assignments(clusters.worker_env(spec)))
    return 0


def _print_problems(exc) -> None:
    print(f"sparkvision: bundle invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def _bundle(args: argparse.Namespace) -> int:
    if args.what == "clusters":
        text = bundle.render_clusters_include(os.path.join(args.root, "infra", "clusters"))
        if not args.write:
            print(text, end="")
            return 0
        path = os.path.join(args.root, bundle.CLUSTERS_INCLUDE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path}")
        return 0
    try:
        result = bundle.validate(args.root, args.target, pairs(args.var, "--var"), args.schema)
    except bundle.BundleError as exc:
        _print_problems(exc)
        return 1
    if args.output_json:
        print(json.dumps(result["config"], indent=2))
    jobs = ", ".join(f"{name} ({n} tasks)" for name, n in result["jobs"].items())
    schema = f"JSON schema {result['schema']}" if result["schema"] else "JSON schema not checked (none found; --schema FILE)"
    print(f"bundle valid for target {result['target']}: {jobs}; {schema}", file=sys.stderr if args.output_json else sys.stdout)
    return 0


def _build_wheel(root: str) -> str:
    out = tempfile.mkdtemp(prefix="sparkvision-wheel-")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", out, root], check=True)
    return glob.glob(os.path.join(out, "*.whl"))[0]


def _databricks(args: argparse.Namespace) -> int:
    try:
        from databricks.sdk.errors import DatabricksError  # optional
    except ImportError:
        print("sparkvision: databricks: databricks-sdk is not installed: pip install 'sparkvision[databricks]'",
              file=sys.stderr)
        return 2
    try:
        w = dbx.client(args.profile)
        output = args.output
        if args.action == "status":
            if args.run_id is None:
                raise config_mod.ConfigError("status needs a RUN_ID")
            run_id = args.run_id
        elif args.action == "submit":
            result = bundle.validate(args.root, args.target, pairs(args.var, "--var"))
            output = output or result["variables"].get("output")
            wheel = Path(args.wheel or _build_wheel(args.root))
            run_id = dbx.submit(w, result["config"], wheel, args.job, mode=result["mode"])
        else:
            job_id = args.job_id or dbx.find_job(w, args.job_name)
            run_id = dbx.run_now(w, job_id)
        print(f"run id: {run_id}", flush=True)
        if args.no_wait and args.action != "status":
            return 0
        run = dbx.wait(w, run_id, args.timeout, args.poll) if args.action != "status" else w.jobs.get_run(run_id)
        rep = dbx.report(w, run, output)
        print("\n".join(rep.lines()))
        if args.action == "status" and rep.life_cycle_state not in dbx.TERMINAL:
            return 0
        return 0 if rep.succeeded else 1
    except dbx.RunTimeout as exc:
        print(f"sparkvision: databricks: {exc}", file=sys.stderr)
        return 3
    except bundle.BundleError as exc:
        _print_problems(exc)
        return 2
    except (DatabricksError, LookupError, ValueError) as exc:
        print(f"sparkvision: databricks: {exc}", file=sys.stderr)
        return 2


COMMANDS = {"submit": _submit, "cluster": _cluster, "bundle": _bundle, "databricks": _databricks}
