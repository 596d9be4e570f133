"""The vectorised play loop shared by dataset building, evaluation and training.

`play` steps a vector of environments with a batched policy and yields one
`StepBatch` per vector step; callers (the dataset builder, the evaluator)
collect what they need from it. Keeping the loop a generator keeps progress
bars, writers and checkpoints outside it.

Conventions: environments autoreset on the step *after* an episode ends
(ALE's NextStep mode); on that step the action is ignored and nothing is a
transition, so `StepBatch.valid` is False there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# policy(observations (N, stack, H, W) uint8) -> (actions (N,), extras dict of
# (N, ...) arrays, e.g. teacher outputs and features).
Policy = Callable[[np.ndarray], tuple[np.ndarray, dict[str, Any]]]


@dataclasses.dataclass
class StepBatch:
    """One step of every environment.

    Attributes:
      observations: (N, stack, H, W) uint8, the observations acted upon.
      actions: (N,) int32 actions taken.
      extras: what the policy returned beside the actions.
      rewards: (N,) float32 raw rewards that followed.
      terminated: (N,) bool, the episode ended (game over).
      truncated: (N,) bool, the episode was cut (frame cap).
      valid: (N,) bool, False where the step only reset the environment.
      episode_offsets: (N,) int, agent steps since the episode's start.
    """

    observations: np.ndarray
    actions: np.ndarray
    extras: dict[str, Any]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    episode_offsets: np.ndarray


def play(env, policy: Policy, seed: int) -> Iterator[StepBatch]:
    """Plays forever; the caller stops iterating when it has enough.

    Args:
      env: an `ale_py.AtariVectorEnv` (or anything with its reset/step API)
        in NextStep autoreset mode.
      policy: batched policy, see `Policy`.
      seed: environment i is reset with seed `seed + i` (ALE draws the no-op
        starts and sticky actions from it).

    Yields:
      One `StepBatch` per vector step.
    """
    observations, _ = env.reset(seed=int(seed))
    n = observations.shape[0]
    valid = np.ones(n, dtype=bool)
    offsets = np.zeros(n, dtype=np.int64)
    while True:
        actions, extras = policy(observations)
        actions = np.asarray(actions, dtype=np.int32)
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        yield StepBatch(
            observations=observations,
            actions=actions,
            extras=extras,
            rewards=np.asarray(rewards, np.float32),
            terminated=np.asarray(terminated, bool),
            truncated=np.asarray(truncated, bool),
            valid=valid.copy(),
            episode_offsets=offsets.copy(),
        )
        ended = (np.asarray(terminated) | np.asarray(truncated)) & valid
        # Where an episode ended, the next step is a reset, not a transition.
        offsets = np.where(valid, offsets + 1, 0)
        offsets[ended] = 0
        valid = ~ended
        observations = next_obs
