#!/bin/bash
# Step 3: starts training on every worker of the TPU VM, in the background; returns at once.
#
# usage: launch/tpu/train.sh [TRAIN_ARGS...]     e.g. --config.train.batch_size=64
#
# On every worker (`gcloud compute tpus tpu-vm ssh --worker=all`), under nohup:
#   launch/tpu/worker_train.sh FGJAX_CONFIG FGJAX_MOUNT/FGJAX_RUN TRAIN_ARGS
# i.e. `python launch/train.py --multihost --config=... --workdir=...`, with its output appended
# to ~/fgjax_train.log on that worker. Rerunning on the same workdir resumes from its newest
# checkpoint. Needs FGJAX_PROJECT, FGJAX_ZONE, FGJAX_TPU, FGJAX_RUN, FGJAX_CONFIG;
# settings in launch/tpu/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if help_requested "$@"; then usage; exit 0; fi
require FGJAX_PROJECT FGJAX_ZONE FGJAX_TPU FGJAX_RUN FGJAX_CONFIG
workdir=$FGJAX_MOUNT/$FGJAX_RUN

args=$(shell_quote "$FGJAX_CONFIG" "$workdir" "$@")
tpu_ssh "nohup bash ~/fgjax/launch/tpu/worker_train.sh $args >> ~/fgjax_train.log 2>&1 < /dev/null &"
