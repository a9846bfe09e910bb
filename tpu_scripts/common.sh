#!/usr/bin/env bash
# Shared settings for the TPU scripts; override any of them in the environment.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME, e.g. export TPU_NAME=r1ci-v4-32}"
: "${ZONE:=us-central2-b}"
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${REPO_URL:=}"              # git URL of this repo as the workers can reach it (or leave empty and use scp)
: "${REMOTE_DIR:=r1ci-jax}"
tpu_ssh() {  # tpu_ssh WORKER COMMAND...
  local worker="$1"; shift
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker="$worker" --command "$*"
}
