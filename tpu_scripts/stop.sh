#!/usr/bin/env bash
# Stop the running job on every worker (checkpoints already written are kept).
source "$(dirname "$0")/common.sh"
tpu_ssh all "pkill -f '.venv/bin/r1ci' || true"
