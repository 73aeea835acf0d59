#!/usr/bin/env bash
# Inference on the test splits of a config (or one audio file with --audio). Extra arguments are
# passed through to inference.py: options (--checkpoint, --overwrite, --audio, ...) and config
# overrides (SECTION.key=value).
#   bash inference_faceformer.sh                                   # config/faceformer.yaml
#   CONFIG=config/demo.yaml bash inference_faceformer.sh --overwrite INFER.output_fps=25
#   bash inference_faceformer.sh --audio speech.wav --style M003 --render
# Runs in the current directory (relative paths in arguments and outputs such as results/ are
# relative to it; run it from the repo root for the configs' relative paths) and uses the repo's
# .venv unless a virtualenv or conda environment is already active.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
  source "$ROOT/.venv/bin/activate"
fi
CONFIG=${CONFIG:-$ROOT/config/faceformer.yaml}
exec python "$ROOT/inference.py" --config "$CONFIG" "$@"
