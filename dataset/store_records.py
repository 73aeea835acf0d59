"""The prepared-data store's records: how a sample's source files are fingerprinted, and how an index read
from disk is checked before anything in it is believed.

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

import hashlib
import json
import os
import stat

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
