"""The listening check (main/evaluation/listening.py): LVE with another clip's audio over LVE with the clip's own."""
import json
import os

import numpy as np
import pytest
import torch

from main.evaluation.listening import listening_check, other_audio
from tests.conftest import ROOT, write_tiny_checkpoint
from utils.config import load_config

DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
STYLES = ["M003", "M005", "W009", "W011"]


def test_other_audio_is_a_derangement_of_the_same_lengths():
    audios = [np.full(n, float(i), np.float32) for i, n in enumerate([5, 9, 3, 7, 4])]
    for seed in range(5):
        got = other_audio(audios, seed)
        assert [len(a) for a in got] == [5, 9, 3, 7, 4]
        donors = [int(a[0]) for a in got]
        assert all(d != i for i, d in enumerate(donors))       # nobody keeps its own audio
        assert sorted(donors) == list(range(5))                # every audio is used once
        for a in got:
            assert np.all(a == a[0])                           # looped or cut, never mixed
    single = [np.arange(4, dtype=np.float32)]
    assert np.array_equal(other_audio(single)[0], single[0][::-1])


def _deaf(model):
    """No path from the audio to the decoder: the cross-attention term is constant."""
    for layer in model.layers:
        torch.nn.init.zeros_(layer.cross_value.weight)


@pytest.mark.parametrize("deaf", [True, False])
def test_listening_ratio_is_one_for_a_model_that_ignores_audio(demo_root, tmp_path, deaf):
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={demo_root}", "INFER.device=cpu"])
    ckpt = write_tiny_checkpoint(cfg, STYLES, str(tmp_path / "best_model.pth"), edit=_deaf if deaf else None)
    rep = listening_check(cfg, ckpt)
    assert rep["n_clips"] == 7   # the demo's MEAD_VHAP and MultiModal200 test clips
    assert rep["LVE_own_audio"] > 0
    if deaf:
        assert rep["listening_ratio"] == pytest.approx(1.0, abs=1e-6)
    else:
        assert abs(rep["listening_ratio"] - 1.0) > 1e-3


def test_evaluate_listening_flag_writes_the_ratio(demo_root, tmp_path, capsys):
    from main.evaluate import main as eval_main
    from main.inference import cli as infer_cli

    out = tmp_path / "results"
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={demo_root}"])
    ckpt = write_tiny_checkpoint(cfg, STYLES, str(tmp_path / "ckpt" / "best_model.pth"))
    args = [f"DATA.data_root={demo_root}", f"INFER.checkpoint={ckpt}", "INFER.device=cpu",
            f"INFER.output_root={out}/metrics", f"INFER.coeff_root={out}/coeffs", "INFER.exp_name=tiny"]
    infer_cli(["--config", DEMO_CFG, *args])
    eval_main(["--config", DEMO_CFG, "--listening", "--no_plots", *args])
    assert "listening check (7 'test' clips" in capsys.readouterr().out
    with open(out / "metrics" / "metrics_tiny.json") as f:
        rep = json.load(f)
    assert rep["listening"]["listening_ratio"] == pytest.approx(
        rep["listening"]["LVE_other_audio"] / rep["listening"]["LVE_own_audio"])


def test_listening_line_says_what_was_heard():
    from main.evaluation.listening import format_listening

    rep = {"n_clips": 1, "split": "test", "LVE_own_audio": 1.0, "LVE_other_audio": 1.0, "listening_ratio": 1.0,
           "silent_clips": 1, "other_audio": "reversed"}
    line = format_listening(rep)
    assert "its own audio reversed 1" in line and "other clip" not in line
    assert line.endswith("(the audio is silent: the ratio says nothing about listening)")
    line = format_listening(dict(rep, n_clips=3, silent_clips=0, other_audio="other clips'"))
    assert "other clip's audio 1" in line and line.endswith("(about 1.0: the model ignores the audio)")


def test_listening_without_a_checkpoint_names_the_key_evaluate_takes(tmp_path):
    from utils.errors import InferenceError

    cfg = load_config(DEMO_CFG, [f"TRAIN.save_path={tmp_path}", "INFER.device=cpu"])
    with pytest.raises(InferenceError, match=r"or set INFER.checkpoint=PATH$"):
        listening_check(cfg)
