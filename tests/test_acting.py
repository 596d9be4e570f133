"""The play loop with fake vector environments: grouping, overlap, `active`."""

import numpy as np
import pytest

from multidistill import acting


class FakeVectorEnv:
    """Observation of env i = its global index and step count; episodes of 3 steps."""

    def __init__(self, num_envs, first, log):
        self.num_envs, self.first, self.log = num_envs, first, log
        self.t = np.zeros(num_envs, int)
        self.pending = None

    def _obs(self):
        obs = np.zeros((self.num_envs, 1, 2, 2), np.uint8)
        obs[:, 0, 0, 0] = self.first + np.arange(self.num_envs)
        obs[:, 0, 0, 1] = self.t
        return obs

    def reset(self, seed):
        self.log.append(("reset", self.first, seed))
        return self._obs(), {}

    def send(self, actions):
        assert self.pending is None, "send twice without recv"
        self.log.append(("send", self.first, list(actions)))
        self.pending = np.asarray(actions)

    def recv(self):
        assert self.pending is not None, "recv without send"
        self.pending = None
        self.t += 1
        ended = self.t % 3 == 0
        return self._obs(), np.ones(self.num_envs, np.float32), ended, np.zeros_like(ended), {}


def _policy(calls):
    def policy(obs):
        calls.append(obs[:, 0, 0, 0].tolist())
        return obs[:, 0, 0, 0] % 2, {"echo": obs[:, 0, 0, 0].astype(np.float32)}
    return policy


def test_groups_seed_each_environment_and_join_into_one_batch():
    log, calls = [], []
    envs = [FakeVectorEnv(2, 0, log), FakeVectorEnv(3, 2, log)]
    steps = acting.play(envs, _policy(calls), seed=10)
    first = next(steps)
    assert log[:2] == [("reset", 0, 10), ("reset", 2, 12)]  # Env i gets seed + i.
    np.testing.assert_array_equal(first.actions, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(first.extras["echo"], [0, 1, 2, 3, 4])
    assert first.valid.all() and first.rewards.tolist() == [1.0] * 5
    # Group by group, each policy call on that group's rows only.
    assert calls == [[0, 1], [2, 3, 4], [0, 1], [2, 3, 4]]
    # Pipelined: the next step's actions are sent before the batch is yielded.
    assert [e[0] for e in log[2:]] == ["send", "send", "send", "send"]
    second, third, fourth = next(steps), next(steps), next(steps)
    assert third.terminated.all() and not fourth.valid.any()  # Reset step after an end.
    np.testing.assert_array_equal(second.episode_offsets, [1] * 5)


def test_inactive_environments_are_not_acted_for_and_groups_park():
    log, calls = [], []
    envs = [FakeVectorEnv(2, 0, log), FakeVectorEnv(2, 2, log)]
    active = np.ones(4, bool)
    steps = acting.play(envs, _policy(calls), seed=0, active=active)
    next(steps)
    active[1] = False  # Env 1 done.
    active[2:] = False  # Group 1 done.
    calls.clear()
    sends_before = sum(1 for e in log if e[:2] == ("send", 2))
    batch = next(steps)
    np.testing.assert_array_equal(batch.valid, [True, False, False, False])
    batch = next(steps)
    np.testing.assert_array_equal(batch.valid, [True, False, False, False])
    assert batch.actions[1] == 0 and batch.extras["echo"][1] == 0.0
    np.testing.assert_array_equal(batch.extras["echo"][2:], [0.0, 0.0])
    assert all(c == [0] for c in calls)  # Only env 0 still reaches the policy.
    # Group 1 is parked: nothing sent to it after the step already under way.
    assert sum(1 for e in log if e[:2] == ("send", 2)) == sends_before
    assert envs[1].pending is None


def test_active_must_match_the_environments():
    steps = acting.play([FakeVectorEnv(2, 0, [])], _policy([]), seed=0,
                        active=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"active must be a bool array of shape \(2,\)"):
        next(steps)


def test_lockstep_calls_the_policy_once_on_all_groups_and_parks_done_groups():
    log, calls = [], []
    envs = [FakeVectorEnv(2, 0, log), FakeVectorEnv(2, 2, log)]
    active = np.ones(4, bool)
    steps = acting.play(envs, _policy(calls), seed=0, active=active, overlap=False)
    first = next(steps)
    assert calls == [[0, 1, 2, 3], [0, 1, 2, 3]]  # Full batch, once per step.
    np.testing.assert_array_equal(first.extras["echo"], [0, 1, 2, 3])
    active[2:] = False  # Group 1 done.
    calls.clear()
    sends_before = sum(1 for e in log if e[:2] == ("send", 2))
    next(steps)
    batch = next(steps)
    np.testing.assert_array_equal(batch.valid, [True, True, False, False])
    assert all(c == [0, 1] for c in calls)
    assert sum(1 for e in log if e[:2] == ("send", 2)) == sends_before


class ScriptedEnv:
    """Two environments playing a fixed script of (rewards, terminated, lives)."""

    def __init__(self, script, lives0):
        self.num_envs = 2
        self.script, self.lives0, self.k = script, lives0, 0

    def _obs(self):
        return np.full((2, 1, 2, 2), self.k, np.uint8)

    def reset(self, seed):
        return self._obs(), {"lives": np.array(self.lives0)}

    def send(self, actions):
        pass

    def recv(self):
        rewards, terminated, lives = self.script[self.k]
        self.k += 1
        return (self._obs(), np.array(rewards, np.float32), np.array(terminated),
                np.zeros(2, bool), {"lives": np.array(lives)})


# Env 1 ends at step 2, env 0 at step 3; the step after each end is a reset
# (not a transition: its reward 9 and its lives going up count for nothing).
SCRIPT = [
    ([1.0, 0.0], [False, False], [3, 1]),
    ([2.0, 5.0], [False, True], [2, 0]),
    ([0.0, 9.0], [True, False], [2, 3]),
    ([9.0, 4.0], [False, True], [3, 3]),
]


def test_lives_life_lost_and_episode_tracker():
    steps = acting.play(ScriptedEnv(SCRIPT, [3, 2]), lambda obs: (np.zeros(len(obs)), {}),
                        seed=0)
    tracker = acting.EpisodeTracker(2)
    batches, ended = [], []
    for _ in SCRIPT:
        batches.append(next(steps))
        ended.append(tracker.update(batches[-1]))
    np.testing.assert_array_equal([b.lives.tolist() for b in batches],
                                  [lives for _, _, lives in SCRIPT])
    np.testing.assert_array_equal([b.valid.tolist() for b in batches],
                                  [[True, True], [True, True], [True, False], [False, True]])
    np.testing.assert_array_equal([b.life_lost.tolist() for b in batches],
                                  [[False, True], [True, True], [False, False],
                                   [False, False]])
    # (environment, return, length) of each episode, the step it ended on.
    assert ended == [[], [(1, 5.0, 2)], [(0, 3.0, 3)], [(1, 4.0, 1)]]
    np.testing.assert_array_equal(tracker.returns, [0.0, 0.0])
    np.testing.assert_array_equal(tracker.lengths, [0, 0])


def test_life_lost_only_where_active():
    active = np.ones(2, bool)
    steps = acting.play(ScriptedEnv(SCRIPT, [3, 2]), lambda obs: (np.zeros(len(obs)), {}),
                        seed=0, active=active)
    assert next(steps).life_lost.tolist() == [False, True]
    active[1] = False
    assert next(steps).life_lost.tolist() == [True, False]
