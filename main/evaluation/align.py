"""Forced phone alignment of a transcript with pocketsphinx 5 (PyPI; its US English acoustic model and
CMU dictionary, offline), and the transcript normalisation it needs. Used by the lip-closure check's
phone source (main/evaluation/phones.py) and by the held-out speech set (scripts/make_speech_set.py).

English: the transcript's words (numbers spelled out) are looked up in pocketsphinx's CMU dictionary
(an utterance with a word that is not there is not aligned); pocketsphinx aligns the words (first
pass) and then the phones (second pass), 10 ms frames. Italian (rougher): Italian spelling is close to
phonemic, so each word is converted by rules (c/g before e/i, ch, gh, gn, gli, sc, qu, double
consonants, ...) to the nearest US English phones and added to the dictionary; the same English
acoustic model then aligns them. Vowels, bilabials and labiodentals (what drives the lips) are
rendered well by this; Italian-only sounds (trilled r, open/closed e and o) get the closest phone.

pocketsphinx is imported when an ``Aligner`` is made, so reading this module does not need it.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np

from utils.framing import WAV2VEC2_SAMPLE_RATE

# The phones an alignment is labelled with: ARPAbet without stress digits, and SIL for silence or noise.
PHONES = frozenset("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
                   "UH UW V W Y Z ZH SIL".split())
FRAME_S = 0.01
_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_IT_ONES = ("zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici "
            "quindici sedici diciassette diciotto diciannove").split()
_IT_TENS = "_ _ venti trenta quaranta cinquanta sessanta settanta ottanta novanta".split()


def number_words(n: int, lang: str) -> str | None:
    """0-999 in English, 0-99 in Italian; None otherwise."""
    if lang == "en":
        if n < 20:
            return _EN_ONES[n]
        if n < 100:
            return _EN_TENS[n // 10] + ("" if n % 10 == 0 else " " + _EN_ONES[n % 10])
        if n < 1000:
            rest = number_words(n % 100, "en") if n % 100 else ""
            return f"{_EN_ONES[n // 100]} hundred {rest}".strip()
        return None
    if n < 20:
        return _IT_ONES[n]
    if n < 100:
        tens, unit = _IT_TENS[n // 10], n % 10
        if unit in (1, 8):
            tens = tens[:-1]            # ventuno, ventotto
        return tens + ("" if unit == 0 else _IT_ONES[unit])
    return None


def _it_fix_lost_accents(text: str) -> str:
    """The Italian transcript lost some accented vowels to '?': 'è' alone, 'può', 'così', 'più', 'sarà'."""
    text = re.sub(r"(?<!\w)\?(?!\w)", "è", text)
    for stem, vowel in (("pu", "ò"), ("cos", "ì"), ("pi", "ù"), ("perch", "é"), ("gi", "à")):
        text = re.sub(rf"\b({stem})\?", rf"\1{vowel}", text, flags=re.IGNORECASE)
    return re.sub(r"(\w)\?", r"\1à", text)


def normalise(text: str, lang: str) -> list | None:
    """Transcript -> lower-case words (numbers spelled out), or None for non-speech ('[beep tone]')."""
    if "[" in text or not text.strip():
        return None
    if lang == "it":
        text = _it_fix_lost_accents(text)
        text = re.sub(r"[’']", "", text)                      # l'ultimo -> lultimo (one phonetic word)
    text = text.lower().replace("&", " and ").replace("#", " pound ").replace("*", " star ")
    words = []
    for tok in re.split(r"[\s\-/]+", text):
        tok = tok.strip(".,;:!?\"“”…()'")
        if not tok:
            continue
        if tok.isdigit():
            spelled = number_words(int(tok), lang)
            if spelled is None:
                return None
            words += spelled.split()
            continue
        if lang == "it":
            tok = "".join(c for c in unicodedata.normalize("NFD", tok) if unicodedata.category(c) != "Mn")
        tok = re.sub(r"[^a-z']", "", tok).strip("'")
        if tok:
            words.append(tok)
    return words or None


_IT_SIMPLE = {"b": "B", "d": "D", "f": "F", "l": "L", "m": "M", "n": "N", "p": "P", "r": "R", "s": "S",
              "t": "T", "v": "V", "k": "K", "w": "W", "j": "Y", "x": "K S", "z": "T S", "y": "IY"}
_IT_VOWEL = {"a": "AA", "e": "EH", "i": "IY", "o": "AO", "u": "UW"}


def italian_phones(word: str) -> str:
    """Italian spelling (lower case, no accents) -> space-separated US English phones."""
    w, out, i = word, [], 0
    vowels = "aeiou"
    while i < len(w):
        c, n1, n2 = w[i], w[i + 1:i + 2], w[i + 2:i + 3]
        if c == n1 and c not in vowels:              # double consonant: one (longer) phone
            i += 1
            continue
        if w.startswith("gli", i):                   # gli + vowel: L Y; "gli" alone: L IY
            after = w[i + 3:i + 4]
            out += ["L", "Y"] if after and after in vowels else ["L", "IY"]
            i += 3
            continue
        if c in "cg" and n1 == "h":
            out.append("K" if c == "c" else "G")
            i += 2
            continue
        if c == "g" and n1 == "n":
            out += ["N", "Y"]
            i += 2
            continue
        if c == "s" and n1 == "c" and n2 in ("e", "i"):
            out.append("SH")
            i += 3 if n2 == "i" and w[i + 3:i + 4] and w[i + 3:i + 4] in vowels else 2   # sci + vowel: i silent
            continue
        if c in "cg" and n1 in ("e", "i"):
            out.append("CH" if c == "c" else "JH")
            i += 2 if n1 == "i" and n2 and n2 in vowels else 1          # cia, gio: i silent
            continue
        if c == "q" and n1 == "u":
            out += ["K", "W"]
            i += 2
            continue
        if c in "cg":
            out.append("K" if c == "c" else "G")
        elif c == "h":
            pass
        elif c in vowels:
            prev_cons = i > 0 and w[i - 1] not in vowels
            glide = c in "iu" and n1 and n1 in vowels and prev_cons
            out.append(("Y" if c == "i" else "W") if glide else _IT_VOWEL[c])
        elif c in _IT_SIMPLE:
            out += _IT_SIMPLE[c].split()
        i += 1
    return " ".join(out)


class Aligner:
    """One pocketsphinx decoder, reused for every utterance (words are added to its dictionary)."""

    def __init__(self):
        from pocketsphinx import Decoder
        self.dec = Decoder(samprate=WAV2VEC2_SAMPLE_RATE, bestpath=False, loglevel="FATAL")
        self._added = set()

    def dictionary_words(self, words: list, lang: str) -> tuple:
        """-> (decoder words, None) or (None, reason) when a word has no pronunciation."""
        if lang == "it":
            keys = ["it_" + w for w in words]
            new = {k: italian_phones(w) for k, w in zip(keys, words) if k not in self._added}
            if not all(new.values()):
                return None, "a word without phones"
            for i, (k, phones) in enumerate(new.items()):      # rebuild the search once, at the last
                self.dec.add_word(k, phones, update=i == len(new) - 1)
                self._added.add(k)
            return keys, None
        missing = [w for w in words if self.dec.lookup_word(w) is None]
        return (None, f"not in the dictionary: {' '.join(missing)}") if missing else (words, None)

    def align(self, audio: np.ndarray, words: list) -> list:
        """16 kHz float audio + dictionary words -> [(phone, start s, end s)] covering the audio;
        silences and noises are 'SIL'. Raises RuntimeError when the aligner fails."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
        self.dec.set_align_text(" ".join(words))
        self.dec.start_utt()
        self.dec.process_raw(pcm, full_utt=True)
        self.dec.end_utt()
        if self.dec.hyp() is None:
            raise RuntimeError("word alignment failed")
        self.dec.set_alignment()
        self.dec.start_utt()
        self.dec.process_raw(pcm, full_utt=True)
        self.dec.end_utt()
        alignment = self.dec.get_alignment()
        if alignment is None:
            raise RuntimeError("phone alignment failed")
        phones = []
        for word in alignment:
            for ph in word:
                label = ph.name if ph.name in PHONES and ph.name != "SIL" else "SIL"
                t0, t1 = ph.start * FRAME_S, (ph.start + ph.duration) * FRAME_S
                if phones and label == "SIL" and phones[-1][0] == "SIL":
                    phones[-1] = ("SIL", phones[-1][1], t1)
                else:
                    phones.append((label, t0, t1))
        if not any(p != "SIL" for p, _, _ in phones):
            raise RuntimeError("no phones aligned")
        end = len(audio) / WAV2VEC2_SAMPLE_RATE
        if phones[-1][2] < end - 1e-6:
            phones.append(("SIL", phones[-1][2], end))
        return phones
