"""Command-line glue shared by the entry points (train.py, build_datasets,
evaluate, train_teacher): flag definitions and the error wrapper.

Library modules never read flags; each entry point maps flags to plain
arguments or frozen configs in one place.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from absl import app, flags

from multidistill import environments

FLAGS = flags.FLAGS


class UsageError(ValueError):
    """A flag value is invalid."""


def define_verbose_flag():
    flags.DEFINE_bool(
        "verbose", False, "Print full tracebacks on errors (default: one-line messages)."
    )


def define_allow_unsafe_teacher_flag():
    flags.DEFINE_bool(
        "allow_unsafe_teacher", False,
        "Allow teacher files that need unsafe Keras deserialisation (they can run "
        "code): only for files you trust.")


def define_preprocessing_flags():
    d = environments.Preprocessing()
    flags.DEFINE_float(
        "sticky_action_prob", d.sticky_action_prob,
        "Probability in [0, 1] that the emulator repeats the previous action "
        "(0.25 in Machado et al. 2018). Must match the teachers' cards.")
    flags.DEFINE_integer(
        "noop_max", d.noop_max,
        "Maximum number of no-op agent steps at the start of each episode.")
    flags.DEFINE_integer(
        "max_episode_frames", d.max_episode_frames,
        "Episode cap in emulator frames (108000 = 30 minutes of play).")


def preprocessing_from_flags() -> environments.Preprocessing:
    try:
        return environments.Preprocessing(
            sticky_action_prob=FLAGS.sticky_action_prob,
            noop_max=FLAGS.noop_max,
            max_episode_frames=FLAGS.max_episode_frames,
        )
    except ValueError as e:
        raise UsageError(f"preprocessing flags: {e}") from None


def require(condition: bool, message: str) -> None:
    """Raises UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run, with known errors printed as one message and exit code 2."""

    def wrapped(argv):
        if len(argv) > 1:
            print(f"error: unexpected arguments {argv[1:]} (flags are --name=value)",
                  file=sys.stderr)
            sys.exit(2)
        try:
            main(argv)
        # Every error of ours is a ValueError subclass (DatasetError, TeacherError,
        # TrainingError, CheckpointError, UsageError); OSErrors are I/O failures.
        except (ValueError, OSError) as e:
            if getattr(FLAGS, "verbose", False):
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)


# -- teacher training (multidistill.train_teacher) ---------------------------
# Flag definitions and the flags-to-config mappings of the teacher trainers.

# -- end of teacher training ---------------------------------------------------
