#!/usr/bin/env bash
# Every GPU benchmark and GPU correctness check in one command, for a machine with one NVIDIA
# GPU, JAX with CUDA, PyTorch with CUDA and transformers installed (flax_lm's other needs
# carried as wheels in .whl/ where the machine cannot reach a registry). Results land in $OUT
# (default /tmp/flax_lm_gpu): one JSON per benchmark, the logs, and the rows they would add to
# bench/RESULTS.md (copy them over by hand; this script records nothing in the tree).
#
#   bash bench/gpu.sh                 # every step: over 20 minutes on an H100
#   bash bench/gpu.sh checks generate_b1 ...   # only the steps named (a lent machine runs one command
#                                              # for at most 10 minutes: split the steps over three calls)
#
# The targets these answer (issues 6 and 9): GPT-2 124M at T=1024 >= 500K tokens/s and >= 1.2x
# torch.compile; BERT-base MLM at T=128 >= 4,500 sequences/s and >= 1.5x; decoding >= 3,000
# tokens/s at batch 1 and >= 60,000 at batch 256 with 1,024 tokens of context; the largest GPT-2
# batch that fits, flax_lm (remat none and full) against PyTorch's.
set -uo pipefail
STEPS=(checks gpt2_small_train gpt2_small_train_cudnn bert_base_mlm generate_b1 generate_b256 max_batch)
SELECTED=("$@")
for wanted in "$@"; do
  [[ " ${STEPS[*]} " == *" $wanted "* ]] || { echo "gpu.sh: no step '$wanted' (steps: ${STEPS[*]})" >&2; exit 2; }
done
OUT=${OUT:-/tmp/flax_lm_gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# the GPU, named: the test suite's conftest picks the CPU where JAX_PLATFORMS is unset
export JAX_PLATFORMS=cuda
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
cp bench/RESULTS.md "$OUT/RESULTS.md"   # rows are appended to this copy
export FLAX_LM_RESULTS="$OUT/RESULTS.md"

status=0
step() {  # step NAME COMMAND...: runs it, its output in $OUT/NAME.log, and carries on after a failure
  local name=$1; shift
  if (( ${#SELECTED[@]} )) && [[ " ${SELECTED[*]} " != *" $name "* ]]; then return; fi
  echo "== $name: $*" | tee -a "$OUT/summary.log"
  if ! "$@" > "$OUT/$name.log" 2>&1; then status=1; echo "   FAILED (see $name.log)" | tee -a "$OUT/summary.log"; fi
  tail -3 "$OUT/$name.log" | tee -a "$OUT/summary.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
step checks python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
step gpt2_small_train python3 -m bench gpt2-train --config gpt2_small --dtype bfloat16 --seq-len 1024 --batch 32 \
  --torch-compile --json "$OUT/gpt2_small_train.json"
step gpt2_small_train_cudnn python3 -m bench gpt2-train --config gpt2_small --dtype bfloat16 --seq-len 1024 \
  --batch 32 --json "$OUT/gpt2_small_train_cudnn.json" --config.model.attention=cudnn
step bert_base_mlm python3 -m bench bert-mlm --config bert_base --dtype bfloat16 --batch 256 --torch-compile \
  --json "$OUT/bert_base_mlm.json"
step generate_b1 python3 -m bench generate --config gpt2_small --batch 1 --json "$OUT/generate_b1.json"
step generate_b256 python3 -m bench generate --config gpt2_small --batch 256 --seq-len 960 --new 64 \
  --dtype bfloat16 --json "$OUT/generate_b256.json"
step max_batch python3 -m bench max-batch --config gpt2_small --seq-len 1024 --dtype bfloat16 \
  --json "$OUT/max_batch.json"
exit $status
