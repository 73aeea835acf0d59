"""Lip-sync checks of a results tree against its own audio, no ground truth:
``python -m main.lipsync --results DIR`` (the same as ``python main/evaluate.py --lipsync``). What the
numbers mean: main/evaluation/lipsync.py.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.evaluation.lipsync import add_arguments, run
from utils.config import load_config
from utils.errors import run_reporting_user_errors
from utils.runtime import setup_logger


def main(argv=None):

    p = argparse.ArgumentParser(description="Lip-sync checks of a results tree against its own audio (no ground truth).")
    p.add_argument("--config", default="config/faceformer.yaml", help="for the FLAME lip mask and fps defaults")
    p.add_argument("--results", required=True, help="results folder: any tree of {i}.npy frame folders")
    p.add_argument("--coeffs", help="parallel tree with each clip's meta.json (test-split output outside "
                                    "INFER.output_root); single-audio folders hold their meta.json")
    p.add_argument("--out", help="JSON path (default lipsync_{name}.json beside the results folder)")
    p.add_argument("--no_plots", action="store_true")
    add_arguments(p)
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)
    setup_logger("lipsync")
    cfg = load_config(args.config, args.overrides)
    run(cfg, args.results, args.out, args.coeffs, args.phones, plot=not args.no_plots)


if __name__ == "__main__":
    run_reporting_user_errors("lipsync", main)
