#!/usr/bin/env bash
# The image's modes (docs/docker-standalone.md):
#   test [pytest args]          the test suite (test image)
#   sparkvision ARGS            any job, e.g. `sparkvision run` (the demo)
#   master                      a standalone master in the foreground
#   worker SPARK_MASTER_URL     a standalone worker in the foreground
#   submit ARGS                 `sparkvision submit ARGS`: spark-submit of the pipeline with a cluster spec
#   help                        this text
# Anything else is run as a command. Addresses, ports and sizes come from the environment:
#   SPARK_LOCAL_IP (127.0.0.1)  address the daemons and their web UIs bind to: set it to this host's
#                               address on the cluster network (the default reaches this host only)
#   SPARK_MASTER_HOST (SPARK_LOCAL_IP) SPARK_MASTER_PORT (7077) SPARK_MASTER_WEBUI_PORT (8080)
#   SPARK_WORKER_HOST (SPARK_LOCAL_IP) SPARK_WORKER_PORT (random) SPARK_WORKER_WEBUI_PORT (8081)
#   SPARK_WORKER_DIR (/tmp/spark-work)
#   SPARKVISION_CLUSTER_SPEC    cluster spec whose executor cores/memory (and GPUs) size the worker
# Authentication (spark.authenticate): master, workers and every driver share one secret, from
#   SPARKVISION_SPARK_SECRET_FILE  a file holding it, e.g. a Docker/Kubernetes secret in /run/secrets/
#   SPARK_AUTH_SECRET              or the secret itself
# master and worker refuse to start without one unless SPARKVISION_INSECURE=1 (anyone who reaches an
# unauthenticated cluster's ports can run code on it). The secret reaches Spark in the environment only.
set -euo pipefail

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; printf '%s' "${s%"${s##*[![:space:]]}"}"; }

# The shared secret into $secret (empty: none configured); never printed, never an argument.
load_secret() {
  secret=
  local file=${SPARKVISION_SPARK_SECRET_FILE:-} literal mode
  if [ -n "$file" ]; then
    [ -f "$file" ] && [ -r "$file" ] || { echo "SPARKVISION_SPARK_SECRET_FILE=$file: not a readable file" >&2; exit 2; }
    mode=$(stat -L -c %a "$file")
    if (( (8#$mode & 8#077) != 0 )); then
      echo "warning: SPARKVISION_SPARK_SECRET_FILE=$file is readable by group or others (mode $mode): chmod 600 it" >&2
    fi
    secret=$(trim "$(<"$file")")
    [ -n "$secret" ] || { echo "SPARKVISION_SPARK_SECRET_FILE=$file is empty" >&2; exit 2; }
  fi
  literal=$(trim "${SPARK_AUTH_SECRET:-}")  # empty: not set
  if [ -n "$literal" ]; then
    if [ -n "$secret" ] && [ "$secret" != "$literal" ]; then
      echo "SPARKVISION_SPARK_SECRET_FILE and SPARK_AUTH_SECRET are both set and differ: set only one" >&2; exit 2
    fi
    secret=$literal
  fi
  case $secret in *$'\n'*) echo "the Spark secret must be one line" >&2; exit 2 ;; esac
}

# AES-based RPC encryption wherever authentication is on: the traffic (tasks, models, shuffle blocks,
# results) is not readable or alterable on the network. Drivers and executors get the same settings
# (sparkvision.run.auth.ENCRYPTION; tests/deploy/test_clusters.py keeps the two equal). Local-disk encryption
# (spark.io.encryption.enabled) is left to the cluster spec: see ENCRYPTION's comment for why.
RPC_ENCRYPTION="-Dspark.network.crypto.enabled=true -Dspark.network.crypto.cipher=AES/GCM/NoPadding -Dspark.network.crypto.authEngineVersion=2"

# Authentication and encryption for a daemon ($1: master|worker; $2: the name of its *_OPTS variable).
daemon_auth() {
  local role=$1 var=$2 opts
  load_secret
  if [ -n "$secret" ]; then
    export _SPARK_AUTH_SECRET=$secret  # read by Spark's SecurityManager; workers pass it on to executors
    unset SPARK_AUTH_SECRET secret
    opts="-Dspark.authenticate=true $RPC_ENCRYPTION"
    echo "$role: Spark authentication and RPC encryption on (shared secret from the environment)" >&2
  elif [ "${SPARKVISION_INSECURE:-0}" = 1 ]; then
    unset _SPARK_AUTH_SECRET
    opts="-Dspark.authenticate=false"
    echo "WARNING: SPARKVISION_INSECURE=1: the $role runs WITHOUT authentication; anyone who can reach its ports can run code on this cluster" >&2
  else
    echo "refusing to start the $role without a shared secret: set SPARKVISION_SPARK_SECRET_FILE to a file holding it (e.g. a Docker/Kubernetes secret in /run/secrets/) or SPARK_AUTH_SECRET; master, workers and drivers need the same one. SPARKVISION_INSECURE=1 starts it without authentication: anyone who can reach its ports can then run code on the cluster." >&2
    exit 2
  fi
  # The master's REST submission server (on by default since Spark 4.1) authenticates nobody: always off.
  [ "$role" = master ] && opts="$opts -Dspark.master.rest.enabled=false"
  export "$var=${!var:-} $opts"
}

mode=${1:-help}
[ $# -gt 0 ] && shift
case "$mode" in
  test)
    cd "${SPARKVISION_HOME:-/opt/sparkvision}"
    exec python -m pytest -p no:cacheprovider "$@"
    ;;
  sparkvision)
    exec sparkvision "$@"
    ;;
  submit)
    exec sparkvision submit "$@"
    ;;
  master)
    host=${SPARK_MASTER_HOST:-${SPARK_LOCAL_IP:-127.0.0.1}}
    export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-$host}  # the web UI binds here (Spark: 0.0.0.0 without it)
    daemon_auth master SPARK_MASTER_OPTS
    echo "master: spark://$host:${SPARK_MASTER_PORT:-7077}, web UI on $SPARK_LOCAL_IP:${SPARK_MASTER_WEBUI_PORT:-8080}" >&2
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
      --host "$host" --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
  worker)
    [ $# -ge 1 ] || { echo "usage: worker spark://HOST:PORT [worker options]" >&2; exit 2; }
    master_url=$1; shift
    host=${SPARK_WORKER_HOST:-${SPARK_LOCAL_IP:-127.0.0.1}}
    export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-$host}  # the web UI and the executors bind here
    sizing=()
    if [ -n "${SPARKVISION_CLUSTER_SPEC:-}" ]; then
      # One place for sizes: the cluster spec (cores, memory; GPU options go in SPARK_WORKER_OPTS).
      eval "$(sparkvision cluster worker-env --cluster-spec "$SPARKVISION_CLUSTER_SPEC")"
      sizing=(--cores "$SPARKVISION_WORKER_CORES" --memory "$SPARKVISION_WORKER_MEMORY")
    fi
    daemon_auth worker SPARK_WORKER_OPTS
    mkdir -p "${SPARK_WORKER_DIR:=/tmp/spark-work}"
    echo "worker on $host for $master_url, web UI on $SPARK_LOCAL_IP:${SPARK_WORKER_WEBUI_PORT:-8081}" >&2
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --host "$host" --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" --work-dir "$SPARK_WORKER_DIR" \
      ${SPARK_WORKER_PORT:+--port "$SPARK_WORKER_PORT"} "${sizing[@]}" "$@" "$master_url"
    ;;
  help|-h|--help)
    usage
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
