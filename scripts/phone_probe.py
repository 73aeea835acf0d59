"""Where is the phonetic detail lost? Linear probes along a trained model, on a set with phone labels.

On a dataset whose clips carry their phones (``<clip>.phones.json`` beside the audio: the held-out speech
set, scripts/make_speech_set.py), each stage of a checkpoint's pipeline is probed per motion frame with
the same closed-form linear readouts, fitted on the training split and scored on the test split:

  log-mel          40-band log-mel of the audio, +-80 ms (the linear listener's, scripts/linear_baseline.py)
  front end        the encoder's first stage: the wav2vec2 CNN (or the log-mel front end), resampled to frames
  encoder          the audio features the decoder attends (wav2vec2 transformer + feature map), (T, d)
  motion (model)   the checkpoint's generated motion, (T, 51)
  motion (truth)   the ground-truth motion, (T, 51): what the motion itself can say about the phones

Every stage gets the same context (its frames t-2 .. t+2) and the same ridge readouts:
``phone acc``: accuracy of a ridge classifier over the phones (ARPAbet, SIL for silence; ``chance`` is the
most frequent phone's share); ``PBM recall``: the share of p/b/m frames it labels p, b or m; ``LVE/mean``:
a ridge regression from the stage to the motion, scored as the metrics score a model (LVE through FLAME,
over the mean-motion baseline's). A stage that scores below an earlier one has lost what the earlier had.

    python scripts/phone_probe.py --config config/demo.yaml --checkpoint RUN/best_model.pth DATA.data_root=speech_data
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from dataset.dataset import FaceDataset
from main.evaluation.metrics import lve
from main.evaluation.phones import BILABIALS, alignment_path, clean_label, read_alignment
from main.infer.decode import generate_motion
from models.flame import load_flame
from models.flame_regions import region_indices
from models.loading import load_model
from scripts.linear_baseline import LinearListener
from utils.config import flame_path_for, flame_region_paths, load_config
from utils.errors import DataError, run_reporting_user_errors
from utils.runtime import setup_logger

CONTEXT = 2      # frames either side given to every stage
RIDGE = 1.0      # on standardised features


def frame_phones(audio_path: str, n_frames: int, fps: float) -> np.ndarray:
    """(T,) phone label at each frame's centre, from the alignment beside the audio."""
    path = alignment_path(audio_path)
    if not os.path.isfile(path):
        raise DataError(f"{audio_path}: no phone alignment beside it ({path}); the probe needs labelled "
                        f"speech (scripts/make_speech_set.py writes one per clip)")
    labels = np.full(n_frames, "SIL", dtype=object)
    t = (np.arange(n_frames) + 0.5) / fps
    for phone, start, end in read_alignment(path):
        labels[(t >= start) & (t < end)] = clean_label(phone)
    return labels


def with_context(x: np.ndarray) -> np.ndarray:
    """(T, D) -> (T, (2 CONTEXT + 1) D): each frame with its neighbours (edges repeated)."""
    idx = np.clip(np.arange(len(x))[:, None] + np.arange(-CONTEXT, CONTEXT + 1)[None], 0, len(x) - 1)
    return x[idx].reshape(len(x), -1)


def ridge(train_x: np.ndarray, train_y: np.ndarray):
    """Closed-form ridge on standardised features -> predict(x)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    x = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    w = np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ train_y)
    return lambda z: np.c_[(z - mean) / std, np.ones(len(z))] @ w


@torch.no_grad()
def stages(model, cfg, item, style: int, listener: LinearListener, device) -> dict:
    """The representations of one clip, each (T, D) float64."""
    audio, T = item["audio"].to(device), int(item["n_frames"])
    enc = model.audio_encoder
    front = enc.resample(enc.model.feature_extractor(audio[None]), T, enc.cnn_lengths(torch.tensor([audio.shape[0]])))
    out = {"log-mel": listener.features(item["audio"].numpy(), T),
           "front end": front[0].cpu().double().numpy(),
           "encoder": model.encode(audio[None], T)[0].cpu().double().numpy(),
           "motion (model)": generate_motion(model, [item["audio"]], [style], [T], cfg, device)[0].astype(np.float64),
           "motion (truth)": item["motion"].numpy().astype(np.float64)}
    return {k: with_context(v) if k != "log-mel" else v for k, v in out.items()}


def probe(cfg, checkpoint: str, log) -> dict:
    device = torch.device("cpu")
    model, styles = load_model(checkpoint, cfg, device, log)
    model.eval()
    framing = model.framing
    listener = LinearListener(len(styles), framing.sample_rate, framing.samples_per_frame, context_ms=80)
    lip_idx = np.asarray(region_indices(**flame_region_paths(cfg))[0], dtype=np.int64)
    splits = {}
    for split in ("train", "test"):
        data = FaceDataset(cfg, split, styles, train=False, check=False, log=log, progress=False)
        rows = []
        for i in range(len(data)):
            item, ref = data[i], data.refs[i]
            style = int(item["style"]) if int(item["style"]) >= 0 else 0
            rows.append({"stages": stages(model, cfg, item, style, listener, device),
                         "phones": frame_phones(ref.audio_path, int(item["n_frames"]), framing.fps),
                         "motion": item["motion"].numpy(), "shape": item["shape"].numpy(), "dataset": ref.dataset})
        splits[split] = rows
    phones = sorted({p for r in splits["train"] for p in r["phones"]})
    test_phones = np.concatenate([r["phones"] for r in splits["test"]])
    flames = {d: load_flame(flame_path_for(cfg, d)) for d in {r["dataset"] for r in splits["test"]}}
    mean_motion = np.concatenate([r["motion"] for r in splits["train"]]).mean(0)

    def test_lve(predict_rows):
        err = n = 0
        for r, pred in zip(splits["test"], predict_rows):
            flame = flames[r["dataset"]]
            v = flame.motion_to_vertices(pred.astype(np.float32), r["shape"])
            err += lve(v, flame.motion_to_vertices(r["motion"], r["shape"]), lip_idx) * len(pred)
            n += len(pred)
        return err / n

    base = test_lve([np.repeat(mean_motion[None], len(r["motion"]), 0) for r in splits["test"]])
    report = {"checkpoint": checkpoint, "context_frames": CONTEXT, "phones": phones,
              "chance": float(max(np.mean(test_phones == p) for p in phones)), "stages": {}}
    for stage in splits["test"][0]["stages"]:
        x = np.concatenate([r["stages"][stage] for r in splits["train"]])
        y = np.concatenate([r["phones"] for r in splits["train"]])
        classify = ridge(x, (y[:, None] == np.array(phones)[None]).astype(np.float64))
        guess = np.array(phones)[classify(np.concatenate([r["stages"][stage] for r in splits["test"]])).argmax(1)]
        pbm = np.isin(test_phones, list(BILABIALS))
        regress = ridge(x, np.concatenate([r["motion"] for r in splits["train"]]).astype(np.float64))
        report["stages"][stage] = {
            "dims": int(x.shape[1]), "phone_acc": float(np.mean(guess == test_phones)),
            "pbm_recall": float(np.mean(np.isin(guess[pbm], list(BILABIALS)))) if pbm.any() else None,
            "lve_over_mean": float(test_lve([regress(r["stages"][stage]) for r in splits["test"]]) / base)}
    return report


def format_report(report: dict) -> str:
    rows = [f"{'stage':<16} {'dims':>5} {'phone acc':>9} {'PBM recall':>10} {'LVE/mean':>9}"]
    for name, s in report["stages"].items():
        rows.append(f"{name:<16} {s['dims']:>5} {s['phone_acc']:>9.3f} {s['pbm_recall']:>10.3f} {s['lve_over_mean']:>9.3f}")
    rows.append(f"(test frames; chance phone acc {report['chance']:.3f}, {len(report['phones'])} phones; "
                f"context +-{report['context_frames']} frames; linear readouts fitted on the training split)")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/demo.yaml")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="JSON report (default: phone_probe.json beside the checkpoint)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    report = probe(cfg, args.checkpoint, setup_logger("phone_probe"))
    print(format_report(report))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "phone_probe.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_reporting_user_errors("phone_probe", main)
