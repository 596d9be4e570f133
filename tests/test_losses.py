"""Losses against hand computations (run under each Keras backend)."""

import numpy as np
import pytest
from keras import ops

from multidistill import losses


def _np(x):
    return float(ops.convert_to_numpy(x))


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


Q = np.array([[1.00, 1.02, 0.99], [0.5, 0.2, 0.1]], np.float32)
S = np.array([[0.3, 2.0, -1.0], [1.0, 0.0, 0.5]], np.float32)


def test_kl_matches_hand_computation_with_sharpening():
    tau = 0.01
    p = _softmax(Q / tau)
    q = _softmax(S)
    expected = np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q)), axis=1))
    assert _np(losses.kl(Q, S, temperature=tau)) == pytest.approx(expected, rel=1e-4)


def test_kl_direction_is_teacher_to_student():
    p, q = _softmax(Q), _softmax(S)
    forward = np.mean(np.sum(p * np.log(p / q), axis=1))   # KL(T || S)
    reverse = np.mean(np.sum(q * np.log(q / p), axis=1))   # KL(S || T)
    got = _np(losses.kl(Q, S, temperature=1.0))
    assert got == pytest.approx(forward, rel=1e-5)
    assert abs(got - reverse) > 1e-3


def test_kl_is_zero_for_identical_distributions_and_batch_averaged():
    assert _np(losses.kl(S, S, temperature=1.0)) == pytest.approx(0.0, abs=1e-6)
    one = _np(losses.kl(Q[:1], S[:1]))
    two = _np(losses.kl(np.repeat(Q[:1], 4, 0), np.repeat(S[:1], 4, 0)))
    assert one == pytest.approx(two, rel=1e-6)  # Mean, not sum.


def test_kl_per_sample_temperature_and_mask():
    taus = np.array([0.1, 1.0], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    rows = []
    for i in range(2):
        a = int(mask[i].sum())
        p = _softmax(Q[i, :a] / taus[i])
        q = _softmax(S[i, :a])
        rows.append(np.sum(p * np.log(p / q)))
    got = _np(losses.kl(Q, S, temperature=taus, action_mask=mask))
    assert got == pytest.approx(np.mean(rows), rel=1e-5)


def test_nll_uses_teacher_argmax():
    q = _softmax(S)
    best = Q.argmax(axis=1)  # [1, 0]
    expected = -np.mean(np.log(q[np.arange(2), best]))
    assert _np(losses.nll(Q, S)) == pytest.approx(expected, rel=1e-5)


def test_mse_sums_actions_and_averages_batch():
    expected = np.mean(np.sum((Q - S) ** 2, axis=1))
    assert _np(losses.mse(Q, S)) == pytest.approx(expected, rel=1e-5)
    mask = np.array([[1, 0, 0], [1, 1, 0]], np.float32)
    expected = np.mean([(Q[0, 0] - S[0, 0]) ** 2, ((Q[1, :2] - S[1, :2]) ** 2).sum()])
    assert _np(losses.mse(Q, S, action_mask=mask)) == pytest.approx(expected, rel=1e-5)


def test_feature_regression_hand_computation():
    hs = np.array([[1.0, 2.0, 9.0], [0.0, -1.0, 9.0]], np.float32)
    ht = np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 0]], np.float32)
    # Row 0: 1 + 0 = 1; row 1: 1 + 4 = 5; mean 3.
    assert _np(losses.feature_regression(hs, ht, mask)) == pytest.approx(3.0)


def test_top1_agreement():
    assert _np(losses.top1_agreement(Q, S)) == pytest.approx(1.0)  # argmaxes [1, 0] both.
    s2 = S.copy()
    s2[1, 2] = 5.0  # Student now prefers action 2 in row 1.
    assert _np(losses.top1_agreement(Q, s2)) == pytest.approx(0.5)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.policy_loss("hinge", Q, S)
