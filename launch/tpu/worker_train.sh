#!/bin/bash
# Runs on every TPU VM worker (train.sh starts it): trains, then marks the run finished.
#
# usage: bash ~/fgjax/launch/tpu/worker_train.sh CONFIG WORKDIR [TRAIN_ARGS...]
#
# Every worker runs the same command; --multihost makes jax.distributed.initialize() find the
# other workers. train.py resumes from the newest checkpoint in WORKDIR. When it returns 0,
# WORKDIR/TRAINING_FINISHED tells watch.sh that the run is over, unless this script got a
# SIGTERM meanwhile: a preemption (the VM's shutdown signals every process) stops train.py
# early, and the run goes on after the restart.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if help_requested "$@"; then usage; exit 0; fi
(($# >= 2)) || die "expected CONFIG WORKDIR [TRAIN_ARGS...], got: $* (see -h)"
config=$1 workdir=$2
shift 2
stopped=''
trap 'stopped=1' TERM # Runs once train.py has returned.

cd "$FGJAX_REPO"
run ~/fgjax-venv/bin/python launch/train.py --multihost --config="$config" --workdir="$workdir" "$@"
if [[ -n $stopped ]]; then
  echo "SIGTERM: train.py stopped early; $workdir is not marked finished" >&2
  exit 143
fi
run touch "$workdir/TRAINING_FINISHED"
