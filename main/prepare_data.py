"""Prepare the data of a config once, so that training starts and loads fast.

    python -m main.prepare_data --config config/faceformer.yaml [--splits train val] [SECTION.key=value ...]

Every sample of the splits is decoded once (audio to normalised 16 kHz mono, motion to 25 fps, shape
and detail) into the prepared-data store (dataset/store.py) under ``DATA.store_root`` (default
``<DATA.data_root>/.prepared``), validated as training validates, and the validation report is put
beside it. Only samples that are new or whose files changed (dataset/store_records.py: stat signature,
then content) are decoded again.
Training does the same by itself when the store is missing or stale; deleting the store loses nothing.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.dataset import FaceDataset
from dataset.store import store_root
from utils.config import load_config
from utils.errors import (
    ConfigError,
    run_reporting_user_errors,
)

SPLITS = ("train", "val", "test")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/faceformer.yaml", help="YAML config")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], metavar="{train,val,test}",
                    help="splits to prepare (training reads train and val)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", help="SECTION.key=value overrides")
    args = ap.parse_intermixed_args(argv)
    # --splits takes what follows it: overrides written after it (as train accepts them anywhere) go back
    args.overrides += [s for s in args.splits if "=" in s]
    args.splits = [s for s in args.splits if "=" not in s]
    bad = [s for s in args.splits if s not in SPLITS]
    if bad or not args.splits:
        ap.error(f"argument --splits: {bad[0]!r} is not a split (choose from train, val, test)" if bad
                 else "argument --splits: expected at least one split (train, val, test)")
    cfg = load_config(args.config, args.overrides)
    root = store_root(cfg)
    if root is None:
        raise ConfigError(f"{args.config}: DATA.store_root is off: there is no store to prepare")
    log = logging.getLogger("main.prepare_data")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.setLevel(logging.INFO)
    for split in args.splits:
        data = FaceDataset(cfg, split, [], train=False, log=log, progress=not args.quiet, prepared=True)
        for name, r in data.report["datasets"].items():
            print(f"{split}/{name}: {r['samples']} sample(s), {r['hours']:.2f} h, {len(r['problems'])} problem(s), "
                  f"{len(r['warnings'])} warning(s)")
    print(f"prepared data in {root}")


def cli(argv=None):
    run_reporting_user_errors("prepare_data", main, argv, logger=logging.getLogger("main.prepare_data"))


if __name__ == "__main__":
    cli()
