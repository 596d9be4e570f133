"""The replay memory and n-step returns of `agents.replay`: numbers by hand."""

from __future__ import annotations

import numpy as np
import pytest

from multidistill.agents import replay


def _frame(t, s):
    return np.full((2, 3), (10 * t + s + 1) % 256, np.uint8)


def test_replay_memory_rebuilds_stacks_within_episodes():
    mem = replay.ReplayMemory(capacity=16, num_streams=2, frame_shape=(2, 3), frame_stack=4,
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
    # The latest 3 sampleable entries only (t = 5..7), the reset step still not.
    t, s = mem.sample_indices(500, np.random.default_rng(1), recent=3)
    assert set(zip(t.tolist(), s.tolist())) == {(5, 1), (6, 0), (6, 1), (7, 0), (7, 1)}
    # More than the memory holds: all of it.
    t, _ = mem.sample_indices(500, np.random.default_rng(2), recent=100)
    assert (t.min(), t.max()) == (0, 7)

    # Past the capacity the oldest entries go, and stacks stay right, also
    # across the wrap of the circular memory (t=16 lies at index 0, so the
    # stack of t=lo=17 takes indices 14, 15, 0, 1).
    for t in range(10, 30):
        mem.add(np.stack([_frame(t, 0), _frame(t, 1)]), np.zeros(2), np.zeros(2),
                np.ones(2, bool), np.zeros(2, bool), np.zeros(2, bool))
    lo, hi = mem.sampleable_range()
    assert (lo, hi) == (30 - 16 + 3, 30 - 1 - 2)
    for t in (lo, lo + 1, 20, hi):
        for s in (0, 1):
            np.testing.assert_array_equal(
                mem.stacks(np.array([t]), np.array([s]))[0],
                np.stack([_frame(k, s) for k in range(t - 3, t + 1)]))


def test_n_step_returns_match_a_hand_computation():
    g = 0.9
    rewards = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [-1, 5, 5], [0, 0, 1]], np.float32)
    cuts = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]], bool)
    # Row 2: the episode is truncated (ends without a cut) after its 2nd step.
    ends = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    returns, steps, discounts = replay.n_step_returns(rewards, cuts, ends, g)
    np.testing.assert_allclose(
        returns, [1 + g * 2 + g * g * 3, 1 + g * 2, 1 + g * 2, -1, g * g * 1], rtol=1e-6)
    np.testing.assert_array_equal(steps, [3, 2, 2, 1, 3])
    np.testing.assert_allclose(discounts, [g ** 3, 0, g ** 2, 0, 0], rtol=1e-6)
    # A lost life (cut) without the end of the episode also stops the sum.
    r, m, d = replay.n_step_returns(np.array([[1.0, 1.0, 1.0]]), np.array([[0, 1, 0]], bool),
                                    np.zeros((1, 3), bool), 0.99)
    np.testing.assert_allclose(r, [1.99])
    np.testing.assert_array_equal(m, [2])
    assert d[0] == 0.0


def test_sampling_an_empty_memory_says_so():
    mem = replay.ReplayMemory(capacity=8, num_streams=1, frame_shape=(2, 2), n_step=3)
    for _ in range(3):
        mem.add(np.zeros((1, 2, 2)), [0], [0.0], [True], [False], [False])
    with pytest.raises(ValueError, match="holds no transition to sample yet"):
        mem.sample(4, np.random.default_rng(0))
