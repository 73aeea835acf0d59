"""The epoch loop's arithmetic: gradient accumulation, best-model selection, batches that mix FLAME models."""
import copy
import logging
import os

import pytest
import torch

from dataset.dataset import FaceDataset, collate
from dataset.styles import style_classes
from main.train_eval_loop import Trainer, batch_loss
from models.faceformer import FaceFormer
from models.flame import FLAME, load_flame
from scripts.flame_standin import make_standin_flame
from utils.config import flame_path_for, load_config
from utils.errors import InferenceError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG = logging.getLogger("test_train_loop")
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, layerdrop=0.0)


class ListLoader(list):
    """A fixed list of collated batches standing in for a DataLoader."""
    sampler = None


def demo_cfg(demo_root, tmp_path, *extra):
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"),
                      [f"DATA.data_root={demo_root}", f"TRAIN.save_path={tmp_path / 'run'}", "TRAIN.device=cpu",
                       "MODEL.dropout=0.0", "TRAIN.mode=teacher_forcing", *extra])
    cfg.MODEL.audio_encoder_config = dict(cfg.MODEL.audio_encoder_config, feat_extract_norm="layer", **NO_DROPOUT)
    return cfg


def clips(cfg, styles, n, frames):
    """The first ``frames`` frames of n training clips (whole clips, no random crop)."""
    data = FaceDataset(cfg, "train", styles, train=False, check=False, progress=False)
    hop = data.framing.samples_per_frame
    out = []
    for i in range(len(data)):
        item = data[i]
        if item["n_frames"] >= frames:
            out.append(dict(item, motion=item["motion"][:frames], audio=item["audio"][:frames * hop],
                            n_frames=frames))
        if len(out) == n:
            return out
    pytest.fail(f"demo data has fewer than {n} training clips of {frames} frames")


def test_grad_accum_2_equals_a_doubled_batch(demo_root, tmp_path):
    # Same 4 clips (equal lengths, so the frame-weighted batch mean is the mean of the two half means):
    # one step on a batch of 4 == one step accumulated over two batches of 2 (layer-norm encoder, no dropout).
    cfg = demo_cfg(demo_root, tmp_path)
    styles = style_classes(cfg)
    items = clips(cfg, styles, 4, 40)
    flame_of = {name: load_flame(flame_path_for(cfg, name)) for name in cfg.DATA.datasets}
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, len(styles))
    with torch.no_grad():  # a non-zero output map so every decoder weight gets a gradient
        model.output_map.weight.normal_(0, 0.01)
    deltas = []
    for accum, batches in ((1, [collate(items)]), (2, [collate(items[:2]), collate(items[2:])])):
        c = copy.deepcopy(cfg)
        c.TRAIN.grad_accum = accum
        m = copy.deepcopy(model)
        trainer = Trainer(c, m, ListLoader(batches), None, flame_of, styles, torch.device("cpu"), LOG)
        # plain SGD: its step is proportional to the accumulated gradient (Adam's first step is
        # nearly sign(gradient) and would hide a wrong scale)
        trainer.optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
        trainer.train_epoch()
        assert trainer.step == 1
        with torch.no_grad():
            deltas.append(torch.cat([(p - p0).reshape(-1) for p, p0 in zip(m.parameters(), model.parameters())]))
    scale = float(deltas[0].abs().max())
    assert scale > 0  # the step did change the weights
    assert float((deltas[0] - deltas[1]).abs().max()) <= 1e-4 * scale


def test_best_model_is_the_epoch_of_lowest_generated_val_loss(demo_root, tmp_path, monkeypatch):
    cfg = demo_cfg(demo_root, tmp_path, "TRAIN.epochs=4", "TRAIN.val_every=1")
    styles = style_classes(cfg)
    model = FaceFormer(cfg.MODEL, len(styles))
    # the teacher-forced loss is lowest at epoch 3, the generated one at epoch 2: inference generates
    val = iter([{"val/teacher_forced": 0.5, "val/generated": 3.0}, {"val/teacher_forced": 0.4, "val/generated": 1.0},
                {"val/teacher_forced": 0.1, "val/generated": 2.0}, {"val/teacher_forced": 0.3, "val/generated": 1.5}])
    trainer = Trainer(cfg, model, ListLoader(), ListLoader([None]), {}, styles, torch.device("cpu"), LOG)
    monkeypatch.setattr(trainer, "train_epoch", lambda: 1.0)
    monkeypatch.setattr(trainer, "validation_losses", lambda: next(val))
    trainer.fit()
    best = torch.load(tmp_path / "run" / "best_model.pth", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)
    assert best["epoch"] == 2 and best["best_val"] == 1.0
    assert last["epoch"] == 4 and last["best_val"] == 1.0


def test_batch_mixing_two_flame_models(tmp_path):
    # rows of datasets with different FLAME models: each row's loss uses its own model
    flames = {"A": FLAME(make_standin_flame(seed=0)), "B": FLAME(make_standin_flame(seed=1))}
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    pred, gt = 0.3 * torch.randn(B, T, 51, generator=g), 0.3 * torch.randn(B, T, 51, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    shape = torch.randn(B, 100, generator=g)
    batch = {"motion": gt, "motion_mask": mask, "shape": shape, "dataset": ["A", "B", "A", "B"]}
    loss, per_sample = batch_loss(pred, batch, flames)
    with torch.no_grad():
        for i, name in enumerate(batch["dataset"]):
            own = flames[name].motion_to_vertices(pred[i, mask[i]], shape[i]) - \
                flames[name].motion_to_vertices(gt[i, mask[i]], shape[i])
            other = flames["B" if name == "A" else "A"].motion_to_vertices(pred[i, mask[i]], shape[i]) - \
                flames["B" if name == "A" else "A"].motion_to_vertices(gt[i, mask[i]], shape[i])
            assert float(per_sample[i]) == pytest.approx(float(own.pow(2).mean()), rel=1e-4)
            assert abs(float(per_sample[i]) - float(other.pow(2).mean())) > 1e-3 * float(own.pow(2).mean())
    frames = mask.sum(1).float()
    assert float(loss) == pytest.approx(float((per_sample * frames).sum() / frames.sum()), rel=1e-6)


def test_non_finite_loss_is_a_user_error_naming_the_samples(demo_root, tmp_path):
    from utils.errors import UserError
    cfg = demo_cfg(demo_root, tmp_path)
    styles = style_classes(cfg)
    items = clips(cfg, styles, 2, 20)
    items[1]["motion"] = items[1]["motion"].clone()
    items[1]["motion"][3, 0] = float("nan")  # as if a sample went bad after start-up validation
    model = FaceFormer(cfg.MODEL, len(styles))
    before = copy.deepcopy(model.state_dict())
    flame_of = {name: load_flame(flame_path_for(cfg, name)) for name in cfg.DATA.datasets}
    trainer = Trainer(cfg, model, ListLoader([collate(items)]), None, flame_of, styles, torch.device("cpu"), LOG)
    with pytest.raises(UserError) as e:
        trainer.train_epoch()
    msg = str(e.value)
    assert items[1]["sample_id"] in msg and "TRAIN.resume=true" in msg and "TRAIN.lr" in msg
    assert trainer.step == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_validation_conditions_untrained_speakers_on_the_style_inference_gives_them(demo_root, tmp_path):
    """A validation speaker outside the training styles (style -1) is scored on INFER.condition_style,
    the style inference writes it with, so best_model.pth is picked on what inference will do."""
    cfg = demo_cfg(demo_root, tmp_path)
    styles = style_classes(cfg)
    flame_of = {name: load_flame(flame_path_for(cfg, name)) for name in cfg.DATA.datasets}
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, len(styles))
    with torch.no_grad():  # style embeddings that move the output, so the style used shows in the loss
        model.output_map.weight.normal_(0, 0.05)
    items = clips(cfg, styles, 2, 20)

    def val_loss(c, style):
        batch = collate([dict(it, style=torch.tensor(style)) for it in items])
        trainer = Trainer(c, model, ListLoader(), ListLoader([batch]), flame_of, styles, torch.device("cpu"), LOG)
        return trainer.validation_losses()["val/generated"]

    chosen = copy.deepcopy(cfg)
    chosen.INFER.condition_style = styles[1]
    assert val_loss(chosen, -1) == pytest.approx(val_loss(cfg, 1), rel=1e-6)
    assert val_loss(cfg, -1) == pytest.approx(val_loss(cfg, 0), rel=1e-6)   # default: the first style
    assert val_loss(cfg, 1) != pytest.approx(val_loss(cfg, 0), rel=1e-3)
    chosen.INFER.condition_style = "nobody"
    with pytest.raises(InferenceError, match="INFER.condition_style is 'nobody'"):
        Trainer(chosen, model, ListLoader(), None, flame_of, styles, torch.device("cpu"), LOG)


def test_an_interrupt_during_validation_names_the_epoch_validated(demo_root, tmp_path, monkeypatch):
    import signal

    from utils.errors import Interrupted

    cfg = demo_cfg(demo_root, tmp_path, "TRAIN.epochs=4", "TRAIN.val_every=2")
    styles = style_classes(cfg)
    trainer = Trainer(cfg, FaceFormer(cfg.MODEL, len(styles)), ListLoader(), ListLoader([None]), {}, styles,
                      torch.device("cpu"), LOG)
    monkeypatch.setattr(trainer, "train_epoch", lambda: 1.0)

    def interrupted():
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(trainer, "validation_losses", interrupted)
    with pytest.raises(Interrupted) as e:
        trainer.fit()
    assert str(e.value).startswith("interrupted (SIGINT) in the validation of epoch 2 step 0; last complete "
                                   "epoch (1) saved in ")
