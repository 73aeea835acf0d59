#!/usr/bin/env bash
# Metrics (LVE, FDD, MVE + jaw plots) and videos for the inference output of a config.
#
#   bash scripts/eval_motion_guided.sh [CONFIG] [SECTION.key=value ...]
#   bash scripts/eval_motion_guided.sh config/demo.yaml INFER.exp_name=faceformer_demo
#
# CONFIG defaults to config/faceformer.yaml. Results are read from {INFER.output_root}/{INFER.exp_name};
# metrics go to {INFER.output_root}/metrics_{exp_name}.json, videos to results/videos/{exp_name}/.
# Environment: SKIP_RENDER=1 skips the videos; RENDER_ARGS="--size 256" passes options to main/render.py
# (existing videos: RENDER_ARGS=--overwrite replaces them, --resume keeps them and renders the rest).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=config/faceformer.yaml
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
  CONFIG=$1
  shift
fi
# The project's .venv unless an environment is already active (as scripts/setup_env.sh does).
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -f .venv/bin/activate ]; then
  source .venv/bin/activate
fi

python main/evaluate.py --config "$CONFIG" "$@"
if [ "${SKIP_RENDER:-0}" != 1 ]; then
  # shellcheck disable=SC2086  # RENDER_ARGS is a list of options
  python main/render.py --config "$CONFIG" ${RENDER_ARGS:-} "$@"
fi
