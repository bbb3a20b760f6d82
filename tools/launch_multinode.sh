#!/usr/bin/env bash
# Multi-node, multi-GPU launcher for `jax-align train`: one process per GPU on this node.
#
# Run it once on every node (by hand, by pdsh, or by `srun --ntasks-per-node=1` as tools/gpu_slurm.sbatch does).
# Each process gets one GPU (CUDA_VISIBLE_DEVICES) and the flags `jax-align train` already has:
#   --coordinator HOST:PORT --num-processes NODES*GPUS --process-id NODE_RANK*GPUS+LOCAL_RANK
# Values not given as flags come from the scheduler's environment (SLURM_*), then from the machine.
#
# Usage: tools/launch_multinode.sh [options] CONFIG [key=value ...]
#   --coordinator HOST[:PORT]  process 0's address (default: the first host of $SLURM_JOB_NODELIST)
#   --port PORT                coordinator port when none is given (default: derived from $SLURM_JOB_ID, else 12355)
#   --num-nodes N              nodes in the run (default: $SLURM_JOB_NUM_NODES or $SLURM_NNODES, else 1)
#   --node-rank R              this node's index, 0..N-1 (default: $SLURM_NODEID, else 0)
#   --gpus-per-node G          processes on this node (default: $SLURM_GPUS_ON_NODE, $SLURM_GPUS_PER_NODE,
#                              the GPUs nvidia-smi lists, else 1)
#   --log-dir DIR              one log per process, process-ID.log (default: launch_logs)
#   --jax-align CMD            the command to run (default: $JAX_ALIGN_BIN, else jax-align)
#   --dry-run                  print every command instead of running it
# GPUs already narrowed by CUDA_VISIBLE_DEVICES (e.g. by SLURM) are handed out in that order.
# Every process writes its log; node 0 streams process 0's log. If one process fails, the others on this node
# are stopped and the launcher exits with that process's status.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

dry_run=0
coordinator="" port="" num_nodes="" node_rank="" gpus="" log_dir="launch_logs"
jax_align="${JAX_ALIGN_BIN:-jax-align}"
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --coordinator) coordinator="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --num-nodes) num_nodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --jax-align) jax_align="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ ${#args[@]} -lt 1 ]]; then
  echo "launch_multinode.sh: a CONFIG is required (see --help)" >&2
  exit 2
fi

# First host of a SLURM node list: "gpu[07-08,11]" -> gpu07, "a01,a02" -> a01, "n-[3,5]-ib" -> n-3-ib.
first_host() {
  local list="$1"
  if command -v scontrol >/dev/null 2>&1 && [[ $dry_run -eq 0 ]]; then
    scontrol show hostnames "$list" | head -n 1
    return
  fi
  local head="${list%%,*}"
  if [[ "$head" == *"["* ]]; then
    local prefix="${list%%\[*}" inner="${list#*\[}" rest
    rest="${inner#*\]}"; rest="${rest%%,*}"
    inner="${inner%%\]*}"; inner="${inner%%,*}"; inner="${inner%%-*}"
    echo "${prefix}${inner}${rest}"
  else
    echo "$head"
  fi
}

if [[ -z "$num_nodes" ]]; then num_nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"; fi
if [[ -z "$node_rank" ]]; then node_rank="${SLURM_NODEID:-0}"; fi
if [[ -z "$gpus" ]]; then
  gpus="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
  gpus="${gpus##*:}"  # "h100:8" -> 8
  if [[ -z "$gpus" ]] && command -v nvidia-smi >/dev/null 2>&1; then gpus="$(nvidia-smi -L | grep -c '^GPU' || true)"; fi
  if [[ -z "$gpus" || "$gpus" == 0 ]]; then gpus=1; fi
fi
if [[ -z "$port" ]]; then
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then port=$((12000 + SLURM_JOB_ID % 20000)); else port=12355; fi
fi
if [[ -z "$coordinator" ]]; then
  if [[ -n "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}" ]]; then
    coordinator="$(first_host "${SLURM_JOB_NODELIST:-$SLURM_NODELIST}")"
  elif [[ "$num_nodes" -eq 1 ]]; then
    coordinator="127.0.0.1"
  else
    echo "launch_multinode.sh: --coordinator is required outside SLURM when --num-nodes > 1" >&2
    exit 2
  fi
fi
if [[ "$coordinator" != *:* ]]; then coordinator="$coordinator:$port"; fi
for v in num_nodes node_rank gpus; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]]; then echo "launch_multinode.sh: $v must be a number, got '${!v}'" >&2; exit 2; fi
done
if (( node_rank >= num_nodes )); then
  echo "launch_multinode.sh: node rank $node_rank is not below the node count $num_nodes" >&2
  exit 2
fi

# GPU ids this node hands out: CUDA_VISIBLE_DEVICES's entries if set, else 0..G-1.
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=',' read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
else
  visible=()
fi
total=$((num_nodes * gpus))
read -r -a launcher <<< "$jax_align"

echo "# node $node_rank of $num_nodes: $gpus process(es), ids $((node_rank * gpus))..$((node_rank * gpus + gpus - 1)) of $total, coordinator $coordinator"
# build_cmd I: the command of local process I in the array `cmd`.
build_cmd() {
  local i="$1"
  cmd=(env "CUDA_VISIBLE_DEVICES=${visible[$1]:-$1}" "${launcher[@]}" train "${args[@]}"
       --coordinator "$coordinator" --num-processes "$total" --process-id "$((node_rank * gpus + i))")
}

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < gpus; i++)); do
    build_cmd "$i"
    echo "$(printf '%q ' "${cmd[@]}")> $log_dir/process-$((node_rank * gpus + i)).log 2>&1 &"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
# Each process leads its own process group (job control), so stopping it also stops its children.
set -m
stop_all() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < gpus; i++)); do
  build_cmd "$i"
  log="$log_dir/process-$((node_rank * gpus + i)).log"
  echo "+ $(printf '%q ' "${cmd[@]}")> $log 2>&1 &"
  "${cmd[@]}" > "$log" 2>&1 < /dev/null &
  pids+=("$!")
done
tail_pid=""
if [[ "$node_rank" -eq 0 ]]; then
  tail --pid="${pids[0]}" -n +1 -F "$log_dir/process-0.log" 2>/dev/null &
  tail_pid=$!
fi
status=0
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  done_pid=""
  wait -n -p done_pid "${remaining[@]}" || status=$?
  if [[ -z "$done_pid" ]]; then break; fi  # nothing left to wait for
  left=()
  for p in "${remaining[@]}"; do [[ "$p" != "$done_pid" ]] && left+=("$p"); done
  remaining=("${left[@]+"${left[@]}"}")
  if [[ $status -ne 0 ]]; then
    echo "launch_multinode.sh: process with pid $done_pid failed (status $status); stopping the others on this node" >&2
    stop_all
    break
  fi
done
if [[ -n "$tail_pid" ]]; then wait "$tail_pid" 2>/dev/null || true; fi
exit "$status"
