#!/bin/bash
# Runs on every TPU VM worker (setup.sh starts it): installs fgjax, mounts the bucket, copies data.
#
# usage: bash ~/fgjax/launch/tpu/worker_setup.sh BUCKET MOUNT [DATA]
#
# 1. uv, then a Python 3.12 venv in ~/fgjax-venv with jax[tpu] and fgjax (editable): jax needs
#    Python >= 3.11 and the TPU images ship Ubuntu 22.04's 3.10.
# 2. gcsfuse, and BUCKET mounted at MOUNT, the same path on every worker (fgjax writes its workdir
#    with POSIX file I/O; --rename-dir-limit lets checkpoints be renamed into place).
# 3. DATA (a gs:// folder of prepared TFDS data sets) copied to ~/tensorflow_datasets: local
#    disk reads faster than the mount.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if help_requested "$@"; then usage; exit 0; fi
(($# == 2 || $# == 3)) || die "expected BUCKET MOUNT [DATA], got: $* (see -h)"
bucket=$1 mount=$2 data=${3:-}
venv=~/fgjax-venv
uv=~/.local/bin/uv

run curl -LsSf --output /tmp/uv-install.sh https://astral.sh/uv/install.sh
run sh /tmp/uv-install.sh --no-modify-path
run "$uv" venv --python=3.12 --allow-existing "$venv"
run "$uv" pip install --python="$venv/bin/python" --upgrade 'jax[tpu]' --editable "$FGJAX_REPO"

if ! mountpoint -q "$mount"; then
  keyring=/usr/share/keyrings/cloud.google.asc
  run sudo curl -fsSL --output "$keyring" https://packages.cloud.google.com/apt/doc/apt-key.gpg
  repo="https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main"
  echo "deb [signed-by=$keyring] $repo" |
    run sudo tee /etc/apt/sources.list.d/gcsfuse.list
  run sudo apt-get update -q
  run sudo apt-get install -y -q gcsfuse
  run sudo mkdir -p "$mount"
  run sudo chown "$(id -u):$(id -g)" "$mount"
  run gcsfuse --implicit-dirs --rename-dir-limit=1000000 "$bucket" "$mount"
fi

if [[ -n $data ]]; then
  run mkdir -p ~/tensorflow_datasets
  run gcloud storage rsync --recursive "$data" ~/tensorflow_datasets
fi
