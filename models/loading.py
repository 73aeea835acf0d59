"""Checkpoint -> model: the FaceFormer a checkpoint holds, built from its own MODEL section and
framing, with the transformers-free wav2vec2 when the checkpoint records its encoder config
(``record_encoder_config`` adds it to older checkpoints: ``python main/checkpoint.py convert``)."""
from __future__ import annotations

import logging

import torch

from models.checkpoint import check_state_dict, load_checkpoint, plain_values, save_checkpoint
from models.faceformer import FaceFormer
from models.wav2vec import AudioEncoder, AudioEncoderLoadError
from models.wav2vec2_runtime import Wav2Vec2Runtime, rename_weight_norm, unsupported
from utils.config import Config, config_from_dict
from utils.errors import CheckpointError, InferenceError, UserError
from utils.framing import framing_from_config

log = logging.getLogger("inference")


def load_model(path: str, cfg, device: torch.device, logger: logging.Logger | None = None):
    """Checkpoint -> (FaceFormer in eval mode on ``device``, style class names).

    The MODEL section saved in the checkpoint is used (it is what the weights were trained with);
    the config's is only a fallback for checkpoints without one. A checkpoint that records its
    wav2vec2 config (``audio_encoder_config``) gets the transformers-free encoder
    (``runtime_audio_encoder``): no transformers import, no pretrained files.
    """
    logger = logger or log
    ckpt = load_checkpoint(path, mmap=True)  # data only (weights_only), layout checked; CheckpointError otherwise
    styles = [str(s) for s in ckpt["styles"]]
    saved = ckpt.get("config") or {}
    model_cfg = Config(dict(saved["MODEL"])) if saved.get("MODEL") else cfg.MODEL
    # the framing it was trained with (the run config's for checkpoints without their config)
    framing = framing_from_config(saved, f"checkpoint {path}") if "DATA" in saved and "MODEL" in saved \
        else framing_from_config(cfg)
    check_framing(framing, cfg, path)
    fallback = None
    try:
        model = FaceFormer(model_cfg, n_styles=len(styles), framing=framing,
                           audio_encoder=runtime_audio_encoder(ckpt, framing, path, logger))
    except AudioEncoderLoadError as err:
        # The checkpoint holds every weight; the pretrained files are only needed for the wav2vec2
        # architecture. So an offline machine can still run it: build the architecture from
        # MODEL.audio_encoder_config, or Wav2Vec2Config()'s defaults (= wav2vec2-base-960h) when that is
        # unset, with random init; the strict weight check below proves the guess fits.
        logger.warning("%s\nBuilding the wav2vec2 architecture from MODEL.audio_encoder_config (None = "
                       "wav2vec2-base) instead; the checkpoint supplies the weights.", err)
        model = FaceFormer(Config(dict(model_cfg, audio_encoder_pretrained=False)), n_styles=len(styles),
                           framing=framing)
        fallback = err
    # the positional convolution's weight-norm tensors named as in ``model`` (``weight_g/v`` from
    # torch < 2.1 vs ``parametrizations.weight.original0/1``)
    state = rename_weight_norm(dict(ckpt["model"]), "audio_encoder.model.encoder.pos_conv_embed.conv.",
                               model.state_dict())
    try:
        check_state_dict(state, model, path)  # names missing / unexpected / mismatched weights
    except UserError:
        if fallback is None:
            raise
        raise fallback from None
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
        logger.info("checkpoint %s records no wav2vec2 config (an older checkpoint): building it with "
                    "transformers; `python main/checkpoint.py convert %s` records it, so that later runs start "
                    "without importing transformers", path, path)
        return None
    why = unsupported(config)
    if why:
        logger.info("checkpoint %s: wav2vec2 built with transformers (%s is not supported without it)", path, why)
        return None
    model = Wav2Vec2Runtime.empty(config)  # the checkpoint supplies every weight (check_state_dict)
    model.freeze_feature_encoder()
    return AudioEncoder(model, sample_rate=framing.sample_rate, fps=framing.fps)


FACEFORMER_MODULES = ("audio_encoder", "audio_feature_map", "motion_map", "output_map", "style_map", "layers")


def record_encoder_config(path: str, cfg) -> bool:
    """Add ``audio_encoder_config`` to a checkpoint written before it was saved: the model is built once
    as inference builds it (through transformers), and its wav2vec2 config is what later loads use.
    Returns False when the checkpoint already has it. The file is rewritten atomically."""
    ckpt = load_checkpoint(path)
    if ckpt.get("audio_encoder_config") is not None:
        return False
    # checked before a model is built: building one may first fetch wav2vec2, whose error would hide this
    missing = [m for m in FACEFORMER_MODULES if not any(k.startswith(m + ".") for k in ckpt["model"])]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a FaceFormer checkpoint: its weights lack the modules "
                              f"{', '.join(missing)}")
    saved = ckpt.get("config") or {}
    cfg = config_from_dict(saved) if "DATA" in saved and "MODEL" in saved else cfg  # the run config it was trained with
    model, _ = load_model(path, cfg, torch.device("cpu"))
    ckpt["audio_encoder_config"] = plain_values(model.audio_encoder.model.config.to_dict())
    save_checkpoint(ckpt, path)
    load_model(path, cfg, torch.device("cpu"))  # proves the runtime encoder takes every weight
    return True


def check_framing(trained, cfg, path: str):
    """A run config with another framing than the checkpoint's is refused: the audio would be cut into
    frames the model was not trained on."""
    run = framing_from_config(cfg)
    if trained != run:
        raise InferenceError(f"checkpoint {path} was trained with DATA.target_fps={trained.fps}, but this run's "
                             f"config has DATA.target_fps={run.fps}: use the training config or set "
                             f"DATA.target_fps={trained.fps}")
