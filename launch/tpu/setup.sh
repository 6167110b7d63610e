#!/bin/bash
# Step 2: puts fgjax on every worker of the TPU VM, installs it, mounts the bucket, copies the data.
#
# usage: launch/tpu/setup.sh
#
# Packs this repository's committed HEAD (git archive; uncommitted changes are not shipped),
# copies it to every worker (`gcloud compute tpus tpu-vm scp --worker=all`), unpacks it to
# ~/fgjax and runs launch/tpu/worker_setup.sh there (`tpu-vm ssh --worker=all`): a Python 3.12
# venv with jax[tpu] and fgjax, the bucket FGJAX_BUCKET mounted with gcsfuse at FGJAX_MOUNT, and
# FGJAX_DATA (if set) copied to ~/tensorflow_datasets. Needs FGJAX_PROJECT, FGJAX_ZONE,
# FGJAX_TPU, FGJAX_BUCKET; settings in launch/tpu/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if help_requested "$@"; then usage; exit 0; fi
(($# == 0)) || die "unexpected arguments: $* (see -h)"
require FGJAX_PROJECT FGJAX_ZONE FGJAX_TPU FGJAX_BUCKET
tarball=${TMPDIR:-/tmp}/fgjax-$FGJAX_TPU.tar.gz

if [[ -n $(git -C "$FGJAX_REPO" status --porcelain --untracked-files=no) ]]; then
  echo "warning: uncommitted changes in $FGJAX_REPO are not shipped (HEAD is)" >&2
fi
run git -C "$FGJAX_REPO" archive --format=tar.gz --output="$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$FGJAX_TPU:fgjax.tar.gz" --zone="$FGJAX_ZONE" \
  --project="$FGJAX_PROJECT" --worker=all
tpu_ssh "rm -rf ~/fgjax && mkdir ~/fgjax && tar -xzf ~/fgjax.tar.gz -C ~/fgjax && \
bash ~/fgjax/launch/tpu/worker_setup.sh $(shell_quote "${FGJAX_BUCKET#gs://}" "$FGJAX_MOUNT" \
  ${FGJAX_DATA:+"$FGJAX_DATA"})"
