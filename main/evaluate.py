"""Metrics of a results tree against ground truth: LVE, FDD, MVE (CodeTalker's definitions).

Predictions are read from ``{results}/{DATASET}/{STYLE_ID}/{i}.npy`` ((V,3) vertices per frame; default
results = ``{INFER.output_root}/{INFER.exp_name}``). Ground truth is built for every sample of the
config's ``INFER.split`` JSONs (default test) from its FLAME file, through the same FLAME model
(``flame_path_for``) and the sample's shape, at the predictions' frame rate (meta.json's ``fps`` from
the coeff tree if present, else ``INFER.output_fps``, where ``native`` = the dataset's fps); the gt
motion is resampled to that rate *before* FLAME. Prediction and gt are trimmed to the shorter length
(differences of more than one frame are reported).

Metrics, in model units (FLAME: metres), with ``template`` = the sample's FLAME mesh at zero motion:
- LVE: per frame, max over lip vertices of the squared L2 error; mean over frames   [m^2]
- FDD: per sequence, mean over upper-face vertices of std over time of ||v - template||^2, gt minus
  prediction (signed: > 0 means the prediction moves the upper face too little)      [m^2]
- MVE: L2 error averaged over all vertices and frames                                  [m]
Aggregation (per dataset and overall) follows CodeTalker: LVE and MVE are pooled over all frames of all
sequences (frame-weighted), FDD is the mean over sequences.

Every expected sequence must be there: a missing (or unreadable) one, or one shorter than its ground
truth by more than a frame, is listed (``missing`` / ``short`` in the JSON) and makes the run fail (exit 1,
after the table and JSON are written) unless ``--allow_missing``, which scores what there is. A torn or
wrong-shaped frame file is named by path (main/results/reader.py reads the frames; the renderer is not needed).

When the metrics JSONs of the mean-motion and linear-listener baselines (scripts/mean_baseline.py,
scripts/linear_baseline.py, evaluated first) lie beside this run's, the model's LVE is also printed
as a ratio to each (JSON ``baselines``).

Outputs: a table on stdout, a JSON (``--out``; default ``{results}/../metrics_{name}.json``, outside the
vertex folders) and per dataset a PNG ``{json stem}_jaw_{DATASET}.png`` with predicted vs ground-truth
jaw opening over time for up to 3 samples: the jaw rotation (motion dim 50, radians) when the coeff
tree's ``motion.npy`` exists, else a vertex proxy (vertical extent of the lip vertices, metres) for both.

Usage: ``python main/evaluate.py --help`` and the README ("Using real data"). Without ground truth,
``--lipsync`` scores a results tree against each clip's own audio (main/evaluation/lipsync.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from dataset.data_item import sample_shape
from dataset.flame_params import fit_shape, load_motion, resample_motion
from dataset.index import dataset_refs, split_jsons
from main.evaluation.lipsync import add_arguments as lipsync_arguments, run as lipsync_run
from main.evaluation.listening import format_listening, listening_check
from main.evaluation.metrics import aggregate, fdd, lve, mve
from main.results.layout import check_clashes
from main.results.reader import default_out_path, frame_files, load_frames, read_meta
from models.flame import load_flame
from models.flame_regions import region_indices
from utils.atomic import TMP_PREFIX, write_json
from utils.config import flame_path_for, flame_region_paths, load_config
from utils.errors import DataError, ResultsError, UserError, run_reporting_user_errors
from utils.framing import output_fps
from utils.plots import pyplot, save_figure
from utils.runtime import setup_logger

log = logging.getLogger("evaluate")

N_PLOT_SAMPLES = 3
BASELINES = ("mean_baseline", "linear_baseline")  # INFER.exp_name of scripts/mean_baseline.py, linear_baseline.py


class EvalError(UserError, RuntimeError):
    """Evaluation cannot run (nothing to compare, inconsistent data); the message says what and where."""


def lip_opening_proxy(verts: np.ndarray, lip_idx) -> np.ndarray:
    """Vertical extent (max y - min y) of the lip vertices per frame: (T,V,3) -> (T,). Grows as the
    mouth opens; used for the jaw plot when no motion.npy is available."""
    y = verts[:, lip_idx, 1]
    return y.max(-1) - y.min(-1)


# ----------------------------------------------------------------------------------------------
# Ground truth and predictions
# ----------------------------------------------------------------------------------------------

def prediction_fps(cfg, ref, meta: dict | None) -> float:
    """Frame rate of a sample's predicted frames: meta.json's fps, else INFER.output_fps, where
    ``native`` is the sample's own fps (its JSON ``fps`` or the dataset's)."""
    from_cfg = output_fps(cfg, ref.fps)
    if meta and meta.get("fps"):
        if abs(float(meta["fps"]) - from_cfg) > 1e-6:
            log.warning("%s/%s: meta.json says %s fps, the config %s fps: using meta.json's", ref.dataset,
                        ref.sample_id, meta["fps"], from_cfg)
        return float(meta["fps"])
    return from_cfg


# ----------------------------------------------------------------------------------------------
# Evaluation of a results tree
# ----------------------------------------------------------------------------------------------

def default_results_dir(cfg) -> str:
    return os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name)


def evaluate(cfg, results_dir: str | None = None, out: str | None = None, coeff_dir: str | None = None,
             plot: bool = True, allow_missing: bool = False, listening: dict | None = None) -> dict:
    """Evaluate a results tree against ground truth; print a table; write JSON (+ jaw PNGs).

    results_dir: ``{DATASET}/{STYLE_ID}/{i}.npy`` tree (default ``{output_root}/{exp_name}``);
    out: JSON path (default ``default_out_path(results_dir)``);
    coeff_dir: parallel tree with ``motion.npy``/``meta.json`` (default ``{coeff_root}/{exp_name}`` when
    results_dir is the default, else none: a hand-made tree must not borrow the model's coefficients).
    listening: main/evaluation/listening.py's report, written into the JSON under "listening".
    Returns the report dict that is written as JSON. Raises EvalError if no prediction is found, and
    (after writing the JSON) if an expected sequence is missing or short, unless ``allow_missing``.
    """
    if results_dir is None:
        results_dir = default_results_dir(cfg)
    if coeff_dir is None and os.path.abspath(results_dir) == os.path.abspath(default_results_dir(cfg)):
        coeff_dir = os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name)
    if not os.path.isdir(results_dir):
        raise EvalError(f"results folder not found: {results_dir} (run inference first, or pass --results)")
    out = out or default_out_path(results_dir)
    split = cfg.INFER.split or "test"
    lip_idx, upper_idx = (np.asarray(i, dtype=np.int64) for i in region_indices(**flame_region_paths(cfg)))

    report = {"results_dir": os.path.abspath(results_dir), "split": split,
              "units": "FLAME model units (metres): LVE m^2, FDD m^2, MVE m",
              "aggregation": "LVE and MVE pooled over all frames (frame-weighted); FDD mean over sequences",
              "datasets": {}, "missing": [], "short": [], "skipped": [], "length_mismatches": []}
    all_samples, plot_paths = [], {}
    for name, ds_cfg in cfg.DATA.datasets.items():
        jsons = split_jsons(ds_cfg, split)
        if not jsons:
            continue
        problems = [] if cfg.DATA.bad_samples == "skip" else None
        refs = dataset_refs(cfg, name, split, problems)  # honours DATA.<split>_subjects, like inference
        for msg in problems or []:
            log.warning("skipped (DATA.bad_samples=skip): %s", msg)
            report["skipped"].append(msg)
        check_clashes(refs, lambda r: os.path.join(results_dir, r.dataset, r.style_id))

        flame = load_flame(flame_path_for(cfg, name))
        samples, missing, plot_data = [], [], []
        for ref in refs:
            pred_dir = os.path.join(results_dir, name, ref.style_id)
            try:
                present = os.path.isdir(pred_dir) and bool(frame_files(pred_dir))
                pred = load_frames(pred_dir) if present else None
                reason = "no predicted frames"
            except ResultsError as e:  # a gap in the numbering; a torn, empty or wrong-shaped frame file
                pred, reason = None, str(e)
            if pred is None:
                missing.append(ref.sample_id)
                report["missing"].append({"dataset": name, "sample_id": ref.sample_id, "folder": pred_dir,
                                          "reason": reason})
                log.warning("%s/%s: %s in %s", name, ref.sample_id, reason, pred_dir)
                continue
            sample_coeffs = os.path.join(coeff_dir, name, ref.style_id) if coeff_dir else None
            meta = read_meta(sample_coeffs)
            fps = prediction_fps(cfg, ref, meta)

            try:
                motion = load_motion(ref.flame_path, ref.fmt, ref.fps, target_fps=fps,
                                     valid_frames_num=ref.valid_frames_num)
                shape = fit_shape(sample_shape(ref), cfg.FLAME.n_shape)
            except DataError as e:
                raise DataError(f"{ref.json_path}: sample '{ref.sample_id}': {e}") from None
            gt = flame.motion_to_vertices(motion, shape)  # numpy in, numpy out; chunked, no graph
            template = flame.motion_to_vertices(np.zeros((1, motion.shape[1]), np.float32), shape)[0]
            if gt.shape[1:] != pred.shape[1:]:
                raise EvalError(f"{pred_dir}: predicted frames have {pred.shape[1]} vertices, the FLAME model "
                                f"for {name} has {gt.shape[1]}")
            n = min(len(pred), len(gt))
            if len(pred) < len(gt) - 1:  # one frame of rounding is fine; more is a truncated sequence
                report["short"].append({"dataset": name, "sample_id": ref.sample_id, "folder": pred_dir,
                                        "pred_frames": len(pred), "gt_frames": len(gt)})
            if abs(len(pred) - len(gt)) > 1:
                log.warning("%s/%s: %d predicted vs %d ground-truth frames at %g fps: trimmed to %d",
                            name, ref.sample_id, len(pred), len(gt), fps, n)
                report["length_mismatches"].append({"dataset": name, "sample_id": ref.sample_id,
                                                    "pred_frames": len(pred), "gt_frames": len(gt)})
            pred, gt_n = pred[:n], gt[:n]
            s = {"sample_id": ref.sample_id, "style_id": ref.style_id, "fps": fps, "n_frames": n,
                 "LVE": lve(pred, gt_n, lip_idx), "FDD": fdd(pred, gt_n, template, upper_idx),
                 "MVE": mve(pred, gt_n)}
            samples.append(s)
            if len(plot_data) < N_PLOT_SAMPLES:
                plot_data.append(_jaw_curves(ref.sample_id, fps, pred, gt_n, motion[:n], sample_coeffs, lip_idx))

        summary = aggregate(samples)
        summary.update(n_missing=len(missing), missing=missing, samples=samples)
        report["datasets"][name] = summary
        all_samples.extend(samples)
        if plot and plot_data:
            path = _plot_jaw(plot_data, name, os.path.splitext(out)[0] + f"_jaw_{name}.png")
            plot_paths[name] = {"path": path, "signal": sorted({c["ylabel"] for c in plot_data})}

    if not report["datasets"]:
        raise EvalError(f"no dataset in the config has a '{split}' split (DATA.datasets.*.{split})")
    if not all_samples:
        raise EvalError(f"no predictions found under {results_dir} for any of the {len(report['missing'])} "
                        f"'{split}' samples (expected {results_dir}/DATASET/STYLE_ID/0.npy ...)")
    report["overall"] = aggregate(all_samples)
    report["overall"]["n_missing"] = len(report["missing"])
    report["plots"] = plot_paths
    report["unmatched_folders"] = _unmatched(results_dir, report)

    report["allow_missing"] = bool(allow_missing)
    if listening is not None:
        report["listening"] = listening
    report["baselines"] = baseline_ratios(out, report)

    print(format_table(report))
    if report["baselines"]:
        print("LVE / baseline's (metrics JSONs beside this one): " + ", ".join(
            f"{name} {b['LVE_ratio']:.3f}x" for name, b in report["baselines"].items()))
    if listening is not None:
        print(format_listening(listening))
    try:
        write_json(out, report)
    except OSError as e:
        raise EvalError(f"cannot write the metrics file {out}: {e.strerror or e}") from None
    log.info("wrote %s", out)
    if (report["missing"] or report["short"]) and not allow_missing:
        raise EvalError(incomplete_message(report, results_dir, out))
    return report


def baseline_ratios(out: str, report: dict) -> dict:
    """{baseline: {"LVE", "LVE_ratio"}} for each baseline whose metrics JSON lies beside ``out``
    (scripts/mean_baseline.py, scripts/linear_baseline.py evaluated on the same split): the numbers a
    model has to beat, the linear listener's above all."""
    ratios = {}
    for name in BASELINES:
        path = os.path.join(os.path.dirname(os.path.abspath(out)), f"metrics_{name}.json")
        if path == os.path.abspath(out) or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                lve_base = float(json.load(f)["overall"]["LVE"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: not a readable metrics file (%s); not compared", path, e)
            continue
        if report["overall"]["LVE"] is not None and lve_base > 0:
            ratios[name] = {"LVE": lve_base, "LVE_ratio": report["overall"]["LVE"] / lve_base}
    return ratios


def incomplete_message(report: dict, results_dir: str, out: str) -> str:
    """The error for missing / short sequences: every one named with its folder."""
    lines = [f"{m['dataset']}/{m['sample_id']}: missing ({m['reason']}): {m['folder']}" for m in report["missing"]]
    lines += [f"{m['dataset']}/{m['sample_id']}: short, {m['pred_frames']} of {m['gt_frames']} frames: {m['folder']}"
              for m in report["short"]]
    return (f"{len(report['missing'])} expected sequence(s) missing and {len(report['short'])} shorter than their "
            f"ground truth under {results_dir}; the scores in {out} cover only part of the split (rerun "
            f"inference with --resume to complete it, or pass --allow_missing to accept):\n  " + "\n  ".join(lines))


def _unmatched(results_dir: str, report: dict) -> list[str]:
    """Predicted folders that no evaluated sample claimed (e.g. from another split), for the report."""
    claimed = {(d, s["style_id"]) for d, r in report["datasets"].items() for s in r["samples"]}
    claimed |= {(m["dataset"], os.path.basename(m["folder"])) for m in report["missing"]}
    extra = []
    for d in sorted(os.listdir(results_dir)):
        if os.path.isdir(os.path.join(results_dir, d)):
            extra += [f"{d}/{s}" for s in sorted(os.listdir(os.path.join(results_dir, d)))
                      if os.path.isdir(os.path.join(results_dir, d, s)) and (d, s) not in claimed
                      and not s.startswith(TMP_PREFIX)]
    if extra:
        log.info("%d predicted folder(s) not in the evaluated split, ignored: %s", len(extra), extra[:5])
    return extra


def _jaw_curves(sample_id, fps, pred, gt, gt_motion, coeff_dir, lip_idx) -> dict:
    """Jaw opening of prediction and gt over time: motion dim 50 (rad) if the coeff tree has motion.npy,
    else the lip-extent vertex proxy (m) for both."""
    path = os.path.join(coeff_dir, "motion.npy") if coeff_dir else None
    if path and os.path.isfile(path):
        pred_motion = np.load(path)
        # motion.npy may be at 25 fps while the vertex frames are at the dataset's native fps.
        pred_jaw = (resample_motion(pred_motion[:, 50:51], len(pred_motion), len(pred))[:, 0]
                    if len(pred_motion) and len(pred) else None)
        if pred_jaw is not None:
            return {"sample_id": sample_id, "t": np.arange(len(pred)) / fps, "pred": pred_jaw,
                    "gt": gt_motion[:, 50], "ylabel": "jaw rotation (rad, motion.npy)"}
    return {"sample_id": sample_id, "t": np.arange(len(pred)) / fps, "pred": lip_opening_proxy(pred, lip_idx),
            "gt": lip_opening_proxy(gt, lip_idx), "ylabel": "lip vertical extent (m, vertex proxy)"}


def _plot_jaw(curves: list[dict], dataset: str, path: str) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 2.6 * len(curves)), squeeze=False)
    for ax, c in zip(axes[:, 0], curves):
        ax.plot(c["t"], c["gt"], label="ground truth", color="black", lw=1.2)
        ax.plot(c["t"], c["pred"], label="prediction", color="tab:red", lw=1.2)
        ax.set_title(f"{dataset}: {c['sample_id']}", fontsize=9)
        ax.set_ylabel(c["ylabel"], fontsize=8)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    return save_figure(fig, path)


def format_table(report: dict) -> str:
    def fmt(x):
        return f"{x:11.4e}" if x is not None else f"{'-':>11}"
    rows = [f"{'dataset':<20} {'seqs':>5} {'frames':>7} {'missing':>7} {'LVE':>11} {'FDD':>11} {'MVE':>11}"]
    items = list(report["datasets"].items()) + [("overall", report["overall"])]
    for name, r in items:
        rows.append(f"{name:<20} {r['n_sequences']:>5} {r['n_frames']:>7} {r['n_missing']:>7} "
                    f"{fmt(r['LVE'])} {fmt(r['FDD'])} {fmt(r['MVE'])}")
    rows.append(f"({report['units']}; {report['aggregation']})")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description="LVE / FDD / MVE of a results tree against ground truth.")
    p.add_argument("--config", default="config/faceformer.yaml")
    p.add_argument("--results", help="results tree {DATASET}/{STYLE_ID}/{i}.npy "
                                     "(default {INFER.output_root}/{INFER.exp_name})")
    p.add_argument("--out", help="metrics JSON (default: metrics_{name}.json next to the results folder)")
    p.add_argument("--coeffs", help="parallel coeff tree with motion.npy/meta.json "
                                    "(default {INFER.coeff_root}/{INFER.exp_name} for the default results)")
    p.add_argument("--no_plots", action="store_true", help="skip the jaw-opening PNGs")
    p.add_argument("--allow_missing", action="store_true", help="score what there is when expected sequences "
                                                                "are missing or short (default: exit 1)")
    p.add_argument("--listening", action="store_true",
                   help="also generate the split with each clip's own audio and with another clip's, from "
                        "INFER.checkpoint, and report LVE(other) / LVE(own): about 1.0 = the model ignores the audio")
    p.add_argument("--lipsync", action="store_true",
                   help="instead: the lip-sync checks of --results against each clip's own audio, no ground "
                        "truth (any results tree whose meta.json names the audio; see main/evaluation/lipsync.py)")
    lipsync_arguments(p)
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)

    setup_logger("evaluate")
    cfg = load_config(args.config, args.overrides)  # a repo-relative config path works from anywhere
    if args.lipsync:
        lipsync_run(cfg, args.results or default_results_dir(cfg), args.out, args.coeffs, args.phones,
                    plot=not args.no_plots)
        return
    listening = listening_check(cfg) if args.listening else None
    evaluate(cfg, args.results, args.out, args.coeffs, plot=not args.no_plots, allow_missing=args.allow_missing,
             listening=listening)


if __name__ == "__main__":
    run_reporting_user_errors("evaluate", main)
