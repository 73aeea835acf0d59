"""dataset/dataset.py: FaceDataset over several datasets, training crops, collate and the DataLoader.

The data are written in tmp_path by the fixture writers of tests/conftest.py (np.savez with the
documented key names and shapes), independently of the loader.
"""
import numpy as np
import pytest
import torch

from dataset.dataset import FaceDataset, collate
from dataset.flame_params import resample_motion
from dataset.styles import style_classes
from tests.conftest import expected_vhap, make_cfg, two_dataset_root


def test_face_dataset_concatenates_and_items(tmp_path):
    datasets, params = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=0)
    styles = style_classes(cfg)
    assert styles == ["a1", "a2", "b1"]
    ds = FaceDataset(cfg, "train", styles, progress=False)
    assert len(ds) == 5 and [r.dataset for r in ds.refs] == ["A"] * 3 + ["B"] * 2
    rep = ds.report["datasets"]
    assert rep["A"]["samples"] == 3 and rep["B"]["native_fps"] == [20]
    assert rep["A"]["hours"] == pytest.approx((40 + 60 + 35) / 25 / 3600)
    it = ds[3]
    assert it["sample_id"] == "B0" and it["native_fps"] == 20 and it["n_frames"] == 50
    assert it["audio"].shape == (50 * 640,) and it["audio"].dtype == torch.float32
    np.testing.assert_allclose(it["motion"].numpy(), resample_motion(expected_vhap(params["B0"]), 20, 25),
                               rtol=1e-5, atol=1e-6)
    assert it["style"].dtype == torch.long and int(it["style"]) == 2
    np.testing.assert_allclose(it["shape"].numpy(), params["B0"]["shape"][:100])  # FLAME.n_shape = 100
    assert int(ds[1]["style"]) == 1 and ds[1]["style_id"] == '["a2", "neutral"]_passionate'
    test = FaceDataset(cfg, "test", styles, progress=False)
    assert len(test) == 1 and int(test[0]["style"]) == -1 and test[0]["speaker"] == "b9"
    assert FaceDataset(cfg, "val", styles, progress=False).refs == []  # no dataset has a val JSON


def test_training_crop_cuts_audio_to_same_window(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=16)
    full = FaceDataset(cfg, "train", ["a1"], train=False, progress=False)
    crop = FaceDataset(cfg, "train", ["a1"], progress=False)
    assert crop.train and not full.train
    f = full[1]  # 60 frames
    assert f["n_frames"] == 60
    torch.manual_seed(0)
    starts = set()
    for _ in range(8):
        c = crop[1]
        assert c["n_frames"] == 16 and c["motion"].shape == (16, 51) and c["audio"].shape == (16 * 640,)
        diffs = [(f["motion"][s:s + 16] - c["motion"]).abs().max().item() for s in range(60 - 16 + 1)]
        s = int(np.argmin(diffs))
        assert diffs[s] == 0
        assert torch.equal(c["audio"], f["audio"][s * 640:(s + 16) * 640])
        starts.add(s)
    assert len(starts) > 1  # random windows
    assert crop[3]["n_frames"] == 16  # B0 is 50 frames at 25 fps


def test_collate_pads_with_masks():
    def item(t, v):
        return {"audio": torch.full((t * 640,), float(v)), "motion": torch.full((t, 51), float(v)),
                "shape": torch.full((100,), float(v)), "style": torch.tensor(v), "n_frames": t,
                "sample_id": f"s{v}", "dataset": "D", "style_id": f"st{v}", "speaker": "p", "native_fps": 20}
    b = collate([item(5, 1), item(3, 2)])
    assert b["audio"].shape == (2, 5 * 640) and b["motion"].shape == (2, 5, 51)
    assert b["motion_mask"].dtype == torch.bool and b["audio_mask"].dtype == torch.bool
    assert b["motion_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["audio_mask"][1, :3 * 640].all() and not b["audio_mask"][1, 3 * 640:].any()
    assert b["audio_mask"][0].all()
    assert (b["motion"][1, 3:] == 0).all() and (b["audio"][1, 3 * 640:] == 0).all()
    assert (b["motion"][1, :3] == 2).all() and (b["motion"][0] == 1).all()
    assert b["n_frames"].tolist() == [5, 3] and b["style"].tolist() == [1, 2]
    assert b["shape"].shape == (2, 100) and b["sample_id"] == ["s1", "s2"] and b["native_fps"] == [20, 20]


def test_dataloader_with_collate(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=0)
    ds = FaceDataset(cfg, "train", style_classes(cfg), progress=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    b = next(iter(dl))
    assert b["n_frames"].tolist() == [40, 60, 35, 50, 60]
    assert b["motion_mask"].sum(1).tolist() == [40, 60, 35, 50, 60]
    assert b["audio_mask"].sum(1).tolist() == [n * 640 for n in [40, 60, 35, 50, 60]]
