#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every TPU VM worker; JAX discovers the pod's workers itself.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]
#
# Expects the repository at ~/prune4rel-jax on every worker with `pip install -e .` and jax[tpu] done (e.g.
# `gcloud compute tpus tpu-vm scp --recurse --worker=all` and one ssh with `pip install`). WORKDIR must be
# a directory every worker sees (a Filestore/NFS mount or a gcsfuse-mounted bucket): checkpoints are written
# collectively, logs and the summary by worker 0. Rerunning the same command resumes from the last checkpoint.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${REPO_DIR:-\~/prune4rel-jax}
extra=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && PRUNE4REL_DISTRIBUTED=1 python3 -m prune4rel_jax --config $(printf %q "$config") \
   --workdir $(printf %q "$workdir")$extra"
