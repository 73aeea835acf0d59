"""Linear-listener baseline: ridge regression from log-mel audio features (with context) and the style
to the 51-dim motion, fitted in closed form on the training split.

Every model must beat it: a FaceFormer that a linear map of the spectrum beats has not learned what is
said, only something simpler (loudness, the previous frame). Per motion frame the features are the
40-band log-mel (25 ms windows, models/log_mel.py) at the frame's centre and every 20 ms up to
``--context_ms`` either side, each band minus its mean over the clip (so a voice's timbre and the
microphone's colour cancel); plus the style's one-hot, which acts as a per-style intercept. The
ridge weight is chosen on the validation split (vertex error of the generated motion through FLAME;
the first of the grid without one). Results are written like inference's, under
INFER.exp_name=linear_baseline, so main/evaluate.py scores it exactly like a model.

    python scripts/linear_baseline.py --config config/demo.yaml [--overwrite | --resume] [SECTION.key=value ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from dataset.dataset import FaceDataset
from dataset.index import split_jsons
from models.flame import load_flame
from models.log_mel import LogMel
from scripts.baseline_results import baseline_setup, write_baseline_results
from utils.config import flame_path_for
from utils.errors import UserError, run_reporting_user_errors
from utils.framing import framing_from_config

MEL_HOP = 160                 # 10 ms at 16 kHz
CONTEXT_STEP = 2              # mel frames between context taps: 20 ms
RIDGE_GRID = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


class LinearListener:
    """Ridge regression (features, style one-hot) -> motion (51). ``fit`` then ``predict``."""

    def __init__(self, n_styles: int, sample_rate: int, samples_per_frame: float, context_ms: float = 100.0,
                 n_mels: int = 40):
        self.n_styles, self.spf = int(n_styles), float(samples_per_frame)
        self.mel = LogMel(n_mels=n_mels, win=int(0.025 * sample_rate), hop=MEL_HOP, sample_rate=sample_rate)
        self.taps = int(round(context_ms / 1000 * sample_rate / MEL_HOP / CONTEXT_STEP))
        self.mean = self.std = self.weights = None
        self.ridge = None

    def features(self, audio: np.ndarray, n_frames: int) -> np.ndarray:
        """audio (N,) normalised 16 kHz -> (T, (2 taps + 1) n_mels) float64."""
        audio = torch.as_tensor(np.asarray(audio, np.float32))
        if audio.shape[0] < self.mel.win:
            audio = torch.nn.functional.pad(audio, (0, self.mel.win - audio.shape[0]))
        spec = self.mel(audio[None])[0].T.double().numpy()            # (F, n_mels)
        spec = spec - spec.mean(0)
        centre = np.round((self.spf * (np.arange(n_frames) + 0.5) - self.mel.win / 2) / MEL_HOP).astype(int)
        offsets = CONTEXT_STEP * np.arange(-self.taps, self.taps + 1)
        idx = np.clip(centre[:, None] + offsets[None], 0, spec.shape[0] - 1)   # (T, taps)
        return spec[idx].reshape(n_frames, -1)

    def _design(self, feats: np.ndarray, style: int) -> np.ndarray:
        onehot = np.zeros((feats.shape[0], self.n_styles))
        onehot[:, style] = 1.0
        return np.concatenate([(feats - self.mean) / self.std, onehot], axis=1)

    def fit(self, clips, val_clips=None, val_error=None):
        """clips: [(audio (N,), motion (T,51), style int)]; val_clips alike. ``val_error(clip, motion)``
        scores a prediction of a validation clip (lower is better) and picks the ridge weight."""
        feats = [self.features(a, m.shape[0]) for a, m, _ in clips]
        stacked = np.concatenate(feats)
        self.mean, self.std = stacked.mean(0), stacked.std(0) + 1e-8
        X = np.concatenate([self._design(f, s) for f, (_, _, s) in zip(feats, clips)])
        Y = np.concatenate([m for _, m, _ in clips]).astype(np.float64)
        gram, cross = X.T @ X, X.T @ Y
        penalty = np.r_[np.ones(stacked.shape[1]), np.zeros(self.n_styles)]  # style intercepts are not shrunk
        grid = RIDGE_GRID if val_clips and val_error else RIDGE_GRID[2:3]
        best = None
        for ridge in grid:
            self.weights = np.linalg.solve(gram + ridge * np.diag(penalty) + 1e-9 * np.eye(len(penalty)), cross)
            err = float(np.mean([val_error(c, self.predict(c[0], c[1].shape[0], c[2])) for c in val_clips])) \
                if len(grid) > 1 else 0.0
            if best is None or err < best[0]:
                best = (err, ridge, self.weights)
        self.val_error, self.ridge, self.weights = best
        return self

    def predict(self, audio: np.ndarray, n_frames: int, style: int) -> np.ndarray:
        """-> (T, 51) float32 motion at the model's frame rate."""
        return (self._design(self.features(audio, n_frames), style) @ self.weights).astype(np.float32)


def load_clips(cfg, split: str, styles: list[str], log) -> list:
    """[(audio (N,), motion (T,51), style index, shape, dataset)] of a split's training-style samples, whole clips."""
    data = FaceDataset(cfg, split, styles, train=False, check=False, log=log, progress=False)
    clips = []
    for i in range(len(data)):
        item = data[i]
        if int(item["style"]) >= 0:
            clips.append((item["audio"].numpy(), item["motion"].numpy(), int(item["style"]),
                          item["shape"].numpy(), item["dataset"]))
    return clips


def add_options(p):
    p.add_argument("--context_ms", type=float, default=100.0,
                   help="audio context either side of each frame (default 100 ms)")


def main(argv=None):
    args, cfg, styles, mode, log = baseline_setup(argv, __doc__.splitlines()[0], "linear_baseline", add_options)
    if not 0 <= args.context_ms <= 1000:
        raise UserError(f"--context_ms is {args.context_ms:g}; expected milliseconds in [0, 1000]")
    train = load_clips(cfg, "train", styles, log)
    if not train:
        raise UserError("linear_baseline: the training split has no samples")
    has_val = any(split_jsons(d, "val") for d in cfg.DATA.datasets.values())
    val = load_clips(cfg, "val", styles, log) if has_val else []
    flames = {}

    def val_error(clip, motion):
        audio, truth, _, shape, dataset = clip
        if dataset not in flames:
            flames[dataset] = load_flame(flame_path_for(cfg, dataset))
        flame = flames[dataset]
        err = flame.motion_to_vertices(motion, shape) - flame.motion_to_vertices(truth, shape)
        return float(np.mean(np.sum(np.square(err), -1)))

    framing = framing_from_config(cfg)
    model = LinearListener(len(styles), framing.sample_rate, framing.samples_per_frame, args.context_ms)
    model.fit([c[:3] for c in train], val, val_error)
    log.info("linear listener: %d training frames, %d features, ridge %g (validation vertex MSE %.4g)",
             sum(c[1].shape[0] for c in train), model.mean.shape[0], model.ridge, model.val_error)
    write_baseline_results(cfg, styles, lambda item, style: model.predict(
        item["audio"].numpy(), int(item["n_frames"]), style), "linear_baseline", mode, log)


if __name__ == "__main__":
    run_reporting_user_errors("linear_baseline", main)
