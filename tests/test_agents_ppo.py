"""PPO (`agents.ppo`): the behaviour mixture, GAE, rollouts, and its critic in the teacher."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops
from test_agents_loop import FakeAtari

from multidistill import environments, teachers
from multidistill.agents import loop, ppo, runner

SPEC = environments.Preprocessing()
TINY = dict(conv_filters=(4, 8, 8), fc_units=16)


def _tiny_ppo(seed=0, total_agent_steps=1_000, **overrides):
    # lr_horizon_frames=0: the learning rate anneals over total_agent_steps.
    cfg = dict(num_envs=2, rollout_length=4, num_epochs=2, num_minibatches=2,
               lr_horizon_frames=0, **TINY)
    cfg.update(overrides)
    return ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(**cfg), total_agent_steps=total_agent_steps,
                   seed=seed)


def test_mixture_log_probs_match_a_hand_computation():
    logits = np.array([[0.0, math.log(3.0)]], np.float32)  # softmax = [0.25, 0.75]
    # 0.8 * [0.25, 0.75] + 0.2 / 2 = [0.3, 0.7]
    want = np.log([[0.3, 0.7]])
    got = ops.convert_to_numpy(ppo.mixture_log_probs(ops.convert_to_tensor(logits), 0.2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(ppo.mixture_log_probs_np(logits, 0.2), want, rtol=1e-5)
    # epsilon 0 is the plain softmax.
    np.testing.assert_allclose(ppo.mixture_log_probs_np(logits, 0.0), np.log([[0.25, 0.75]]),
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
    log_mu = ppo.mixture_log_probs_np(net_logits, eps)[np.arange(2), actions]
    adv = np.array([1.0, -1.0], np.float32)  # normalised: [1, -1] / std(=1) → same
    y = {"actions": actions, "old_logp": log_mu.astype(np.float32), "advantages": adv,
         "returns": np.zeros(2, np.float32), "old_values": np.zeros(2, np.float32)}
    loss = float(ops.convert_to_numpy(model.compute_loss(y=y, y_pred=model.call(None))))
    assert loss == pytest.approx(0.0, abs=1e-5)  # -mean([1, -1]) with ratio 1
    # Under the plain softmax the same old_logp gives a ratio far from 1.
    model0 = Fixed(net=None, config=ppo.PPOConfig(behaviour_epsilon=0.0, entropy_coef=0.0,
                                                  value_coef=0.0))
    loss0 = float(ops.convert_to_numpy(model0.compute_loss(y=y, y_pred=model0.call(None))))
    assert abs(loss0) > 0.05


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"PPOConfig.behaviour_epsilon must be in \[0, 1\), "
                                         r"found 1.0"):
        ppo.PPOConfig(behaviour_epsilon=1.0)
    with pytest.raises(ValueError, match=r"PPOConfig.num_minibatches must be >= 1, found 0"):
        ppo.PPOConfig(num_minibatches=0)
    # The default acts as the evaluation protocol does.
    assert ppo.PPOConfig().behaviour_epsilon == 0.05


def test_gae_matches_a_hand_computation():
    g, lam = 0.5, 0.5
    # One environment, 4 steps: the episode ends at step 1, step 2 is the
    # reset step, step 3 the new episode's first; bootstrap value 8 after it.
    rewards = np.array([[1.0], [2.0], [0.0], [1.0]], np.float32)
    values = np.array([[4.0], [2.0], [9.0], [6.0]], np.float32)
    dones = np.array([[0.0], [1.0], [0.0], [0.0]], np.float32)
    valid = np.array([[True], [True], [False], [True]])
    adv = ppo.gae(rewards, values, dones, valid, np.array([8.0], np.float32), g, lam)
    a3 = 1.0 + g * 8.0 - 6.0  # -1
    a1 = 2.0 - 2.0  # Terminal: no bootstrap, 0.
    a0 = (1.0 + g * 2.0 - 4.0) + g * lam * a1  # -2
    np.testing.assert_allclose(adv[:, 0], [a0, a1, 0.0, a3])


def test_a_rollout_is_closed_by_the_value_of_the_next_step():
    keras.utils.set_random_seed(0)
    agent = ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(num_envs=2, rollout_length=4, num_epochs=2,
                                                    num_minibatches=2, lr_horizon_frames=0,
                                                    **TINY),
                    total_agent_steps=40, seed=0)
    seen, closing = [], []
    observe, update = agent.observe, agent._update

    def record(step):
        seen.append(step)
        return observe(step)

    def spy(last_values, step):
        closing.append((len(seen), np.array(last_values),
                        {k: v.copy() for k, v in agent._buffers.items()}))
        return update(last_values, step)

    agent.observe, agent._update = record, spy
    records = loop.iterations(agent, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    first, second = next(records), next(records)
    records.close()
    # The update of rollout 0 (steps 0-3) runs when step 4 arrives, with
    # step 4's value; step 4 opens rollout 1 (steps 4-7), closed by step 8.
    assert [c[0] for c in closing] == [5, 9]
    np.testing.assert_array_equal(closing[0][1], seen[4].extras["value"])
    np.testing.assert_array_equal(closing[1][1], seen[8].extras["value"])
    np.testing.assert_array_equal(closing[1][2]["observations"][0], seen[4].observations)
    np.testing.assert_array_equal(closing[1][2]["log_probs"],
                                  np.stack([s.extras["log_prob"] for s in seen[4:8]]))
    # Env 0 loses a life at step 2 and ends at step 4; step 5 is its reset step.
    np.testing.assert_array_equal(closing[1][2]["dones"][:, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(closing[1][2]["valid"][:, 0], [1, 0, 1, 1])
    np.testing.assert_array_equal(closing[0][2]["dones"][:, 0], [0, 0, 1, 0])
    # Env 1 scores 2 at steps 2 and 5, clipped to 1.
    np.testing.assert_array_equal(closing[0][2]["rewards"][:, 1], [0, 0, 1, 0])
    assert (first.agent_steps, second.agent_steps) == (10, 18)
    # 2 epochs x 2 minibatches per update; the learning rate anneals from the
    # rollout's first agent step: rollout 1 began at 8 of 40.
    assert first.num_gradient_steps == second.num_gradient_steps == 4
    assert agent.gradient_steps == 8 and np.isfinite(first.loss)
    lr = float(np.asarray(agent.optimizer.learning_rate.value))
    assert lr == pytest.approx(2.5e-4 * (1 - 8 / 40))
    # Each record carries its update's rate, for the learning curves.
    assert first.metrics == {"charts/learning_rate": pytest.approx(2.5e-4)}
    assert second.metrics == {"charts/learning_rate": pytest.approx(2.5e-4 * (1 - 8 / 40))}
    # The actions taken are sampled from mu: log mu(a) is finite and <= 0.
    assert all(np.all(s.extras["log_prob"] <= 0) for s in seen)


def test_exported_teacher_carries_the_critic_and_a_run_from_it_restores_it(tmp_path):
    keras.utils.set_random_seed(1)
    trained = _tiny_ppo(total_agent_steps=100)
    records = loop.iterations(trained, FakeAtari(lengths=(5, 7)), seed=0, frame_skip=4)
    next(records)
    next(records)
    records.close()
    run = runner.Runner(trained, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path, tmp_path)
    teachers.save_teacher(trained.teacher_model, "pong", "logits", SPEC, tmp_path,
                          evaluation={"mean": -20.0}, training=run.training_card())
    teacher = teachers.load_teacher("pong", tmp_path, SPEC)
    assert teacher.card["value"] == "output" and teacher.value_source == "output"
    assert teacher.card["training"]["algo_state"] == {"agent_steps": 18, "gradient_steps": 8}
    obs = np.stack([FakeAtari().observation(i, 0, 3) for i in range(2)])
    logits, value = trained.net.predict_on_batch(obs)
    labels = teacher.label(obs)
    np.testing.assert_allclose(labels["outputs"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(labels["values"], np.asarray(value)[:, 0], rtol=1e-5, atol=1e-6)

    keras.utils.set_random_seed(2)
    agent = _tiny_ppo(seed=3, total_agent_steps=100)
    before = np.asarray(agent.net.get_layer("value").kernel.value).copy()
    run = runner.Runner(agent, "ppo", "pong", SPEC, runner.RunConfig(), tmp_path,
                        tmp_path / "ck")
    assert run.start_from_teacher(teacher) == 6  # conv0-2, features, outputs, value.
    for name in ("value", "outputs", "conv0"):
        for a, b in zip(agent.net.get_layer(name).get_weights(),
                        trained.net.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(before, agent.net.get_layer("value").get_weights()[0])
    # The counters go on: the learning rate of the next rollout is annealed
    # from 18 agent steps of 100, not from 0.
    assert agent.state() == {"agent_steps": 18, "gradient_steps": 8}
    assert agent.learning_rate(agent.agent_steps) == pytest.approx(2.5e-4 * (1 - 18 / 100))
    assert run.run["best_eval"] == -20.0 and run.num_env_frames == 72


def test_learning_rate_horizon_is_independent_of_the_runs_length():
    # 4,000 frames = 1,000 agent steps (frame skip 4), whatever the run's length.
    for total in (10, 100_000):
        agent = _tiny_ppo(total_agent_steps=total, lr_horizon_frames=4_000)
        assert agent.learning_rate(0) == pytest.approx(2.5e-4)
        assert agent.learning_rate(500) == pytest.approx(1.25e-4)
        assert agent.learning_rate(1_500) == 0.0
    # The default: CleanRL's 40M frames, so a 10M-frame point keeps 75 %.
    assert ppo.PPOConfig().lr_horizon_frames == 40_000_000
    agent = _tiny_ppo(total_agent_steps=100, lr_horizon_frames=40_000_000)
    assert agent.learning_rate(2_500_000) == pytest.approx(0.75 * 2.5e-4)
    with pytest.raises(ValueError, match="lr_horizon_frames must be >= 0"):
        ppo.PPOConfig(lr_horizon_frames=-1)


def test_orthogonal_initialisation_scales():
    keras.utils.set_random_seed(0)
    net = _tiny_ppo(orthogonal_init=True, conv_filters=(8, 8, 8), fc_units=32).net

    def gram(layer):
        k = np.asarray(net.get_layer(layer).kernel.value)
        k = k.reshape(-1, k.shape[-1])  # Conv kernels: (h * w * in, out).
        return k.T @ k

    # Columns orthogonal, of norm gain: K^T K = gain^2 I.
    for layer in ("conv0", "conv1", "conv2", "features"):
        np.testing.assert_allclose(gram(layer), 2.0 * np.eye(gram(layer).shape[0]), atol=1e-4)
    np.testing.assert_allclose(gram("outputs"), 1e-4 * np.eye(6), atol=1e-7)
    np.testing.assert_allclose(gram("value"), [[1.0]], atol=1e-5)
    for layer in ("conv0", "features", "outputs", "value"):
        assert not np.asarray(net.get_layer(layer).bias.value).any()
    # Keras' default (Glorot uniform) otherwise: far from a 0.01-scale head.
    plain = _tiny_ppo(orthogonal_init=False, conv_filters=(8, 8, 8), fc_units=32).net
    k = np.asarray(plain.get_layer("outputs").kernel.value)
    assert np.abs(k).max() > 0.1
