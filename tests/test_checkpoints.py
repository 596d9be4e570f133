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


def test_files_write_through_a_temporary_name(tmp_path):
    from multidistill import files

    assert files.temporary_path(tmp_path / "pong.h5") == tmp_path / "pong.tmp.h5"
    assert files.temporary_path(tmp_path / "a" / "card.json") == tmp_path / "a" / "card.tmp.json"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    out = files.atomic_write(tmp_path / "sub" / "report.json", write)
    assert out == tmp_path / "sub" / "report.json" and out.read_text() == "new"
    assert seen == [tmp_path / "sub" / "report.tmp.json"] and not seen[0].exists()
    files.atomic_write_text(out, "newer")
    assert out.read_text() == "newer"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    from multidistill import files

    target = tmp_path / "checkpoint.npz"
    files.atomic_write_bytes(target, b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert not files.temporary_path(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_checkpoint_save_leaves_no_temporary_file(tmp_path):
    m, opt = _model()
    checkpoints.save(tmp_path / "c.npz", m, opt, {"step": 1})
    checkpoints.save(tmp_path / "c.npz", m, opt, {"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    assert checkpoints.read_state(tmp_path / "c.npz") == {"step": 2}
