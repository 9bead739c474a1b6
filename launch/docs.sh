#!/usr/bin/env bash
# Builds the documentation site into site/: installs the docs extra (mkdocs-material, matplotlib)
# in a virtualenv (DOCS_VENV, default .venv-docs; reused when it exists), renders the benchmark
# plots from bench/results/*.json, generates the command-line, config and benchmark pages from the
# code, and runs `mkdocs build --strict`, so a broken link or page fails.
# Usage: bash launch/docs.sh [mkdocs build arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DOCS_VENV:-.venv-docs}
[[ -x $venv/bin/python ]] || python -m venv "$venv"
"$venv/bin/python" -m pip install -q -e ".[docs]"
"$venv/bin/python" bench/plots.py --out docs/img
"$venv/bin/python" docs/gen/reference.py
"$venv/bin/mkdocs" build --strict "$@"
