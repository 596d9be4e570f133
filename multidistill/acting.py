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


def play(envs, policy: Policy, seed: int, active: np.ndarray | None = None
         ) -> Iterator[StepBatch]:
    """Plays forever; the caller stops iterating when it has enough.

    Emulation overlaps everything else. Each group of environments is sent
    its actions (`send`, which returns at once: the emulator threads step in
    the background) before the loop turns to the next group: while group g
    emulates, the policy runs on the other group's observations, and the
    caller consumes the yielded batch (writing HDF5, bookkeeping) while the
    groups step again. With one group only the caller's work overlaps
    emulation. The order of policy calls does not depend on timing, so a run
    is reproducible.

    Args:
      envs: one `ale_py.AtariVectorEnv` in NextStep autoreset mode, or a
        list of them (see `environments.make_vector_envs`); environment i
        counts across the groups in order.
      policy: batched policy, see `Policy`; called once per group and step,
        on the observations of that group's active environments.
      seed: environment i is reset with seed `seed + i` (ALE draws the no-op
        starts and sticky actions from it).
      active: optional (N,) bool array that the caller clears, while
        iterating, for environments it needs no more steps from (e.g. an
        evaluation quota met). From then on their entries are not `valid`,
        the policy no longer runs for them (they are sent action 0, and
        their extras are zeros), and a group whose environments are all
        inactive stops stepping.

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
    observations = [g.reset(seed=int(seed) + int(f))[0] for g, f in zip(groups, first)]
    acted = [_act(policy, o, active[sp]) for o, sp in zip(observations, spans)]
    for g, (actions, _) in zip(groups, acted):
        g.send(actions)
    stepping = [True] * len(groups)
    valid = np.ones(n, dtype=bool)
    offsets = np.zeros(n, dtype=np.int64)
    while True:
        outcomes, next_acted = [], []
        for k, (g, sp) in enumerate(zip(groups, spans)):
            if not stepping[k]:  # Parked: nothing happens there any more.
                none = np.zeros(sizes[k], bool)
                outcomes.append((observations[k], np.zeros(sizes[k], np.float32), none, none))
                next_acted.append(_act(policy, observations[k], none))
                continue
            next_obs, rewards, terminated, truncated, _ = g.recv()
            outcomes.append((next_obs, rewards, terminated, truncated))
            mask = active[sp].copy()
            next_acted.append(_act(policy, next_obs, mask))
            if mask.any():
                g.send(next_acted[-1][0])  # Steps while the rest of the loop runs.
            else:
                stepping[k] = False
        terminated = np.concatenate([np.asarray(o[2], bool) for o in outcomes])
        truncated = np.concatenate([np.asarray(o[3], bool) for o in outcomes])
        yield StepBatch(
            observations=_concat(observations),
            actions=_concat([a for a, _ in acted]),
            extras=_concat_extras([x for _, x in acted], sizes),
            rewards=np.concatenate([np.asarray(o[1], np.float32) for o in outcomes]),
            terminated=terminated,
            truncated=truncated,
            valid=valid & active,
            episode_offsets=offsets.copy(),
        )
        ended = (terminated | truncated) & valid
        # Where an episode ended, the next step is a reset, not a transition.
        offsets = np.where(valid, offsets + 1, 0)
        offsets[ended] = 0
        valid = ~ended
        observations = [o[0] for o in outcomes]
        acted = next_acted


def _act(policy: Policy, observations: np.ndarray, mask: np.ndarray
         ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The policy on the masked rows; action 0 and no extras (None) elsewhere."""
    if mask.all():
        actions, extras = policy(observations)
        return np.asarray(actions, dtype=np.int32), extras
    actions = np.zeros(len(observations), np.int32)
    if not mask.any():
        return actions, None
    rows = np.flatnonzero(mask)
    some, extras = policy(observations[rows])
    actions[rows] = np.asarray(some, dtype=np.int32)
    full = {}
    for key, value in extras.items():
        value = np.asarray(value)
        full[key] = np.zeros((len(observations),) + value.shape[1:], value.dtype)
        full[key][rows] = value
    return actions, full


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
