"""Check every entry of every JSON index of a config, all splits, and print a table per dataset.

    python -m dataset.check --config config/faceformer.yaml [SECTION.key=value ...]

Each sample is loaded once, as training would (audio decoded and resampled, FLAME parameters read,
motion resampled to 25 fps). Exit status 1 if any problem was found, 0 otherwise; audio/motion length
mismatches above DATA.max_av_diff are listed as warnings (they are trimmed, not errors).
"""
from __future__ import annotations

import argparse
import logging
import sys

from dataset.data_item import DataError
from dataset.dataset import SPLITS, validate
from utils.config import ConfigError, load_config


def _fps(values) -> str:
    return ",".join(f"{v:g}" for v in values) or "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/faceformer.yaml", help="YAML config")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", help="SECTION.key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not cfg.DATA.datasets:
        print(f"{args.config}: DATA.datasets is empty: nothing to check", file=sys.stderr)
        return 1

    quiet = logging.getLogger("dataset.check")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # the tables below list every problem and warning
    reports = {}
    try:
        for split in SPLITS:
            reports[split] = validate(cfg, split, log=quiet, raise_errors=False, progress=not args.quiet)
    except (ConfigError, DataError) as e:  # e.g. DATA_ROOT unset
        print(f"error: {e}", file=sys.stderr)
        return 2

    n_problems = 0
    print(f"data root: {cfg.DATA.data_root}")
    for name, ds in cfg.DATA.datasets.items():
        print(f"\n== {name}  (format {ds.format}, config fps {ds.fps:g}) ==")
        header = f"  {'split':<6}{'samples':>9}{'entries':>9}{'hours':>9}{'speakers':>10}  " \
                 f"{'native fps':<12}{'warnings':>9}{'problems':>9}"
        print(header)
        details = []
        for split in SPLITS:
            r = reports[split]["datasets"].get(name)
            if r is None:
                print(f"  {split:<6}{'(no JSON for this split)':>40}")
                continue
            print(f"  {split:<6}{r['samples']:>9}{r['entries']:>9}{r['hours']:>9.3f}{len(r['speakers']):>10}  "
                  f"{_fps(r['native_fps']):<12}{len(r['warnings']):>9}{len(r['problems']):>9}")
            details += [f"  [{split}] problem: {p}" for p in r["problems"]]
            details += [f"  [{split}] warning: {w}" for w in r["warnings"]]
            n_problems += len(r["problems"])
        for line in details:
            print(line)
    print(f"\n{'OK: no problems' if n_problems == 0 else f'FAILED: {n_problems} problem(s)'}")
    return 1 if n_problems else 0


if __name__ == "__main__":
    sys.exit(main())
