#!/usr/bin/env bash
# A local run on whatever devices JAX sees (CPU, or one GPU with the cuda extra).
# Usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
exec flax-lm train --config "$config" --workdir "$workdir" "$@"
