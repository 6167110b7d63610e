#!/bin/bash
# Submits launch/slurm/train.sbatch after checking its settings; run it from the repository root.
#
# usage: FGJAX_CONFIG=configs/cub.py:fdl FGJAX_WORKDIR=/shared/runs/cub_fdl \
#          launch/slurm/submit.sh [-n NODES] [-g GPUS_PER_NODE] [-c CPUS_PER_NODE] [-t TIME]
#                                 [-p PARTITION] [-- TRAIN_ARGS...]
#
# Runs `sbatch --nodes=NODES --gpus-per-node=G ... launch/slurm/train.sbatch TRAIN_ARGS` with
# only the options given (the others keep the #SBATCH defaults in train.sbatch: 2 nodes x 8 GPUs,
# 32 CPUs per node, 24 hours), logging to FGJAX_LOG_DIR (default logs), which it creates.
# Settings: see train.sbatch -h.
set -euo pipefail

die() {
  echo "submit.sh: $*" >&2
  exit 1
}
run() {
  echo "+ $*" >&2
  "$@"
}
options=()
while getopts 'n:g:c:t:p:h' flag; do
  case $flag in
    n) options+=("--nodes=$OPTARG") ;;
    g) options+=("--gpus-per-node=$OPTARG") ;;
    c) options+=("--cpus-per-task=$OPTARG") ;;
    t) options+=("--time=$OPTARG") ;;
    p) options+=("--partition=$OPTARG") ;;
    h) awk 'NR == 1 { next } /^#( |$)/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
    *) die "unknown option (see -h)" ;;
  esac
done
shift $((OPTIND - 1))
missing=()
for name in FGJAX_CONFIG FGJAX_WORKDIR; do
  [[ -n ${!name:-} ]] || missing+=("$name")
done
((${#missing[@]} == 0)) || die "not set: ${missing[*]} (see launch/slurm/train.sbatch -h)"
[[ -f launch/train.py ]] || die "run it from the fgjax repository root, not $PWD"
log_dir=${FGJAX_LOG_DIR:-logs}

run mkdir -p "$log_dir"
run sbatch "${options[@]}" --output="$log_dir/%x_%j.out" launch/slurm/train.sbatch "$@"
