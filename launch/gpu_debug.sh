#!/usr/bin/env bash
# Single-GPU debugging run: memory grows on demand (so a second process can share
# the GPU), and NaNs are caught where they arise.
# Usage: launch/gpu_debug.sh CONFIG WORKDIR [--config.key=value ...]
set -euo pipefail
config=${1:?usage: launch/gpu_debug.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/gpu_debug.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_DEBUG_NANS=${JAX_DEBUG_NANS:-true}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
exec flax-lm train --config "$config" --workdir "$workdir" "$@"
