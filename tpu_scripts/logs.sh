#!/usr/bin/env bash
# Follow the log of one worker (process 0 writes the metrics): WORKER=0 ./logs.sh
source "$(dirname "$0")/common.sh"
tpu_ssh "${WORKER:-0}" "tail -n 200 -f ~/r1ci-logs/run.log"
