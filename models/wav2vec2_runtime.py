"""A transformers-free wav2vec2 for inference from a checkpoint (fast start-up).

Importing ``Wav2Vec2Model`` from transformers costs about twice a bare ``import torch`` (it pulls in
torch.distributed.tensor, torch._dynamo, scipy.optimize, ...), yet a checkpoint of ours holds every
wav2vec2 weight and, since this module exists, the encoder's config (``audio_encoder_config``, see
models/checkpoint.py). ``Wav2Vec2Runtime`` is the part of HF's ``Wav2Vec2Model`` that AudioEncoder
(models/wav2vec.py) and Streamer (models/streaming.py) run, in plain torch, with the same module names
and state-dict keys, so the checkpoint's ``audio_encoder.model.*`` weights load strictly:

    feature_extractor.conv_layers[i].{conv, layer_norm, activation}
    feature_projection.{layer_norm, projection, dropout}        forward -> (projected, normed)
    encoder.pos_conv_embed.conv (weight norm over dim 2), encoder.layer_norm,
    encoder.layers[i].{attention.{q,k,v,out}_proj, layer_norm, feed_forward.{intermediate,output}_dense,
                       final_layer_norm}
    masked_spec_embed                                          when HF creates it (never used here)

Eval / inference only: no dropout inside the encoder, no LayerDrop, no SpecAugment, no gradient
checkpointing. Training and ``from_pretrained`` keep using transformers (models/wav2vec.py).
``unsupported(config)`` names what this module cannot reproduce (adapters, other position
embeddings, unknown activations, ...); models/loading.py then falls back to transformers.

    why = unsupported(cfg_dict)                 # None = supported
    model = Wav2Vec2Runtime(cfg_dict)           # random init (tests)
    model = Wav2Vec2Runtime.empty(cfg_dict)     # no init: load_state_dict(strict) from the checkpoint next
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.log_mel import install_frontend


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


# HF's ACT2FN names this module reproduces (HF's "gelu" is torch's exact erf gelu; "gelu_new" and
# "gelu_pytorch_tanh" are the tanh approximation)
ACTIVATIONS = {"gelu": F.gelu, "gelu_python": F.gelu, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh,
               "relu": F.relu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh}

# config fields Wav2Vec2Runtime reads, with the types they must have
REQUIRED = {"hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int, "intermediate_size": int,
            "hidden_act": str, "layer_norm_eps": float, "feat_extract_norm": str, "feat_extract_activation": str,
            "conv_dim": list, "conv_stride": list, "conv_kernel": list, "conv_bias": bool,
            "num_conv_pos_embeddings": int, "num_conv_pos_embedding_groups": int, "do_stable_layer_norm": bool,
            "mask_time_prob": float, "mask_feature_prob": float}


@contextlib.contextmanager
def _no_random_init():
    """nn.Linear / nn.Conv1d draw their initial weights through torch.nn.init's kaiming_uniform_ and
    uniform_ (looked up at call time); while this is active they leave torch.empty's memory as it is.
    (Not the meta device: its to_empty and norm run torch's Python reference kernels, whose imports,
    torch._dynamo and sympy, cost more than the init saved.)"""
    saved = {name: getattr(nn.init, name) for name in ("kaiming_uniform_", "uniform_")}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


class RuntimeConfig(SimpleNamespace):
    """The saved config dict as attributes (what ``model.config.<field>`` reads), ``to_dict()`` as HF's."""

    def to_dict(self) -> dict:
        return dict(vars(self))


def unsupported(config: dict) -> str | None:
    """Why ``Wav2Vec2Runtime(config)`` would not equal HF's ``Wav2Vec2Model`` for this config, or None."""
    if not isinstance(config, dict):
        return f"audio_encoder_config is a {type(config).__name__}, not a dict"
    for key, kind in REQUIRED.items():
        value = config.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            return f"{key}={value!r} (expected {kind.__name__})"
    if config["feat_extract_norm"] not in ("group", "layer"):
        return f"feat_extract_norm={config['feat_extract_norm']!r}"
    for key in ("hidden_act", "feat_extract_activation"):
        if config[key] not in ACTIVATIONS:
            return f"{key}={config[key]!r} (supported: {', '.join(ACTIVATIONS)})"
    n = len(config["conv_dim"])
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
               for key in ("conv_dim", "conv_kernel", "conv_stride") for x in config[key]):
        return "conv_dim, conv_kernel, conv_stride must be lists of positive integers"
    if not n or len(config["conv_kernel"]) != n or len(config["conv_stride"]) != n or \
            config.get("num_feat_extract_layers", n) != n:
        return "conv_dim, conv_kernel, conv_stride (and num_feat_extract_layers) differ in length"
    if min(config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                "num_conv_pos_embeddings", "num_conv_pos_embedding_groups")) < 1 or \
            config["hidden_size"] % config["num_attention_heads"] or \
            config["hidden_size"] % config["num_conv_pos_embedding_groups"]:
        return "sizes must be positive, hidden_size a multiple of num_attention_heads and of " \
               "num_conv_pos_embedding_groups"
    if config.get("add_adapter"):
        return "add_adapter=True"
    if config.get("adapter_attn_dim") is not None:
        return f"adapter_attn_dim={config['adapter_attn_dim']!r}"
    if config.get("position_embeddings_type") not in (None, "conv"):
        return f"position_embeddings_type={config['position_embeddings_type']!r}"
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        return f"model_type={config['model_type']!r}"
    return None


# ---------------------------------------------------------------------------------------------- CNN

class ConvLayer(nn.Module):
    """Conv1d -> norm -> activation. ``norm``: "group" (GroupNorm, one group per channel: normalises
    each channel over time), "layer" (LayerNorm over channels, per time step) or None.
    (B,C_in,N) -> (B,C_out,N')."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None, act: str):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size=kernel, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
        self.activation = ACTIVATIONS[act]

    def forward(self, x):
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    """The CNN: raw audio (B,N) -> features (B,C,F). Group norm: on the first layer only; layer norm:
    on every layer (as HF)."""

    def __init__(self, c):
        super().__init__()
        dims = [1] + list(c.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], c.conv_kernel[i], c.conv_stride[i], c.conv_bias,
                      "layer" if c.feat_extract_norm == "layer" else "group" if i == 0 else None,
                      c.feat_extract_activation)
            for i in range(len(c.conv_dim)))

    def forward(self, audio):
        x = audio[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x

    def _freeze_parameters(self):
        for p in self.parameters():
            p.requires_grad = False


class FeatureProjection(nn.Module):
    """(B,T,C) -> (projected (B,T,H), layer-normed input (B,T,C)), as HF returns both."""

    def __init__(self, c):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c.conv_dim[-1], eps=c.layer_norm_eps)
        self.projection = nn.Linear(c.conv_dim[-1], c.hidden_size)
        self.dropout = nn.Dropout(0.0)  # eval only; kept so the module tree reads as HF's

    def forward(self, x):
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed)), normed


# ---------------------------------------------------------------------------------------------- transformer

def _weight_norm(conv: nn.Conv1d) -> nn.Conv1d:
    """Weight norm over dim 2 (one norm per kernel tap, across channels), with the parametrisation HF
    picks in this torch: ``parametrizations.weight.original0/1`` (torch >= 2.1), else ``weight_g/v``."""
    if hasattr(nn.utils.parametrizations, "weight_norm"):
        return nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    return nn.utils.weight_norm(conv, name="weight", dim=2)


WEIGHT_NORM_NAMES = (("weight_g", "parametrizations.weight.original0"),
                     ("weight_v", "parametrizations.weight.original1"))


def rename_weight_norm(state: dict, prefix: str, own_keys) -> dict:
    """Rename the positional convolution's weight-norm tensors under ``prefix`` (e.g.
    ``"...encoder.pos_conv_embed.conv."``) to the naming in ``own_keys`` (torch < 2.1 / older
    transformers wrote ``weight_g/v``, newer ``parametrizations.weight.original0/1``). In place."""
    for old, new in WEIGHT_NORM_NAMES:
        for theirs, ours in ((old, new), (new, old)):
            if prefix + ours in own_keys and prefix + theirs in state and prefix + ours not in state:
                state[prefix + ours] = state.pop(prefix + theirs)
    return state


class PositionalConvEmbedding(nn.Module):
    """Grouped convolution over time (weight-normed), 'same' length, activation: (B,T,H) -> (B,T,H).
    An even kernel pads one frame too many on the right, which is dropped."""

    def __init__(self, c):
        super().__init__()
        k = c.num_conv_pos_embeddings
        self.conv = _weight_norm(nn.Conv1d(c.hidden_size, c.hidden_size, kernel_size=k, padding=k // 2,
                                           groups=c.num_conv_pos_embedding_groups))
        self.remove = 1 if k % 2 == 0 else 0
        self.activation = ACTIVATIONS[c.feat_extract_activation]
        self._register_load_state_dict_pre_hook(self._rename_hook)

    def _rename_hook(self, state, prefix, *args):
        own = {prefix + "conv." + k for k in self.conv.state_dict()}
        rename_weight_norm(state, prefix + "conv.", own)

    def forward(self, x):
        x = self.conv(x.transpose(1, 2))
        if self.remove:
            x = x[:, :, :-self.remove]
        return self.activation(x).transpose(1, 2)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention: x (B,T,H), key_mask (B,T) bool True = real or None."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.out_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x, key_mask=None):
        B, T, H = x.shape
        q, k, v = (p(x).view(B, T, self.heads, H // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))                     # (B,h,T,H/h)
        mask = None if key_mask is None else key_mask[:, None, None, :]                # (B,1,1,T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H))


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.intermediate_dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.activation = ACTIVATIONS[c.hidden_act]
        self.output_dense = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.output_dense(self.activation(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN (wav2vec2-base) or, with ``pre_ln`` (do_stable_layer_norm, wav2vec2-large-lv60), pre-LN."""

    def __init__(self, c, pre_ln: bool):
        super().__init__()
        self.pre_ln = pre_ln
        self.attention = Attention(c.hidden_size, c.num_attention_heads)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.feed_forward = FeedForward(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x, key_mask=None):
        if self.pre_ln:
            x = x + self.attention(self.layer_norm(x), key_mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, key_mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional convolution + transformer layers: (B,T,H) -> (last hidden state (B,T,H),).

    ``attention_mask`` (B,T) bool, True = real frame: padded frames are zeroed before the positional
    convolution and are not attended to (their own outputs are meaningless, as in HF). Post-LN applies
    ``layer_norm`` before the layers, pre-LN (``do_stable_layer_norm``) after them."""

    def __init__(self, c):
        super().__init__()
        self.pre_ln = bool(c.do_stable_layer_norm)
        self.pos_conv_embed = PositionalConvEmbedding(c)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(c, self.pre_ln) for _ in range(c.num_hidden_layers))

    def forward(self, x, attention_mask=None):
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()
            x = x.masked_fill(~mask[..., None], 0.0)
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, mask)
        if self.pre_ln:
            x = self.layer_norm(x)
        return (x,)


class Wav2Vec2Runtime(nn.Module):
    """HF ``Wav2Vec2Model``'s modules for inference, built from its config dict (``unsupported`` = None).

    The code runs the submodules (``feature_extractor``, ``feature_projection``, ``encoder``), never a
    forward of this module, as with HF's model (models/wav2vec.py)."""

    def __init__(self, config: dict):
        super().__init__()
        why = unsupported(config)
        if why:
            raise ValueError(f"wav2vec2 config not supported without transformers: {why}")
        self.config = c = RuntimeConfig(**config)
        self.feature_extractor = FeatureEncoder(c)
        self.feature_projection = FeatureProjection(c)
        if c.mask_time_prob > 0.0 or c.mask_feature_prob > 0.0:  # HF creates it then; the checkpoint holds it
            self.masked_spec_embed = nn.Parameter(torch.zeros(c.hidden_size), requires_grad=False)
        self.encoder = Encoder(c)
        install_frontend(self)

    @classmethod
    def empty(cls, config: dict) -> "Wav2Vec2Runtime":
        """Built without initialising its weights (uninitialised memory: load a state dict next). The
        checkpoint overwrites every weight, and random init of wav2vec2-base alone takes ~0.5 s."""
        with _no_random_init():
            return cls(config)

    def freeze_feature_encoder(self):
        self.feature_extractor._freeze_parameters()

