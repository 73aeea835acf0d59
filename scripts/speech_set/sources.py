"""Recorded human speech shipped inside Debian packages, with its transcripts; installing what is missing.

    voice     package(s)                                   what                                  licence
    allison   asterisk-core-sounds-en(-g722)               English, female (Allison Smith), G.722 CC-BY-SA-3.0
    carlo     asterisk-core-sounds-it(-g722)               Italian, male (Carlo Flora), G.722    CC-BY-3.0
    ps_male   pocketsphinx-testdata                        English (LibriVox reading, "cards")   BSD-2
    alsa      alsa-utils                                   English, "front left" ... (8 words)   GPL-2

The transcripts are core-sounds-{en,it}.txt.gz (in the non-g722 packages, which the g722 ones depend
on), pocketsphinx's `transcription` files, and the alsa file names. Audio is decoded to 16 kHz mono by
imageio-ffmpeg's bundled ffmpeg (which reads G.722).
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from utils.framing import WAV2VEC2_SAMPLE_RATE as SR

APT_PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-it-g722", "pocketsphinx-testdata", "alsa-utils")
PIP_PACKAGES = ("pocketsphinx>=5",)      # ships the US English acoustic model and CMU dictionary
_AST = "/usr/share/asterisk/sounds"
_PS = "/usr/share/pocketsphinx/test/data"
_ALSA = "/usr/share/sounds/alsa"
CHECK_PATHS = {
    "asterisk-core-sounds-en-g722": f"{_AST}/en_US_f_Allison/hello-world.g722",
    "asterisk-core-sounds-it-g722": f"{_AST}/it_IT_m_Carlo/hello-world.g722",
    "pocketsphinx-testdata": f"{_PS}/librivox/transcription",
    "alsa-utils": f"{_ALSA}/Front_Left.wav",
}
VOICES = {"allison": ("en", "English female, asterisk-core-sounds-en (CC-BY-SA-3.0)"),
          "carlo": ("it", "Italian male, asterisk-core-sounds-it (CC-BY-3.0)"),
          "ps_male": ("en", "English, pocketsphinx-testdata (BSD-2)"),
          "alsa": ("en", "English, alsa-utils test sounds (GPL-2)")}


@dataclass(frozen=True)
class Prompt:
    voice: str
    uid: str          # unique within the voice (file name relative to its folder, without extension)
    path: str
    text: str
    lang: str
    seconds: float    # estimated from the file size (exact after decoding)


class MissingPackages(RuntimeError):
    pass


def ensure_installed(quiet: bool = False) -> None:
    """apt-get / pip install what is missing (as root); otherwise raise with the exact commands."""
    missing_apt = [p for p, f in CHECK_PATHS.items() if not os.path.exists(f)]
    try:
        import pocketsphinx  # noqa: F401
        missing_pip = []
    except ImportError:
        missing_pip = list(PIP_PACKAGES)
    if not missing_apt and not missing_pip:
        return
    apt_cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing_apt]
    pip_cmd = [sys.executable, "-m", "pip", "install", *missing_pip]
    if os.geteuid() != 0 and missing_apt:
        raise MissingPackages("missing Debian packages; run:\n  sudo apt-get update && sudo " + " ".join(apt_cmd)
                              + (f"\n  {' '.join(pip_cmd)}" if missing_pip else ""))
    out = subprocess.DEVNULL if quiet else None
    if missing_apt:
        if shutil.which("apt-get") is None:
            raise MissingPackages(f"no apt-get on this machine; needed: {', '.join(missing_apt)}")
        print(f"installing {' '.join(missing_apt)} (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=out)
        subprocess.run(apt_cmd, check=True, stdout=out, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if missing_pip:
        print(f"installing {' '.join(missing_pip)} (pip)", flush=True)
        subprocess.run(pip_cmd, check=True, stdout=out)
    still = [p for p, f in CHECK_PATHS.items() if not os.path.exists(f)]
    if still:
        raise MissingPackages(f"installed, but still missing files of: {', '.join(still)}")


def _read_asterisk_transcripts(lang: str) -> dict:
    path = f"/usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz"
    out = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip().lstrip("\ufeff")
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            if name.strip():
                out[name.strip()] = text.strip()
    return out


def _g722_seconds(path: str) -> float:
    return os.path.getsize(path) / 8000.0        # G.722 at 64 kbit/s


def list_prompts() -> dict:
    """{voice: [Prompt]} for every recording with a transcript, sorted by uid."""
    out = {}
    for voice, lang, folder in (("allison", "en", "en_US_f_Allison"), ("carlo", "it", "it_IT_m_Carlo")):
        texts = _read_asterisk_transcripts(lang)
        root = os.path.join(_AST, folder)
        prompts = []
        for name, text in texts.items():
            path = os.path.join(root, name + ".g722")
            if os.path.exists(path):
                prompts.append(Prompt(voice, name, path, text, lang, _g722_seconds(path)))
        out[voice] = sorted(prompts, key=lambda p: p.uid)
    prompts = []
    for sub, trans in (("librivox", "transcription"), ("cards", "cards.transcription")):
        with open(os.path.join(_PS, sub, trans)) as f:
            for line in f:
                m = re.match(r"\s*(.*?)\s*\(([^)]+)\)\s*$", line)
                if not m:
                    continue
                text = re.sub(r"</?s>", "", m.group(1)).strip()
                path = os.path.join(_PS, sub, m.group(2) + ".wav")
                if os.path.exists(path):
                    prompts.append(Prompt("ps_male", f"{sub}/{m.group(2)}", path, text, "en",
                                          (os.path.getsize(path) - 44) / (2 * SR)))
    out["ps_male"] = sorted(prompts, key=lambda p: p.uid)
    prompts = []
    for name in sorted(os.listdir(_ALSA)) if os.path.isdir(_ALSA) else []:
        if name.endswith(".wav") and name != "Noise.wav":
            path = os.path.join(_ALSA, name)
            prompts.append(Prompt("alsa", name[:-4], path, name[:-4].replace("_", " "), "en",
                                  (os.path.getsize(path) - 44) / (2 * 48000)))
    out["alsa"] = prompts
    return out


def decode(path: str) -> np.ndarray:
    """Any audio file ffmpeg reads (G.722 included) -> float32 (N,) at 16 kHz mono."""
    import imageio_ffmpeg
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path,
           "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    raw = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    return np.frombuffer(raw, np.float32).copy()
