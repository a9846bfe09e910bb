#!/usr/bin/env bash
# Multi-node GPU with the same entry point: run this on every node with NODE_RANK set.
#   COORDINATOR=10.0.0.1:8476 NUM_NODES=2 NODE_RANK=0 ./gpu_multinode.sh grpo --config ...
set -euo pipefail
: "${COORDINATOR:?host:port of node 0}" "${NUM_NODES:?}" "${NODE_RANK:?}"
export R1CI_COORDINATOR="$COORDINATOR" R1CI_NUM_PROCESSES="$NUM_NODES" R1CI_PROCESS_ID="$NODE_RANK"
exec "$(dirname "$0")/../.venv/bin/r1ci" "$@"
