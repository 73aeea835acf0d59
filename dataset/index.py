"""JSON indices -> SampleRefs, per dataset and split, restricted to the split's speakers.

A JSON index is an object keyed by sample id::

    {"M003_angry_001": {"audio_path": "MEAD/M003/angry/001.wav",
                        "flame_coeff_save_path": "MEAD_VHAP/M003/angry/001/tracked_flame_params_30.npz",
                        "speaker_id": ["M003", "angry"]}, ...}

Each dataset of ``DATA.datasets`` names its JSON(s) per split; all datasets of a split are
concatenated into one ``FaceDataset``. A dataset without a JSON for a split is absent from it.
``DATA.train_subjects`` / ``val_subjects`` / ``test_subjects`` keep only those speakers in a split
(``dataset_refs`` is the one reader every caller uses, so training, inference and evaluation agree).
A malformed entry is a DataError naming the JSON file and the sample id.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

from dataset.data_item import SampleRef
from utils.config import resolve_data_path
from utils.errors import DataError
from utils.names import folder_name_problem, shown_name

SPLITS = ("train", "val", "test")
AUDIO_KEYS = ("audio_path", "audio")
FLAME_KEYS = ("flame_coeff_save_path", "flame_path", "flame_coeff_path", "motion_feature_path")
RECENT_SECONDS = 2.0
_PARSED: dict = {}  # (path, size, mtime, dataset, format, fps, data root) -> (refs, problems)


def _first_key(entry: dict, keys) -> str | None:
    for k in keys:
        if entry.get(k) is not None:
            return k
    return None


def _is_text(v) -> bool:
    return isinstance(v, str) and bool(v)


def _is_positive_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0


def _is_positive_int(v) -> bool:
    return _is_positive_number(v) and float(v).is_integer()


def _is_folder_name(v) -> bool:
    return folder_name_problem(v) is None


def _absent_or(check):
    return lambda v: v is None or check(v)


# The scalar fields of an entry, checked after they are resolved: (field, valid?, what is expected).
_FIELD_CHECKS = (
    ("emotion", _absent_or(_is_text), "a string"),
    ("style_id", _is_folder_name, "a folder name"),
    ("fps", _is_positive_number, "a positive number"),
    ("valid_frames_num", _absent_or(_is_positive_int), "a positive integer"),
    ("template_save_path", _absent_or(_is_text), "a path string"),
)


def _speaker_emotion(spk, emotion, where: str) -> tuple:
    """``speaker_id`` (a string, or [speaker, emotion]) and the optional ``emotion`` -> (speaker, emotion)."""
    if isinstance(spk, str) and spk:
        return spk, emotion
    if not isinstance(spk, list):
        raise DataError(f"{where}: speaker_id is {spk!r}; expected a string or a list [speaker, emotion]")
    if len(spk) != 2 or not all(_is_text(s) for s in spk):
        raise DataError(f"{where}: speaker_id is {spk!r}; expected a string or a list "
                        f"[speaker, emotion] of two strings")
    if emotion is not None and emotion != spk[1]:
        raise DataError(f"{where}: emotion '{emotion}' contradicts speaker_id {spk!r}")
    return spk[0], spk[1]


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
        if not _is_text(entry[k]):
            raise DataError(f"{where}: '{k}' is {entry[k]!r}; expected a path string")
        paths[what] = resolve_data_path(cfg, entry[k])

    speaker, emotion = _speaker_emotion(entry.get("speaker_id"), entry.get("emotion"), where)
    style_id = entry.get("style_id")
    if style_id is None:
        style_id = json.dumps([speaker, emotion] if emotion is not None else [speaker]) + "_passionate"
    fields = {"emotion": emotion, "style_id": style_id, "fps": entry.get("fps", ds_cfg.fps),
              "valid_frames_num": entry.get("valid_frames_num"),
              "template_save_path": entry.get("template_save_path")}
    for key, valid, expected in _FIELD_CHECKS:
        if not valid(fields[key]):
            why = f" ({folder_name_problem(fields[key])})" if valid is _is_folder_name else ""
            raise DataError(f"{where}: {key} is {shown_name(fields[key])}; expected {expected}{why}")

    vfn, tpl = fields["valid_frames_num"], fields["template_save_path"]
    return SampleRef(sample_id=sid, dataset=dataset_name, json_path=json_path,
                     audio_path=paths["audio"], flame_path=paths["FLAME parameter"],
                     speaker=speaker, emotion=emotion, style_id=style_id, fmt=ds_cfg.format,
                     fps=fields["fps"], valid_frames_num=None if vfn is None else int(vfn),
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

    A file is parsed once per process while its size and mtime stay the same (start-up reads each
    split's JSONs several times: validation, split overlaps, style classes).
    """
    json_path = _resolve_once(cfg, json_path)
    if not os.path.isfile(json_path):
        raise DataError(f"JSON index not found: {json_path} (dataset {dataset_name})")
    st = os.stat(json_path)
    key = (json_path, st.st_size, st.st_mtime_ns, dataset_name, ds_cfg.format, ds_cfg.fps, str(cfg.DATA.data_root))
    parsed = _PARSED.get(key) or _parse_index(json_path, dataset_name, ds_cfg, cfg)
    # a file changed just now may change again within the timestamps' granularity: parse it again then
    if time.time() - st.st_mtime_ns / 1e9 >= RECENT_SECONDS:
        if len(_PARSED) >= 64:
            _PARSED.clear()
        _PARSED[key] = parsed
    refs, found = parsed
    if found and problems is None:
        raise DataError(found[0])
    if problems is not None:
        problems += found
    return list(refs)


def _parse_index(json_path: str, dataset_name: str, ds_cfg, cfg) -> tuple[list[SampleRef], list[str]]:
    """read_index of one file: (good SampleRefs, problem messages); file-level problems raise."""
    problems = []
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
        problems.append(f"{json_path}: sample '{sid}': sample id appears more than once in the file")
    for sid, entry in index.items():
        if sid in dup_keys[-1]:
            continue
        try:
            refs.append(_parse_entry(sid, entry, json_path, dataset_name, ds_cfg, cfg))
        except DataError as e:
            problems.append(str(e))
    return refs, problems


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


def folder_clashes(refs: list[SampleRef]) -> list[tuple[SampleRef, SampleRef]]:
    """(sample, the earlier sample it shares an output folder with): a result goes to <dataset>/<style_id>,
    so two samples of one dataset with one style id would write over each other."""
    first, clashes = {}, []
    for ref in refs:
        owner = first.setdefault((ref.dataset, ref.style_id), ref)
        if owner is not ref:
            clashes.append((ref, owner))
    return clashes
