#!/usr/bin/env bash
# Start the compose cluster (master + 2 workers) from the built image, submit the demo job to it, check
# and print its result, and take the cluster down again. Needs a running Docker engine (DOCKER_HOST).
#   SPARKVISION_IMAGE (sparkvision:latest)  SPARKVISION_DATA (a new temp folder)  SPARK_MASTER_PORT ...
#   SPARKVISION_SPARK_SECRET_FILE: the cluster's shared Spark secret; by default a new
#   random one in a private temp folder (0700; the file 0600, owned by the image's user), removed at exit.
set -euo pipefail
if [ -n "${SPARKVISION_SPARK_SECRET_FILE:-}" ]; then  # compose reads a relative path from its own folder
  SPARKVISION_SPARK_SECRET_FILE=$(realpath -e "$SPARKVISION_SPARK_SECRET_FILE")
  export SPARKVISION_SPARK_SECRET_FILE
fi
cd "$(dirname "$0")"
export SPARKVISION_IMAGE=${SPARKVISION_IMAGE:-sparkvision:latest}
export SPARKVISION_DATA=${SPARKVISION_DATA:-$(mktemp -d /tmp/sparkvision-compose.XXXXXX)}
mkdir -p "$SPARKVISION_DATA"
chown 1000:1000 "$SPARKVISION_DATA" 2>/dev/null || chmod 0777 "$SPARKVISION_DATA"  # the image's user is uid 1000
secret_dir=
if [ -z "${SPARKVISION_SPARK_SECRET_FILE:-}" ]; then
  # Not in SPARKVISION_DATA: that folder is mounted at /data in every container and outlives the demo.
  secret_dir=$(mktemp -d /tmp/sparkvision-compose-secret.XXXXXX)
  export SPARKVISION_SPARK_SECRET_FILE=$secret_dir/spark_secret
  (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$SPARKVISION_SPARK_SECRET_FILE")
  # The compose secret is the host file itself, bind-mounted with its owner and mode: the containers' user
  # (uid 1000) must be able to read it. As root: hand it to uid 1000, keep 0600. Otherwise, unless we are
  # uid 1000, it must be world-readable; the 0700 folder still keeps other users of this host out.
  if [ "$(id -u)" != 1000 ] && ! chown 1000:1000 "$SPARKVISION_SPARK_SECRET_FILE" 2>/dev/null; then
    chmod 0644 "$SPARKVISION_SPARK_SECRET_FILE"
  fi
fi
compose=(docker-compose -p sparkvision-demo -f docker-compose.yml)
log() { printf '[compose-demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
cleanup() {
  "${compose[@]}" --profile job down --remove-orphans >/dev/null 2>&1 || true
  [ -z "$secret_dir" ] || rm -rf "$secret_dir"
}

trap '"${compose[@]}" --profile job logs --no-color --tail=20 master worker-1 worker-2 >&2 || true; cleanup' EXIT
log "starting master and 2 workers from $SPARKVISION_IMAGE (data: $SPARKVISION_DATA; Spark authentication on)"
"${compose[@]}" up -d master worker-1 worker-2
log "submitting the demo job"
started=$SECONDS
"${compose[@]}" --profile job run --rm submit
log "job finished in $((SECONDS - started)) s"
"${compose[@]}" ps
python3 - "$SPARKVISION_DATA/runs/demo" "${SPARK_MASTER_WEBUI_PORT:-8080}" <<'PY'
import json, sys, urllib.request
out, ui = sys.argv[1], sys.argv[2]
master = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5))
apps = master["completedapps"]
print(f"master: {master['aliveworkers']} alive workers, {master['cores']} cores; completed apps:",
      [(a["name"], a["state"]) for a in apps])
assert master["aliveworkers"] == 2, "expected two workers"
assert any(a["name"].startswith("sparkvision") and a["state"] == "FINISHED" for a in apps), "the job did not run on the cluster"
m = json.load(open(f"{out}/evaluation/metrics.json"))
load = json.load(open(f"{out}/load.json"))
print(f"compose demo: {load['accepted']} images, accuracy {m['accuracy']:.4f} vs baseline {m['baseline_accuracy']:.4f}, "
      f"ROC AUC {m['roc_auc']:.4f}")
assert m["accuracy"] > m["baseline_accuracy"], "demo accuracy is not above the majority baseline"
PY
trap cleanup EXIT
log "ok"
