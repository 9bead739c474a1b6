#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite (the README's test command).
# The CPU wheel of PyTorch is pinned first so that the test extra's torch range is
# already satisfied and pip does not pull CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/base_install_check.sh
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
# libtpu, for compiling to TPU topologies on this machine (tests/test_tpu_compile.py); pinned to the
# installed jax so that pip does not move jax itself
python -m pip install -q "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"
# two workers: compiling is single-threaded, so a second test process uses the second core
python -m pytest -q -n 2 tests "$@"
