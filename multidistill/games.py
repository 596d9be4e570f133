"""The game registry: names, ROMs, action sets and reference scores.

A game is named by its ALE ROM id in snake_case (`pong`, `qbert`, `freeway`,
`ms_pacman`, ...); a few common spellings (`Q*bert`, `MsPacman`) are accepted
as aliases. Actions are always the game's *minimal* action set unless the
preprocessing spec asks for the full 18-action set, so that action index `i`
means the same thing to the environment, the teacher, the dataset and the
student head of that game. `Game.ale_action_indices` places each of those
actions in ALE's full action set (the masked 18-way student of Actor-Mimic
outputs all 18 and keeps each game's own).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Sequence

# Random-agent and professional-human scores on Atari-57 (undiscounted
# episode returns, up to 30 no-op starts, episodes capped at 108,000 frames),
# as published with DQN (Mnih et al. 2015) and Double DQN (van Hasselt et al.
# 2016). Used for human-normalised scores: (score - random) / (human - random).
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "asteroids": (719.1, 47388.7),
    "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4),
    "bowling": (23.1, 160.7),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "centipede": (2090.9, 12017.0),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "defender": (2874.5, 18688.9),
    "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4),
    "enduro": (0.0, 860.5),
    "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4),
    "hero": (1027.0, 30826.4),
    "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "montezuma_revenge": (0.0, 4753.3),
    "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0),
    "phoenix": (761.4, 7242.6),
    "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0),
    "road_runner": (11.5, 7845.0),
    "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7),
    "skiing": (-17098.1, -4336.9),
    "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7),
    "star_gunner": (664.0, 10250.0),
    "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3),
    "time_pilot": (3568.0, 5229.2),
    "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2),
    "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5),
    "yars_revenge": (3092.9, 54576.9),
    "zaxxon": (32.5, 9173.3),
}

# Size of ALE's full action set (`ale_py.Action`: NOOP, FIRE, UP, ... DOWNLEFTFIRE).
NUM_ALE_ACTIONS = 18

# ALE's ROM id for montezuma_revenge is `montezuma_revenge`; ids elsewhere
# differ from the published names only in case and punctuation.
_ALIASES = {"q*bert": "qbert", "montezumas_revenge": "montezuma_revenge"}


@dataclasses.dataclass(frozen=True)
class Game:
    """One Atari game as the whole pipeline sees it.

    Attributes:
      name: the ALE ROM id, snake_case (`pong`).
      num_actions: size of the action set used (minimal unless
        `full_action_space`).
      action_meanings: ALE names of those actions, in index order.
      rom_md5: checksum of the ROM file shipped in the ale-py wheel.
      ale_action_indices: where those actions sit in ALE's full action set
        (`ale_py.Action` values, 0 to NUM_ALE_ACTIONS - 1), in index order:
        Pong's NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE are 0, 1, 3, 4,
        11, 12.
    """

    name: str
    num_actions: int
    action_meanings: tuple[str, ...]
    rom_md5: str
    ale_action_indices: tuple[int, ...]

    @property
    def random_score(self) -> float | None:
        return REFERENCE_SCORES.get(self.name, (None, None))[0]

    @property
    def human_score(self) -> float | None:
        return REFERENCE_SCORES.get(self.name, (None, None))[1]

    def human_normalized(self, score: float) -> float | None:
        """(score - random) / (human - random), or None without reference."""
        if self.name not in REFERENCE_SCORES:
            return None
        random, human = REFERENCE_SCORES[self.name]
        return (score - random) / (human - random)


def _canonical(name: str) -> str:
    lowered = name.strip().lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    # CamelCase ("MsPacman") -> snake_case ("ms_pacman").
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip()).lower()
    snake = snake.replace("-", "_").replace(" ", "_")
    return _ALIASES.get(snake, snake)


@functools.cache
def available_games() -> tuple[str, ...]:
    """Every ROM id that the installed ale-py can play, sorted."""
    from ale_py import roms

    return tuple(sorted(roms.get_all_rom_ids()))


@functools.cache
def get_game(name: str, full_action_space: bool = False) -> Game:
    """Looks a game up by name.

    Args:
      name: a ROM id (`pong`) or a common spelling of it (`Pong`, `Q*bert`).
      full_action_space: use all 18 actions instead of the minimal set.

    Returns:
      The game.

    Raises:
      ValueError: the name matches no ROM of the installed ale-py; the message
        lists the valid names.
    """
    import ale_py
    from ale_py import roms

    rom_id = _canonical(name)
    if rom_id not in available_games():
        raise ValueError(
            f"unknown game {name!r}: expected one of the ALE ROM ids "
            f"{', '.join(available_games())}"
        )
    rom_path = roms.get_rom_path(rom_id)
    with open(rom_path, "rb") as f:
        rom_md5 = hashlib.md5(f.read()).hexdigest()
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(str(rom_path))
    actions = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return Game(
        name=rom_id,
        num_actions=len(actions),
        action_meanings=tuple(a.name for a in actions),
        rom_md5=rom_md5,
        ale_action_indices=tuple(int(a.value) for a in actions),
    )


def parse_games(spec: str | Sequence[str], flag: str = "--games") -> list[str]:
    """Parses a comma-separated list of game names into ROM ids.

    Args:
      spec: "pong,qbert,freeway" or a sequence of names.
      flag: the flag the list came from, named in error messages.

    Returns:
      The ROM ids, in the order given.

    Raises:
      ValueError: the list is empty, names an unknown game, or names a game
        twice.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(
            f"{flag} is empty: expected a comma-separated list of games, "
            f"e.g. {flag}=pong,qbert,freeway"
        )
    games = []
    for n in names:
        try:
            rom_id = get_game(n).name
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
        if rom_id in games:
            raise ValueError(
                f"{flag} names the game {rom_id!r} twice (found {spec!r}): "
                "expected each game once"
            )
        games.append(rom_id)
    return games
