"""Rooms visited on games whose room number ALE's RAM holds (Montezuma, Venture, Pitfall!).

Exploration on these games is measured by the rooms an agent reaches as
much as by its score (Burda et al. 2018 report both). ALE's vector
environment (`environments.make_vector_env`, which trains and evaluates)
returns no RAM, so the rooms are read in a probe: at every evaluation of a
run, the teacher being trained plays `episodes` more episodes under the
evaluation protocol (its softmax sampled, a random action with probability
epsilon) in `RamAtari`, emulators stepped in Python whose RAM is read after
every agent step; `RoomProbe` logs the rooms per episode and the rooms found
so far in the run (TensorBoard tags `rooms/*`).

`RamAtari` rebuilds the preprocessing of ALE's vector environment (frame
skip, max over the last two frames, grayscale, an area resize to 84 x 84,
the frame stack with zeros before an episode's first frame, no-op starts,
FIRE at reset, the episode frame cap, sticky actions): on the same
actions its observations, rewards, ends and lives equal the vector
environment's (tests/test_rnd.py), but for the last observation of an
episode cut by the frame cap, which no policy acts on. It resizes with
OpenCV as ALE does when OpenCV is installed (the `bench` extra), else with
a numpy area resize (within one grey level of OpenCV's on a few pixels in
a million). Its no-op starts and sticky actions draw from their own random
streams, so the probe's episodes are not the evaluation's.

Room numbers: Montezuma's Revenge RAM address 3 (OpenAI's RND code,
`MontezumaInfoWrapper`; AtariARI's annotations, Anand et al. 2019; 1 at
the start), Venture 90 (AtariARI: rooms 0 to 9; 8, the hallway, at the
start), Pitfall! 1 (OpenAI's RND code).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from multidistill import acting, environments, evaluation, files, summaries

# Game -> RAM address of the current room.
ROOM_RAM_ADDRESS: dict[str, int] = {"montezuma_revenge": 3, "venture": 90, "pitfall": 1}


def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32: the share of source pixel s in destination pixel d
    of an area (box) resize, as OpenCV's INTER_AREA downscales."""
    scale = src / dst
    w = np.zeros((dst, src), np.float64)
    for d in range(dst):
        lo, hi = d * scale, (d + 1) * scale
        for s in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
            w[d, s] = (min(hi, s + 1) - max(lo, s)) / scale
    return w.astype(np.float32)


class RamAtari:
    """`num_envs` copies of a game in Python with readable RAM, stepped like
    `ale_py.AtariVectorEnv` in NextStep autoreset mode (`reset(seed)`,
    `send(actions)`, `recv()`), so that `acting.play` drives it.

    Args:
      game: ROM id.
      spec: the preprocessing (that of the teacher).
      num_envs: emulators.
      room_address: RAM address of the room number.

    Attributes:
      rooms: (num_envs,) the room of each emulator after the last `recv`
        (or `reset`).
    """

    def __init__(self, game: str, spec: environments.Preprocessing, num_envs: int,
                 room_address: int):
        import ale_py
        from ale_py import roms

        from multidistill import games as games_lib

        games_lib.get_game(game)  # A clear error for unknown names.
        self.spec = spec
        self.num_envs = int(num_envs)
        self.room_address = int(room_address)
        self.rom_path = str(roms.get_rom_path(game))
        self.ales = []
        for _ in range(self.num_envs):
            ale = ale_py.ALEInterface()
            ale.setLoggerMode(ale_py.LoggerMode.Error)
            ale.setFloat("repeat_action_probability", float(spec.sticky_action_prob))
            ale.loadROM(self.rom_path)
            self.ales.append(ale)
        actions = (self.ales[0].getLegalActionSet() if spec.full_action_space
                   else self.ales[0].getMinimalActionSet())
        self.action_set = list(actions)
        self.fire = ale_py.Action.FIRE
        self.has_fire = spec.fire_reset and self.fire in self.action_set
        try:  # ALE resizes with OpenCV: the same frames to the bit (the bench extra).
            import cv2

            self._cv2 = cv2
        except ImportError:
            self._cv2 = None
        self.wy = _area_weights(environments.ATARI_SCREEN[0], spec.frame_height)
        self.wx = _area_weights(environments.ATARI_SCREEN[1], spec.frame_width)
        self.stacks = np.zeros((self.num_envs,) + spec.observation_shape, np.uint8)
        self.raw = np.zeros((self.num_envs, 2) + environments.ATARI_SCREEN, np.uint8)
        self.after_end = np.zeros(self.num_envs, bool)
        self.elapsed = np.zeros(self.num_envs, np.int64)  # Agent steps of each episode.
        self.rooms = np.zeros(self.num_envs, np.int64)
        self.rngs = [np.random.default_rng(i) for i in range(self.num_envs)]
        self.pending = None

    def _frame(self, i: int) -> np.ndarray:
        """Emulator i's last two screens, max-pooled (if asked) then resized.

        As ALE's vector environment does: the pooled screen replaces the
        older one, and a step whose episode ends before its last two frames
        pools what the buffers hold (older screens)."""
        raw = self.raw[i]
        if self.spec.max_pool:
            np.maximum(raw[0], raw[1], out=raw[0])
        g = raw[0]
        if self._cv2 is not None:
            return self._cv2.resize(g, (self.spec.frame_width, self.spec.frame_height),
                                    interpolation=self._cv2.INTER_AREA)
        return np.rint(self.wy @ (g.astype(np.float32) @ self.wx.T)).astype(np.uint8)

    def _reset_one(self, i: int) -> None:
        import ale_py

        ale = self.ales[i]
        ale.reset_game()
        noops = int(self.rngs[i].integers(0, self.spec.noop_max + 1)) if self.spec.noop_max else 0
        for _ in range(noops):
            ale.act(ale_py.Action.NOOP)
            if ale.game_over():
                ale.reset_game()
        if self.has_fire:
            ale.act(self.fire)
        self.raw[i][0][:] = 0
        ale.getScreenGrayscale(self.raw[i][1])
        self.stacks[i] = 0
        self.stacks[i, -1] = self._frame(i)
        self.elapsed[i] = 0
        self.rooms[i] = int(ale.getRAM()[self.room_address])

    def _step_one(self, i: int, action: int) -> tuple[float, bool, bool]:
        ale = self.ales[i]
        a = self.action_set[int(action)]
        reward, skip = 0.0, self.spec.frame_skip
        for k in range(skip):
            reward += ale.act(a)
            if k >= skip - 2:  # The last two frames, for the max-pool.
                ale.getScreenGrayscale(self.raw[i][k - (skip - 2)])
            if ale.game_over():
                break
        self.stacks[i, :-1] = self.stacks[i, 1:]
        self.stacks[i, -1] = self._frame(i)
        self.rooms[i] = int(ale.getRAM()[self.room_address])
        self.elapsed[i] += 1
        terminated = bool(ale.game_over())
        # The cap counts whole agent steps, as the vector environment's does.
        truncated = self.elapsed[i] >= self.spec.max_episode_agent_steps
        return reward, terminated, truncated and not terminated

    def _lives(self) -> np.ndarray:
        return np.array([ale.lives() for ale in self.ales], np.int64)

    def reset(self, seed: int):
        for i, ale in enumerate(self.ales):
            ale.setInt("random_seed", int(seed) + i)
            ale.loadROM(self.rom_path)  # The seed takes effect at load.
            self.rngs[i] = np.random.default_rng([int(seed) + i, 11])
            self._reset_one(i)
        self.after_end[:] = False
        return self.stacks.copy(), {"lives": self._lives()}

    def send(self, actions) -> None:
        self.pending = np.asarray(actions)

    def recv(self):
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i in range(self.num_envs):
            if self.after_end[i]:  # NextStep autoreset: this step starts a new episode.
                self._reset_one(i)
                self.after_end[i] = False
                continue
            rewards[i], terminated[i], truncated[i] = self._step_one(i, self.pending[i])
            self.after_end[i] = terminated[i] or truncated[i]
        self.pending = None
        return self.stacks.copy(), rewards, terminated, truncated, {"lives": self._lives()}

    def close(self) -> None:
        self.ales = []


def visited_rooms(game: str, predict, kind: str, spec: environments.Preprocessing,
                  episodes: int, seed: int, epsilon: float = evaluation.EvalProtocol.epsilon,
                  num_envs: int = 4) -> list[dict]:
    """Plays `episodes` episodes under the evaluation protocol in `RamAtari`.

    Args:
      game: a game of `ROOM_RAM_ADDRESS`.
      predict: observations (B, S, H, W) uint8 -> outputs (B, A).
      kind: "logits" (sampled) or "q_values" (argmax).
      spec: the preprocessing.
      episodes: how many.
      seed: emulator i is reset with seed + i; the policy's random stream too.
      epsilon: probability of a uniformly random action.
      num_envs: emulators stepped together (one batched network call).

    Returns:
      Per episode, {"return": raw return, "length": agent steps, "rooms":
      sorted distinct rooms}.
    """
    if game not in ROOM_RAM_ADDRESS:
        raise ValueError(f"no room address for {game!r}: known for {sorted(ROOM_RAM_ADDRESS)}")
    n = max(1, min(int(num_envs), int(episodes)))
    quota = np.full(n, episodes // n)
    quota[: episodes % n] += 1
    env = RamAtari(game, spec, n, ROOM_RAM_ADDRESS[game])
    policy = evaluation.network_policy(predict, kind, epsilon, np.random.default_rng([seed, 7]))
    tracker = acting.EpisodeTracker(n)
    current = [set() for _ in range(n)]
    done = np.zeros(n, int)
    active = quota > 0
    out: list[dict] = []
    try:
        for step in acting.play(env, policy, seed, active=active, overlap=False):
            for i in np.flatnonzero(active):
                current[i].add(int(env.rooms[i]))  # The room after this step.
            for i, ret, length in tracker.update(step):
                if done[i] < quota[i]:
                    out.append({"return": ret, "length": length, "rooms": sorted(current[i])})
                    done[i] += 1
                    active[i] = done[i] < quota[i]
                # The next step resets: its room opens the next episode.
                current[i] = set()
            if (done >= quota).all():
                break
    finally:
        env.close()
    return out


class RoomProbe:
    """A runner companion (`agents.runner.Companion`): at each evaluation of
    the run, the rooms the teacher visits in `episodes` episodes of
    `visited_rooms`; the rooms found so far are kept in
    `<folder>/rooms.json` (saved and restored with the agent).

    Tags, at the run's emulator frames: `rooms/mean_per_episode`,
    `rooms/max_per_episode`, `rooms/found` (distinct rooms of every probe so
    far), `rooms/mean_return` (the probe's episodes).
    """

    def __init__(self, game: str, spec: environments.Preprocessing, episodes: int,
                 folder: str | os.PathLike, seed: int = 0, kind: str = "logits"):
        if game not in ROOM_RAM_ADDRESS:
            raise ValueError(f"no room address for {game!r}: known for "
                             f"{sorted(ROOM_RAM_ADDRESS)}")
        if episodes < 1:
            raise ValueError(f"RoomProbe needs episodes >= 1, found {episodes}")
        self.game, self.spec, self.episodes, self.kind = game, spec, int(episodes), kind
        self.path = Path(folder) / "rooms.json"
        self.seed = int(seed)
        self.found: set[int] = set()
        self.probes: list[dict] = []
        self._agent = None

    def restore(self) -> list:
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            self.found = set(saved["found"])
            self.probes = list(saved["probes"])
        return self.probes

    def save(self) -> None:
        files.atomic_write_text(self.path, json.dumps(
            {"game": self.game, "found": sorted(self.found), "probes": self.probes}, indent=1))

    def on_record(self, agent, record, writer: summaries.ScalarWriter | None = None) -> None:
        self._agent = agent  # The probe plays it at the next evaluation.

    def on_evaluation(self, frames: int, scores, protocol, wall_clock_s: float,
                      writer: summaries.ScalarWriter | None = None) -> str:
        if self._agent is None:
            return ""
        from multidistill.agents import base

        model = base.policy_network(self._agent.teacher_model)
        episodes = visited_rooms(self.game, evaluation.predict_fn(model), self.kind, self.spec,
                                 self.episodes, seed=self.seed + 2_000_000 + frames,
                                 epsilon=protocol.epsilon)
        per_episode = [len(e["rooms"]) for e in episodes]
        for e in episodes:
            self.found.update(e["rooms"])
        probe = {"frames": int(frames), "episodes": episodes}
        self.probes.append(probe)
        values = {"rooms/mean_per_episode": float(np.mean(per_episode)),
                  "rooms/max_per_episode": float(np.max(per_episode)),
                  "rooms/found": float(len(self.found)),
                  "rooms/mean_return": float(np.mean([e["return"] for e in episodes]))}
        if writer is not None:
            writer.scalars(frames, values)
        return f"rooms {max(per_episode)} in an episode, {len(self.found)} found"
