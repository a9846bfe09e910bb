#!/usr/bin/env bash
# Create a TPU VM or pod slice: ACCELERATOR=v4-32 VERSION=tpu-ubuntu2204-base ./create.sh
source "$(dirname "$0")/common.sh"
: "${ACCELERATOR:=v4-32}"
: "${VERSION:=tpu-ubuntu2204-base}"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
  --accelerator-type "$ACCELERATOR" --version "$VERSION" ${SPOT:+--spot}
