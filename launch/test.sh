#!/usr/bin/env bash
# The README's test command: the base install, then the whole suite on both ends of what flax_lm
# supports, each in its own virtualenv under $FLAX_LM_VENVS (built from the package registries on
# a fresh machine, reused and brought up to date after that):
#   newest: Python 3.12 with the newest jax, libtpu, flax, optax, orbax and transformers the index
#           serves, and no PyTorch (the index's torch for 3.12 is a CUDA build of several GB): the
#           parity tests skip there, saying so.
#   oldest: Python 3.11 with pyproject.toml's floors installed exactly (launch/floors.py) and the
#           CPU wheel of PyTorch 2.13.0: every test runs.
# Arguments go to both pytest runs. Each leg prints its versions first.
set -euo pipefail
cd "$(dirname "$0")/.."
venvs="${FLAX_LM_VENVS:-$HOME/.cache/flax_lm/venvs}"

interpreter() {  # python$1 from PATH, else pyenv's newest $1.x
  if "python$1" -c "" 2>/dev/null; then echo "python$1"; return; fi
  local found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] || { echo "launch/test.sh: no Python $1 (install one, e.g. pyenv install $1)" >&2; exit 1; }
  echo "$found"
}

venv() {  # PYTHON_VERSION NAME -> the venv's python, made if missing
  local dir="$venvs/$2"
  [ -x "$dir/bin/python" ] || "$(interpreter "$1")" -m venv "$dir" >&2
  "$dir/bin/python" -m pip install -q -U pip >&2
  echo "$dir/bin/python"
}

versions() {
  "$1" - "$2" <<'EOF'
import importlib.metadata as metadata
import sys

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"

names = ("jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers",
         "safetensors", "numpy", "torch", "tensorflow-cpu")
print(f"=== {sys.argv[1]} leg: Python {sys.version.split()[0]}, " + ", ".join(f"{n} {version(n)}" for n in names),
      flush=True)
EOF
}

bash launch/base_install_check.sh

newest=$(venv 3.12 py3.12-newest)
# The newest jax and jaxlib by their version, and libtpu by name: the newest jax's tpu extra pins a
# libtpu the index may not serve yet, and left to itself pip then settles on an older jax
newest_jax=$("$newest" -m pip index versions jax 2>/dev/null | sed -n 's/^jax (\(.*\))$/\1/p' || true)
[ -n "$newest_jax" ] || { echo "launch/test.sh: the package index lists no jax" >&2; exit 1; }
"$newest" -m pip install -q -U --upgrade-strategy eager -e ".[test]" "jax==$newest_jax" "jaxlib==$newest_jax" \
  libtpu flax optax orbax-checkpoint transformers

oldest=$(venv 3.11 py3.11-floors)
"$oldest" launch/floors.py > "$venvs/floors.txt"
"$oldest" -m pip install -q -c "$venvs/floors.txt" torch==2.13.0  # first, so that pip takes the local CPU wheel
"$oldest" -m pip install -q -c "$venvs/floors.txt" -e ".[test-torch]" "jax[tpu]"

# two workers: compiling is single-threaded, so a second test process uses the second core
failed=0
versions "$newest" newest
"$newest" -m pytest -q -n 2 -rfEs tests "$@" || failed=1
versions "$oldest" oldest
"$oldest" -m pytest -q -n 2 -rfEs tests "$@" || failed=1
exit "$failed"
