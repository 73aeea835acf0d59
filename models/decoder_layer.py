"""The pieces of FaceFormer's decoder: the period-wise ALiBi bias, the periodic positional encoding
and the decoder layer (causal self-attention with a key/value cache, aligned cross-attention).

Shapes: B batch, T frames (Tq queries, Tk keys), d feature_dim, h heads. Nothing has a maximum
length: the bias and the encoding are computed for the positions at hand.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        # as nn.MultiheadAttention: Xavier-uniform over the packed (3d, d) in-projection, zero biases
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out_proj.bias)

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
    Initialisation and attention-weight dropout are those of nn.TransformerDecoderLayer's
    nn.MultiheadAttention (see ``cross``).
    """

    def __init__(self, d: int, n_head: int, ff_dim: int, dropout: float):
        super().__init__()
        self.n_head, self.attn_dropout = n_head, dropout
        self.self_attn = CausalSelfAttention(d, n_head, dropout)
        self.cross_value = nn.Linear(d, d)
        self.cross_out = nn.Linear(d, d)
        # nn.MultiheadAttention draws its value projection as rows of the packed (3d, d) in-projection,
        # Xavier-uniform with bound sqrt(6 / (d + 3d)); a (d, d) matrix would get sqrt(6 / 2d), so the
        # bound is set by hand to keep the reference's distribution. Biases start at zero there too.
        bound = math.sqrt(6.0 / (d + 3 * d))
        nn.init.uniform_(self.cross_value.weight, -bound, bound)
        nn.init.zeros_(self.cross_value.bias)
        nn.init.zeros_(self.cross_out.bias)
        self.linear1, self.linear2 = nn.Linear(d, ff_dim), nn.Linear(ff_dim, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def cross(self, feats):
        """The aligned cross-attention output for audio features (B,T,d) -> (B,T,d).

        In training, nn.MultiheadAttention drops attention weights with probability p and scales the
        kept ones by 1/(1-p). Each head of frame i has one non-zero weight (1, on feature i), so this
        is a Bernoulli mask per frame and per head on the value path (head h = channels
        [h d/h, (h+1) d/h) of the value projection), in front of the output projection."""
        v = self.cross_value(feats)
        if self.training and self.attn_dropout > 0:
            B, T, d = v.shape
            keep = F.dropout(v.new_ones(B, T, self.n_head, 1), self.attn_dropout)  # 0 or 1/(1-p)
            v = (v.view(B, T, self.n_head, d // self.n_head) * keep).view(B, T, d)
        return self.cross_out(v)

    def forward(self, x, feats, bias, cache: dict | None = None, cross=None):
        """x (B,Tq,d) decoder inputs, feats (B,Tq,d) the audio features of the same frames; ``cross``
        = self.cross(feats) when the caller has it already (generation computes it for all frames)."""
        x = self.norm1(x + self.dropout(self.self_attn(x, bias, cache)))
        x = self.norm2(x + self.dropout(self.cross(feats) if cross is None else cross))
        return self.norm3(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))
