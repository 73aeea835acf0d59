#!/usr/bin/env bash
# Runs the linter (ruff) and the test suite. Creates (or reuses) .venv with the project's dependencies, unless a
# virtualenv or conda environment is already active, in which case that one is used.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
unset PYTHONDONTWRITEBYTECODE  # let subprocesses reuse compiled bytecode
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m ruff check --no-cache .  # lint first (pyproject.toml); a finding fails the run
python -m pytest -q "$@" tests
