"""Collecting datasets (multidistill.collect): a real game with a (tiny)
teacher, and the recording loop on fake environments."""

import h5py
import numpy as np
import pytest
from conftest import new_writer, synthetic_episode, use_fake_atari

from multidistill import acting, collect, datasets, teachers


@pytest.mark.slow
def test_built_dataset_matches_teacher_and_schema(datasets_dir, teachers_dir, spec):
    path = datasets_dir / "pong.h5"
    t = teachers.load_teacher("pong", teachers_dir, spec)
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps >= 500 and ds.schema_version == 2
        assert ds.teacher_sha256 == t.sha256 and ds.teacher_kind == "q_values"
        assert ds.teacher_value_source == "max_q"
        n, e = ds.num_agent_steps, ds.num_episodes
        # The file's own count attributes (not `ds.attrs`, which mirrors the
        # committed counts) agree with the committed counts and the episode table.
        with h5py.File(path, "r") as f:
            assert (int(f.attrs["num_episodes"]), int(f.attrs["num_agent_steps"])) == (e, n)
            assert list(f["committed"][:]) == [e, n]
        assert e >= 2 and int(ds.episode_lengths.sum()) == n
        # One session: the teacher acted, epsilon 0.05 (the default), over the file.
        assert ds.sessions == [datasets.Session(
            seed=collect._session_seed(3, 0), behaviour="teacher", beta=1.0, epsilon=0.05,
            behaviour_sha256=t.sha256, labeller_sha256=t.sha256, step_start=0, step_stop=n)]
        # Every episode ends in a terminal or truncated step, and only there.
        blk = ds.read_block(0, n)
        ends = blk["terminated"] | blk["truncated"]
        np.testing.assert_array_equal(np.flatnonzero(ends),
                                      ds.episode_starts + ds.episode_lengths - 1)
        # The recorded outputs are the teacher's outputs on the rebuilt stacks.
        labels = t.label(blk["observations"][:64])
        np.testing.assert_allclose(blk["teacher_outputs"][:64], labels["outputs"], rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(blk["teacher_features"][:64], labels["features"],
                                   rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(blk["teacher_values"], blk["teacher_outputs"].max(1))
        # The behaviour log-probabilities are those of the teacher's rule.
        np.testing.assert_allclose(
            blk["behaviour_log_probs"],
            teachers.action_log_probs(blk["teacher_outputs"], "q_values", 0.05,
                                      blk["actions"]), rtol=1e-6)
        # Greedy actions agree with argmax except for epsilon exploration.
        agree = np.mean(blk["actions"] == blk["teacher_outputs"].argmax(1))
        assert agree > 0.9


@pytest.mark.slow
def test_asking_for_more_steps_tops_up_with_new_seeds(tmp_path, teachers_dir, spec):
    t = teachers.load_teacher("freeway", teachers_dir, spec)
    path = tmp_path / "freeway.h5"
    s1 = collect.build_dataset(
        t, path, collect.CollectConfig(num_agent_steps=200, num_envs=1), spec,
        progress=False)
    # Freeway episodes run to the 300-step cap: one episode, then exactly one more.
    assert (s1["num_agent_steps"], s1["num_episodes"]) == (300, 1)
    s2 = collect.build_dataset(
        t, path, collect.CollectConfig(num_agent_steps=s1["num_agent_steps"] + 1,
                                       num_envs=1), spec, progress=False)
    assert (s2["num_agent_steps"], s2["num_episodes"], s2["added_agent_steps"]) == (600, 2, 300)
    with datasets.Dataset(path) as ds:
        sessions = ds.sessions
        assert [(s.step_start, s.step_stop) for s in sessions] == [(0, 300), (300, 600)]
        assert len({s.seed for s in sessions}) == 2
        # The second session's episode is not a replay of the first one.
        blk = ds.read_block(0, 600)
        assert not np.array_equal(blk["actions"][:300], blk["actions"][300:])
    # Already big enough: nothing added, the file untouched.
    before = path.read_bytes()
    s3 = collect.build_dataset(
        t, path, collect.CollectConfig(num_agent_steps=10, num_envs=1), spec,
        progress=False)
    assert (s3["added_agent_steps"], s3["num_agent_steps"]) == (0, 600)
    assert path.read_bytes() == before


def test_second_builder_is_locked_out(tmp_path, teachers_dir, spec):
    t = teachers.load_teacher("freeway", teachers_dir, spec)
    path = tmp_path / "freeway.h5"
    with datasets.file_lock(path):
        with pytest.raises(datasets.DatasetError, match="being written by another process"):
            collect.build_dataset(
                t, path, collect.CollectConfig(num_agent_steps=10, num_envs=1), spec,
                progress=False)
    assert not path.exists()


@pytest.mark.slow
def test_env_groups_record_the_same_episodes_as_lockstep(tmp_path, teachers_dir, spec):
    """Overlapping emulation with inference (two groups) changes nothing
    recorded: with epsilon 0 the Q-value teacher is deterministic."""
    t = teachers.load_teacher("pong", teachers_dir, spec)
    blocks = {}
    for groups, overlap in ((1, False), (2, True), (4, False)):
        config = collect.CollectConfig(num_agent_steps=900, num_envs=4, seed=5,
                                       epsilon=0.0, num_env_groups=groups,
                                       overlap_env_groups=overlap)
        path = tmp_path / f"pong{groups}{overlap}.h5"
        summary = collect.build_dataset(t, path, config, spec, progress=False)
        # Steps/s are steady-state: start-up (resets, first calls) is apart.
        assert 0 < summary["startup_seconds"] < summary["seconds"]
        assert summary["agent_steps_per_s"] == pytest.approx(
            summary["added_agent_steps"] / (summary["seconds"] - summary["startup_seconds"]))
        with datasets.Dataset(path) as ds:
            blocks[groups, overlap] = (ds.read_block(0, ds.num_agent_steps),
                                       list(ds.episode_lengths))
    a, len_a = blocks[1, False]
    assert sum(len_a) >= 900
    assert len(blocks) == 3
    for b, len_b in blocks.values():
        assert len_a == len_b
        np.testing.assert_array_equal(a["observations"], b["observations"])
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_allclose(a["teacher_outputs"], b["teacher_outputs"],
                                   rtol=1e-4, atol=1e-5)


def test_background_appender_writes_every_episode_in_order(tmp_path, spec):
    path = tmp_path / "pong.h5"
    episodes = [synthetic_episode(t, seed=k) for k, t in enumerate((3, 700, 1, 40, 9, 2))]
    with new_writer(path, spec) as w:
        appender = collect._BackgroundAppender(w, max_pending=2)
        for e in episodes:
            appender.append(e)
        # Counted when handed over, whether written yet or not.
        assert (appender.num_agent_steps, appender.num_episodes) == (755, 6)
        appender.close()
        assert (w.num_agent_steps, w.num_episodes) == (755, 6)
        expected_mean = np.mean([np.sum(e["rewards"], dtype=np.float64) for e in episodes])
        assert appender.mean_episode_return == pytest.approx(expected_mean)
    with datasets.Dataset(path) as ds:
        np.testing.assert_array_equal(ds.episode_lengths, [3, 700, 1, 40, 9, 2])
        frames = ds.read_block(0, ds.num_agent_steps)["observations"][:, -1]
        np.testing.assert_array_equal(frames, np.concatenate([e["frames"] for e in episodes]))


def test_background_appender_raises_a_write_error_and_keeps_what_was_written(tmp_path, spec):
    path = tmp_path / "pong.h5"
    bad = synthetic_episode(5, seed=1)
    bad["teacher_outputs"][2, 0] = np.inf
    with new_writer(path, spec) as w:
        appender = collect._BackgroundAppender(w)
        appender.append(synthetic_episode(4, seed=0))
        appender.append(bad)
        appender.append(synthetic_episode(6, seed=2))  # Dropped after the error.
        with pytest.raises(datasets.DatasetError, match="NaN or infinite"):
            appender.close()
    with datasets.Dataset(path) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (1, 4)


def test_episode_buffer_copies_rows_and_grows(spec):
    buf = collect._EpisodeBuffer()
    n, stack = 2, spec.frame_stack
    for t in range(2500):  # Past the first capacity (1024 rows), twice.
        obs = np.full((n, stack, 84, 84), t % 251, np.uint8)
        step = acting.StepBatch(
            observations=obs, actions=np.array([t % 6, 0], np.int32),
            extras={"outputs": np.full((n, 3), t, np.float32),
                    "features": np.full((n, 4), -t, np.float32),
                    "values": np.full(n, 2 * t, np.float32),
                    "log_probs": np.full(n, -t / 1000, np.float32)},
            rewards=np.array([t, 0], np.float32), terminated=np.array([t == 2499, False]),
            truncated=np.zeros(n, bool), valid=np.ones(n, bool),
            episode_offsets=np.full(n, t), lives=np.zeros(n, np.int64),
            life_lost=np.zeros(n, bool))
        buf.add(step, 0)
        obs[:] = 255  # The buffer holds copies, not views into the batch.
    assert len(buf) == 2500
    e = buf.take()
    assert len(buf) == 0
    t = np.arange(2500)
    np.testing.assert_array_equal(e["frames"][:, 0, 0], t % 251)
    np.testing.assert_array_equal(e["teacher_outputs"][:, 1], t)
    np.testing.assert_array_equal(e["teacher_features"][:, 3], -t)
    np.testing.assert_array_equal(e["teacher_values"], 2 * t)
    np.testing.assert_allclose(e["behaviour_log_probs"], (-t / 1000).astype(np.float32))
    np.testing.assert_array_equal(e["actions"], t % 6)
    np.testing.assert_array_equal(e["rewards"], t)
    assert e["terminated"].sum() == 1 and e["terminated"][-1]
    assert e["frames"].dtype == np.uint8 and e["actions"].dtype == np.uint8
    assert set(e) == set(datasets.STEP_ARRAYS)  # What `append_episode` takes.


class _ConstantLabeller:
    sha256 = "c" * 64

    def label(self, obs):
        n = len(obs)
        return {"outputs": np.zeros((n, 3), np.float32),
                "features": np.zeros((n, 5), np.float32), "values": np.zeros(n, np.float32)}


def test_recording_stops_when_the_episodes_under_way_will_meet_the_target(
        tmp_path, spec, monkeypatch):
    built = use_fake_atari(monkeypatch, length=10)
    game = type("Game", (), {"name": "pong"})
    behaviour = collect.TeacherBehaviour("q_values", 0.0, "c" * 64)

    def fill(writer, target):
        config = collect.CollectConfig(num_agent_steps=target, num_envs=4)
        return collect.record(writer, _ConstantLabeller(), behaviour, game, config, spec,
                              False)

    with new_writer(tmp_path / "pong.h5", spec, session=False) as w:
        # All four episodes end at step 10 (40 steps); the first to end goes on,
        # the others stop: 40 written + 10 expected of the one under way >= 45.
        # (Stopping only once the steps *reached* met the target would record 80.)
        s = fill(w, 45)
        assert (s["num_agent_steps"], s["num_episodes"]) == (50, 5)
        # A top-up starts only the environments its mean episode length says
        # it needs: 20 more steps, episodes of 10, so 2 environments.
        s = fill(w, 70)
        assert (s["num_agent_steps"], s["num_episodes"], s["added_agent_steps"]) == (70, 7, 20)
        # Whatever the projection, the last environment recording goes on
        # until the target is met.
        s = fill(w, 95)
        assert s["num_agent_steps"] >= 95 and s["num_agent_steps"] % 10 == 0
        # Already there: no session, no environments.
        s = fill(w, 10)
        assert s["added_agent_steps"] == 0
        assert len(w.sessions) == 3
    assert len(built) == 3 and all(env.closed for env in built)
    with datasets.Dataset(tmp_path / "pong.h5") as ds:
        assert [(x.step_start, x.step_stop) for x in ds.sessions] == [
            (0, 50), (50, 70), (70, ds.num_agent_steps)]
        assert set(ds.episode_lengths) == {10}
