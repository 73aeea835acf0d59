"""FaceFormer (Fan et al., CVPR 2022) predicting 51-dim FLAME motion (50 expression + jaw opening).

    audio (B,N) --wav2vec2, resampled to 25 fps--> (B,T,H) --Linear--> feats (B,T,d)
    decoder input t: motion_map(motion[t-1]) + style, motion[-1] = 0, + periodic positional encoding
    decoder layer (post-LN): biased causal self-attention -> aligned cross-attention -> feed-forward
    output_map (zero-initialised) -> motion (B,T,51)

Training is teacher-forced (``forward``); inference is autoregressive (``generate``) with a key/value
cache, so each new frame costs one decoder step on one query instead of a pass over the whole prefix
(the original method, kept for tests and benchmarks, is scripts/reference_decoding.py). Both paths use
the same start input (motion[-1] = 0), unlike the official code, and nothing has a maximum length: the
attention bias and the positional encoding are computed for the positions at hand. The decoder layer,
the bias and the encoding are models/decoder_layer.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.decoder_layer import DecoderLayer, alibi_bias, alibi_slopes, periodic_positional_encoding
from models.wav2vec import build_audio_encoder
from utils.config_schema import TRAIN_MODES
from utils.framing import DEFAULT_FRAMING, Framing


def shift_motion(motion: torch.Tensor) -> torch.Tensor:
    """Decoder inputs from target motion (B,T,51) -> (B,T,51): row t is motion[t-1], row 0 is zero."""
    return F.pad(motion[:, :-1], (0, 0, 1, 0))


class FaceFormer(nn.Module):
    """FaceFormer(cfg.MODEL, n_styles, framing). style: long class indices (B,) in [0, n_styles).
    ``framing`` (utils.framing, from ``framing_from_config(cfg)``; default 16 kHz / 25 fps) sets the
    audio samples per motion frame of the encoder; it is kept as ``self.framing``. ``audio_encoder``: a
    prebuilt AudioEncoder to use instead of building one from ``model_cfg`` (models/loading.py passes
    the transformers-free one for inference from a checkpoint)."""

    def __init__(self, model_cfg, n_styles: int, framing: Framing | None = None, audio_encoder=None):
        super().__init__()
        self.framing = framing or DEFAULT_FRAMING
        d, self.motion_dim = model_cfg["feature_dim"], self.framing.motion_dim
        self.d, self.n_styles, self.period = d, n_styles, int(model_cfg["period"])
        self.n_head = model_cfg["n_head"]
        ff_dim = model_cfg.get("ff_dim")
        ff_dim = 2 * d if ff_dim is None else int(ff_dim)  # null: 2 x feature_dim, as FaceFormer
        self.audio_encoder = audio_encoder if audio_encoder is not None else \
            build_audio_encoder(model_cfg, self.framing.sample_rate, self.framing.fps)
        self.audio_feature_map = nn.Linear(self.audio_encoder.hidden_size, d)
        self.motion_map = nn.Linear(self.motion_dim, d)
        self.style_map = nn.Linear(n_styles, d, bias=False)
        self.ppe_dropout = nn.Dropout(model_cfg["dropout"])
        self.layers = nn.ModuleList([
            DecoderLayer(d, self.n_head, ff_dim, model_cfg["dropout"])
            for _ in range(model_cfg["num_layers"])])
        self.output_map = nn.Linear(d, self.motion_dim)
        # zero output at the start, as FaceFormer does: training starts from the neutral face
        nn.init.zeros_(self.output_map.weight)
        nn.init.zeros_(self.output_map.bias)
        self.register_buffer("slopes", alibi_slopes(self.n_head), persistent=False)

    # ---- pieces ------------------------------------------------------------------------------
    def style_embedding(self, style: torch.Tensor) -> torch.Tensor:
        """style (B,) long -> (B,d), the style map applied to a one-hot."""
        if style.dtype not in (torch.int64, torch.int32) or style.dim() != 1:
            raise ValueError(f"style must be a (B,) tensor of class indices, got {style.dtype} {tuple(style.shape)}")
        if style.numel() and (int(style.min()) < 0 or int(style.max()) >= self.n_styles):
            raise ValueError(f"style indices {style.tolist()} outside [0, {self.n_styles}): map untrained "
                             f"speakers to a training style (INFER.condition_style) first")
        return self.style_map(F.one_hot(style.long(), self.n_styles).to(self.style_map.weight.dtype))

    def encode(self, audio, n_frames: int, audio_mask=None, window_frames=None, overlap_frames=None):
        """audio (B,N) -> audio features (B,T,d) at 25 fps.

        With window_frames set and T > window_frames, each clip is encoded on its own in overlapping
        windows (AudioEncoder.encode_long) so memory stays bounded for audio of any length.
        """
        enc = self.audio_encoder
        if window_frames is None or n_frames <= window_frames:
            return self.audio_feature_map(enc(audio, n_frames, audio_mask))
        B = audio.shape[0]
        lengths = enc.frame_lengths(audio_mask, n_frames, B, audio.device)
        n_samples = audio_mask.long().sum(1) if audio_mask is not None else [audio.shape[1]] * B
        feats = audio.new_zeros(B, n_frames, enc.hidden_size)
        for b in range(B):
            T_b = int(lengths[b])
            feats[b, :T_b] = enc.encode_long(audio[b, :int(n_samples[b])], T_b, window_frames,
                                             overlap_frames or 0)[0]
        return self.audio_feature_map(feats)

    def _decoder_input(self, prev_motion, style_emb, pe):
        """prev_motion (B,T,51), style_emb (B,d), pe (T,d) -> (B,T,d): motion map + style + PPE, dropout."""
        return self.ppe_dropout(self.motion_map(prev_motion) + style_emb[:, None] + pe)

    def _run_layers(self, x, feats, bias, caches=None, crosses=None):
        for i, layer in enumerate(self.layers):
            x = layer(x, feats, bias, None if caches is None else caches[i],
                      None if crosses is None else crosses[i])
        return self.output_map(x)

    # ---- teacher forcing ---------------------------------------------------------------------
    def decode(self, feats, style, prev_motion, motion_mask=None):
        """Teacher-forced decoder. feats (B,T,d), style (B,), prev_motion (B,T,51) the decoder inputs
        (row t = motion[t-1], row 0 = zeros; see shift_motion), motion_mask (B,T) True = real frame
        -> (B,T,51). Causal attention: frame t depends on frames <= t only, so right padding never
        changes real frames; the key padding mask keeps that true for any padding layout."""
        T = feats.shape[1]
        pe = periodic_positional_encoding(T, self.d, self.period).to(feats)
        x = self._decoder_input(prev_motion, self.style_embedding(style), pe)
        pos = torch.arange(T, device=feats.device)
        bias = alibi_bias(self.slopes, pos, pos, self.period)            # (h,T,T)
        if motion_mask is not None:
            # padded keys are hidden; a query always keeps its own key, so no softmax row is empty
            keep = motion_mask.bool()[:, None, :] | torch.eye(T, dtype=torch.bool, device=bias.device)
            bias = torch.where(keep[:, None], bias, float("-inf"))            # (B,h,T,T)
        return self._run_layers(x, feats, bias)

    TRAIN_MODES = TRAIN_MODES  # the names TRAIN.mode accepts (utils/config_schema.py)

    def forward(self, audio, motion, style, motion_mask=None, audio_mask=None, mode: str = "teacher_forcing",
                sampling_prob: float = 0.0, passes: int = 1, input_noise: float = 0.0, rollout_steps: int = 1):
        """Training pass. audio (B,N), motion (B,T,51), style (B,), masks True = real -> (B,T,51).

        mode:
        - teacher_forcing: one parallel decoder pass fed with the ground truth.
        - parallel_sampling: parallel scheduled sampling (Duckworth et al. 2019), ``passes`` + 1
          parallel passes; see decode_sampled.
        - parallel_rollout: ``rollout_steps`` + 1 parallel passes with gradients through all, each fed
          the previous pass's predictions: the model's own k-step rollout from every frame at once
          (see decode_unrolled).
        - scheduled_rollout: the autoregressive rollout where each step is fed the ground-truth previous
          frame, or with probability ``sampling_prob`` the model's own (see rollout_sampled).
        - rollout: the model's own autoregressive rollout (the original FaceFormer's training), with
          gradients through every step; batched and KV-cached, so T decoder steps, not T passes.
        input_noise: std of Gaussian noise added to the ground-truth previous frames the decoder is fed
        (the parallel modes), another way to make it not trust its inputs blindly."""
        if mode not in self.TRAIN_MODES:
            raise ValueError(f"unknown training mode {mode!r}; expected one of {', '.join(self.TRAIN_MODES)}")
        feats = self.encode(audio, motion.shape[1], audio_mask)
        if mode == "rollout":
            return self.generate_from_features(feats, style)
        if mode == "scheduled_rollout":
            return self.rollout_sampled(feats, style, motion, sampling_prob)
        prev = shift_motion(motion)
        if input_noise > 0:
            prev = prev + input_noise * torch.randn_like(prev)
            prev[:, 0] = 0  # motion[-1] = 0 stays the start input, as in generation
        if mode == "parallel_sampling":
            return self.decode_sampled(feats, style, prev, motion_mask, sampling_prob, passes)
        if mode == "parallel_rollout":
            return self.decode_unrolled(feats, style, prev, motion_mask, sampling_prob, rollout_steps)
        return self.decode(feats, style, prev, motion_mask)

    def decode_unrolled(self, feats, style, prev_motion, motion_mask, sampling_prob: float, steps: int):
        """Parallel rollout: truncated backpropagation through the model's own rollout, at the cost of
        ``steps`` + 1 parallel passes whatever T. feats (B,T,d), prev_motion (B,T,51) ground-truth
        decoder inputs -> (B,T,51).

        The first pass is fed the ground truth; each later pass is fed, per frame and clip with
        probability sampling_prob (else the ground truth), the previous pass's prediction of the frame
        before, with its gradient. With probability 1 the last pass's frame t depends on the ground
        truth only up to frame t - 1 - steps: it is the model's own (steps + 1)-frame rollout started
        from the ground truth at every frame of the clip at once (and on the first steps + 1 frames,
        the full rollout itself). So the decoder meets its own accumulated drift and is taught, through
        the gradient, to correct it from the audio; parallel_sampling's one detached pass shows it
        one-step predictions only, which are close to the ground truth."""
        out = self.decode(feats, style, prev_motion, motion_mask)
        if sampling_prob <= 0:
            return out
        for _ in range(steps):
            take = torch.rand(out.shape[:2], device=out.device)[..., None] < sampling_prob  # (B,T,1)
            inputs = torch.where(take, shift_motion(out).to(prev_motion.dtype), prev_motion)
            out = self.decode(feats, style, inputs, motion_mask)
        return out

    def decode_sampled(self, feats, style, prev_motion, motion_mask, sampling_prob: float, passes: int = 1):
        """Parallel scheduled sampling. feats (B,T,d), prev_motion (B,T,51) ground-truth decoder inputs
        -> (B,T,51).

        Each of ``passes`` passes without gradient predicts every frame from the current inputs; then
        each input row t >= 1 is replaced, with probability sampling_prob (per frame, per clip), by the
        detached prediction of frame t-1, the others stay ground truth. A last pass with gradient on
        these inputs gives the output. Every pass is one parallel decoder pass; with probability 0 it
        is exactly decode(); with 1 and many passes it approaches the model's own rollout."""
        if sampling_prob <= 0 or passes < 1:
            return self.decode(feats, style, prev_motion, motion_mask)
        inputs = prev_motion
        with torch.no_grad():
            for _ in range(passes):
                own = shift_motion(self.decode(feats, style, inputs, motion_mask))
                take = torch.rand(own.shape[:2], device=own.device)[..., None] < sampling_prob  # (B,T,1)
                inputs = torch.where(take, own.to(prev_motion.dtype), prev_motion)
        return self.decode(feats, style, inputs, motion_mask)

    def rollout_sampled(self, feats, style, motion, sampling_prob: float):
        """Scheduled sampling on the KV-cached rollout (Bengio et al. 2015). feats (B,T,d), motion (B,T,51)
        -> (B,T,51). Step t is fed the model's own output of step t-1 (with gradient, as in rollout)
        with probability sampling_prob (per step, per clip), else the ground truth motion[t-1]."""
        if sampling_prob >= 1:
            return self.generate_from_features(feats, style)
        B, T, _ = feats.shape
        take = torch.rand(B, T, 1, device=feats.device) < sampling_prob
        state = self.start_generation(style, capacity=T)
        outputs = []
        for t in range(T):  # one cached step at a time, its input swapped in the decoding state
            if t > 0:
                state["prev"] = torch.where(take[:, t:t + 1], state["prev"], motion[:, t - 1:t].to(state["prev"].dtype))
            outputs.append(self.generate_steps(state, feats[:, t:t + 1]))
        return torch.cat(outputs, 1)

    # ---- autoregressive generation -------------------------------------------------------------
    def start_generation(self, style, attention_window: int | None = None, capacity: int = 0) -> dict:
        """A fresh decoding state for ``generate_steps``: style (B,) -> dict.

        attention_window W (frames; None or 0 = unbounded): frame t attends only frames t-W+1..t, so
        the key/value cache holds at most W frames and a step costs the same at any t. The ALiBi bias
        depends only on the distance t - j, so the bias of every kept key is what it is unbounded.
        With one decoder layer (the default) the result equals a teacher-forced pass over the last W
        frames fed with the model's own outputs; with more, each layer keeps the states it computed
        when a frame was made (sliding-window attention). ``capacity``: frames expected (sizes the
        bias table; it grows when needed)."""
        window = int(attention_window) if attention_window else None
        if window is not None and window < 1:
            raise ValueError(f"attention_window must be a positive number of frames or None, got {attention_window}")
        style_emb = self.style_embedding(style)
        return {"style_emb": style_emb, "caches": [{} for _ in self.layers], "t": 0, "window": window,
                "prev": style_emb.new_zeros(style_emb.shape[0], 1, self.motion_dim),  # motion[-1] = 0
                "rev": self._distance_bias(min(capacity, window or capacity))}

    def _distance_bias(self, n: int) -> torch.Tensor:
        """(h,n) bias of keys at distances n-1, ..., 1, 0 from the query: the last k columns are the
        bias of the k most recent keys."""
        pos = torch.arange(max(n, 1), device=self.slopes.device)
        return alibi_bias(self.slopes, pos[-1:], pos, self.period)[:, 0]

    def generate_steps(self, state: dict, feats) -> torch.Tensor:
        """Continue autoregressive decoding over the next frames' audio features. feats (B,n,d) ->
        motion (B,n,51); ``state`` (from start_generation) is updated, so calls can follow each other
        (streaming) and give what one call over all the features gives.

        Step t runs every layer on the single new input (motion_map(out[t-1]) + style + PPE(t)),
        attending its cached keys/values of earlier steps. Causal attention means earlier positions'
        layer states never change, so the cache is exact. Everything that does not depend on earlier
        outputs is computed once per call, not per step: the PPE (it repeats with the period), the
        aligned cross-attention term of every frame, and the bias table."""
        pe = periodic_positional_encoding(self.period, self.d, self.period).to(feats)
        crosses = [layer.cross(feats) for layer in self.layers]
        style_emb, caches, window, prev = state["style_emb"], state["caches"], state["window"], state["prev"]
        t0, n = state["t"], feats.shape[1]
        keys_max = t0 + n if window is None else min(t0 + n, window)
        if state["rev"].shape[1] < keys_max:
            state["rev"] = self._distance_bias(max(keys_max, 2 * state["rev"].shape[1]))
        rev = state["rev"]
        L = rev.shape[1]
        outputs = []
        for k in range(n):
            t = t0 + k
            x = self._decoder_input(prev, style_emb, pe[t % self.period])     # (B,1,d)
            n_keys = t + 1 if window is None else min(t + 1, window)
            prev = self._run_layers(x, feats[:, k:k + 1], rev[:, None, L - n_keys:], caches,
                                    [c[:, k:k + 1] for c in crosses])           # (B,1,51)
            if window is not None and n_keys == window:
                for c in caches:  # keep the W-1 most recent frames: the next step adds its own
                    c["k"], c["v"] = c["k"][:, :, 1:], c["v"][:, :, 1:]
            outputs.append(prev)
        state["t"], state["prev"] = t0 + n, prev
        return torch.cat(outputs, 1) if outputs else feats.new_zeros(feats.shape[0], 0, self.motion_dim)

    def generate_from_features(self, feats, style, attention_window: int | None = None):
        """KV-cached autoregressive decoding. feats (B,T,d), style (B,) -> (B,T,51).

        Unbounded (the default), the result equals the teacher-forced pass fed with the model's own
        outputs. Clips of different lengths can share a batch: generate up to the longest and ignore
        each clip's frames past its end (they cannot affect earlier ones). attention_window: see
        start_generation."""
        state = self.start_generation(style, attention_window, capacity=feats.shape[1])
        return self.generate_steps(state, feats)

    def generate(self, audio, style, n_frames: int, audio_mask=None, window_frames=None, overlap_frames=None,
                 attention_window: int | None = None):
        """audio (B,N), style (B,) -> motion (B,T,51), KV-cached; no frame limit. Long audio is encoded
        in windows when window_frames is given (see encode); attention_window bounds the decoder's
        attention (see start_generation). Call under torch.no_grad() for inference."""
        feats = self.encode(audio, n_frames, audio_mask, window_frames, overlap_frames)
        return self.generate_from_features(feats, style, attention_window)
