#!/bin/bash
# Step 1: requests a TPU VM or pod slice as a queued resource and waits until it is ACTIVE.
#
# usage: launch/tpu/create.sh
#
# Runs `gcloud compute tpus queued-resources create FGJAX_TPU --node-id=FGJAX_TPU
# --accelerator-type=FGJAX_ACCELERATOR --runtime-version=FGJAX_RUNTIME [--spot|--reserved|...]`,
# then polls its state every FGJAX_POLL_SECONDS until ACTIVE (stops if it becomes FAILED or
# SUSPENDED). Needs FGJAX_PROJECT, FGJAX_ZONE, FGJAX_TPU; settings in launch/tpu/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if help_requested "$@"; then usage; exit 0; fi
(($# == 0)) || die "unexpected arguments: $* (see -h)"
require FGJAX_PROJECT FGJAX_ZONE FGJAX_TPU
runtime=${FGJAX_RUNTIME:-$(default_runtime)}
tier=()
case $FGJAX_TIER in
  '') ;;
  spot | reserved | guaranteed) tier=("--$FGJAX_TIER") ;;
  *) die "FGJAX_TIER=$FGJAX_TIER: use spot, reserved, guaranteed or leave it empty" ;;
esac

run gcloud compute tpus queued-resources create "$FGJAX_TPU" --node-id="$FGJAX_TPU" \
  --zone="$FGJAX_ZONE" --project="$FGJAX_PROJECT" --accelerator-type="$FGJAX_ACCELERATOR" \
  --runtime-version="$runtime" "${tier[@]}"
[[ $FGJAX_DRY_RUN == 1 ]] && exit 0

while true; do
  state=$(tpu_state)
  echo "$(date +%T) $FGJAX_TPU: $state"
  case $state in
    ACTIVE) exit 0 ;;
    FAILED | SUSPENDING | SUSPENDED) die "$FGJAX_TPU is $state (describe it for the reason)" ;;
  esac
  sleep "$FGJAX_POLL_SECONDS"
done
