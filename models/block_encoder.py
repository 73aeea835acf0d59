"""The wav2vec2 encoder made block-causal: what a model trained for streaming sees offline and live alike.

With ``MODEL.encoder_block_frames`` = B > 0 the encoder's frames come in blocks of B (block c = frames
[cB, (c+1)B)) and nothing in it looks further than A = ``MODEL.encoder_lookahead_frames`` past a block:
- audio normalisation: each sample is normalised with the mean and variance of the samples up to it
  (``causal_normalise``), instead of the whole utterance's;
- the transformer's positional convolution keeps its past taps only (``causal_pos_conv``);
- attention: a frame of block c attends to frames [cB - L, (c+1)B + A) in the first layer and
  [cB - L, (c+1)B) in the others (``block_mask``, L = ``MODEL.encoder_left_frames``): the lookahead is
  paid once, not once per layer, and a block's outputs are final once its audio and A frames more are in.
The CNN is local, except wav2vec2-base's first layer, whose GroupNorm normalises each channel over the
whole clip: here it takes each channel's statistics over the positions up to each one
(``causal_group_norm``). Training and offline inference run a clip in one masked pass (``encode_masked``);
live, ``BlockCache`` runs block after block with each layer's keys and values kept for the queries to
come: the same numbers, and each frame is paid for once.
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


def _running_normalise(x: torch.Tensor, state: NormState | None, keep: int, eps: float) -> torch.Tensor:
    """x (..., N) -> float64 (..., N): position t normalised with the mean and variance of positions [0, t]
    along the last axis, after the sums in ``state`` (one row: a stream's earlier pieces), which then
    move on by x's first ``keep`` positions."""
    xd = x.double()
    n0 = 0 if state is None else state.n
    s1, s2 = ((0.0, 0.0) if state is None else
              (torch.as_tensor(v, dtype=torch.float64, device=x.device)[..., None] for v in (state.s1, state.s2)))
    c1, c2 = xd.cumsum(-1) + s1, xd.square().cumsum(-1) + s2
    n = torch.arange(n0 + 1, n0 + 1 + x.shape[-1], device=x.device, dtype=torch.float64)
    mean = c1 / n
    var = (c2 / n - mean.square()).clamp(min=0)
    if state is not None and keep:
        if x.shape[0] != 1:
            raise ValueError("a stream's normaliser state holds one row")
        state.n, state.s1, state.s2 = n0 + keep, c1[0, ..., keep - 1], c2[0, ..., keep - 1]
    return (xd - mean) / torch.sqrt(var + eps)


def causal_normalise(x: torch.Tensor, state: NormState | None = None) -> torch.Tensor:
    """x (B,N) -> (B,N): sample t normalised with the mean and variance of samples [0, t] of its row.
    ``state`` (one row only): the sums of the samples before x, updated in place (a stream's chunks)."""
    return _running_normalise(x, state, x.shape[-1], CAUSAL_NORM_EPS).to(x.dtype)


def causal_group_norm(y: torch.Tensor, norm, state: NormState | None = None, keep: int | None = None):
    """A GroupNorm with one group per channel (wav2vec2-base's first CNN layer), causal: y (B,C,P) ->
    (B,C,P), position t normalised with its channel's mean and variance over positions [0, t], then
    ``norm``'s affine map. ``state`` (one row): the sums of the positions before y, updated to include
    y's first ``keep`` positions (where the next piece starts: pieces may overlap)."""
    out = _running_normalise(y, state, keep or 0, norm.eps).to(y.dtype)
    return out * norm.weight[:, None] + norm.bias[:, None]


def attends(queries: torch.Tensor, keys: torch.Tensor, block: int, left: int, lookahead: int = 0) -> torch.Tensor:
    """(Q,K) bool, True where query frame i may attend key frame j (absolute frame indices (Q,), (K,)):
    j in [cB - L, (c+1)B + A), c = i // B."""
    start = queries // block * block
    return (keys[None] >= (start - left)[:, None]) & (keys[None] < (start + block + lookahead)[:, None])


def block_mask(T: int, block: int, left: int, lookahead: int = 0, device=None) -> torch.Tensor:
    """(T,T) bool: ``attends`` over the frames of one clip."""
    i = torch.arange(T, device=device)
    return attends(i, i, block, left, lookahead)


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


def _keys_values(layer, x: torch.Tensor, pre_ln: bool, heads: int):
    """A layer's keys and values of its input x (B,T,H) -> two (B,h,T,H/h)."""
    inp = layer.layer_norm(x) if pre_ln else x
    B, T, H = inp.shape
    return tuple(p(inp).view(B, T, heads, H // heads).transpose(1, 2)
                 for p in (layer.attention.k_proj, layer.attention.v_proj))


def _layer(layer, x, keys, values, mask, pre_ln: bool, training: bool):
    """One wav2vec2 encoder layer (HF's or models/wav2vec2_runtime.py's modules): x (B,T,H) attends
    (keys, values) (B,h,S,H/h) -> (B,T,H)."""
    p_attn = float(getattr(layer.attention, "dropout", 0.0)) if training else 0.0
    drop = getattr(layer, "dropout", None) or (lambda h: h)
    a = drop(_attention(layer.attention, layer.layer_norm(x) if pre_ln else x, keys, values, mask, p_attn))
    if pre_ln:
        x = x + a
        return x + layer.feed_forward(layer.final_layer_norm(x))
    x = layer.layer_norm(x + a)
    return layer.final_layer_norm(x + layer.feed_forward(x))


def _encoder_parts(model):
    c = model.config
    return model.encoder, bool(c.do_stable_layer_norm), int(c.num_attention_heads)


def _first_layer_input(enc, x: torch.Tensor, pre_ln: bool, past=None) -> torch.Tensor:
    """Projected frames (B,T,H) -> the first layer's input: plus the causal positional convolution, then
    (post-LN) the encoder's layer norm. Per frame, given the frames before: final as soon as x is."""
    x = x + causal_pos_conv(enc, x, past)
    return x if pre_ln else enc.layer_norm(x)


def encode_masked(model, x: torch.Tensor, block: int, left: int, lookahead: int = 0,
                  frame_mask: torch.Tensor | None = None):
    """A wav2vec2 model's transformer over whole clips, block-causally: projected features x (B,T,H)
    -> (B,T,H). The first layer also sees ``lookahead`` frames past a block. ``frame_mask`` (B,T) True =
    real frame (padding at the end: a clip's outputs are those of the clip alone, since nothing looks
    past its block and the lookahead, and padded keys are masked)."""
    enc, pre_ln, heads = _encoder_parts(model)
    B, T, _ = x.shape
    masks = [block_mask(T, block, left, a, x.device)[None, None] for a in (lookahead, 0)]  # (1,1,T,T)
    if frame_mask is not None:
        x = x.masked_fill(~frame_mask[..., None], 0.0)
        masks = [m & frame_mask[:, None, None, :] for m in masks]
    x = (getattr(enc, "dropout", None) or (lambda h: h))(_first_layer_input(enc, x, pre_ln))
    for i, layer in enumerate(enc.layers):
        x = _layer(layer, x, *_keys_values(layer, x, pre_ln, heads), masks[min(i, 1)], pre_ln, enc.training)
    return enc.layer_norm(x) if pre_ln else x


# frames a BlockCache runs through the transformer in one pass (whole blocks): offline, a long clip goes in
# passes of this many frames rather than block by block (the weights are read once per pass)
GROUP_FRAMES = 240


class BlockCache:
    """The transformer run block by block over a stream of projected frames, paying for each frame once.

        cache = BlockCache(model, block=2, left=25, lookahead=4)
        cache.push(x)          # x (1,n,H): projected frames, in order, as they become final
        h = cache.pop(n)       # (1,n,H) the next n outputs: whole blocks whose lookahead has been pushed,
                               # or, at the end of the stream (final=True), the rest

    Keeps per layer the keys and values of the frames later queries attend (the last ``left`` frames,
    and in the first layer those of the lookahead) and the positional convolution's last input frames:
    equal to ``encode_masked`` over the whole stream."""

    def __init__(self, model, block: int, left: int, lookahead: int = 0):
        self.block, self.left, self.lookahead = int(block), int(left), int(lookahead)
        self.enc, self.pre_ln, self.heads = _encoder_parts(model)
        self.past = None          # (1,K/2,H) the last projected frames pushed (the positional convolution's)
        self.inputs = None        # (1,n,H) first-layer inputs of the frames not yet output
        self.kv = [None] * len(self.enc.layers)  # per layer (keys, values) of frames [kv_start[i], ...)
        self.kv_start = [0] * len(self.enc.layers)
        self.n_in = self.n_out = 0

    @torch.no_grad()
    def push(self, x: torch.Tensor):
        if not x.shape[1]:
            return
        half = self.enc.pos_conv_embed.conv.kernel_size[0] // 2
        past = self.past if self.past is not None else x.new_zeros(1, half, x.shape[2])
        h = _first_layer_input(self.enc, x, self.pre_ln, past)
        self.past = torch.cat([past, x], 1)[:, -half:]
        self.inputs = h if self.inputs is None else torch.cat([self.inputs, h], 1)
        self._append_kv(0, *_keys_values(self.enc.layers[0], h, self.pre_ln, self.heads))
        self.n_in += x.shape[1]

    @torch.no_grad()
    def pop(self, n: int, final: bool = False) -> torch.Tensor:
        if n % self.block and not final or self.n_out + n + (0 if final else self.lookahead) > self.n_in:
            raise ValueError(f"BlockCache.pop({n}): frames {self.n_out}..{self.n_out + n} need whole blocks and "
                             f"{self.lookahead} frames of lookahead; {self.n_in} frames pushed")
        step = max(self.block, GROUP_FRAMES // self.block * self.block)  # many blocks per pass: fewer, larger products
        end = self.n_out + n
        outs = [self._frames(min(step, end - a)) for a in range(self.n_out, end, step)]
        return torch.cat(outs, 1) if outs else self.inputs[:, :0]

    def _append_kv(self, i: int, k, v):
        self.kv[i] = (k, v) if self.kv[i] is None else (torch.cat([self.kv[i][0], k], 2), torch.cat([self.kv[i][1], v], 2))

    def _frames(self, n: int) -> torch.Tensor:
        """The next n frames (whole blocks, or the last frames) through every layer -> (1,n,H)."""
        start, end = self.n_out, self.n_out + n
        h, self.inputs = self.inputs[:, :n], self.inputs[:, n:]
        queries = torch.arange(start, end, device=h.device)
        for i, layer in enumerate(self.enc.layers):
            if i:
                self._append_kv(i, *_keys_values(layer, h, self.pre_ln, self.heads))
            first = max(0, start - self.left)  # the first key any of these queries attends
            k, v = (t[:, :, first - self.kv_start[i]:] for t in self.kv[i])
            mask = attends(queries, torch.arange(first, first + k.shape[2], device=h.device), self.block, self.left,
                           self.lookahead if i == 0 else 0)
            h = _layer(layer, h, k, v, mask[None, None], self.pre_ln, False)
            keep = max(0, end - self.left)  # what the next queries can still attend
            if keep > self.kv_start[i]:
                self.kv[i] = tuple(t[:, :, keep - self.kv_start[i]:] for t in self.kv[i])
                self.kv_start[i] = keep
        self.n_out = end
        return self.enc.layer_norm(h) if self.pre_ln else h
