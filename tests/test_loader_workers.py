"""Parallel loading: DATA.num_workers (auto), persistent workers, and training crops that do not depend
on the loader processes, so training and resume stay bitwise exact with any number of workers."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

from dataset.dataset import CropSeeds, FaceDataset, collate, crop_seed
from main.train import loader_workers, main as train_main
from tests.conftest import make_cfg, two_dataset_root
from utils.config import load_config
from utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _epochs(loader, n):
    out = []
    for epoch in range(n):
        loader.sampler.set_epoch(epoch)
        out.append([(b["sample_id"], b["motion"].clone(), b["audio"].clone()) for b in loader])
    return out


def test_crops_are_the_same_with_any_number_of_persistent_workers(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=16)
    ds = FaceDataset(cfg, "train", ["a1", "a2", "b1"], progress=False)
    full = FaceDataset(cfg, "train", ["a1", "a2", "b1"], train=False, check=False)

    def loader(workers):
        return DataLoader(ds, batch_size=2, sampler=CropSeeds(SequentialSampler(ds), seed=7), collate_fn=collate,
                          num_workers=workers, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(0))

    torch.manual_seed(123)
    one = _epochs(loader(0), 3)
    torch.manual_seed(456)  # the global RNG plays no part
    two = _epochs(loader(2), 3)
    for e1, e2 in zip(one, two):
        for (ids1, m1, a1), (ids2, m2, a2) in zip(e1, e2):
            assert ids1 == ids2 and torch.equal(m1, m2) and torch.equal(a1, a2)
    # each crop is the window its (seed, epoch, index) picks, audio and motion alike
    for epoch in range(3):
        for i in range(len(ds)):
            whole = full[i]
            t = whole["n_frames"]
            s = int(np.random.default_rng(crop_seed(7, epoch, i)).integers(t - 16 + 1))
            item = ds[(i, crop_seed(7, epoch, i))]
            assert torch.equal(item["motion"], whole["motion"][s:s + 16])
            assert torch.equal(item["audio"], whole["audio"][s * 640:(s + 16) * 640])
    # and the epochs draw different windows
    assert any(not torch.equal(b0[1], b1[1]) for b0, b1 in zip(one[0], one[1]))


def test_num_workers_auto(monkeypatch):
    assert loader_workers(3, "cuda") == 3 and loader_workers(0, "cuda:0") == 0
    assert loader_workers("auto", "cpu") == 0  # the model's threads use the cores
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, want in [(16, 8), (64, 8), (4, 3), (2, 1), (1, 1)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert loader_workers("auto", torch.device("cuda")) == want, cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes on this node share the cores
    assert loader_workers("auto", "cuda:1") == 7

    assert load_config(None)["DATA"]["num_workers"] == "auto"
    assert load_config(None, ["DATA.num_workers=2"]).DATA.num_workers == 2
    for bad in ("-1", "1.5", "many", "true"):
        with pytest.raises(ConfigError, match="DATA.num_workers"):
            load_config(None, [f"DATA.num_workers={bad}"])


def test_resume_with_persistent_workers_matches_uninterrupted_run(demo_root, tmp_path):
    """3 epochs with 2 persistent workers == 1 epoch loading in-process + a resume for 2 epochs with 2
    workers (started afresh at epoch 2, where the uninterrupted run's workers had loaded an epoch)."""
    def args(run, *extra):
        return ["--config", os.path.join(ROOT, "config", "demo.yaml"), f"DATA.data_root={demo_root}",
                f"TRAIN.save_path={run}", "TRAIN.batch_size=2", "TRAIN.max_steps_per_epoch=2",
                "DATA.max_frames=50", "TRAIN.device=cpu", *extra]

    full, parts = tmp_path / "full", tmp_path / "parts"
    train_main(args(full, "TRAIN.epochs=3", "DATA.num_workers=2"))
    train_main(args(parts, "TRAIN.epochs=1", "DATA.num_workers=0"))
    train_main(args(parts, "TRAIN.epochs=3", "TRAIN.resume=true", "DATA.num_workers=2"))
    a = torch.load(full / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(parts / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert "data loading: 2 worker process(es) per loader" in (full / "train.log").read_text()
