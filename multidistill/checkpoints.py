"""Training checkpoints: weights, optimizer state and counters, written atomically.

A checkpoint is one `.npz` file holding every model weight and optimizer
variable by name, plus a JSON string of counters and settings. It is written
to a temporary name, flushed to disk and renamed over the final name, so the
final name always holds a complete checkpoint (the previous one until the
rename). It works the same on every Keras backend.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from multidistill import files


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to another run."""


def _variables(model, optimizer) -> dict[str, Any]:
    # Keyed by position: Keras makes names unique per process ("dense_3"), so
    # the same network built twice has other names but the same order.
    out = {}
    for i, v in enumerate(model.weights):
        out[f"model/{i:04d}"] = v
    if optimizer is not None:
        for i, v in enumerate(optimizer.variables):
            out[f"optimizer/{i:04d}"] = v
    return out


def save(path: str | os.PathLike, model, optimizer, state: dict) -> None:
    """Writes model weights, optimizer variables and `state` to `path`."""
    arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
              for k, v in _variables(model, optimizer).items()}
    arrays["__state__"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files.atomic_write_bytes(path, buf.getvalue())


def read_state(path: str | os.PathLike) -> dict:
    """The counters and settings of a checkpoint, without loading weights."""
    try:
        with np.load(path) as z:
            return json.loads(z["__state__"].tobytes().decode())
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None


def restore(path: str | os.PathLike, model, optimizer) -> dict:
    """Loads weights and optimizer variables saved by `save`; returns the state.

    The optimizer must already be built for the model's trainable variables.
    """
    try:
        z = np.load(path)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    with z:
        targets = _variables(model, optimizer)
        # Keys are "model/0007" (older checkpoints appended "/<variable path>").
        saved = {"/".join(k.split("/")[:2]): k for k in z.files if k != "__state__"}
        if sorted(saved) != sorted(targets):
            raise CheckpointError(
                f"checkpoint {path} holds {len(saved)} variables that do not match this "
                f"model's {len(targets)} (another network size or algorithm?)"
            )
        for k, v in targets.items():
            value = z[saved[k]]
            if tuple(value.shape) != tuple(v.shape):
                raise CheckpointError(
                    f"checkpoint {path}: variable {k} has shape {value.shape}, "
                    f"the model expects {tuple(v.shape)}"
                )
            v.assign(value)
        return json.loads(z["__state__"].tobytes().decode())
