"""Export a finished result for other tools: ``python main/export.py --results DIR [--out FILE] [--overwrite]``
writes ``DIR/animation.glb`` (glTF 2.0 binary: FLAME mesh, expression morph targets, joints as a skin, the
animation at the result's fps) and ``DIR/animation.wav`` beside it. DIR is the folder holding the result's
meta.json: a single-audio or stream output DIR, or a test sample's folder in the coefficient tree. The
README's "Export" section shows how to open the glb; the machinery is main/exporting/.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # `python main/export.py` puts main/, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.exporting.glb import write_glb
from utils.errors import run_reporting_user_errors
from utils.runtime import setup_logger

log = logging.getLogger("export")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a result folder (the one holding meta.json) as a glb.")
    p.add_argument("--results", required=True, help="result folder: single-audio / stream DIR, or a test "
                                                     "sample's folder in the coefficient tree")
    p.add_argument("--out", help="the glb to write (default DIR/animation.glb); the audio goes beside it as .wav")
    p.add_argument("--overwrite", action="store_true", help="replace existing export files")
    p.add_argument("--flame", help="FLAME model file (default: the one the result's meta.json names)")
    return p.parse_args(argv)


def cli(argv=None) -> str:
    """Run as the command line asks -> the path written; user errors raise (utils/errors.py)."""
    args = parse_args(argv)
    setup_logger("export")
    path = write_glb(args.results, args.out, args.overwrite, args.flame)
    log.info("wrote %s", path)
    return path


def main(argv=None):
    run_reporting_user_errors("export", cli, argv)


if __name__ == "__main__":
    main()
