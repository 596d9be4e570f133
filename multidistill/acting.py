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
# (N, ...) arrays, e.g. teacher outputs and features). A policy with an
# attribute `per_env = True` is called as policy(observations, env_indices):
# the index in `play`'s environments of each row (for randomness kept per
# environment, as the evaluation's).
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
      lives: (N,) int, lives left after the step (0 where a group is parked).
      life_lost: (N,) bool, the step cost a life (only where `valid`).
    """

    observations: np.ndarray
    actions: np.ndarray
    extras: dict[str, Any]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    episode_offsets: np.ndarray
    lives: np.ndarray
    life_lost: np.ndarray


class EpisodeTracker:
    """The return and length of the episode under way in each environment.

    The one piece of episode bookkeeping of the project: the dataset
    builder, the evaluator and the teacher trainers feed it every
    `StepBatch` and get back the episodes that ended.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def update(self, step: StepBatch) -> list[tuple[int, float, int]]:
        """Counts one step; returns (environment, raw return, length in agent
        steps) of each episode that ended on it."""
        v = step.valid
        self.returns[v] += step.rewards[v]
        self.lengths[v] += 1
        ended = np.flatnonzero(v & (step.terminated | step.truncated))
        out = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in ended]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return out


def play(envs, policy: Policy, seed: int, active: np.ndarray | None = None,
         overlap: bool = True) -> Iterator[StepBatch]:
    """Plays forever; the caller stops iterating when it has enough.

    Actions are sent (`send` returns at once: the emulator threads step in
    the background) before the step's batch is yielded, so the caller's
    work (writing HDF5, bookkeeping) runs while the environments step.

    Environments come in groups (separate vector environments). Two ways to
    drive them:
      * `overlap=True`: the policy runs per group; while group g emulates,
        the policy runs on the other groups' observations. Pays where the
        cores outnumber what one stage can use.
      * `overlap=False` (lockstep): all groups step, then one policy call
        on all of them (full batch). Groups then only serve to stop
        stepping environments that are done, a group at a time.
    The order of policy calls does not depend on timing, so a run is
    reproducible; with a deterministic policy neither the grouping nor the
    mode changes what is played.

    Args:
      envs: one `ale_py.AtariVectorEnv` in NextStep autoreset mode, or a
        list of them (see `environments.make_vector_envs`); environment i
        counts across the groups in order.
      policy: batched policy, see `Policy`; called on the observations of
        the active environments (of one group when overlapping).
      seed: environment i is reset with seed `seed + i` (ALE draws the no-op
        starts and sticky actions from it).
      active: optional (N,) bool array that the caller clears, while
        iterating, for environments it needs no more steps from (e.g. an
        evaluation quota met). From then on their entries are not `valid`,
        the policy no longer runs for them (they are sent action 0, and
        their extras are zeros), and a group whose environments are all
        inactive stops stepping.
      overlap: see above.

    Yields:
      One `StepBatch` per vector step, all environments of all groups.
    """
    groups = list(envs) if isinstance(envs, (list, tuple)) else [envs]
    sizes = [int(g.num_envs) for g in groups]
    first = np.cumsum([0] + sizes)
    spans = [slice(int(a), int(b)) for a, b in zip(first[:-1], first[1:])]
    n = int(first[-1])
    if active is None:
        active = np.ones(n, dtype=bool)
    elif active.shape != (n,) or active.dtype != bool:
        raise ValueError(f"active must be a bool array of shape ({n},), "
                         f"found {active.dtype} {active.shape}")
    stepping = [True] * len(groups)

    def act_and_send(k_list, observations, mask):
        """Policy on groups `k_list` (one call), then sends to those still active."""
        rows = np.concatenate([np.arange(sizes[k]) + first[k] for k in k_list])
        actions, extras = _act(policy, _concat([observations[k] for k in k_list]), mask[rows],
                               rows)
        out, at = [], 0
        for k in k_list:
            part = slice(at, at + sizes[k])
            at += sizes[k]
            out.append((actions[part],
                        None if extras is None else {x: v[part] for x, v in extras.items()}))
            if not stepping[k]:
                continue
            if mask[spans[k]].any():
                groups[k].send(out[-1][0])  # Steps while the rest of the loop runs.
            else:
                stepping[k] = False  # Parked: nothing more happens there.
        return out

    resets = [g.reset(seed=int(seed) + int(f)) for g, f in zip(groups, first)]
    observations = [obs for obs, _ in resets]
    lives = np.concatenate([_lives(info, size) for (_, info), size in zip(resets, sizes)])
    order = [[k] for k in range(len(groups))] if overlap else [list(range(len(groups)))]
    acted = [None] * len(groups)
    for ks in order:
        for k, a in zip(ks, act_and_send(ks, observations, active)):
            acted[k] = a
    valid = np.ones(n, dtype=bool)
    offsets = np.zeros(n, dtype=np.int64)
    while True:
        outcomes = [None] * len(groups)
        next_acted = [None] * len(groups)
        for ks in order:
            for k in ks:
                if stepping[k]:
                    next_obs, rewards, terminated, truncated, info = groups[k].recv()
                    outcomes[k] = (next_obs, rewards, terminated, truncated,
                                   _lives(info, sizes[k]))
                else:
                    none = np.zeros(sizes[k], bool)
                    outcomes[k] = (observations[k], np.zeros(sizes[k], np.float32), none, none,
                                   np.zeros(sizes[k], np.int64))
            # A parked group's entries are all inactive already (it parked
            # because they were, and entries are only ever cleared).
            next_obs = {k: outcomes[k][0] for k in ks}
            for k, a in zip(ks, act_and_send(ks, next_obs, active)):
                next_acted[k] = a
        terminated = np.concatenate([np.asarray(o[2], bool) for o in outcomes])
        truncated = np.concatenate([np.asarray(o[3], bool) for o in outcomes])
        next_lives = np.concatenate([o[4] for o in outcomes])
        yield StepBatch(
            observations=_concat(observations),
            actions=_concat([a for a, _ in acted]),
            extras=_concat_extras([x for _, x in acted], sizes),
            rewards=np.concatenate([np.asarray(o[1], np.float32) for o in outcomes]),
            terminated=terminated,
            truncated=truncated,
            valid=valid & active,
            episode_offsets=offsets.copy(),
            lives=next_lives,
            life_lost=(next_lives < lives) & valid & active,
        )
        ended = (terminated | truncated) & valid
        # Where an episode ended, the next step is a reset, not a transition.
        offsets = np.where(valid, offsets + 1, 0)
        offsets[ended] = 0
        valid = ~ended
        observations = [o[0] for o in outcomes]
        acted = next_acted
        lives = next_lives


def _lives(info: dict, size: int) -> np.ndarray:
    """Lives left per environment from a vector env's info (zeros if absent)."""
    if isinstance(info, dict) and "lives" in info:
        return np.asarray(info["lives"], np.int64)
    return np.zeros(size, np.int64)


def _act(policy: Policy, observations: np.ndarray, mask: np.ndarray, env_indices: np.ndarray
         ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The policy on the masked rows; action 0 and no extras (None) elsewhere.
    `env_indices`: each row's environment (for a `per_env` policy)."""
    per_env = getattr(policy, "per_env", False)
    if mask.all():
        actions, extras = (policy(observations, env_indices) if per_env
                           else policy(observations))
        return np.asarray(actions, dtype=np.int32), extras
    actions = np.zeros(len(observations), np.int32)
    if not mask.any():
        return actions, None
    rows = np.flatnonzero(mask)
    some, extras = (policy(observations[rows], env_indices[rows]) if per_env
                    else policy(observations[rows]))
    actions[rows] = np.asarray(some, dtype=np.int32)
    full = {}
    for key, value in extras.items():
        value = np.asarray(value)
        full[key] = np.zeros((len(observations),) + value.shape[1:], value.dtype)
        full[key][rows] = value
    return actions, full


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """`a` with its last row repeated up to `rows` rows: a batch padded to the
    width a compiled network was traced for (the caller drops the extra
    outputs)."""
    if len(a) == rows:
        return a
    return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _concat_extras(extras: list[dict[str, Any] | None], sizes: list[int]) -> dict[str, Any]:
    """Joins the groups' extras; a group without (None) gets zeros of the same kind."""
    like = next((x for x in extras if x is not None), None)
    if like is None:
        return {}
    parts = {k: [] for k in like}
    for x, size in zip(extras, sizes):
        for k, v in like.items():
            v = np.asarray(v)
            parts[k].append(np.asarray(x[k]) if x is not None
                            else np.zeros((size,) + v.shape[1:], v.dtype))
    return {k: _concat(v) for k, v in parts.items()}
