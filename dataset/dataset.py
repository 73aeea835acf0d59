"""JSON indices -> SampleRefs -> a torch Dataset of (audio, motion) pairs, crops and padded batches.

A JSON index (DESIGN.md 3) is an object keyed by sample id::

    {"M003_angry_001": {"audio_path": "MEAD/M003/angry/001.wav",
                        "flame_coeff_save_path": "MEAD_VHAP/M003/angry/001/tracked_flame_params_30.npz",
                        "speaker_id": ["M003", "angry"]}, ...}

Each dataset of ``DATA.datasets`` names its JSON(s) per split; all datasets of a split are
concatenated into one ``FaceDataset``. A dataset without a JSON for a split is absent from it.
``DATA.train_subjects`` / ``val_subjects`` / ``test_subjects`` keep only those speakers in a split
(``dataset_refs`` is the one reader every caller uses, so training, inference and evaluation agree).
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

from dataset.data_item import DETAIL_DIM, DataError, SampleRef, fit_shape, load_item
from utils.config import resolve_data_path
from utils.framing import framing_from_config

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


def subjects_of(cfg, split: str) -> list[str] | None:
    """The speaker ids a split is restricted to (``DATA.<split>_subjects``), or None for all."""
    return cfg.DATA.get(f"{split}_subjects")


def dataset_refs(cfg, name: str, split: str, problems: list | None = None,
                 left_out: list | None = None) -> list[SampleRef]:
    """SampleRefs of one dataset's ``split`` JSON(s), restricted to ``DATA.<split>_subjects``.

    The shared split reader: training, validation, inference and evaluation all read a split here.
    Samples of other speakers are appended to ``left_out`` (if a list) rather than returned. With
    ``problems`` a list, file-level and entry errors are appended to it instead of raised."""
    ds = cfg.DATA.datasets[name]
    refs = []
    for jp in split_jsons(ds, split):
        try:
            refs += read_index(jp, name, ds, cfg, problems)
        except DataError as e:
            if problems is None:
                raise
            problems.append(str(e))
    keep = subjects_of(cfg, split)
    if keep is None:
        return refs
    keep = set(keep)
    if left_out is not None:
        left_out += [r for r in refs if r.speaker not in keep]
    return [r for r in refs if r.speaker in keep]


def split_refs(cfg, split: str, problems: list | None = None) -> list[SampleRef]:
    """SampleRefs of every dataset that has JSON(s) for ``split``, in config order, restricted to the
    split's subjects. With ``problems`` a list, file-level and entry errors are appended to it."""
    refs = []
    for name in cfg.DATA.datasets:
        refs += dataset_refs(cfg, name, split, problems)
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


# A sample shared by two splits is reported in (and, with DATA.bad_samples=skip, left out of) the
# split that comes first here, so evaluation sets stay whole and each leak is reported once.
_LEAK_ORDER = ("train", "val", "test")


def _same_file_key(path: str) -> str:
    return os.path.realpath(path)


def split_overlaps(cfg, name: str, split: str, refs: list[SampleRef]) -> dict:
    """Samples of ``refs`` (one dataset's ``split``) that share a sample id, an audio file or a FLAME
    file with a later split of the same dataset -> {(json_path, sample_id): message}."""
    later = _LEAK_ORDER[_LEAK_ORDER.index(split) + 1:] if split in _LEAK_ORDER else ()
    out = {}
    for other in later:
        others = dataset_refs(cfg, name, other, problems=[])
        if not others:
            continue
        by = {"sample id": {}, "audio file": {}, "FLAME file": {}}
        for o in others:
            by["sample id"].setdefault(o.sample_id, o)
            by["audio file"].setdefault(_same_file_key(o.audio_path), o)
            by["FLAME file"].setdefault(_same_file_key(o.flame_path), o)
        for r in refs:
            keys = {"sample id": r.sample_id, "audio file": _same_file_key(r.audio_path),
                    "FLAME file": _same_file_key(r.flame_path)}
            hits = [(what, by[what][k]) for what, k in keys.items() if k in by[what]]
            if hits and (r.json_path, r.sample_id) not in out:
                shared = "; ".join(f"{what} {keys[what]} as sample '{o.sample_id}' of {o.json_path}"
                                   for what, o in hits)
                out[(r.json_path, r.sample_id)] = (
                    f"{r.where}: in the {split} split and also in the {other} split of {name} (same {shared}); "
                    f"a sample must belong to one split")
    return out


# ----------------------------------------------------------------------------- validation

def validate(cfg, split: str, log: logging.Logger | None = None, raise_errors: bool | None = None,
             progress: bool = True) -> dict:
    """Load every sample of ``split`` once and report per dataset.

    Returns ``{"split", "datasets": {name: {"format", "entries", "left_out", "samples", "seconds",
    "hours", "speakers" (sorted list), "native_fps" (sorted list), "problems" [str], "warnings" [str]}},
    "problems" [str], "warnings" [str], "left_out" int, "refs" [good SampleRefs],
    "bad" {(json_path, sample_id)}}``.
    ``entries`` counts the samples of the split's speakers (``DATA.<split>_subjects``), ``left_out``
    the samples of other speakers, ``samples`` the good ones; warnings are audio/motion length
    mismatches (trimmed, not bad) and, on the train split, ``DATA.train_subjects`` with no sample.
    Problems: a sample that cannot be loaded (including a truncated wav or a ``valid_frames_num``
    beyond the file's frames); a sample id, audio file or FLAME file that a later split of the same
    dataset also uses (train < val < test: the later split keeps it); on the test split, two samples
    with the same dataset and style id (the same output folder; the first keeps it).

    ``raise_errors`` (default: ``DATA.bad_samples == "error"``): raise one DataError listing every
    problem. Otherwise the problems are logged and the bad samples are left out of ``refs``.
    """
    log = log or _log
    if raise_errors is None:
        raise_errors = cfg.DATA.bad_samples == "error"
    d = cfg.DATA
    framing = framing_from_config(cfg)
    report = {"split": split, "datasets": {}, "problems": [], "warnings": [], "left_out": 0, "refs": [],
              "bad": set()}
    for name, ds in d.datasets.items():
        if not split_jsons(ds, split):
            continue  # this dataset has no such split
        problems, left_out = [], []
        refs = dataset_refs(cfg, name, split, problems, left_out)

        def load(ref):
            try:
                return load_item(ref, framing, d.max_av_diff)
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
            seconds += item["n_frames"] / framing.fps
            good.append(ref)
        for key, msg in split_overlaps(cfg, name, split, refs).items():
            problems.append(msg)
            report["bad"].add(key)
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
            "format": ds.format, "entries": len(refs), "left_out": len(left_out), "samples": len(good),
            "seconds": seconds, "hours": seconds / 3600.0, "speakers": sorted({r.speaker for r in good}),
            "native_fps": sorted({r.fps for r in good}), "problems": problems, "warnings": warnings,
        }
        report["problems"] += problems
        report["warnings"] += warnings
        report["left_out"] += len(left_out)
        report["refs"] += good

    subjects = subjects_of(cfg, split)
    if subjects is not None:
        per = ", ".join(f"{n} {r['left_out']}" for n, r in report["datasets"].items() if r["left_out"])
        log.info("%s split: %d sample(s) of speakers not in DATA.%s_subjects left out%s", split,
                 report["left_out"], split, f" ({per})" if per else "")
        if split == "train":
            seen = {r.speaker for r in report["refs"]}
            for s in subjects:
                if s not in seen:
                    report["warnings"].append(f"DATA.train_subjects names '{s}', which has no usable training "
                                              f"sample in any dataset: its style class is never trained")
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
        log.warning("... and %d more warning(s) in the %s data", len(report["warnings"]) - 20, split)
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
    (zeros if the sample has none), detail (128,) float32 (the FLAME file's ``detailcode``, zeros if
    none), style long (index in ``styles``, -1 if not a training style), n_frames int T, sample_id,
    dataset, style_id, speaker, native_fps), N == T * samples_per_frame (640 at 16 kHz / 25 fps).
    The split holds only the speakers of ``DATA.<split>_subjects`` when that is set.
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
        self.framing = framing_from_config(cfg)
        self.hop = self.framing.samples_per_frame
        self.max_frames = int(cfg.DATA.max_frames or 0)
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
        item = load_item(ref, self.framing, self.cfg.DATA.max_av_diff, log)
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
        detail = item["detail"] if item["detail"] is not None else np.zeros(DETAIL_DIM, np.float32)
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(audio)),
            "motion": torch.from_numpy(np.ascontiguousarray(motion)),
            "shape": torch.from_numpy(shape),
            "detail": torch.from_numpy(detail),
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
