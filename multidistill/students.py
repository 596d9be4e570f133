"""Student files: load, save, move a trunk, and export a head as a teacher.

The mirror of `teachers`. A student is a `networks.MultiTaskStudent` saved
as a `.keras` file (its games, action counts, preprocessing, precision and
training config; no optimizer state, which lives in the run's checkpoint,
and no objective: it loads without knowing how it was trained).

  * `load_student` / `save_student`: the file, checked and written atomically.
  * `copy_trunk`: the shared convolutions and hidden layer into another
    network (a new student for other games, a teacher network to fine-tune):
    transfer from a distilled trunk.
  * `export_head`: one game's head, with the trunk, as a standalone teacher
    file plus card (`teachers.save_teacher`), so that a student can teach
    (of a shared 18-way head, the game's actions' rows).
  * `head_predictor`: batched inference of one head, for acting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multidistill import files, networks
from multidistill import teachers as teachers_lib


def load_student(path: str | os.PathLike) -> networks.MultiTaskStudent:
    """Loads a saved student (Keras safe mode) and checks that it is one.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is not a loadable Keras model, or not a student.
    """
    import keras

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"student file {path} does not exist")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"student file {path} is not a loadable Keras model: "
                         f"{type(e).__name__}: {first_line}") from None
    if not isinstance(model, networks.MultiTaskStudent):
        raise ValueError(f"{path} is a Keras model but not a multidistill student "
                         f"(found {type(model).__name__})")
    return model


def save_student(student: networks.MultiTaskStudent, path: str | os.PathLike) -> Path:
    """Saves the student's network and weights atomically, without its
    optimizer state or objective."""
    # A fresh, uncompiled copy: Keras saves the optimizer of a compiled model.
    copy = networks.MultiTaskStudent.from_config(student.get_config())
    copy.build_for_inputs()
    copy.set_weights(student.get_weights())
    return files.atomic_write(path, copy.save)


def _weighted(layers) -> list:
    return [layer for layer in layers if layer.weights]


def trunk_layers(model) -> list:
    """The weighted layers of a network's trunk: three convolutions and the
    hidden layer after them.

    A student's shared trunk; for a functional network (a teacher), its first
    four weighted layers (`networks.build_teacher_network`: conv0..conv2 and
    `features`).
    """
    if isinstance(model, networks.MultiTaskStudent):
        return _weighted(model.trunk)
    return _weighted(model.layers)[:4]


def copy_trunk(source, target) -> int:
    """Copies the trunk weights of `source` into `target` (both students, or
    a student and a teacher-shaped network).

    Returns:
      The number of layers copied (4).

    Raises:
      ValueError: the trunks differ in layer count or shapes (other sizes).
    """
    src, dst = trunk_layers(source), trunk_layers(target)
    shapes = ([[tuple(w.shape) for w in layer.weights] for layer in src],
              [[tuple(w.shape) for w in layer.weights] for layer in dst])
    if shapes[0] != shapes[1]:
        raise ValueError(f"cannot copy the trunk: the source's layers have weight shapes "
                         f"{shapes[0]}, the target's {shapes[1]} (another network size?)")
    for a, b in zip(src, dst):
        b.set_weights(a.get_weights())
    return len(src)


def acting_parameters(student: networks.MultiTaskStudent) -> int:
    """Parameters the student acts with in all its games: the trunk and the
    heads, without what only training uses (Actor-Mimic's feature
    projections, IE-KD's factor encoders). `count_params()` counts those too."""
    seen = {}
    for game in student.games:
        for w in student.policy_network(game).weights:
            seen[id(w)] = int(np.prod(w.shape))
    return sum(seen.values())


def head_network(student: networks.MultiTaskStudent, game: str):
    """A standalone float32 Keras network of one game: frames -> the head's
    logits, its last hidden layer named `features` (a teacher's layout).

    A shared 18-way head (`head="shared18"`) gives the game's rows of it:
    its outputs are the student's logits of that game, in its action order.
    """
    import keras
    from keras import layers

    hidden_weights, output_weights = student.head_weights(game)  # Checks the game.
    has_hidden = hidden_weights is not None
    frames = keras.Input(shape=tuple(student.observation_shape), dtype="uint8", name="frames")
    # Without a head layer, the trunk's hidden layer is the last one: `features`.
    trunk = networks.make_trunk(student.conv_filters, student.fc_units, prefix="",
                                   hidden_name="hidden" if has_hidden else "features",
                                   dtype="float32")
    x = frames
    for layer in trunk:
        x = layer(x)
    if has_hidden:
        features = layers.Dense(student.head_units, activation="relu", name="features",
                                dtype="float32")
        x = features(x)
    outputs = layers.Dense(student.num_actions[student.games.index(game)], name="outputs",
                           dtype="float32")
    model = keras.Model(frames, outputs(x), name=f"student_{game}")
    for a, b in zip(_weighted(student.trunk), _weighted(trunk)):
        b.set_weights(a.get_weights())
    if has_hidden:
        features.set_weights(hidden_weights)
    outputs.set_weights(output_weights)
    return model


def export_head(student: networks.MultiTaskStudent, game: str,
                teachers_dir: str | os.PathLike, kind: str | None = None,
                evaluation: dict | None = None, source: str = "") -> tuple[Path, Path]:
    """Writes one game's head as a teacher: `<dir>/<game>.keras` and its card.

    Args:
      student: the student.
      game: the head to export.
      teachers_dir: where the teacher goes.
      kind: the teacher's acting rule (default: that of the teacher the
        head learnt from, as evaluation plays it).
      evaluation: a score for the card (`evaluation` section), if known.
      source: where the student came from (recorded in the card).

    Returns:
      The paths of the Keras file and of the card.
    """
    from multidistill import environments

    if game not in student.games:
        raise ValueError(f"the student has no head for {game!r}: it has {student.games}")
    kinds = dict(zip(student.games, student.training_config.get("teacher_kinds")
                     or ["q_values"] * len(student.games)))
    kind = kind or kinds[game]
    spec = environments.Preprocessing.from_dict(student.preprocessing)
    return teachers_lib.save_teacher(
        head_network(student, game), game, kind, spec, teachers_dir,
        evaluation=evaluation,
        training={"algorithm": "distillation (exported student head)",
                  "exported_from": str(source), "games": list(student.games),
                  "config": student.training_config})


def head_predictor(student: networks.MultiTaskStudent, game: str
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """observations (B, S, H, W) uint8 -> the logits of `game`'s head (B, A)."""
    from multidistill import evaluation

    return evaluation.predict_fn(student.policy_network(game))
