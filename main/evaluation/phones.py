"""Phone timings of a clip's audio, for the lip-closure check of main/evaluation/lipsync.py (English).

Where the phones come from (``mode="auto"``), first found wins; with neither, the clip has no phones:
1. an alignment file beside the audio, ``<audio stem>.phones.json``: ``[[phone, start s, end s], ...]``
   (or ``{"phones": [...]}``), ARPAbet labels, stress digits allowed; from any aligner;
2. a transcript: meta.json's ``transcript``, the sample's dataset JSON entry ``transcript`` (when a
   config names the JSON), or ``<audio stem>.txt`` / ``<audio stem>.lab`` beside the audio; it is
   forced-aligned with pocketsphinx 5 (its US English model and CMU dictionary, offline), the aligner
   of main/evaluation/align.py, also used to build the held-out speech set: words, then phones, 10 ms frames;
``mode="recognise"`` ignores all of these and recognises the phones from the audio alone (alignment-free):
pocketsphinx's all-phone search with the phone language model it ships. Rougher: it confuses phones
and misses short closures, so closure fractions measured this way are lower for every motion, true
ones included; use it for clips without text.

pocketsphinx is installed by ``pip install pocketsphinx`` (scripts/make_speech_set.py does it); it is
imported only when a transcript has to be aligned or phones recognised.
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from dataset.audio import load_audio
from dataset.index import split_jsons
from main.evaluation.align import FRAME_S, Aligner, normalise
from utils.config import resolve_data_path
from utils.errors import DataError, UserError
from utils.framing import WAV2VEC2_SAMPLE_RATE as SR

log = logging.getLogger("lipsync.phones")

BILABIALS = frozenset({"P", "B", "M"})
MODES = ("auto", "recognise", "none")


class PhonesError(UserError, RuntimeError):
    """Phones were asked for and cannot be had (pocketsphinx missing, unreadable alignment file)."""


def clean_label(label: str) -> str:
    """'AH0' -> 'AH', 'sil' / '<sil>' / '+NSN+' -> 'SIL'."""
    s = re.sub(r"\d+$", "", str(label).strip().upper())
    return s if re.fullmatch(r"[A-Z]+", s) else "SIL"


def read_alignment(path: str) -> list[tuple[str, float, float]]:
    """An alignment file -> [(phone, start s, end s)] sorted by start; a bad file -> PhonesError."""
    try:
        with open(path) as f:
            data = json.load(f)
        rows = data["phones"] if isinstance(data, dict) else data
        phones = [(clean_label(p), float(a), float(b)) for p, a, b in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PhonesError(f"{path}: expected a JSON list of [phone, start s, end s] ({e})") from None
    if any(b < a for _, a, b in phones):
        raise PhonesError(f"{path}: a phone ends before it starts")
    return sorted(phones, key=lambda p: p[1])


def _beside(audio_path: str, suffix: str) -> str:
    return os.path.splitext(audio_path)[0] + suffix


def alignment_path(audio_path: str) -> str:
    """Where a clip's phone alignment lies: ``<audio stem>.phones.json`` beside the audio."""
    return _beside(audio_path, ".phones.json")


def find_transcript(audio_path: str, meta: dict | None, entry: dict | None) -> tuple[str | None, str]:
    """-> (transcript text or None, where it came from)."""
    for src, d in (("meta.json", meta), ("dataset JSON", entry)):
        if d and isinstance(d.get("transcript"), str) and d["transcript"].strip():
            return d["transcript"], src
    for suffix in (".txt", ".lab"):
        path = _beside(audio_path, suffix)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(), os.path.basename(path)
    return None, ""


def dataset_entries(cfg) -> dict:
    """{(dataset, sample_id): raw JSON entry} over every split JSON of the config (for ``transcript``)."""
    out = {}
    for name, ds_cfg in cfg.DATA.datasets.items():
        for split in ("train", "val", "test"):
            for rel in split_jsons(ds_cfg, split):
                path = resolve_data_path(cfg, rel)
                try:
                    with open(path) as f:
                        index = json.load(f)
                except (OSError, ValueError):
                    continue  # evaluation only looks for transcripts here; check_data reports bad JSONs
                if isinstance(index, dict):
                    out.update({(name, sid): e for sid, e in index.items() if isinstance(e, dict)})
    return out


class PhoneSource:
    """Phones of clips, by the rules of the module docstring; one pocketsphinx decoder of each kind."""

    def __init__(self, mode: str = "auto", entries: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"phones mode must be one of {MODES}, got {mode!r}")
        self.mode, self.entries = mode, entries or {}
        self._aligner = self._recogniser = None

    def phones(self, audio_path: str, audio: np.ndarray, meta: dict | None) -> tuple[list | None, str]:
        """16 kHz audio of the clip -> ([(phone, start, end)] or None, source or why there are none)."""
        if self.mode == "none":
            return None, "not asked (--phones none)"
        if self.mode == "recognise":
            return self._recognise(audio), "phone recognition"
        path = alignment_path(audio_path)
        if os.path.isfile(path):
            try:
                return read_alignment(path), os.path.basename(path)
            except PhonesError as e:  # one bad file costs its clip the P/B/M check, not the whole report
                log.warning("%s; the clip is scored without phones", e)
                return None, f"alignment file unreadable: {e}"
        entry = self.entries.get(((meta or {}).get("dataset"), (meta or {}).get("sample_id")))
        text, src = find_transcript(audio_path, meta, entry)
        if text is None:
            return None, "no alignment or transcript (--phones recognise: phones from the audio alone)"
        phones, why = self._align(audio, text)
        if phones is None:
            log.warning("%s: transcript from %s not aligned (%s)", audio_path, src, why)
            return None, f"transcript not aligned: {why}"
        return phones, f"transcript ({src}), forced alignment"

    def _align(self, audio: np.ndarray, text: str) -> tuple[list | None, str]:
        words = normalise(text, "en")
        if not words:
            return None, "no words in the transcript"
        if self._aligner is None:
            _need_pocketsphinx()
            self._aligner = Aligner()
        words, why = self._aligner.dictionary_words(words, "en")
        if words is None:
            return None, why
        try:
            return self._aligner.align(audio, words), ""
        except RuntimeError as e:
            return None, str(e)

    def _recognise(self, audio: np.ndarray) -> list:
        if self._recogniser is None:
            _need_pocketsphinx()
            from pocketsphinx import Decoder, get_model_path
            lm = os.path.join(get_model_path(), "en-us", "en-us-phone.lm.bin")
            # the settings pocketsphinx documents for phone recognition: a strong phone LM weight and
            # wide beams (the default beams prune most phone hypotheses)
            self._recogniser = Decoder(samprate=SR, allphone=lm, lw=2.0, beam=1e-20, pbeam=1e-20, loglevel="FATAL")
        dec = self._recogniser
        dec.start_utt()
        dec.process_raw((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        dec.end_utt()
        return [(clean_label(s.word), s.start_frame * FRAME_S, (s.end_frame + 1) * FRAME_S) for s in dec.seg()]


def _need_pocketsphinx():
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        raise PhonesError("aligning a transcript or recognising phones needs pocketsphinx 5: pip install "
                          "pocketsphinx (or --phones none to skip the lip-closure check)") from None


def load_audio_16k(path: str | None) -> np.ndarray:
    """The clip's audio, mono 16 kHz float32; a missing path -> DataError."""
    if not path:
        raise DataError("meta.json has no audio_path (audio read from stdin is not kept)")
    return load_audio(path, SR)
