"""A result folder -> ``animation.glb`` (glTF 2.0 binary) and its audio ``animation.wav`` beside it.

The glb holds the FLAME mesh in the result's identity, FLAME's expression basis and the pose correctives
of the moving joints as morph targets, FLAME's five joints as a skin, and the animation at the result's
fps (the mathematics: main/exporting/flame_gltf.py; the bytes: main/exporting/glb_binary.py). glTF has no
audio standard, so the audio goes beside the glb as a 16 kHz mono WAV (the model's input), named in
``asset.extras.audio``. Both files are written whole or not at all (utils/atomic.py); main/export.py
keeps existing ones unless --overwrite.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf

from dataset.audio import load_audio
from main.exporting.flame_gltf import flame_to_gltf, motion_pose
from main.exporting.glb_binary import encode_glb
from main.results.layout import GLB_FILE
from utils.atomic import atomic_write
from utils.errors import ResultsError
from utils.framing import N_EXPR, WAV2VEC2_SAMPLE_RATE

log = logging.getLogger("export")


def glb_files(result, out: str | None = None) -> list[str]:
    """The files ``write_glb`` writes: the glb (``out``, default ``DIR/animation.glb``), and its audio beside
    it as ``<out stem>.wav`` when the result has an audio file."""
    glb = os.path.abspath(out or result.out(GLB_FILE))
    has_audio = result.audio is not None and os.path.isfile(result.audio)  # None: a stream from stdin
    return [glb, os.path.splitext(glb)[0] + ".wav"] if has_audio else [glb]


def write_glb(result, out: str | None = None) -> str:
    """``result`` (main/exporting/result.py ExportResult) -> the files of ``glb_files``, each replacing
    any file there. Returns the glb's path."""
    files = glb_files(result, out)
    if not os.path.isdir(os.path.dirname(files[0])):
        raise ResultsError(f"cannot write {files[0]}: its folder does not exist")
    anim = flame_to_gltf(result.flame, result.shape, result.motion[:, :N_EXPR], motion_pose(result.motion))
    wav = files[1] if len(files) > 1 else None
    if result.audio and not wav:
        log.warning("the result's audio %s is gone: the glb is written without it", result.audio)
    extras = {"fps": result.fps, "n_frames": int(result.motion.shape[0]),
              "audio": os.path.basename(wav) if wav else None, "sample_id": result.meta.get("sample_id"),
              "flame_model": result.flame_path, "identity": result.meta.get("identity"), "up": "+Y", "units": "metres"}
    data = encode_glb(anim, result.fps, extras)
    if wav:
        audio = np.clip(load_audio(result.audio, WAV2VEC2_SAMPLE_RATE), -1.0, 1.0)
        _write(wav, lambda tmp: sf.write(tmp, audio, WAV2VEC2_SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    _write(files[0], lambda tmp: _write_bytes(tmp, data))
    return files[0]


def _write_bytes(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _write(path: str, save):
    """``save(tmp)`` then renamed to ``path``; an OSError -> ResultsError naming it (nothing left behind)."""
    try:
        atomic_write(path, save)
    except OSError as e:
        raise ResultsError(f"cannot write {path}: {e.strerror or e}") from None
