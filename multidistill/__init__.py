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

# TensorFlow prints pages of start-up logs at import; keep the user's terminal
# for what matters (the user can still override this variable).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
