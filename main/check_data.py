"""Check every entry of every JSON index of a config, all splits, and print a table per dataset.

    python -m main.check_data --config config/faceformer.yaml [SECTION.key=value ...]

Each sample is loaded once, as training would (audio decoded and resampled, FLAME parameters read,
motion resampled to DATA.target_fps). Problems: unreadable or truncated files, a valid_frames_num beyond
a file's frames, a sample id / audio file / FLAME file in two splits of one dataset, test samples
sharing an output folder, and every FLAME model, mask and index file the config names that is missing
or refused. Samples of speakers outside DATA.<split>_subjects are counted as "left out". Exit status 1
if any problem was found, 0 otherwise; audio/motion length mismatches above DATA.max_av_diff are
listed as warnings (they are trimmed, not errors). A config that cannot be read is one line and exit
status 1, as for every entry point (utils/errors.py).
"""
from __future__ import annotations

import argparse
import logging
import sys

from dataset.index import SPLITS
from dataset.split_check import check_split
from models.flame import FLAME
from models.flame_regions import region_indices
from utils.config import flame_path_for, flame_region_paths, load_config, resolve_data_path
from utils.errors import ConfigError, run_reporting_user_errors
from utils.safe_pickle import FlameLoadError


def _fps(values) -> str:
    return ",".join(f"{v:g}" for v in values) or "-"


def check_flame_files(cfg) -> tuple[list[str], list[str]]:
    """Load every FLAME model (FLAME.model_path and each dataset's flame_model), the masks file and the
    index overrides the config names. -> (lines describing what loaded, problems)."""
    lines, problems = [], []
    users = {}  # model path -> the keys that name it
    users.setdefault(flame_path_for(cfg), []).append("FLAME.model_path")
    for name, ds in cfg.DATA.datasets.items():
        if ds.get("flame_model"):
            users.setdefault(flame_path_for(cfg, name), []).append(f"DATA.datasets.{name}.flame_model")
    n_vertices = {}
    for path, keys in users.items():
        try:
            model = FLAME.from_file(path)
        except FlameLoadError as e:
            problems.append(f"{', '.join(keys)}: {e}")
            continue
        n_vertices[path] = model.n_vertices
        lines.append(f"  {path}: {model.n_vertices} vertices, {model.n_shape} shape + {model.n_expr} expression "
                     f"components ({', '.join(keys)})")
    try:
        lips, upper = region_indices(**flame_region_paths(cfg))
    except FlameLoadError as e:
        problems.append(str(e))
    else:
        lines.append(f"  regions: {len(lips)} lip and {len(upper)} upper-face vertices "
                     f"({resolve_data_path(cfg, cfg.FLAME.masks_path)} or the index overrides)")
        for path, n in n_vertices.items():
            top = max(int(lips.max(initial=-1)), int(upper.max(initial=-1)))
            if top >= n:
                problems.append(f"{path}: has {n} vertices but the region masks name vertex {top}")
    return lines, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/faceformer.yaml", help="YAML config")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", help="SECTION.key=value overrides")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not cfg.DATA.datasets:
        raise ConfigError(f"{args.config}: DATA.datasets is empty: nothing to check")

    quiet = logging.getLogger("main.check_data")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # the tables below list every problem and warning
    reports = {split: check_split(cfg, split, log=quiet, raise_errors=False, progress=not args.quiet)
               for split in SPLITS}
    flame_lines, flame_problems = check_flame_files(cfg)

    print(f"data root: {cfg.DATA.data_root}")
    print("\n== FLAME files ==")
    for line in flame_lines:
        print(line)
    for p in flame_problems:
        print(f"  problem: {p}")
    n_problems = len(flame_problems)
    for name, ds in cfg.DATA.datasets.items():
        print(f"\n== {name}  (format {ds.format}, config fps {ds.fps:g}) ==")
        header = f"  {'split':<6}{'samples':>9}{'entries':>9}{'left out':>10}{'hours':>9}{'speakers':>10}  " \
                 f"{'native fps':<12}{'warnings':>9}{'problems':>9}"
        print(header)
        details = []
        for split in SPLITS:
            r = reports[split]["datasets"].get(name)
            if r is None:
                print(f"  {split:<6}{'(no JSON for this split)':>40}")
                continue
            print(f"  {split:<6}{r['samples']:>9}{r['entries']:>9}{r['left_out']:>10}{r['hours']:>9.3f}"
                  f"{len(r['speakers']):>10}  "
                  f"{_fps(r['native_fps']):<12}{len(r['warnings']):>9}{len(r['problems']):>9}")
            details += [f"  [{split}] problem: {p}" for p in r["problems"]]
            details += [f"  [{split}] warning: {w}" for w in r["warnings"]]
            n_problems += len(r["problems"])
        for line in details:
            print(line)
    dataset_warnings = {w for r in reports.values() for ds in r["datasets"].values() for w in ds["warnings"]}
    for split in SPLITS:
        subjects = cfg.DATA.get(f"{split}_subjects")
        if subjects is not None:
            print(f"\n{split}: DATA.{split}_subjects keeps {len(subjects)} speaker(s); "
                  f"{reports[split]['left_out']} sample(s) of other speakers left out")
        for w in reports[split]["warnings"]:
            if w not in dataset_warnings:
                print(f"  [{split}] warning: {w}")
    print(f"\n{'OK: no problems' if n_problems == 0 else f'FAILED: {n_problems} problem(s)'}")
    return 1 if n_problems else 0


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("check_data", main))
