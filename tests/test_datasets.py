"""The HDF5 schema: round trip, appends, validation, damaged files."""

import json

import h5py
import numpy as np
import pytest
from conftest import new_writer, synthetic_episode

from multidistill import datasets, environments


def test_round_trip_and_attributes(tmp_path, spec):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(5, seed=1), synthetic_episode(3, seed=2)]
    with new_writer(path, spec) as w:
        for e in eps:
            w.append_episode(e)
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == 8 and ds.num_episodes == 2
        a = ds.attrs
        assert a["schema_version"] == datasets.SCHEMA_VERSION
        assert a["game"] == "pong" and a["teacher_kind"] == "q_values"
        assert environments.Preprocessing.from_json(a["preprocessing"]) == spec
        assert json.loads(a["versions"])["multidistill"]
        assert a["mean_teacher_episode_return"] == pytest.approx(
            np.mean([e["rewards"].sum() for e in eps]), rel=1e-6)
        np.testing.assert_array_equal(ds.episode_starts, [0, 5])
        np.testing.assert_array_equal(ds.episode_lengths, [5, 3])
        block = ds.read_block(0, 8)
        np.testing.assert_allclose(block["teacher_outputs"],
                                   np.concatenate([e["teacher_outputs"] for e in eps]))
        np.testing.assert_array_equal(block["actions"],
                                      np.concatenate([e["actions"] for e in eps]))
        # Features are stored as float16.
        np.testing.assert_allclose(block["teacher_features"][:5], eps[0]["teacher_features"],
                                   rtol=1e-3, atol=1e-3)
        # Stacks: step 6 is the 2nd step of episode 2: zeros, zeros, ep2[0], ep2[1].
        obs = block["observations"]
        assert obs.shape == (8, 4, 84, 84)
        np.testing.assert_array_equal(obs[6, :2], 0)
        np.testing.assert_array_equal(obs[6, 2], eps[1]["frames"][0])
        np.testing.assert_array_equal(obs[6, 3], eps[1]["frames"][1])
        np.testing.assert_array_equal(obs[4], eps[0]["frames"][1:5])
        # Reading from the middle rebuilds the same stacks as reading from 0.
        np.testing.assert_array_equal(ds.read_block(4, 7)["observations"], obs[4:7])


def test_plain_h5py_can_read_the_schema(tmp_path, spec):
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with h5py.File(path, "r") as f:
        assert f["frames"].shape == (4, 84, 84) and f["frames"].dtype == np.uint8
        assert f["teacher_outputs"].shape == (4, 3)
        assert f["teacher_features"].dtype == np.float16
        assert f["frames"].compression == "gzip" and f["frames"].fletcher32
        assert list(f["episodes/length"][:]) == [4]
        assert f.attrs["num_agent_steps"] == 4


def test_reopening_appends(tmp_path, spec):
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with new_writer(path, spec) as w:
        assert w.num_agent_steps == 4
        w.append_episode(synthetic_episode(6, seed=3))
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == 10 and ds.num_episodes == 2


def test_other_teacher_or_spec_is_refused(tmp_path, spec):
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with pytest.raises(datasets.DatasetError, match="teacher_sha256 is 'aaaa.*rebuild"):
        new_writer(path, spec, teacher_sha="b" * 64)
    other = environments.Preprocessing(sticky_action_prob=0.25)
    with pytest.raises(datasets.DatasetError, match="sticky_action_prob"):
        new_writer(path, other)
    with datasets.Dataset(path) as ds:
        with pytest.raises(datasets.DatasetError, match="another teacher"):
            ds.check_compatible("pong", spec, "c" * 64)
        with pytest.raises(datasets.DatasetError, match="sticky_action_prob: 0.0 in file"):
            ds.check_compatible("pong", other)
        with pytest.raises(datasets.DatasetError, match="recorded with epsilon 0.05.*asks for 0.1"):
            ds.check_compatible("pong", spec, "a" * 64, epsilon=0.1)
        ds.check_compatible("pong", spec, "a" * 64, epsilon=0.05)
    # The refused writers left the file intact.
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == 4


def test_nan_teacher_outputs_refused(tmp_path, spec):
    path = tmp_path / "pong.h5"
    e = synthetic_episode(4)
    e["teacher_outputs"][2, 1] = np.nan
    with new_writer(path, spec) as w:
        with pytest.raises(datasets.DatasetError, match="NaN or infinite"):
            w.append_episode(e)
        assert w.num_agent_steps == 0


def test_not_hdf5_and_truncated_files(tmp_path, spec):
    bad = tmp_path / "pong.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(datasets.DatasetError, match="pong.h5 is not an HDF5 file"):
        datasets.Dataset(bad)
    good = tmp_path / "good.h5"
    with new_writer(good, spec) as w:
        w.append_episode(synthetic_episode(40))
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(datasets.DatasetError, match="cut.h5"):
        with datasets.Dataset(cut) as ds:
            ds.read_block(0, ds.num_agent_steps)


def test_other_schema_version(tmp_path, spec):
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(datasets.DatasetError, match="schema version 99.*reads version 1"):
        datasets.Dataset(path)


def test_rows_past_the_counts_are_ignored_then_cut(tmp_path, spec):
    """A crash after writing rows but before the counts leaves extra rows."""
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(4))
    with h5py.File(path, "a") as f:
        for name in ("frames", "actions"):
            f[name].resize(7, axis=0)
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == 4
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(2, seed=5))
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == 6
        np.testing.assert_array_equal(ds.episode_starts, [0, 4])
        np.testing.assert_array_equal(ds.read_block(4, 6)["observations"][1, 3],
                                      synthetic_episode(2, seed=5)["frames"][1])
