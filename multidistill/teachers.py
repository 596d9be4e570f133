"""Teachers: a Keras file `<dir>/<game>.keras` plus a JSON card `<dir>/<game>.json`.

The card says what the network is and how far to trust it:

    {
      "format": "multidistill-teacher/1",
      "game": "pong",
      "kind": "q_values" | "logits",
      "num_actions": 6,
      "preprocessing": {...},          # environments.Preprocessing fields
      "feature_layer": "features",     # last hidden layer, for feature regression
      "value": "output" | "max_q" | "none",   # where the teacher's state value comes from
      "evaluation": {"mean": .., "std": .., "episodes": .., "protocol": {..}},
      "training": {"algorithm": .., "num_env_frames": .., "wall_clock_s": ..,
                   "hardware": .., "command": ..}
    }

A teacher network has one output, the Q-values or logits of every action,
or two: those and its state value V(s), shape (B, 1) (an actor-critic
teacher exported with its critic, so that training can resume from it and
distillation rules that need a value get one). A Q-value teacher's value is
max_a Q(s, a).

How a teacher acts (the same rule in dataset building and evaluation): a
`q_values` teacher takes argmax_a q(a); a `logits` teacher samples from
softmax(logits); on top of either, a uniformly random action with
probability epsilon.

Loading uses Keras safe mode: a file that would run arbitrary code (a Lambda
layer, say) is refused unless the caller allows it explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from multidistill import environments, files
from multidistill import games as games_lib

CARD_FORMAT = "multidistill-teacher/1"
KINDS = ("q_values", "logits")


def default_teachers_dir(package_dir: str | os.PathLike | None = None) -> Path:
    """Where the shipped teachers are: the checkout's `teachers/` or the packaged copy.

    In a source checkout (an editable install, or `python train.py` run
    from it) the package sits beside `pyproject.toml` and `teachers/`, and
    that folder is the one: teachers trained or committed there are used at
    once. An installed wheel has no checkout around it; there the teachers
    are the copy packaged as `multidistill/_teachers` (pyproject.toml maps
    the checkout's `teachers/` to it).

    Args:
      package_dir: the `multidistill` package folder (tests only; default:
        this module's).
    """
    package = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "teachers").is_dir():
        return root / "teachers"
    return package / "_teachers"  # Package data: a wheel is installed unpacked.


def default_output_dir(package_dir: str | os.PathLike | None = None) -> Path:
    """Where a newly trained teacher goes by default: the checkout's
    `teachers/` (the main job uses it at once), or `./teachers` when the
    package is installed (never into the installed package)."""
    shipped = default_teachers_dir(package_dir)
    return Path("teachers") if shipped.name == "_teachers" else shipped


DEFAULT_TEACHERS_DIR = default_teachers_dir()


class TeacherError(ValueError):
    """A teacher file or card is missing or does not fit the game."""


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_paths(game: str, teachers_dir: str | os.PathLike) -> tuple[Path, Path]:
    d = Path(teachers_dir)
    return d / f"{game}.keras", d / f"{game}.json"


def _how_to_supply(game: str, teachers_dir: Path) -> str:
    return (
        f"train one with `python -m multidistill.train_teacher --game={game}`, "
        f"or put your own network at {teachers_dir / (game + '.keras')} with a card "
        f"{teachers_dir / (game + '.json')} (see README, 'Bring your own teacher')"
    )


def act(outputs: np.ndarray, kind: str, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Chooses one action per row of `outputs` by the teacher's acting rule.

    Args:
      outputs: (B, A) Q-values or logits.
      kind: "q_values" (argmax) or "logits" (sample from the softmax).
      epsilon: probability of a uniformly random action instead.
      rng: source of randomness.

    Returns:
      (B,) int32 actions.
    """
    b, a = outputs.shape
    if kind == "q_values":
        actions = np.argmax(outputs, axis=1)
    elif kind == "logits":
        z = outputs - outputs.max(axis=1, keepdims=True)
        p = np.exp(z)
        cdf = np.cumsum(p, axis=1)
        u = rng.random(b)[:, None] * cdf[:, -1:]
        actions = np.minimum((cdf < u).sum(axis=1), a - 1)
    else:
        raise ValueError(f"unknown teacher kind {kind!r}: expected one of {KINDS}")
    if epsilon > 0:
        explore = rng.random(b) < epsilon
        actions = np.where(explore, rng.integers(0, a, size=b), actions)
    return actions.astype(np.int32)


def act_from_uniforms(outputs: np.ndarray, kind: str, epsilon: float,
                      uniforms: np.ndarray) -> np.ndarray:
    """`act`'s rule with the randomness given: three uniforms in [0, 1) per row.

    Column 0 samples a "logits" teacher's softmax (inverse CDF), column 1
    decides exploration (< `epsilon`), column 2 picks the random action
    (floor(u A)). Every row uses its three numbers whatever the rule, so a
    row's actions depend on its own stream only: the evaluation draws them
    from one generator per environment, and any split of the environments
    over workers plays the same episodes.

    Args:
      outputs: (B, A) Q-values or logits.
      kind: "q_values" (argmax) or "logits" (sample from the softmax).
      epsilon: probability of a uniformly random action instead.
      uniforms: (B, 3) floats in [0, 1).

    Returns:
      (B,) int32 actions.
    """
    b, a = outputs.shape
    u = np.asarray(uniforms, np.float64)
    if u.shape != (b, 3):
        raise ValueError(f"uniforms must have shape ({b}, 3), found {u.shape}")
    if kind == "q_values":
        actions = np.argmax(outputs, axis=1)
    elif kind == "logits":
        z = outputs - outputs.max(axis=1, keepdims=True)
        cdf = np.cumsum(np.exp(z), axis=1)
        actions = np.minimum((cdf < u[:, :1] * cdf[:, -1:]).sum(axis=1), a - 1)
    else:
        raise ValueError(f"unknown teacher kind {kind!r}: expected one of {KINDS}")
    explore = u[:, 1] < epsilon
    random_actions = np.minimum((u[:, 2] * a).astype(np.int64), a - 1)
    return np.where(explore, random_actions, actions).astype(np.int32)


def policy_probabilities(outputs: np.ndarray, kind: str, epsilon: float) -> np.ndarray:
    """The distribution `act` draws from: mu = (1 - epsilon) pi + epsilon / A.

    pi is one-hot on argmax_a q for a "q_values" teacher (ties: the first,
    as `np.argmax`) and softmax(z) for a "logits" teacher.

    Args:
      outputs: (B, A) Q-values or logits.
      kind: "q_values" or "logits".
      epsilon: probability of a uniformly random action.

    Returns:
      (B, A) float64 probabilities.
    """
    outputs = np.asarray(outputs, np.float64)
    b, a = outputs.shape
    if kind == "q_values":
        pi = np.zeros_like(outputs)
        pi[np.arange(b), np.argmax(outputs, axis=1)] = 1.0
    elif kind == "logits":
        z = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        pi = z / z.sum(axis=1, keepdims=True)
    else:
        raise ValueError(f"unknown teacher kind {kind!r}: expected one of {KINDS}")
    return (1.0 - epsilon) * pi + epsilon / a


def action_log_probs(outputs: np.ndarray, kind: str, epsilon: float,
                     actions: np.ndarray) -> np.ndarray:
    """log mu(a|s) of `actions` under `policy_probabilities`, (B,) float32."""
    mu = policy_probabilities(outputs, kind, epsilon)
    with np.errstate(divide="ignore"):
        return np.log(mu[np.arange(len(mu)), np.asarray(actions, np.int64)]).astype(np.float32)


@dataclasses.dataclass
class Teacher:
    """A loaded teacher, ready to label observations.

    Attributes:
      game: ROM id.
      kind: "q_values" or "logits".
      model: the Keras model as stored (frames -> outputs).
      card: the card's contents.
      path: the `.keras` file.
      sha256: checksum of the `.keras` file.
    """

    game: str
    kind: str
    model: Any
    card: dict
    path: Path
    sha256: str
    _labeller: Any = None

    @property
    def num_actions(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    @property
    def feature_dim(self) -> int:
        return int(self.labeller.outputs[1].shape[-1])

    @property
    def value_source(self) -> str:
        """Where `label` takes the state value from: "output" (the network's
        value head), "max_q" (a Q-value teacher) or "none" (NaN)."""
        return value_source(self.model, self.kind)

    @property
    def policy_model(self):
        """frames -> outputs (Q-values or logits) only, sharing weights."""
        if len(self.model.outputs) == 1:
            return self.model
        import keras

        return keras.Model(self.model.inputs, self.model.outputs[0],
                           name=f"{self.model.name}_policy")

    @property
    def preprocessing(self) -> environments.Preprocessing:
        return environments.Preprocessing.from_dict(self.card["preprocessing"])

    @property
    def labeller(self):
        """A model frames -> [outputs, last hidden layer(, value)], sharing weights."""
        if self._labeller is None:
            import keras

            name = self.card.get("feature_layer", "features")
            try:
                feats = self.model.get_layer(name).output
            except ValueError:
                feats = self.model.layers[-1].input
            self._labeller = keras.Model(self.model.inputs,
                                         [self.model.outputs[0], feats]
                                         + list(self.model.outputs[1:2]))
        return self._labeller

    def label(self, observations: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's labels of a batch of observations.

        Returns:
          {"outputs": (B, A), "features": (B, F), "values": (B,)}, float32;
          values are NaN for a logits teacher without a value output.
        """
        out = self.labeller.predict_on_batch(observations)
        outputs = np.asarray(out[0], np.float32)
        source = self.value_source
        if source == "output":
            values = np.asarray(out[2], np.float32).reshape(-1)
        elif source == "max_q":
            values = outputs.max(axis=1)
        else:
            values = np.full(len(outputs), np.nan, np.float32)
        return {"outputs": outputs, "features": np.asarray(out[1], np.float32),
                "values": values}

    def act(self, outputs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        return act(outputs, self.kind, epsilon, rng)


def value_source(model, kind: str) -> str:
    """Where a teacher network's state value comes from (see `Teacher.value_source`)."""
    if len(model.outputs) == 2:
        return "output"
    return "max_q" if kind == "q_values" else "none"


def write_card(path: str | os.PathLike, card: dict) -> None:
    """Writes a card atomically (see `files.atomic_write`)."""
    files.atomic_write_text(path, json.dumps(card, indent=2, sort_keys=True) + "\n")


def save_teacher(
    model,
    game: str,
    kind: str,
    preprocessing: environments.Preprocessing,
    teachers_dir: str | os.PathLike,
    evaluation: dict | None = None,
    training: dict | None = None,
) -> tuple[Path, Path]:
    """Saves `model` as `<dir>/<game>.keras` with its card, atomically.

    `model` maps frames to the outputs of every action, or to those and a
    state value (B, 1) (an actor-critic teacher with its critic); the card
    records which (`value`).

    Returns:
      The paths of the Keras file and of the card.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, found {kind!r}")
    model_path, card_path = teacher_paths(game, teachers_dir)
    _check_outputs(model, model_path)
    files.atomic_write(model_path, model.save)
    card = {
        "format": CARD_FORMAT,
        "game": game,
        "kind": kind,
        "num_actions": int(model.outputs[0].shape[-1]),
        "preprocessing": preprocessing.to_dict(),
        "feature_layer": "features",
        "value": value_source(model, kind),
        "keras_sha256": sha256_of(model_path),
        "evaluation": evaluation or {},
        "training": training or {},
    }
    write_card(card_path, card)
    return model_path, card_path


def _check_outputs(model, model_path) -> None:
    outputs = model.outputs
    if len(outputs) == 2 and tuple(outputs[1].shape[1:]) == (1,):
        return
    if len(outputs) != 1:
        raise TeacherError(
            f"teacher {model_path} has {len(outputs)} outputs of shapes "
            f"{[tuple(o.shape[1:]) for o in outputs]}, expected one (the Q-values or "
            "logits of every action) or two (those and a state value of shape (1,))")


def read_card(card_path: Path, game: str, teachers_dir: Path) -> dict:
    if not card_path.exists():
        raise TeacherError(
            f"teacher card {card_path} is missing (the Keras file is there): "
            f"expected a JSON card beside it; {_how_to_supply(game, teachers_dir)}"
        )
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherError(f"teacher card {card_path} is not valid JSON: {e}") from None
    if not isinstance(card, dict):
        raise TeacherError(f"teacher card {card_path}: expected a JSON object")
    missing = [k for k in ("game", "kind", "preprocessing") if k not in card]
    if missing:
        raise TeacherError(f"teacher card {card_path}: missing fields {missing}")
    if card["kind"] not in KINDS:
        raise TeacherError(
            f"teacher card {card_path}: kind must be one of {list(KINDS)}, "
            f"found {card['kind']!r}"
        )
    if games_lib.get_game(card["game"]).name != game:
        raise TeacherError(
            f"teacher card {card_path} is for game {card['game']!r}, expected {game!r}"
        )
    return card


def load_teacher(
    game: str,
    teachers_dir: str | os.PathLike = DEFAULT_TEACHERS_DIR,
    preprocessing: environments.Preprocessing | None = None,
    allow_unsafe: bool = False,
) -> Teacher:
    """Loads and checks the teacher of `game`.

    Args:
      game: ROM id.
      teachers_dir: folder holding `<game>.keras` and `<game>.json`.
      preprocessing: if given, the teacher's card must state this spec.
      allow_unsafe: let Keras deserialise code (Lambda layers); only for
        files you trust.

    Returns:
      The teacher.

    Raises:
      TeacherError: file or card missing or unreadable, not a Keras model,
        needs unsafe deserialisation, or its action count, input shape or
        preprocessing does not match the game.
    """
    import keras

    teachers_dir = Path(teachers_dir)
    game_info = games_lib.get_game(game)
    model_path, card_path = teacher_paths(game, teachers_dir)
    if not model_path.exists():
        raise TeacherError(
            f"no teacher for {game!r}: looked for {model_path}; "
            f"{_how_to_supply(game, teachers_dir)}"
        )
    card = read_card(card_path, game, teachers_dir)
    try:
        spec = environments.Preprocessing.from_dict(card["preprocessing"], str(card_path))
    except (TypeError, ValueError) as e:
        raise TeacherError(f"teacher card {card_path}: {e}") from None
    try:
        model = keras.saving.load_model(model_path, safe_mode=not allow_unsafe, compile=False)
    except Exception as e:  # Keras raises many types for a bad file.
        text = str(e)
        if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
            raise TeacherError(
                f"teacher {model_path} needs unsafe deserialisation (it holds code, "
                f"e.g. a Lambda layer): refused; pass --allow_unsafe_teacher only "
                f"if you trust the file"
            ) from None
        raise TeacherError(
            f"teacher {model_path} is not a loadable Keras model: {type(e).__name__}: "
            f"{text.splitlines()[0] if text else ''}"
        ) from None
    _check_outputs(model, model_path)
    expected_obs = spec.observation_shape
    found_obs = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or found_obs != expected_obs:
        raise TeacherError(
            f"teacher {model_path} takes inputs of shape {found_obs}, expected one "
            f"input of shape {expected_obs} (frame_stack, height, width) uint8"
        )
    found_actions = int(model.outputs[0].shape[-1])
    if found_actions != game_info.num_actions or card.get("num_actions", found_actions) != (
        found_actions
    ):
        raise TeacherError(
            f"teacher {model_path} has {found_actions} outputs (card says "
            f"{card.get('num_actions')}), expected {game_info.num_actions}: the "
            f"minimal action set of {game} ({', '.join(game_info.action_meanings)})"
        )
    if preprocessing is not None and spec != preprocessing:
        raise TeacherError(
            f"teacher {model_path} was trained with another preprocessing than asked "
            f"for: {'; '.join(spec.differences(preprocessing))}"
        )
    return Teacher(
        game=game,
        kind=card["kind"],
        model=model,
        card=card,
        path=model_path,
        sha256=sha256_of(model_path),
    )


# -- the teachers table (teachers/README.md) ----------------------------------

# Scores a shipped teacher is to reach under the evaluation protocol (over at
# least 30 episodes): (needed, goal); Nature DQN's 18.9 / 30.3 / 10,596 are
# the references.
SCORE_BARS = {"pong": (18.5, 20.0), "freeway": (30.0, 32.0), "qbert": (10_000.0, 15_000.0)}
TABLE_START = "<!-- teachers table: python -m multidistill.train_teacher --mode=table -->"
TABLE_END = "<!-- end of teachers table -->"


def _trainer_name(training: dict) -> str:
    algo, config = training.get("algorithm"), training.get("config") or {}
    if algo == "dqn":
        name = f"Double DQN ({config.get('n_step', 3)}-step"
        name += ", epsilon-z-greedy)" if config.get("ez_mu") else ")"
    elif algo == "ppo":
        name = "PPO"
    else:
        name = str(algo or "unknown")
    return name + ", Nature network"


def cards_table(teachers_dir: str | os.PathLike) -> str:
    """The Markdown table of the teachers in `teachers_dir`, from their cards.

    One row per `<game>.json` card: kind, trainer, frames trained, the score
    with its 95 % interval and episodes, and the bars of `SCORE_BARS`.
    """
    teachers_dir = Path(teachers_dir)
    rows = ["| game | kind | trainer | frames trained | score [95 % interval] (episodes) "
            "| needed | goal |", "|---|---|---|---|---|---|---|"]
    cards = sorted(teachers_dir.glob("*.json"))
    if not cards:
        raise ValueError(f"no teacher cards (<game>.json) in {teachers_dir}")
    for path in cards:
        try:
            card = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"teacher card {path} is not valid JSON ({e})") from None
        if card.get("format") != CARD_FORMAT:
            continue  # Not a card (another JSON file in the folder).
        game = card.get("game", path.stem)
        ev, training = card.get("evaluation") or {}, card.get("training") or {}
        if "mean" in ev:
            ci = ev.get("ci")
            score = f"**{ev['mean']:,.1f}" + (f" [{ci[0]:,.1f}, {ci[1]:,.1f}]" if ci else "")
            score += f"** ({ev.get('episodes', '?')})"
        else:
            score = "not evaluated"
        frames = training.get("num_env_frames")
        needed, goal = SCORE_BARS.get(game, (None, None))
        rows.append(" | ".join([
            f"| {game}", card.get("kind", "?"), _trainer_name(training),
            "?" if frames is None else f"{frames / 1e6:.2f} M", score,
            "n/a" if needed is None else f">= {needed:,g}",
            "n/a" if goal is None else f">= {goal:,g} |"]))
    return "\n".join(rows) + "\n"


def write_cards_table(teachers_dir: str | os.PathLike, readme: str | os.PathLike) -> Path:
    """Replaces the table between TABLE_START and TABLE_END in `readme` with
    `cards_table(teachers_dir)` (atomically)."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no teachers table to replace (expected the lines "
                         f"{TABLE_START!r} and {TABLE_END!r} around it)")
    new = (text[:start + len(TABLE_START)] + "\n" + cards_table(teachers_dir)
           + text[end:])
    return files.atomic_write_text(readme, new)
