"""wav2vec2 audio encoder: load (or build), freeze the CNN, resample features to the motion frame rate.

FaceFormer interpolates the wav2vec2 CNN features (one per 320 samples, ~50 Hz) to the motion frame
count *before* the feature projection and the transformer, so the transformer runs at 25 fps and
its output frame i is aligned with motion frame i. We do the same, but with time-aligned positions:
motion frame i covers samples [640 i, 640 (i+1)) at 16 kHz / 25 fps and is read from the CNN
features at the time of its centre. The positions depend only on the frame index, not on the padded
length of a batch, so a clip gives the same features alone or padded in a batch.

    enc = build_audio_encoder(cfg.MODEL)
    h = enc(audio (B,N), n_frames=T, audio_mask=(B,N) bool)          # (B,T,H)
    h = enc.encode_long(audio (N,), T, window_frames=750, overlap_frames=50)  # (1,T,H), bounded memory
    f = enc.cnn_features(audio (N,))                 # (C,F) whole-clip CNN features, chunk by chunk
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from models.block_encoder import BlockCache, NormState, causal_group_norm, causal_normalise, encode_masked
from models.conv0_moments import Conv0Moments
from models.log_mel import frontend_config, install_frontend
from utils.errors import UserError
from utils.framing import DEFAULT_FPS, WAV2VEC2_SAMPLE_RATE

FETCH_HINT = (
    "Get the weights with internet access once, either\n"
    "  hf download facebook/wav2vec2-base-960h    (older huggingface_hub: huggingface-cli download ...;\n"
    "                                              it goes to the Hugging Face cache), or\n"
    "  git clone https://huggingface.co/facebook/wav2vec2-base-960h /path/to/wav2vec2-base-960h\n"
    "    and set MODEL.audio_encoder_repo=/path/to/wav2vec2-base-960h,\n"
    "or run without them (random init from MODEL.audio_encoder_config) with "
    "MODEL.audio_encoder_pretrained=false."
)


class AudioEncoderLoadError(UserError, OSError):
    """The pretrained wav2vec2 weights could not be loaded; the message says how to get them."""


def _looks_like_path(repo: str) -> bool:
    # a hub id is "name" or "org/name"; anything else (absolute, ./, ~, deeper) is meant as a folder
    return (repo.startswith(("/", ".", "~")) or repo.count("/") > 1 or os.sep != "/" and os.sep in repo)


def _load_pretrained(repo: str):
    from transformers import Wav2Vec2Model

    if os.path.isdir(os.path.expanduser(repo)):
        try:
            return Wav2Vec2Model.from_pretrained(os.path.expanduser(repo))
        except Exception as e:  # a folder without (valid) config/weights
            raise AudioEncoderLoadError(
                f"MODEL.audio_encoder_repo={repo}: could not load a wav2vec2 model from this folder "
                f"({type(e).__name__}: {e}).\n{FETCH_HINT}") from e
    if _looks_like_path(repo):
        raise AudioEncoderLoadError(f"MODEL.audio_encoder_repo={repo}: no such folder.\n{FETCH_HINT}")
    # The cache first: it needs no network, so a cached model loads at once on an offline machine
    # (the online attempt below retries for ~20 s before giving up when there is no network).
    try:
        return Wav2Vec2Model.from_pretrained(repo, local_files_only=True)
    except Exception:
        pass
    try:
        return Wav2Vec2Model.from_pretrained(repo)
    except Exception as e:  # OSError offline; httpx/requests errors on some hub versions
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
            "not in the local cache and it could not be downloaded"
        raise AudioEncoderLoadError(
            f"MODEL.audio_encoder_repo={repo}: pretrained wav2vec2 weights unavailable ({why}; "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).\n{FETCH_HINT}") from e


def build_audio_encoder(model_cfg, sample_rate: int = WAV2VEC2_SAMPLE_RATE, fps: float = DEFAULT_FPS) -> "AudioEncoder":
    """MODEL section -> AudioEncoder.

    ``audio_encoder_pretrained: true`` loads ``audio_encoder_repo`` (hub id or local folder) and
    ignores ``audio_encoder_config``; ``false`` builds a randomly initialised model from
    ``audio_encoder_config`` (Wav2Vec2Config kwargs; None = the wav2vec2-base architecture), with the
    front end ``audio_frontend`` names (``cnn``: wav2vec2's; ``logmel``: models/log_mel.py).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = dict(model_cfg)
    overrides = dict(cfg.get("audio_encoder_config") or {})
    if cfg.get("audio_encoder_pretrained", True):
        model = _load_pretrained(str(cfg.get("audio_encoder_repo")))
    else:
        model = Wav2Vec2Model(Wav2Vec2Config(**frontend_config(overrides, cfg.get("audio_frontend", "cnn"),
                                                               sample_rate)))
        install_frontend(model)
    # LayerDrop skips random transformer layers in training. Under DDP (no find_unused_parameters)
    # a skipped layer's parameters get no gradient and the step fails, and ranks would skip different
    # layers, so it is off unless the config asks for it explicitly.
    model.config.layerdrop = float(overrides.get("layerdrop", 0.0))
    # SpecAugment lives in Wav2Vec2Model.forward, which we do not call (we run the submodules), so it
    # is already inactive; say so in the config too and freeze its learned mask vector, which would
    # otherwise be a trainable parameter that never gets a gradient (DDP rejects those).
    model.config.apply_spec_augment = False
    if getattr(model, "masked_spec_embed", None) is not None:
        model.masked_spec_embed.requires_grad_(False)
    if cfg.get("freeze_feature_encoder", True):
        model.freeze_feature_encoder()
    # in the wav2vec2 config, so that a checkpoint rebuilds the same encoder (models/block_encoder.py)
    model.config.encoder_block_frames = int(cfg.get("encoder_block_frames") or 0)
    model.config.encoder_left_frames = int(cfg.get("encoder_left_frames") or 0)
    model.config.encoder_lookahead_frames = int(cfg.get("encoder_lookahead_frames") or 0)
    return AudioEncoder(model, sample_rate=sample_rate, fps=fps)


class AudioEncoder(nn.Module):
    """A Wav2Vec2Model run step by step: CNN -> resample to motion frames -> projection -> transformer.

    Padding (``audio_mask``): a clip's features in a padded batch equal its features encoded alone,
    in train and eval mode, for both ``feat_extract_norm`` variants.
    - CNN: with ``group`` norm (wav2vec2-base) the first layer's GroupNorm normalises each channel
      over the whole length it is given, so a padded batch is run through the CNN clip by clip on
      each clip's own audio. With ``layer`` norm (per time step) a feature computed from real
      samples only is the same in a padded batch, so one batched pass is exact.
    - Resampling reads positions that depend only on the frame index (see ``resample``).
    - Transformer: padded frames are zeroed (so the positional convolution sees the zeros it sees
      at a lone clip's end) and masked as attention keys. Clip alone = no padding, no mask: HF's
      advice to give wav2vec2-base no attention mask is about zero-padded batches, which the mask
      here makes equal to unpadded clips.
    Output frames past a clip's end are zeros.
    """

    def __init__(self, model, sample_rate: int = WAV2VEC2_SAMPLE_RATE, fps: float = DEFAULT_FPS):
        super().__init__()
        self.model = model
        config = model.config
        self.hidden_size = config.hidden_size
        self.samples_per_frame = sample_rate / fps  # 640 at 16 kHz / 25 fps
        self.group_norm = config.feat_extract_norm == "group"
        # CNN geometry: total stride and receptive field of the conv stack (320 / 400 for wav2vec2)
        self.kernels, self.strides = list(config.conv_kernel), list(config.conv_stride)
        self.stride = math.prod(self.strides)
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self.receptive_field = rf
        # block-causal (trained for streaming, models/block_encoder.py) when > 0
        self.block = int(getattr(config, "encoder_block_frames", 0) or 0)
        self.left = int(getattr(config, "encoder_left_frames", 0) or 0)
        self.lookahead = int(getattr(config, "encoder_lookahead_frames", 0) or 0)

    def frame_overhang(self) -> int:
        """Samples past a frame's end that its CNN features read (80 at 16 kHz / 25 fps): frame i reads
        features up to 2i + 1 (``resample``), whose window ends stride (2i + 1) + rf. The encoder's own
        lookahead (``lookahead`` frames) comes on top."""
        per_frame = int(self.samples_per_frame) // self.stride
        return self.stride * (per_frame - 1) + self.receptive_field - int(self.samples_per_frame)

    @property
    def cnn_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.feature_extractor.parameters())

    def cnn_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Number of CNN features computed from n samples (no padding in the convolutions)."""
        n = n_samples
        for k, s in zip(self.kernels, self.strides):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n

    def frame_lengths(self, audio_mask: torch.Tensor | None, n_frames: int, batch: int, device) -> torch.Tensor:
        """Real motion frames per clip (B,): the frames in its samples as utils/framing.py ``frames_in``
        counts them (round(samples / 640), halves up), clamped to [1, n_frames]."""
        if audio_mask is None:
            return torch.full((batch,), n_frames, dtype=torch.long, device=device)
        spf = int(self.samples_per_frame)
        return torch.div(2 * audio_mask.long().sum(1) + spf, 2 * spf, rounding_mode="floor").clamp(1, n_frames)

    def resample(self, feats: torch.Tensor, n_frames: int, n_valid: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of CNN features at the motion frame centres.

        feats (B,C,F), n_valid (B,) real CNN features per clip -> (B,T,C).
        Feature j covers samples [stride j, stride j + rf), centred at stride j + rf/2; frame i is
        centred at spf (i + 1/2), so it reads position p_i = (spf i + spf/2 - rf/2) / stride,
        clamped to the clip's own last real feature (not the padded batch's).
        """
        B, C, _ = feats.shape
        i = torch.arange(n_frames, device=feats.device, dtype=torch.float64)
        pos = (self.samples_per_frame * (i + 0.5) - self.receptive_field / 2) / self.stride
        last = (n_valid - 1).clamp(min=0).to(torch.float64)[:, None]  # (B,1)
        pos = torch.minimum(pos[None].clamp(min=0), last)             # (B,T)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, last.long())
        w = (pos - lo).to(feats.dtype)[:, None]                        # (B,1,T)
        lo = lo[:, None].expand(B, C, n_frames)
        hi = hi[:, None].expand(B, C, n_frames)
        out = feats.gather(2, lo) * (1 - w) + feats.gather(2, hi) * w
        return out.transpose(1, 2)

    def forward(self, audio: torch.Tensor, n_frames: int, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        """audio (B,N) normalised 16 kHz, right-padded; audio_mask (B,N) True = real -> (B,T,H)."""
        B, N = audio.shape
        if N < self.receptive_field:
            raise ValueError(f"audio of {N} samples is shorter than the wav2vec2 receptive field "
                             f"({self.receptive_field} samples)")
        n_samples = audio_mask.long().sum(1) if audio_mask is not None else \
            torch.full((B,), N, dtype=torch.long, device=audio.device)
        n_valid = self.cnn_lengths(n_samples).clamp(min=1)
        if self.block:
            audio = causal_normalise(audio)
        cnn = self.model.feature_extractor
        # a frozen CNN needs no graph: saves its activations' memory in training
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cnn_frozen):
            if self.block:  # causal: a clip's features are the same in a padded batch
                x = self.resample(self.cnn_causal(audio[:, None]), n_frames, n_valid)
            elif self.group_norm and bool((n_samples < N).any()):
                # GroupNorm statistics over each clip's own audio. A clip shorter than the receptive
                # field (a few ms; refused when alone, above) keeps the zeros the CNN needs.
                rf = self.receptive_field
                x = torch.cat([self.resample(cnn(audio[b:b + 1, :max(n, rf)]), n_frames, n_valid[b:b + 1])
                               for b, n in enumerate(n_samples.tolist())])  # (B,T,C)
            else:
                x = self.resample(cnn(audio), n_frames, n_valid)        # (B,T,C)
        x = self.model.feature_projection(x)[0]                         # (B,T,H)
        lengths = self.frame_lengths(audio_mask, n_frames, B, audio.device)
        if self.block:
            frame_mask = torch.arange(n_frames, device=audio.device)[None] < lengths[:, None]  # (B,T)
            h = encode_masked(self.model, x, self.block, self.left, self.lookahead,
                              None if bool(frame_mask.all()) else frame_mask)
            return h.masked_fill(~frame_mask[..., None], 0.0)
        if bool((lengths == n_frames).all()):
            return self.model.encoder(x)[0]                             # tuple or ModelOutput -> (B,T,H)
        frame_mask = torch.arange(n_frames, device=audio.device)[None] < lengths[:, None]  # (B,T)
        # HF zeroes padded frames before its positional convolution too (4.40 and 5.x); done here
        # as well so that exactness does not rest on that detail
        x = x.masked_fill(~frame_mask[..., None], 0.0)
        h = self.model.encoder(x, attention_mask=frame_mask)[0]
        return h.masked_fill(~frame_mask[..., None], 0.0)

    def cnn_features(self, audio: torch.Tensor, chunk_features: int = 250) -> torch.Tensor:
        """The CNN features of a whole clip, computed chunk by chunk -> (C, F), F = cnn_lengths(N).

        audio (N,). Equal (to float rounding) to one CNN forward over the whole clip, with memory
        bounded by the chunk (``chunk_features`` features = 320 x that many samples; the first
        layers' activations, 512 channels at 3.2 kHz, are the big ones) instead of the clip.
        - A chunk of features [j0, j1) reads samples [320 j0, 320 (j1 - 1) + rf): it starts at a
          multiple of the total stride, hence of every layer's stride, so each layer's outputs are
          those of the whole clip and the chunks tile exactly.
        - Group norm (wav2vec2-base): layer 0's GroupNorm normalises each channel over the whole
          clip, so a first pass accumulates its per-channel mean and variance over all of layer 0's
          outputs (float64 sums, chunk by chunk), and the second pass normalises every chunk with
          them. Layer norm (per time step) needs no statistics: chunking alone is exact.
        """
        N = audio.shape[-1]
        if N < self.receptive_field:
            raise ValueError(f"audio of {N} samples is shorter than the wav2vec2 receptive field "
                             f"({self.receptive_field} samples)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cnn_frozen):
            stats = self._layer0_stats(audio, chunk_features) if self.group_norm and not self.block else None
            state = NormState()  # block-causal: the first layer's running sums, chunk to chunk
            F = int(self.cnn_lengths(torch.tensor(N)))
            out = None  # (C, F), filled in place: a list + cat would hold the features twice
            for j0 in range(0, F, chunk_features):
                j1 = min(j0 + chunk_features, F)
                x = audio[self.stride * j0:self.stride * (j1 - 1) + self.receptive_field]
                h = self.cnn_causal(x[None, None], state, j1 - j0)[0] if self.block else \
                    self.cnn_chunk(x[None, None], stats)[0]             # (C, j1-j0)
                out = h.new_empty(h.shape[0], F) if out is None else out
                out[:, j0:j1] = h
        return out

    def _layer0_stats(self, audio: torch.Tensor, chunk_features: int):
        """Whole-clip per-channel mean and variance of the first conv's outputs: (C,), (C,) float64."""
        moments = Conv0Moments(self.kernels[0], self.strides[0])
        moments.add(audio, chunk=chunk_features * self.stride)
        return moments.mean_var(self.model.feature_extractor.conv_layers[0].conv)

    def cnn_chunk(self, x: torch.Tensor, stats=None, eps: float | None = None) -> torch.Tensor:
        """The CNN over a piece of audio x (1,1,n) -> (1,C,F), as HF's Wav2Vec2FeatureEncoder.

        With group norm, ``stats`` = (mean, var), each (C,), replaces the statistics layer 0's
        GroupNorm would take from x: those of the whole clip (Wav2Vec2GroupNormConvLayer is conv ->
        GroupNorm -> activation; its affine weight and bias are applied as usual). ``eps`` replaces
        the GroupNorm's own (for statistics in other units, see models/streaming.py).
        """
        layers = self.model.feature_extractor.conv_layers
        if stats is not None:
            l0, (mean, var) = layers[0], stats
            eps = l0.layer_norm.eps if eps is None else eps
            scale = l0.layer_norm.weight.double() / torch.sqrt(var + eps)  # (C,)
            shift = l0.layer_norm.bias.double() - mean * scale
            x = l0.conv(x)
            x = l0.activation(x * scale.to(x.dtype)[:, None] + shift.to(x.dtype)[:, None])
            layers = layers[1:]
        for layer in layers:
            x = layer(x)
        return x

    def cnn_causal(self, x: torch.Tensor, state: NormState | None = None, features: int | None = None):
        """The CNN of a block-causal encoder over x (B,1,n) -> (B,C,F). With group norm, the first layer's
        GroupNorm is ``causal_group_norm``: ``state`` holds its sums before x and is moved on to where the
        next piece starts, ``features`` CNN features later (pieces overlap by the receptive field)."""
        layers = self.model.feature_extractor.conv_layers
        if not self.group_norm:
            for layer in layers:
                x = layer(x)
            return x
        l0 = layers[0]
        keep = None if features is None else features * self.stride // self.strides[0]
        x = l0.activation(causal_group_norm(l0.conv(x), l0.layer_norm, state, keep))
        for layer in layers[1:]:
            x = layer(x)
        return x

    def encode_long(self, audio: torch.Tensor, n_frames: int, window_frames: int,
                    overlap_frames: int, chunk_features: int = 250) -> torch.Tensor:
        """Encode one long clip in overlapping windows, stitched by a linear cross-fade -> (1,T,H).

        The CNN runs once over the whole clip in chunks (``cnn_features``: the whole-clip features,
        GroupNorm statistics included, with memory bounded by the chunk). The transformer runs per
        window: window k covers frames [k (W - O), k (W - O) + W) and sees the CNN features of its
        own audio span, resampled as ``forward`` would for that span alone. Consecutive windows
        overlap by O frames, where the earlier one fades out and the later one fades in (weights sum
        to 1): no seam. Only the transformer's context is limited to the window.
        With T <= W this is exactly ``forward``.
        """
        if audio.dim() == 2:
            if audio.shape[0] != 1:
                raise ValueError("encode_long takes one clip: audio (N,) or (1,N)")
            audio = audio[0]
        T, W, O = int(n_frames), int(window_frames), int(overlap_frames)
        if self.block:
            return self.encode_blocks(audio, T, chunk_features)
        if T <= W:
            return self.forward(audio[None], T)
        if not 0 <= 2 * O < W:
            raise ValueError(f"overlap_frames ({O}) must be >= 0 and less than half of window_frames ({W})")
        feats = self.cnn_features(audio, chunk_features)                # (C, F)
        F = feats.shape[1]
        step = W - O
        starts = [0]
        while starts[-1] + W < T:
            starts.append(starts[-1] + step)
        spf = self.samples_per_frame
        ramp = torch.arange(1, O + 1, device=audio.device, dtype=audio.dtype) / (O + 1)  # fade-in
        out = None
        for k, s in enumerate(starts):
            e = min(s + W, T)
            # the window's span starts at a multiple of 640 samples, i.e. at CNN feature a
            a0, a1 = int(round(s * spf)), min(int(round(e * spf)), audio.shape[0])
            first = min(a0 // self.stride, F - 1)
            n_valid = max(1, min(int(self.cnn_lengths(torch.tensor(a1 - a0))), F - first))
            x = self.resample(feats[None, :, first:first + n_valid], e - s, torch.tensor([n_valid]))  # (1,e-s,C)
            x = self.model.feature_projection(x)[0]
            h = self.model.encoder(x)[0][0]                             # (e-s, H)
            w = torch.ones(e - s, device=h.device, dtype=h.dtype)
            if O and k > 0:
                w[:O] = ramp
            if O and k < len(starts) - 1:
                w[-O:] = 1 - ramp
            if out is None:
                out = h.new_zeros(T, h.shape[1])
            out[s:e] = out[s:e] + w[:, None] * h
        return out[None]

    def encode_blocks(self, audio: torch.Tensor, n_frames: int, chunk_features: int = 250) -> torch.Tensor:
        """A block-causal encoder over one clip of any length, block by block -> (1,T,H): equal to
        ``forward`` (nothing looks past a block), with the transformer's memory bounded by its left context."""
        state, step = NormState(), 1 << 20  # normalised piece by piece: float64 sums of a long clip are big
        audio = torch.cat([causal_normalise(audio[None, a:a + step], state)[0] for a in range(0, audio.shape[0], step)])
        feats = self.cnn_features(audio, chunk_features)               # (C, F)
        x = self.resample(feats[None], n_frames, torch.tensor([feats.shape[1]], device=feats.device))
        x = self.model.feature_projection(x)[0]                        # (1,T,H)
        cache = BlockCache(self.model, self.block, self.left, self.lookahead)
        cache.push(x)
        return cache.pop(n_frames, final=True)
