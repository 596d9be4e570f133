"""Checkpoints: round trip, older key format, refusal of another model."""

import numpy as np
import pytest

from multidistill import checkpoints, networks


def _model(fc=8):
    import keras

    m = networks.build_teacher_network(3, (4, 84, 84), (2, 2, 2), fc)
    opt = keras.optimizers.Adam()
    opt.build(m.trainable_variables)
    return m, opt


def test_round_trip_and_older_key_format(tmp_path):
    m, opt = _model()
    checkpoints.save(tmp_path / "c.npz", m, opt, {"step": 5})
    # Older checkpoints named keys "model/0000/<variable path>".
    with np.load(tmp_path / "c.npz") as z:
        old = {(k + "/some/path" if k != "__state__" else k): z[k] for k in z.files}
    np.savez(tmp_path / "old.npz", **old)
    for name in ("c.npz", "old.npz"):
        m2, opt2 = _model()
        assert checkpoints.restore(tmp_path / name, m2, opt2) == {"step": 5}
        for a, b in zip(m.weights, m2.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_other_model_refused(tmp_path):
    m, opt = _model()
    checkpoints.save(tmp_path / "c.npz", m, opt, {})
    m2, opt2 = _model(fc=16)
    with pytest.raises(checkpoints.CheckpointError, match="has shape"):
        checkpoints.restore(tmp_path / "c.npz", m2, opt2)
