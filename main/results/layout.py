"""The results tree: where a result goes, which results a run (re)makes, and when one is complete.

Layout of one result (evaluation mode; single-audio and streaming mode use ``DIR/vertices/`` and ``DIR``)::

    {INFER.output_root}/{exp_name}/{DATASET}/{STYLE_ID}/{i}.npy   (V,3) float32, i = 0..T-1, nothing else
    {INFER.coeff_root}/{exp_name}/{DATASET}/{STYLE_ID}/{name}.npy per array of main/results/formats.py, meta.json

Written whole or not at all (main/results/writer.py; read by main/results/reader.py): a result is
complete exactly when its ``meta.json`` is readable and its vertex folder holds ``meta["n_frames"]``
whole frames; nothing inside the vertex folder marks it (the evaluation reads that folder and nothing
else may be in it). A kill or a full disk leaves at most ``.tmp-*`` entries, which the next run that
goes ahead removes and reports.
"""
from __future__ import annotations

import logging
import os
import re
import shutil

import numpy as np

from dataset.index import folder_clashes
from main.results.formats import ARRAY_FILES, NPY_HEADER_BYTES, arrays_bytes
from main.results.reader import META, frame_files, read_meta
from utils.errors import InferenceError, ResultsError

TMP_NAME = re.compile(r"^\.tmp-(.+)-(\d+)$")
# the exports of a result, in the result's folder (main/export.py): the glb and its audio, a rig's
# weights, the browser viewer
GLB_FILE, GLB_AUDIO = "animation.glb", "animation.wav"
RIG_CSV, RIG_JSON = "blendshapes.csv", "blendshapes.json"
VIEWER_FILE = "viewer.html"
EXPORT_FILES = (GLB_FILE, GLB_AUDIO, RIG_CSV, RIG_JSON, VIEWER_FILE)
# what a single-audio DIR may hold of a result besides meta.json
SINGLE_FILES = (*ARRAY_FILES, "video.mp4", "stream_stats.json", *EXPORT_FILES)

log = logging.getLogger("results")


class ExistingResults(ResultsError, InferenceError):
    """Results are in the way and neither --overwrite nor --resume was given."""


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


def build_meta(sample_id, dataset, style_id, speaker, audio_path, fps, n_frames, checkpoint, condition_style,
               flame_model=None, shape=None, identity=None) -> dict:
    """The meta.json of a result (one definition for every mode and the mean baseline). ``flame_model``: the
    FLAME file of the vertices; ``shape`` (S,): their identity shape (None: zeros), as read from the
    file ``identity``; together they rebuild the mesh (main/exporting/)."""
    return {"sample_id": sample_id, "dataset": dataset, "style_id": style_id, "speaker": speaker,
            "audio_path": os.path.abspath(audio_path) if audio_path else None, "fps": float(fps),
            "n_frames": int(n_frames), "checkpoint": checkpoint, "condition_style": condition_style,
            "flame_model": os.path.abspath(flame_model) if flame_model else None,
            "shape": None if shape is None else [float(x) for x in np.asarray(shape, np.float32)],
            "identity": os.path.abspath(identity) if identity else None}


def check_clashes(refs, folder_of) -> None:
    """Two samples with one output folder (dataset.index ``folder_clashes``; ``folder_of(ref)``: the
    folder, for the message) -> ResultsError listing every clash, before anything is written."""
    clashes = [f"sample '{r.sample_id}' ({r.json_path}) and sample '{f.sample_id}' ({f.json_path}) both map to "
               f"{folder_of(r)}" for r, f in folder_clashes(refs)]
    if clashes:
        raise ResultsError(f"{len(clashes)} output folder clash(es), nothing written (give each test sample "
                           f"its own style_id in the JSON):\n  "
                           + "\n  ".join(clashes))


# ---- which results a run makes: new / resume / overwrite ----------------------------------------

def results_mode(overwrite: bool, resume: bool, cfg=None) -> str:
    """--overwrite / --resume (or, given ``cfg``, INFER.overwrite / INFER.resume) -> ``select_todo``'s mode."""
    overwrite, resume = (bool(overwrite or cfg.INFER.overwrite), bool(resume or cfg.INFER.resume)) if cfg \
        else (overwrite, resume)
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
    """Every file has the size of 0.npy, which loads whole (one read and a stat per frame: cheap enough
    for --resume over a whole test split)."""
    if not files:
        return True
    try:
        np.load(files[0], allow_pickle=False)  # a torn header or body does not load
        size = os.path.getsize(files[0])
    except (OSError, ValueError, EOFError):
        return False
    return all(os.path.getsize(p) == size for p in files)


def _exists(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path)) or os.path.isfile(path)


def select_todo(samples: list[tuple[str, str | None]], mode: str, how: str, files: tuple[str, ...] = ()) -> list[bool]:
    """Which results (vert_dir, meta_dir) to (re)make. mode: ``new`` (any existing result, complete or
    left incomplete by a killed run, is an ExistingResults error listing them), ``resume`` (keep
    complete ones) or ``overwrite`` (all). ``files``: more names in meta_dir that belong to a result
    (single-audio DIR); ``how`` names the ways out in the error message. A file written whole in one
    rename (a video) is ``(path, None)``: complete when it exists."""
    if mode == "overwrite":
        return [True] * len(samples)
    complete = [is_complete(v, m) if m is not None else os.path.isfile(v) for v, m in samples]
    if mode == "resume":
        return [not c for c in complete]
    done = [v for (v, m), c in zip(samples, complete) if c]
    torn = [v for (v, m), c in zip(samples, complete) if not c and (
        _exists(v) or m is not None and any(_exists(os.path.join(m, n)) for n in (META, *files)))]
    if (done or torn) and len(samples) == 1:
        raise ExistingResults(f"{(done + torn)[0]} already holds results; {how}")
    if done or torn:
        lines = done[:10] + [f"{v} (incomplete: no {META} or frames missing)" for v in torn[:10]]
        more = len(done) + len(torn) - len(lines)
        torn_note = f" ({len(torn)} of them incomplete, left by an interrupted run)" if torn else ""
        raise ExistingResults(f"{len(done) + len(torn)} output folder(s) already hold results{torn_note}; {how}:\n  "
                              + "\n  ".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))
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
    except PermissionError:  # alive, another user's
        pass
    return True


def sample_bytes(n_frames: int, n_vertices: int) -> int:
    """Disk estimate of one result: its vertex frames plus its arrays (main/results/formats.py)."""
    return n_frames * (NPY_HEADER_BYTES + n_vertices * 3 * 4) + arrays_bytes(n_frames) + 4096
