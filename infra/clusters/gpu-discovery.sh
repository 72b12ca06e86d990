#!/usr/bin/env bash
# Spark GPU discovery script (spark.{executor,worker}.resource.gpu.discoveryScript): prints
# {"name": "gpu", "addresses": ["0", "1", ...]} for the GPUs nvidia-smi lists, honouring
# CUDA_VISIBLE_DEVICES when it holds indices. Exits non-zero when no GPU is visible.
set -euo pipefail
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [[ "$CUDA_VISIBLE_DEVICES" =~ ^[0-9,]+$ ]]; then
  ids=${CUDA_VISIBLE_DEVICES//,/ }
else
  ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
fi
addresses=$(for i in $ids; do printf '"%s",' "$i"; done)
[ -n "$addresses" ] || { echo "no GPU found by nvidia-smi" >&2; exit 1; }
printf '{"name": "gpu", "addresses": [%s]}\n' "${addresses%,}"
