"""JSON indices -> SampleRefs -> a torch Dataset of (audio, motion) pairs, crops and padded batches.

A JSON index (DESIGN.md 3) is an object keyed by sample id::

    {"M003_angry_001": {"audio_path": "MEAD/M003/angry/001.wav",
                        "flame_coeff_save_path": "MEAD_VHAP/M003/angry/001/tracked_flame_params_30.npz",
                        "speaker_id": ["M003", "angry"]}, ...}

Each dataset of ``DATA.datasets`` names its JSON(s) per split; all datasets of a split are
concatenated into one ``FaceDataset``. A dataset without a JSON for a split is absent from it.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from dataset.data_item import DataError, SampleRef, fit_shape, load_item
from utils.config import resolve_data_path

SPLITS = ("train", "val", "test")
AUDIO_KEYS = ("audio_path", "audio")
FLAME_KEYS = ("flame_coeff_save_path", "flame_path", "flame_coeff_path", "motion_feature_path")

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- JSON index

def _first_key(entry: dict, keys) -> str | None:
    for k in keys:
        if entry.get(k) is not None:
            return k
    return None


def _parse_entry(sid: str, entry, json_path: str, dataset_name: str, ds_cfg, cfg) -> SampleRef:
    where = f"{json_path}: sample '{sid}'"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: entry is a {type(entry).__name__}; expected an object with keys "
                        f"audio_path, flame_coeff_save_path, speaker_id")

    paths = {}
    for what, keys in (("audio", AUDIO_KEYS), ("FLAME parameter", FLAME_KEYS)):
        k = _first_key(entry, keys)
        if k is None:
            raise DataError(f"{where}: no {what} path; expected key {' or '.join(repr(x) for x in keys)}")
        if not isinstance(entry[k], str) or not entry[k]:
            raise DataError(f"{where}: '{k}' is {entry[k]!r}; expected a path string")
        paths[what] = resolve_data_path(cfg, entry[k])

    spk = entry.get("speaker_id")
    emotion = entry.get("emotion")
    if isinstance(spk, list):
        if len(spk) != 2 or not all(isinstance(s, str) and s for s in spk):
            raise DataError(f"{where}: speaker_id is {spk!r}; expected a string or a list "
                            f"[speaker, emotion] of two strings")
        if emotion is not None and emotion != spk[1]:
            raise DataError(f"{where}: emotion '{emotion}' contradicts speaker_id {spk!r}")
        speaker, emotion = spk
    elif isinstance(spk, str) and spk:
        speaker = spk
    else:
        raise DataError(f"{where}: speaker_id is {spk!r}; expected a string or a list [speaker, emotion]")
    if emotion is not None and not (isinstance(emotion, str) and emotion):
        raise DataError(f"{where}: emotion is {emotion!r}; expected a string")

    style_id = entry.get("style_id")
    if style_id is None:
        style_id = json.dumps([speaker, emotion] if emotion is not None else [speaker]) + "_passionate"
    if not isinstance(style_id, str) or not style_id or "/" in style_id or "\\" in style_id \
            or style_id in (".", ".."):
        raise DataError(f"{where}: style_id is {style_id!r}; expected a non-empty folder name without '/'")

    fps = entry.get("fps", ds_cfg.fps)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise DataError(f"{where}: fps is {fps!r}; expected a positive number")

    vfn = entry.get("valid_frames_num")
    if vfn is not None:
        if isinstance(vfn, bool) or not isinstance(vfn, (int, float)) or vfn != int(vfn) or vfn < 1:
            raise DataError(f"{where}: valid_frames_num is {vfn!r}; expected a positive integer")
        vfn = int(vfn)

    tpl = entry.get("template_save_path")
    if tpl is not None and not (isinstance(tpl, str) and tpl):
        raise DataError(f"{where}: template_save_path is {tpl!r}; expected a path string")

    return SampleRef(sample_id=sid, dataset=dataset_name, json_path=json_path,
                     audio_path=paths["audio"], flame_path=paths["FLAME parameter"],
                     speaker=speaker, emotion=emotion, style_id=style_id, fmt=ds_cfg.format,
                     fps=fps, valid_frames_num=vfn,
                     template_path=resolve_data_path(cfg, tpl) if tpl else None)


def _resolve_once(cfg, path: str) -> str:
    """resolve_data_path, except that a relative path a caller already joined to a relative
    DATA.data_root ('demo_data/dataset_jsons/x.json') is not joined a second time."""
    root = str(cfg.DATA.data_root)
    if not os.path.isabs(path) and "${" not in root and os.path.normpath(root) != "." \
            and os.path.normpath(path).startswith(os.path.normpath(root) + os.sep):
        return path
    return resolve_data_path(cfg, path)


def read_index(json_path: str, dataset_name: str, ds_cfg, cfg, problems: list | None = None) -> list[SampleRef]:
    """Parse one JSON index into SampleRefs (paths resolved against DATA.data_root).

    Entry keys: ``audio_path`` | ``audio``; ``flame_coeff_save_path`` | ``flame_path`` |
    ``flame_coeff_path`` | ``motion_feature_path``; ``speaker_id`` (a string or ``[speaker, emotion]``);
    optional ``emotion`` (when speaker_id is a string), ``style_id``, ``valid_frames_num``,
    ``template_save_path``, ``fps`` (overrides the dataset's fps for this sample). ``dataset`` /
    ``dataset_name`` and unknown keys are ignored: the config's dataset name is the one used.

    The derived style id (output folder) is ``json.dumps([speaker, emotion]) + "_passionate"``, e.g.
    ``["M003", "angry"]_passionate``; without an emotion it is ``json.dumps([speaker]) +
    "_passionate"``, e.g. ``["spk1"]_passionate`` (no ``null`` in folder names).

    A file that is missing, not JSON or not an object raises DataError naming the file. An entry
    with a problem raises DataError naming the file and the sample id, or, if ``problems`` is a list,
    is appended to it as a message and skipped.
    """
    json_path = _resolve_once(cfg, json_path)
    if not os.path.isfile(json_path):
        raise DataError(f"JSON index not found: {json_path} (dataset {dataset_name})")
    dup_keys = []

    def pairs_hook(pairs):
        # json.load silently keeps the last of duplicate keys; record them to report instead.
        counts = Counter(k for k, _ in pairs)
        dup_keys.append({k for k, c in counts.items() if c > 1})
        return dict(pairs)

    try:
        with open(json_path, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=pairs_hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path}: not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise DataError(f"{json_path}: top level is a {type(index).__name__}; expected an object keyed "
                        f"by sample id ({{\"<sample_id>\": {{\"audio_path\": ..., ...}}, ...}})")
    refs = []
    for sid in sorted(set(dup_keys[-1])):  # the top-level object is the last one parsed
        msg = f"{json_path}: sample '{sid}': sample id appears more than once in the file"
        if problems is None:
            raise DataError(msg)
        problems.append(msg)
    for sid, entry in index.items():
        if sid in dup_keys[-1]:
            continue
        try:
            refs.append(_parse_entry(sid, entry, json_path, dataset_name, ds_cfg, cfg))
        except DataError as e:
            if problems is None:
                raise
            problems.append(str(e))
    return refs


def split_jsons(ds_cfg, split: str) -> list[str]:
    """The JSON paths a dataset entry gives for a split (none, one or a list)."""
    p = ds_cfg.get(split)
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)


def split_refs(cfg, split: str, problems: list | None = None) -> list[SampleRef]:
    """SampleRefs of every dataset that has JSON(s) for ``split``, in config order.
    With ``problems`` a list, file-level and entry errors are appended to it instead of raised."""
    refs = []
    for name, ds in cfg.DATA.datasets.items():
        for jp in split_jsons(ds, split):
            try:
                refs += read_index(jp, name, ds, cfg, problems)
            except DataError as e:
                if problems is None:
                    raise
                problems.append(str(e))
    return refs


def style_classes(cfg) -> list[str]:
    """Style embedding classes: ``DATA.train_subjects`` if set, else the sorted training speakers."""
    if cfg.DATA.train_subjects:
        return [str(s) for s in cfg.DATA.train_subjects]
    speakers = sorted({r.speaker for r in split_refs(cfg, "train", problems=[])})
    if not speakers:
        raise DataError("no training speakers: no readable entries in the train JSONs of DATA.datasets "
                        "(run python -m dataset.check --config <cfg> to see why) and DATA.train_subjects "
                        "is not set")
    return speakers


# ----------------------------------------------------------------------------- validation

def validate(cfg, split: str, log: logging.Logger | None = None, raise_errors: bool | None = None,
             progress: bool = True) -> dict:
    """Load every sample of ``split`` once and report per dataset.

    Returns ``{"split", "datasets": {name: {"format", "entries", "samples", "seconds", "hours",
    "speakers" (sorted list), "native_fps" (sorted list), "problems" [str], "warnings" [str]}},
    "problems" [str], "warnings" [str], "refs" [good SampleRefs], "bad" {(json_path, sample_id)}}``.
    ``samples`` counts the good ones; warnings are audio/motion length mismatches (trimmed, not bad).
    On the test split two samples with the same dataset and style id (the same output folder) are a
    problem too; the first keeps the folder.

    ``raise_errors`` (default: ``DATA.bad_samples == "error"``): raise one DataError listing every
    problem. Otherwise the problems are logged and the bad samples are left out of ``refs``.
    """
    log = log or _log
    if raise_errors is None:
        raise_errors = cfg.DATA.bad_samples == "error"
    d = cfg.DATA
    report = {"split": split, "datasets": {}, "problems": [], "warnings": [], "refs": [], "bad": set()}
    for name, ds in d.datasets.items():
        jsons = split_jsons(ds, split)
        if not jsons:
            continue  # this dataset has no such split
        problems, refs = [], []
        for jp in jsons:
            try:
                refs += read_index(jp, name, ds, cfg, problems)
            except DataError as e:
                problems.append(str(e))

        def load(ref):
            try:
                return load_item(ref, d.target_fps, d.sample_rate, d.max_av_diff)
            except DataError as e:
                return e

        # Reading and resampling release the GIL for most of the time: a few threads help.
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            results = list(tqdm(pool.map(load, refs), total=len(refs), disable=not progress or not refs,
                                desc=f"checking {split}/{name}", leave=False))
        good, warnings, seconds = [], [], 0.0
        for ref, item in zip(refs, results):
            if isinstance(item, DataError):
                problems.append(str(item))
                report["bad"].add((ref.json_path, ref.sample_id))
                continue
            warnings += item["notes"]
            seconds += item["n_frames"] / d.target_fps
            good.append(ref)
        if split == "test":
            owner = {}
            for ref in good:
                first = owner.setdefault(ref.style_id, ref)
                if first is not ref:
                    problems.append(f"{ref.where}: maps to the same output folder {name}/{ref.style_id} as "
                                    f"sample '{first.sample_id}' of {first.json_path}; give each test "
                                    f"sample its own style_id")
                    report["bad"].add((ref.json_path, ref.sample_id))
            good = [r for r in good if (r.json_path, r.sample_id) not in report["bad"]]
        report["datasets"][name] = {
            "format": ds.format, "entries": len(refs), "samples": len(good), "seconds": seconds,
            "hours": seconds / 3600.0, "speakers": sorted({r.speaker for r in good}),
            "native_fps": sorted({r.fps for r in good}), "problems": problems, "warnings": warnings,
        }
        report["problems"] += problems
        report["warnings"] += warnings
        report["refs"] += good

    if report["problems"]:
        listing = "\n  ".join(report["problems"])
        if raise_errors:
            raise DataError(f"{len(report['problems'])} problem(s) in the {split} data (DATA.bad_samples="
                            f"error; set DATA.bad_samples=skip to leave bad samples out):\n  {listing}")
        log.warning("%d problem(s) in the %s data; leaving out %d bad sample(s):\n  %s",
                    len(report["problems"]), split, len(report["bad"]), listing)
    for w in report["warnings"][:20]:  # all of them are in the report; the log gets a sample
        log.warning(w)
    if len(report["warnings"]) > 20:
        log.warning("... and %d more audio/motion length mismatch(es) in the %s data",
                    len(report["warnings"]) - 20, split)
    return report


# ----------------------------------------------------------------------------- torch Dataset

class FaceDataset(torch.utils.data.Dataset):
    """All samples of one split, every dataset concatenated.

    ``FaceDataset(cfg, split, styles, train=None)``: ``train`` (default ``split == "train"``) turns on
    random crops of ``DATA.max_frames`` frames (0 = whole clip), audio cut to the same window.
    ``check=True`` validates every sample at construction (``validate``; ``DATA.bad_samples`` decides
    between raising and leaving bad samples out, the report is ``self.report``). ``cache=True`` keeps
    loaded samples in memory (per DataLoader worker), for small datasets.

    ``__getitem__`` -> dict(audio (N,) float32, motion (T,51) float32, shape (FLAME.n_shape,) float32
    (zeros if the sample has none), style long (index in ``styles``, -1 if not a training style),
    n_frames int T, sample_id, dataset, style_id, speaker, native_fps), N == T * 640.
    """

    def __init__(self, cfg, split: str, styles: list[str], train: bool | None = None, check: bool = True,
                 log: logging.Logger | None = None, cache: bool = False, progress: bool = True):
        self.cfg, self.split = cfg, split
        self.train = split == "train" if train is None else bool(train)
        self.styles = list(styles)
        self._style_index = {s: i for i, s in enumerate(self.styles)}
        self.log = log or _log
        self.report = None
        if check:
            self.report = validate(cfg, split, self.log, progress=progress)
            self.refs = self.report["refs"]
        else:
            self.refs = split_refs(cfg, split)
        self.cache = {} if cache else None
        self._warned = set()
        d = cfg.DATA
        self.target_fps, self.sr = d.target_fps, d.sample_rate
        self.hop = int(round(self.sr / self.target_fps))
        self.max_frames = int(d.max_frames or 0)
        self.n_shape = int(cfg.FLAME.n_shape)

    def __len__(self):
        return len(self.refs)

    def style_index(self, speaker: str) -> int:
        return self._style_index.get(speaker, -1)

    def _load(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        ref = self.refs[i]
        # Mismatch warnings were already reported by validation; otherwise report each sample once.
        log = None if (self.report is not None or ref.sample_id in self._warned) else self.log
        self._warned.add(ref.sample_id)
        item = load_item(ref, self.target_fps, self.sr, self.cfg.DATA.max_av_diff, log)
        if self.cache is not None:
            self.cache[i] = item
        return item

    def __getitem__(self, i: int) -> dict:
        ref = self.refs[i]
        item = self._load(i)
        audio, motion = item["audio"], item["motion"]
        t = motion.shape[0]
        if self.train and self.max_frames > 0 and t > self.max_frames:
            # torch's RNG: DataLoader seeds it per worker, so workers draw different crops.
            s = int(torch.randint(0, t - self.max_frames + 1, (1,)).item())
            t = self.max_frames
            motion = motion[s:s + t]
            audio = audio[s * self.hop:(s + t) * self.hop]
        shape = fit_shape(item["shape"], self.n_shape)
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(audio)),
            "motion": torch.from_numpy(np.ascontiguousarray(motion)),
            "shape": torch.from_numpy(shape),
            "style": torch.tensor(self.style_index(ref.speaker), dtype=torch.long),
            "n_frames": t,
            "sample_id": ref.sample_id,
            "dataset": ref.dataset,
            "style_id": ref.style_id,
            "speaker": ref.speaker,
            "native_fps": ref.fps,
        }


def collate(batch: list[dict]) -> dict:
    """Pad a list of items to the longest one.

    Returns dict(audio (B,Nmax) float32, audio_mask (B,Nmax) bool, motion (B,Tmax,51) float32,
    motion_mask (B,Tmax) bool, shape (B,S), style (B,) long, n_frames (B,) long, and lists sample_id,
    dataset, style_id, speaker, native_fps). Masks are True on real samples/frames; padding is zero.
    """
    b = len(batch)
    n_max = max(x["audio"].shape[0] for x in batch)
    t_max = max(x["motion"].shape[0] for x in batch)
    d = batch[0]["motion"].shape[1]
    audio = torch.zeros(b, n_max)
    audio_mask = torch.zeros(b, n_max, dtype=torch.bool)
    motion = torch.zeros(b, t_max, d)
    motion_mask = torch.zeros(b, t_max, dtype=torch.bool)
    for i, x in enumerate(batch):
        n, t = x["audio"].shape[0], x["motion"].shape[0]
        audio[i, :n] = x["audio"]
        audio_mask[i, :n] = True
        motion[i, :t] = x["motion"]
        motion_mask[i, :t] = True
    out = {
        "audio": audio, "audio_mask": audio_mask, "motion": motion, "motion_mask": motion_mask,
        "shape": torch.stack([x["shape"] for x in batch]),
        "style": torch.stack([torch.as_tensor(x["style"], dtype=torch.long) for x in batch]),
        "n_frames": torch.tensor([int(x["n_frames"]) for x in batch], dtype=torch.long),
    }
    for k in ("sample_id", "dataset", "style_id", "speaker", "native_fps"):
        out[k] = [x[k] for x in batch]
    return out
