"""FaceFormer (Fan et al., CVPR 2022) predicting 51-dim FLAME motion (50 expression + jaw opening).

    audio (B,N) --wav2vec2, resampled to 25 fps--> (B,T,H) --Linear--> feats (B,T,d)
    decoder input t: motion_map(motion[t-1]) + style, motion[-1] = 0, + periodic positional encoding
    decoder layer (post-LN): biased causal self-attention -> aligned cross-attention -> feed-forward
    output_map (zero-initialised) -> motion (B,T,51)

Training is teacher-forced (``forward``); inference is autoregressive (``generate``) with a key/value
cache, so each new frame costs one decoder step on one query instead of a pass over the whole prefix
(``generate_naive``, the original method, kept for tests and benchmarks). Both paths use the same
start input (motion[-1] = 0), unlike the official code, and nothing has a maximum length: the
attention bias and the positional encoding are computed for the positions at hand.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.wav2vec import build_audio_encoder


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.): geometric from 2^(-8/n); 4 heads -> 1/4, 1/16, 1/64, 1/256.
    For n not a power of two, the slopes of the closest lower power of two plus every other slope
    of the next power of two (as in the ALiBi and FaceFormer code)."""
    def power_of_2(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_2(n_head)
    else:
        closest = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_2(closest) + alibi_slopes(2 * closest).tolist()[0::2][:n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, period: int) -> torch.Tensor:
    """Causal period-wise ALiBi bias between query and key positions -> (n_head, Tq, Tk).

    bias[h,i,j] = -m_h * floor((q_i - k_j) / period) for k_j <= q_i, -inf for k_j > q_i.
    """
    diff = q_pos[:, None] - k_pos[None, :]                             # (Tq,Tk)
    bias = -slopes[:, None, None] * torch.div(diff, period, rounding_mode="floor").to(slopes.dtype)
    return bias.masked_fill(diff[None] < 0, float("-inf"))


def biased_mask(n_head: int, T: int, period: int) -> torch.Tensor:
    """FaceFormer's biased causal mask for T frames -> (n_head, T, T), any T."""
    pos = torch.arange(T)
    return alibi_bias(alibi_slopes(n_head), pos, pos, period)


def periodic_positional_encoding(T: int, d: int, period: int, start: int = 0) -> torch.Tensor:
    """PPE for positions start..start+T-1 -> (T,d): sinusoidal encoding of (t mod period).

    PE[t,2i] = sin((t mod p) * 10000^(-2i/d)), PE[t,2i+1] = cos(same). Any length.
    """
    t = (torch.arange(start, start + T) % period).to(torch.float32)[:, None]  # (T,1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    angle = t * freq                                                   # (T, ceil(d/2))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, :d // 2])
    return pe


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an additive bias; with a cache it appends its keys/values.

    x (B,Tq,d), bias broadcastable to (B,h,Tq,Tk) -> (B,Tq,d). The cache dict holds the keys and
    values (B,h,Tk,d/h) of all earlier positions, so a step on one new query attends the whole past.
    """

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        assert d % n_head == 0, f"feature_dim {d} must be divisible by n_head {n_head}"
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, bias, cache: dict | None = None):
        B, Tq, d = x.shape
        q, k, v = self.qkv(x).view(B, Tq, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        att = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_head) + bias  # (B,h,Tq,Tk)
        att = F.dropout(att.softmax(-1), self.dropout, self.training)
        return self.out_proj((att @ v).transpose(1, 2).reshape(B, Tq, d))


class DecoderLayer(nn.Module):
    """nn.TransformerDecoderLayer (post-LN, ReLU) with FaceFormer's masks built in.

    Cross-attention uses the alignment mask: frame i attends only audio feature i. A softmax over a
    single key is 1 whatever the query, so the attention output is exactly the value projection of
    feature i through the output projection; we compute that directly (no query/key projections,
    no T x T scores), which also makes a decoding step need only the current frame's feature.
    """

    def __init__(self, d: int, n_head: int, ff_dim: int, dropout: float):
        super().__init__()
        self.self_attn = CausalSelfAttention(d, n_head, dropout)
        self.cross_value = nn.Linear(d, d)
        self.cross_out = nn.Linear(d, d)
        self.linear1, self.linear2 = nn.Linear(d, ff_dim), nn.Linear(ff_dim, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def cross(self, feats):
        """The aligned cross-attention output for audio features (B,T,d) -> (B,T,d)."""
        return self.cross_out(self.cross_value(feats))

    def forward(self, x, feats, bias, cache: dict | None = None, cross=None):
        """x (B,Tq,d) decoder inputs, feats (B,Tq,d) the audio features of the same frames; ``cross``
        = self.cross(feats) when the caller has it already (generation computes it for all frames)."""
        x = self.norm1(x + self.dropout(self.self_attn(x, bias, cache)))
        x = self.norm2(x + self.dropout(self.cross(feats) if cross is None else cross))
        return self.norm3(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def shift_motion(motion: torch.Tensor) -> torch.Tensor:
    """Decoder inputs from target motion (B,T,51) -> (B,T,51): row t is motion[t-1], row 0 is zero."""
    return F.pad(motion[:, :-1], (0, 0, 1, 0))


class FaceFormer(nn.Module):
    """FaceFormer(cfg.MODEL, n_styles). style: long class indices (B,) in [0, n_styles)."""

    def __init__(self, model_cfg, n_styles: int):
        super().__init__()
        d, self.motion_dim = model_cfg["feature_dim"], model_cfg.get("motion_dim", 51)
        self.d, self.n_styles, self.period = d, n_styles, int(model_cfg["period"])
        self.n_head = model_cfg["n_head"]
        self.audio_encoder = build_audio_encoder(model_cfg)
        self.audio_feature_map = nn.Linear(self.audio_encoder.hidden_size, d)
        self.motion_map = nn.Linear(self.motion_dim, d)
        self.style_map = nn.Linear(n_styles, d, bias=False)
        self.ppe_dropout = nn.Dropout(model_cfg["dropout"])
        self.layers = nn.ModuleList([
            DecoderLayer(d, self.n_head, model_cfg["ff_dim"], model_cfg["dropout"])
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

    def forward(self, audio, motion, style, motion_mask=None, audio_mask=None, teacher_forcing: bool = True):
        """Training pass. audio (B,N), motion (B,T,51), style (B,), masks True = real -> (B,T,51).

        teacher_forcing=True: one parallel decoder pass fed with the ground truth (the default).
        False: the model's own autoregressive rollout (the original FaceFormer's training), with
        gradients through every step; batched and KV-cached here, so it costs T decoder steps
        rather than T passes over growing prefixes."""
        feats = self.encode(audio, motion.shape[1], audio_mask)
        if not teacher_forcing:
            return self.generate_from_features(feats, style)
        return self.decode(feats, style, shift_motion(motion), motion_mask)

    # ---- autoregressive generation -------------------------------------------------------------
    def generate_from_features(self, feats, style):
        """KV-cached autoregressive decoding. feats (B,T,d), style (B,) -> (B,T,51).

        Step t runs every layer on the single new input (motion_map(out[t-1]) + style + PPE(t)),
        attending its cached keys/values of steps < t. Causal attention means earlier positions'
        layer states never change, so the cache is exact: the result equals the teacher-forced pass
        fed with the model's own outputs. Clips of different lengths can share a batch: generate up
        to the longest and ignore each clip's frames past its end (they cannot affect earlier ones).
        """
        B, T, _ = feats.shape
        style_emb = self.style_embedding(style)
        caches = [{} for _ in self.layers]
        prev = feats.new_zeros(B, 1, self.motion_dim)
        # Everything that does not depend on earlier outputs is computed once, not per step:
        # the PPE (it repeats with the period), the aligned cross-attention term of every frame, and
        # the attention bias. The bias depends only on the distance t - j, so row t is a view of one
        # reversed table: rev[:, T-1-t:] holds the bias of keys j = 0..t.
        pe = periodic_positional_encoding(self.period, self.d, self.period).to(feats)
        crosses = [layer.cross(feats) for layer in self.layers]
        pos = torch.arange(T, device=feats.device)
        rev = alibi_bias(self.slopes, pos[-1:], pos, self.period)[:, 0]       # (h,T): distance T-1-i
        outputs = []
        for t in range(T):
            x = self._decoder_input(prev, style_emb, pe[t % self.period])     # (B,1,d)
            bias = rev[:, None, T - 1 - t:]                                     # (h,1,t+1)
            prev = self._run_layers(x, feats[:, t:t + 1], bias, caches,
                                    [c[:, t:t + 1] for c in crosses])           # (B,1,51)
            outputs.append(prev)
        return torch.cat(outputs, 1)

    def generate(self, audio, style, n_frames: int, audio_mask=None, window_frames=None, overlap_frames=None):
        """audio (B,N), style (B,) -> motion (B,T,51), KV-cached; no frame limit. Long audio is encoded
        in windows when window_frames is given (see encode). Call under torch.no_grad() for inference."""
        feats = self.encode(audio, n_frames, audio_mask, window_frames, overlap_frames)
        return self.generate_from_features(feats, style)

    def generate_naive_from_features(self, feats, style):
        """The original FaceFormer loop: at step t re-run the decoder over the whole prefix 0..t and
        keep the last output. O(T^2) decoder work; for tests and benchmarks."""
        B, T, _ = feats.shape
        prev = feats.new_zeros(B, 1, self.motion_dim)
        for t in range(T):
            out = self.decode(feats[:, :t + 1], style, prev)
            prev = torch.cat([prev, out[:, -1:]], 1)
        return prev[:, 1:]

    def generate_naive(self, audio, style, n_frames: int, audio_mask=None):
        """generate() the original way (see generate_naive_from_features)."""
        return self.generate_naive_from_features(self.encode(audio, n_frames, audio_mask), style)
