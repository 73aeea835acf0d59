"""A result folder -> ``animation.glb`` (glTF 2.0 binary) and its audio ``animation.wav`` beside it.

The glb holds the FLAME mesh in the result's identity, FLAME's expression basis and the pose correctives
of the moving joints as morph targets, FLAME's five joints as a skin, and the animation at the result's
fps (the mathematics: main/exporting/flame_gltf.py; the bytes: main/exporting/glb_binary.py). glTF has no
audio standard, so the audio goes beside the glb as a 16 kHz mono WAV (the model's input), named in
``asset.extras.audio``. Both files are written whole or not at all (utils/atomic.py); an existing file is
replaced only with ``overwrite``.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf

from dataset.audio import load_audio
from main.exporting.flame_gltf import flame_to_gltf, motion_pose
from main.exporting.glb_binary import encode_glb
from main.exporting.result import read_source
from main.results.layout import GLB_FILE
from models.flame import load_flame
from utils.atomic import atomic_write
from utils.errors import ResultsError
from utils.framing import N_EXPR, WAV2VEC2_SAMPLE_RATE

log = logging.getLogger("export")


def write_glb(folder: str, out: str | None = None, overwrite: bool = False, flame_model: str | None = None) -> str:
    """The result in ``folder`` -> ``out`` (default ``folder/animation.glb``) and the audio as ``<out stem>.wav``
    beside it. Returns the glb's path. ``flame_model``: see main/exporting/result.py ``read_source``."""
    src = read_source(folder, flame_model)
    out = os.path.abspath(out or os.path.join(src.folder, GLB_FILE))
    wav = os.path.splitext(out)[0] + ".wav"       # animation.glb -> animation.wav (layout.GLB_AUDIO)
    audio = _audio(src.audio)
    for path in (out, wav) if audio is not None else (out,):
        if os.path.exists(path) and not overwrite:
            raise ResultsError(f"{path} already exists; rerun with --overwrite to replace it, or choose another --out")
    if not os.path.isdir(os.path.dirname(out)):
        raise ResultsError(f"cannot write {out}: its folder does not exist")
    flame = load_flame(src.flame_model)
    if src.shape is not None and src.shape.shape[0] > flame.n_shape:
        raise ResultsError(f"{os.path.join(src.folder, 'meta.json')}: its shape has {src.shape.shape[0]} "
                           f"coefficients; the FLAME model {src.flame_model} has {flame.n_shape}")
    anim = flame_to_gltf(flame, src.shape, src.motion[:, :N_EXPR], motion_pose(src.motion))
    extras = {"fps": src.fps, "n_frames": int(src.motion.shape[0]), "audio": os.path.basename(wav) if audio is not None
              else None, "sample_id": src.meta.get("sample_id"), "flame_model": src.flame_model,
              "identity": src.meta.get("identity"), "up": "+Y", "units": "metres"}
    data = encode_glb(anim, src.fps, extras)
    if audio is not None:
        _write(wav, lambda tmp: sf.write(tmp, audio, WAV2VEC2_SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    _write(out, lambda tmp: _write_bytes(tmp, data))
    return out


def _audio(path: str | None) -> np.ndarray | None:
    """The result's audio at 16 kHz mono, or None (a stream from stdin; a file no longer there: logged)."""
    if path is None:
        return None
    if not os.path.isfile(path):
        log.warning("the result's audio %s is gone: the glb is written without it", path)
        return None
    return np.clip(load_audio(path, WAV2VEC2_SAMPLE_RATE), -1.0, 1.0)


def _write_bytes(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _write(path: str, save):
    """``save(tmp)`` then renamed to ``path``; an OSError -> ResultsError naming it (nothing left behind)."""
    try:
        atomic_write(path, save)
    except OSError as e:
        raise ResultsError(f"cannot write {path}: {e.strerror or e}") from None
