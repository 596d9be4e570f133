"""The teacher-training loop (`agents.loop`) with fake Atari vector environments."""

from __future__ import annotations

import numpy as np

from multidistill import acting
from multidistill.agents import loop

OBS = (4, 84, 84)


class FakeAtari:
    """A vector env in NextStep autoreset mode, like `ale_py.AtariVectorEnv`.

    Env i plays episodes of `lengths[i]` agent steps (terminated at the
    last); it scores reward i + 1 on every third step of an episode (steps
    2, 5, ...) and loses its first life at step 3. Frame t of an episode of
    env i is filled with (37 * i + 11 * episode + t + 1) % 251, stacked with
    zeros before the episode's first frame, so any observation is known.
    """

    def __init__(self, lengths=(5, 7), obs_shape=OBS):
        self.num_envs = len(lengths)
        self.lengths = np.asarray(lengths)
        self.obs_shape = obs_shape
        self.t = np.zeros(self.num_envs, int)
        self.episode = np.zeros(self.num_envs, int)
        self.after_end = np.zeros(self.num_envs, bool)
        self.pending = None
        self.sent: list[np.ndarray] = []
        self.closed = False

    def frame_value(self, i, episode, t):
        return (37 * i + 11 * episode + t + 1) % 251

    def observation(self, i, episode, t):
        stack, h, w = self.obs_shape
        out = np.zeros(self.obs_shape, np.uint8)
        for k in range(stack):
            step = t - (stack - 1 - k)
            if step >= 0:
                out[k] = self.frame_value(i, episode, step)
        return out

    def _obs(self):
        return np.stack([self.observation(i, self.episode[i], self.t[i])
                         for i in range(self.num_envs)])

    def _lives(self):
        return np.where(self.t >= 3, 2, 3)

    def reset(self, seed):
        self.seed = seed
        return self._obs(), {"lives": self._lives()}

    def send(self, actions):
        assert self.pending is None
        self.pending = np.asarray(actions)
        self.sent.append(self.pending.copy())

    def recv(self):
        self.pending = None
        rewards = np.zeros(self.num_envs, np.float32)
        term = np.zeros(self.num_envs, bool)
        for i in range(self.num_envs):
            if self.after_end[i]:  # The reset step: a new episode's first observation.
                self.after_end[i] = False
                self.episode[i] += 1
                self.t[i] = 0
                continue
            self.t[i] += 1
            rewards[i] = (i + 1) if self.t[i] % 3 == 0 else 0.0
            if self.t[i] == self.lengths[i]:
                term[i] = True
                self.after_end[i] = True
        return (self._obs(), rewards, term, np.zeros(self.num_envs, bool),
                {"lives": self._lives()})

    def close(self):
        self.closed = True


class CountingAgent:
    """Acts with action = env index; closes an iteration every 4 vector steps."""

    kind = "q_values"

    def __init__(self, num_envs):
        self.config = None
        self.agent_steps = 0
        self.steps: list[acting.StepBatch] = []

    def policy(self, observations):
        return np.arange(len(observations)), {"first": observations[:, -1, 0, 0].astype(float)}

    def observe(self, step):
        self.steps.append(step)
        self.agent_steps += len(step.valid)
        return [float(len(self.steps))] if len(self.steps) % 4 == 0 else None


def test_records_count_steps_frames_losses_and_whole_episodes():
    env = FakeAtari(lengths=(5, 7))
    agent = CountingAgent(2)
    records = loop.iterations(agent, [env], seed=10, frame_skip=4)
    got = [next(records) for _ in range(6)]  # 24 vector steps.
    records.close()
    assert env.seed == 10
    assert [r.agent_steps for r in got] == [8, 16, 24, 32, 40, 48]
    assert [r.num_env_frames for r in got] == [32, 64, 96, 128, 160, 192]
    assert all(r.iteration_agent_steps == 8 for r in got)
    assert [r.loss for r in got] == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]
    assert all(r.num_gradient_steps == 1 and r.act_seconds >= 0 for r in got)
    # Env 0: episodes of 5 steps + 1 reset step, return 1 (its step 3);
    # env 1: 7 + 1, return 2 * 2 (steps 3 and 6). In 24 vector steps env 0
    # ends 4 episodes (at steps 4, 10, 16, 22), env 1 3 (6, 14, 22).
    episodes = [e for r in got for e in r.episodes]
    assert sorted(episodes) == [(1.0, 5)] * 4 + [(4.0, 7)] * 3
    assert [len(r.episodes) for r in got] == [0, 2, 1, 1, 1, 2]
    # The loop hands the agent every step, with lives and life losses.
    steps = agent.steps
    assert len(steps) == 24
    np.testing.assert_array_equal([s.life_lost[0] for s in steps[:7]],
                                  [False, False, True, False, False, False, False])
    assert not steps[5].valid[0] and steps[5].valid[1]  # Env 0's first reset step.


def test_policy_of_step_t_plus_1_runs_before_step_t_is_observed():
    """The documented one-step lag: acting.play sends early."""
    env = FakeAtari(lengths=(50,))
    order = []

    class Agent(CountingAgent):
        def policy(self, observations):
            order.append(("policy", int(observations[0, -1, 0, 0])))
            return np.zeros(1, int), {}

        def observe(self, step):
            order.append(("observe", int(step.observations[0, -1, 0, 0])))
            return super().observe(step)

    records = loop.iterations(Agent(1), env, seed=0, frame_skip=4)
    next(records)
    records.close()
    frames = [env.frame_value(0, 0, t) for t in range(6)]
    assert order[:5] == [("policy", frames[0]), ("policy", frames[1]), ("observe", frames[0]),
                         ("policy", frames[2]), ("observe", frames[1])]
