"""Building datasets from a real game with a (tiny) teacher."""


import numpy as np
import pytest
from conftest import new_writer, synthetic_episode

from multidistill import acting, build_datasets, datasets, teachers


def test_built_dataset_matches_teacher_and_schema(datasets_dir, teachers_dir, spec):
    path = datasets_dir / "pong.h5"
    t = teachers.load_teacher("pong", teachers_dir, spec)
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps >= 500
        assert ds.teacher_sha256 == t.sha256 and ds.teacher_kind == "q_values"
        a = ds.attrs
        assert a["epsilon"] == 0.05 and a["num_episodes"] == ds.num_episodes
        # Every episode ends in a terminal or truncated step, and only there.
        blk = ds.read_block(0, ds.num_agent_steps)
        ends = blk["terminated"] | blk["truncated"]
        np.testing.assert_array_equal(np.flatnonzero(ends),
                                      ds.episode_starts + ds.episode_lengths - 1)
        # The recorded outputs are the teacher's outputs on the rebuilt stacks.
        outputs, features = t.label(blk["observations"][:64])
        np.testing.assert_allclose(blk["teacher_outputs"][:64], outputs, rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(blk["teacher_features"][:64], features, rtol=1e-2,
                                   atol=1e-2)
        # Greedy actions agree with argmax except for epsilon exploration.
        agree = np.mean(blk["actions"] == blk["teacher_outputs"].argmax(1))
        assert agree > 0.9


def test_asking_for_more_steps_tops_up_with_new_seeds(tmp_path, teachers_dir, spec):
    t = teachers.load_teacher("freeway", teachers_dir, spec)
    path = tmp_path / "freeway.h5"
    s1 = build_datasets.build_dataset(
        t, path, build_datasets.BuildConfig(num_agent_steps=200, num_envs=1), spec,
        progress=False)
    s2 = build_datasets.build_dataset(
        t, path, build_datasets.BuildConfig(num_agent_steps=s1["num_agent_steps"] + 1,
                                            num_envs=1), spec, progress=False)
    assert s2["num_episodes"] == s1["num_episodes"] + 1
    with datasets.Dataset(path) as ds:
        assert len(set(ds.build_seeds)) == 2
    # Already big enough: nothing added.
    s3 = build_datasets.build_dataset(
        t, path, build_datasets.BuildConfig(num_agent_steps=10, num_envs=1), spec,
        progress=False)
    assert s3["added_agent_steps"] == 0


def test_second_builder_is_locked_out(tmp_path, teachers_dir, spec):
    t = teachers.load_teacher("freeway", teachers_dir, spec)
    path = tmp_path / "freeway.h5"
    with build_datasets.file_lock(path):
        with pytest.raises(datasets.DatasetError, match="being written by another process"):
            build_datasets.build_dataset(
                t, path, build_datasets.BuildConfig(num_agent_steps=10, num_envs=1), spec,
                progress=False)


def test_env_groups_record_the_same_episodes_as_lockstep(tmp_path, teachers_dir, spec):
    """Overlapping emulation with inference (two groups) changes nothing
    recorded: with epsilon 0 the Q-value teacher is deterministic."""
    t = teachers.load_teacher("pong", teachers_dir, spec)
    blocks = {}
    for groups, overlap in ((1, False), (2, True), (4, False)):
        config = build_datasets.BuildConfig(num_agent_steps=900, num_envs=4, seed=5,
                                            epsilon=0.0, num_env_groups=groups,
                                            overlap_env_groups=overlap)
        path = tmp_path / f"pong{groups}{overlap}.h5"
        summary = build_datasets.build_dataset(t, path, config, spec, progress=False)
        # Steps/s are steady-state: start-up (resets, first calls) is apart.
        assert 0 < summary["startup_seconds"] < summary["seconds"]
        assert summary["agent_steps_per_s"] == pytest.approx(
            summary["added_agent_steps"] / (summary["seconds"] - summary["startup_seconds"]))
        with datasets.Dataset(path) as ds:
            blocks[groups, overlap] = (ds.read_block(0, ds.num_agent_steps),
                                       list(ds.episode_lengths))
    a, len_a = blocks[1, False]
    assert sum(len_a) >= 900
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
        appender = build_datasets._BackgroundAppender(w, max_pending=2)
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
        appender = build_datasets._BackgroundAppender(w)
        appender.append(synthetic_episode(4, seed=0))
        appender.append(bad)
        appender.append(synthetic_episode(6, seed=2))  # Dropped after the error.
        with pytest.raises(datasets.DatasetError, match="NaN or infinite"):
            appender.close()
    with datasets.Dataset(path) as ds:
        assert (ds.num_episodes, ds.num_agent_steps) == (1, 4)


def test_episode_buffer_copies_rows_and_grows(spec):
    buf = build_datasets._EpisodeBuffer()
    n, stack = 2, spec.frame_stack
    for t in range(2500):  # Past the first capacity (1024 rows), twice.
        obs = np.full((n, stack, 84, 84), t % 251, np.uint8)
        step = acting.StepBatch(
            observations=obs, actions=np.array([t % 6, 0], np.int32),
            extras={"outputs": np.full((n, 3), t, np.float32),
                    "features": np.full((n, 4), -t, np.float32)},
            rewards=np.array([t, 0], np.float32), terminated=np.array([t == 2499, False]),
            truncated=np.zeros(n, bool), valid=np.ones(n, bool),
            episode_offsets=np.full(n, t))
        buf.add(step, 0)
        obs[:] = 255  # The buffer holds copies, not views into the batch.
    assert len(buf) == 2500
    e = buf.take()
    assert len(buf) == 0
    t = np.arange(2500)
    np.testing.assert_array_equal(e["frames"][:, 0, 0], t % 251)
    np.testing.assert_array_equal(e["teacher_outputs"][:, 1], t)
    np.testing.assert_array_equal(e["teacher_features"][:, 3], -t)
    np.testing.assert_array_equal(e["actions"], t % 6)
    np.testing.assert_array_equal(e["rewards"], t)
    assert e["terminated"].sum() == 1 and e["terminated"][-1]
    assert e["frames"].dtype == np.uint8 and e["actions"].dtype == np.uint8


class _FixedLengthEnvs:
    """A vector env whose episodes all last `length` agent steps (NextStep autoreset)."""

    def __init__(self, num_envs, length):
        self.num_envs, self.length = num_envs, length
        self.t = np.zeros(num_envs, int)

    def _obs(self):
        return np.zeros((self.num_envs, 4, 84, 84), np.uint8)

    def reset(self, seed):
        return self._obs(), {}

    def send(self, actions):
        pass

    def recv(self):
        self.t = (self.t + 1) % (self.length + 1)  # Step `length + 1` is the reset.
        ended = self.t == self.length
        return self._obs(), np.zeros(self.num_envs, np.float32), ended, np.zeros_like(ended), {}

    def close(self):
        pass


class _ConstantTeacher:
    def label(self, obs):
        return np.zeros((len(obs), 3), np.float32), np.zeros((len(obs), 5), np.float32)

    def act(self, outputs, epsilon, rng):
        return np.zeros(len(outputs), np.int32)


def test_recording_stops_when_the_episodes_under_way_will_meet_the_target(
        tmp_path, spec, monkeypatch):
    monkeypatch.setattr(build_datasets.environments, "make_vector_envs",
                        lambda *a, **k: [_FixedLengthEnvs(4, length=10)])
    game = type("Game", (), {"name": "pong"})

    def fill(writer, target):
        config = build_datasets.BuildConfig(num_agent_steps=target, num_envs=4)
        return build_datasets._fill(writer, _ConstantTeacher(), game, config, spec, False)

    with new_writer(tmp_path / "pong.h5", spec) as w:
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
