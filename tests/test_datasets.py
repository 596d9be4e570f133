"""The HDF5 schema: round trip, appends, sessions, prefixes, version 1 files,
validation, damaged files."""

import dataclasses
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
        assert a["mean_episode_return"] == pytest.approx(
            np.mean([e["rewards"].sum() for e in eps]), rel=1e-6)
        assert "mean_teacher_episode_return" not in a and "epsilon" not in a
        assert a["teacher_value_source"] == "max_q"
        np.testing.assert_array_equal(ds.episode_starts, [0, 5])
        np.testing.assert_array_equal(ds.episode_lengths, [5, 3])
        block = ds.read_block(0, 8)
        np.testing.assert_allclose(block["teacher_outputs"],
                                   np.concatenate([e["teacher_outputs"] for e in eps]))
        np.testing.assert_array_equal(block["actions"],
                                      np.concatenate([e["actions"] for e in eps]))
        for name in ("teacher_values", "behaviour_log_probs", "rewards", "terminated"):
            np.testing.assert_array_equal(block[name], np.concatenate([e[name] for e in eps]))
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
        assert f["teacher_values"].dtype == np.float32 and f["teacher_values"].shape == (4,)
        assert f["behaviour_log_probs"].dtype == np.float32
        assert f["sessions"].shape == (1,)
        assert f["sessions"][0]["behaviour"] == b"teacher"
        assert list(f["committed"][:]) == [1, 4]
        assert "epsilon" not in f.attrs and "build_seeds" not in f
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
        new_writer(path, spec, teacher_sha="b" * 64, session=False)
    other = environments.Preprocessing(sticky_action_prob=0.25)
    with pytest.raises(datasets.DatasetError, match="sticky_action_prob"):
        new_writer(path, other, session=False)
    with datasets.Dataset(path) as ds:
        with pytest.raises(datasets.DatasetError,
                           match="labelled by another teacher.*aaaaaaaaaaaa.*cccccccccccc"):
            ds.check_compatible("pong", spec, "c" * 64)
        with pytest.raises(datasets.DatasetError, match="sticky_action_prob: 0.0 in file"):
            ds.check_compatible("pong", other)
        with pytest.raises(datasets.DatasetError, match="game is 'pong', expected 'freeway'"):
            ds.check_compatible("freeway", spec)
        # Epsilon is a session setting now, not a file-level constraint.
        ds.check_compatible("pong", spec, "a" * 64)
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
    with pytest.raises(datasets.DatasetError,
                       match=r"schema version 99.*reads versions \[1, 2\]"):
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


# -- sessions -------------------------------------------------------------------


def _session(behaviour, seed, beta, epsilon, sha="b" * 64):
    return datasets.Session(seed=seed, behaviour=behaviour, beta=beta, epsilon=epsilon,
                            behaviour_sha256=sha, labeller_sha256="a" * 64)


def test_appending_needs_a_session(tmp_path, spec):
    with new_writer(tmp_path / "pong.h5", spec, session=False) as w:
        with pytest.raises(datasets.DatasetError, match="start_session before appending"):
            w.append_episode(synthetic_episode(3))
        assert w.num_agent_steps == 0
    with pytest.raises(ValueError, match="behaviour must be one of"):
        _session("expert", 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="beta and epsilon must be in"):
        _session("mixture", 0, 1.5, 0.0)


def test_session_table_round_trip(tmp_path, spec):
    path = tmp_path / "pong.h5"
    teacher = _session("teacher", 11, 1.0, 0.05)
    mixture = _session("mixture", 12, 0.25, 0.1, sha="c" * 64)
    rand = _session("random", 13, 0.0, 1.0, sha="")
    with new_writer(path, spec, session=False) as w:
        assert w.start_session(teacher) == 0
        w.append_episode(synthetic_episode(5, seed=1))
        w.append_episode(synthetic_episode(4, seed=2))
    with new_writer(path, spec, session=False) as w:  # A top-up: a new writer.
        assert w.start_session(mixture) == 1
        w.append_episode(synthetic_episode(7, seed=3))
        assert w.start_session(rand) == 2  # Started, nothing appended.
        assert [s.behaviour for s in w.sessions] == ["teacher", "mixture", "random"]
    with datasets.Dataset(path) as ds:
        assert ds.schema_version == 2
        assert ds.sessions == [
            dataclasses.replace(teacher, step_start=0, step_stop=9),
            dataclasses.replace(mixture, step_start=9, step_stop=16),
            dataclasses.replace(rand, step_start=16, step_stop=16),
        ]
        # JSON-able, as run identities store them.
        assert json.loads(json.dumps(ds.sessions[1].to_dict()))["beta"] == 0.25


def test_prefix_view_shows_the_first_episodes_only(tmp_path, spec):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(t, seed=k) for k, t in enumerate((5, 3, 6, 4))]
    with new_writer(path, spec, session=False) as w:
        w.start_session(_session("teacher", 1, 1.0, 0.05))
        for e in eps[:2]:
            w.append_episode(e)
        w.start_session(_session("student", 2, 0.0, 0.05))
        for e in eps[2:]:
            w.append_episode(e)
    with datasets.Dataset(path) as full:
        full_block = full.read_block(0, full.num_agent_steps)
        assert (full.num_episodes, full.num_agent_steps) == (4, 18)
        assert len(full.sessions) == 2
    with datasets.Dataset(path, max_episodes=3) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (3, 14)
        np.testing.assert_array_equal(ds.episode_starts, [0, 5, 8])
        np.testing.assert_array_equal(ds.episode_lengths, [5, 3, 6])
        np.testing.assert_allclose(ds.episode_returns,
                                   [e["rewards"].sum(dtype=np.float64) for e in eps[:3]])
        a = ds.attrs
        assert (a["num_episodes"], a["num_agent_steps"]) == (3, 14)
        assert a["mean_episode_return"] == pytest.approx(np.mean(ds.episode_returns))
        # The second session is cut at the prefix's end.
        assert [(s.behaviour, s.step_start, s.step_stop) for s in ds.sessions] == [
            ("teacher", 0, 8), ("student", 8, 14)]
        block = ds.read_block(0, 14)
        for k, v in block.items():
            np.testing.assert_array_equal(v, full_block[k][:14], err_msg=k)
        with pytest.raises(IndexError, match="rows 0:15 outside"):
            ds.read_rows(0, 15)
    with datasets.Dataset(path, max_episodes=2) as ds:  # Sessions after it are left out.
        assert ds.num_agent_steps == 8
        assert [(s.behaviour, s.step_start, s.step_stop) for s in ds.sessions] == [
            ("teacher", 0, 8)]
    with datasets.Dataset(path, max_episodes=0) as ds:
        assert (ds.num_episodes, ds.num_agent_steps, ds.sessions) == (0, 0, [])
    with pytest.raises(datasets.DatasetError, match="holds 4 episodes, fewer than the 5"):
        datasets.Dataset(path, max_episodes=5)


def test_read_rows_with_history_and_stack_rows(tmp_path, spec):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(5, seed=1), synthetic_episode(3, seed=2)]
    with new_writer(path, spec) as w:
        for e in eps:
            w.append_episode(e)
    with datasets.Dataset(path) as ds:
        raw = ds.read_rows(6, 8, ("actions", "teacher_features"), history=3)
        assert raw["prefix"] == 3 and len(raw["frames"]) == 5
        assert set(raw) == {"frames", "prefix", "offsets", "actions", "teacher_features"}
        np.testing.assert_array_equal(raw["offsets"], [1, 2])
        assert raw["teacher_features"].dtype == np.float16  # As stored.
        np.testing.assert_array_equal(
            datasets.stack_rows(raw, np.array([1, 0]), 4),
            ds.read_block(0, 8)["observations"][[7, 6]])
        assert ds.read_rows(1, 2, (), history=3)["prefix"] == 1  # The file starts there.
        with pytest.raises(ValueError, match="unknown dataset fields \\['q'\\]"):
            ds.read_rows(0, 1, ("q",))


# -- version 1 files ---------------------------------------------------------------


def _write_v1(path, spec, kind, epsilon, episodes, build_seeds, num_actions=3, feature_dim=5):
    """A version 1 file as the previous writer made it (plain h5py)."""
    cat = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
    lengths = [len(e["frames"]) for e in episodes]
    starts = np.cumsum([0] + lengths[:-1])
    returns = [float(np.sum(e["rewards"], dtype=np.float64)) for e in episodes]
    gz = dict(compression="gzip", fletcher32=True)
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("frames", data=cat["frames"], maxshape=(None, 84, 84),
                         chunks=(64, 84, 84), **gz)
        f.create_dataset("teacher_outputs", data=cat["teacher_outputs"].astype(np.float32),
                         maxshape=(None, num_actions), **gz)
        f.create_dataset("teacher_features", data=cat["teacher_features"].astype(np.float16),
                         maxshape=(None, feature_dim), **gz)
        for name, dtype in (("actions", np.uint8), ("rewards", np.float32),
                            ("terminated", bool), ("truncated", bool)):
            f.create_dataset(name, data=cat[name].astype(dtype), maxshape=(None,), **gz)
        ep = f.create_group("episodes")
        ep.create_dataset("start", data=np.asarray(starts, np.int64), maxshape=(None,))
        ep.create_dataset("length", data=np.asarray(lengths, np.int64), maxshape=(None,))
        ep.create_dataset("return", data=np.asarray(returns, np.float64), maxshape=(None,))
        f.create_dataset("committed", data=np.array([len(episodes), sum(lengths)], np.int64))
        f.create_dataset("build_seeds", data=np.asarray(build_seeds, np.int64),
                         maxshape=(None,))
        a = f.attrs
        a["schema_version"] = 1
        a["game"] = "pong"
        a["rom_md5"] = "0" * 32
        a["num_actions"] = num_actions
        a["feature_dim"] = feature_dim
        a["preprocessing"] = spec.to_json()
        a["teacher_sha256"] = "a" * 64
        a["teacher_kind"] = kind
        a["teacher_path"] = "teacher.keras"
        a["epsilon"] = epsilon
        a["seed"] = 0
        a["versions"] = json.dumps({"multidistill": "0.0.9"})
        a["created_utc"] = "2026-01-01T00:00:00+00:00"
        a["num_agent_steps"] = sum(lengths)
        a["num_episodes"] = len(episodes)
        a["mean_teacher_episode_return"] = float(np.mean(returns))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["q_values", "logits"])
def test_version_1_file_is_read_with_derived_columns(tmp_path, spec, kind):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(6, seed=1), synthetic_episode(4, seed=2)]
    _write_v1(path, spec, kind, 0.1, eps, build_seeds=[77])
    q = np.concatenate([e["teacher_outputs"] for e in eps]).astype(np.float64)
    actions = np.concatenate([e["actions"] for e in eps]).astype(np.int64)
    n, num_actions = len(q), 3
    # By hand: mu(a) = (1 - eps) pi(a) + eps / A, pi one-hot argmax or softmax.
    if kind == "q_values":
        pi = (np.arange(num_actions)[None] == q.argmax(1)[:, None]).astype(np.float64)
    else:
        pi = _softmax(q)
    expected_log_mu = np.log(0.9 * pi[np.arange(n), actions] + 0.1 / num_actions)
    with datasets.Dataset(path) as ds:
        assert ds.schema_version == 1 and ds.num_agent_steps == 10
        assert ds.teacher_value_source == ("max_q" if kind == "q_values" else "none")
        block = ds.read_block(0, n)
        np.testing.assert_allclose(block["behaviour_log_probs"], expected_log_mu, rtol=1e-5)
        if kind == "q_values":
            np.testing.assert_allclose(block["teacher_values"], q.max(1), rtol=1e-6)
        else:
            assert np.isnan(block["teacher_values"]).all()
        # A middle slice derives the same values.
        np.testing.assert_allclose(ds.read_rows(3, 8, ("behaviour_log_probs",))[
            "behaviour_log_probs"], expected_log_mu[3:8], rtol=1e-5)
        np.testing.assert_array_equal(block["actions"], actions)
        np.testing.assert_array_equal(block["observations"][7, 2:],
                                      eps[1]["frames"][:2])
        # One build seed: one teacher session over the whole file.
        assert ds.sessions == [datasets.Session(
            seed=77, behaviour="teacher", beta=1.0, epsilon=0.1,
            behaviour_sha256="a" * 64, labeller_sha256="a" * 64, step_start=0, step_stop=10)]
        assert ds.attrs["mean_teacher_episode_return"] == pytest.approx(
            np.mean([e["rewards"].sum() for e in eps]))


def test_version_1_with_several_builds_has_sessions_of_unknown_range(tmp_path, spec):
    path = tmp_path / "pong.h5"
    _write_v1(path, spec, "q_values", 0.05, [synthetic_episode(4)], build_seeds=[5, 6])
    with datasets.Dataset(path) as ds:
        assert [(s.seed, s.epsilon, s.step_start, s.step_stop) for s in ds.sessions] == [
            (5, 0.05, -1, -1), (6, 0.05, -1, -1)]


def test_appending_to_version_1_is_refused_with_the_upgrade_hint(tmp_path, spec):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(6, seed=1), synthetic_episode(4, seed=2)]
    _write_v1(path, spec, "q_values", 0.1, eps, build_seeds=[77])
    before = path.read_bytes()
    with pytest.raises(datasets.DatasetError,
                       match=r"schema version 1.*python -m multidistill\.datasets upgrade "
                             r".*pong\.h5"):
        new_writer(path, spec, session=False)
    assert path.read_bytes() == before  # Left as it was.
    with datasets.Dataset(path) as ds:
        v1_block = ds.read_block(0, ds.num_agent_steps)
        v1_sessions = ds.sessions

    # Following the hint: a version 2 file with the same data, appendable.
    backup = datasets.upgrade(path)
    assert backup == tmp_path / "pong.v1.h5" and backup.read_bytes() == before
    with datasets.Dataset(path) as ds:
        assert ds.schema_version == 2 and ds.sessions == v1_sessions
        for k, v in ds.read_block(0, ds.num_agent_steps).items():
            np.testing.assert_array_equal(v, v1_block[k], err_msg=k)
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(3, seed=9))
    with datasets.Dataset(path) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (3, 13)
        assert len(ds.sessions) == 2 and ds.sessions[1].step_start == 10
    assert datasets.upgrade(path) is None  # Already version 2.


def test_upgrade_without_build_seeds_and_with_a_backup_in_the_way(tmp_path, spec):
    path = tmp_path / "pong.h5"
    eps = [synthetic_episode(5, seed=1), synthetic_episode(4, seed=2)]
    _write_v1(path, spec, "q_values", 0.1, eps, build_seeds=[])
    with datasets.Dataset(path) as ds:  # One session over the file, the file's seed.
        (session,) = ds.sessions
        assert (session.step_start, session.step_stop, session.epsilon) == (0, 9, 0.1)
    backup = tmp_path / "pong.v1.h5"
    backup.write_bytes(b"an earlier backup")
    before = path.read_bytes()
    with pytest.raises(datasets.DatasetError,
                       match=r"backup would go to .*pong\.v1\.h5, which exists"):
        datasets.upgrade(path)
    assert path.read_bytes() == before and backup.read_bytes() == b"an earlier backup"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "pong.h5", "pong.v1.h5"]  # No temporary file left.
    backup.unlink()
    assert datasets.upgrade(path) == backup
    with datasets.Dataset(path) as ds:
        assert ds.schema_version == 2 and [s.step_stop for s in ds.sessions] == [9]


def test_info_lists_each_session_with_who_acted(tmp_path, spec, capsys):
    path = tmp_path / "pong.h5"
    with new_writer(path, spec) as w:
        w.append_episode(synthetic_episode(30, seed=1))
        w.start_session(datasets.Session(seed=9, behaviour="mixture", beta=0.25, epsilon=0.1,
                                         behaviour_sha256="c" * 64, labeller_sha256="a" * 64))
        w.append_episode(synthetic_episode(20, seed=2))
    assert datasets.main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "50 agent steps in 2 episodes" in lines[0]
    assert lines[2].split() == ["0", "teacher", "1", "0.05", "0", "0-30"]
    assert lines[3].split() == ["1", "mixture", "0.25", "0.1", "9", "30-50"]
    assert datasets.main(["info", str(tmp_path / "none.h5")]) == 2
    assert "none.h5 does not exist" in capsys.readouterr().err
