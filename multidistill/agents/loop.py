"""The teacher-training loop: a generator of one record per iteration (DQN Zoo style).

    for record in loop.iterations(agent, envs, seed, frame_skip):
        ...  # log, evaluate, checkpoint; stop iterating when done

`iterations` plays the environments with the agent's behaviour policy
through `acting.play` (the project's one environment loop: a single group
stepped in lockstep), counts episodes with `acting.EpisodeTracker` (the
one episode bookkeeping), hands every step to `agent.observe` and yields a
`Record` whenever the agent closes an iteration. Progress bars, evaluation,
teacher export, TensorBoard scalars and checkpoints wrap it from outside
(`agents.runner`); a record is also the safe point to stop at or to
checkpoint, since the agent is between iterations there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from multidistill import acting
from multidistill.agents import base


class Record(NamedTuple):
    """What one iteration did.

    Attributes:
      agent_steps: agent steps taken so far, over all environments (the
        agent's counter, reset steps included).
      num_env_frames: emulator frames so far (agent_steps * frame_skip).
      iteration_agent_steps: agent steps of this iteration.
      loss: mean loss of the iteration's gradient steps, NaN when there were
        none (DQN's warm-up).
      num_gradient_steps: gradient steps of the iteration.
      episodes: (raw return, length in agent steps) of each episode that
        ended during the iteration.
      act_seconds: wall-clock seconds spent acting (policy and emulators).
      learn_seconds: wall-clock seconds spent in `agent.observe` (storing
        and learning).
      metrics: the agent's own scalars of the iteration by TensorBoard tag
        (`agent.metrics`, e.g. PPO's RND bonus), None when it has none.
    """

    agent_steps: int
    num_env_frames: int
    iteration_agent_steps: int
    loss: float
    num_gradient_steps: int
    episodes: list[tuple[float, int]]
    act_seconds: float
    learn_seconds: float
    metrics: dict[str, float] | None = None

    @property
    def agent_steps_per_s(self) -> float:
        return self.iteration_agent_steps / max(self.act_seconds + self.learn_seconds, 1e-9)


def iterations(agent: base.Agent, envs, seed: int, frame_skip: int) -> Iterator[Record]:
    """Trains `agent` on `envs` for as long as the caller iterates.

    Args:
      agent: the agent (see `agents.base.Agent`).
      envs: one vector environment in NextStep autoreset mode, or a list of
        them (`environments.make_vector_envs`); they are stepped in lockstep
        (one policy call on all environments per vector step).
      seed: environment i is reset with seed `seed + i` (pass a seed that
        moves with `agent.agent_steps`, so a resumed run does not replay the
        same episode starts).
      frame_skip: emulator frames per agent step (for `Record.num_env_frames`).

    Yields:
      One `Record` per iteration of the agent. The time the caller spends
      between records (logging, evaluating) is not counted in them.
    """
    groups = list(envs) if isinstance(envs, (list, tuple)) else [envs]
    tracker = acting.EpisodeTracker(sum(int(g.num_envs) for g in groups))
    start_steps = agent.agent_steps
    episodes: list[tuple[float, int]] = []
    act_seconds = learn_seconds = 0.0
    t0 = time.perf_counter()
    for step in acting.play(groups, agent.policy, seed, overlap=False):
        t1 = time.perf_counter()
        episodes.extend((ret, length) for _, ret, length in tracker.update(step))
        losses = agent.observe(step)
        t2 = time.perf_counter()
        act_seconds += t1 - t0
        learn_seconds += t2 - t1
        t0 = t2
        if losses is None:
            continue
        yield Record(
            agent_steps=agent.agent_steps,
            num_env_frames=agent.agent_steps * frame_skip,
            iteration_agent_steps=agent.agent_steps - start_steps,
            loss=float(np.mean(losses)) if losses else float("nan"),
            num_gradient_steps=len(losses),
            episodes=episodes,
            act_seconds=act_seconds,
            learn_seconds=learn_seconds,
            metrics=dict(getattr(agent, "metrics", None) or {}) or None,
        )
        start_steps = agent.agent_steps
        episodes = []
        act_seconds = learn_seconds = 0.0
        t0 = time.perf_counter()
