"""multidistill: offline multi-task policy distillation for Atari.

The pipeline, one flat module per role:

    games          which games exist, their action sets and reference scores
    environments   the one preprocessing spec and the vectorised Atari envs
    networks       teacher and student Keras networks
    teachers       loading and saving teachers (`.keras` + JSON card)
    acting         the vectorised play loop shared by building and evaluation
    datasets       the HDF5 schema: the only module that reads or writes it
    build_datasets teacher plays -> one HDF5 file per game
    pipeline       minibatches drawn across games from the HDF5 files
    losses         distillation losses (KL, NLL, MSE, feature regression)
    distiller      training the multi-task student (checkpoints, resume)
    evaluation     student and teachers under one protocol, reports
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


try:
    _import_tensorflow_quietly()
except ImportError:
    pass  # Keras reports a missing backend itself, with its own message.

# Registers the student class with Keras, so that after `import multidistill`
# a saved student loads with plain `keras.saving.load_model`.
from multidistill import networks as _networks  # noqa: E402, F401
