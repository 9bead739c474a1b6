#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite (the README's test command).
# The CPU wheel of PyTorch is pinned first so that the test extra's torch range is
# already satisfied and pip does not pull CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pytest -q tests "$@"
