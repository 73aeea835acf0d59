"""Checking a split before training / inference: every sample loaded once, problems and warnings
reported per dataset (``DATA.bad_samples`` decides between raising and leaving bad samples out),
samples shared with a later split, and test samples that would share an output folder."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from dataset.data_item import SampleRef, load_item
from dataset.index import dataset_refs, folder_clashes, split_jsons, subjects_of
from utils.errors import DataError
from utils.framing import framing_from_config

_log = logging.getLogger(__name__)

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


def decode_outcomes(cfg, refs: list[SampleRef], progress: bool = True, desc: str = "") -> list:
    """Load every sample: its item (dict with n_frames and notes) or the DataError it raised, in order."""
    framing = framing_from_config(cfg)

    def load(ref):
        try:
            return load_item(ref, framing, cfg.DATA.max_av_diff)
        except DataError as e:
            return e

    # Reading and resampling release the GIL for most of the time: a few threads help.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(tqdm(pool.map(load, refs), total=len(refs), disable=not progress or not refs,
                         desc=f"checking {desc}", leave=False))


def check_split(cfg, split: str, log: logging.Logger | None = None, raise_errors: bool | None = None,
                progress: bool = True, outcomes=None) -> dict:
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
    ``outcomes(name, refs)`` gives what loading each sample of a dataset found (as
    ``decode_outcomes``, the default, by decoding them; the prepared-data store from its records).
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

        if outcomes is None:
            results = decode_outcomes(cfg, refs, progress, f"{split}/{name}")
        else:
            results = outcomes(name, refs)
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
        for ref, first in folder_clashes(good) if split == "test" else ():
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
