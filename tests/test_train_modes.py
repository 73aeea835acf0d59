"""Training modes (TRAIN.mode): parallel scheduled sampling, scheduled rollout, their schedule and resume."""
import os

import pytest
import torch

import models.faceformer as faceformer
from loss.loss import motion_vertex_loss
from main.train import main as train_main
from models.faceformer import FaceFormer, shift_motion
from models.flame import FLAME
from scripts.flame_standin import make_standin_flame
from utils.config import load_config
from utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPF = 640  # audio samples per motion frame (16 kHz / 25 fps)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FaceFormer(load_config(os.path.join(ROOT, "config", "demo.yaml")).MODEL, n_styles=3)
    # the output map starts at zero: the model's own predictions would all be zero, hiding mix-ups
    for p in m.output_map.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m


@pytest.fixture(scope="module")
def flame():
    return FLAME(make_standin_flame(seed=1))


def batch(B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T * SPF, generator=g), torch.randn(B, T, 51, generator=g),
            torch.tensor([0, 2][:B]))


def record_calls(module):
    """Inputs (and outputs) of every call of module, in order."""
    calls = []
    handle = module.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().clone(), out)))
    return calls, handle


def run_recorded(model, audio, motion, style, **kwargs):
    """model(audio, motion, style, **kwargs) -> (prediction, decoder inputs, decoder outputs): the
    (input, output) of every call of motion_map and of output_map, one per decoder pass, in order."""
    inputs, h_in = record_calls(model.motion_map)
    outputs, h_out = record_calls(model.output_map)
    try:
        return model(audio, motion, style, **kwargs), inputs, outputs
    finally:
        h_in.remove()
        h_out.remove()


def passes_at_probability_one(model, audio, motion, style, n_passes, **kwargs):
    """``run_recorded`` in eval mode at sampling probability 1, checked to make ``n_passes`` decoder
    passes of which the first is teacher-forced."""
    model.eval()
    pred, inputs, outputs = run_recorded(model, audio, motion, style, sampling_prob=1.0, **kwargs)
    assert len(inputs) == n_passes
    assert torch.equal(inputs[0][0], shift_motion(motion))
    return pred, inputs, outputs


@pytest.mark.parametrize("mode", ["parallel_sampling", "parallel_rollout", "scheduled_rollout"])
def test_probability_zero_is_teacher_forcing(model, flame, mode):
    audio, motion, style = batch()
    mask = torch.ones(motion.shape[:2], dtype=torch.bool)
    model.train()  # dropout on: the same seed must give the same masks, i.e. no extra random draws
    losses = {}
    for m in ("teacher_forcing", mode):
        torch.manual_seed(1)
        pred = model(audio, motion, style, mode=m, sampling_prob=0.0, passes=2, rollout_steps=2)
        losses[m] = motion_vertex_loss(pred, motion, mask, flame, torch.zeros(2, 100))[0].item()
    model.eval()
    if mode == "scheduled_rollout":  # the step-by-step path: compare without dropout, to float tolerance
        with torch.no_grad():
            tf = model(audio, motion, style)
            assert torch.allclose(model(audio, motion, style, mode=mode, sampling_prob=0.0), tf, atol=1e-5)
    else:
        assert losses[mode] == pytest.approx(losses["teacher_forcing"], abs=1e-6, rel=0)
    assert losses["teacher_forcing"] > 0


@pytest.mark.parametrize("passes", [1, 2])
def test_probability_one_feeds_own_detached_predictions(model, passes):
    """Every decoder input row t >= 1 of the pass with gradient is the previous pass's prediction of
    frame t-1, detached; row 0 is the zero start input."""
    audio, motion, style = batch()
    pred, inputs, outputs = passes_at_probability_one(model, audio, motion, style, passes + 1,
                                                      mode="parallel_sampling", passes=passes)
    for k in range(1, passes + 1):
        fed, earlier = inputs[k][0], outputs[k - 1][1]
        assert torch.equal(fed[:, 0], torch.zeros_like(fed[:, 0]))
        assert torch.equal(fed[:, 1:], earlier[:, :-1].detach())
        assert not fed.requires_grad and not earlier.requires_grad   # predictions made without gradient
        assert not torch.allclose(fed[:, 1:], motion[:, :-1])
    assert torch.equal(pred, outputs[-1][1]) and pred.requires_grad


@pytest.mark.parametrize("steps", [1, 3])
def test_parallel_rollout_feeds_own_predictions_with_gradient(model, steps):
    """At probability 1 each pass is fed the previous pass's predictions, gradient kept, so the last
    pass is the model's own (steps + 1)-frame rollout from every frame: on the first steps + 1 frames
    it is the full KV-cached rollout itself, and the loss reaches the first pass through the inputs."""
    audio, motion, style = batch(T=12)
    pred, inputs, outputs = passes_at_probability_one(model, audio, motion, style, steps + 1,
                                                      mode="parallel_rollout", rollout_steps=steps)
    for k in range(1, steps + 1):
        assert torch.equal(inputs[k][0], shift_motion(outputs[k - 1][1]).detach())
    first = outputs[0][1]
    first.retain_grad()
    pred.pow(2).sum().backward()
    assert first.grad is not None and first.grad[:, :-1].abs().sum() > 0   # gradient through the fed inputs
    with torch.no_grad():
        rollout = model(audio, motion, style, mode="rollout")
    assert torch.allclose(pred[:, :steps + 1], rollout[:, :steps + 1], atol=1e-5)
    assert not torch.allclose(pred[:, steps + 1:], rollout[:, steps + 1:], atol=1e-5)   # truncated after that
    model.zero_grad()


def test_partial_probability_mixes_per_frame_and_gradients_reach_decoder(model, flame):
    audio, motion, style = batch(B=2, T=200, seed=3)
    model.train()
    model.zero_grad()
    torch.manual_seed(0)
    pred, inputs, _ = run_recorded(model, audio, motion, style, mode="parallel_sampling", sampling_prob=0.3)
    fed, gt = inputs[-1][0], shift_motion(motion)
    from_gt = (fed == gt).all(-1)[:, 1:]
    assert 0.6 < from_gt.float().mean() < 0.8    # about 70% of the inputs stay ground truth
    loss = motion_vertex_loss(pred, motion, torch.ones(2, 200, dtype=torch.bool), flame, torch.zeros(2, 100))[0]
    loss.backward()
    for name in ("motion_map.weight", "output_map.weight", "layers.0.self_attn.qkv.weight",
                 "layers.0.linear1.weight", "audio_feature_map.weight", "style_map.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_scheduled_rollout_at_one_is_the_rollout(model):
    audio, motion, style = batch()
    model.eval()
    with torch.no_grad():
        a = model(audio, motion, style, mode="scheduled_rollout", sampling_prob=1.0)
        b = model(audio, motion, style, mode="rollout")
        c = model(audio, motion, style, mode="scheduled_rollout", sampling_prob=0.999999)
    assert torch.equal(a, b)
    assert torch.allclose(c, b, atol=1e-5)   # the step-by-step path fed its own outputs


def test_config_modes_and_old_key():
    demo = os.path.join(ROOT, "config", "demo.yaml")
    assert load_config(demo, ["TRAIN.teacher_forcing=false"]).TRAIN.mode == "rollout"
    assert load_config(demo, ["TRAIN.teacher_forcing=true"]).TRAIN.mode == "teacher_forcing"
    with pytest.raises(ConfigError, match="contradicts TRAIN.mode"):
        load_config(demo, ["TRAIN.teacher_forcing=false", "TRAIN.mode=scheduled_rollout"])
    with pytest.raises(ConfigError, match="TRAIN.mode is 'sampling'"):
        load_config(demo, ["TRAIN.mode=sampling"])
    with pytest.raises(ConfigError, match="TRAIN.sampling_max"):
        load_config(demo, ["TRAIN.sampling_max=1.5"])
    with pytest.raises(ConfigError, match="TRAIN.sampling_passes"):
        load_config(demo, ["TRAIN.sampling_passes=0"])
    for bad in ("0", "1.5", "true", "1000"):
        with pytest.raises(ConfigError, match="TRAIN.rollout_steps"):
            load_config(demo, [f"TRAIN.rollout_steps={bad}"])


@pytest.mark.parametrize("mode", ["parallel_sampling", "parallel_rollout"])
def test_resume_restores_schedule_position(demo_root, tmp_path, monkeypatch, mode):
    """The mixing probability of every training step, uninterrupted vs stopped after epoch 1 and
    resumed from last.pth: the same sequence."""
    used = []
    forward = FaceFormer.forward

    def recording_forward(self, *args, **kwargs):
        if self.training:
            used.append(kwargs.get("sampling_prob"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(faceformer.FaceFormer, "forward", recording_forward)
    common = ["--config", os.path.join(ROOT, "config", "demo.yaml"), f"DATA.data_root={demo_root}",
              "TRAIN.batch_size=2", "TRAIN.max_steps_per_epoch=2", "DATA.max_frames=30", "TRAIN.device=cpu",
              f"TRAIN.mode={mode}", "TRAIN.sampling_max=0.8", "TRAIN.sampling_start_epoch=0.5",
              "TRAIN.sampling_warmup_epochs=1", "TRAIN.val_every=100"]
    train_main(common + [f"TRAIN.save_path={tmp_path / 'full'}", "TRAIN.epochs=2"])
    full, used[:] = list(used), []
    train_main(common + [f"TRAIN.save_path={tmp_path / 'parts'}", "TRAIN.epochs=1"])
    train_main(common + [f"TRAIN.save_path={tmp_path / 'parts'}", "TRAIN.epochs=2", "TRAIN.resume=true"])
    assert used == full
    assert full == pytest.approx([0.0, 0.0, 0.4, 0.8])
