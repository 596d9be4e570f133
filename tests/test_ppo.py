"""PPO's behaviour policy: the epsilon mixture the evaluation protocol plays."""

import math

import numpy as np
import pytest
from keras import ops

from multidistill import ppo


def test_mixture_log_probs_match_a_hand_computation():
    logits = np.array([[0.0, math.log(3.0)]], np.float32)  # softmax = [0.25, 0.75]
    # 0.8 * [0.25, 0.75] + 0.2 / 2 = [0.3, 0.7]
    want = np.log([[0.3, 0.7]])
    got = ops.convert_to_numpy(ppo.mixture_log_probs(ops.convert_to_tensor(logits), 0.2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(ppo._mixture_log_probs_np(logits, 0.2), want, rtol=1e-5)
    # epsilon 0 is the plain softmax.
    np.testing.assert_allclose(ppo._mixture_log_probs_np(logits, 0.0), np.log([[0.25, 0.75]]),
                               rtol=1e-5)


def test_loss_ratio_is_taken_under_the_mixture():
    """With old_logp = log mu(a), the ratio is 1 and the clipped surrogate is -mean(adv')."""
    net_logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    eps = 0.3
    config = ppo.PPOConfig(behaviour_epsilon=eps, entropy_coef=0.0, value_coef=0.0)

    class Fixed(ppo.PPONetwork):
        def call(self, frames):
            return {"logits": ops.convert_to_tensor(net_logits),
                    "value": ops.zeros((2, 1))}

    model = Fixed(net=None, config=config)
    actions = np.array([2, 1])
    log_mu = ppo._mixture_log_probs_np(net_logits, eps)[np.arange(2), actions]
    adv = np.array([1.0, -1.0], np.float32)  # normalised: [1, -1] / std(=1) → same
    y = {"actions": actions, "old_logp": log_mu.astype(np.float32), "advantages": adv,
         "returns": np.zeros(2, np.float32), "old_values": np.zeros(2, np.float32)}
    loss = float(ops.convert_to_numpy(model.compute_loss(y=y, y_pred=model.call(None))))
    assert loss == pytest.approx(0.0, abs=1e-5)  # -mean([1, -1]) with ratio 1
    # Under the plain softmax the same old_logp gives a ratio far from 1.
    model0 = Fixed(net=None, config=ppo.PPOConfig(entropy_coef=0.0, value_coef=0.0))
    loss0 = float(ops.convert_to_numpy(model0.compute_loss(y=y, y_pred=model0.call(None))))
    assert abs(loss0) > 0.05


def test_config_rejects_epsilon_outside_unit_interval():
    with pytest.raises(ValueError, match=r"behaviour_epsilon must be in \[0, 1\), found 1.0"):
        ppo.PPOConfig(behaviour_epsilon=1.0)
