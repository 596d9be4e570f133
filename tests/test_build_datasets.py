"""Building datasets from a real game with a (tiny) teacher."""


import numpy as np
import pytest

from multidistill import build_datasets, datasets, teachers


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
