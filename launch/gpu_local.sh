#!/usr/bin/env bash
# Single-GPU training set up for speed (launch/gpu_debug.sh is its debugging counterpart):
# - XLA takes 90% of the GPU's memory at start (XLA_PYTHON_CLIENT_MEM_FRACTION; JAX's default
#   is 75%) in one block, so nothing grows or fragments during the run;
# - XLA_FLAGS from JAX's GPU performance tips: the latency-hiding scheduler (overlaps copies and
#   collectives with compute) and Triton GEMMs autotuned against cuBLAS for every matmul;
# - compiled programs are cached on disk (JAX_COMPILATION_CACHE_DIR), so a resumed run starts
#   without compiling again.
# The larger levers are config keys: --config.model.dtype=bfloat16 (tensor-core compute), the
# largest train.batch_size that fits, and model.remat_policy when it does not.
# Usage: launch/gpu_local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
#   --dry-run prints the environment and the command instead of running it. Values already
#   set in the environment win; XLA_FLAGS already set are kept after these.
set -euo pipefail
usage="usage: launch/gpu_local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]"
dry_run=false
if [[ ${1:-} == --dry-run ]]; then dry_run=true; shift; fi
config=${1:?$usage}
workdir=${2:?$usage}
shift 2

export XLA_PYTHON_CLIENT_PREALLOCATE=true
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/flax_lm/jax}
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_triton_gemm_any=true ${XLA_FLAGS:-}"
XLA_FLAGS=${XLA_FLAGS% }

command=(flax-lm train --config "$config" --workdir "$workdir" "$@")
if $dry_run; then
  for name in XLA_PYTHON_CLIENT_PREALLOCATE XLA_PYTHON_CLIENT_MEM_FRACTION CUDA_VISIBLE_DEVICES \
              JAX_COMPILATION_CACHE_DIR XLA_FLAGS; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done
  printf '%q ' "${command[@]}" | sed 's/ $//'
  echo
  exit 0
fi
exec "${command[@]}"
