"""main/render.py and main/rendering/: real offscreen renders decoded back from the mp4 (frames, streams, durations)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import main.rendering.video as R  # sets PYOPENGL_PLATFORM (default egl) before pyrender is imported
from main.render import main as render_main
from main.rendering.scene import RenderError, frame_camera
from utils.errors import ResultsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = ("import pyrender\n"
          "r = pyrender.OffscreenRenderer(8, 8); s = pyrender.Scene()\n"
          "s.add(pyrender.PerspectiveCamera(yfov=1.0))\n"
          "r.render(s); r.delete()\n")


def _context_works(platform):
    env = dict(os.environ, PYOPENGL_PLATFORM=platform)
    p = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode == 0, p.stderr.strip().splitlines()[-1:] or [""]


@pytest.fixture(scope="module")
def gl():
    """Skip only when no GL backend at all can create a context (a failure when FACEFORMER_REQUIRE_GL=1,
    as in CI); if another backend than the configured one works, that is a configuration error and the
    tests fail."""
    current = os.environ["PYOPENGL_PLATFORM"]
    ok, err = _context_works(current)
    if ok:
        return current
    others = [p for p in ("egl", "osmesa") if p != current and _context_works(p)[0]]
    if others:
        pytest.fail(f"PYOPENGL_PLATFORM={current} cannot create a context ({err[0]}) but {others[0]} can")
    why = f"no GL backend can create an offscreen context (tried {sorted({current, 'egl', 'osmesa'})}): {err[0]}"
    if os.environ.get("FACEFORMER_REQUIRE_GL") == "1":  # set by .ci/run: CI must render
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The procedural stand-in FLAME (5023 vertices) written as a pkl: (model path, FLAME)."""
    from models.flame import FLAME
    from scripts.flame_standin import write_standin_files
    model_path, _ = write_standin_files(str(tmp_path_factory.mktemp("flame")))
    return model_path, FLAME.from_file(model_path)


@pytest.fixture(params=["gl", "cpu"])
def backend(request):
    """Each render test runs on the OpenGL backend (the platform the ``gl`` fixture found working) and on
    the CPU rasteriser; the CPU runs need no GL and are never skipped."""
    if request.param == "cpu":
        return "cpu"
    return request.getfixturevalue("gl")


def _talking_head(standin, n_frames=5):
    """Stand-in FLAME frames whose jaw opens over time: (T,5023,3) float32, faces (F,3)."""
    flame = standin[1]
    motion = np.zeros((n_frames, 51), np.float32)
    motion[:, 50] = np.linspace(0.0, 0.35, n_frames)  # jaw rotation (rad)
    return flame.motion_to_vertices(motion), flame.faces


def _write_wav(path, seconds, sr=16000):
    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    return path


def _decode(path):
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]


def _ffmpeg_info(path):
    import imageio_ffmpeg
    p = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True, text=True)
    return p.stderr


def _audio_seconds(path, tmp_path):
    """Decode the mp4's audio stream to a wav and measure it."""
    import imageio_ffmpeg
    wav = str(tmp_path / "decoded.wav")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", path, "-map", "0:a:0", wav],
                   check=True)
    info = sf.info(wav)
    return info.frames / info.samplerate


def _changed(a, b):
    """Fraction of pixels that differ by more than 30 grey levels in some channel (H.264 coding
    noise stays far below that; a moving jaw does not)."""
    return (np.abs(a.astype(int) - b.astype(int)).max(-1) > 30).mean()


def _assert_shows_mesh(img):
    assert not (img == img[0, 0]).all(), "uniform frame"
    # the background is white: a visible mesh covers a sizeable part of the image, but not all of it
    covered = (img.min(-1) < 240).mean()
    assert 0.05 < covered < 0.95, covered


def test_render_sequence_with_audio(backend, standin, tmp_path):
    import imageio_ffmpeg
    frames, faces = _talking_head(standin, 5)
    wav = _write_wav(str(tmp_path / "a.wav"), 0.2)  # 5 frames at 25 fps
    out = R.render_sequence(frames, faces, str(tmp_path / "out" / "clip.mp4"), 25, audio=wav, size=128,
                            progress=False, backend=backend)
    assert os.path.isfile(out)
    assert [p for p in os.listdir(tmp_path / "out") if p != "clip.mp4"] == []  # temp files removed

    n, secs = imageio_ffmpeg.count_frames_and_secs(out)
    assert n == 5 and secs == pytest.approx(0.2, abs=1e-3)
    meta, imgs = _decode(out)
    assert meta["size"] == (128, 128) and meta["fps"] == pytest.approx(25)
    assert len(imgs) == 5
    for img in imgs:
        _assert_shows_mesh(img)
    # the jaw opens: the mouth region of the last frame differs from the first (~1.6% of pixels)
    assert _changed(imgs[4], imgs[0]) > 0.005

    info = _ffmpeg_info(out)
    assert re.search(r"Stream #0:\d.*Video: h264.*yuv420p", info), info
    assert re.search(r"Stream #0:\d.*Audio: aac", info), info
    # the whole wav is there (no -shortest) and lasts as long as the 5 frames
    assert _audio_seconds(out, tmp_path) == pytest.approx(0.2, abs=0.01)


def test_silent_video_and_side_by_side_ground_truth(backend, standin, tmp_path):
    frames, faces = _talking_head(standin, 3)
    gt = frames[::-1].copy()  # jaw closing instead of opening: frames 0 and 2 differ from the prediction
    out = R.render_sequence(frames, faces, str(tmp_path / "sbs.mp4"), 20, gt=gt, size=96, progress=False,
                            backend=backend)
    meta, imgs = _decode(out)
    assert meta["size"] == (192, 96) and meta["fps"] == pytest.approx(20) and len(imgs) == 3
    assert "Audio:" not in _ffmpeg_info(out)
    for img in imgs:
        _assert_shows_mesh(img[:, :96])
        _assert_shows_mesh(img[:, 96:])
    # frame 0: open vs closed jaw (~1.7% of pixels differ); middle frame: the same mesh drawn with the
    # same camera, so the panels differ only by coding noise (~0.01%)
    assert _changed(imgs[0][:, :96], imgs[0][:, 96:]) > 0.005
    assert _changed(imgs[1][:, :96], imgs[1][:, 96:]) < 0.001


def test_frame_without_mesh_is_an_error(backend, standin, tmp_path):
    frames, faces = _talking_head(standin, 1)
    renderer, used = R.open_renderer(backend, faces, frame_camera(frames), size=64)
    assert used == backend
    try:
        _assert_shows_mesh(renderer.render(frames[0]))
        behind_camera = frames[0] + np.array([0, 0, 100.0], np.float32)
        with pytest.raises(RenderError, match="frame 7 .*no mesh pixel"):
            renderer.render(behind_camera, 7)
    finally:
        renderer.close()


def test_bad_input_writes_no_video(standin, tmp_path):
    frames, faces = _talking_head(standin, 2)
    out = tmp_path / "bad.mp4"
    with pytest.raises(RenderError, match="same point"):
        R.render_sequence(np.zeros_like(frames), faces, str(out), 25, progress=False, backend="cpu")
    with pytest.raises(RenderError, match="NaN"):
        R.render_sequence(frames * np.nan, faces, str(out), 25, progress=False, backend="cpu")
    with pytest.raises(RenderError, match="do not index"):
        R.render_sequence(frames[:, :10], faces, str(out), 25, progress=False, backend="cpu")
    assert os.listdir(tmp_path) == []


def _mask(img):
    return (img != 255).any(-1)  # anything but the white background


def test_backends_draw_the_same_face(gl, standin):
    """One camera function, one scene: the CPU rasteriser's silhouette of a frame matches pyrender's
    (whose 4x multisampled edges add a rim of partly covered pixels: IoU 0.995 measured at 512 px) and
    its shading (Gouraud vs per-pixel) stays within a few grey levels inside."""
    frames, faces = _talking_head(standin, 5)
    camera = frame_camera(frames)
    gl_renderer, _ = R.open_renderer(gl, faces, camera, 512)
    cpu_renderer, _ = R.open_renderer("cpu", faces, camera, 512)
    try:
        for t in (0, 4):  # jaw closed and open
            a, b = gl_renderer.render(frames[t]), cpu_renderer.render(frames[t])
            ma, mb = _mask(a), _mask(b)
            assert 0.2 < ma.mean() < 0.4
            assert (ma & mb).sum() / (ma | mb).sum() >= 0.98
            inside = ma & mb
            assert np.abs(a.astype(int) - b.astype(int))[inside].mean() < 2.0  # measured 0.55-0.67
            assert _changed(a, b) < 0.01  # measured 0.4%: the anti-aliased rim
    finally:
        gl_renderer.close()


def test_camera_projection_is_pyrenders(gl, standin):
    """Camera.to_pixels (the CPU path) projects with the matrix pyrender builds from the same Camera."""
    import pyrender
    frames, _ = _talking_head(standin, 1)
    camera = frame_camera(frames)
    size = 200
    P = pyrender.PerspectiveCamera(yfov=camera.yfov, znear=camera.znear, zfar=camera.zfar,
                                   aspectRatio=1.0).get_projection_matrix(size, size)
    np.testing.assert_allclose(camera.projection(), P, rtol=1e-12)
    pts = frames[0].astype(np.float64)
    clip = np.c_[pts, np.ones(len(pts))] @ (P @ np.linalg.inv(camera.pose)).T
    ndc = clip[:, :3] / clip[:, 3:]
    xy, depth = camera.to_pixels(pts, size)
    np.testing.assert_allclose(xy, np.c_[(ndc[:, 0] + 1) * size / 2, (1 - ndc[:, 1]) * size / 2], atol=1e-9)
    np.testing.assert_allclose(depth, clip[:, 3], rtol=1e-12)
    assert ((xy > 0) & (xy < size)).all()  # the framing keeps every vertex in the image


def test_rasteriser_covers_pixel_centres_once_and_keeps_the_nearest():
    """Shapes whose coverage is known exactly: a rectangle of two triangles covers the pixels whose
    centres it contains, each once (the shared diagonal too); a nearer rectangle hides a farther one;
    back faces are not drawn; enumerating candidates in small batches changes nothing."""
    from main.rendering.cpu import rasterize
    size = 40
    # rectangle x 10..30, y 10..20 at depth 2 and x 20..35, y 5..15 at depth 1 (front faces: clockwise
    # on screen with y down); one back-facing triangle over the whole image
    xy = np.array([[10, 10], [30, 10], [30, 20], [10, 20], [20, 5], [35, 5], [35, 15], [20, 15],
                   [0, 0], [40, 0], [0, 40]], float)
    depth = np.array([2.0] * 4 + [1.0] * 4 + [0.5] * 3)
    faces = np.array([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6], [8, 9, 10]])
    pixel, face, bary = rasterize(xy, depth, faces, size)
    assert len(np.unique(pixel)) == len(pixel)
    img = np.full(size * size, -1)
    img[pixel] = face // 2  # 0: far rectangle, 1: near one
    img = img.reshape(size, size)
    expect = np.full((size, size), -1)
    expect[10:20, 10:30] = 0
    expect[5:15, 20:35] = 1
    np.testing.assert_array_equal(img, expect)
    np.testing.assert_allclose(bary.sum(1), 1, atol=1e-5)
    assert (bary >= 0).all()
    for budget in (1, 37, 1000):
        assert all(np.array_equal(a, b) for a, b in zip((pixel, face, bary), rasterize(xy, depth, faces, size, budget)))
    # behind the camera: nothing is drawn
    assert len(rasterize(xy, -depth, faces, size)[0]) == 0


def test_auto_falls_back_to_cpu_and_says_why(standin, tmp_path, monkeypatch, caplog):
    """No GL platform starts: auto renders on the CPU, with one warning naming each platform's failure."""
    frames, faces = _talking_head(standin, 2)

    def no_context(*args, **kwargs):
        try:
            raise ValueError("Invalid device ID (0)")
        except ValueError as e:
            raise RenderError("could not create an offscreen GL renderer") from e
    monkeypatch.setattr(R, "MeshRenderer", no_context)
    monkeypatch.setattr(R, "use_platform", lambda platform: None)
    monkeypatch.setattr(R, "missing_libraries", lambda platform: ["libOSMesa"] if platform == "osmesa" else [])
    monkeypatch.setattr(R, "_auto_choice", None)
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    with caplog.at_level("INFO", logger="render"):
        R.render_sequence(frames, faces, str(tmp_path / "a.mp4"), 25, size=64, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["no OpenGL context (egl: ValueError: Invalid device ID (0); osmesa: libOSMesa not found): "
                        "rendering with the CPU rasteriser (--backend egl|osmesa shows the GL error with install "
                        "hints)"]
    assert any("2 frames, cpu backend" in r.getMessage() for r in caplog.records)
    _assert_shows_mesh(_decode(str(tmp_path / "a.mp4"))[1][0])
    # the choice holds for the rest of the process: no second attempt, no second warning
    caplog.clear()
    with caplog.at_level("INFO", logger="render"):
        R.render_sequence(frames, faces, str(tmp_path / "b.mp4"), 25, size=64, progress=False)
    assert [r.levelname for r in caplog.records if r.levelname == "WARNING"] == []
    # a backend asked for by name that cannot start is an error, not a fallback
    with pytest.raises(RenderError, match="offscreen GL renderer"):
        R.render_sequence(frames, faces, str(tmp_path / "c.mp4"), 25, size=64, progress=False, backend="egl")
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]


def test_video_permissions_follow_the_umask(standin, tmp_path):
    """Like checkpoints: 0666 less the umask (the temporary file it is renamed from is 0600)."""
    frames, faces = _talking_head(standin, 1)
    wav = _write_wav(str(tmp_path / "a.wav"), 0.04)
    for mask, audio in ((0o022, None), (0o027, wav)):
        old = os.umask(mask)
        try:
            out = R.render_sequence(frames, faces, str(tmp_path / f"v{mask:o}.mp4"), 25, audio=audio, size=32,
                                    progress=False, backend="cpu")
        finally:
            os.umask(old)
        assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask


def test_cli_renders_a_results_tree(backend, standin, tmp_path):
    """`python main/render.py` from the repo root, no PYTHONPATH: a tree with a style folder whose name
    has quotes, brackets and a space; faces from the config's FLAME model; audio and fps from the
    coeff tree's meta.json where present, else the dataset's fps from the config."""
    import imageio_ffmpeg
    frames, faces = _talking_head(standin, 5)

    out_root, coeff_root = tmp_path / "metrics" / "test", tmp_path / "coeffs" / "test"
    style = json.dumps(["M003", "angry"]) + "_passionate"
    leaves = {("MEAD_VHAP", style): 20, ("digital_human", "plain"): None}
    for (ds, st), fps in leaves.items():
        leaf = out_root / "exp" / ds / st
        leaf.mkdir(parents=True)
        for i, f in enumerate(frames):
            np.save(leaf / f"{i}.npy", f)
        if fps:
            (coeff_root / "exp" / ds / st).mkdir(parents=True)
            wav = _write_wav(str(tmp_path / "speech.wav"), 5 / fps)
            with open(coeff_root / "exp" / ds / st / "meta.json", "w") as fh:
                json.dump({"sample_id": "s1", "dataset": ds, "style_id": st, "audio_path": wav,
                           "fps": fps, "n_frames": 5}, fh)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "main/render.py", "--config", "config/demo.yaml", "--out", str(tmp_path / "videos"),
           "--size", "64", f"FLAME.model_path={standin[0]}", f"INFER.output_root={out_root}", f"INFER.coeff_root={coeff_root}",
           "INFER.exp_name=exp", "--backend", backend]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(f"5 frames, {backend} backend") == 2, p.stdout

    with_audio = tmp_path / "videos" / "exp" / "MEAD_VHAP" / f"{style}.mp4"
    silent = tmp_path / "videos" / "exp" / "digital_human" / "plain.mp4"
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(with_audio))
    assert n == 5 and secs == pytest.approx(0.25, abs=1e-3)  # meta.json's 20 fps
    assert "Audio: aac" in _ffmpeg_info(str(with_audio))
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(silent))
    assert n == 5 and secs == pytest.approx(0.2, abs=1e-3)  # digital_human's 25 fps from the config
    assert "Audio:" not in _ffmpeg_info(str(silent))
    # nothing was written into the vertex folders
    for (ds, st) in leaves:
        assert sorted(os.listdir(out_root / "exp" / ds / st)) == sorted(f"{i}.npy" for i in range(5))


def test_cli_without_gl_renders_on_cpu(standin, tmp_path):
    """A machine whose EGL finds no driver (glvnd pointed at no vendor file): the default backend
    renders on the CPU and the log line says why."""
    frames, _ = _talking_head(standin, 3)
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    for i, f in enumerate(frames):
        np.save(leaf / f"{i}.npy", f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYOPENGL_PLATFORM")}
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(tmp_path / "no_vendor.json")
    cmd = [sys.executable, "main/render.py", "--config", "config/demo.yaml", "--results", str(leaf),
           "--out", str(tmp_path / "clip.mp4"), "--size", "64", f"FLAME.model_path={standin[0]}"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    if "egl backend" in p.stdout:
        pytest.skip("this libEGL does not read __EGL_VENDOR_LIBRARY_FILENAMES: EGL still works")
    if "osmesa backend" not in p.stdout:  # where libOSMesa is installed, auto takes it before the CPU
        assert re.search(r"WARNING no OpenGL context \(egl: [^;]+; osmesa: [^)]+\): rendering with the CPU",
                         p.stdout), p.stdout
        assert "3 frames, cpu backend" in p.stdout, p.stdout
    _assert_shows_mesh(_decode(str(tmp_path / "clip.mp4"))[1][2])


def test_cli_keeps_existing_videos_unless_told(standin, tmp_path):
    """Existing videos follow inference's new / resume / overwrite rule: refused by default (nothing
    rendered), kept with --resume, replaced with --overwrite."""
    import imageio_ffmpeg
    frames, _ = _talking_head(standin, 3)
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    for i, f in enumerate(frames):
        np.save(leaf / f"{i}.npy", f)
    mp4 = tmp_path / "clip.mp4"
    args = ["--config", os.path.join(REPO, "config", "demo.yaml"), "--results", str(leaf), "--out", str(mp4),
            "--size", "64", "--backend", "cpu", f"FLAME.model_path={standin[0]}"]
    render_main(args)
    mp4.write_bytes(b"old")
    with pytest.raises(ResultsError, match=re.escape(f"{mp4} already holds results; rerun with --overwrite")):
        render_main(args)
    render_main([*args, "--resume"])
    assert mp4.read_bytes() == b"old"
    render_main([*args, "--overwrite"])
    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 3
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "leaf"]  # no temporary video left


@pytest.mark.parametrize("size", ["513", "100000", "0", "-2", "big"])
def test_cli_size_must_be_an_even_frame_size(size, capsys):
    with pytest.raises(SystemExit) as e:
        render_main(["--results", "nowhere", "--size", size])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"argument --size: '{size}' is not an even number of pixels from 16 to 4096")
