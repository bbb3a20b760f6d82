#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create (or reuse) the slice, install jax-align on every worker, run
# `jax-align train --distributed CONFIG` on all workers at once and stream worker 0's log.
#
# Usage: tools/tpu_pod.sh [options] CONFIG [key=value ...]
#   --name NAME              TPU VM name (default: $TPU_NAME, else jax-align-pod)
#   --zone ZONE              zone (default: $TPU_ZONE, else us-east5-a)
#   --project PROJECT        Google Cloud project (default: gcloud's configured project)
#   --accelerator-type TYPE  slice to create, e.g. v5p-64, v5litepod-16, v4-32, v6e-16 (default: v5p-64)
#   --version VERSION        TPU software version for create (default: chosen from TYPE)
#   --spot                   create a Spot slice
#   --no-create              fail instead of creating the slice when it does not exist
#   --wheel PATH             wheel to install (default: built from this checkout with pip wheel)
#   --pip-path PATH          instead of copying a wheel: pip install PATH on the workers (a path they all see)
#   --remote-dir DIR         working directory on the workers, relative to the home directory (default: jax-align)
#   --dry-run                print every command instead of running it
# CONFIG is copied to every worker; paths inside it (data, run.dir) must exist on every worker. run.dir must be
# storage that all workers share (checkpoints are written by all of them), e.g. a mounted bucket or NFS.
# jax.distributed.initialize() (from --distributed) finds the workers and their ids from the TPU metadata.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

root="$(cd "$(dirname "$0")/.." && pwd)"
name="${TPU_NAME:-jax-align-pod}"
zone="${TPU_ZONE:-us-east5-a}"
project="" accel="v5p-64" version="" spot=0 create=1 wheel="" pip_path="" remote_dir="jax-align" dry_run=0
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator-type) accel="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --no-create) create=0; shift ;;
    --wheel) wheel="$2"; shift 2 ;;
    --pip-path) pip_path="$2"; shift 2 ;;
    --remote-dir) remote_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ ${#args[@]} -lt 1 ]]; then
  echo "tpu_pod.sh: a CONFIG is required (see --help)" >&2
  exit 2
fi
config="${args[0]}"
overrides=("${args[@]:1}")

# Hosts (= workers = JAX processes) of a slice: v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count
# chips (4 per host in multi-host slices, up to 8 on one host).
workers_of() {
  local type="$1" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "?"; return; }
  case "$type" in
    v2-*|v3-*|v4-*|v5p-*) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    v5litepod-*|v5e-*|v6e-*) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) echo "?" ;;
  esac
}
if [[ -z "$version" ]]; then
  case "$accel" in
    v5p-*) version="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

where=(--zone="$zone")
if [[ -n "$project" ]]; then where+=(--project="$project"); fi
tpu=(gcloud compute tpus tpu-vm)

q() {  # shell-quote one word, readably: plain words as they are, others in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { local out="" w; for w in "$@"; do out+="$(q "$w") "; done; echo "${out% }"; }
run() {  # print, and run unless --dry-run
  if [[ $dry_run -eq 1 ]]; then show "$@"; else echo "+ $(show "$@")" >&2; "$@"; fi
}
on_workers() {  # on_workers WORKER 'remote shell command'
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker="$1" --command="$2"
}

expected="$(workers_of "$accel")"
echo "# TPU VM $name ($accel, $expected workers) in $zone"

# 1. Create or reuse the slice.
describe=("${tpu[@]}" describe "$name" "${where[@]}" --format="value(state,acceleratorType,networkEndpoints[].ipAddress)")
create_cmd=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accel" --version="$version")
if [[ $spot -eq 1 ]]; then create_cmd+=(--spot); fi
if [[ $dry_run -eq 1 ]]; then
  show "${describe[@]}"
  if [[ $create -eq 1 ]]; then echo "$(show "${create_cmd[@]}")  # only when describe finds no TPU VM"; fi
else
  if info="$("${describe[@]}" 2>/dev/null)"; then
    echo "reusing $name: $info" >&2
  elif [[ $create -eq 1 ]]; then
    run "${create_cmd[@]}"
  else
    echo "tpu_pod.sh: TPU VM $name does not exist in $zone (--no-create)" >&2
    exit 1
  fi
fi

# 2. Install the package on every worker (a wheel built here and copied, or pip from a path they see).
on_workers all "mkdir -p $(q "$remote_dir")"
if [[ -n "$pip_path" ]]; then
  on_workers all "python3 -m pip install --upgrade $(q "${pip_path}[tpu]")"
else
  if [[ -z "$wheel" ]]; then
    version_of_pkg="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)"
    dist="$root/build/dist"  # build/ is ignored by git
    run python3 -m pip wheel --no-deps --no-build-isolation -w "$dist" "$root"
    wheel="$dist/jax_align-${version_of_pkg}-py3-none-any.whl"
  fi
  run "${tpu[@]}" scp "$wheel" "$name:$remote_dir/" "${where[@]}" --worker=all
  on_workers all "python3 -m pip install --upgrade $(q "$remote_dir/$(basename "$wheel")[tpu]")"
fi

# 3. Copy the config and start training on all workers at once (in the background, logging to train.log).
run "${tpu[@]}" scp "$config" "$name:$remote_dir/" "${where[@]}" --worker=all
train=(jax-align train --distributed "$(basename "$config")" "${overrides[@]+"${overrides[@]}"}")
on_workers all "cd $(q "$remote_dir"); export PATH=\$HOME/.local/bin:\$PATH; \
nohup $(show "${train[@]}") > train.log 2>&1 < /dev/null & echo \$! > train.pid"

# 4. Stream worker 0's log until its process ends.
on_workers 0 "tail --pid=\$(cat $(q "$remote_dir/train.pid")) -n +1 -F $(q "$remote_dir/train.log")"
