"""Inference set-up: the checkpoint to use, the model it holds, and the INFER / framing checks that
must pass before anything is generated or written (used by main/inference.py, main/stream.py and the
scripts)."""
from __future__ import annotations

import logging
import os

import torch

from main.checkpoint import check_state_dict, load_checkpoint
from utils.config import Config, config_from_dict
from utils.errors import UserError
from utils.framing import framing_from_config

log = logging.getLogger("inference")


class InferenceError(UserError, RuntimeError):
    """Inference cannot run as asked (bad audio, unknown style, existing results, ...); the message
    names the file, key or folder and what was expected."""


class AudioError(InferenceError):
    """An audio file that cannot be used: missing, empty, corrupt or shorter than one frame."""

def results_mode(overwrite: bool, resume: bool) -> str:
    """--overwrite / --resume (or INFER.overwrite / INFER.resume) -> main/results.py's select_todo mode."""
    if overwrite and resume:
        raise InferenceError("--overwrite (INFER.overwrite) and --resume (INFER.resume) exclude each other: "
                             "redo all results, or keep the complete ones")
    return "overwrite" if overwrite else "resume" if resume else "new"

def resolve_checkpoint(cfg, checkpoint: str | None) -> str:
    path = checkpoint or cfg.INFER.checkpoint or os.path.join(cfg.TRAIN.save_path, "best_model.pth")
    if not os.path.isfile(path):
        how = ("--checkpoint" if checkpoint else "INFER.checkpoint" if cfg.INFER.checkpoint
               else "TRAIN.save_path (best_model.pth in it)")
        raise InferenceError(f"checkpoint not found: {path} (from {how}); train first (python train.py "
                             f"--config ...) or pass --checkpoint PATH")
    return path


def load_model(path: str, cfg, device: torch.device, logger: logging.Logger | None = None):
    """Checkpoint -> (FaceFormer in eval mode on ``device``, style class names).

    The MODEL section saved in the checkpoint is used (it is what the weights were trained with);
    the config's is only a fallback for checkpoints without one. A checkpoint that records its
    wav2vec2 config (``audio_encoder_config``) gets the transformers-free encoder
    (``runtime_audio_encoder``): no transformers import, no pretrained files.
    """
    from models.faceformer import FaceFormer
    from models.wav2vec import AudioEncoderLoadError

    logger = logger or log
    ckpt = load_checkpoint(path, mmap=True)  # data only (weights_only), layout checked; CheckpointError otherwise
    styles = [str(s) for s in ckpt["styles"]]
    saved = (ckpt.get("config") or {}).get("MODEL")
    model_cfg = Config(dict(saved)) if saved else cfg.MODEL
    framing = checkpoint_framing(ckpt, cfg, path)
    state = ckpt["model"]
    try:
        model = FaceFormer(model_cfg, n_styles=len(styles), framing=framing,
                           audio_encoder=runtime_audio_encoder(ckpt, framing, path, logger))
    except AudioEncoderLoadError as err:
        # The checkpoint holds every weight; the pretrained files are only needed for the wav2vec2
        # architecture. So an offline machine can still run it: build the architecture from
        # MODEL.audio_encoder_config, or Wav2Vec2Config()'s defaults (= wav2vec2-base-960h) when that is
        # unset, with random init; the strict load_state_dict below proves the guess fits.
        logger.warning("%s\nBuilding the wav2vec2 architecture from MODEL.audio_encoder_config (None = "
                       "wav2vec2-base) instead; the checkpoint supplies the weights.", err)
        offline_cfg = Config(dict(model_cfg, audio_encoder_pretrained=False))
        model = FaceFormer(offline_cfg, n_styles=len(styles), framing=framing)
        try:
            state = match_weight_norm_names(state, model)
            check_state_dict(state, model, path)
        except UserError:
            raise err from None
    else:
        state = match_weight_norm_names(state, model)
        check_state_dict(state, model, path)  # names missing / unexpected / mismatched weights
    model.load_state_dict(state)
    model.to(device).eval()
    logger.info("checkpoint %s (epoch %s), %d style classes: %s", path, ckpt.get("epoch", "?"), len(styles),
                styles)
    return model, styles


def runtime_audio_encoder(ckpt: dict, framing, path: str, logger: logging.Logger):
    """The checkpoint's wav2vec2 built without transformers (models/wav2vec2_runtime.py), wrapped in an
    AudioEncoder, or None (-> FaceFormer builds it with transformers) for a checkpoint without
    ``audio_encoder_config`` (written before it was saved) or one the runtime cannot reproduce."""
    config = ckpt.get("audio_encoder_config")
    if config is None:
        logger.info("checkpoint %s records no wav2vec2 config (written before 2026-11-25): building it with "
                    "transformers; `python main/checkpoint.py convert %s` records it, so that later runs start "
                    "without importing transformers", path, path)
        return None
    from models.wav2vec import AudioEncoder
    from models.wav2vec2_runtime import Wav2Vec2Runtime, unsupported

    why = unsupported(config)
    if why:
        logger.info("checkpoint %s: wav2vec2 built with transformers (%s is not supported without it)", path, why)
        return None
    model = Wav2Vec2Runtime.empty(config)  # the checkpoint supplies every weight (check_state_dict)
    model.freeze_feature_encoder()
    return AudioEncoder(model, sample_rate=framing.sample_rate, fps=framing.fps)


def record_encoder_config(path: str, cfg) -> bool:
    """Add ``audio_encoder_config`` to a checkpoint written before it was saved: the model is built once
    as inference builds it (through transformers), and its wav2vec2 config is what later loads use.
    Returns False when the checkpoint already has it. The file is rewritten atomically."""
    from main.checkpoint import plain_values, save_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.get("audio_encoder_config") is not None:
        return False
    saved = ckpt.get("config") or {}
    cfg = config_from_dict(saved) if "DATA" in saved and "MODEL" in saved else cfg  # the run config it was trained with
    model, _ = load_model(path, cfg, torch.device("cpu"))
    ckpt["audio_encoder_config"] = plain_values(model.audio_encoder.model.config.to_dict())
    save_checkpoint(ckpt, path)
    load_model(path, cfg, torch.device("cpu"))  # proves the runtime encoder takes every weight
    return True


def match_weight_norm_names(state: dict, model) -> dict:
    """The checkpoint's weights with the wav2vec2 positional convolution's weight-norm tensors named as
    in ``model`` (``weight_g/v`` from torch < 2.1 vs ``parametrizations.weight.original0/1``)."""
    from models.wav2vec2_runtime import rename_weight_norm

    return rename_weight_norm(dict(state), "audio_encoder.model.encoder.pos_conv_embed.conv.", model.state_dict())


def checkpoint_framing(ckpt: dict, cfg, path: str):
    """The framing the checkpoint was trained with (its saved DATA/MODEL sections; the run config's
    for checkpoints without them). A run config with another framing is refused: the audio would be
    cut into frames the model was not trained on."""
    saved = ckpt.get("config") or {}
    trained = framing_from_config(saved, f"checkpoint {path}") if "DATA" in saved and "MODEL" in saved \
        else framing_from_config(cfg)
    check_framing(trained, cfg, path)
    return trained


def check_framing(trained, cfg, path: str):
    run = framing_from_config(cfg)
    if trained != run:
        raise InferenceError(f"checkpoint {path} was trained with DATA.sample_rate={trained.sample_rate}, "
                             f"DATA.target_fps={trained.fps}, but this run's config has DATA.sample_rate="
                             f"{run.sample_rate}, DATA.target_fps={run.fps}: use the training config or set "
                             f"DATA.target_fps={trained.fps} DATA.sample_rate={trained.sample_rate}")


def pick_condition_style(cfg, styles: list[str]) -> str:
    """INFER.condition_style (checked) or the first training style."""
    name = cfg.INFER.condition_style
    if name is None:
        return styles[0]
    if str(name) not in styles:
        raise InferenceError(f"INFER.condition_style is '{name}', which is not a trained style; trained "
                             f"styles: {', '.join(styles)}")
    return str(name)


def window_frames(cfg) -> tuple[int, int]:
    """(window, overlap) in frames from INFER.window_seconds / overlap_seconds, checked."""
    w, o = cfg.INFER.window_seconds, cfg.INFER.overlap_seconds
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (w, o)) or w <= 0:
        raise InferenceError(f"INFER.window_seconds ({w!r}) must be a positive number of seconds and "
                             f"INFER.overlap_seconds ({o!r}) a number")
    fps = framing_from_config(cfg).fps
    window, overlap = max(1, int(round(w * fps))), int(round(o * fps))
    if not 0 <= 2 * overlap < window:
        raise InferenceError(f"INFER.overlap_seconds ({o}) must be >= 0 and less than half of "
                             f"INFER.window_seconds ({w})")
    return window, overlap


def attention_window(cfg) -> int | None:
    """INFER.attention_window checked: frames the decoder attends (None = unbounded, from 0)."""
    w = cfg.INFER.attention_window
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or w != int(w):
        raise InferenceError(f"INFER.attention_window is {w!r}; expected a whole number of frames (0 = unbounded)")
    return int(w) or None


def check_infer_config(cfg):
    """INFER values that would otherwise fail late, after some results were written."""
    window_frames(cfg)
    attention_window(cfg)
    b = cfg.INFER.batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise InferenceError(f"INFER.batch_size is {b!r}; expected a positive integer")
    framing_from_config(cfg)  # DATA.sample_rate / DATA.target_fps the model can honour (ConfigError)


def choose_style(cfg, styles: list[str], style: str | None, logger: logging.Logger | None = None) -> str:
    """Single-audio and streaming mode's ``--style``: checked, or INFER.condition_style / the first style."""
    if style is None:
        style = pick_condition_style(cfg, styles)
        (logger or log).info("no --style given: conditioning on '%s' (trained styles: %s)", style, ", ".join(styles))
    elif style not in styles:
        raise InferenceError(f"--style '{style}' is not a trained style; trained styles: {', '.join(styles)}")
    return style
