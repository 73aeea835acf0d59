"""Do the lip-sync checks (main/evaluation/lipsync.py) tell good motion from bad? Scored on a set with ground truth.

On the test split of a dataset made from audio (the held-out speech set, scripts/make_speech_set.py,
whose clips carry the phones that made their motion as ``<clip>.phones.json``) four results trees are
scored without looking at the ground truth:

  ground_truth   the test clips' own FLAME motion, through the same FLAME model (what a perfect model makes)
  model          inference of a trained checkpoint
  mean_baseline  the training set's mean motion on every frame (scripts/mean_baseline.py)
  shifted        the model's frames delayed by --shift_ms (frame k shows frame k - n; the first repeated)
  gt_shifted     the ground truth delayed alike (what the timing checks lose on perfect motion)

each with the alignment files (``--phones auto``) and with phone recognition from the audio alone
(``--phones recognise``), and a table of the pooled numbers is printed and written as JSON/markdown.

    python scripts/lipsync_validation.py --data /tmp/ls_speech --checkpoint /tmp/ls_run/best_model.pth --out /tmp/ls_val
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from main.results import layout as RT
from main.results.reader import find_leaves, load_frames, read_meta
from main.results.writer import write_sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES = ("ground_truth", "model", "mean_baseline", "shifted", "gt_shifted")


def write_ground_truth(cfg, exp: str):
    """The test split's ground-truth vertices, in inference's layout, with meta.json naming the audio."""
    from dataset.data_item import sample_shape
    from dataset.flame_params import fit_shape, load_motion
    from dataset.index import dataset_refs, split_jsons
    from models.flame import load_flame
    from utils.config import flame_path_for

    for name, ds_cfg in cfg.DATA.datasets.items():
        if not split_jsons(ds_cfg, "test"):
            continue
        flame = load_flame(flame_path_for(cfg, name))
        for ref in dataset_refs(cfg, name, "test"):
            motion = load_motion(ref.flame_path, ref.fmt, ref.fps, target_fps=ref.fps,
                                 valid_frames_num=ref.valid_frames_num)
            shape = fit_shape(sample_shape(ref), cfg.FLAME.n_shape)
            verts = flame.motion_to_vertices(motion, shape)
            meta = RT.build_meta(ref.sample_id, name, ref.style_id, ref.speaker, ref.audio_path, ref.fps,
                                 len(verts), "ground truth", None, flame.source, shape,
                                 ref.template_path or ref.flame_path)
            write_sample(os.path.join(cfg.INFER.output_root, exp, name, ref.style_id),
                            os.path.join(cfg.INFER.coeff_root, exp, name, ref.style_id), verts, {"motion": motion}, meta)


def write_shifted(cfg, src: str, exp: str, shift_ms: float):
    """The ``src`` tree with every clip's frames delayed by shift_ms (the length kept)."""
    root = os.path.join(cfg.INFER.output_root, src)
    for leaf in find_leaves(root):
        rel = os.path.relpath(leaf, root)
        meta = read_meta(os.path.join(cfg.INFER.coeff_root, src, rel))
        frames = load_frames(leaf)
        n = int(round(shift_ms / 1000 * meta["fps"]))
        shifted = frames[np.clip(np.arange(len(frames)) - n, 0, None)]
        write_sample(os.path.join(cfg.INFER.output_root, exp, rel), os.path.join(cfg.INFER.coeff_root, exp, rel),
                        shifted, {}, dict(meta, checkpoint=f"{meta.get('checkpoint')} delayed {n} frames"))


def main(argv=None):
    from main.evaluation.lipsync import run
    from utils.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset root (DATA.data_root), e.g. the speech set")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="folder for the four trees and the reports")
    p.add_argument("--config", default="config/demo.yaml")
    p.add_argument("--shift_ms", type=float, default=200.0)
    p.add_argument("--no_recognise", action="store_true", help="skip the phone-recognition pass")
    args = p.parse_args(argv)
    over = [f"DATA.data_root={os.path.abspath(args.data)}", f"INFER.output_root={args.out}/metrics",
            f"INFER.coeff_root={args.out}/coeffs", f"INFER.checkpoint={os.path.abspath(args.checkpoint)}"]
    cfg = load_config(args.config, over)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    have = lambda exp: os.path.isdir(os.path.join(args.out, "metrics", exp))
    if not have("model"):
        subprocess.run([sys.executable, "inference.py", "--config", args.config, *over, "INFER.exp_name=model",
                        "--log", os.path.join(args.out, "inference.log")], cwd=REPO, env=env, check=True)
    if not have("mean_baseline"):
        subprocess.run([sys.executable, "scripts/mean_baseline.py", "--config", args.config, *over], cwd=REPO,
                       env=env, check=True)
    if not have("ground_truth"):
        write_ground_truth(cfg, "ground_truth")
    for src, exp in (("model", "shifted"), ("ground_truth", "gt_shifted")):
        if not have(exp):
            write_shifted(cfg, src, exp, args.shift_ms)

    table = {}
    for mode in ("auto",) + (() if args.no_recognise else ("recognise",)):
        for exp in TREES:
            rep = run(cfg, os.path.join(args.out, "metrics", exp), os.path.join(args.out, f"lipsync_{exp}_{mode}.json"),
                      os.path.join(args.out, "coeffs", exp), mode, plot=mode == "auto")
            table.setdefault(exp, {})[mode] = {k: v for k, v in rep["overall"].items() if k != "lag_curve"}
    with open(os.path.join(args.out, "validation.json"), "w") as f:
        json.dump(table, f, indent=2)
    md = markdown(table, args.shift_ms)
    with open(os.path.join(args.out, "validation.md"), "w") as f:
        f.write(md + "\n")
    print(md)


def markdown(table: dict, shift_ms: float) -> str:
    def f(x, fmt):
        return "static" if x is None else format(x, fmt)
    rows = ["| results | lag (ms) | corr | rest open | rest move | closure, alignment (chance) | "
            "closure, recognised phones (chance) | jitter |", "|---|---|---|---|---|---|---|---|"]
    names = {"shifted": f"model shifted +{shift_ms:g} ms", "gt_shifted": f"ground truth shifted +{shift_ms:g} ms"}
    for exp, r in table.items():
        a, rec = r["auto"], r.get("recognise", {})
        name = names.get(exp, exp.replace("_", " "))
        clo = lambda x: "-" if not x else f(x["closure"], ".2f") + (
            f" ({x['closure_chance']:.2f})" if x.get("closure_chance") is not None else "")
        rows.append(f"| {name} | {f(a['lag_ms'], '.0f')} | {f(a['corr'], '.2f')} | {f(a['rest_open'], '.2f')} | "
                    f"{f(a['rest_move'], '.2f')} | {clo(a)} | {clo(rec)} | {f(a['jitter'], '.3f')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
