"""The results tree (DESIGN.md 6): where a sample's outputs go, how they are written, how they are read.

Layout of one sample (evaluation mode; single-audio mode uses ``DIR/vertices/`` and ``DIR``)::

    {INFER.output_root}/{exp_name}/{DATASET}/{STYLE_ID}/{i}.npy   (V,3) float32, i = 0..T-1, nothing else
    {INFER.coeff_root}/{exp_name}/{DATASET}/{STYLE_ID}/motion.npy (T,51), coeffs287.npy (T,287), meta.json

Written whole or not at all: the vertex folder and the coefficient folder are filled under temporary
sibling names (``.tmp-<name>-<pid>``) and renamed into place, vertices first, coefficients (with
``meta.json``, written last) second. So a sample is complete exactly when its ``meta.json`` exists and
its vertex folder holds ``meta["n_frames"]`` frames; nothing inside the vertex folder marks it (the
evaluation reads that folder and nothing else may be in it). A kill or a full disk leaves at most a
``.tmp-*`` folder, which the next run removes and reports, or a vertex folder without its meta.json,
which is never taken as complete.

Used by main/inference.py, scripts/mean_baseline.py (writers), main/evaluate.py and main/render.py
(readers; neither needs the other).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from utils.errors import ResultsError

FRAME_FILE = re.compile(r"^(\d+)\.npy$")
TMP_PREFIX = ".tmp-"
TMP_NAME = re.compile(r"^\.tmp-(.+)-(\d+)$")
NPY_HEADER_BYTES = 128
META = "meta.json"

log = logging.getLogger("results")


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------

def sample_dirs(cfg, dataset: str, style_id: str) -> tuple[str, str]:
    """(vertex folder, coefficient folder) of one test sample."""
    return (os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name, dataset, style_id),
            os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name, dataset, style_id))


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


def is_complete(vert_dir: str, meta_dir: str) -> bool:
    """A sample whose meta.json is readable and whose vertex folder holds its n_frames frames, each a
    whole file (the size its .npy header says). An unreadable meta.json or a torn frame (0 bytes,
    cut short, left by an old writer or a copy) is incomplete: --resume redoes the sample."""
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


def select_todo(samples: list[tuple[str, str]], mode: str, how: str) -> list[bool]:
    """Which samples (vert_dir, meta_dir) to (re)generate. mode: ``new`` (any existing result, complete or
    left incomplete by a killed run, is an error listing them), ``resume`` (keep complete ones), or
    ``overwrite`` (all). ``how`` names the flags in the error message."""
    complete = [is_complete(v, m) for v, m in samples]
    if mode == "overwrite":
        return [True] * len(samples)
    if mode == "resume":
        return [not c for c in complete]
    done = [v for (v, m), c in zip(samples, complete) if c]
    torn = [v for (v, m), c in zip(samples, complete) if not c and (_exists(v) or _exists(os.path.join(m, META)))]
    if done or torn:
        lines = [f"{v}" for v in done[:10]] + [f"{v} (incomplete: no {META} or frames missing)" for v in torn[:10]]
        more = len(done) + len(torn) - len(lines)
        raise ResultsError(f"{len(done)} output folder(s) already hold results"
                           + (f", and {len(torn)} incomplete result(s) of an interrupted run are in the way" if torn else "")
                           + f"; {how}:\n  " + "\n  ".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))
    return [True] * len(samples)


def clean_stale_temps(folders: list[str], logger: logging.Logger | None = None) -> list[str]:
    """Remove ``.tmp-*-<pid>`` leftovers of crashed runs beside ``folders`` (a live process's own are kept);
    each removal is logged. Returns the removed paths."""
    logger = logger or log
    removed = []
    for parent in sorted({os.path.dirname(os.path.abspath(f)) for f in folders}):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            m = TMP_NAME.match(name)
            if m and not _alive(int(m.group(2))):
                path = os.path.join(parent, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
                removed.append(path)
    if removed:
        logger.warning("removed %d incomplete temporary result folder(s) left by an interrupted run: %s",
                       len(removed), ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


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
# One writer per output folder
# ----------------------------------------------------------------------------------------------

LOCK_FILE = ".inference.lock"


@contextlib.contextmanager
def output_lock(folders: list[str], how: str = "wait for it to finish or write elsewhere"):
    """Hold an exclusive lock (fcntl.flock on the empty file ``folder/.inference.lock``) on each output
    folder for the block, so a second run writing the same results fails at once, naming the pid that
    holds it, instead of both runs overwriting each other's samples. The lock goes with the process
    (also on SIGKILL), so a crashed run never blocks the next one.

    The trees hold nothing but results: a lock file this run made goes at the end, and so does a
    killed run's leftover once this run has finished (a run that fails leaves the folder as it found
    it); folders made only to hold the lock are removed when they stay empty."""
    import fcntl

    held, made, ok = [], [], False
    try:
        for folder in sorted({os.path.abspath(f) for f in folders}):
            d = folder
            while not os.path.exists(d):
                made.append(d)
                d = os.path.dirname(d)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise ResultsError(f"cannot write results in {folder}: {e.strerror or e}") from None
            held.append(_lock_one(os.path.join(folder, LOCK_FILE), fcntl, how))
        yield
        ok = True
    finally:
        for path, fd, created in reversed(held):
            if created or ok:
                with contextlib.suppress(OSError):
                    os.remove(path)  # while still locked: a run that opened it sees the inode gone and retries
            os.close(fd)
        for d in sorted(made, key=lambda d: -d.count(os.sep)):  # deepest first, only if empty
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _lock_one(path: str, fcntl, how: str) -> tuple[str, int, bool]:
    """(path, open fd holding the lock, whether this call created the file)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed by its holder meanwhile
                continue
            except OSError as e:
                raise ResultsError(f"cannot open the lock file {path}: {e.strerror or e}") from None
        except OSError as e:
            raise ResultsError(f"cannot create the lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _flock_holder(os.fstat(fd).st_ino)
            os.close(fd)
            raise ResultsError(f"another inference run ({holder}) is writing {os.path.dirname(path)} (it holds "
                               f"{path}); {how}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return path, fd, created
        os.close(fd)  # its holder removed it as we opened it: lock the file that is there now


def _flock_holder(inode: int) -> str:
    """'pid N' of the process holding a flock on ``inode`` (from /proc/locks, Linux), or a vaguer word."""
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                    return f"pid {parts[4]}"
    except OSError:
        pass
    return "pid unknown"


# ----------------------------------------------------------------------------------------------
# Up-front checks
# ----------------------------------------------------------------------------------------------

def sample_bytes(n_frames: int, n_vertices: int) -> int:
    """Disk estimate of one sample: its vertex frames plus motion (T,51) and coeffs (T,287)."""
    return n_frames * (NPY_HEADER_BYTES + n_vertices * 3 * 4) + 2 * NPY_HEADER_BYTES + n_frames * (51 + 287) * 4 + 4096


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_can_write(need: dict[str, int], what: str = "results"):
    """need: {folder: bytes to be written under it}. Every folder must be creatable and writable (probed
    with a temporary file in its nearest existing ancestor) and each filesystem must have the bytes
    planned on it free, else ResultsError with the folder and the estimate in MB."""
    per_device: dict[int, list] = {}
    for folder, n in need.items():
        anc = _existing_ancestor(folder)
        if not os.path.isdir(anc):
            raise ResultsError(f"cannot write {what} in {folder}: {anc} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=anc):
                pass
        except OSError as e:
            raise ResultsError(f"cannot write {what} in {folder}: {anc} is not writable ({e.strerror or e})") from None
        entry = per_device.setdefault(os.stat(anc).st_dev, [anc, 0, []])
        entry[1] += n
        entry[2].append(folder)
    for anc, n, folders in per_device.values():
        free = shutil.disk_usage(anc).free
        if n > free:
            raise ResultsError(f"not enough free space for {what}: about {n / 2**20:.1f} MB needed under "
                               f"{folders[0]}{' (and others on the same disk)' if len(folders) > 1 else ''}, "
                               f"{free / 2**20:.1f} MB free on {anc}'s filesystem")


# ----------------------------------------------------------------------------------------------
# Writing one sample
# ----------------------------------------------------------------------------------------------

def build_meta(sample_id, dataset, style_id, speaker, audio_path, fps, n_frames, checkpoint, condition_style) -> dict:
    """The meta.json of a sample (one definition for inference, single audio and the mean baseline)."""
    return {"sample_id": sample_id, "dataset": dataset, "style_id": style_id, "speaker": speaker,
            "audio_path": os.path.abspath(audio_path) if audio_path else None, "fps": float(fps),
            "n_frames": int(n_frames), "checkpoint": checkpoint, "condition_style": condition_style}


def _tmp_sibling(final: str) -> str:
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f"{TMP_PREFIX}{os.path.basename(final)}-{os.getpid()}")


def _remove(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def write_sample(vert_dir: str, coeff_dir: str, frames: np.ndarray, arrays: dict[str, np.ndarray], meta: dict,
                 coeff_in_place: bool = False, progress: bool = False):
    """Write one sample whole or not at all.

    frames (T,V,3) -> ``vert_dir/{i}.npy``; arrays {name: array} (or a function returning them, called
    once the frames are written) -> ``coeff_dir/{name}.npy``; meta ->
    ``coeff_dir/meta.json`` (last). Both folders are built as ``.tmp-`` siblings and renamed over any
    previous result (whose meta.json goes first, so an interruption never pairs old and new).
    ``coeff_in_place``: coeff_dir is shared with other files (single-audio mode: the log, video.mp4), so
    its files are written one by one through temporary names instead. ``progress``: tqdm over frames.
    A failed write -> ResultsError with the path and the OS reason; no temporary file is left.
    """
    from tqdm import tqdm

    tmp_vert = _tmp_sibling(vert_dir)
    tmp_coeff = None if coeff_in_place else _tmp_sibling(coeff_dir)
    current = tmp_vert
    try:
        for d in (tmp_vert, tmp_coeff):
            if d:
                _remove(d)
                os.makedirs(d)
        for i in tqdm(range(frames.shape[0]), desc=f"write {os.path.basename(vert_dir)}", unit="frame",
                      disable=not progress, leave=False):
            current = os.path.join(tmp_vert, f"{i}.npy")
            np.save(current, np.ascontiguousarray(frames[i], dtype=np.float32))
        if tmp_coeff is None:  # the old result's marker goes before anything of it is replaced
            os.makedirs(coeff_dir, exist_ok=True)
            _remove(os.path.join(coeff_dir, META))
        out = tmp_coeff or coeff_dir
        for name, arr in (arrays() if callable(arrays) else arrays).items():
            current = os.path.join(out, f"{name}.npy")
            _save_via_tmp(current, lambda p, a=arr: _save_npy(p, a), tmp_coeff is None)
        if tmp_coeff:
            current = os.path.join(tmp_coeff, META)
            _write_json(current, meta)
            current = coeff_dir
            _remove(os.path.join(coeff_dir, META))
        # Into place: vertices, then the coefficients with the marker (meta.json) last.
        current = vert_dir
        _remove(vert_dir)
        os.makedirs(os.path.dirname(os.path.abspath(vert_dir)), exist_ok=True)
        os.rename(tmp_vert, vert_dir)
        current = coeff_dir
        if tmp_coeff:
            _remove(coeff_dir)
            os.makedirs(os.path.dirname(os.path.abspath(coeff_dir)), exist_ok=True)
            os.rename(tmp_coeff, coeff_dir)
        else:
            current = os.path.join(coeff_dir, META)
            _save_via_tmp(current, lambda p: _write_json(p, meta), True)
    except OSError as e:
        raise _write_error(current, e) from None
    finally:
        for d in (tmp_vert, tmp_coeff):
            if d and os.path.lexists(d):
                shutil.rmtree(d, ignore_errors=True)


class FrameWriter:
    """One sample written as its frames are made (streaming), with write_sample's guarantees.

    ``add(frame)`` writes ``{i}.npy`` into a temporary sibling of ``vert_dir`` through a temporary name
    and a rename, so no frame file is ever torn; ``commit(coeff_dir, arrays, meta, json_files)`` then
    puts the result in place as write_sample(coeff_in_place=True) does (the old marker first, the
    arrays and JSON files through temporary names, the vertex folder renamed over the old one, the new
    meta.json last), so an older complete result stays whole until the new one is; ``discard()``
    (always call it, e.g. in ``finally``) removes what was not committed. A failed write ->
    ResultsError naming the path."""

    def __init__(self, vert_dir: str):
        self.vert_dir, self.tmp, self.n = vert_dir, _tmp_sibling(vert_dir), 0
        try:
            _remove(self.tmp)
            os.makedirs(self.tmp)
        except OSError as e:
            raise _write_error(self.tmp, e) from None

    def add(self, frame: np.ndarray):
        path = os.path.join(self.tmp, f"{self.n}.npy")
        try:
            _save_via_tmp(path, lambda p: _save_npy(p, frame), True)
        except OSError as e:
            raise _write_error(path, e) from None
        self.n += 1

    def commit(self, coeff_dir: str, arrays: dict[str, np.ndarray], meta: dict, json_files: dict | None = None,
               stale: tuple[str, ...] = ()):
        """``stale``: names in coeff_dir of the old result that the new one does not replace (a video)."""
        current = coeff_dir
        try:
            os.makedirs(coeff_dir, exist_ok=True)
            for name in (META, *stale):
                current = os.path.join(coeff_dir, name)
                _remove(current)
            for name, arr in arrays.items():
                current = os.path.join(coeff_dir, f"{name}.npy")
                _save_via_tmp(current, lambda p, a=arr: _save_npy(p, a), True)
            for name, obj in (json_files or {}).items():
                current = os.path.join(coeff_dir, name)
                _save_via_tmp(current, lambda p, o=obj: _write_json(p, o), True)
            current = self.vert_dir
            _remove(self.vert_dir)
            os.rename(self.tmp, self.vert_dir)
            current = os.path.join(coeff_dir, META)
            _save_via_tmp(current, lambda p: _write_json(p, meta), True)
        except OSError as e:
            raise _write_error(current, e) from None

    def discard(self):
        if os.path.lexists(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _write_error(path: str, e: OSError) -> ResultsError:
    return ResultsError(f"cannot write {path}: {e.strerror or e}; the incomplete result was removed "
                        f"(free some space or pick another output folder, then rerun with --resume)")


def _save_npy(path: str, arr: np.ndarray):
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, np.asarray(arr, dtype=np.float32))


def _write_json(path: str, obj: dict):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _save_via_tmp(path: str, save, via_tmp: bool):
    """save(path), through a temporary name + rename when ``via_tmp`` (a file in a shared folder)."""
    if not via_tmp:
        save(path)
        return
    tmp = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}-{os.getpid()}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
