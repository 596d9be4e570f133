"""multidistill: multi-task policy distillation for Atari.

The pipeline, one flat module per role, in the order data flows:

    games          which games exist, their action sets and reference scores
    environments   the one preprocessing spec, the vectorised Atari envs,
                   the frame-stack rebuild
    teachers       loading and saving teachers (`.keras` + JSON card), their
                   acting rule
    acting         the vectorised play loop and episode bookkeeping
    collect        a behaviour policy acts, the teacher labels -> datasets
                   (whole, or one part of a sharded dataset)
    executors      where dataset parts are recorded: here, or as Ray tasks
    datasets       the HDF5 schema: the only module that reads or writes it
    pipeline       batch sources: minibatches drawn across games
    objectives     what the student minimises and the batch fields it needs
    losses         the loss terms (KL, NLL, MSE, feature regression)
    update_rules   the update rules of Czarnecki et al. (2019) as objectives
    iekd           IE-KD (Huang et al. 2021) as an objective: the teachers'
                   auto-encoders, the student's inheritance and exploration halves
    networks       teacher and student Keras networks (forward pass only)
    distiller      training the multi-task student (checkpoints, resume)
    distribution   the engine a student trains on: one device, every device, several machines
    diagnostics    the student against its teachers on held-out states: KL,
                   agreement, entropies, the teachers' action gaps
    rounds         student-driven distillation: collection rounds, aggregation
    realtime       real-time distillation: students trained alongside a
                   training teacher, on its experience
    students       loading, saving, trunk transfer, exporting a head
    evaluation     student and teachers under one protocol, reports
    stages         the main job's stages (teachers, datasets, distil, report)
    sweep          one student per size on the same data: size/speed/score table
    export_dataset a dataset written as a Minari (offline RL) dataset
    import_teacher SB3 / CleanRL Atari networks as teachers, read without torch
    agents/        teacher training: DQN, PPO, their loop and runner

`import multidistill` and the modules that need no network
(`datasets`, `games`, `environments`, `collect`'s callers' data side) load
no deep-learning framework; `multidistill.networks` (imported by
`multidistill.students`) registers the student class with Keras.
"""

import os
import sys
import tempfile

__version__ = "0.1.0"

# TensorFlow prints pages of start-up logs at import; keep the user's terminal
# for what matters (the user can still override this variable).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up lines (written to fd 2 before
    any log setting applies) captured; they are replayed if the import fails."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or (
            "tensorflow" in sys.modules or os.environ.get("MULTIDISTILL_TF_LOGS")):
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except Exception:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_keras_quietly():
    """Imports TensorFlow (when it is the backend) without its start-up noise.

    Modules that use Keras call this before `import keras`."""
    try:
        _import_tensorflow_quietly()
    except ImportError:
        pass  # Keras reports a missing backend itself, with its own message.
