"""The wav2vec2 encoder made block-causal: what a model trained for streaming sees offline and live alike.

With ``MODEL.encoder_block_frames`` = B > 0 the encoder's frames come in blocks of B (block c = frames
[cB, (c+1)B)) and nothing in it looks past the end of a frame's block:
- audio normalisation: each sample is normalised with the mean and variance of the samples up to it
  (``causal_normalise``), instead of the whole utterance's;
- the transformer's positional convolution keeps its past taps only (``causal_pos_conv``);
- attention: a frame of block c attends to frames [cB - L, (c+1)B) at every layer (``block_mask``,
  L = ``MODEL.encoder_left_frames``), so a block's outputs are final once its own audio has arrived.
The CNN is local, except wav2vec2-base's first layer, whose GroupNorm normalises each channel over the
whole clip: here it takes each channel's statistics over the positions up to each one
(``causal_group_norm``). Training and offline inference run a clip in one masked pass (``encode_masked``);
live, ``BlockCache`` runs block after block with each layer's keys and values of the last L frames kept:
the same numbers, and each frame is paid for once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.framing import AUDIO_NORM_EPS

# The causal normaliser's variance floor. Far below AUDIO_NORM_EPS: the offline path normalises audio that
# was already normalised per utterance, live runs on the raw samples, and the two agree only where this
# floor is negligible against the variance in both units (any recording above -120 dBFS).
CAUSAL_NORM_EPS = AUDIO_NORM_EPS * 1e-5


class NormState:
    """Running sums (float64) of a stream's samples or of a layer's channels: what ``causal_normalise``
    and ``causal_group_norm`` carry between calls."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, 0.0, 0.0


def causal_normalise(x: torch.Tensor, state: NormState | None = None) -> torch.Tensor:
    """x (B,N) -> (B,N): sample t normalised with the mean and variance of samples [0, t] of its row.
    ``state`` (one row only): the sums of the samples before x, updated in place (a stream's chunks)."""
    xd = x.double()
    n0, s1, s2 = (0, 0.0, 0.0) if state is None else (state.n, state.s1, state.s2)
    c1 = xd.cumsum(-1) + s1
    c2 = xd.square().cumsum(-1) + s2
    n = torch.arange(n0 + 1, n0 + 1 + x.shape[-1], device=x.device, dtype=torch.float64)
    mean = c1 / n
    var = (c2 / n - mean.square()).clamp(min=0)
    if state is not None:
        if x.shape[0] != 1:
            raise ValueError("a stream's normaliser state holds one row")
        state.n, state.s1, state.s2 = n0 + x.shape[-1], float(c1[0, -1]) if x.shape[-1] else s1, \
            float(c2[0, -1]) if x.shape[-1] else s2
    return ((xd - mean) / torch.sqrt(var + CAUSAL_NORM_EPS)).to(x.dtype)


def causal_group_norm(y: torch.Tensor, norm, state: NormState | None = None, keep: int | None = None):
    """A GroupNorm with one group per channel (wav2vec2-base's first CNN layer), causal: y (B,C,P) ->
    (B,C,P), position t normalised with its channel's mean and variance over positions [0, t], then
    ``norm``'s affine map. ``state`` (one row): the sums of the positions before y, updated to include
    y's first ``keep`` positions (where the next piece starts: pieces may overlap)."""
    yd = y.double()
    n0, s1, s2 = (0, 0.0, 0.0) if state is None else (state.n, state.s1, state.s2)
    s1, s2 = (torch.as_tensor(v, dtype=torch.float64, device=y.device) for v in (s1, s2))
    c1 = yd.cumsum(-1) + (s1[:, None] if s1.dim() else s1)
    c2 = yd.square().cumsum(-1) + (s2[:, None] if s2.dim() else s2)
    n = torch.arange(n0 + 1, n0 + 1 + y.shape[-1], device=y.device, dtype=torch.float64)
    mean = c1 / n
    var = (c2 / n - mean.square()).clamp(min=0)
    if state is not None and keep:
        state.n, state.s1, state.s2 = n0 + keep, c1[0, :, keep - 1], c2[0, :, keep - 1]
    out = ((yd - mean) / torch.sqrt(var + norm.eps)).to(y.dtype)
    return out * norm.weight[:, None] + norm.bias[:, None]


def block_mask(T: int, block: int, left: int, device=None) -> torch.Tensor:
    """(T,T) bool, True where query frame i may attend key frame j: j in [cB - L, (c+1)B), c = i // B."""
    i = torch.arange(T, device=device)
    start = (i // block) * block
    j = i[None]
    return (j >= (start - left)[:, None]) & (j < (start + block)[:, None])


def causal_pos_conv(encoder, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
    """wav2vec2's positional convolution with its future taps removed: (B,T,H) -> (B,T,H); output i reads
    frames [i - K/2, i]. ``past`` (B,K/2,H): the frames before x (None: zeros, the start of a clip)."""
    pos = encoder.pos_conv_embed
    conv = pos.conv
    half = conv.kernel_size[0] // 2
    if past is None:
        past = x.new_zeros(x.shape[0], half, x.shape[2])
    # HF's 'same' convolution reads frame i + k - K/2 with tap k: taps 0..K/2 are the past and the present
    w = conv.weight[:, :, :half + 1]
    y = F.conv1d(torch.cat([past, x], 1).transpose(1, 2), w, conv.bias, groups=conv.groups)
    return pos.activation(y).transpose(1, 2)


def _attention(attn, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask, dropout: float):
    """Multi-head attention of x's queries over (keys, values) (B,h,S,d) -> (B,T,H)."""
    B, T, H = x.shape
    heads = keys.shape[1]
    q = attn.q_proj(x).view(B, T, heads, H // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)
    return attn.out_proj(out.transpose(1, 2).reshape(B, T, H))


def _layer(layer, x, past, mask, pre_ln: bool, heads: int, training: bool):
    """One wav2vec2 encoder layer (HF's or models/wav2vec2_runtime.py's modules): x (B,T,H) attends its own
    keys/values after ``past`` ((B,h,S,d) pair or None) -> (output (B,T,H), the keys/values attended)."""
    p_attn = float(getattr(layer.attention, "dropout", 0.0)) if training else 0.0
    drop = getattr(layer, "dropout", None) or (lambda h: h)
    inp = layer.layer_norm(x) if pre_ln else x
    B, T, H = inp.shape
    k, v = (p(inp).view(B, T, heads, H // heads).transpose(1, 2) for p in (layer.attention.k_proj, layer.attention.v_proj))
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    a = drop(_attention(layer.attention, inp, k, v, mask, p_attn))
    if pre_ln:
        x = x + a
        return x + layer.feed_forward(layer.final_layer_norm(x)), (k, v)
    x = layer.layer_norm(x + a)
    return layer.final_layer_norm(x + layer.feed_forward(x)), (k, v)


def _encoder_parts(model):
    c = model.config
    return model.encoder, bool(c.do_stable_layer_norm), int(c.num_attention_heads)


def encode_masked(model, x: torch.Tensor, block: int, left: int, frame_mask: torch.Tensor | None = None):
    """A wav2vec2 model's transformer over whole clips, block-causally: projected features x (B,T,H)
    -> (B,T,H). ``frame_mask`` (B,T) True = real frame (padding at the end: a clip's outputs are those
    of the clip alone, since nothing looks ahead past its block and padded keys are masked)."""
    enc, pre_ln, heads = _encoder_parts(model)
    B, T, _ = x.shape
    mask = block_mask(T, block, left, x.device)[None, None]                          # (1,1,T,T)
    if frame_mask is not None:
        x = x.masked_fill(~frame_mask[..., None], 0.0)
        mask = mask & frame_mask[:, None, None, :]
    x = x + causal_pos_conv(enc, x)
    if not pre_ln:
        x = enc.layer_norm(x)
    x = (getattr(enc, "dropout", None) or (lambda h: h))(x)
    for layer in enc.layers:
        x = _layer(layer, x, None, mask, pre_ln, heads, enc.training)[0]
    return enc.layer_norm(x) if pre_ln else x


class BlockCache:
    """The transformer run block by block over a stream of projected frames, paying for each frame once.

        cache = BlockCache(model, block=6, left=25)
        h = cache.step(x)     # x (1,n,H): the next whole blocks (or, at the end, the rest) -> (1,n,H)

    Keeps per layer the keys and values of the last ``left`` frames and the positional convolution's
    past input frames: equal to ``encode_masked`` over the whole stream."""

    def __init__(self, model, block: int, left: int):
        self.model, self.block, self.left = model, int(block), int(left)
        self.enc, self.pre_ln, self.heads = _encoder_parts(model)
        self.past = None          # (1,K/2,H) positional convolution input before the next frame
        self.kv = [None] * len(self.enc.layers)
        self.done = False

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.done:
            raise RuntimeError("BlockCache.step after a partial block: that was the end of the stream")
        outs = [self._block(x[:, a:a + self.block]) for a in range(0, x.shape[1], self.block)]
        return torch.cat(outs, 1) if outs else x[:, :0]

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        self.done = x.shape[1] < self.block
        half = self.enc.pos_conv_embed.conv.kernel_size[0] // 2
        past = self.past if self.past is not None else x.new_zeros(1, half, x.shape[2])
        h = x + causal_pos_conv(self.enc, x, past)
        self.past = torch.cat([past, x], 1)[:, -half:]
        if not self.pre_ln:
            h = self.enc.layer_norm(h)
        for i, layer in enumerate(self.enc.layers):
            h, (k, v) = _layer(layer, h, self.kv[i], None, self.pre_ln, self.heads, False)
            self.kv[i] = (k[:, :, -self.left:], v[:, :, -self.left:]) if self.left else None
        return self.enc.layer_norm(h) if self.pre_ln else h

