"""The one writer of results, for every mode: frames as they arrive, the result put in place whole,
``meta.json`` last (main/results/layout.py: a result is complete exactly when its ``meta.json`` is readable
and its frames are all there).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from main.results.layout import SINGLE_FILES, remove_path
from main.results.reader import FRAME_FILE, META
from utils.atomic import atomic_write, tmp_sibling, write_json
from utils.errors import ResultsError


class FrameWriter:
    """One result written as its frames arrive, whole or not at all (every mode writes through it).

    ``add(frame (V,3))`` writes ``{i}.npy`` into a temporary sibling of ``vert_dir``; a frame cut short
    (Ctrl-C stopping a stream mid-frame) is left out at the commit. ``commit(arrays, meta, json_files)``
    puts the result in place: the old ``meta.json`` goes first (and the old result's files this one
    does not write, e.g. a single-audio DIR's video), then ``{name}.npy`` per array and the JSON files,
    each through a temporary name (``coeff_dir`` may hold other files: the log, the video), then the
    vertex folder is renamed over the old one and the new ``meta.json`` comes last. An older complete
    result stays whole until the commit. Use it as a context manager: leaving the block uncommitted
    removes the frames, and the coefficient folder if this writer made it. A failed write ->
    ResultsError naming the path."""

    def __init__(self, vert_dir: str, coeff_dir: str):
        self.vert_dir, self.coeff_dir = vert_dir, coeff_dir
        self.tmp, self.n = tmp_sibling(vert_dir), 0
        self.made_coeff_dir = self.committed = False
        _write(self.tmp, remove_path)
        _write(self.tmp, os.makedirs)

    def add(self, frame: np.ndarray):
        _write(os.path.join(self.tmp, f"{self.n}.npy"), lambda p: np.save(p, np.ascontiguousarray(frame, np.float32)))
        self.n += 1

    def commit(self, arrays: dict[str, np.ndarray], meta: dict, json_files: dict | None = None):
        files = {f"{k}.npy": (lambda p, a=a: atomic_write(p, lambda tmp: _save_npy(tmp, a))) for k, a in arrays.items()}
        files.update({k: (lambda p, o=o: write_json(p, o)) for k, o in (json_files or {}).items()})  # atomic too
        for name in (META, *(n for n in SINGLE_FILES if n not in files)):  # the old result's marker first
            _write(os.path.join(self.coeff_dir, name), remove_path)
        self.made_coeff_dir = not os.path.isdir(self.coeff_dir)
        _write(self.coeff_dir, lambda p: os.makedirs(p, exist_ok=True))
        for name, save in files.items():
            _write(os.path.join(self.coeff_dir, name), save)
        for name in os.listdir(self.tmp):  # a frame cut short by Ctrl-C while a stream is stopped is not one
            if int(FRAME_FILE.match(name).group(1)) >= self.n:
                os.remove(os.path.join(self.tmp, name))
        _write(self.vert_dir, self._rename_frames)
        _write(os.path.join(self.coeff_dir, META), lambda p: write_json(p, meta))
        self.committed = True

    def _rename_frames(self, final: str):
        remove_path(final)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        os.rename(self.tmp, final)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.made_coeff_dir and not self.committed:  # a folder made for this result goes with it
            shutil.rmtree(self.coeff_dir, ignore_errors=True)


def _write(path: str, step):
    """``step(path)``; an OSError -> ResultsError naming ``path``."""
    try:
        step(path)
    except OSError as e:
        raise ResultsError(f"cannot write {path}: {e.strerror or e}; the incomplete result was removed "
                           f"(free some space or pick another output folder, then rerun with --resume)") from None


def write_sample(vert_dir: str, coeff_dir: str, frames, arrays: dict, meta: dict):
    """One result whole: frames (T,V,3) (an array or anything iterable like one) through a FrameWriter,
    then ``arrays`` {name: array} and ``meta``."""
    with FrameWriter(vert_dir, coeff_dir) as writer:
        for frame in frames:
            writer.add(frame)
        writer.commit(arrays, meta)


def _save_npy(path: str, arr: np.ndarray):
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, np.ascontiguousarray(arr, dtype=np.float32))
