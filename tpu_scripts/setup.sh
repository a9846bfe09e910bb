#!/usr/bin/env bash
# Copy the repo to every worker and install it with the [tpu] extra in a venv.
source "$(dirname "$0")/common.sh"
if [ -n "$REPO_URL" ]; then
  tpu_ssh all "rm -rf $REMOTE_DIR && git clone --depth 1 $REPO_URL $REMOTE_DIR"
else
  tar czf /tmp/r1ci-src.tgz --exclude .venv --exclude runs --exclude .git -C "$(dirname "$0")/.." .
  gcloud compute tpus tpu-vm scp /tmp/r1ci-src.tgz "$TPU_NAME":~/ --zone "$ZONE" --project "$PROJECT" --worker=all
  tpu_ssh all "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar xzf r1ci-src.tgz -C $REMOTE_DIR"
fi
tpu_ssh all "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip \
  && .venv/bin/pip install -q -e '.[tpu]' && .venv/bin/python -c 'import jax; print(jax.device_count())'"
