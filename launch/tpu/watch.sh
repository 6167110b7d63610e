#!/bin/bash
# Step 4: watches the TPU and restarts training after a preemption, until the run is finished.
#
# usage: launch/tpu/watch.sh [--interval=SECONDS] [--max-restarts=N] [--delete-when-done]
#                            [-- TRAIN_ARGS...]
#
# Every SECONDS (default FGJAX_POLL_SECONDS):
#   - if gs://FGJAX_BUCKET/FGJAX_RUN/TRAINING_FINISHED exists (worker_train.sh writes it when
#     train.py returns), it stops; with --delete-when-done it deletes the TPU first;
#   - if the queued resource is SUSPENDED (preempted) or FAILED, it deletes it and runs create.sh,
#     setup.sh and train.sh TRAIN_ARGS again: training resumes from the workdir's newest
#     checkpoint. A restart that fails counts and is retried at the next poll; after N restarts
#     (default 20) it gives up;
#   - in any other state (ACTIVE, WAITING_FOR_RESOURCES, PROVISIONING, ...) it waits.
# Run it where it can stay up for days, e.g. nohup launch/tpu/watch.sh >> watch.log 2>&1 &
# Needs FGJAX_PROJECT, FGJAX_ZONE, FGJAX_TPU, FGJAX_BUCKET, FGJAX_RUN, FGJAX_CONFIG.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
interval=$FGJAX_POLL_SECONDS max_restarts=20 delete_when_done=0
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --interval=*) interval=${1#*=} ;;
    --max-restarts=*) max_restarts=${1#*=} ;;
    --delete-when-done) delete_when_done=1 ;;
    --) shift; break ;;
    *) die "unknown argument $1 (see -h)" ;;
  esac
  shift
done
[[ $interval =~ ^[0-9]+$ ]] || die "--interval=$interval: give whole seconds"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts=$max_restarts: give a whole number"
require FGJAX_PROJECT FGJAX_ZONE FGJAX_TPU FGJAX_BUCKET FGJAX_RUN FGJAX_CONFIG
[[ $FGJAX_DRY_RUN != 1 ]] || die "there is no dry run of watch.sh"
export FGJAX_POLL_SECONDS=$interval # create.sh waits for ACTIVE at the same pace.
here=$(dirname "${BASH_SOURCE[0]}")
marker=gs://${FGJAX_BUCKET#gs://}/$FGJAX_RUN/TRAINING_FINISHED

delete_tpu() {
  run gcloud compute tpus queued-resources delete "$FGJAX_TPU" --zone="$FGJAX_ZONE" \
    --project="$FGJAX_PROJECT" --force --quiet
}

restarts=0
while true; do
  if gcloud storage ls "$marker" > /dev/null 2>&1; then
    echo "$(date +%T) training finished: $marker"
    if ((delete_when_done)); then delete_tpu; fi
    exit 0
  fi
  state=$(tpu_state) || state='unknown (describe failed)'
  echo "$(date +%T) $FGJAX_TPU: $state"
  case $state in
    SUSPENDED | FAILED)
      ((restarts < max_restarts)) || die "$FGJAX_TPU is $state; all $max_restarts restarts spent"
      restarts=$((restarts + 1))
      echo "restart $restarts of $max_restarts"
      if delete_tpu && bash "$here/create.sh" && bash "$here/setup.sh" &&
        bash "$here/train.sh" "$@"; then
        echo "restart $restarts: training started again"
      else
        echo "restart $restarts failed; retrying at the next poll" >&2
      fi
      ;;
  esac
  sleep "$interval"
done
