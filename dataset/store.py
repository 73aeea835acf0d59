"""The prepared-data store: every sample of a dataset's split decoded once, as ``load_item`` gives it
(normalised 16 kHz mono audio, 25 fps motion, shape, detail), into flat float32 files from which the
loader reads a training crop's window alone, and from whose records start-up validation runs without
decoding the samples again.

One store per dataset and split, in ``<root>/<dataset>/<split>-<hash>/`` (the hash names what the
decoded arrays depend on in the config: sample rate, frame rate, FLAME.n_shape, DATA.max_av_diff):

    index.json          the records, one per sample, and the names of the array files below
    <gen>.audio.f32     (sum of N,) float32     all samples' audio, concatenated
    <gen>.motion.f32    (sum of T, 51) float32  all samples' motion, concatenated
    <gen>.shape.f32     (n, FLAME.n_shape) float32
    <gen>.detail.f32    (n, 128) float32
    report.json         the dataset's part of the split's validation report, for people to read
    lock                held (flock) while a process checks or prepares the store

A record holds the sample's key (sample id, JSON, format, fps, valid_frames_num, and the path, size
and mtime of its audio, parameter file and template) and either its offsets in the arrays and its
validation notes, or the error it raised. A sample whose key is not in the index is decoded; the
others are copied from the old arrays. A source file modified within ``RACY_SECONDS`` of being
looked at may change again without its mtime changing (timestamps are coarse): its record is used
this once and decoded again the next time. New arrays are written under a new generation name and
``index.json`` is replaced last (temporary file + rename), so a killed run leaves the old store
whole. The store holds nothing that the source files do not: deleting it costs one preparation.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from dataset.data_item import SampleRef, load_item
from dataset.flame_params import DETAIL_DIM, fit_shape
from utils.atomic import write_json
from utils.config import resolve_data_path
from utils.errors import DataError
from utils.filelock import lock_file
from utils.framing import MOTION_DIM, framing_from_config

STORE_VERSION = 1
RACY_SECONDS = 2.0
ARRAYS = ("audio", "motion", "shape", "detail")
_log = logging.getLogger(__name__)


def store_root(cfg) -> str | None:
    """The folder holding the stores: ``DATA.store_root`` (relative to DATA.data_root), or by default
    ``<DATA.data_root>/.prepared``, or ``<TRAIN.save_path>/prepared`` where the data root cannot be
    written; None when ``DATA.store_root`` is ``off``."""
    value = cfg.DATA.get("store_root")
    if value is False or value == "off":  # YAML reads a bare off as false
        return None
    if value:
        return resolve_data_path(cfg, str(value))
    root = resolve_data_path(cfg, ".prepared")
    parent = os.path.dirname(root)
    if os.access(root if os.path.isdir(root) else parent, os.W_OK):
        return root
    return os.path.join(str(cfg.TRAIN.save_path), "prepared")


def store_dir(cfg, root: str, name: str, split: str) -> str:
    """The folder of one dataset's split in the store root ``root``."""
    fr = framing_from_config(cfg)
    depends = [STORE_VERSION, fr.sample_rate, fr.fps, int(cfg.FLAME.n_shape), float(cfg.DATA.max_av_diff)]
    digest = hashlib.sha1(json.dumps(depends).encode()).hexdigest()[:10]
    return os.path.join(root, name, f"{split}-{digest}")


def _file_key(path: str | None, now: float) -> tuple[list | None, bool]:
    """([path, size, mtime_ns] or None when absent, whether it changed too recently to trust). A
    folder (per-frame parameter files) counts its files, their total size and latest mtime."""
    if path is None:
        return None, False
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None], False
    size, mtime = st.st_size, st.st_mtime_ns
    if os.path.isdir(path):
        size = count = 0
        for d, _, files in os.walk(path):
            for f in files:
                fst = os.stat(os.path.join(d, f))
                size, count, mtime = size + fst.st_size, count + 1, max(mtime, fst.st_mtime_ns)
        size = [count, size]
    return [path, size, mtime], now - mtime / 1e9 < RACY_SECONDS


def sample_key(ref: SampleRef, now: float | None = None) -> tuple[str, bool]:
    """(the key a sample's record is found by, as a string; whether a source file is too recent)."""
    now = time.time() if now is None else now
    files = [_file_key(p, now) for p in (ref.audio_path, ref.flame_path, ref.template_path)]
    key = [ref.sample_id, ref.json_path, ref.fmt, ref.fps, ref.valid_frames_num] + [k for k, _ in files]
    return json.dumps(key), any(racy for _, racy in files)


@contextlib.contextmanager
def _locked(folder: str, log: logging.Logger):
    """Hold the store's lock (utils/filelock.py: released with the process, also when it is killed)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = lock_file(os.path.join(folder, "lock"), lambda: log.info("waiting for another process preparing %s", folder))
    except OSError as e:
        raise DataError(f"cannot write the prepared-data store {folder}: {e.strerror or e} (set DATA.store_root "
                        f"to a writable folder, or DATA.store_root=off to read the source files)") from None
    try:
        yield
    finally:
        os.close(fd)


def _read_index(folder: str, log: logging.Logger) -> dict | None:
    """The store's index with its arrays mapped, or None when there is none or it is damaged (said in
    the log: the store is then prepared again)."""
    path = os.path.join(folder, "index.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        if index.get("version") != STORE_VERSION:
            raise ValueError(f"version {index.get('version')!r}, expected {STORE_VERSION}")
        index["arrays"] = {k: _map(os.path.join(folder, index["files"][k]), index["shapes"][k]) for k in ARRAYS}
        _check_records(index)
        return index
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("prepared-data store %s is damaged (%s); preparing it again from the source files", folder, e)
        return None


def _check_records(index: dict) -> None:
    """Every record has a key and either an error or slots inside the arrays (ValueError if not)."""
    n_audio, n_motion, n_rows = (index["arrays"][k].shape[0] for k in ("audio", "motion", "shape"))
    if index["arrays"]["detail"].shape[0] != n_rows:
        raise ValueError(f"{n_rows} shape rows but {index['arrays']['detail'].shape[0]} detail rows")
    rows = 0
    for rec in index["records"]:
        if not isinstance(rec["key"], str):
            raise ValueError("a record without a key")
        if "error" in rec:
            continue
        (a0, na), (m0, t) = rec["audio"], rec["frames"]
        if rec["row"] != rows or a0 + na > n_audio or m0 + t > n_motion or min(a0, na, m0, t) < 0:
            raise ValueError(f"record {rows} points outside the arrays")
        rows += 1
    if rows != n_rows:
        raise ValueError(f"{rows} samples but {n_rows} rows of arrays")


def _map(path: str, shape: list) -> np.ndarray:
    """A read-only memory map of a flat float32 file of ``shape``; a file of the wrong size is refused."""
    shape = tuple(int(s) for s in shape)
    expected = int(np.prod(shape)) * 4
    size = os.path.getsize(path)
    if size != expected:
        raise ValueError(f"{os.path.basename(path)} holds {size} bytes, expected {expected}")
    if expected == 0:
        return np.zeros(shape, np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=shape)


def _ordered_map(fn, items, workers: int):
    """``map(fn, items)`` on a thread pool with a bounded number of results waiting (memory stays flat)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for x in items:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class SplitStore:
    """One dataset's split as prepared: ``outcome(ref)``, ``slots(ref)`` and ``read`` for its samples.

    Windows are read with ``preadv`` into fresh arrays rather than through a memory map: a map keeps
    every page it touched (and the pages around them) in the process's resident memory, which would
    grow with the number of samples read; a read costs only its window."""

    def __init__(self, folder: str, index: dict, records: dict):
        self.folder = folder
        self.files = {k: os.path.join(folder, index["files"][k]) for k in ARRAYS}
        self.shapes = {k: tuple(int(n) for n in index["shapes"][k]) for k in ARRAYS}
        self._records = records  # (json_path, sample_id) -> record
        self._open()

    def _open(self):
        # opened now: a later preparation by another run replaces the files, never these inodes
        self._fds = {k: os.open(self.files[k], os.O_RDONLY) for k in ARRAYS}

    def __getstate__(self):  # a spawned loader process opens the files itself
        return {k: v for k, v in self.__dict__.items() if k != "_fds"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def outcome(self, ref: SampleRef):
        """What validating the sample found: dict(n_frames, notes) or the DataError it raised."""
        rec = self._records[(ref.json_path, ref.sample_id)]
        if "error" in rec:
            return DataError(rec["error"])
        return {"n_frames": rec["frames"][1], "notes": rec["notes"]}

    def slots(self, ref: SampleRef) -> tuple[int, int, int]:
        """(row, first audio sample, first motion frame) of a good sample; its length is outcome's."""
        rec = self._records[(ref.json_path, ref.sample_id)]
        return rec["row"], rec["audio"][0], rec["frames"][0]

    def read(self, name: str, first: int, rows: int) -> np.ndarray:
        """Rows ``first`` .. ``first + rows`` of array ``name`` -> (rows, ...) float32, e.g. audio (N,),
        motion (T, 51), shape (1, S), detail (1, 128)."""
        tail = self.shapes[name][1:]
        out = np.empty((rows, *tail), np.float32)
        got = os.preadv(self._fds[name], [out], first * int(np.prod(tail, dtype=np.int64)) * 4)
        if got != out.nbytes:
            raise DataError(f"prepared-data store {self.files[name]} is shorter than its index says (changed while "
                            f"this run used it?); run again, or delete {self.folder} to prepare it afresh")
        return out


def prepare(cfg, name: str, split: str, refs: list[SampleRef], root: str, log: logging.Logger | None = None,
            progress: bool = True) -> SplitStore:
    """The store of dataset ``name``'s ``split`` holding ``refs``, decoding (threads, with a progress bar)
    only the samples that are new or whose files changed, under the store's lock."""
    log = log or _log
    folder = store_dir(cfg, root, name, split)
    framing = framing_from_config(cfg)
    with _locked(folder, log):
        old = _read_index(folder, log)
        now = time.time()
        keyed = [sample_key(r, now) for r in refs]
        old_recs = {rec["key"]: rec for rec in old["records"] if not rec.get("racy")} if old else {}
        todo = [r for r, (k, _) in zip(refs, keyed) if k not in old_recs]
        same_rows = old is not None and [k for k, _ in keyed] == [rec["key"] for rec in old["records"]] \
            and all(racy == bool(rec.get("racy")) for (_, racy), rec in zip(keyed, old["records"]))
        index = old
        if not same_rows or todo:
            if todo:
                log.info("preparing %d of %d %s/%s sample(s) into %s", len(todo), len(refs), name, split, folder)
            try:
                index = _write(folder, refs, keyed, old, old_recs, todo, framing, cfg, progress, f"{split}/{name}")
            except OSError as e:  # a full disk, a quota: the old store (if any) is still whole
                for f in os.listdir(folder):
                    if f.startswith(".tmp-"):
                        with contextlib.suppress(OSError):
                            os.remove(os.path.join(folder, f))
                raise DataError(f"cannot write the prepared-data store {folder}: {e.strerror or e}; free space there, "
                                f"set DATA.store_root to another folder, or DATA.store_root=off to read the source "
                                f"files") from None
        records = {(r.json_path, r.sample_id): rec for r, rec in zip(refs, index["records"])}
        return SplitStore(folder, index, records)


def _write(folder, refs, keyed, old, old_recs, todo, framing, cfg, progress, desc) -> dict:
    """Write the arrays of ``refs`` in order (decoding ``todo``, copying the rest from ``old``'s maps)
    under a new generation name, then the index; remove the previous generation's files. Returns the
    new index (without maps)."""
    n_shape = int(cfg.FLAME.n_shape)
    todo_ids = {id(r) for r in todo}

    def decode(ref):
        if id(ref) not in todo_ids:
            return None
        try:
            return load_item(ref, framing, cfg.DATA.max_av_diff)
        except DataError as e:
            return e

    gen = f"{time.time_ns():x}-{os.getpid()}"
    files = {k: f"{gen}.{k}.f32" for k in ARRAYS}
    tmp = {k: os.path.join(folder, f".tmp-{files[k]}") for k in ARRAYS}
    records, n_audio, n_motion, row = [], 0, 0, 0
    outs = {}
    try:
        for k in ARRAYS:
            outs[k] = open(tmp[k], "wb")
        workers = max(1, min(8, os.cpu_count() or 1))
        bar = tqdm(total=len(todo), disable=not progress or not todo, desc=f"preparing {desc}", leave=False)
        for ref, (key, racy), item in zip(refs, keyed, _ordered_map(decode, refs, workers)):
            rec = {"key": key, "racy": racy}
            if item is None:  # unchanged: copy from the old arrays
                was = old_recs[key]
                if "error" in was:
                    rec["error"] = was["error"]
                else:
                    (a0, na), (m0, t), r0 = was["audio"], was["frames"], was["row"]
                    arrays = (old["arrays"]["audio"][a0:a0 + na], old["arrays"]["motion"][m0:m0 + t],
                              old["arrays"]["shape"][r0], old["arrays"]["detail"][r0])
                    rec["notes"] = was["notes"]
            else:
                bar.update(1)
                if isinstance(item, DataError):
                    rec["error"] = str(item)
                else:
                    detail = item["detail"] if item["detail"] is not None else np.zeros(DETAIL_DIM, np.float32)
                    arrays = (item["audio"], item["motion"], fit_shape(item["shape"], n_shape), detail)
                    rec["notes"] = item["notes"]
            if "error" not in rec:
                for k, a in zip(ARRAYS, arrays):
                    outs[k].write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
                rec.update(row=row, audio=[n_audio, int(arrays[0].shape[0])], frames=[n_motion, int(arrays[1].shape[0])])
                row, n_audio, n_motion = row + 1, n_audio + arrays[0].shape[0], n_motion + arrays[1].shape[0]
            records.append(rec)
        bar.close()
        for f in outs.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in outs.values():
            f.close()
    shapes = {"audio": [n_audio], "motion": [n_motion, MOTION_DIM], "shape": [row, n_shape],
              "detail": [row, DETAIL_DIM]}
    for k in ARRAYS:
        os.replace(tmp[k], os.path.join(folder, files[k]))
    index = {"version": STORE_VERSION, "files": files, "shapes": shapes, "records": records}
    write_json(os.path.join(folder, "index.json"), index, indent=None, durable=True)
    for f in os.listdir(folder):  # the previous generation, and temporary files of a killed run
        if f.endswith(".f32") and not f.startswith(gen):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, f))
    return index


def write_report(store: SplitStore, dataset_report: dict) -> None:
    """Put a dataset's part of the split's validation report beside its store, for people to read."""
    write_json(os.path.join(store.folder, "report.json"), dataset_report, indent=None, durable=True)
