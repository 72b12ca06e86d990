#!/usr/bin/env bash
# Start the compose cluster (master + 2 workers) from the built image, submit the demo job to it, check
# and print its result, and take the cluster down again. Needs a running Docker engine (DOCKER_HOST).
#   SPARKVISION_IMAGE (sparkvision:latest)  SPARKVISION_DATA (a new temp folder)  SPARK_MASTER_PORT ...
set -euo pipefail
cd "$(dirname "$0")"
export SPARKVISION_IMAGE=${SPARKVISION_IMAGE:-sparkvision:latest}
export SPARKVISION_DATA=${SPARKVISION_DATA:-$(mktemp -d /tmp/sparkvision-compose.XXXXXX)}
mkdir -p "$SPARKVISION_DATA"
chown 1000:1000 "$SPARKVISION_DATA" 2>/dev/null || chmod 0777 "$SPARKVISION_DATA"  # the image's user is uid 1000
compose=(docker-compose -p sparkvision-demo -f docker-compose.yml)
log() { printf '[compose-demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

trap '"${compose[@]}" --profile job logs --no-color --tail=20 master worker-1 worker-2 >&2 || true;
      "${compose[@]}" --profile job down --remove-orphans >/dev/null 2>&1 || true' EXIT
log "starting master and 2 workers from $SPARKVISION_IMAGE (data: $SPARKVISION_DATA)"
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
trap '"${compose[@]}" --profile job down --remove-orphans >/dev/null 2>&1 || true' EXIT
log "ok"
