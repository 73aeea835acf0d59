"""main/results/reader.py: frame files in numeric order without gaps, bad frame files named, temporary
folders skipped, meta.json found beside a result, a result folder's fps."""
import os
import re

import numpy as np
import pytest

import main.results.reader as RT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frame_files_order_and_gaps(tmp_path):
    for i in (0, 1, 2, 10):
        np.save(tmp_path / f"{i}.npy", np.full((4, 3), i, np.float32))
    with pytest.raises(RT.ResultsError, match="without gaps"):
        RT.frame_files(str(tmp_path))
    for i in range(3, 10):
        np.save(tmp_path / f"{i}.npy", np.full((4, 3), i, np.float32))
    # numeric, not lexicographic, order: 10.npy comes last
    assert RT.load_frames(str(tmp_path))[:, 0, 0].tolist() == list(range(11))


def test_torn_or_wrong_shaped_frame_files_are_named(tmp_path):
    """The readers render and evaluate share name the bad file; temporary folders of
    an unfinished inference are not sequences."""
    leaf = tmp_path / "E" / "DS" / "s"
    leaf.mkdir(parents=True)
    for i in range(3):
        np.save(leaf / f"{i}.npy", np.zeros((4, 3), np.float32))
    (leaf / "1.npy").write_bytes(open(leaf / "0.npy", "rb").read()[:90])  # torn mid-header
    with pytest.raises(RT.ResultsError, match=re.escape(f"{leaf / '1.npy'}: unreadable frame file (90 bytes")):
        RT.load_frames(str(leaf))
    np.save(leaf / "1.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(RT.ResultsError, match=re.escape(f"{leaf / '1.npy'}: expected (4, 3) vertices like 0.npy")):
        RT.load_frames(str(leaf))
    tmp = tmp_path / "E" / "DS" / f"{RT.TMP_PREFIX}t-123"
    tmp.mkdir()
    np.save(tmp / "0.npy", np.zeros((4, 3), np.float32))
    assert RT.find_leaves(str(tmp_path / "E")) == [str(leaf)]


def test_meta_json_lookup(tmp_path):
    """meta.json comes from the parallel coeff tree for a results-tree leaf, and from next to the
    folder for single-audio inference output (DIR/vertices/ + DIR/meta.json)."""
    from utils.config import load_config
    cfg = load_config(os.path.join(REPO, "config/demo.yaml"), [
        f"INFER.output_root={tmp_path}/metrics/test", f"INFER.coeff_root={tmp_path}/coeffs/test"])
    leaf = tmp_path / "metrics" / "test" / "exp" / "MEAD_VHAP" / "s"
    leaf.mkdir(parents=True)
    assert RT.leaf_meta(str(leaf), cfg) is None
    (tmp_path / "coeffs" / "test" / "exp" / "MEAD_VHAP" / "s").mkdir(parents=True)
    (tmp_path / "coeffs" / "test" / "exp" / "MEAD_VHAP" / "s" / "meta.json").write_text('{"fps": 20}')
    assert RT.leaf_meta(str(leaf), cfg) == {"fps": 20}
    # nothing is ever looked up inside the results tree itself
    (leaf.parent / "meta.json").write_text('{"fps": 99}')
    assert RT.leaf_meta(str(leaf), cfg) == {"fps": 20}

    single = tmp_path / "single" / "speech"
    (single / "vertices").mkdir(parents=True)
    assert RT.leaf_meta(str(single / "vertices"), cfg) is None
    (single / "meta.json").write_text('{"fps": 25, "audio_path": "/x.wav"}')
    assert RT.leaf_meta(str(single / "vertices"), cfg)["audio_path"] == "/x.wav"
    # the fps rule: --fps, then meta.json, then the config (native = the dataset's), then 25
    assert RT.leaf_fps({"fps": 20}, "MEAD_VHAP", cfg, 30) == (30.0, "--fps")
    assert RT.leaf_fps({"fps": 20}, "MEAD_VHAP", cfg, None) == (20.0, "meta.json")
    assert RT.leaf_fps(None, "MultiModal200", cfg, None)[0] == 20.0
    assert RT.leaf_fps(None, None, cfg, None) == (25.0, "default")
