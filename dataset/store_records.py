"""The prepared-data store's records: how a sample's source files are fingerprinted, how an index read
from disk is checked before anything in it is believed, and which records still hold for the samples
of a split (``plan``).

A source file is known by its path relative to ``DATA.data_root`` (so a moved data root keeps its store),
its ``stat`` signature and its content digest. The signature is size, mtime, ctime and inode: a user can
set the mtime back (``touch -r``, ``rsync -t``) but not the ctime, which the kernel sets to now on every
write, ``utime``, rename or copy. While the signature is unchanged the file is trusted without being
read; when it differs the file is read once and its SHA-1 compared: the same bytes keep the prepared
arrays (a copy, a moved data root), other bytes are prepared again. A file too large to hash (see
``DIGEST_MAX_BYTES``) is prepared again whenever its signature changes. A file whose times are within
``RACY_SECONDS`` of the look (timestamps are coarse) is compared by content the next time too.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from dataset.data_item import SampleRef
from dataset.flame_params import DETAIL_DIM
from utils.framing import MOTION_DIM

RACY_SECONDS = 2.0
# Larger files are not hashed: a VHAP npz with its 48 MB texture is read in part by decoding (the arrays
# it needs), so when such a file's signature changes, decoding it again costs less than hashing it.
DIGEST_MAX_BYTES = 16 << 20
_CHUNK = 1 << 20


def relative(path: str | None, data_root: str) -> str | None:
    """``path`` relative to the data root when it lies inside, else absolute: the name a store keeps."""
    if path is None:
        return None
    path, root = os.path.abspath(path), os.path.abspath(data_root)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def _files_of(path: str) -> list[str]:
    """The file itself, or a folder's files (per-frame parameter files), sorted."""
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)


def stat_signature(path: str, now: float) -> tuple[str | None, bool]:
    """(size, mtime, ctime and inode of the file, or a hash of those of a folder's files, as one string,
    or None when it cannot be read; whether a time is too recent to trust)."""
    try:
        st = os.stat(path)
        stats = [(os.path.relpath(f, path), os.stat(f)) for f in _files_of(path)] if stat.S_ISDIR(st.st_mode) \
            else [(".", st)]
    except OSError:
        return None, False
    sig = [f"{name}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}:{s.st_ino}" for name, s in stats]
    racy = any(now - max(s.st_mtime_ns, s.st_ctime_ns) / 1e9 < RACY_SECONDS for _, s in stats)
    return (sig[0] if len(sig) == 1 and sig[0].startswith(".:") else
            hashlib.sha1("\n".join(sig).encode()).hexdigest()), racy


def content_digest(path: str) -> str | None:
    """SHA-1 of the file's bytes (of a folder's file names and bytes), or None when it cannot be read or
    is larger than ``DIGEST_MAX_BYTES``."""
    h = hashlib.sha1()
    try:
        files = _files_of(path)
        if sum(os.path.getsize(f) for f in files) > DIGEST_MAX_BYTES:
            return None
        for f in files:
            h.update(os.path.relpath(f, path).encode() + b"\0")
            with open(f, "rb") as src:
                while block := src.read(_CHUNK):
                    h.update(block)
    except OSError:
        return None
    return h.hexdigest()


_GOOD_FIELDS = {"file", "audio", "frames", "n_shape", "crc", "notes"}


class BadIndex(ValueError):
    """The store's index does not describe a store this code can read (the message says what)."""


def _need(cond: bool, what: str):
    if not cond:
        raise BadIndex(what)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_sources(sources, where: str):
    _need(isinstance(sources, list) and len(sources) == 3, f"{where}: 'sources' is not a list of 3")
    for s in sources:
        if s is None:
            continue
        _need(isinstance(s, list) and len(s) == 3 and isinstance(s[0], str)
              and all(x is None or isinstance(x, str) for x in s[1:]),
              f"{where}: a source is not [path, signature, digest]")


def check_record(rec, n_shape: int, where: str) -> None:
    """BadIndex unless ``rec`` is a whole record: identity, setup, sources, racy flag, and either an error
    or a sample file with positive lengths, a checksum and notes."""
    _need(isinstance(rec, dict), f"{where} is not an object")
    ident = rec.get("id")
    _need(isinstance(ident, list) and len(ident) == 2 and all(isinstance(x, str) for x in ident),
          f"{where}: 'id' is not [json, sample id]")
    _need(isinstance(rec.get("setup"), list) and len(rec["setup"]) == 3, f"{where}: 'setup' is not a list of 3")
    _check_sources(rec.get("sources"), where)
    _need(isinstance(rec.get("racy"), bool), f"{where}: 'racy' is not true or false")
    if "error" in rec:
        _need(isinstance(rec["error"], str), f"{where}: 'error' is not text")
        _need(not _GOOD_FIELDS & set(rec), f"{where}: both an error and a sample file")
        return
    name = rec.get("file")
    _need(isinstance(name, str) and name.endswith(".f32") and os.path.basename(name) == name
          and not name.startswith("."), f"{where}: 'file' is not a sample file name")
    _need(_is_int(rec.get("audio")) and _is_int(rec.get("frames")) and rec["audio"] > 0 and rec["frames"] > 0,
          f"{where}: 'audio' and 'frames' are not positive counts")
    _need(_is_int(rec.get("crc")) and 0 <= rec["crc"] < 2 ** 32, f"{where}: 'crc' is not a 32-bit checksum")
    _need(isinstance(rec.get("notes"), list) and all(isinstance(n, str) for n in rec["notes"]),
          f"{where}: 'notes' is not a list of text")
    _need(rec.get("n_shape") == n_shape, f"{where}: 'n_shape' is not {n_shape}")


def sample_bytes(rec: dict) -> int:
    """The size of a good record's sample file: audio (N,) | motion (T, 51) | shape (S,) | detail (128,)."""
    return 4 * (rec["audio"] + rec["frames"] * MOTION_DIM + rec["n_shape"] + DETAIL_DIM)


def usable_records(index, version: int, n_shape: int, samples_dir: str) -> tuple[list[dict], list[str]]:
    """(the records that can be used, what is wrong with the others) of an index read from disk. A record is
    unusable when a field is missing or of the wrong type, its id or file is another record's, or its
    sample file is missing or of another size than its lengths give; BadIndex when the index as a whole
    is not this version's list of records."""
    _need(isinstance(index, dict), "not a JSON object")
    _need(index.get("version") == version, f"version {index.get('version')!r}, expected {version}")
    records = index.get("records")
    _need(isinstance(records, list), "'records' is not a list")
    _need(index.get("digest") == records_digest(records), "its records do not match their checksum")
    good, problems, ids, files = [], [], set(), set()
    for i, rec in enumerate(records):
        try:
            check_record(rec, n_shape, f"record {i}")
            _need(tuple(rec["id"]) not in ids, f"record {i}: sample {rec['id'][1]!r} appears twice")
            if "error" not in rec:
                _need(rec["file"] not in files, f"record {i}: file {rec['file']} is used twice")
                _check_file(os.path.join(samples_dir, rec["file"]), rec, f"record {i}")
                files.add(rec["file"])
        except BadIndex as e:
            problems.append(str(e))
            continue
        ids.add(tuple(rec["id"]))
        good.append(rec)
    return good, problems


def records_digest(records: list) -> str:
    """The SHA-1 an index keeps of its records: any edit of a record shows."""
    return hashlib.sha1(json.dumps(records, sort_keys=True).encode()).hexdigest()


def _check_file(path: str, rec: dict, where: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError:
        raise BadIndex(f"{where}: sample file {rec['file']} is missing") from None
    _need(size == sample_bytes(rec), f"{where}: {rec['file']} holds {size} bytes, expected {sample_bytes(rec)}")


def _identity(ref: SampleRef, data_root: str) -> list:
    return [relative(ref.json_path, data_root), ref.sample_id]


def _look(ref: SampleRef, data_root: str, now: float) -> dict:
    """What a record of ``ref`` would say of it now, before reading any source file: identity, setup,
    sources (relative path, stat signature, digest still None) and whether a time is too recent."""
    sources, racy = [], False
    for path in (ref.audio_path, ref.flame_path, ref.template_path):
        if path is None:
            sources.append(None)
            continue
        sig, recent = stat_signature(path, now)
        sources.append([relative(path, data_root), sig, None])
        racy = racy or recent
    return {"id": _identity(ref, data_root), "setup": [ref.fmt, ref.fps, ref.valid_frames_num],
            "sources": sources, "racy": racy}


def _same_sources(ref: SampleRef, seen: dict, old: dict, digests: dict) -> bool:
    """Whether ``ref``'s sources, as ``seen`` now, hold what they held when ``old`` was recorded: the same
    paths, and the same stat signatures (trusted unless recorded as too recent) or else the same bytes.
    Fills in ``seen``'s digests; ``digests`` keeps those read, by signature, for a second look."""
    if seen["setup"] != old["setup"]:
        return False
    for path, now, was in zip((ref.audio_path, ref.flame_path, ref.template_path), seen["sources"], old["sources"]):
        if now is None or was is None:
            if now is not was:
                return False
            continue
        if now[0] != was[0] or now[1] is None:
            return False
        if now[1] == was[1] and not old["racy"]:
            now[2] = was[2]
            continue
        if now[1] not in digests:  # hard links share a signature (the inode's), and so their bytes
            digests[now[1]] = content_digest(path)
        now[2] = digests[now[1]]
        if now[2] is None or now[2] != was[2]:
            return False
    return True


def ordered_map(fn, items, workers: int):
    """``map(fn, items)`` on a thread pool with a bounded number of results waiting (memory stays flat)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for x in items:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def plan(refs: list[SampleRef], old: list[dict] | None, data_root: str, digests: dict) -> tuple[list, list]:
    """(per ref: its kept record or None, per ref: what a new record would say of its sources) against
    the ``old`` records (``digests``: see _same_sources). The stat look is one pass; only the samples
    whose signatures changed are compared by content, on threads (that reads files)."""
    by_id = {tuple(rec["id"]): rec for rec in old or ()}
    now = time.time()
    seen = [_look(ref, data_root, now) for ref in refs]
    was = [by_id.get(tuple(s["id"])) for s in seen]

    def trusted(s, w):  # the same setup, paths and signatures, recorded when they were not too recent
        return w is not None and not w["racy"] and s["setup"] == w["setup"] and all(
            (a is None and b is None) or (a is not None and b is not None and a[:2] == b[:2] and a[1] is not None)
            for a, b in zip(s["sources"], w["sources"]))

    def keep(i):
        s, w = seen[i], was[i]
        if trusted(s, w):
            s["sources"] = [None if a is None else [*a[:2], b[2]] for a, b in zip(s["sources"], w["sources"])]
        elif w is None or not _same_sources(refs[i], s, w, digests):
            return None
        return {**w, "sources": s["sources"], "racy": s["racy"]}

    compare = [i for i in range(len(refs)) if was[i] is not None and not trusted(seen[i], was[i])]
    compared = dict(zip(compare, ordered_map(keep, compare, workers())))
    kept = [compared[i] if i in compared else keep(i) for i in range(len(refs))]
    return kept, seen
