#!/usr/bin/env bash
# Installs the package with no extras into a fresh virtualenv and runs the default job for a few
# steps, then generates and exports from it: the test suite's own install carries every extra and
# would hide a base dependency that is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q -e . >"$scratch/pip.log" 2>&1 \
  || { cat "$scratch/pip.log"; echo "base install: pip install -e . failed"; exit 1; }
flax_lm="$scratch/venv/bin/flax-lm"
"$flax_lm" train --config configs/gpt2_tiny.py --workdir "$scratch/run" \
  --config.train.steps=3 --config.optim.warmup_steps=1 --config.train.eval_every=3 >"$scratch/log" 2>&1 \
  || { cat "$scratch/log"; echo "base install: the default job failed"; exit 1; }
"$flax_lm" generate --workdir "$scratch/run" --prompt "def " --max-new-tokens 8 >>"$scratch/log" 2>&1 \
  || { cat "$scratch/log"; echo "base install: generate failed"; exit 1; }
"$flax_lm" export --workdir "$scratch/run" --out "$scratch/hf" >>"$scratch/log" 2>&1 \
  || { cat "$scratch/log"; echo "base install: export failed"; exit 1; }
if grep -q "Traceback" "$scratch/log"; then cat "$scratch/log"; echo "base install: a traceback"; exit 1; fi
echo "base install (no extras): train, generate and export ran"
