"""One sample: a JSON index entry (``SampleRef``) -> normalised mono audio + 51-dim FLAME motion of the
same duration, framed by ``utils.framing`` (16 kHz audio and 25 fps motion by default;
``DATA.sample_rate`` / ``DATA.target_fps``).

Reading the parameter files is dataset/flame_files.py (what they hold: dataset/flame_params.py),
reading audio dataset/audio.py. ``load_item`` trims audio and motion to the same length, exactly
``T * samples_per_frame`` samples (640 at 16 kHz / 25 fps). Errors a user can cause raise
``DataError`` naming the JSON index, the sample id and the data file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dataset.audio import fit_audio_to_frames, load_audio, normalize_audio
from dataset.flame_files import load_flame_params
from dataset.flame_params import detail_from_params, load_shape, motion_from_params, shape_from_params
from utils.errors import DataError
from utils.framing import DEFAULT_FRAMING, Framing


@dataclass
class SampleRef:
    """One entry of a JSON index, paths already resolved against DATA.data_root."""
    sample_id: str
    dataset: str           # the config's dataset name (DATA.datasets key)
    json_path: str
    audio_path: str
    flame_path: str
    speaker: str
    emotion: str | None
    style_id: str          # output folder name
    fmt: str               # a key of utils/trackers.py FORMATS
    fps: float             # native fps of the FLAME tracking
    valid_frames_num: int | None = None
    template_path: str | None = None

    @property
    def where(self) -> str:
        """Prefix for messages: the JSON file and the sample id."""
        return f"{self.json_path}: sample '{self.sample_id}'"


def sample_shape(ref: "SampleRef", params: dict | None = None) -> np.ndarray | None:
    """A sample's identity shape (S,) float32 or None: the per-subject template's if the JSON names
    one (``template_save_path``), else the FLAME file's (``params``, if already loaded)."""
    shape = load_shape(ref.template_path, ref.fmt) if ref.template_path else None
    if shape is None:
        if params is None:
            with load_flame_params(ref.flame_path) as params:
                return shape_from_params(params, ref.fmt, ref.flame_path)
        shape = shape_from_params(params, ref.fmt, ref.flame_path)
    return shape


def load_item(ref: SampleRef, framing: Framing | None = None, max_av_diff: float = 0.5,
              log: logging.Logger | None = None) -> dict:
    """Load one sample: normalised audio and motion of the same duration.

    Returns dict(audio (N,) float32 normalised, motion (T,51) float32, shape (S,) float32 or None,
    detail (128,) float32 or None (the FLAME file's ``detailcode``), n_frames T, native_fps,
    notes list[str]) with N == T * framing.samples_per_frame exactly (default framing: 16 kHz,
    25 fps). Audio and motion are trimmed to the shorter; when their durations differ by more than
    ``max_av_diff`` seconds a note is added (and logged as a warning if ``log`` is given). Audio is
    zero-padded by less than one frame when its length is not a whole number of frames.
    Raises DataError naming the JSON file, the sample id and the data file.
    """
    fr = framing or DEFAULT_FRAMING
    sr, fps, hop = fr.sample_rate, fr.fps, fr.samples_per_frame
    try:
        # only the keys of the motion, shape and detail are decoded from the parameter file
        with load_flame_params(ref.flame_path) as params:
            motion = motion_from_params(params, ref.fmt, ref.fps, fps, ref.valid_frames_num, ref.flame_path)
            shape = sample_shape(ref, params)
            detail = detail_from_params(params, ref.flame_path)
        audio = load_audio(ref.audio_path, sr)
    except DataError as e:
        raise DataError(f"{ref.where}: {e}") from None

    notes = []
    n_motion = motion.shape[0]
    n_audio = fr.frames_in(audio.shape[0])
    diff = abs(audio.shape[0] / sr - n_motion / fps)
    if diff > max_av_diff:
        msg = (f"{ref.where}: audio {ref.audio_path} is {audio.shape[0] / sr:.2f} s but motion "
               f"{ref.flame_path} is {n_motion / fps:.2f} s (differ by {diff:.2f} s > "
               f"DATA.max_av_diff {max_av_diff} s); both trimmed to the shorter")
        notes.append(msg)
        if log is not None:
            log.warning(msg)
    t = min(n_motion, n_audio)
    if t < 2:
        raise DataError(f"{ref.where}: audio {ref.audio_path} ({audio.shape[0] / sr:.3f} s) and motion "
                        f"overlap by {t} frame(s); expected at least 2 frames")
    # normalised before the (< 1 frame) zero padding: the statistics are of the speech alone
    audio = fit_audio_to_frames(normalize_audio(audio[: t * hop]), t, hop)
    return {"audio": audio, "motion": np.ascontiguousarray(motion[:t]), "shape": shape, "detail": detail,
            "n_frames": t, "native_fps": ref.fps, "notes": notes}
