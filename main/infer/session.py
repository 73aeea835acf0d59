"""An inference session: what every mode needs before it generates (``open_session``), and the INFER
settings' rules (conditioning style, long-audio windows, attention window, streaming chunking), each
checked where it is read, so a bad value fails before anything is written.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from models.flame import load_flame
from models.loading import check_framing, load_model
from models.streaming import STREAM_FLAGS, check_stream_value
from utils.config import flame_path_for
from utils.errors import ConfigError, InferenceError
from utils.framing import framing_from_config
from utils.runtime import pick_device

log = logging.getLogger("inference")


@dataclass
class Session:
    """A loaded checkpoint ready to generate: ``model`` (FaceFormer, eval mode, on ``device``), its
    style class names, and the checkpoint's absolute path (recorded in every meta.json)."""
    cfg: object
    checkpoint: str
    model: torch.nn.Module
    styles: list[str]
    device: torch.device

    def flame(self, dataset: str | None = None):
        """The FLAME model of ``dataset`` (its ``flame_model`` or FLAME.model_path; None: the latter),
        loaded once per file and device (models/flame.py ``load_flame``)."""
        return load_flame(flame_path_for(self.cfg, dataset), device=self.device)


def open_session(cfg, checkpoint: str | None = None, logger: logging.Logger | None = None,
                 loaded: tuple | None = None) -> Session:
    """--checkpoint / INFER.checkpoint / TRAIN.save_path's best model -> Session on INFER.device, once the
    INFER settings pass ``check_infer_config``.
    ``loaded``: a ``(model, styles)`` pair from ``load_model`` to reuse (several files, benchmarks)."""
    logger = logger or log
    check_infer_config(cfg)
    path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = loaded or load_model(path, cfg, device, logger)  # load_model checks the framing
    if loaded:
        check_framing(model.framing, cfg, path)
        device = next(model.parameters()).device
    return Session(cfg, path, model, list(styles), device)


def resolve_checkpoint(cfg, checkpoint: str | None, pass_it: str = "pass --checkpoint PATH") -> str:
    """The checkpoint to load: ``checkpoint``, INFER.checkpoint or TRAIN.save_path's best model; ``pass_it``
    tells the user how the command in use takes another."""
    path = checkpoint or cfg.INFER.checkpoint or os.path.join(cfg.TRAIN.save_path, "best_model.pth")
    if not os.path.isfile(path):
        how = ("--checkpoint" if checkpoint else "INFER.checkpoint" if cfg.INFER.checkpoint
               else "TRAIN.save_path (best_model.pth in it)")
        raise InferenceError(f"checkpoint not found: {path} (from {how}); train first (python train.py "
                             f"--config ...) or {pass_it}")
    return path


# ---- INFER settings ------------------------------------------------------------------------------

def window_frames(cfg) -> tuple[int, int]:
    """(window, overlap) in frames from INFER.window_seconds / overlap_seconds (each range-checked when the
    config is loaded); the overlap must stay under half the window."""
    w, o = cfg.INFER.window_seconds, cfg.INFER.overlap_seconds
    fps = framing_from_config(cfg).fps
    window, overlap = max(1, int(round(w * fps))), int(round(o * fps))
    if not 0 <= 2 * overlap < window:
        raise InferenceError(f"INFER.overlap_seconds ({o}) must be >= 0 and less than half of "
                             f"INFER.window_seconds ({w})")
    return window, overlap


def attention_window(cfg) -> int | None:
    """INFER.attention_window: frames the decoder attends (None = unbounded, from 0)."""
    return int(cfg.INFER.attention_window) if cfg.INFER.attention_window else None


def check_infer_config(cfg):
    """What the key-by-key checks of config loading cannot see and would otherwise fail late, after some
    results were written: the window rule and a framing the model can honour."""
    window_frames(cfg)


def stream_settings(cfg, request=None) -> dict:
    """Streamer keyword arguments from INFER.stream_* / INFER.attention_window and a stream request's
    chunk_ms, lookahead_ms, left_context_ms, warmup_ms (the --flags of the same names; they override the
    config), each checked against its config key's range (``check_stream_value``). A user error names
    the flag or key."""
    values = {}
    for flag, key in STREAM_FLAGS.items():
        given = getattr(request, flag, None)
        name, where = (f"INFER.{key}", "config") if given is None else (f"--{flag} (INFER.{key})", "command line")
        try:
            values[flag] = check_stream_value(flag, cfg.INFER[key] if given is None else given, name, where)
        except ConfigError as e:  # an inference run's errors are InferenceErrors
            raise InferenceError(str(e)) from None
    return dict(values, attention_window=attention_window(cfg))
