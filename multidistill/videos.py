"""Side-by-side videos: policies playing the same game from the same start.

`record_side_by_side` lets each player (a student, a teacher, ...) play one
episode of a game, every one from the same environment seed and with the
same stream of random numbers, and writes an animated GIF with one column
per player, so that where their play parts ways can be watched.

What a policy sees is exactly the evaluation protocol's observation: its
environment is `environments.make_vector_env(game, preprocessing, 1)`.
That environment only returns the preprocessed frames (84x84 grayscale), so
the picture comes from a twin `ale_py.AtariVectorEnv` with the same
settings but full-size RGB frames (210x160, one frame, no stack), reset with
the same seed and sent the same actions in lockstep. The emulator is
deterministic, so the twin plays the same game; every step checks that it
does (`_check_sync`), and a recording stops where the two ever disagree.

Conventions:
  * One frame per agent step (one agent step is `frame_skip` = 4 emulator
    frames, 1/15 s of game time at 60 Hz, so `fps=15` plays in real time).
    Frame k shows each player's screen after k agent steps (frame 0: the
    screen after the reset, no-op starts included).
  * A player whose episode is over keeps showing its last screen, its
    caption saying "episode over"; the recording ends when every episode is
    over or after `max_seconds * fps` frames.
  * Colours are the emulator's own, exactly: every frame shares one
    palette of the colours met so far (Atari screens use a few dozen), so
    the GIF stores only what changed between frames.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from multidistill import environments, files
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

SCREEN_HEIGHT, SCREEN_WIDTH = environments.ATARI_SCREEN  # Pixels.
CAPTION_HEIGHT = 28  # Strip above each screen: two lines of text, pixels.
GAP = 4  # Between two players' columns, pixels.
MAX_FPS = 50  # GIF times frames in 10 ms units; browsers slow frames under 20 ms.

# The twin shows the game the policy sees when its screen, made into an
# observation frame (`observation_frame`), matches the observation's newest
# frame. Max-pooling RGB channel by channel can only make a pixel brighter
# than max-pooling grayscale (luma has positive weights; rounding and area
# resizing keep order), so sprite flicker shows as brighter pixels only.
# Measured over 1,000 random steps in each of 10 games (84x84 frames): the
# same game had no pixel darker by more than `_PIXEL_TOLERANCE` grey levels
# and at most 14 brighter; a twin seeded otherwise had a median of 30-388
# darker pixels (over 4 in 93-100% of the steps).
_PIXEL_TOLERANCE = 16
_MAX_DARKER_PIXELS = 4
_MAX_BRIGHTER_FRACTION = 0.01

_BACKGROUND = (0, 0, 0)
_TEXT = (255, 255, 255)
_GAP_COLOUR = (64, 64, 64)

# predict: observations (B, frame_stack, H, W) uint8 -> outputs (B, A).
Predict = Callable[[np.ndarray], np.ndarray]


def record_side_by_side(
    game: str,
    players: list[tuple[str, Predict, str]],
    preprocessing: environments.Preprocessing,
    seed: int,
    epsilon: float,
    out_path: str | os.PathLike,
    max_seconds: float = 30.0,
    fps: int = 15,
) -> dict:
    """Records each player's episode of `game`, side by side, as an animated GIF.

    Every player starts from environment seed `seed` and acts with its own
    random generator seeded `[seed, 11]` (epsilon-greedy draws and logit
    sampling), so two players that choose alike play the same game frame for
    frame. The GIF is written atomically (`files.atomic_write`).

    Memory: every frame is kept until the GIF is written, about
    (width x height) bytes each (77 KB for two players; 35 MB for 30 s).

    Args:
      game: ROM id (or a spelling `games.get_game` accepts).
      players: (label, predict, kind) per column, left to right: `predict`
        maps observations (B, frame_stack, H, W) uint8 to outputs (B, A),
        `kind` is its acting rule ("q_values": argmax, "logits": sample the
        softmax; `teachers.act`). Labels must be distinct.
      preprocessing: the environment spec the players were trained with.
      seed: environment seed (the no-op starts are drawn from it) and seed
        of the players' random generators.
      epsilon: probability of a uniformly random action, in [0, 1] (the
        evaluation protocol uses 0.05).
      out_path: the GIF to write (its folder is created if needed).
      max_seconds: longest video, seconds of playback; at most
        `int(max_seconds * fps)` frames are recorded.
      fps: frames per second of playback, 1 to 50; 15 is real time. GIF
        delays come in 10 ms units, so they alternate (70, 60, 70 ms at 15
        fps) to keep the average exact.

    Returns:
      A JSON-ready dict:
        path: the GIF written (None if no frame was recorded: the twin was
          out of sync from the reset on);
        frames: frames in the GIF;
        fps, seed, game, epsilon: as used;
        size: [width, height] of a frame, pixels;
        bytes: size of the GIF file;
        seconds: wall-clock time of the recording, seconds;
        players: {label: {"kind", "return" (raw score over the steps played),
          "steps" (agent steps played), "episode_over" (the episode ended
          within the recording)}};
        desynced_at_step: None, or the agent step at which a player's twin
          environment stopped matching its protocol environment (the
          recording stops before that step's frame, so `frames` equals it);
        desync: None, or what disagreed there.

    Raises:
      ValueError: an argument is invalid (the message names it), or a
        predict function returns outputs of the wrong shape.
    """
    t0 = time.perf_counter()
    players = _check_players(players)
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], found {epsilon!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= MAX_FPS:
        raise ValueError(f"fps must be an integer from 1 to {MAX_FPS} (GIF delays are in "
                         f"10 ms units), found {fps!r}")
    if not (float(max_seconds) > 0 and math.isfinite(max_seconds)):
        raise ValueError(f"max_seconds must be a finite number > 0, found {max_seconds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, found {seed!r}")
    max_frames = int(max_seconds * fps)
    if max_frames < 1:
        raise ValueError(f"max_seconds * fps must allow at least one frame, found "
                         f"max_seconds={max_seconds!r} * fps={fps} = {max_seconds * fps:g}")
    info = games_lib.get_game(game, preprocessing.full_action_space)
    game = info.name

    runs: list[_Run] = []
    frames: list[np.ndarray] = []
    palette = _Palette()
    desync = None
    desynced_at = None
    try:
        for label, predict, kind in players:
            runs.append(_Run(label, predict, kind, info.num_actions, preprocessing))
            runs[-1].start(game)
        for k in range(max_frames):
            if k == 0:
                problems = [(r, r.reset(seed)) for r in runs]
            else:
                for r in runs:
                    r.send(epsilon)
                problems = [(r, r.receive()) for r in runs]
            problems = [(r, p) for r, p in problems if p]
            if problems:
                desynced_at = k
                desync = "; ".join(f"{r.label!r}: {p}" for r, p in problems)
                break
            frames.append(palette.index(_compose(runs)))
            if all(r.over for r in runs):
                break
    finally:
        for r in runs:
            r.close()

    width, height = _frame_size(len(players))
    path = None
    size = 0
    if frames:
        durations = _durations(len(frames), fps)
        images, transparent = palette.images(frames)
        options = {} if transparent is None else {"transparency": transparent}

        def write(tmp):
            # The palette given once: Pillow then writes one global colour
            # table instead of one per frame, and no optimisation remaps it.
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=durations, loop=0, disposal=1, optimize=False,
                           palette=images[0].getpalette(), **options)

        path = str(files.atomic_write(out_path, write))
        size = os.path.getsize(path)
    return {
        "path": path,
        "frames": len(frames),
        "fps": int(fps),
        "bytes": int(size),
        "seed": int(seed),
        "game": game,
        "epsilon": float(epsilon),
        "size": [width, height],
        "seconds": time.perf_counter() - t0,
        "players": {r.label: {"kind": r.kind, "return": float(r.score), "steps": int(r.steps),
                              "episode_over": bool(r.over)} for r in runs},
        "desynced_at_step": desynced_at,
        "desync": desync,
    }


def _check_players(players) -> list[tuple[str, Predict, str]]:
    """The players as a list, or a ValueError naming what is wrong."""
    if isinstance(players, (str, bytes)) or not hasattr(players, "__iter__"):
        raise ValueError(f"players must be a list of (label, predict, kind) tuples, "
                         f"found {type(players).__name__}")
    players = list(players)
    if not players:
        raise ValueError("players must hold at least one (label, predict, kind) tuple, "
                         "found an empty list")
    labels = []
    for i, player in enumerate(players):
        if not isinstance(player, (tuple, list)) or len(player) != 3:
            raise ValueError(f"players[{i}] must be a (label, predict, kind) tuple, "
                             f"found {player!r}")
        label, predict, kind = player
        if not isinstance(label, str) or not label:
            raise ValueError(f"players[{i}]: the label must be a non-empty string, "
                             f"found {label!r}")
        if not callable(predict):
            raise ValueError(f"players[{i}] ({label!r}): predict must be callable, "
                             f"found {type(predict).__name__}")
        if kind not in teachers_lib.KINDS:
            raise ValueError(f"players[{i}] ({label!r}): kind must be one of "
                             f"{teachers_lib.KINDS}, found {kind!r}")
        labels.append(label)
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"players: labels must be distinct, found {repeated} more than once")
    return [tuple(p) for p in players]


def make_screen_env(game: str, spec: environments.Preprocessing):
    """The twin of `environments.make_vector_env(game, spec, 1)` that shows the screen.

    Same emulator settings (no-op starts, sticky actions, frame skip and
    max-pooling, episode cap, FIRE on reset, action set), but observations
    are full-size RGB screens: shape (1, 1, 210, 160, 3) uint8 (environment,
    stack of one, height, width, channel).
    """
    return environments.make_vector_env(game, spec, 1, num_threads=1, rgb_screen=True)


def observation_frame(screen: np.ndarray, spec: environments.Preprocessing) -> np.ndarray:
    """What the protocol environment makes of an RGB screen: (H, W) uint8.

    ALE's grayscale (ITU-R 601 luma, rounded), then an area-average resize
    to the spec's frame size (`area_resize`, what ALE's OpenCV INTER_AREA
    does). Reproduces the observation's newest frame to within a grey level
    or so (max-pooling RGB differs a little from max-pooling grayscale where
    sprites flicker).

    Args:
      screen: (210, 160, 3) uint8 RGB.
      spec: the preprocessing.
    """
    luma = np.round(screen.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return area_resize(luma.astype(np.uint8), spec.frame_height, spec.frame_width)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Shrinks a grey image by averaging areas: (h, w) uint8 -> (height, width) uint8.

    Output pixel (i, j) covers the source rectangle [i*sy, (i+1)*sy) x
    [j*sx, (j+1)*sx), sy = h/height, sx = w/width, in source pixel units;
    its value is the mean of the source over that rectangle, each source
    pixel weighted by the area it shares with it (whole pixels inside, a
    fraction at the edges), rounded half to even. This is OpenCV's
    INTER_AREA for shrinking (within a grey level: OpenCV sums in float32),
    without depending on OpenCV for one resize.

    Args:
      image: (h, w) uint8, h >= height, w >= width.
      height, width: output size, pixels.

    Raises:
      ValueError: an image that is not 2-D, or an output larger than it.
    """
    image = np.asarray(image)
    if image.ndim != 2 or not (1 <= height <= image.shape[0] and 1 <= width <= image.shape[1]):
        raise ValueError(f"area_resize shrinks a 2-D image: expected (h, w) with h >= {height} "
                         f"and w >= {width}, found shape {image.shape}")
    rows = _area_weights(image.shape[0], height)
    cols = _area_weights(image.shape[1], width)
    out = rows @ image.astype(np.float64) @ cols.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _area_weights(source: int, size: int) -> np.ndarray:
    """(size, source) float64: row k is each source pixel's share of output
    pixel k, the length of [s, s+1) inside [k*scale, (k+1)*scale) over
    scale = source/size; every row sums to 1."""
    scale = source / size
    starts = np.arange(size)[:, None] * scale
    pixels = np.arange(source)[None, :]
    overlap = np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels)
    weights = np.clip(overlap, 0.0, None) / scale
    weights.flags.writeable = False  # Cached: shared by every call.
    return weights


def _check_sync(spec: environments.Preprocessing, observation: np.ndarray, screen: np.ndarray,
                protocol: tuple, twin: tuple) -> str:
    """What differs between a step (or reset) of the protocol env and of its twin.

    Args:
      spec: the preprocessing.
      observation: (stack, H, W), the protocol env's observation.
      screen: (210, 160, 3), the twin's.
      protocol, twin: (reward, terminated, truncated, info) of each env
        (rewards and flags None after a reset).

    Returns:
      "" when they agree, else what disagreed.
    """
    problems = []
    for name, a, b in zip(("reward", "terminated", "truncated"), protocol[:3], twin[:3]):
        if a is not None and a[0] != b[0]:
            problems.append(f"{name} {a[0]} vs {b[0]}")
    for key in ("lives", "episode_frame_number"):
        a, b = protocol[3].get(key), twin[3].get(key)
        if a is not None and b is not None and a[0] != b[0]:
            problems.append(f"{key} {a[0]} vs {b[0]}")
    difference = observation_frame(screen, spec).astype(np.int16) - observation[-1]
    darker = int((difference < -_PIXEL_TOLERANCE).sum())
    brighter = float((difference > _PIXEL_TOLERANCE).mean())
    if darker > _MAX_DARKER_PIXELS or brighter > _MAX_BRIGHTER_FRACTION:
        problems.append(f"picture: {darker} pixels darker and {brighter:.1%} brighter than the "
                        f"observation by more than {_PIXEL_TOLERANCE} grey levels")
    return ", ".join(problems)


class _Run:
    """One player's episode: its protocol environment, the twin, its score."""

    def __init__(self, label: str, predict: Predict, kind: str, num_actions: int,
                 spec: environments.Preprocessing):
        self.label, self.predict, self.kind = label, predict, kind
        self.num_actions, self.spec = num_actions, spec
        self.env = self.twin = None
        self.rng = None
        self.observation = self.screen = None
        self.score, self.steps, self.over = 0.0, 0, False

    def start(self, game: str) -> None:
        """Builds the protocol environment and its twin."""
        self.env = environments.make_vector_env(game, self.spec, 1, num_threads=1)
        self.twin = make_screen_env(game, self.spec)

    def reset(self, seed: int) -> str:
        """Resets both envs with `seed`; returns what disagrees ("" if nothing)."""
        self.rng = np.random.default_rng([int(seed), 11])
        seeds = np.array([int(seed)], np.int64)
        obs, info = self.env.reset(seed=seeds)
        screen, twin_info = self.twin.reset(seed=seeds)
        self.observation, self.screen = obs, screen[0, 0]
        return _check_sync(self.spec, obs[0], self.screen, (None, None, None, info),
                           (None, None, None, twin_info))

    def send(self, epsilon: float) -> None:
        """Chooses the next action and sends it to both envs (they step meanwhile)."""
        if self.over:
            return
        outputs = np.asarray(self.predict(self.observation))
        if outputs.shape != (1, self.num_actions):
            raise ValueError(f"player {self.label!r}: predict must return outputs of shape "
                             f"(1, {self.num_actions}) for one observation, found "
                             f"{outputs.shape}")
        action = teachers_lib.act(outputs, self.kind, epsilon, self.rng)
        self.env.send(action)
        self.twin.send(action)

    def receive(self) -> str:
        """Takes the step's results; returns what disagrees ("" if nothing)."""
        if self.over:
            return ""
        obs, reward, terminated, truncated, info = self.env.recv()
        screen, t_reward, t_terminated, t_truncated, t_info = self.twin.recv()
        problem = _check_sync(self.spec, obs[0], screen[0, 0],
                              (reward, terminated, truncated, info),
                              (t_reward, t_terminated, t_truncated, t_info))
        if problem:
            return problem
        self.observation, self.screen = obs, screen[0, 0]
        self.score += float(reward[0])
        self.steps += 1
        self.over = bool(terminated[0] or truncated[0])
        return ""

    def close(self) -> None:
        for env in (self.env, self.twin):
            if env is not None:
                env.close()
        self.env = self.twin = None


def _frame_size(num_players: int) -> tuple[int, int]:
    """(width, height) of a video frame, pixels."""
    return (num_players * SCREEN_WIDTH + (num_players - 1) * GAP,
            CAPTION_HEIGHT + SCREEN_HEIGHT)


def _score_text(score: float) -> str:
    return f"{score:.0f}" if float(score).is_integer() else f"{score:.1f}"


@functools.cache
def _font():
    """Pillow's default font (a small FreeType one, or its bitmap fallback)."""
    return ImageFont.load_default()


def _compose(runs: list[_Run]) -> np.ndarray:
    """One video frame, (height, width, 3) uint8: per player a caption over its screen."""
    width, height = _frame_size(len(runs))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _GAP_COLOUR
    for i, r in enumerate(runs):
        x = i * (SCREEN_WIDTH + GAP)
        canvas[:CAPTION_HEIGHT, x:x + SCREEN_WIDTH] = np.where(
            _caption(r)[..., None], np.uint8(_TEXT), np.uint8(_BACKGROUND))
        canvas[CAPTION_HEIGHT:, x:x + SCREEN_WIDTH] = r.screen
    return canvas


def _caption(run: _Run) -> np.ndarray:
    """A player's caption, (CAPTION_HEIGHT, SCREEN_WIDTH) bool, True on the text.

    Line 1: label (shortened to fit) and "step N" (agent steps played);
    line 2: "score S" and, once over, "episode over". The text is drawn
    anti-aliased, then thresholded, so a frame holds only the screens'
    colours and three more. (Pillow's own monochrome mode draws wider than
    it measures, which breaks the layout.)
    """
    image = Image.new("L", (SCREEN_WIDTH, CAPTION_HEIGHT), 0)
    draw = ImageDraw.Draw(image)
    font = _font()
    right = SCREEN_WIDTH - 3
    step = f"step {run.steps}"
    draw.text((right - draw.textlength(step, font=font), 1), step, fill=255, font=font)
    room = SCREEN_WIDTH - 10 - draw.textlength(step, font=font)
    label = run.label
    if draw.textlength(label, font=font) > room:
        while label and draw.textlength(label + "..", font=font) > room:
            label = label[:-1]
        label += ".."
    draw.text((2, 1), label, fill=255, font=font)
    draw.text((2, 14), f"score {_score_text(run.score)}", fill=255, font=font)
    if run.over:
        note = "episode over"
        draw.text((right - draw.textlength(note, font=font), 14), note, fill=255, font=font)
    return np.asarray(image) >= 128


class _Palette:
    """One palette shared by every frame: the exact colours met so far (up to 256).

    Frames become index arrays as they are recorded; colours only ever get
    appended, so the palette at the end fits every frame. Past 256 colours
    (never seen with Atari screens), a new colour takes the nearest one's
    index.
    """

    def __init__(self):
        self.colours: list[tuple[int, int, int]] = []
        self._codes = np.zeros(0, np.uint32)  # Known colours as 0xRRGGBB, sorted,
        self._indices = np.zeros(0, np.uint8)  # and their palette indices.

    def index(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 palette indices."""
        codes = ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
                 | rgb[..., 2])
        at = np.minimum(np.searchsorted(self._codes, codes), max(len(self._codes) - 1, 0))
        if len(self._codes) == 0 or (self._codes[at] != codes).any():
            known = self._codes[at] == codes if len(self._codes) else np.zeros(codes.shape, bool)
            self._learn(np.unique(codes[~known]))
            at = np.searchsorted(self._codes, codes)
        return self._indices[at]

    def _learn(self, new_codes: np.ndarray) -> None:
        """Gives each new colour an index (the nearest colour's once 256 are taken)."""
        indices = []
        for code in new_codes.tolist():
            colour = (code >> 16, (code >> 8) & 255, code & 255)
            if len(self.colours) < 256:
                indices.append(len(self.colours))
                self.colours.append(colour)
            else:
                known = np.array(self.colours, np.int32)
                indices.append(int(np.argmin(((known - colour) ** 2).sum(axis=1))))
        codes = np.concatenate([self._codes, new_codes.astype(np.uint32)])
        order = np.argsort(codes)
        self._codes = codes[order]
        self._indices = np.concatenate([self._indices, np.array(indices, np.uint8)])[order]

    def images(self, frames: list[np.ndarray]) -> tuple[list[Image.Image], int | None]:
        """Palette ("P") images of index frames, all with the whole palette.

        Past the first, a frame's pixels that did not change hold a spare
        index, declared transparent, so that the GIF keeps showing the
        previous frame there and its compression gets long runs of one index.

        Returns:
          The images, and the transparent index (None when the palette is
          full and frames are stored whole).
        """
        colours = list(self.colours)
        transparent = None
        if len(colours) < 256:
            transparent = len(colours)
            spare = 0  # A colour of its own (the palette must not repeat one).
            while (spare >> 16, (spare >> 8) & 255, spare & 255) in colours:
                spare += 1
            colours.append((spare >> 16, (spare >> 8) & 255, spare & 255))
        flat = [c for colour in colours for c in colour]
        images = []
        for k, indices in enumerate(frames):
            if transparent is not None and k > 0:
                indices = np.where(indices == frames[k - 1], np.uint8(transparent), indices)
            height, width = indices.shape
            image = Image.frombytes("P", (width, height), np.ascontiguousarray(indices).tobytes())
            image.putpalette(flat)
            images.append(image)
        return images, transparent


def _durations(num_frames: int, fps: int) -> list[int]:
    """Per-frame delays in ms, multiples of 10 (GIF's unit), averaging 1000 / fps.

    Frame k ends at round(1000 (k + 1) / fps) rounded to 10 ms, so the delays
    alternate (70, 60, 70 at 15 fps) and no drift builds up.
    """
    ends = [int(round((k + 1) * 100 / fps)) * 10 for k in range(num_frames)]
    return [b - a for a, b in zip([0] + ends[:-1], ends)]
