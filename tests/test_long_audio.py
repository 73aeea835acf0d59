"""Long audio: the chunked whole-clip CNN (AudioEncoder.cnn_features) and encode_long built on it."""
import pytest
import torch

from models.wav2vec import build_audio_encoder

SPF = 640  # audio samples per motion frame (16 kHz / 25 fps)


def tiny_encoder(norm: str):
    """wav2vec2-base geometry (kernels, strides: stride 320, receptive field 400), tiny widths."""
    cfg = {"audio_encoder_pretrained": False, "freeze_feature_encoder": True, "audio_encoder_config": dict(
        conv_dim=[16] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
        feat_extract_norm=norm, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0)}
    torch.manual_seed(0)
    enc = build_audio_encoder(cfg).eval()
    # random norm affines (the init is 1 / 0), so that applying them is checked too
    for m in enc.model.feature_extractor.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.normal_(m.weight, 1.0, 0.3)
            torch.nn.init.normal_(m.bias, 0.0, 0.3)
    return enc


def varying_audio(n: int, seed: int = 0) -> torch.Tensor:
    """Noise whose loudness changes over the clip: a window's statistics differ from the clip's."""
    g = torch.Generator().manual_seed(seed)
    envelope = 0.1 + 2.0 * torch.linspace(0, 1, n) ** 2
    return torch.randn(n, generator=g) * envelope + 0.3 * envelope


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_cnn_features_chunked_equal_whole_clip(norm):
    enc = tiny_encoder(norm)
    cnn = enc.model.feature_extractor
    # several chunks of 7 features, a length aligned to nothing; then clips shorter than one chunk,
    # down to exactly the receptive field (one feature)
    for n in [320 * 37 + 123, 320 * 5 + 7, 400]:
        audio = varying_audio(n)
        with torch.no_grad():
            whole = cnn(audio[None])[0]                                  # (C, F)
            chunked = enc.cnn_features(audio, chunk_features=7)
        assert chunked.shape == whole.shape == (16, int(enc.cnn_lengths(torch.tensor(n))))
        assert rel_err(chunked, whole) < 1e-4, n
    with pytest.raises(ValueError, match="receptive field"):
        enc.cnn_features(torch.zeros(399))


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_encode_long_whole_window_equals_forward(norm):
    enc = tiny_encoder(norm)
    T = 30
    audio = varying_audio(T * SPF - 100)
    with torch.no_grad():
        full = enc(audio[None], T)
        assert torch.equal(enc.encode_long(audio, T, window_frames=T, overlap_frames=4), full)
        assert torch.equal(enc.encode_long(audio, T, window_frames=T + 10, overlap_frames=4), full)


def projection_inputs(enc, audio, T, W, O, chunk_features):
    """encode_long's per-window inputs to the feature projection (the resampled CNN features)."""
    seen = []
    hook = enc.model.feature_projection.register_forward_hook(lambda m, args, out: seen.append(args[0][0]))
    try:
        with torch.no_grad():
            out = enc.encode_long(audio, T, window_frames=W, overlap_frames=O, chunk_features=chunk_features)
    finally:
        hook.remove()
    return out, seen


def test_encode_long_cnn_stage_is_the_whole_clips():
    """Group norm: every window's CNN features are the whole clip's, whatever the window size.

    Today's per-window forward normalised layer 0 with the window's own statistics, which this
    audio (loudness rising over the clip) makes visibly different; checked first, so that the
    comparison below means something.
    """
    enc = tiny_encoder("group")
    T = 60
    audio = varying_audio(T * SPF - 200, seed=1)
    with torch.no_grad():
        whole_cnn = enc.model.feature_extractor(audio[None])             # (1, C, F)
        per_window = enc.model.feature_extractor(audio[None, :20 * SPF])
        assert rel_err(per_window, whole_cnn[..., :per_window.shape[-1]]) > 0.05
        F = whole_cnn.shape[-1]
        expected = enc.resample(whole_cnn, T, torch.tensor([F]))[0]       # (T, C) one-forward inputs
    for W, O, chunk in [(20, 4, 9), (35, 6, 250)]:
        out, seen = projection_inputs(enc, audio, T, W, O, chunk)
        assert out.shape == (1, T, 32) and torch.isfinite(out).all()
        starts = list(range(0, T - O, W - O))[:len(seen)]
        assert len(seen) == len(starts) > 1
        for s, x in zip(starts, seen):
            e = min(s + W, T)
            assert x.shape == (e - s, 16)
            # the window's last frame reads its own span's last feature (as a lone clip would)
            assert rel_err(x[:-1], expected[s:e - 1]) < 1e-4, (W, s)


def test_encode_long_short_last_window():
    """A last window with less audio than its frames (N < 640 T) and less than one CNN chunk."""
    enc = tiny_encoder("group")
    T, W, O = 9, 4, 1
    audio = varying_audio(T * SPF - 300)
    with torch.no_grad():
        out = enc.encode_long(audio, T, window_frames=W, overlap_frames=O)
        full = enc(audio[None], T)
    assert out.shape == (1, T, 32) and torch.isfinite(out).all()
    # frames inside the first window see the same CNN inputs as the one forward; only the
    # transformer's context (4 frames vs 9) differs, so the outputs are close but not equal
    assert rel_err(out[0, :2], full[0, :2]) < 0.5


@pytest.mark.parametrize("bias", [False, True])
def test_conv0_moments_give_the_first_convs_channel_statistics(bias):
    """Conv0Moments: the first conv's per-channel mean / variance from the windows' sum and Gram matrix
    equal those of the conv's outputs; adding the audio in pieces (each starting at a window start, as
    the Streamer does) equals adding it at once."""
    import copy

    from models.conv0_moments import Conv0Moments

    torch.manual_seed(1)
    conv = torch.nn.Conv1d(1, 24, 10, stride=5, bias=bias)
    x = varying_audio(16003)
    with torch.no_grad():                                                 # the reference in float64
        y = copy.deepcopy(conv).double()(x.double()[None, None])[0]      # (C, positions)
    whole = Conv0Moments(10, 5)
    whole.add(x, chunk=999)                                               # several internal steps
    pieces = Conv0Moments(10, 5)
    n = y.shape[1]
    for a, b in ((0, 700), (700, 701), (701, n)):                        # positions [a, b)
        pieces.add(x[5 * a:5 * (b - 1) + 10])
    for m in (whole, pieces):
        mean, var = m.mean_var(conv)
        assert m.n == n
        assert torch.allclose(mean, y.mean(1), rtol=1e-9, atol=1e-9)
        assert torch.allclose(var, y.var(1, unbiased=False), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="plain 1-channel"):
        whole.mean_var(torch.nn.Conv1d(1, 4, 10, stride=4))
