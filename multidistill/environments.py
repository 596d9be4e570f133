"""The one preprocessing spec, and the vectorised Atari environments built from it.

Every part of multidistill that touches a game (teacher training, dataset
building, evaluation) builds its environments here, from a `Preprocessing`
spec that is stored with every teacher, dataset and student, so that a network
never sees frames prepared differently from those it was trained on.

Conventions:
  * Observations are uint8 arrays of shape (frame_stack, height, width),
    channels first, exactly as `ale_py.AtariVectorEnv` returns them; networks
    move the channels last themselves.
  * At an episode's start the frames before the first one are zeros (that is
    what ALE's frame stack holds after a reset); datasets rebuild stacks the
    same way.
  * Rewards are the game's raw score changes (no clipping); a trainer that
    wants clipped rewards clips them itself.
  * One agent step is `frame_skip` emulator frames; counters say which unit
    they count.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from multidistill import games as games_lib

ATARI_SCREEN = (210, 160)  # The emulator's screen: height, width, pixels.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw Atari frames become network inputs, and how episodes run.

    Attributes:
      frame_height: height of a preprocessed frame, pixels.
      frame_width: width of a preprocessed frame, pixels.
      grayscale: luminance only (True) or RGB (not supported by the networks).
      frame_skip: emulator frames per agent step (the action is repeated).
      max_pool: max over the last two emulator frames of each step (removes
        sprite flicker).
      frame_stack: number of most recent frames in one observation.
      noop_max: at most this many no-op actions at the start of an episode
        (the number is drawn uniformly at random from [0, noop_max]).
      sticky_action_prob: probability that the emulator repeats the previous
        action instead of the chosen one (Machado et al. 2018 use 0.25).
      full_action_space: all 18 actions instead of the game's minimal set.
      max_episode_frames: episodes are truncated after this many emulator
        frames (108,000 = 30 minutes of play).
      fire_reset: press FIRE after a reset in games that need it to start.
      episodic_life: end an episode at every life lost (training trick; off
        keeps the true episode returns).
    """

    frame_height: int = 84
    frame_width: int = 84
    grayscale: bool = True
    frame_skip: int = 4
    max_pool: bool = True
    frame_stack: int = 4
    noop_max: int = 30
    sticky_action_prob: float = 0.0
    full_action_space: bool = False
    max_episode_frames: int = 108_000
    fire_reset: bool = True
    episodic_life: bool = False

    def __post_init__(self):
        problems = []
        for name in ("frame_height", "frame_width", "frame_skip", "frame_stack",
                     "max_episode_frames"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.noop_max < 0:
            problems.append(f"noop_max must be >= 0, found {self.noop_max}")
        if not 0.0 <= self.sticky_action_prob <= 1.0:
            problems.append(
                f"sticky_action_prob must be in [0, 1], found {self.sticky_action_prob}"
            )
        if not self.grayscale:
            problems.append("grayscale=False is not supported: networks take grayscale")
        if problems:
            raise ValueError("invalid preprocessing: " + "; ".join(problems))

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """Shape of one observation: (frame_stack, height, width), uint8."""
        return (self.frame_stack, self.frame_height, self.frame_width)

    @property
    def max_episode_agent_steps(self) -> int:
        return self.max_episode_frames // self.frame_skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the spec") -> Preprocessing:
        """Builds a spec from a dict, refusing keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown preprocessing settings {unknown}; "
                f"expected only {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str, source: str = "the spec") -> Preprocessing:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: preprocessing is not valid JSON ({e})") from None
        return cls.from_dict(d, source)

    def differences(self, other: Preprocessing) -> list[str]:
        """Human-readable list of the settings where `other` differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} here vs {b[k]!r}" for k in a if a[k] != b[k]]


def make_vector_env(
    game: str,
    spec: Preprocessing,
    num_envs: int,
    num_threads: int = 0,
    batch_size: int = 0,
    rgb_screen: bool = False,
):
    """Builds `num_envs` copies of `game` stepping together in C++ threads.

    Args:
      game: ROM id.
      spec: the preprocessing.
      num_envs: environments stepped together.
      num_threads: emulator threads (0: one per core).
      batch_size: 0 steps all envs together; a smaller number returns the
        first `batch_size` envs that are ready (asynchronous mode, see
        `ale_py.AtariVectorEnv`).
      rgb_screen: observations are the full 210x160 RGB screen, one frame
        (shape (num_envs, 1, 210, 160, 3) uint8) instead of the spec's
        frames; the emulator settings stay the spec's (the twin environment
        of `videos`).

    Returns:
      An `ale_py.AtariVectorEnv` that autoresets on the step after an
      episode ends (the action sent on that step is ignored).
    """
    import ale_py

    games_lib.get_game(game)  # Clear error for unknown names.
    return ale_py.AtariVectorEnv(
        game,
        num_envs,
        batch_size=batch_size,
        num_threads=num_threads,
        max_num_frames_per_episode=spec.max_episode_frames,
        repeat_action_probability=spec.sticky_action_prob,
        full_action_space=spec.full_action_space,
        img_height=ATARI_SCREEN[0] if rgb_screen else spec.frame_height,
        img_width=ATARI_SCREEN[1] if rgb_screen else spec.frame_width,
        grayscale=False if rgb_screen else spec.grayscale,
        stack_num=1 if rgb_screen else spec.frame_stack,
        frameskip=spec.frame_skip,
        maxpool=spec.max_pool,
        noop_max=spec.noop_max,
        episodic_life=spec.episodic_life,
        reward_clipping=False,
        use_fire_reset=spec.fire_reset,
        autoreset_mode="NextStep",
    )


def env_groups(num_groups: int = 0, overlap: bool | None = None) -> tuple[int, bool]:
    """Resolves how environments are grouped (see `acting.play`).

    Unset (0 / None) picks by core count: from 4 cores up, 2 groups that
    overlap emulation with inference; below, plain lockstep (one group, one
    network call for all environments). On 2 cores, where emulation and
    inference can each use both cores in turn, overlapping gained nothing
    (it halves the network's batch, and at batches of 8-16 a CPU forward
    pass costs nearly the same per call whatever the batch), and lockstep in
    4 groups (done groups stop stepping) was no faster than in one
    (benchmarks/README.md).

    Returns:
      (groups, overlap).
    """
    many = (os.cpu_count() or 1) >= 4
    if overlap is None:
        overlap = many
    if num_groups <= 0:
        num_groups = 2 if overlap else 1
    return int(num_groups), bool(overlap)


def make_vector_envs(
    game: str,
    spec: Preprocessing,
    num_envs: int,
    num_threads: int = 0,
    num_groups: int = 0,
) -> list:
    """Splits `num_envs` environments into groups for `acting.play`.

    Each group is a vector environment with its own C++ threads; `acting.play`
    overlaps them with inference or steps them in lockstep (`env_groups`).

    Args:
      game: ROM id.
      spec: the preprocessing.
      num_envs: environments in all.
      num_threads: emulator threads in all (0: one per core), split evenly
        among the groups (at least one each), so that the cores are not
        oversubscribed.
      num_groups: groups (at most `num_envs`; 0: see `env_groups`); sizes
        differ by one at most.

    Returns:
      A list of vector environments; environment i counts across them in
      order. Close each when done (`close_all`).
    """
    num_groups = max(1, min(int(num_groups) or env_groups()[0], int(num_envs)))
    sizes = [num_envs // num_groups + (k < num_envs % num_groups) for k in range(num_groups)]
    total = int(num_threads) if num_threads > 0 else (os.cpu_count() or 1)
    per_group = max(1, total // num_groups)
    envs = []
    try:
        for size in sizes:
            envs.append(make_vector_env(game, spec, size, num_threads=per_group))
    except BaseException:
        close_all(envs)
        raise
    return envs


def close_all(envs) -> None:
    """Closes one vector environment or a list of them."""
    for env in envs if isinstance(envs, (list, tuple)) else [envs]:
        env.close()


def stack_frames(frames: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
                 frame_stack: int, stride: int = 1) -> np.ndarray:
    """Rebuilds observations from single frames, never across an episode start.

    The one frame-stack rebuild of the project: datasets, the minibatch
    window and the replay memory all store one frame per agent step and
    call this.

    Args:
      frames: (M, H, W) uint8 single frames.
      rows: (B,) int, index in `frames` of each observation's newest frame.
      offsets: (B,) int, agent steps since the start of that frame's episode
        (0 at an episode's first step).
      frame_stack: frames per observation.
      stride: distance in `frames` between consecutive agent steps (a
        replay memory that interleaves S streams passes S). Indices wrap
        modulo M, so a circular memory passes its frames as they lie.

    Returns:
      (B, frame_stack, H, W) uint8: observation b holds the frames of agent
      steps rows[b]-frame_stack+1 .. rows[b], oldest first, with zeros for
      steps before its episode's start (what the environment showed).
    """
    rows = np.asarray(rows, np.int64)
    lags = np.arange(frame_stack - 1, -1, -1)
    out = frames[(rows[:, None] - lags * stride) % len(frames)]
    out[np.asarray(offsets)[:, None] < lags] = 0
    return out
