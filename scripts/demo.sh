#!/usr/bin/env bash
# The embedded offline demo, end to end on a CPU: set-up, synthetic data, training, inference on the
# demo test split, metrics of the model next to two baselines (mean motion, linear listener), one mp4 and
# the same sample as a glb.
#   bash scripts/demo.sh            (extra arguments are config overrides for training, e.g. TRAIN.epochs=5)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
unset PYTHONDONTWRITEBYTECODE
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
CONFIG=config/demo.yaml
RESULTS=results/metrics/demo_run/test

echo "== 1/6 synthetic demo data (demo_data/)"
python scripts/make_demo_data.py --out demo_data --seed 0
python -m main.check_data --config "$CONFIG" --quiet

echo "== 2/6 training (outputs/demo/)"
python train.py --config "$CONFIG" TRAIN.overwrite=true "$@"

echo "== 3/6 inference on the demo test split ($RESULTS/faceformer_demo)"
python inference.py --config "$CONFIG" --overwrite

echo "== 4/6 baselines: mean motion ($RESULTS/mean_baseline), linear listener ($RESULTS/linear_baseline)"
python scripts/mean_baseline.py --config "$CONFIG" --overwrite
python scripts/linear_baseline.py --config "$CONFIG" --overwrite

echo "== 5/6 metrics"
python main/evaluate.py --config "$CONFIG" INFER.exp_name=mean_baseline
python main/evaluate.py --config "$CONFIG" INFER.exp_name=linear_baseline
python main/evaluate.py --config "$CONFIG"
python scripts/compare_metrics.py "$RESULTS/metrics_faceformer_demo.json" "$RESULTS/metrics_linear_baseline.json" \
  --names faceformer linear_listener
python scripts/compare_metrics.py "$RESULTS/metrics_faceformer_demo.json" "$RESULTS/metrics_mean_baseline.json" \
  --names faceformer mean_motion --require_better LVE --max_ratio 0.6

echo "== 6/6 render one test sample, and export it as a glb"
SAMPLE=$(ls -d "$RESULTS"/faceformer_demo/MEAD_VHAP/*/ | head -n 1)
python main/render.py --config "$CONFIG" --results "$SAMPLE" --out results/videos/demo_sample.mp4 --overwrite
# the sample's meta.json and motion live in the parallel coefficient tree
SAMPLE_COEFFS="results/coeffs/demo_run/test/${SAMPLE#"$RESULTS"/}"
python main/export.py --results "$SAMPLE_COEFFS" --overwrite

cat <<EOT

Done.
  trained model:     outputs/demo/best_model.pth (log: outputs/demo/train.log, tensorboard: outputs/demo/tensorboard)
  vertices:          $RESULTS/faceformer_demo/{DATASET}/{STYLE_ID}/{i}.npy
  motion + coeffs:   results/coeffs/demo_run/test/faceformer_demo/
  metrics:           $RESULTS/metrics_faceformer_demo.json (baselines: metrics_mean_baseline.json,
                     metrics_linear_baseline.json; jaw plots *_jaw_*.png)
  video:             results/videos/demo_sample.mp4
  glb (+ wav):       ${SAMPLE_COEFFS}animation.glb (open it in Blender or https://gltf-viewer.donmccurdy.com)
EOT
