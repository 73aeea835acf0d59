"""Export one result for the tools users have:
``python main/export.py --results DIR [--glb] [--out FILE] [--rig RIG] [--html] [--overwrite] [KEY=value ...]``.

With neither --rig nor --html it writes the glb (``DIR/animation.glb`` and ``animation.wav``); --rig writes
the rig's weights (``blendshapes.csv`` in Live Link Face's layout, ``blendshapes.json``), --html the browser
viewer (``viewer.html``), and --glb (or --out) adds the glb to them. DIR is a result folder
(main/exporting/result.py); the files go beside its meta.json. The README's "Export" section has the
usage; the machinery is main/exporting/.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # `python main/export.py` puts main/, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.exporting.glb import glb_files, write_glb
from main.exporting.result import load_result
from main.exporting.rig import export_rig
from main.exporting.viewer import export_viewer
from main.results.layout import RIG_CSV, RIG_JSON, VIEWER_FILE
from utils.config import load_config
from utils.errors import ResultsError, run_reporting_user_errors
from utils.runtime import setup_logger

DEFAULT_CONFIG = "config/faceformer.yaml"

log = logging.getLogger("export")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a result: a glb, blendshape weights of a rig, a browser viewer.")
    p.add_argument("--results", required=True, help="a result folder: DIR/meta.json beside DIR/vertices/, or a "
                   "sample's folder in the results tree (INFER.coeff_root or INFER.output_root)")
    p.add_argument("--glb", action="store_true", help="write the glb also when --rig or --html is given")
    p.add_argument("--out", help="the glb to write (default DIR/animation.glb); the audio goes beside it as .wav")
    p.add_argument("--rig", help="blendshape rig on FLAME's topology (.npz: names, neutral, deltas; or .glb with "
                   "named morph targets) -> DIR/blendshapes.csv (Live Link Face layout) and DIR/blendshapes.json")
    p.add_argument("--html", action="store_true", help="-> DIR/viewer.html: a self-contained page that plays the "
                   "result with its audio (next to ground truth and the mean baseline for a test sample)")
    p.add_argument("--overwrite", action="store_true", help="replace existing export files")
    p.add_argument("--flame", help="FLAME model file (default: the one the result's meta.json names)")
    p.add_argument("--config", help=f"config of the results tree and test split (default {DEFAULT_CONFIG}); "
                   "for a result whose meta.json names no FLAME model, also that model")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    return p.parse_intermixed_args(argv)


def cli(argv=None) -> list[str]:
    """Run as the command line asks -> the paths written; user errors raise (utils/errors.py)."""
    args = parse_args(argv)
    setup_logger("export")
    glb = args.glb or args.out is not None or not (args.rig or args.html)
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    result = load_result(args.results, cfg, args.flame, vertices=bool(args.rig or args.html),
                         config_flame=args.config is not None)
    glb_out = glb_files(result, args.out) if glb else []
    files = glb_out + ([result.out(RIG_CSV), result.out(RIG_JSON)] if args.rig else []) + \
        ([result.out(VIEWER_FILE)] if args.html else [])
    taken = [f for f in files if os.path.exists(f)]
    if taken and not args.overwrite:
        raise ResultsError(f"{taken[0]} already exists; rerun with --overwrite to replace it"
                           + (", or choose another --out" if taken[0] in glb_out else ""))
    # the rig first: a bad rig file is the likeliest mistake, and it stops the export before anything is written
    if args.rig:
        export_rig(result, args.rig)
    if glb:
        log.info("wrote %s", write_glb(result, args.out))
    if args.html:
        export_viewer(result, cfg)
    return files


def main(argv=None):
    run_reporting_user_errors("export", cli, argv)


if __name__ == "__main__":
    main()
