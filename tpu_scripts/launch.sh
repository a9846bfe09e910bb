#!/usr/bin/env bash
# Run one r1ci command on every worker at once; jax.distributed discovers the slice.
#   ./launch.sh grpo --config configs/grpo/qwen2.5-7b-v4-32.yaml
# Output of each worker goes to ~/r1ci-logs/run.log on that worker (see logs.sh).
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
args=$(printf '%q ' "$@")
tpu_ssh all "mkdir -p ~/r1ci-logs && cd $REMOTE_DIR && nohup .venv/bin/r1ci $args > ~/r1ci-logs/run.log 2>&1 &"
echo "launched on all workers of $TPU_NAME; tail with: $(dirname "$0")/logs.sh"
