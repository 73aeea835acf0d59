"""Does a model listen? LVE of its motion with each clip's own audio against LVE with another clip's.

A decoder that continues its own previous frames and ignores the audio makes about the same motion
whatever it hears, so its LVE barely changes when each test clip is driven by the audio of another
clip of the split: the ratio ``LVE(other audio) / LVE(own audio)`` is about 1.0. A model that listens
gets clearly worse with the wrong audio, so the ratio is well above 1. Both LVEs come from the same
generation path (KV-cached, as inference), at the model's frame rate, against the same ground truth.

The other audio is a derangement of the split's clips (clip i gets the audio of clip i+1 in a seeded
random order, so no clip keeps its own), each cut or looped to the clip's own sample count, so the
length of the motion and the speaker style stay those of the clip; only what is said changes.

    python main/evaluate.py --config config/demo.yaml --listening   (INFER.checkpoint, e.g. after training)
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from dataset.data_item import load_item
from dataset.flame_params import fit_shape
from dataset.index import dataset_refs, split_jsons
from dataset.styles import style_for
from main.evaluation.metrics import lve
from main.infer.decode import generate_motion
from main.infer.session import resolve_checkpoint
from main.infer.speech import is_silent
from models.flame import load_flame
from models.flame_regions import region_indices
from models.loading import load_model
from utils.config import flame_path_for, flame_region_paths
from utils.framing import framing_from_config
from utils.runtime import pick_device

log = logging.getLogger("faceformer.listening")


def other_audio(audios: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """For each clip, the audio of another clip, looped or cut to its own length: list of (N_i,).

    A single clip has no other: its audio is reversed in time instead (same sounds, wrong order)."""
    n = len(audios)
    if n == 1:
        return [audios[0][::-1].copy()]
    order = np.random.default_rng(seed).permutation(n)
    donor = np.empty(n, dtype=np.int64)
    donor[order] = np.roll(order, -1)  # a cycle through all clips: nobody keeps their own
    return [np.resize(audios[donor[i]], len(a)).astype(np.float32) for i, a in enumerate(audios)]


def listening_check(cfg, checkpoint: str | None = None, seed: int = 0) -> dict:
    """LVE with own and with other audio on INFER.split (default test), on INFER.device -> report dict."""
    dev = pick_device(cfg.INFER.device, log)
    path = resolve_checkpoint(cfg, checkpoint, "set INFER.checkpoint=PATH")
    model, styles = load_model(path, cfg, dev, log)
    framing = framing_from_config(cfg)
    lip_idx = np.asarray(region_indices(**flame_region_paths(cfg))[0], dtype=np.int64)
    split = cfg.INFER.split or "test"
    items, flames = [], []
    for name, ds_cfg in cfg.DATA.datasets.items():
        if not split_jsons(ds_cfg, split):
            continue
        flame = load_flame(flame_path_for(cfg, name))
        for ref in dataset_refs(cfg, name, split, [] if cfg.DATA.bad_samples == "skip" else None):
            item = load_item(ref, framing)
            item["style"] = styles.index(style_for(cfg, styles, ref.speaker))
            item["shape"] = fit_shape(item["shape"], cfg.FLAME.n_shape)
            items.append(item)
            flames.append(flame)
    if not items:
        raise ValueError(f"no '{split}' samples in the config's datasets: nothing to check")
    own = [it["audio"] for it in items]
    silent = sum(bool(is_silent(a)) for a in own)
    if silent:
        log.warning("%d of the %d '%s' clips are silent: the listening ratio cannot tell whether the model "
                    "listens to them", silent, len(items), split)
    scores = {}
    for label, audios in (("own_audio", own), ("other_audio", other_audio(own, seed))):
        errs, frames = 0.0, 0
        for it, audio, flame in zip(items, audios, flames):
            pred = generate_motion(model, [torch.from_numpy(audio)], [it["style"]], [it["n_frames"]], cfg, dev)[0]
            p = flame.motion_to_vertices(pred, it["shape"])
            g = flame.motion_to_vertices(it["motion"], it["shape"])
            errs += lve(p, g, lip_idx) * len(p)
            frames += len(p)
        scores[label] = errs / frames  # pooled over frames, as the LVE of main/evaluate.py
    return {"checkpoint": path, "split": split, "n_clips": len(items), "seed": seed,
            "LVE_own_audio": scores["own_audio"], "LVE_other_audio": scores["other_audio"],
            "listening_ratio": scores["other_audio"] / scores["own_audio"], "silent_clips": silent,
            "other_audio": "reversed" if len(items) == 1 else "other clips'"}


def format_listening(report: dict) -> str:
    other = "its own audio reversed" if report["other_audio"] == "reversed" else "other clip's audio"
    if report["silent_clips"] == report["n_clips"]:
        verdict = "the audio is silent: the ratio says nothing about listening"
    elif report["silent_clips"]:
        verdict = f"about 1.0: the model ignores the audio; {report['silent_clips']} silent clip(s) pull it toward 1.0"
    else:
        verdict = "about 1.0: the model ignores the audio"
    return (f"listening check ({report['n_clips']} '{report['split']}' clips, model frame rate): "
            f"LVE own audio {report['LVE_own_audio']:.4g}, {other} {report['LVE_other_audio']:.4g}, "
            f"ratio {report['listening_ratio']:.3f} ({verdict})")
