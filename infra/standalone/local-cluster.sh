#!/usr/bin/env bash
# A real Spark standalone cluster on loopback, without Docker, from pyspark's own spark-class:
#
#   infra/standalone/local-cluster.sh start [STATE_DIR]   # master + workers; prints the master URL
#   infra/standalone/local-cluster.sh stop  [STATE_DIR]
#
# Each daemon runs in its own session (process group), so stopping or killing a worker takes its
# executors and Python workers with it, as losing a machine would. Sizes come from the cluster spec.
# Environment: SPARK_MASTER_PORT (7077), SPARK_MASTER_WEBUI_PORT (8080), SPARKVISION_WORKERS (the
# spec's workers), SPARKVISION_CLUSTER_SPEC (ci), PYSPARK_PYTHON (the python on PATH).
set -euo pipefail
cmd=${1:?usage: local-cluster.sh start|stop [STATE_DIR]}
state=${2:-${TMPDIR:-/tmp}/sparkvision-local-cluster}
spec=${SPARKVISION_CLUSTER_SPEC:-ci}

stop() {
  local pid
  for f in "$state"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for f in "$state"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

wait_for() {  # wait_for LOG PATTERN WHAT
  for _ in $(seq 120); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "$3 did not start; last lines of $1:" >&2
  tail -20 "$1" >&2
  stop
  exit 1
}

case "$cmd" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: local-cluster.sh start|stop [STATE_DIR]" >&2; exit 2 ;;
esac

python=${PYSPARK_PYTHON:-$(command -v python3)}
export PYSPARK_PYTHON=$python SPARK_LOCAL_IP=127.0.0.1
export SPARK_HOME=${SPARK_HOME:-$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
eval "$("$python" -m sparkvision.cli cluster worker-env --cluster-spec "$spec")"
workers=${SPARKVISION_WORKERS:-$("$python" -c "import sys; from sparkvision.clusters import load_spec; print(load_spec(sys.argv[1]).workers)" "$spec")}
port=${SPARK_MASTER_PORT:-7077}
url=spark://127.0.0.1:$port

mkdir -p "$state"
stop  # leftovers of an earlier start in the same state dir
setsid "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" \
  --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" >"$state/master.log" 2>&1 &
echo $! >"$state/master.pid"
wait_for "$state/master.log" "I have been elected leader" "the master"
for i in $(seq "$workers"); do
  mkdir -p "$state/work-$i"
  setsid "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --webui-port 0 \
    --cores "$SPARKVISION_WORKER_CORES" --memory "$SPARKVISION_WORKER_MEMORY" --work-dir "$state/work-$i" \
    "$url" >"$state/worker-$i.log" 2>&1 &
  echo $! >"$state/worker-$i.pid"
done
for i in $(seq "$workers"); do
  wait_for "$state/worker-$i.log" "Successfully registered with master" "worker $i"
done
echo "$url" >"$state/master-url"
echo "$url"
