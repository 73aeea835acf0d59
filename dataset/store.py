"""The prepared-data store: every sample of a dataset's split decoded once, as ``load_item`` gives it
(normalised 16 kHz mono audio, 25 fps motion, shape, detail), into one small file per sample, and the
records from which start-up validation runs without decoding the samples again.

One store per dataset and split, in ``<root>/<dataset>/<split>-<hash>/`` (the hash names what the
decoded arrays depend on in the config: sample rate, frame rate, FLAME.n_shape, DATA.max_av_diff):

    index.json          the records, one per sample
    samples/<name>.f32  one sample: audio (N,) | motion (T, 51) | shape (FLAME.n_shape,) | detail (128,), float32
    report.json         the dataset's part of the split's validation report, for people to read
    lock                held (flock) while a process prepares the store; its mtime marks the store's last use

A record holds the sample's identity (JSON path relative to the data root, sample id), its setup
(format, fps, valid_frames_num), its source files (dataset/store_records.py: relative path, stat
signature, content digest) and either its sample file, lengths, CRC-32 and validation notes, or the
error it raised. A sample whose sources changed is decoded again; the others keep their files, so an
update writes about the size of the samples it changes. Sample files are written first under new names,
``index.json`` is replaced last (temporary file + rename), and files no record names are removed after:
a killed run leaves the old store whole. Everything read is checked (dataset/store_records.py); a bad
record is prepared again after one warning line, a sample file that fails its CRC when read is one
clear line (and is removed, so the next run prepares it again). A store that is complete and current is
read without taking the lock, so a read-only store works. Of a dataset's stores for other settings (a
config change), the most recently used one is kept and older ones are removed. The store holds nothing
that the source files do not: deleting it costs one preparation.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
import zlib

import numpy as np
from tqdm import tqdm

from dataset.data_item import SampleRef, load_item
from dataset.flame_params import DETAIL_DIM, fit_shape
from dataset.store_records import content_digest, ordered_map, plan, records_digest, usable_records, workers
from utils.atomic import TMP_PREFIX, write_json
from utils.config import resolve_data_path
from utils.errors import DataError
from utils.filelock import LockHeld, lock_file
from utils.framing import MOTION_DIM, framing_from_config

STORE_VERSION = 2
SAMPLES = "samples"
KEEP_OTHER_STORES = 1  # per dataset and split: stores of other settings kept beside the one in use
_log = logging.getLogger(__name__)


class StoreNotWritable(DataError):
    """A store that is not up to date cannot be written (a read-only filesystem, no permission)."""


def fallback_root(cfg) -> str | None:
    """Where stores go when the default one in the data root cannot be written: ``<TRAIN.save_path>/prepared``;
    None when ``DATA.store_root`` is set (the user chose the place)."""
    return None if cfg.DATA.get("store_root") else os.path.join(str(cfg.TRAIN.save_path), "prepared")


def store_root(cfg) -> str | None:
    """The folder holding the stores: ``DATA.store_root`` (relative to DATA.data_root), or by default
    ``<DATA.data_root>/.prepared`` when it exists or can be made, else ``fallback_root``; None when
    ``DATA.store_root`` is ``off``."""
    value = cfg.DATA.get("store_root")
    if value is False or value == "off":  # YAML reads a bare off as false
        return None
    if value:
        return resolve_data_path(cfg, str(value))
    root = resolve_data_path(cfg, ".prepared")
    if os.path.isdir(root) or os.access(os.path.dirname(root), os.W_OK):
        return root  # an existing store is read even where it cannot be written
    return fallback_root(cfg)


def store_dir(cfg, root: str, name: str, split: str) -> str:
    """The folder of one dataset's split in the store root ``root``."""
    fr = framing_from_config(cfg)
    depends = [STORE_VERSION, fr.sample_rate, fr.fps, int(cfg.FLAME.n_shape), float(cfg.DATA.max_av_diff)]
    digest = hashlib.sha1(json.dumps(depends).encode()).hexdigest()[:10]
    return os.path.join(root, name, f"{split}-{digest}")


def _cant_write(folder: str, why: str) -> DataError:
    return DataError(f"cannot write the prepared-data store {folder}: {why}; set DATA.store_root to a writable "
                     f"folder, or DATA.store_root=off to read the source files")


@contextlib.contextmanager
def _locked(folder: str, log: logging.Logger):
    """Hold the store's lock (utils/filelock.py: released with the process, also when it is killed)."""
    try:
        os.makedirs(os.path.join(folder, SAMPLES), exist_ok=True)
        fd = lock_file(os.path.join(folder, "lock"), lambda: log.info("waiting for another process preparing %s", folder))
    except OSError as e:
        raise StoreNotWritable(str(_cant_write(folder, f"it is not up to date and {e.strerror or e}"))) from None
    try:
        with contextlib.suppress(OSError):
            os.utime(fd)  # the store's last use, for the removal of unused stores
        yield
    finally:
        os.close(fd)


def _read_index(folder: str, n_shape: int, log: logging.Logger | None) -> list[dict] | None:
    """The usable records of the store's index, or None when there is no index or it is damaged as a whole.
    With ``log``, what is damaged is said in one warning line (those samples are then prepared again)."""
    path = os.path.join(folder, "index.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        records, problems = usable_records(index, STORE_VERSION, n_shape, os.path.join(folder, SAMPLES))
    except (OSError, ValueError, RecursionError) as e:  # BadIndex and bad JSON are ValueErrors
        if log:
            log.warning("prepared-data store %s is damaged (%s); preparing it again from the source files", folder, e)
        return None
    if problems and log:
        log.warning("prepared-data store %s is damaged (%d record(s): %s); preparing those samples again from the "
                    "source files", folder, len(problems), "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))
    return records


_READ_FIELDS = ("error", "file", "audio", "frames", "n_shape", "crc", "notes")


class SplitStore:
    """One dataset's split as prepared: ``outcome(ref)`` and ``arrays(ref)`` for its samples."""

    def __init__(self, folder: str, refs: list[SampleRef], records: list[dict]):
        self.folder = folder
        # what reading needs, without the sources' fingerprints (they would double the memory of a large index)
        self._records = {(r.json_path, r.sample_id): {k: rec[k] for k in _READ_FIELDS if k in rec}
                         for r, rec in zip(refs, records)}

    def outcome(self, ref: SampleRef):
        """What validating the sample found: dict(n_frames, notes) or the DataError it raised."""
        rec = self._records[(ref.json_path, ref.sample_id)]
        if "error" in rec:
            return DataError(rec["error"])
        return {"n_frames": rec["frames"], "notes": rec["notes"]}

    def arrays(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A good sample's audio (N,), motion (T, 51), shape (FLAME.n_shape,), detail (128,), float32, checked
        against its CRC-32 and for finite values. A sample file that fails is removed (the next run prepares
        it again) and is one DataError naming it."""
        rec = self._records[(ref.json_path, ref.sample_id)]
        path = os.path.join(self.folder, SAMPLES, rec["file"])
        expected = rec["audio"] + rec["frames"] * MOTION_DIM + rec["n_shape"] + DETAIL_DIM
        flat = np.empty(expected + 1, np.float32)  # one more: a longer file shows as a wrong count
        try:
            with open(path, "rb") as f:
                got = f.readinto(flat)
        except OSError as e:
            raise DataError(f"prepared-data store {self.folder}: sample file {rec['file']} of {ref.where} cannot be "
                            f"read ({e.strerror or e}; changed by another run?); run again to prepare it afresh") from None
        flat, n, t = flat[:expected], rec["audio"], rec["frames"]
        if got != 4 * expected or zlib.crc32(flat) != rec["crc"] or not np.isfinite(flat).all():
            with contextlib.suppress(OSError):
                os.remove(path)
            raise DataError(f"prepared-data store {self.folder}: sample file {rec['file']} of {ref.where} is damaged "
                            f"(it no longer holds what was prepared); it was removed: run again to prepare it afresh")
        m = n + t * MOTION_DIM
        return flat[:n], flat[n:m].reshape(t, MOTION_DIM), flat[m:m + rec["n_shape"]], flat[m + rec["n_shape"]:]


def prepare(cfg, name: str, split: str, refs: list[SampleRef], root: str, log: logging.Logger | None = None,
            progress: bool = True) -> SplitStore:
    """The store of dataset ``name``'s ``split`` holding ``refs``, decoding (threads, with a progress bar)
    only the samples that are new or whose files changed. A store that needs no decoding is used without
    its lock (written only to note new stat signatures, where it can be); otherwise it is updated under
    the lock."""
    log = log or _log
    folder = store_dir(cfg, root, name, split)
    data_root, n_shape = str(cfg.DATA.data_root), int(cfg.FLAME.n_shape)
    digests = {}
    old = _read_index(folder, n_shape, None)  # a damaged index is reported under the lock
    kept, seen = plan(refs, old, data_root, digests)
    if old is not None and all(k is not None for k in kept):
        if kept == old or not os.access(folder, os.W_OK):
            return SplitStore(folder, refs, kept)
    with _locked(folder, log):
        old = _read_index(folder, n_shape, log)  # again: another run may have prepared it meanwhile
        kept, seen = plan(refs, old, data_root, digests)
        todo = [i for i, k in enumerate(kept) if k is None]
        if todo:
            log.info("preparing %d of %d %s/%s sample(s) into %s", len(todo), len(refs), name, split, folder)
        records = _write(folder, refs, kept, seen, digests, cfg, progress, f"{split}/{name}") \
            if kept != old else kept
        _remove_other_stores(folder, log)
    return SplitStore(folder, refs, records)


def _decoder(cfg, refs, seen, todo: set, digests: dict):
    """decode(i): None for a kept sample, else (the sample's item or DataError, its sources with digests)."""
    framing = framing_from_config(cfg)

    def decode(i):
        if i not in todo:
            return None
        ref, sources = refs[i], [None if s is None else list(s) for s in seen[i]["sources"]]
        for path, s in zip((ref.audio_path, ref.flame_path, ref.template_path), sources):
            if s is not None and s[2] is None:  # read before decoding: a later change shows in the signature
                if s[1] not in digests:
                    digests[s[1]] = content_digest(path)
                s[2] = digests[s[1]]
        try:
            return load_item(ref, framing, cfg.DATA.max_av_diff), sources
        except DataError as e:
            return e, sources
    return decode


def _sample_bytes(item: dict, n_shape: int) -> bytes:
    detail = item["detail"] if item["detail"] is not None else np.zeros(DETAIL_DIM, np.float32)
    parts = (item["audio"], item["motion"], fit_shape(item["shape"], n_shape), detail)
    return b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in parts)


def _write(folder, refs, kept, seen, digests, cfg, progress, desc) -> list[dict]:
    """Decode and write the samples ``kept`` has no record for, then the index; remove unused sample files.
    A full disk keeps the samples written so far and is one DataError naming the bytes still needed."""
    n_shape = int(cfg.FLAME.n_shape)
    samples = os.path.join(folder, SAMPLES)
    todo = {i for i, k in enumerate(kept) if k is None}
    records = list(kept)
    gen = f"{time.time_ns():x}-{os.getpid()}"
    bar = tqdm(total=len(todo), disable=not progress or not todo, desc=f"preparing {desc}", leave=False)
    try:
        for i, got in enumerate(ordered_map(_decoder(cfg, refs, seen, todo, digests), range(len(refs)), workers())):
            if got is None:
                continue
            item, sources = got
            rec = {**seen[i], "sources": sources}
            if isinstance(item, DataError):
                rec["error"] = str(item)
            else:
                data = _sample_bytes(item, n_shape)
                rec.update(file=f"{gen}-{i}.f32", audio=int(item["audio"].shape[0]), frames=int(item["motion"].shape[0]),
                           n_shape=n_shape, crc=zlib.crc32(data), notes=list(item["notes"]))
                _write_sample(os.path.join(samples, rec["file"]), data, folder, todo)
            records[i] = rec
            todo.discard(i)
            bar.update(1)
    except BaseException:
        with contextlib.suppress(OSError, DataError):  # keep what was prepared; the error says the rest
            _save_index(folder, records)
        raise
    finally:
        bar.close()
    _save_index(folder, records)
    return records


def _save_index(folder: str, records: list) -> None:
    """Replace the index by ``records`` (those not None), then remove the sample files it does not name."""
    done = [r for r in records if r is not None]
    index = {"version": STORE_VERSION, "records": done, "digest": records_digest(done)}
    try:
        write_json(os.path.join(folder, "index.json"), index, indent=None, durable=True)
    except OSError as e:
        need = len(json.dumps(index))
        raise _cant_write(folder, f"{e.strerror or e} writing its index.json ({need} bytes)") from None
    _remove_unused(os.path.join(folder, SAMPLES), done)


def _write_sample(path: str, data: bytes, folder: str, todo: set) -> None:
    """Write one sample file (temporary name, renamed); a full disk is a DataError naming the bytes this
    sample needs and, estimated from it, what the samples still to prepare need. Not synced one by one
    (4-5 ms a file, minutes for a large index): a file a power cut left short is found by its size when
    the store is opened, one left whole-sized but wrong by its CRC when read, and is prepared again."""
    tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise _cant_write(folder, e.strerror or str(e)) from None
        free = shutil.disk_usage(folder).free
        raise DataError(f"not enough free space for the prepared-data store {folder}: this sample needs {len(data)} "
                        f"bytes and the {len(todo)} sample(s) still to prepare (it included) about {len(data) * len(todo)} bytes "
                        f"({len(data) * len(todo) / 2**20:.1f} MB), {free} bytes are free there; the samples written so "
                        f"far are kept. Free space, set DATA.store_root to another folder, or DATA.store_root=off to "
                        f"read the source files") from None


def _remove_unused(samples: str, records: list[dict]) -> None:
    """Remove the sample files no record names (replaced samples, temporary files of a killed run)."""
    used = {r["file"] for r in records if "file" in r}
    for f in os.listdir(samples):
        if f not in used:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(samples, f))


def _remove_other_stores(folder: str, log: logging.Logger) -> None:
    """Of the dataset's stores of the same split for other settings, keep the ``KEEP_OTHER_STORES`` most
    recently used of this layout and remove the rest, older layouts first (one in use by another run,
    holding its lock, is left alone)."""
    parent, split = os.path.dirname(folder), os.path.basename(folder).rsplit("-", 1)[0]
    others = []
    for d in os.listdir(parent):
        path = os.path.join(parent, d)
        if path != folder and d.rsplit("-", 1)[0] == split and os.path.isdir(path):
            lock = os.path.join(path, "lock")
            used = os.path.getmtime(lock if os.path.exists(lock) else path)
            others.append((os.path.isdir(os.path.join(path, SAMPLES)), used, path))
    for _, _, path in sorted(others, reverse=True)[KEEP_OTHER_STORES:]:
        try:
            fd = lock_file(os.path.join(path, "lock"))
        except (LockHeld, OSError):
            continue
        try:
            shutil.rmtree(path)
            log.info("removed the prepared-data store %s (other settings, not used lately)", path)
        except OSError as e:
            log.warning("could not remove the unused prepared-data store %s: %s", path, e.strerror or e)
        finally:
            os.close(fd)


def write_report(store: SplitStore, dataset_report: dict) -> None:
    """Put a dataset's part of the split's validation report beside its store, for people to read (skipped
    where the store cannot be written: it is only a copy of what validation logged)."""
    with contextlib.suppress(OSError):
        write_json(os.path.join(store.folder, "report.json"), dataset_report, indent=None, durable=True)
