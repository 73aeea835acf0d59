"""The results tree: where a result goes, which results a run (re)makes, how one is written and read.

Layout of one result (evaluation mode; single-audio and streaming mode use ``DIR/vertices/`` and ``DIR``)::

    {INFER.output_root}/{exp_name}/{DATASET}/{STYLE_ID}/{i}.npy   (V,3) float32, i = 0..T-1, nothing else
    {INFER.coeff_root}/{exp_name}/{DATASET}/{STYLE_ID}/motion.npy (T,51), coeffs287.npy (T,287), meta.json

Written whole or not at all (main/result_writer.py): a result is complete exactly when its
``meta.json`` is readable and its vertex folder holds ``meta["n_frames"]`` whole frames; nothing
inside the vertex folder marks it (the evaluation reads that folder and nothing else may be in it).
A kill or a full disk leaves at most ``.tmp-*`` entries, which the next run removes and reports.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np

from utils.atomic import TMP_PREFIX
from utils.errors import InferenceError, ResultsError

FRAME_FILE = re.compile(r"^(\d+)\.npy$")
TMP_NAME = re.compile(r"^\.tmp-(.+)-(\d+)$")
NPY_HEADER_BYTES = 128
META = "meta.json"
ARRAYS = ("motion.npy", "coeffs287.npy")
SINGLE_FILES = (*ARRAYS, "video.mp4", "stream_stats.json")  # what a single-audio DIR may hold of a result

log = logging.getLogger("results")


class ExistingResults(ResultsError, InferenceError):
    """Results are in the way and neither --overwrite nor --resume was given."""


# ----------------------------------------------------------------------------------------------
# Where results go
# ----------------------------------------------------------------------------------------------

def sample_dirs(cfg, dataset: str, style_id: str) -> tuple[str, str]:
    """(vertex folder, coefficient folder) of one test sample."""
    return (os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name, dataset, style_id),
            os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name, dataset, style_id))


def audio_stem(audio: str) -> str:
    """The name of a single-audio result (its meta.json's sample_id): the file's stem, ``stdin`` for ``-``."""
    return "stdin" if audio == "-" else os.path.splitext(os.path.basename(audio))[0]


def single_dir(audio: str, out: str | None = None) -> str:
    """The output folder of single-audio and streaming mode: ``--out``, else results/single/<audio stem>."""
    return out or os.path.join("results", "single", audio_stem(audio))


def build_meta(sample_id, dataset, style_id, speaker, audio_path, fps, n_frames, checkpoint, condition_style) -> dict:
    """The meta.json of a result (one definition for every mode and the mean baseline)."""
    return {"sample_id": sample_id, "dataset": dataset, "style_id": style_id, "speaker": speaker,
            "audio_path": os.path.abspath(audio_path) if audio_path else None, "fps": float(fps),
            "n_frames": int(n_frames), "checkpoint": checkpoint, "condition_style": condition_style}


def check_clashes(owners: list[tuple[str, str]], hint: str):
    """owners: (output folder, "sample 'x' (file)") per sample. Two samples with one folder ->
    ResultsError listing every clash, before anything is written."""
    first, clashes = {}, []
    for folder, who in owners:
        if folder in first:
            clashes.append(f"{first[folder]} and {who} both map to {folder}")
        first.setdefault(folder, who)
    if clashes:
        raise ResultsError(f"{len(clashes)} output folder clash(es), nothing written ({hint}):\n  "
                           + "\n  ".join(clashes))


# ----------------------------------------------------------------------------------------------
# Which results a run makes: new / resume / overwrite
# ----------------------------------------------------------------------------------------------

def results_mode(overwrite: bool, resume: bool) -> str:
    """--overwrite / --resume (or INFER.overwrite / INFER.resume) -> ``select_todo``'s mode."""
    if overwrite and resume:
        raise InferenceError("--overwrite (INFER.overwrite) and --resume (INFER.resume) exclude each other: "
                             "redo all results, or keep the complete ones")
    return "overwrite" if overwrite else "resume" if resume else "new"


def is_complete(vert_dir: str, meta_dir: str) -> bool:
    """A result whose meta.json is readable and whose vertex folder holds its n_frames frames, each a
    whole file (the size its .npy header says). An unreadable meta.json or a torn frame (0 bytes,
    cut short, left by an old writer or a copy) is incomplete: --resume redoes the result."""
    try:
        meta = read_meta(meta_dir)
        if meta is None or not os.path.isdir(vert_dir):
            return False
        files = frame_files(vert_dir)
        return len(files) == int(meta["n_frames"]) and _frames_whole(files)
    except (ResultsError, KeyError, TypeError, ValueError, OSError):
        return False


def _frames_whole(files: list[str]) -> bool:
    """Every file has the size of a .npy holding the array 0.npy's header announces (one header read,
    a stat per frame: cheap enough for --resume over a whole test split)."""
    if not files:
        return True
    try:
        with open(files[0], "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
            size = f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
    except (OSError, ValueError, EOFError):
        return False
    return all(os.path.getsize(p) == size for p in files)


def _exists(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path)) or os.path.isfile(path)


def select_todo(samples: list[tuple[str, str]], mode: str, how: str, files: tuple[str, ...] = ()) -> list[bool]:
    """Which results (vert_dir, meta_dir) to (re)make. mode: ``new`` (any existing result, complete or
    left incomplete by a killed run, is an ExistingResults error listing them), ``resume`` (keep
    complete ones) or ``overwrite`` (all). ``files``: more names in meta_dir that belong to a result
    (single-audio DIR); ``how`` names the ways out in the error message."""
    if mode == "overwrite":
        return [True] * len(samples)
    complete = [is_complete(v, m) for v, m in samples]
    if mode == "resume":
        return [not c for c in complete]
    done = [v for (v, m), c in zip(samples, complete) if c]
    torn = [v for (v, m), c in zip(samples, complete)
            if not c and (_exists(v) or any(_exists(os.path.join(m, n)) for n in (META, *files)))]
    if len(done) + len(torn) == 1 and len(samples) == 1:
        raise ExistingResults(f"{(done + torn)[0]} already holds results; {how}")
    if done or torn:
        lines = done[:10] + [f"{v} (incomplete: no {META} or frames missing)" for v in torn[:10]]
        more = len(done) + len(torn) - len(lines)
        raise ExistingResults(f"{len(done)} output folder(s) already hold results"
                              + (f", and {len(torn)} incomplete result(s) of an interrupted run are in the way"
                                 if torn else "")
                              + f"; {how}:\n  " + "\n  ".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))
    return [True] * len(samples)


def clean_stale_temps(folders: list[str], logger: logging.Logger | None = None) -> list[str]:
    """Remove ``.tmp-*-<pid>`` leftovers of crashed runs beside ``folders`` (a live process's own are kept);
    each removal is logged. Returns the removed paths."""
    removed = []
    for parent in sorted({os.path.dirname(os.path.abspath(f)) for f in folders}):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            m = TMP_NAME.match(name)
            if m and not _alive(int(m.group(2))):
                path = os.path.join(parent, name)
                remove_path(path)
                removed.append(path)
    if removed:
        (logger or log).warning("removed %d incomplete temporary result folder(s) left by an interrupted run: %s",
                                len(removed), ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


def remove_path(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, failed attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Up-front checks
# ----------------------------------------------------------------------------------------------

def sample_bytes(n_frames: int, n_vertices: int) -> int:
    """Disk estimate of one result: its vertex frames plus motion (T,51) and coeffs (T,287)."""
    return n_frames * (NPY_HEADER_BYTES + n_vertices * 3 * 4) + 2 * NPY_HEADER_BYTES + n_frames * (51 + 287) * 4 + 4096


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def frame_files(folder: str) -> list[str]:
    """The ``{i}.npy`` files of a folder ordered by i; i must run 0..N-1 without gaps."""
    ids = sorted(int(m.group(1)) for m in map(FRAME_FILE.match, os.listdir(folder)) if m)
    if ids and ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise ResultsError(f"{folder}: frame files must be 0.npy..{len(ids) - 1}.npy without gaps; "
                           f"missing e.g. {missing}")
    return [os.path.join(folder, f"{i}.npy") for i in ids]


def _load_npy(path: str) -> np.ndarray:
    """np.load naming the file when it is missing, empty or torn."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ResultsError(f"frame file not found: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ResultsError(f"{path}: unreadable frame file ({size} bytes; {str(e) or type(e).__name__}): torn by "
                           f"an interrupted run? regenerate it (inference --resume)") from None


def load_frames(path: str) -> np.ndarray:
    """A leaf folder of ``{i}.npy`` (V,3) files, or one .npy (T,V,3) -> (T,V,3) float32. A missing, torn or
    wrong-shaped file -> ResultsError naming it."""
    if os.path.isfile(path):
        arr = _load_npy(path)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ResultsError(f"{path}: expected a (T,V,3) array, got {arr.shape}")
        return arr.astype(np.float32)
    if not os.path.isdir(path):
        raise ResultsError(f"results not found: {path}")
    files = frame_files(path)
    if not files:
        raise ResultsError(f"{path}: no frame files 0.npy, 1.npy, ... found")
    first = None
    out = None
    for i, f in enumerate(files):
        a = _load_npy(f)
        if first is None:
            if a.ndim != 2 or a.shape[1] != 3:
                raise ResultsError(f"{f}: expected (V,3) vertices, got {a.shape}")
            first = a.shape
            out = np.empty((len(files),) + first, np.float32)
        elif a.shape != first:
            raise ResultsError(f"{f}: expected {first} vertices like 0.npy, got {a.shape}")
        out[i] = a
    return out


def find_leaves(root: str) -> list[str]:
    """Folders under (and including) ``root`` that hold ``{i}.npy`` frame files, sorted; temporary
    ``.tmp-*`` folders of a running or crashed inference are not results."""
    leaves = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
        if any(FRAME_FILE.match(f) for f in files):
            leaves.append(folder)
    return sorted(leaves)


def read_meta(folder: str | None) -> dict | None:
    """``folder/meta.json`` as a dict, None when absent; an unreadable one -> ResultsError naming it."""
    path = os.path.join(folder, META) if folder else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return meta


def is_inside(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def leaf_meta(leaf: str, cfg) -> dict | None:
    """meta.json of a leaf: from the parallel coeff tree when the leaf is under INFER.output_root, else
    next to the leaf folder (single-audio inference writes DIR/vertices/ and DIR/meta.json)."""
    if cfg is not None and is_inside(leaf, cfg.INFER.output_root):
        rel = os.path.relpath(os.path.abspath(leaf), os.path.abspath(cfg.INFER.output_root))
        return read_meta(os.path.join(cfg.INFER.coeff_root, rel))
    if os.path.isdir(leaf):
        return read_meta(os.path.dirname(os.path.abspath(leaf)))
    return None


def leaf_fps(meta: dict | None, dataset: str | None, cfg, override: float | None) -> tuple[float, str]:
    """Frame rate of a leaf and where it came from: --fps, meta.json, the config, or 25."""
    if override:
        return float(override), "--fps"
    if meta and meta.get("fps"):
        return float(meta["fps"]), "meta.json"
    if cfg is not None:
        out = cfg.INFER.output_fps
        if out != "native":
            return float(out), "INFER.output_fps"
        if dataset in cfg.DATA.datasets:
            return float(cfg.DATA.datasets[dataset].fps), f"DATA.datasets.{dataset}.fps"
    return 25.0, "default"
