"""models/decoder_layer.py: the ALiBi bias, the periodic positional encoding and the decoder layer's
details as in the reference (nn.TransformerDecoderLayer)."""
import math

import pytest
import torch

from models.decoder_layer import DecoderLayer, alibi_bias, alibi_slopes, periodic_positional_encoding
from models.faceformer import FaceFormer
from utils.config import load_config

# ---- attention bias and positional encoding -------------------------------------------------------

def biased_mask(n_head: int, T: int, period: int) -> torch.Tensor:
    """FaceFormer's biased causal mask for T frames -> (n_head, T, T), as the decoder builds it."""
    pos = torch.arange(T)
    return alibi_bias(alibi_slopes(n_head), pos, pos, period)


def test_alibi_slopes():
    assert alibi_slopes(4).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    # not a power of two: the 4-head slopes, then every other one of the 8-head slopes
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]


@pytest.mark.parametrize("T,period", [(1, 30), (7, 3), (45, 30), (100, 25), (650, 30)])
def test_biased_mask_formula(T, period):
    m = [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    bias = biased_mask(4, T, period)
    assert bias.shape == (4, T, T)
    upper = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert torch.isneginf(bias[:, upper]).all()
    assert torch.isfinite(bias[:, ~upper]).all()
    if T <= 100:
        pairs = [(i, j) for i in range(T) for j in range(i + 1)]
    else:  # T = 650: the rows past 600 (the official max_seq_len) and a random sample of the rest
        g = torch.Generator().manual_seed(0)
        i = torch.randint(0, T, (3000,), generator=g)
        j = (torch.rand(3000, generator=g) * (i + 1)).long()
        pairs = list(zip(i.tolist(), j.tolist())) + [(i, j) for i in range(600, T) for j in range(0, i + 1, 7)]
    for h in range(4):
        for i, j in pairs:
            assert bias[h, i, j].item() == pytest.approx(-m[h] * math.floor((i - j) / period), abs=1e-7)


def test_periodic_positional_encoding():
    d, p = 64, 30
    pe = periodic_positional_encoding(700, d, p)
    assert pe.shape == (700, d)
    assert torch.equal(pe[p:], pe[:-p])                                  # period p ...
    assert len({tuple(r) for r in pe[:p].tolist()}) == p                # ... and no shorter one
    t, i = 17, 5
    assert pe[t, 2 * i].item() == pytest.approx(math.sin(t * 10000 ** (-2 * i / d)), abs=1e-6)
    assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(t * 10000 ** (-2 * i / d)), abs=1e-6)
    assert torch.allclose(pe[650], pe[650 % p])
    # the offset form used by generation step t gives row t of the full table
    assert torch.equal(periodic_positional_encoding(5, d, p, start=641), pe[641:646])


# ---- decoder details of the reference (nn.TransformerDecoderLayer) --------------------------------

def test_cross_attention_dropout_is_a_per_frame_per_head_mask():
    # nn.MultiheadAttention drops attention weights; with one key per query (the alignment mask) that
    # zeroes or scales by 1/(1-p) each head's value slice of each frame, in training only
    torch.manual_seed(0)
    d, h, p = 64, 4, 0.3
    layer = DecoderLayer(d, h, 2 * d, p)
    feats = torch.randn(4, 500, d)
    seen = []
    layer.cross_out.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        v = layer.cross_value(feats).view(4, 500, h, d // h)
        layer.train()
        out_a, out_b = layer.cross(feats), layer.cross(feats)
        masked = seen[0].view(4, 500, h, d // h)
        dropped = (masked == 0).all(-1)                                       # (B,T,h)
        kept = torch.isclose(masked, v / (1 - p), rtol=1e-6, atol=1e-7).all(-1)
        assert (dropped ^ kept).all()             # every head slice: all zero, or all scaled by 1/(1-p)
        assert abs(dropped.float().mean().item() - p) < 0.03                 # 6000 slices
        assert ((dropped.sum(-1) > 0) & (dropped.sum(-1) < h)).any()          # heads drop independently
        assert (out_a - out_b).abs().max() > 1e-3                             # a new mask each call
        layer.eval()
        assert torch.equal(layer.cross(feats), layer.cross_out(layer.cross_value(feats)))


def test_attention_init_as_multihead_attention(model_cfg):
    torch.manual_seed(0)
    m = FaceFormer(model_cfg, n_styles=2)
    d = m.d
    ref = torch.nn.MultiheadAttention(d, m.n_head)  # its in_proj_weight is the packed (3d, d) matrix
    bound = math.sqrt(6 / (d + 3 * d))
    for layer in m.layers:
        for name, bias in [("qkv", layer.self_attn.qkv.bias), ("out_proj", layer.self_attn.out_proj.bias),
                           ("cross_value", layer.cross_value.bias), ("cross_out", layer.cross_out.bias)]:
            assert not bias.any(), name
        for w in (layer.self_attn.qkv.weight, layer.cross_value.weight):
            # uniform on [-bound, bound] as the reference's: same range and standard deviation
            assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
            assert w.std().item() == pytest.approx(ref.in_proj_weight.std().item(), rel=0.05)
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_ff_dim_defaults_to_twice_feature_dim(model_cfg):
    assert load_config(None).MODEL.ff_dim is None
    assert FaceFormer(dict(model_cfg, feature_dim=32, ff_dim=None), n_styles=2).layers[0].linear1.out_features == 64
    assert FaceFormer(dict(model_cfg, feature_dim=32, ff_dim=48), n_styles=2).layers[0].linear1.out_features == 48
