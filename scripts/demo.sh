#!/usr/bin/env bash
# The embedded offline demo, end to end on a CPU: set-up, synthetic data, training, inference on the
# demo test split, metrics of the model next to two baselines (mean motion, linear listener), one mp4,
# and that sample exported: a glb, a browser viewer and a test blendshape rig's weights.
#   bash scripts/demo.sh            (extra arguments are config overrides for training, e.g. TRAIN.epochs=5)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
unset PYTHONDONTWRITEBYTECODE
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
CONFIG=config/demo.yaml
RESULTS=results/metrics/demo_run/test

echo "== 1/7 synthetic demo data (demo_data/)"
python scripts/make_demo_data.py --out demo_data --seed 0
python -m main.check_data --config "$CONFIG" --quiet

echo "== 2/7 training (outputs/demo/)"
python train.py --config "$CONFIG" TRAIN.overwrite=true "$@"

echo "== 3/7 inference on the demo test split ($RESULTS/faceformer_demo)"
python inference.py --config "$CONFIG" --overwrite

echo "== 4/7 baselines: mean motion ($RESULTS/mean_baseline), linear listener ($RESULTS/linear_baseline)"
python scripts/mean_baseline.py --config "$CONFIG" --overwrite
python scripts/linear_baseline.py --config "$CONFIG" --overwrite

echo "== 5/7 metrics"
python main/evaluate.py --config "$CONFIG" INFER.exp_name=mean_baseline
python main/evaluate.py --config "$CONFIG" INFER.exp_name=linear_baseline
python main/evaluate.py --config "$CONFIG"
python scripts/compare_metrics.py "$RESULTS/metrics_faceformer_demo.json" "$RESULTS/metrics_linear_baseline.json" \
  --names faceformer linear_listener
python scripts/compare_metrics.py "$RESULTS/metrics_faceformer_demo.json" "$RESULTS/metrics_mean_baseline.json" \
  --names faceformer mean_motion --require_better LVE --max_ratio 0.6

echo "== 6/7 render one test sample"
SAMPLE=$(ls -d "$RESULTS"/faceformer_demo/MEAD_VHAP/*/ | head -n 1)
python main/render.py --config "$CONFIG" --results "$SAMPLE" --out results/videos/demo_sample.mp4 --overwrite

echo "== 7/7 export the sample: a glb, a browser viewer, a 52-shape test rig's weights (Live Link Face CSV)"
python scripts/make_rig.py --flame demo_data/FLAME/standin_generic_model.pkl --out results/demo_rig.npz
python main/export.py --config "$CONFIG" --results "$SAMPLE" --glb --html --rig results/demo_rig.npz --overwrite
# the exports go beside the sample's meta.json, in the parallel coefficient tree
EXPORTED="results/coeffs/demo_run/test/${SAMPLE#"$RESULTS"/}"

cat <<EOT

Done.
  trained model:     outputs/demo/best_model.pth (log: outputs/demo/train.log, tensorboard: outputs/demo/tensorboard)
  vertices:          $RESULTS/faceformer_demo/{DATASET}/{STYLE_ID}/{i}.npy
  motion + coeffs:   results/coeffs/demo_run/test/faceformer_demo/
  metrics:           $RESULTS/metrics_faceformer_demo.json (baselines: metrics_mean_baseline.json,
                     metrics_linear_baseline.json; jaw plots *_jaw_*.png)
  video:             results/videos/demo_sample.mp4
  export:            ${EXPORTED}animation.glb + animation.wav (open it in Blender or https://gltf-viewer.donmccurdy.com),
                     ${EXPORTED}viewer.html (open it in a browser: ground truth, prediction and mean baseline),
                     ${EXPORTED}blendshapes.csv (Live Link Face layout) and blendshapes.json
EOT
