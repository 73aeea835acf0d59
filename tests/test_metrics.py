"""LVE / FDD / MVE on hand-made arrays against hand-computed values, and evaluate() on a results tree."""
import math

import numpy as np
import pytest

from main.evaluate import aggregate, fdd, lip_opening_proxy, lve, mve, upper_face_dynamics

LIPS = [0, 1]
UPPER = [2, 3]


def _pair():
    """2 frames x 4 vertices; gt is all zeros, pred's per-vertex errors are written out below."""
    gt = np.zeros((2, 4, 3))
    pred = np.zeros((2, 4, 3))
    # frame 0: v0 (1,0,0) -> |e|^2 = 1, v1 (0,2,0) -> 4, v2 (0,0,3) -> 9, v3 0
    pred[0, 0] = [1, 0, 0]
    pred[0, 1] = [0, 2, 0]
    pred[0, 2] = [0, 0, 3]
    # frame 1: v0 (1,1,0) -> 2, v1 (0,0,1) -> 1, v2 0, v3 (2,0,0) -> 4
    pred[1, 0] = [1, 1, 0]
    pred[1, 1] = [0, 0, 1]
    pred[1, 3] = [2, 0, 0]
    return pred, gt


def test_lve_hand_computed():
    pred, gt = _pair()
    # per frame max over lips {v0, v1} of squared error: frame 0 max(1, 4) = 4, frame 1 max(2, 1) = 2
    # mean over frames: (4 + 2) / 2 = 3. (v2's 9 is not a lip vertex and must not count.)
    assert lve(pred, gt, LIPS) == pytest.approx(3.0)
    # symmetric in its arguments
    assert lve(gt, pred, LIPS) == pytest.approx(3.0)


def test_mve_hand_computed():
    pred, gt = _pair()
    # L2 norms: frame 0 [1, 2, 3, 0], frame 1 [sqrt(2), 1, 0, 2]; mean over 8 = (9 + sqrt 2) / 8
    assert mve(pred, gt) == pytest.approx((9 + math.sqrt(2)) / 8)


def test_fdd_hand_computed_zero_template():
    pred, gt = _pair()
    template = np.zeros((4, 3))
    # gt does not move: every ||v - template||^2 is 0 over time, std 0, dynamics 0.
    # pred upper v2: ||.||^2 over time [9, 0] -> population std 4.5; v3: [0, 4] -> std 2
    # dynamics(pred) = mean(4.5, 2) = 3.25; FDD = dynamics(gt) - dynamics(pred) = -3.25
    assert upper_face_dynamics(pred, template, UPPER) == pytest.approx(3.25)
    assert fdd(pred, gt, template, UPPER) == pytest.approx(-3.25)


def test_fdd_subtracts_the_template():
    template = np.ones((4, 3))
    gt = np.tile(template, (2, 1, 1))
    gt[1, 2] += [0, 2, 0]          # v2 displacement^2 over time [0, 4] -> std 2
    gt[:, 3] += [1, 0, 0]          # v3 displacement^2 [1, 1] -> std 0
    pred = np.tile(template, (2, 1, 1))  # still face: dynamics 0
    # dynamics(gt) = mean(2, 0) = 1; FDD = 1 - 0 = 1. Without subtracting the template v2 would be
    # ||(1,1,1)||^2 = 3 then ||(1,3,1)||^2 = 11 -> std 4 and the answer would differ.
    assert fdd(pred, gt, template, UPPER) == pytest.approx(1.0)
    # identical sequences have no dynamics deviation
    assert fdd(gt, gt, template, UPPER) == pytest.approx(0.0)


def test_metrics_zero_for_identical_sequences_and_positive_otherwise():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(7, 10, 3))
    assert lve(gt, gt, [1, 2, 3]) == 0.0
    assert mve(gt, gt) == 0.0
    pred = gt + rng.normal(scale=0.01, size=gt.shape)
    assert lve(pred, gt, [1, 2, 3]) > 0
    assert mve(pred, gt) > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        mve(np.zeros((3, 4, 3)), np.zeros((2, 4, 3)))


def test_aggregate_frame_weighted_lve_mve_sequence_mean_fdd():
    a = {"LVE": 1.0, "MVE": 2.0, "FDD": 3.0, "n_frames": 1}
    b = {"LVE": 4.0, "MVE": 5.0, "FDD": -1.0, "n_frames": 3}
    r = aggregate([a, b])
    # LVE (1*1 + 4*3) / 4 = 3.25; MVE (2*1 + 5*3) / 4 = 4.25; FDD (3 + -1) / 2 = 1
    assert r["LVE"] == pytest.approx(3.25)
    assert r["MVE"] == pytest.approx(4.25)
    assert r["FDD"] == pytest.approx(1.0)
    assert r["n_sequences"] == 2 and r["n_frames"] == 4


def test_aggregate_equals_codetalker_pooling_over_all_frames():
    # CodeTalker concatenates all frames of all sequences before averaging LVE: the frame-weighted
    # mean of per-sequence values must give the same number.
    rng = np.random.default_rng(1)
    seqs = [(rng.normal(size=(t, 6, 3)), rng.normal(size=(t, 6, 3))) for t in (3, 8)]
    per = [{"LVE": lve(p, g, LIPS), "MVE": mve(p, g), "FDD": 0.0, "n_frames": len(p)} for p, g in seqs]
    pooled_p = np.concatenate([p for p, _ in seqs])
    pooled_g = np.concatenate([g for _, g in seqs])
    r = aggregate(per)
    assert r["LVE"] == pytest.approx(lve(pooled_p, pooled_g, LIPS))
    assert r["MVE"] == pytest.approx(mve(pooled_p, pooled_g))


def test_aggregate_empty():
    r = aggregate([])
    assert r["LVE"] is None and r["n_sequences"] == 0


def test_lip_opening_proxy():
    v = np.zeros((2, 3, 3))
    v[0, :, 1] = [0.0, 0.5, 2.0]   # extent over lips {0, 1}: 0.5 (vertex 2 is not a lip)
    v[1, :, 1] = [-1.0, 1.0, 0.0]  # extent 2.0
    assert lip_opening_proxy(v, [0, 1]) == pytest.approx([0.5, 2.0])
