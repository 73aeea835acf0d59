"""Vertex loss: chunked per-sample computation against a dense reference, masks, shape, velocity."""
import pytest
import torch
import torch.nn as nn

from loss.loss import motion_vertex_loss
from models.flame import FLAME
from scripts.flame_standin import make_standin_flame


class TinyFlame(nn.Module):
    """FLAME-like test double: template + shape and motion blendshapes, then a jaw rotation of the
    lower half about the x axis by motion[50] radians. The rotation makes the loss depend on the
    shape, as in FLAME's LBS (with a purely linear model the shape would cancel out)."""

    def __init__(self, V=30, S=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.template = torch.randn(V, 3, generator=g)
        self.shapedirs = torch.randn(S, V, 3, generator=g) * 0.3
        self.exprdirs = torch.randn(50, V, 3, generator=g) * 0.1
        self.lower = (self.template[:, 1] < 0).float()[:, None]

    def motion_to_vertices(self, motion, shape=None):
        single = motion.dim() == 2
        if single:
            motion, shape = motion[None], None if shape is None else shape[None]
        v = self.template + torch.einsum("btk,kvc->btvc", motion[..., :50], self.exprdirs)
        if shape is not None:
            v = v + torch.einsum("bs,svc->bvc", shape, self.shapedirs)[:, None]
        a = motion[..., 50, None]                                        # (B,T,1)
        c, s = torch.cos(a), torch.sin(a)
        y, z = v[..., 1], v[..., 2]
        rotated = torch.stack([v[..., 0], c * y - s * z, s * y + c * z], -1)
        v = self.lower * rotated + (1 - self.lower) * v
        return v[0] if single else v


def dense_reference(pred, gt, mask, flame, shape, velocity_weight):
    """All frames at once, straight from the definition."""
    vp, vg = flame.motion_to_vertices(pred, shape), flame.motion_to_vertices(gt, shape)
    mask = mask.float()
    err = (vp - vg).pow(2).mean((-1, -2))                                # (B,T)
    per = (err * mask).sum(1) / mask.sum(1)
    loss = (err * mask).sum() / mask.sum()
    if velocity_weight:
        pair = mask[:, 1:] * mask[:, :-1]
        vel = ((vp[:, 1:] - vp[:, :-1]) - (vg[:, 1:] - vg[:, :-1])).pow(2).mean((-1, -2))
        per = per + velocity_weight * (vel * pair).sum(1) / pair.sum(1)
        loss = loss + velocity_weight * (vel * pair).sum() / pair.sum()
    return loss, per


def make_batch(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randn(len(lengths), T, 51, generator=g) * 0.3
    pred = gt + torch.randn(len(lengths), T, 51, generator=g) * 0.2
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    shape = torch.randn(len(lengths), 6, generator=g)
    return pred, gt, mask, shape


@pytest.mark.parametrize("velocity_weight", [0.0, 0.5])
@pytest.mark.parametrize("chunk_frames", [4, 7, 1000])
def test_matches_dense_reference_with_gradients(velocity_weight, chunk_frames):
    flame = TinyFlame()
    pred, gt, mask, shape = make_batch([23, 9, 16], 23)
    mask[2, 5] = False  # a hole: velocity pairs around it must be skipped
    p1 = pred.clone().requires_grad_()
    loss, per = motion_vertex_loss(p1, gt, mask, flame, shape, velocity_weight, chunk_frames=chunk_frames)
    loss.backward()
    p2 = pred.clone().requires_grad_()
    ref_loss, ref_per = dense_reference(p2, gt, mask, flame, shape, velocity_weight)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert torch.allclose(per, ref_per, rtol=1e-5)
    assert torch.allclose(p1.grad, p2.grad, rtol=1e-4, atol=1e-8)
    assert not p1.grad[~mask].any()  # padding gets no gradient


def test_padding_content_is_ignored_and_loss_is_frame_weighted():
    flame = TinyFlame()
    pred, gt, mask, shape = make_batch([20, 6], 20)
    loss, per = motion_vertex_loss(pred, gt, mask, flame, shape, 0.3)
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[~mask], gt2[~mask] = 5.0, -3.0
    loss2, per2 = motion_vertex_loss(pred2, gt2, mask, flame, shape, 0.3)
    assert torch.allclose(loss, loss2) and torch.allclose(per, per2)
    # each sample's value is what it gets alone (no padding at all)
    for b, n in enumerate([20, 6]):
        _, alone = motion_vertex_loss(pred[b:b + 1, :n], gt[b:b + 1, :n], mask[b:b + 1, :n], flame,
                                      shape[b:b + 1], 0.3)
        assert torch.allclose(alone[0], per[b])
    # without velocity, the batch loss weights samples by their number of valid frames
    loss, per = motion_vertex_loss(pred, gt, mask, flame, shape)
    assert torch.allclose(loss, (per[0] * 20 + per[1] * 6) / 26)


def test_zero_for_perfect_prediction_and_shape_is_shared():
    flame = TinyFlame()
    pred, gt, mask, shape = make_batch([12, 12], 12)
    loss, per = motion_vertex_loss(gt.clone(), gt, mask, flame, shape, 1.0)
    assert loss.item() == 0.0 and not per.any()
    # the shape enters both meshes: through the jaw rotation it changes the error, and it is the
    # given shape that is used (matches the reference with that shape, not with zeros)
    with_shape, _ = motion_vertex_loss(pred, gt, mask, flame, shape)
    without, _ = motion_vertex_loss(pred, gt, mask, flame, None)
    assert abs(with_shape.item() - without.item()) > 1e-4
    assert torch.allclose(with_shape, dense_reference(pred, gt, mask, flame, shape, 0.0)[0])


def test_with_standin_flame():
    """The real FLAME code path (stand-in model, 5023 vertices): chunks and velocity vs dense."""
    flame = FLAME(make_standin_flame())
    pred, gt, mask, _ = make_batch([10, 6], 10, seed=3)
    pred, gt = pred * 0.3, gt * 0.3                 # jaw angles of a few tenths of a radian
    shape = torch.randn(2, 300, generator=torch.Generator().manual_seed(3)) * 0.5
    p1 = pred.clone().requires_grad_()
    loss, per = motion_vertex_loss(p1, gt, mask, flame, shape, 0.5, chunk_frames=6)  # 3 frames/chunk
    loss.backward()
    p2 = pred.clone().requires_grad_()
    ref_loss, ref_per = dense_reference(p2, gt, mask, flame, shape, 0.5)
    ref_loss.backward()
    assert loss.item() > 0
    assert torch.allclose(loss, ref_loss, rtol=1e-4) and torch.allclose(per, ref_per, rtol=1e-4)
    assert torch.allclose(p1.grad, p2.grad, rtol=1e-3, atol=1e-3 * p2.grad.abs().max().item())


@pytest.mark.parametrize("chunk_frames", [4, 1000])
def test_lip_term_matches_its_definition_and_is_off_at_weight_zero(chunk_frames):
    flame = TinyFlame()
    pred, gt, mask, shape = make_batch([14, 9], 14)
    upper, lower = torch.tensor([1, 4, 7]), torch.tensor([2, 5])
    base, base_per = motion_vertex_loss(pred, gt, mask, flame, shape, 0.5, chunk_frames)
    off, off_per = motion_vertex_loss(pred, gt, mask, flame, shape, 0.5, chunk_frames, lip_weight=0.0,
                                      lips=(upper, lower))
    assert torch.equal(off, base) and torch.equal(off_per, base_per)   # the original loss, bit for bit
    p = pred.clone().requires_grad_()
    loss, per = motion_vertex_loss(p, gt, mask, flame, shape, 0.5, chunk_frames, lip_weight=2.0, lips=(upper, lower))
    vp, vg = flame.motion_to_vertices(pred, shape), flame.motion_to_vertices(gt, shape)
    gap = lambda v: v[..., upper, 1].mean(-1) - v[..., lower, 1].mean(-1)
    sq = (gap(vp) - gap(vg)).pow(2) * mask
    assert torch.allclose(loss, base + 2.0 * sq.sum() / mask.sum(), rtol=1e-5)
    assert torch.allclose(per, base_per + 2.0 * sq.sum(1) / mask.sum(1), rtol=1e-5)
    loss.backward()
    assert p.grad[~mask].abs().max() == 0 and p.grad[mask].abs().max() > 0
    perfect, _ = motion_vertex_loss(gt.clone(), gt, mask, flame, shape, lip_weight=2.0, lips=(upper, lower))
    assert perfect.item() == 0.0


def test_lip_vertices_split_the_standin_lips_into_upper_and_lower(demo_root):
    from main.train_eval_loop import lip_vertices
    from models.flame import load_flame
    from tests.conftest import ROOT
    from utils.config import load_config

    cfg = load_config(f"{ROOT}/config/demo.yaml", [f"DATA.data_root={demo_root}"])
    flame = load_flame(f"{demo_root}/{cfg.FLAME.model_path}")
    upper, lower = lip_vertices(cfg, [flame], "cpu")[id(flame)]
    y = flame.v_template[:, 1]
    assert len(upper) and len(lower) and y[upper].min() > y[lower].max()
    # opening the jaw opens the mouth: the aperture grows
    motion = torch.zeros(2, 51)
    motion[1, 50] = 0.2
    v = flame.motion_to_vertices(motion)
    gap = v[:, upper, 1].mean(-1) - v[:, lower, 1].mean(-1)
    assert gap[1] > gap[0] + 1e-3


def test_lip_term_with_lips_on_one_side_names_the_file(demo_root, tmp_path):
    import numpy as np

    from main.train_eval_loop import lip_vertices
    from models.flame import load_flame
    from tests.conftest import ROOT
    from utils.config import load_config
    from utils.errors import UserError

    flame = load_flame(f"{demo_root}/FLAME/standin_generic_model.pkl")
    np.save(tmp_path / "lips.npy", np.array([7, 7]))     # one vertex: nothing above or below a mouth centre
    cfg = load_config(f"{ROOT}/config/demo.yaml", [f"DATA.data_root={demo_root}",
                                                   f"FLAME.lip_indices={tmp_path}/lips.npy"])
    with pytest.raises(UserError, match=r"TRAIN.lip_weight=0.3 .*FLAME.lip_indices \(.*lips.npy\)"):
        lip_vertices(cfg, [flame], "cpu")
