"""Bounded decoder attention and streaming (models/streaming.py) on the demo's tiny wav2vec2 (CPU, random init)."""
import os

import numpy as np
import pytest
import torch

from dataset.audio import normalize_audio
from models.decoder_layer import alibi_bias, periodic_positional_encoding
from models.streaming import Streamer
from tests.conftest import speech, tiny_model as conftest_tiny_model
from utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOP = 640


def tiny_model(norm="group", seed=0):
    return conftest_tiny_model(norm=norm, seed=seed, weight_std=0.2).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def offline(model, x, style=1, attention_window=None):
    with torch.no_grad():
        audio = torch.from_numpy(normalize_audio(x))[None]
        return model.generate(audio, torch.tensor([style]), len(x) // HOP,
                              attention_window=attention_window)[0].numpy()


def stream(model, x, piece=1000, **kw):
    """Feed x in pieces of ``piece`` samples; returns (list of push outputs, flush output)."""
    s = Streamer(model, style=1, **kw)
    pushed = [s.push(x[i:i + piece]) for i in range(0, len(x), piece)]
    return pushed, s.flush(), s


# ---- bounded attention -------------------------------------------------------------------------

def naive_windowed(model, feats, style, W):
    """Frame t = a teacher-forced pass over frames t-W+1..t (positions kept absolute) fed with the
    model's own earlier outputs; keep its last row. One decoder layer (the demo's)."""
    B, T, _ = feats.shape
    style_emb = model.style_embedding(style)
    out = feats.new_zeros(B, T + 1, model.motion_dim)   # row t + 1 = frame t; row 0 = motion[-1] = 0
    for t in range(T):
        s = max(0, t - W + 1)
        pe = periodic_positional_encoding(t + 1 - s, model.d, model.period, start=s)
        x = model._decoder_input(out[:, s:t + 1], style_emb, pe)
        pos = torch.arange(s, t + 1)
        y = model._run_layers(x, feats[:, s:t + 1], alibi_bias(model.slopes, pos, pos, model.period))
        out[:, t + 1] = y[:, -1]
    return out[:, 1:]


def test_bounded_attention_longer_than_clip_equals_unbounded(model):
    feats = torch.randn(2, 45, model.d, generator=torch.Generator().manual_seed(0))
    style = torch.tensor([0, 2])
    with torch.no_grad():
        full = model.generate_from_features(feats, style)
        for W in (45, 46, 600):
            assert (model.generate_from_features(feats, style, attention_window=W) - full).abs().max() < 1e-6
        short = model.generate_from_features(feats, style, attention_window=10)
    assert full.abs().mean() > 0.05
    assert (short[:, :10] - full[:, :10]).abs().max() < 1e-6    # identical until the window is full
    assert (short[:, 10:] - full[:, 10:]).abs().max() > 1e-3    # then it forgets: a real difference


@pytest.mark.parametrize("W", [1, 7, 31])
def test_bounded_attention_equals_naive_window(model, W):
    assert len(model.layers) == 1
    feats = torch.randn(1, 40, model.d, generator=torch.Generator().manual_seed(W))
    style = torch.tensor([1])
    with torch.no_grad():
        cached = model.generate_from_features(feats, style, attention_window=W)
        naive = naive_windowed(model, feats, style, W)
    assert (cached - naive).abs().max() < 1e-5


def test_generation_continues_across_calls(model):
    """generate_steps in pieces (as streaming calls it) = one call; the cache stays within the window."""
    feats = torch.randn(1, 50, model.d, generator=torch.Generator().manual_seed(4))
    style = torch.tensor([2])
    with torch.no_grad():
        for W in (None, 12):
            whole = model.generate_from_features(feats, style, attention_window=W)
            state = model.start_generation(style, W)
            parts = [model.generate_steps(state, feats[:, a:b]) for a, b in [(0, 1), (1, 9), (9, 9), (9, 50)]]
            assert (torch.cat(parts, 1) - whole).abs().max() < 1e-5
            if W:
                assert all(c["k"].shape[2] == W - 1 for c in state["caches"])


# ---- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["group", "layer"])
def test_stream_with_lookahead_over_the_whole_file_equals_offline(norm):
    m = tiny_model(norm)
    x = speech(60)
    pushed, rest, _ = stream(m, x, lookahead_ms=10 ** 6, left_context_ms=None, attention_window=None)
    assert sum(p.shape[0] for p in pushed) == 0                  # nothing is final before the end
    ref = offline(m, x)
    assert rest.shape == ref.shape == (60, 51)
    assert np.abs(rest - ref).max() < 1e-5
    assert np.abs(ref).mean() > 0.05


def test_flush_cuts_or_pads_to_whole_frames_like_offline(model):
    x = speech(30)
    for n in (30 * HOP - 200, 30 * HOP + 250):  # round(n / 640) = 30 either way
        y = np.pad(x, (0, max(0, n - len(x))))[:n]
        _, rest, _ = stream(model, y, lookahead_ms=10 ** 6, left_context_ms=None, attention_window=None)
        a = normalize_audio(y)
        a = np.pad(a, (0, max(0, 30 * HOP - n)))[:30 * HOP]          # what inference.run_single feeds
        with torch.no_grad():
            ref = model.generate(torch.from_numpy(a)[None], torch.tensor([1]), 30)[0].numpy()
        assert rest.shape == (30, 51) and np.abs(rest - ref).max() < 1e-5


def test_emitted_frames_depend_only_on_audio_up_to_the_lookahead(model):
    """Two streams that share the first 2 s and then differ: every frame emitted while the audio
    was still shared is identical; the frame count per chunk follows the lookahead rule."""
    a, b = speech(75, seed=0), speech(75, seed=1)
    shared = 40 * HOP
    b[:shared] = a[:shared]
    kw = dict(chunk_ms=200, lookahead_ms=300, left_context_ms=400, attention_window=20)
    pa, _, sa = stream(model, a, piece=3200, **kw)
    pb, _, _ = stream(model, b, piece=3200, **kw)
    n_shared = shared // 3200                                   # pushes made of shared audio only
    emitted = np.concatenate(pa[:n_shared])
    assert np.array_equal(emitted, np.concatenate(pb[:n_shared]))
    assert emitted.shape[0] == (shared - 300 * 16) // HOP       # frames whose end + 300 ms has arrived
    assert not np.array_equal(np.concatenate(pa), np.concatenate(pb))  # the rest does differ
    assert sa.latency_s == pytest.approx(0.5)


def test_push_granularity_does_not_matter(model):
    x = speech(50, seed=2)
    kw = dict(chunk_ms=120, lookahead_ms=150, left_context_ms=800, attention_window=30)
    r = np.random.default_rng(0)
    cuts = np.sort(r.choice(len(x), 25, replace=False))
    s = Streamer(model, style=1, **kw)
    pieces = [s.push(p) for p in np.split(x, cuts)] + [s.flush()]
    ref_push, ref_rest, _ = stream(model, x, piece=len(x), **kw)
    assert np.array_equal(np.concatenate(pieces), np.concatenate(ref_push + [ref_rest]))
    # int16 input is read as soundfile reads a 16-bit file
    q = np.round(x * 32767).astype(np.int16)
    p16, r16, _ = stream(model, q, **kw)
    pf, rf, _ = stream(model, q.astype(np.float32) / 32768, **kw)
    assert np.array_equal(np.concatenate(p16 + [r16]), np.concatenate(pf + [rf]))


def test_stream_memory_is_bounded(model):
    x = speech(150, seed=3)   # 6 s
    _, rest, s = stream(model, x, chunk_ms=200, lookahead_ms=300, left_context_ms=400, attention_window=16)
    assert s.n_emitted == 150 and rest.shape[0] > 0
    assert s.audio.proj.shape[0] <= 10 + 5 + 8 + 1                     # left context + chunk + lookahead frames
    assert s.audio.raw.shape[0] < 3200 + 300 * 16 + 2 * HOP
    assert all(c["k"].shape[2] == 15 for c in s.state["caches"])
    assert len(s.stats) == len(x) // 3200 + 1 and all(st["compute_s"] >= 0 for st in s.stats)


def test_stream_deviation_from_offline_is_small_with_enough_context(model):
    """Finite settings change the output (a real approximation), less with more lookahead."""
    x = speech(75, seed=4)
    ref = offline(model, x)
    spread = np.sqrt(np.mean((ref - ref.mean(0)) ** 2))
    dev = {}
    for la in (0, 600):
        p, r, _ = stream(model, x, lookahead_ms=la, left_context_ms=2000, attention_window=None)
        dev[la] = np.sqrt(np.mean((np.concatenate(p + [r]) - ref) ** 2)) / spread
    assert 0 < dev[600] < dev[0]


def test_warmup_holds_the_first_frames_once_then_streams_at_the_usual_latency(model):
    """warmup_ms: nothing is emitted before that much audio arrived; then the backlog comes at once,
    later frames follow chunk by chunk as without it, and the frame count equals offline's."""
    x = speech(60, seed=2)
    kw = dict(chunk_ms=200, lookahead_ms=300, left_context_ms=1000)
    cold, _, _ = stream(model, x, piece=3200, **kw)
    warm, flushed, s = stream(model, x, piece=3200, warmup_ms=1000, **kw)
    counts, cold_counts = [p.shape[0] for p in warm], [p.shape[0] for p in cold]
    assert counts[:4] == [0, 0, 0, 0] and counts[4] == (16000 - 4800) // HOP     # at 1.0 s: frames up to 0.7 s
    assert counts[5:] == cold_counts[5:]                                        # then as without warm-up
    assert sum(counts) + flushed.shape[0] == 60
    assert not np.allclose(np.concatenate(warm)[:10], np.concatenate(cold)[:10], atol=1e-4)  # warmer stats


def test_next_utterance_continues_the_normalisation_statistics(model):
    """A live session: the next utterance starts from the statistics of all audio so far, which is
    what priming a fresh Streamer with the previous utterance gives; the decoder starts afresh."""
    first, second = speech(30, seed=3), speech(25, seed=4)
    kw = dict(chunk_ms=200, lookahead_ms=300, left_context_ms=1000)
    a = Streamer(model, style=1, **kw)
    a.push(first)
    a.flush()
    b = a.next_utterance(style=2)
    primed = Streamer(model, style=2, **kw)
    primed.prime(first)
    out_b = np.concatenate([b.push(second), b.flush()])
    out_p = np.concatenate([primed.push(second), primed.flush()])
    assert np.allclose(out_b, out_p, atol=1e-5)
    cold = Streamer(model, style=2, **kw)
    assert not np.allclose(out_b, np.concatenate([cold.push(second), cold.flush()]), atol=1e-4)
    assert b.n_emitted == 25 and b.state["t"] == 25  # its own decoder: frames counted from 0


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="chunk_ms"):
        Streamer(model, chunk_ms=0)
    with pytest.raises(ValueError, match="style"):
        Streamer(model, style="nobody", styles=["a", "b", "c"])
    s = Streamer(model)
    with pytest.raises(ValueError, match="NaN"):
        s.push(np.array([0.0, np.nan], np.float32))
    s.flush()
    with pytest.raises(RuntimeError, match="flush"):
        s.push(np.zeros(10, np.float32))


# ---- command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A tiny checkpoint in the training format, the stand-in FLAME files and a 16-bit 16 kHz wav."""
    import soundfile as sf

    from scripts.flame_standin import write_standin_files

    root = str(tmp_path_factory.mktemp("stream_cli"))
    write_standin_files(os.path.join(root, "FLAME"))
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), [f"DATA.data_root={root}", "MODEL.audio_frontend=cnn"])
    m = tiny_model()
    ckpt = os.path.join(root, "best_model.pth")
    torch.save({"model": m.state_dict(), "optimizer": {}, "epoch": 1, "styles": ["A", "B", "C"],
                "config": cfg.to_dict()}, ckpt)
    pcm = np.round(speech(40, seed=5) * 32767).astype(np.int16)
    wav = os.path.join(root, "speech.wav")
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    return root, ckpt, wav, pcm


def run_cli(root, ckpt, *args):
    from main import inference as I
    return I.cli(["--config", os.path.join(ROOT, "config", "demo.yaml"), "--checkpoint", ckpt, "--style", "B",
                  *args, f"DATA.data_root={root}", "INFER.device=cpu"])


def read_vertex_folder(folder, n):
    assert sorted(os.listdir(folder)) == sorted(f"{i}.npy" for i in range(n))
    return np.stack([np.load(os.path.join(folder, f"{i}.npy")) for i in range(n)])


def test_cli_stream_file_writes_single_audio_outputs(cli_setup, tmp_path):
    """--stream with a lookahead over the whole file = single-audio mode's files; with the default
    settings the same files, plus stream_stats.json."""
    import json

    root, ckpt, wav, _ = cli_setup
    single = run_cli(root, ckpt, "--audio", wav, "--out", str(tmp_path / "single"))
    exact = run_cli(root, ckpt, "--audio", wav, "--stream", "--lookahead_ms", "1e9", "--left_context_ms", "-1",
                    "--out", str(tmp_path / "exact"), "INFER.attention_window=0")
    live = run_cli(root, ckpt, "--audio", wav, "--stream", "--out", str(tmp_path / "live"))
    ref = np.load(tmp_path / "single" / "motion.npy")
    assert np.abs(np.load(tmp_path / "exact" / "motion.npy") - ref).max() < 1e-5
    for run in ("exact", "live"):
        d = tmp_path / run
        motion = np.load(d / "motion.npy")
        verts = read_vertex_folder(d / "vertices", 40)
        assert motion.shape == (40, 51) and np.load(d / "coeffs287.npy").shape == (40, 287)
        assert np.abs(verts - read_vertex_folder(tmp_path / "single" / "vertices", 40)).max() < (
            1e-5 if run == "exact" else 1.0)
        meta = json.loads((d / "meta.json").read_text())
        assert meta["n_frames"] == 40 and meta["style_id"] == "B"
    stats = json.loads((tmp_path / "live" / "stream_stats.json").read_text())
    assert stats["algorithmic_latency_s"] == pytest.approx(0.5) and stats["audio_s"] == pytest.approx(1.6)
    assert sum(c["frames"] for c in stats["chunks"]) == 40 and len(stats["chunks"]) == 9  # 8 chunks + flush
    assert stats["real_time_factor"] > 0 and all(c["compute_s"] >= c["model_s"] >= 0 for c in stats["chunks"])
    assert exact["n_frames"] == live["n_frames"] == single["n_frames"] == 40


def test_cli_stdin_equals_stream_file(cli_setup, tmp_path, monkeypatch):
    """--audio - (raw PCM on stdin, vertices on stdout) gives the frames --stream gives on the same file."""
    import io

    root, ckpt, wav, pcm = cli_setup
    run_cli(root, ckpt, "--audio", wav, "--stream", "--out", str(tmp_path / "file"))
    stdin = io.TextIOWrapper(io.BytesIO(pcm.astype("<i2").tobytes()))
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    run_cli(root, ckpt, "--audio", "-", "--stdout_vertices", "--out", str(tmp_path / "live"))
    monkeypatch.undo()
    ref = read_vertex_folder(tmp_path / "file" / "vertices", 40)
    assert np.array_equal(read_vertex_folder(tmp_path / "live" / "vertices", 40), ref)
    assert np.array_equal(np.load(tmp_path / "live" / "motion.npy"), np.load(tmp_path / "file" / "motion.npy"))
    streamed = np.frombuffer(stdout.buffer.getvalue(), dtype="<f4").reshape(-1, *ref.shape[1:])
    assert np.array_equal(streamed, ref)


def test_cli_stream_refuses_existing_results_and_bad_flags(cli_setup, tmp_path):
    from utils.errors import InferenceError

    root, ckpt, wav, _ = cli_setup
    run_cli(root, ckpt, "--audio", wav, "--stream", "--out", str(tmp_path / "o"))
    with pytest.raises(InferenceError, match="already holds results"):
        run_cli(root, ckpt, "--audio", wav, "--stream", "--out", str(tmp_path / "o"))
    with pytest.raises(InferenceError, match="lookahead"):
        run_cli(root, ckpt, "--audio", wav, "--stream", "--lookahead_ms", "-5", "--out", str(tmp_path / "p"))
    with pytest.raises(SystemExit):
        run_cli(root, ckpt, "--audio", wav, "--lookahead_ms", "100", "--out", str(tmp_path / "q"))


def test_cli_prime_audio_primes_the_streamer(cli_setup, tmp_path):
    """--prime_audio FILE = Streamer.prime with that file's samples; --warmup_ms reaches the Streamer."""
    import json

    from main.infer.pipeline import one_cpu_thread

    root, ckpt, wav, pcm = cli_setup
    run_cli(root, ckpt, "--audio", wav, "--stream", "--prime_audio", wav, "--warmup_ms", "800",
            "--out", str(tmp_path / "p"))
    s = Streamer(tiny_model(), style=1, chunk_ms=200, lookahead_ms=300, left_context_ms=1000, warmup_ms=800)
    s.prime(pcm)
    with one_cpu_thread(torch.device("cpu")):  # as the command line streams
        ref = np.concatenate([s.push(pcm[i:i + s.chunk]) for i in range(0, len(pcm), s.chunk)] + [s.flush()])
    assert np.allclose(np.load(tmp_path / "p" / "motion.npy"), ref, atol=1e-6)
    stats = json.loads((tmp_path / "p" / "stream_stats.json").read_text())
    assert stats["primed_s"] == pytest.approx(1.6) and stats["warmup_ms"] == 800
    assert [c["frames"] for c in stats["chunks"]][:4] == [0, 0, 0, 12]  # at 0.8 s: frames up to 0.5 s


def test_streamer_from_a_checkpoint_path(cli_setup):
    root, ckpt, _, pcm = cli_setup
    kw = dict(chunk_ms=200, lookahead_ms=300, left_context_ms=1000)
    a = Streamer(ckpt, style="B", **kw)
    b = Streamer(tiny_model(), style=1, **kw)
    assert np.array_equal(np.concatenate([a.push(pcm), a.flush()]), np.concatenate([b.push(pcm), b.flush()]))


def test_decode_blocks_equal_generation_and_write_frames_equal_the_whole_conversion(model, tmp_path):
    """run_single decodes block by block and writes each block while the next is decoded: the same
    motion as one generate_from_features call, the same vertices as converting it whole."""
    from main.infer.decode import decode_blocks, write_frames
    from main.results.writer import FrameWriter
    from models.flame import FLAME
    from scripts.flame_standin import make_standin_flame

    feats = torch.randn(1, 23, model.d, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.generate_from_features(feats, torch.tensor([2]), attention_window=7)[0].numpy()
    blocks = list(decode_blocks(model, feats, 2, 7, block=5))
    assert [b.shape for b in blocks] == [(5, 51)] * 4 + [(3, 51)]
    assert np.allclose(np.concatenate(blocks), ref, atol=1e-6)
    flame = FLAME(make_standin_flame())
    with FrameWriter(str(tmp_path / "v"), str(tmp_path)) as writer:
        motion = write_frames(writer, flame, iter(blocks))
        assert writer.n == 23 and np.array_equal(motion, np.concatenate(blocks))
        writer.commit({}, {"n_frames": 23})
    frames = np.stack([np.load(tmp_path / "v" / f"{i}.npy") for i in range(23)])
    assert np.allclose(frames, flame.motion_to_vertices(ref), atol=1e-5)


def test_cli_stdin_never_replaces_a_complete_result_on_resume(cli_setup, tmp_path, monkeypatch):
    import io

    from utils.errors import InferenceError

    root, ckpt, _, pcm = cli_setup
    out = tmp_path / "live"

    def stream(*flags):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(pcm.astype("<i2").tobytes())))
        return run_cli(root, ckpt, "--audio", "-", "--out", str(out), *flags)

    stream()
    before = np.load(out / "motion.npy")
    with pytest.raises(InferenceError, match="live stream on stdin cannot be resumed into it .* --overwrite"):
        stream("--resume")
    with pytest.raises(InferenceError, match="already holds results; a live stream cannot be made again: rerun "
                                             "with --overwrite to replace them, or choose another --out$"):
        stream()
    assert np.array_equal(np.load(out / "motion.npy"), before)
