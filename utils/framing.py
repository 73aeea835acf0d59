"""The framing spec: audio sample rate, motion frame rate and motion layout, defined in one place.

The model's audio rate (16 kHz, fixed: wav2vec2 was pretrained on it; audio files of any rate are
resampled to it on load) and ``DATA.target_fps`` decide how audio samples map to motion frames in the
audio encoder, the dataset (crops, trimming) and inference (reading speech, output frame rate).
They reach all three through one ``Framing`` built by ``framing_from_config``, which refuses a frame
rate the model cannot honour:

- ``sample_rate / fps`` must be a whole number of samples (640 at 16 kHz / 25 fps). Frame i then
  covers samples [i * spf, (i + 1) * spf) exactly, so crops, trims and padding never round.
  16 kHz allows e.g. 10, 16, 20, 25, 32, 40, 50 fps, but not 30; a dataset's own frame rate can
  be anything (motion is resampled to ``fps``, and inference can write at the native rate).

A checkpoint's framing is that of the config it was trained with (its saved DATA/MODEL sections).
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.errors import ConfigError

WAV2VEC2_SAMPLE_RATE = 16000   # the rate wav2vec2 was pretrained on
DEFAULT_FPS = 25               # motion frames per second inside the model
MOTION_DIM = 51                # motion vector: 50 expression coefficients + jaw opening
N_EXPR = 50
AUDIO_NORM_EPS = 1e-7          # per-utterance audio normalisation: (x - mean) / sqrt(var + eps)


@dataclass(frozen=True)
class Framing:
    """Audio/motion framing. ``samples_per_frame`` = sample_rate / fps, a whole number."""
    sample_rate: int = WAV2VEC2_SAMPLE_RATE
    fps: float = DEFAULT_FPS
    motion_dim: int = MOTION_DIM
    n_expr: int = N_EXPR

    def __post_init__(self):
        spf = self.sample_rate / self.fps if self.fps > 0 else 0
        if self.sample_rate <= 0 or self.fps <= 0 or spf != int(spf):
            raise ValueError(f"Framing({self.sample_rate} Hz, {self.fps} fps): sample_rate / fps must be a "
                             f"positive whole number of samples per frame")

    @property
    def samples_per_frame(self) -> int:
        return int(self.sample_rate // self.fps)

    def frames_in(self, n_samples: int) -> int:
        """Motion frames covered by n audio samples: round(seconds * fps), halves up."""
        return (2 * int(n_samples) + self.samples_per_frame) // (2 * self.samples_per_frame)

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "fps": self.fps, "motion_dim": self.motion_dim,
                "n_expr": self.n_expr}


DEFAULT_FRAMING = Framing()


def framing_from_config(cfg, where: str = "config") -> Framing:
    """The framing of a config (a Config or the plain dict saved in a checkpoint): its
    ``DATA.target_fps`` at wav2vec2's 16 kHz, with the 51-number motion.

    Raises ConfigError naming the key when the model cannot honour the value (see the module doc)."""
    sr, fps = WAV2VEC2_SAMPLE_RATE, cfg["DATA"].get("target_fps", DEFAULT_FPS)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 1000:
        raise ConfigError(f"{where}: DATA.target_fps is {fps!r}; expected a positive number (at most 1000)")
    if sr / fps != int(sr / fps):
        ok = [f for f in range(10, 61) if sr % f == 0]
        raise ConfigError(f"{where}: DATA.target_fps is {fps}; {sr} Hz / {fps} fps is not a whole number of "
                          f"audio samples per frame. Use one of {', '.join(map(str, ok))} (datasets of any "
                          f"native fps are resampled to it; INFER.output_fps: native writes their own rate)")
    return Framing(sr, int(fps) if float(fps).is_integer() else float(fps), MOTION_DIM, N_EXPR)


def output_fps(cfg, native_fps: float) -> float:
    """The frame rate results are written at: ``INFER.output_fps``, where ``native`` is the sample's own
    rate (its dataset's fps; single-audio and streaming mode have no dataset: the model's fps)."""
    out = cfg["INFER"]["output_fps"]
    return float(native_fps) if out == "native" else float(out)
