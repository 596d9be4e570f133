"""Tests of the Double DQN trainer (`multidistill.dqn`): small and quick, any backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from multidistill import checkpoints, dqn, environments, teachers

SPEC = environments.Preprocessing()
TINY = dict(conv_filters=(4, 8, 8), fc_units=16)


def _tiny_dqn(seed=0, **overrides):
    cfg = dict(num_envs=2, rollout_length=16, replay_capacity=4_000, learning_starts=40,
               target_update_period=5, epsilon_decay_steps=100, **TINY)
    cfg.update(overrides)
    return dqn.DQN("pong", 6, SPEC, dqn.DQNConfig(**cfg), total_agent_steps=10_000, seed=seed)


def test_td_loss_falls_on_a_fixed_batch_from_pong():
    keras.utils.set_random_seed(0)
    algo = _tiny_dqn(rollout_length=200, learning_starts=10**9, learning_rate=2e-3)
    try:
        m = algo.iterate()  # Random play fills the memory; no learning.
        assert np.isnan(m["loss"]) and algo.gradient_steps == 0
        # A batch sampled from the memory, with at least two scoring
        # transitions (else a constant Q fits it and there is little to learn).
        rng = np.random.default_rng(0)
        for _ in range(100):
            x, y = algo.memory.sample(32, rng)
            if np.count_nonzero(y["returns"]) >= 2:
                break
        assert np.count_nonzero(y["returns"]) >= 2
        assert x["obs"].shape == x["next_obs"].shape == (32, 4, 84, 84)
        assert x["obs"].dtype == np.uint8
        losses = [float(np.asarray(algo.learner.train_on_batch(x, y)).reshape(-1)[0])
                  for _ in range(250)]
    finally:
        algo.close()
    assert np.all(np.isfinite(losses))
    # Tiny networks first fit the mean target, then (after 100-200 steps,
    # depending on the initial weights) tell the scoring transitions apart.
    assert np.mean(losses[-5:]) < 0.6 * losses[0], (losses[0], losses[-5:])


def _frame(t, s):
    return np.full((2, 3), (10 * t + s + 1) % 256, np.uint8)


def test_replay_memory_rebuilds_stacks_within_episodes():
    mem = dqn.ReplayMemory(capacity=16, num_streams=2, frame_shape=(2, 3), frame_stack=4,
                           n_step=2, gamma=0.5)
    # Stream 0: an episode of 5 transitions ending by termination at t=4, the
    # reset step t=5 (holds the episode's last observation), then a new
    # episode from t=6. Stream 1: one episode throughout.
    for t in range(10):
        valid = np.array([t != 5, True])
        end = np.array([t == 4, False])
        mem.add(np.stack([_frame(t, 0), _frame(t, 1)]), np.array([t % 3, 1]),
                np.array([1.0, 0.0]), valid, cuts=end, ends=end)
    z = np.zeros((2, 3), np.uint8)
    f = lambda t: _frame(t, 0)  # noqa: E731
    expected = {
        0: [z, z, z, f(0)],
        2: [z, f(0), f(1), f(2)],
        4: [f(1), f(2), f(3), f(4)],
        5: [f(2), f(3), f(4), f(5)],  # The episode's last observation.
        6: [z, z, z, f(6)],  # A new episode: nothing from the last one.
        7: [z, z, f(6), f(7)],
        9: [f(6), f(7), f(8), f(9)],
    }
    ts = np.array(sorted(expected))
    got = mem.stacks(ts, np.zeros_like(ts))
    np.testing.assert_array_equal(got, np.stack([np.stack(expected[t]) for t in ts]))
    np.testing.assert_array_equal(
        mem.stacks(np.array([9]), np.array([1]))[0],
        np.stack([_frame(t, 1) for t in (6, 7, 8, 9)]))
    # Transition t=3 of stream 0: rewards of t=3, 4 (terminal), no bootstrap.
    x, y = mem.batch(np.array([3, 6]), np.array([0, 0]))
    np.testing.assert_allclose(y["returns"], [1.5, 1.5])
    np.testing.assert_allclose(y["discounts"], [0.0, 0.25])
    np.testing.assert_array_equal(x["next_obs"][0], np.stack(expected[5]))
    np.testing.assert_array_equal(x["next_obs"][1], np.stack([z, f(6), f(7), f(8)]))
    np.testing.assert_array_equal(y["actions"], [0, 0])
    # The reset step is never sampled.
    t, s = mem.sample_indices(500, np.random.default_rng(0))
    assert not np.any((t == 5) & (s == 0))
    assert t.min() >= 0 and t.max() <= 10 - 1 - 2

    # Past the capacity the oldest entries go, and stacks stay right.
    for t in range(10, 30):
        mem.add(np.stack([_frame(t, 0), _frame(t, 1)]), np.zeros(2), np.zeros(2),
                np.ones(2, bool), np.zeros(2, bool), np.zeros(2, bool))
    lo, hi = mem.sampleable_range()
    assert (lo, hi) == (30 - 16 + 3, 30 - 1 - 2)
    np.testing.assert_array_equal(mem.stacks(np.array([lo]), np.array([0]))[0],
                                  np.stack([_frame(t, 0) for t in range(lo - 3, lo + 1)]))


def test_n_step_returns_match_a_hand_computation():
    g = 0.9
    rewards = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [-1, 5, 5], [0, 0, 1]], np.float32)
    cuts = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]], bool)
    # Row 2: the episode is truncated (ends without a cut) after its 2nd step.
    ends = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    returns, steps, discounts = dqn.n_step_returns(rewards, cuts, ends, g)
    np.testing.assert_allclose(
        returns, [1 + g * 2 + g * g * 3, 1 + g * 2, 1 + g * 2, -1, g * g * 1], rtol=1e-6)
    np.testing.assert_array_equal(steps, [3, 2, 2, 1, 3])
    np.testing.assert_allclose(discounts, [g ** 3, 0, g ** 2, 0, 0], rtol=1e-6)
    # A lost life (cut) without the end of the episode also stops the sum.
    r, m, d = dqn.n_step_returns(np.array([[1.0, 1.0, 1.0]]), np.array([[0, 1, 0]], bool),
                                 np.zeros((1, 3), bool), 0.99)
    np.testing.assert_allclose(r, [1.99])
    np.testing.assert_array_equal(m, [2])
    assert d[0] == 0.0


def test_iterate_checkpoint_resume_and_teacher_export(tmp_path):
    algo = _tiny_dqn()
    try:
        for _ in range(3):
            m = algo.iterate()
            assert set(m) == {"episodes", "loss", "act_seconds", "learn_seconds"}
        assert algo.agent_steps == 3 * 2 * 16
        assert algo.gradient_steps > 5 and np.isfinite(m["loss"])
        assert algo.epsilon() < 1.0
        # The target network moves only when synced.
        online, target = algo.learner.net, algo.learner.target_net
        steps = algo.gradient_steps
        algo.gradient_steps = 1  # Not a sync step.
        before = [np.asarray(w.value).copy() for w in target.weights]
        algo.learn_step()
        algo.gradient_steps = steps + 1
        for a, w in zip(before, target.weights):
            np.testing.assert_array_equal(a, np.asarray(w.value))
        assert any(not np.array_equal(a, np.asarray(w.value))
                   for a, w in zip(before, online.weights))
        algo.learner.sync_target()
        for a, w in zip(online.weights, target.weights):
            np.testing.assert_array_equal(np.asarray(a.value), np.asarray(w.value))
        state = algo.state()
        ckpt = tmp_path / "ck.npz"
        checkpoints.save(ckpt, algo.learner, algo.optimizer, {"algo": state})
        weights = [np.asarray(w.value).copy() for w in algo.learner.weights]
        n_target = len(algo.learner.target_net.weights)
        assert len(weights) == 2 * n_target  # Online and target networks.
        teachers.save_teacher(algo.teacher_model, "pong", "q_values", SPEC, tmp_path)
        obs = algo.obs.copy()
        q = np.asarray(algo.net.predict_on_batch(obs))
    finally:
        algo.close()

    algo2 = _tiny_dqn(seed=1)
    try:
        saved = checkpoints.restore(ckpt, algo2.learner, algo2.optimizer)
        algo2.load_state(saved["algo"])
        assert algo2.state() == state
        for a, b in zip(weights, algo2.learner.weights):
            np.testing.assert_array_equal(a, np.asarray(b.value))
        assert int(np.asarray(algo2.optimizer.iterations.value)) == state["gradient_steps"]
        algo2.iterate()
        assert algo2.agent_steps == state["agent_steps"] + 2 * 16
        # The memory is refilled before learning resumes.
        assert algo2.gradient_steps == state["gradient_steps"]
        algo2.iterate()
        assert algo2.gradient_steps > state["gradient_steps"]
    finally:
        algo2.close()

    teacher = teachers.load_teacher("pong", tmp_path, SPEC)
    assert teacher.kind == "q_values" and teacher.num_actions == 6
    out, feats = teacher.label(obs)
    np.testing.assert_allclose(out, q, rtol=1e-5, atol=1e-6)
    assert feats.shape == (2, TINY["fc_units"])


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        dqn.DQNConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"ez_mu must be 0 \(plain epsilon-greedy\) or > 1, "
                                         r"found 0.5"):
        dqn.DQNConfig(ez_mu=0.5)
    with pytest.raises(ValueError, match=r"DQNConfig.epsilon_end must be in \[0, 1\], found -0.1"):
        dqn.DQNConfig(epsilon_end=-0.1)


def _run_lengths(seq):
    lengths, k = [], 1
    for a, b in zip(seq[:-1], seq[1:]):
        if a == b:
            k += 1
        else:
            lengths.append(k)
            k = 1
    return lengths + [k]


def test_ez_greedy_holds_an_exploratory_action_then_turns_greedy():
    algo = _tiny_dqn(ez_mu=2.0, epsilon_end=0.0)
    try:
        obs = np.zeros((2,) + SPEC.observation_shape, np.uint8)
        greedy = int(np.argmax(np.asarray(algo.net.predict_on_batch(obs))[0]))
        held = (greedy + 1) % 6
        algo.agent_steps = 10**6  # epsilon 0: no new exploratory run starts.
        assert algo.epsilon() == 0.0
        algo._explore_left[:] = [3, 0]
        algo._explore_action[:] = [held, held]
        got = [algo._act(obs).tolist() for _ in range(5)]
        assert got == [[held, greedy]] * 3 + [[greedy, greedy]] * 2
    finally:
        algo.close()


@pytest.mark.parametrize("mu, lo, hi", [(0.0, 1.0, 1.4), (2.0, 2.5, 6.0)])
def test_exploratory_runs_last_as_the_zeta_law_says(mu, lo, hi):
    """epsilon 1: plain runs of equal actions average 1/(1 - 1/6) = 1.2 steps;
    zeta(2) durations capped at 100 average H_100 / zeta(2) = 3.2 (a bit more
    where consecutive runs draw the same action)."""
    algo = _tiny_dqn(ez_mu=mu)
    try:
        assert algo.epsilon() == 1.0  # Warm-up.
        obs = np.zeros((2,) + SPEC.observation_shape, np.uint8)
        seq = np.array([algo._act(obs) for _ in range(3000)])
        mean = np.mean(_run_lengths(seq[:, 0].tolist()))
        assert lo < mean < hi, mean
    finally:
        algo.close()
