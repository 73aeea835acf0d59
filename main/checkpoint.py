"""Checkpoint tools: ``python main/checkpoint.py convert OLD.pth [NEW.pth]`` rewrites a checkpoint of an
older format in the current one (models/checkpoint.py: without the numpy RNG state, read without running
code) and records its wav2vec2 config (models/loading.py ``record_encoder_config``: the model is built once
through transformers), so that inference from it needs no transformers.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.checkpoint import convert_old_checkpoint
from models.loading import record_encoder_config
from utils.config import load_config
from utils.errors import run_reporting_user_errors


def main(argv=None):
    p = argparse.ArgumentParser(description="Checkpoint tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="rewrite an older checkpoint in the current format: without the numpy "
                                       "RNG state, with the wav2vec2 config (inference then needs no transformers)")
    c.add_argument("src")
    c.add_argument("dst", nargs="?", help="output path (default: replace SRC)")
    c.add_argument("--config", default=None, help="YAML config for checkpoints without a saved config (default: "
                                                  "the built-in defaults, i.e. wav2vec2-base)")

    def run(args):
        cfg, added = load_config(args.config), []
        path = convert_old_checkpoint(args.src, args.dst, also=lambda p: added.append(record_encoder_config(p, cfg)))
        print(f"wrote {path}" + (" (with the wav2vec2 config)" if added[0] else ""))
    run_reporting_user_errors("checkpoint", lambda a: run(p.parse_args(a)), argv)


if __name__ == "__main__":
    main()
