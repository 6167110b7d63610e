# shellcheck shell=bash
# Shared by the launch/tpu scripts (sourced, not run): settings, checks, printing, gcloud calls.
#
# Settings are environment variables (put them in a file and `source` it before the scripts):
#   FGJAX_PROJECT      Google Cloud project                                   (required)
#   FGJAX_ZONE         zone of the TPU, e.g. us-central2-b                    (required)
#   FGJAX_TPU          name of the queued resource and of its TPU VM          (required)
#   FGJAX_ACCELERATOR  TPU type and size                                      (default v4-32)
#   FGJAX_RUNTIME      TPU software version (default: the one Google lists for the accelerator)
#   FGJAX_TIER         empty (on demand), spot, reserved or guaranteed        (default empty)
#   FGJAX_BUCKET       bucket that holds the workdir, mounted on every worker (required by
#                      setup, train, watch)
#   FGJAX_MOUNT        where the bucket is mounted on every worker            (default /mnt/fgjax)
#   FGJAX_RUN          the run's folder in the bucket: workdir = FGJAX_MOUNT/FGJAX_RUN
#                      (required by train, watch)
#   FGJAX_CONFIG       config and method, e.g. configs/cub.py:fdl             (required by train,
#                      watch)
#   FGJAX_DATA         gs:// folder of prepared TFDS data sets, copied to ~/tensorflow_datasets
#                      on every worker (default empty: nothing copied)
#   FGJAX_POLL_SECONDS seconds between state checks                           (default 60)
#   FGJAX_DRY_RUN      1: print the commands that change anything, run none   (default 0)

FGJAX_ACCELERATOR=${FGJAX_ACCELERATOR:-v4-32}
FGJAX_TIER=${FGJAX_TIER:-}
FGJAX_MOUNT=${FGJAX_MOUNT:-/mnt/fgjax}
FGJAX_DATA=${FGJAX_DATA:-}
FGJAX_POLL_SECONDS=${FGJAX_POLL_SECONDS:-60}
FGJAX_DRY_RUN=${FGJAX_DRY_RUN:-0}
# shellcheck disable=SC2034 # Used by the scripts that source this file.
FGJAX_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# Prints the script's header comment (the lines after the shebang that start with '#').
usage() {
  awk 'NR == 1 { next } /^#( |$)/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

help_requested() {
  [[ ${1:-} == -h || ${1:-} == --help ]]
}

# require NAME...: stops, naming every setting that is empty.
require() {
  local name missing=()
  for name in "$@"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  ((${#missing[@]} == 0)) ||
    die "not set: ${missing[*]} (export it; the settings are listed in launch/tpu/common.sh)"
}

# run CMD ARGS...: prints the command (quoted where needed), then runs it unless FGJAX_DRY_RUN=1.
run() {
  local arg line='+'
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
  done
  echo "$line" >&2
  [[ $FGJAX_DRY_RUN == 1 ]] || "$@"
}

# The software version Google lists for each TPU generation (cloud.google.com/tpu/docs/runtimes).
default_runtime() {
  case $FGJAX_ACCELERATOR in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for FGJAX_ACCELERATOR=$FGJAX_ACCELERATOR: set FGJAX_RUNTIME" ;;
  esac
}

# tpu_ssh COMMAND: runs COMMAND on every worker of the TPU VM, in parallel.
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$FGJAX_TPU" --zone="$FGJAX_ZONE" --project="$FGJAX_PROJECT" \
    --worker=all --command="$1"
}

# Prints the queued resource's state: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, ...
tpu_state() {
  gcloud compute tpus queued-resources describe "$FGJAX_TPU" --zone="$FGJAX_ZONE" \
    --project="$FGJAX_PROJECT" --format='value(state.state)'
}

# Arguments quoted for the remote shell, space-separated.
shell_quote() {
  local quoted
  printf -v quoted '%q ' "$@"
  echo "${quoted% }"
}
