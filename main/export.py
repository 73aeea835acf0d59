"""Export one result: ``python main/export.py --results DIR [--rig RIG] [--html]``; the README's "Export"
section has the usage. DIR is a result folder (main/exporting/result.py); what is written goes beside
its meta.json.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # `python main/export.py` puts main/, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.exporting.result import load_result
from main.exporting.rig import export_rig
from main.exporting.viewer import export_viewer
from utils.config import load_config
from utils.errors import ExportError, run_reporting_user_errors
from utils.runtime import setup_logger


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a result: blendshape weights of a rig, a browser viewer.")
    p.add_argument("--config", default="config/faceformer.yaml", help="config for the results tree, FLAME "
                   "model and test split (default config/faceformer.yaml)")
    p.add_argument("--results", required=True, help="a result folder: DIR/meta.json beside DIR/vertices/, or "
                   "a sample's folder in the results tree (INFER.coeff_root or INFER.output_root)")
    p.add_argument("--flame", help="FLAME model (default: the result's dataset's, else FLAME.model_path)")
    p.add_argument("--rig", help="blendshape rig on FLAME's topology (.npz: names, neutral, deltas; or .glb with "
                   "named morph targets) -> DIR/blendshapes.csv (Live Link Face layout) and DIR/blendshapes.json")
    p.add_argument("--html", action="store_true", help="-> DIR/viewer.html: a self-contained page that plays the "
                   "result with its audio (next to ground truth and the mean baseline for a test sample)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)
    if not (args.rig or args.html):
        raise ExportError("nothing to export: give --rig RIG and/or --html")

    setup_logger("export")
    cfg = load_config(args.config, args.overrides)
    result = load_result(args.results, cfg, args.flame)
    if args.rig:
        export_rig(result, args.rig)
    if args.html:
        export_viewer(result, cfg)


if __name__ == "__main__":
    run_reporting_user_errors("export", main)
