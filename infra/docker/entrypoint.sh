#!/usr/bin/env bash
# The image's modes (README "Docker and standalone Spark"):
#   test [pytest args]          the test suite (test image)
#   sparkvision ARGS            any job, e.g. `sparkvision run` (the demo)
#   master                      a standalone master in the foreground
#   worker SPARK_MASTER_URL     a standalone worker in the foreground
#   submit ARGS                 `sparkvision submit ARGS`: spark-submit of the pipeline with a cluster spec
#   help                        this text
# Anything else is run as a command. Ports and sizes come from the environment:
#   SPARK_MASTER_HOST (0.0.0.0) SPARK_MASTER_PORT (7077) SPARK_MASTER_WEBUI_PORT (8080)
#   SPARK_WORKER_PORT (random)  SPARK_WORKER_WEBUI_PORT (8081) SPARK_WORKER_DIR (/tmp/spark-work)
#   SPARKVISION_CLUSTER_SPEC    cluster spec whose executor cores/memory (and GPUs) size the worker
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

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
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-0.0.0.0}" --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
  worker)
    [ $# -ge 1 ] || { echo "usage: worker spark://HOST:PORT [worker options]" >&2; exit 2; }
    master_url=$1; shift
    sizing=()
    if [ -n "${SPARKVISION_CLUSTER_SPEC:-}" ]; then
      # One place for sizes: the cluster spec (cores, memory; GPU options go in SPARK_WORKER_OPTS).
      eval "$(sparkvision cluster worker-env --cluster-spec "$SPARKVISION_CLUSTER_SPEC")"
      sizing=(--cores "$SPARKVISION_WORKER_CORES" --memory "$SPARKVISION_WORKER_MEMORY")
    fi
    mkdir -p "${SPARK_WORKER_DIR:=/tmp/spark-work}"
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" --work-dir "$SPARK_WORKER_DIR" \
      ${SPARK_WORKER_PORT:+--port "$SPARK_WORKER_PORT"} "${sizing[@]}" "$@" "$master_url"
    ;;
  help|-h|--help)
    usage
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
