"""The one writer of results, for every mode: frames as they arrive, the result put in place whole.

Frames go into a temporary sibling of the vertex folder (``.tmp-<name>-<pid>``) as they are made; at
the end the old result's ``meta.json`` goes first, the coefficient files are written, the vertex
folder is renamed into place and the new ``meta.json`` comes last (main/results.py: a result is
complete exactly when its ``meta.json`` is readable and its frames are all there).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from main.result_reader import FRAME_FILE
from main.results import META, SINGLE_FILES, remove_path
from utils.atomic import atomic_write, tmp_sibling
from utils.errors import ResultsError


class FrameWriter:
    """One result written as its frames arrive, whole or not at all (every mode writes through it).

    ``add(frame (V,3))`` writes ``{i}.npy`` into a temporary sibling of ``vert_dir``; a frame cut short
    (Ctrl-C stopping a stream mid-frame) is left out at the commit. ``commit(arrays, meta, json_files)``
    puts the result in place: the old ``meta.json`` first (in a single-audio DIR also the old result's
    files this one does not write: its video, its stream stats), then ``{name}.npy`` per array and the
    JSON files, the vertex folder renamed over the old one, the new ``meta.json`` last. ``in_place``:
    ``coeff_dir`` is shared with other files (single-audio DIR: the log, the video), so its files go in
    one by one through temporary names; otherwise the coefficient
    folder is built as a temporary sibling too and renamed into place after the vertices. An older
    complete result stays whole until the new one is. Use it as a context manager: leaving the block
    uncommitted removes what was written. A failed write -> ResultsError naming the path."""

    def __init__(self, vert_dir: str, coeff_dir: str, in_place: bool = False):
        self.vert_dir, self.coeff_dir, self.in_place = vert_dir, coeff_dir, in_place
        self.tmp, self.n = tmp_sibling(vert_dir), 0
        self.tmp_coeff = None if in_place else tmp_sibling(coeff_dir)
        with _naming(self.tmp):
            remove_path(self.tmp)
            os.makedirs(self.tmp)

    def add(self, frame: np.ndarray):
        path = os.path.join(self.tmp, f"{self.n}.npy")
        with _naming(path):
            np.save(path, np.ascontiguousarray(frame, dtype=np.float32))
        self.n += 1

    def commit(self, arrays: dict[str, np.ndarray], meta: dict, json_files: dict | None = None):
        final = self.coeff_dir
        out = final if self.in_place else self.tmp_coeff
        with _naming(out):
            if not self.in_place:
                remove_path(out)
            os.makedirs(out, exist_ok=True)
        files = {f"{k}.npy": (lambda p, a=a: _save_npy(p, a)) for k, a in arrays.items()}
        files.update({k: (lambda p, o=o: _write_json(p, o)) for k, o in (json_files or {}).items()})
        stale = [n for n in SINGLE_FILES if n not in files] if self.in_place else []
        for name in (META, *stale):  # the old result's marker goes before anything of it is replaced
            with _naming(os.path.join(final, name)):
                remove_path(os.path.join(final, name))
        if not self.in_place:
            files[META] = lambda p: _write_json(p, meta)
        for name, save in files.items():
            with _naming(os.path.join(out, name)):
                atomic_write(os.path.join(out, name), save)
        for name in os.listdir(self.tmp):  # a frame cut short by Ctrl-C while a stream is stopped is not one
            if int(FRAME_FILE.match(name).group(1)) >= self.n:
                os.remove(os.path.join(self.tmp, name))
        _rename_over(self.tmp, self.vert_dir)
        if self.in_place:
            with _naming(os.path.join(final, META)):
                atomic_write(os.path.join(final, META), lambda p: _write_json(p, meta))
        else:
            _rename_over(self.tmp_coeff, final)

    def discard(self):
        for d in (self.tmp, self.tmp_coeff):
            if d and os.path.lexists(d):
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()


@contextlib.contextmanager
def _naming(path: str):
    """An OSError in the block -> ResultsError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise ResultsError(f"cannot write {path}: {e.strerror or e}; the incomplete result was removed "
                           f"(free some space or pick another output folder, then rerun with --resume)") from None


def _rename_over(tmp: str, final: str):
    with _naming(final):
        remove_path(final)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        os.rename(tmp, final)


def write_sample(vert_dir: str, coeff_dir: str, frames, arrays, meta: dict, in_place: bool = False,
                 progress: bool = False):
    """One result whole: frames (T,V,3) (an array or anything indexable like one) through a FrameWriter,
    then ``arrays`` {name: array} (or a function returning them, called once the frames are written)."""
    with FrameWriter(vert_dir, coeff_dir, in_place) as writer:
        for i in tqdm(range(len(frames)), desc=f"write {os.path.basename(vert_dir)}", unit="frame",
                      disable=not progress, leave=False):
            writer.add(frames[i])
        writer.commit(arrays() if callable(arrays) else arrays, meta)


def _save_npy(path: str, arr: np.ndarray):
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, np.ascontiguousarray(arr, dtype=np.float32))


def _write_json(path: str, obj: dict):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
