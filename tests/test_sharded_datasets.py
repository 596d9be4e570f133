"""Sharded datasets: a folder of part files read as one dataset, each part
recorded by its own worker (collect.build_shard), here or as Ray tasks
(multidistill.executors)."""

import os
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
from conftest import REPO, SPEC_KW, run_cli, synthetic_episode, use_fake_atari

from multidistill import (
    collect,
    datasets,
    environments,
    executors,
    export_dataset,
    pipeline,
    teachers,
)

SHA_A, SHA_B = "a" * 64, "b" * 64


def _write_part(datasets_dir, spec, index, count, lengths, seed0, game="pong",
                teacher_sha=SHA_A, base_seed=0, partial=False, feature_dim=5):
    """A part of synthetic episodes (frame j of the k-th episode written:
    (37 (seed0 + k) + j + 1) % 251), complete unless `partial`."""
    shard = datasets.Shard(index, count, base_seed)
    final = datasets.part_path(datasets_dir, game, shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = datasets.partial_path(final) if partial else final
    with datasets.DatasetWriter(
            path, game=game, rom_md5="0" * 32, num_actions=6, feature_dim=feature_dim,
            preprocessing=spec, teacher_sha256=teacher_sha, teacher_kind="q_values",
            teacher_path="teacher.keras", seed=collect.shard_seed(base_seed, index),
            teacher_value_source="max_q", shard=shard) as w:
        w.start_session(datasets.Session(
            seed=index, behaviour="teacher", beta=1.0, epsilon=0.05,
            behaviour_sha256=teacher_sha, labeller_sha256=teacher_sha))
        for k, t in enumerate(lengths):
            w.append_episode(synthetic_episode(t, 6, feature_dim, seed=seed0 + k))
    return path


def _all_rows(ds):
    return ds.read_block(0, ds.num_agent_steps)


# -- the reader ----------------------------------------------------------------


def test_two_parts_read_as_one_dataset(tmp_path, spec, capsys):
    a = _write_part(tmp_path, spec, 0, 2, [30, 20], seed0=0)
    b = _write_part(tmp_path, spec, 1, 2, [25], seed0=10)
    folder = datasets.shard_folder(tmp_path, "pong")
    assert datasets.dataset_path(tmp_path, "pong") == folder
    with datasets.Dataset(folder) as ds, datasets.Dataset(a) as da, datasets.Dataset(b) as db:
        assert isinstance(ds, datasets.ShardedDataset) and isinstance(ds, datasets.Dataset)
        assert ds.part_paths == [a, b] and ds.num_shards == 2 and ds.shard is None
        assert da.shard == datasets.Shard(0, 2, 0) and db.shard == datasets.Shard(1, 2, 0)
        # Counts are the sums; episodes in part order, then file order.
        assert (ds.num_agent_steps, ds.num_episodes) == (75, 3)
        np.testing.assert_array_equal(ds.episode_starts, [0, 30, 50])
        np.testing.assert_array_equal(ds.episode_lengths, [30, 20, 25])
        np.testing.assert_array_equal(
            ds.episode_returns, np.concatenate([da.episode_returns, db.episode_returns]))
        # Every row is its part's row, once: nothing lost, nothing repeated.
        whole, rows_a, rows_b = _all_rows(ds), _all_rows(da), _all_rows(db)
        for name in ("observations", *datasets.STEP_FIELDS):
            np.testing.assert_array_equal(whole[name],
                                          np.concatenate([rows_a[name], rows_b[name]]))
        # A read across the boundary: part 1's first stack is its own frame and zeros.
        obs = ds.read_block(48, 52)["observations"]
        np.testing.assert_array_equal(obs[2, -1], synthetic_episode(25, 6, 5, seed=10)["frames"][0])
        assert not obs[2, :3].any()
        assert [(s.seed, s.step_start, s.step_stop) for s in ds.sessions] == [
            (0, 0, 50), (1, 50, 75)]
        a_attrs = ds.attrs
        assert a_attrs["num_shards"] == 2 and a_attrs["seed"] == 0
        assert a_attrs["num_agent_steps"] == 75 and "shard_index" not in a_attrs
        assert [p["file"] for p in a_attrs["parts"]] == [a.name, b.name]
        assert a_attrs["parts"][0]["created_host"]
        ds.check_compatible("pong", spec, SHA_A)
        # The Minari export reads it as any dataset.
        meta = export_dataset.provenance(ds)
        assert meta["source"]["num_episodes"] == 3 and meta["source"]["seed"] == 0
        assert [s["seed"] for s in meta["sessions"]] == [0, 1]
        np.testing.assert_array_equal(export_dataset.episode_arrays(ds, 2)["actions"],
                                      rows_b["actions"])
    # A prefix is one of the dataset's episode order, across parts.
    with datasets.Dataset(folder, max_episodes=3 - 1) as p:
        assert (p.num_episodes, p.num_agent_steps) == (2, 50)
        assert [(s.step_start, s.step_stop) for s in p.sessions] == [(0, 50)]
    with datasets.Dataset(folder, max_episodes=3) as p:
        assert (p.num_episodes, p.num_agent_steps) == (3, 75)
    with pytest.raises(datasets.DatasetError, match="holds 3 episodes, fewer than the 4"):
        datasets.Dataset(folder, max_episodes=4)
    # `multidistill datasets info FOLDER`.
    assert datasets.main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "75 agent steps in 3 episodes" in out and "2 parts in" in out
    assert f"{b.name}: 25 agent steps in 1 episodes" in out
    assert datasets.upgrade(folder) is None  # Parts are version 2 already.


def test_the_sampler_draws_from_every_part(tmp_path, spec):
    _write_part(tmp_path, spec, 0, 2, [40, 40], seed0=0)
    _write_part(tmp_path, spec, 1, 2, [40, 40], seed0=2)
    folder = datasets.shard_folder(tmp_path, "pong")
    cfg = pipeline.PipelineConfig(batch_size_per_game=16, block_rows=16, blocks_in_memory=4,
                                  holdout_fraction=0.0, seed=1)
    source = pipeline.HDF5Source([str(folder)], cfg, fields=("teacher_outputs",))
    try:
        assert source.identity()["datasets"][0]["num_episodes"] == 4
        truth = source.datasets[0].read_block(0, 160)
        keys = {truth["observations"][r].tobytes() + truth["teacher_outputs"][r].tobytes(): r
                for r in range(160)}
        rows = []
        for i in range(40):
            x, y = source.batch(i)
            for k in range(len(x["frames"])):
                rows.append(keys[x["frames"][k].tobytes() + y["teacher_outputs"][k].tobytes()])
    finally:
        source.close()
    rows = np.array(rows)
    assert (rows < 80).any() and (rows >= 80).any()  # Both parts are sampled.


# -- recording parts -----------------------------------------------------------


def test_shard_budgets_and_seeds():
    config = collect.CollectConfig(num_agent_steps=10, seed=7)
    parts = [collect.shard_config(config, datasets.Shard(i, 4, 7)) for i in range(4)]
    assert [p.num_agent_steps for p in parts] == [3, 3, 2, 2]
    assert len({p.seed for p in parts}) == 4
    # The seed of a part depends on the base seed and its index only.
    assert parts[1].seed == collect.shard_seed(7, 1) == collect.shard_config(
        config, datasets.Shard(1, 9, 7)).seed
    assert collect.shard_seed(8, 1) != collect.shard_seed(7, 1)
    assert (parts[0].num_env_groups, parts[0].overlap_env_groups) == (1, False)
    with pytest.raises(ValueError, match="fewer than the 11 shards"):
        collect.shard_config(config, datasets.Shard(0, 11, 7))


@pytest.mark.slow
def test_a_part_is_the_same_whoever_records_it(tmp_path, teachers_dir, spec):
    teacher = teachers.load_teacher("freeway", teachers_dir, spec)
    config = collect.CollectConfig(num_agent_steps=2, num_envs=1, seed=4)
    summaries = {}
    for where in ("one", "two"):
        for i in (0, 1):
            summaries[where, i] = collect.build_shard(
                teacher, tmp_path / where, config, spec, datasets.Shard(i, 2, 4),
                progress=False)
    with datasets.Dataset(tmp_path / "one" / "freeway") as one, \
            datasets.Dataset(tmp_path / "two" / "freeway") as two:
        a, b = _all_rows(one), _all_rows(two)
        for name in ("observations", *datasets.STEP_FIELDS):
            np.testing.assert_array_equal(a[name], b[name])
        assert one.sessions == two.sessions
        # Each part one session, seeded from its own seed; the parts differ.
        assert [s.seed for s in one.sessions] == [
            collect._session_seed(collect.shard_seed(4, i), 0) for i in (0, 1)]
        n0 = int(one.episode_lengths[0])
        assert one.num_episodes == 2 and not np.array_equal(a["actions"][:n0],
                                                           a["actions"][n0:])
    assert summaries["one", 1]["path"].endswith("part-00001-of-00002.h5")


def test_a_killed_part_resumes_and_a_complete_part_is_kept(tmp_path, teachers_dir, spec,
                                                          monkeypatch):
    use_fake_atari(monkeypatch, length=10)
    teacher = teachers.load_teacher("pong", teachers_dir, spec)
    config = collect.CollectConfig(num_agent_steps=80, num_envs=2, seed=0)
    shard = datasets.Shard(1, 2, 0)
    final = datasets.part_path(tmp_path, "pong", shard)
    partial = datasets.partial_path(final)
    # The worker dies after its third episode reaches the writer.
    real_append = datasets.DatasetWriter.append_episode

    def dying_append(self, episode):
        if self.num_episodes == 3:
            raise SystemExit("killed")
        real_append(self, episode)

    monkeypatch.setattr(datasets.DatasetWriter, "append_episode", dying_append)
    _write_part(tmp_path, spec, 0, 2, [10], seed0=0, teacher_sha=teacher.sha256,
                feature_dim=teacher.feature_dim)
    with pytest.raises(SystemExit):
        collect.build_shard(teacher, tmp_path, config, spec, shard, progress=False)
    monkeypatch.setattr(datasets.DatasetWriter, "append_episode", real_append)
    assert partial.exists() and not final.exists()
    with datasets.Dataset(partial) as ds:
        assert ds.num_episodes == 3
        before = _all_rows(ds)
    # Half-written: the folder is not a dataset yet, and says why.
    with pytest.raises(datasets.DatasetError,
                       match=r"incomplete: expected 2 complete parts, found 1; missing "
                             r"part\(s\) \[1\] \(part-00001-of-00002.partial.h5 being written"):
        datasets.Dataset(datasets.shard_folder(tmp_path, "pong"))
    # Resumed: the episodes written stay as they were, a second session adds the rest.
    s = collect.build_shard(teacher, tmp_path, config, spec, shard, progress=False)
    assert s["path"] == str(final) and s["num_agent_steps"] >= 40
    assert final.exists() and not partial.exists()
    with datasets.Dataset(final) as ds:
        assert len(ds.sessions) == 2 and ds.sessions[0].step_stop == 30
        after = ds.read_block(0, 30)
        for name in ("observations", *datasets.STEP_FIELDS):
            np.testing.assert_array_equal(after[name], before[name])
    with datasets.Dataset(datasets.shard_folder(tmp_path, "pong")) as ds:
        assert ds.num_episodes == 1 + s["num_episodes"]
    # Complete: kept as it is (not even reopened for writing).
    content, mtime = final.read_bytes(), final.stat().st_mtime_ns
    again = collect.build_shard(teacher, tmp_path, config, spec, shard, progress=False)
    assert again["added_agent_steps"] == 0
    assert final.read_bytes() == content and final.stat().st_mtime_ns == mtime
    # Asking more of a complete part is refused; a rebuild writes it anew.
    more = collect.CollectConfig(num_agent_steps=400, num_envs=2, seed=0)
    with pytest.raises(datasets.DatasetError, match="complete part is never topped up"):
        collect.build_shard(teacher, tmp_path, more, spec, shard, progress=False)
    s = collect.build_shard(teacher, tmp_path, more, spec, shard, rebuild=True,
                            progress=False)
    assert s["num_agent_steps"] >= 200
    with datasets.Dataset(final) as ds:
        assert len(ds.sessions) == 1


def _committed_episodes(path):
    try:
        with datasets.Dataset(path) as ds:
            return ds.num_episodes
    except (datasets.DatasetError, OSError):  # Not created yet, or mid-write.
        return 0


@pytest.mark.slow
def test_a_part_killed_by_sigkill_resumes_from_its_whole_episodes(tmp_path, teachers_dir):
    args = ["-m", "multidistill.build_datasets", "--games=pong",
            f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}", "--num_envs=1",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}", "--num_shards=2",
            "--shard_index=0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, *args, "--num_agent_steps=60000"], cwd=REPO,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = datasets.Shard(0, 2, 0)
    final = datasets.part_path(tmp_path, "pong", shard)
    partial = datasets.partial_path(final)
    try:
        t0 = time.time()
        while _committed_episodes(partial) < 1 and time.time() - t0 < 180:
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert partial.exists() and not final.exists()
    with datasets.Dataset(partial) as ds:
        n = ds.num_agent_steps
        assert n > 0 and n % 300 == 0  # Whole 300-step episodes only.
        before = ds.read_block(0, n)
    with pytest.raises(datasets.DatasetError, match="incomplete"):
        datasets.Dataset(datasets.shard_folder(tmp_path, "pong"))
    # The same command, asking this part for one episode more: it resumes.
    rc, out = run_cli(args + [f"--num_agent_steps={2 * (n + 300)}"])
    assert rc == 0, out
    assert f"pong part 0 of 2: {final} holds {n + 300} steps" in out, out
    assert final.exists() and not partial.exists()
    with datasets.Dataset(final) as ds:
        assert [(s.step_start, s.step_stop) for s in ds.sessions] == [(0, n), (n, n + 300)]
        after = ds.read_block(0, n)
        for name in ("observations", *datasets.STEP_FIELDS):
            np.testing.assert_array_equal(after[name], before[name])


def test_a_part_killed_before_its_first_episode_starts_afresh(tmp_path, teachers_dir, spec,
                                                              monkeypatch):
    use_fake_atari(monkeypatch, length=10)
    teacher = teachers.load_teacher("pong", teachers_dir, spec)
    config = collect.CollectConfig(num_agent_steps=40, num_envs=2, seed=0)
    shard = datasets.Shard(0, 2, 0)
    clean = collect.build_shard(teacher, tmp_path / "clean", config, spec, shard,
                                progress=False)
    # A partial holding a session and no episode (killed during start-up).
    final = datasets.part_path(tmp_path / "killed", "pong", shard)
    final.parent.mkdir(parents=True)
    with collect._open_writer(datasets.partial_path(final), teacher,
                              type("G", (), {"name": "pong", "rom_md5": ""}), spec,
                              collect.shard_seed(0, 0), shard) as w:
        w.start_session(datasets.Session(seed=1, behaviour="random", beta=0.0, epsilon=1.0,
                                         behaviour_sha256="", labeller_sha256=""))
    resumed = collect.build_shard(teacher, tmp_path / "killed", config, spec, shard,
                                  progress=False)
    with datasets.Dataset(clean["path"]) as a, datasets.Dataset(resumed["path"]) as b:
        assert a.sessions == b.sessions
        np.testing.assert_array_equal(_all_rows(a)["actions"], _all_rows(b)["actions"])


# -- errors ----------------------------------------------------------------------


def test_parts_of_another_teacher_or_preprocessing_are_refused(tmp_path, spec):
    _write_part(tmp_path, spec, 0, 2, [10], seed0=0)
    b = _write_part(tmp_path, spec, 1, 2, [10], seed0=1, teacher_sha=SHA_B)
    folder = datasets.shard_folder(tmp_path, "pong")
    with pytest.raises(datasets.DatasetError) as e:
        datasets.Dataset(folder)
    message = str(e.value)
    assert str(b) in message and "teacher_sha256 differs (the labelling teacher)" in message
    assert f"found '{SHA_B}', expected '{SHA_A}'" in message
    b.unlink()
    other = environments.Preprocessing(max_episode_frames=2400)
    b = _write_part(tmp_path, other, 1, 2, [10], seed0=1)
    with pytest.raises(datasets.DatasetError,
                       match=r"part-00001-of-00002.h5 cannot be read with .* as one dataset: "
                             r"its preprocessing differs: found 'max_episode_frames=2400', "
                             r"expected 'max_episode_frames=1200'"):
        datasets.Dataset(folder)
    b.unlink()
    _write_part(tmp_path, spec, 1, 2, [10], seed0=1, base_seed=5)
    with pytest.raises(datasets.DatasetError, match="base seed 5, expected 0"):
        datasets.Dataset(folder)


def test_a_single_file_and_a_part_folder_for_one_game_are_refused(tmp_path, spec,
                                                                    teachers_dir):
    _write_part(tmp_path, spec, 0, 2, [10], seed0=0)
    single = datasets.single_file_path(tmp_path, "pong")
    single.write_bytes(b"")
    folder = datasets.shard_folder(tmp_path, "pong")
    for call in (lambda: datasets.dataset_path(tmp_path, "pong"),
                 lambda: datasets.check_layout(tmp_path, "pong", 1)):
        with pytest.raises(datasets.DatasetError,
                           match=rf"two datasets in .*: the single file {single} and the "
                                 rf"folder of part files {folder}; expected one of them"):
            call()
    with pytest.raises(datasets.DatasetError,
                       match=rf"cannot write game pong as 2 parts in {folder}: its dataset is "
                             rf"the single file {single}"):
        datasets.check_layout(tmp_path, "pong", 2)
    teacher = teachers.load_teacher("pong", teachers_dir, spec)
    with pytest.raises(datasets.DatasetError, match="the single file"):
        collect.check_existing({"pong": teacher}, tmp_path, spec, rebuild=True, num_shards=2)
    single.unlink()
    # Parts of another split.
    with pytest.raises(datasets.DatasetError,
                       match=r"holds parts of 2 shards \(part-00000-of-00002.h5\), this run "
                             r"asks for 3 \(--num_shards\)"):
        datasets.check_layout(tmp_path, "pong", 3)
    _write_part(tmp_path, spec, 1, 3, [10], seed0=1)
    with pytest.raises(datasets.DatasetError, match=r"parts of several splits \(\[2, 3\]"):
        datasets.Dataset(folder)
    (folder / "notes.h5").write_bytes(b"")
    with pytest.raises(datasets.DatasetError, match="holds notes.h5, which is not a part file"):
        datasets.Dataset(folder)


def test_a_sharded_dataset_is_used_as_it_is_by_the_main_job(tmp_path, teachers_dir, spec):
    """`collect.build_dataset` (the main job's build stage) on a part folder:
    used when it holds enough steps, never topped up nor rebuilt."""
    teacher = teachers.load_teacher("pong", teachers_dir, spec)
    for i in (0, 1):
        _write_part(tmp_path, spec, i, 2, [10, 5], seed0=i, teacher_sha=teacher.sha256,
                    feature_dim=teacher.feature_dim)
    folder = datasets.dataset_path(tmp_path, "pong")
    collect.check_existing({"pong": teacher}, tmp_path, spec, rebuild=False)
    s = collect.build_dataset(teacher, folder, collect.CollectConfig(num_agent_steps=30),
                              spec, progress=False)
    assert (s["num_agent_steps"], s["num_episodes"], s["added_agent_steps"]) == (30, 4, 0)
    with pytest.raises(datasets.DatasetError, match="holds 30 agent steps, fewer than the 31"):
        collect.build_dataset(teacher, folder, collect.CollectConfig(num_agent_steps=31),
                              spec, progress=False)
    with pytest.raises(datasets.DatasetError, match="rebuilding replaces single files only"):
        collect.build_dataset(teacher, folder, collect.CollectConfig(num_agent_steps=1),
                              spec, rebuild=True, progress=False)


def test_sharding_settings_are_checked():
    assert executors.ShardingConfig(num_shards=3).shard_indices == [0, 1, 2]
    assert executors.ShardingConfig(num_shards=3, shard_index=2).shard_indices == [2]
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\] for 3 shards, "
                                         r"found 3"):
        executors.ShardingConfig(num_shards=3, shard_index=3)
    with pytest.raises(ValueError, match=r"num_shards must be in \[1, 99999\], found 0"):
        executors.ShardingConfig(num_shards=0)
    with pytest.raises(ValueError, match="executor must be one of"):
        executors.ShardingConfig(executor="slurm")


def test_the_command_refuses_a_shard_index_out_of_range(tmp_path):
    rc, out = run_cli(["-m", "multidistill.build_datasets", "--games=pong", "--num_shards=2",
                       "--shard_index=2", f"--datasets_dir={tmp_path}"])
    assert rc == 2, out
    assert "error: --shard_index must be in [0, 1] for 2 shards, found 2" in out
    assert not any(tmp_path.iterdir())


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError.
    with pytest.raises(executors.ExecutorError, match=r'pip install -e "\.\[ray\]"'):
        list(executors.run_ray([]))


def test_ray_is_an_extra_that_ci_installs():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("ray>=") for d in extras["ray"])
    assert "multidistill[ray]" in extras["test"]


# -- Ray -------------------------------------------------------------------------


def _ray():
    """The ray module; in CI, which installs the test extra, its absence
    fails the test instead of skipping it."""
    if os.environ.get("CI"):
        import ray

        return ray
    return pytest.importorskip("ray")


@pytest.mark.slow
def test_a_local_ray_cluster_builds_two_parts_of_two_games(tmp_path, teachers_dir, spec):
    ray = _ray()
    config = collect.CollectConfig(num_agent_steps=2, num_envs=1, seed=11)
    sharding = executors.ShardingConfig(num_shards=2, executor="ray")
    games = ("pong", "freeway")
    tasks = executors.shard_tasks(games, teachers_dir, tmp_path / "ray", spec, config,
                                  sharding)
    assert [t.label for t in tasks] == ["pong part 0 of 2", "pong part 1 of 2",
                                        "freeway part 0 of 2", "freeway part 1 of 2"]
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summaries = list(executors.run_ray(tasks))
    finally:
        ray.shutdown()
    assert sorted(s["label"] for s in summaries) == sorted(t.label for t in tasks)
    # The same parts recorded here, one after another.
    local_tasks = executors.shard_tasks(games, teachers_dir, tmp_path / "local", spec, config,
                                        sharding)
    assert [s["label"] for s in executors.run_local(local_tasks, progress=False)] == [
        t.label for t in local_tasks]
    paths = [str(datasets.dataset_path(tmp_path / "ray", g)) for g in games]
    first_part_steps = []
    for g, path in zip(games, paths):
        with datasets.Dataset(path) as ds, \
                datasets.Dataset(datasets.dataset_path(tmp_path / "local", g)) as here:
            rows = _all_rows(ds)
            parts = []
            for part in ds.part_paths:
                with datasets.Dataset(part) as p:
                    parts.append((p.num_episodes, p.num_agent_steps, _all_rows(p)))
            first_part_steps.append(parts[0][1])
            # No episode lost or duplicated: the dataset is its parts, in order.
            assert ds.num_episodes == sum(p[0] for p in parts)
            assert ds.num_agent_steps == sum(p[1] for p in parts)
            for name in ("observations", *datasets.STEP_FIELDS):
                np.testing.assert_array_equal(rows[name],
                                              np.concatenate([p[2][name] for p in parts]))
            assert not np.array_equal(parts[0][2]["observations"][:50],
                                      parts[1][2]["observations"][:50])
            # Recorded in a Ray worker or here, on one machine: the same sessions
            # and arrays, to the bit.
            assert ds.sessions == here.sessions and ds.part_paths != here.part_paths
            other = _all_rows(here)
            for name in ("observations", *datasets.STEP_FIELDS):
                np.testing.assert_array_equal(rows[name], other[name])
    # The sampler reads the parts as one dataset per game, drawing from both.
    cfg = pipeline.PipelineConfig(batch_size_per_game=32, block_rows=32, blocks_in_memory=8,
                                  holdout_fraction=0.0)
    source = pipeline.HDF5Source(paths, cfg)
    try:
        for g, ds in enumerate(source.datasets):
            first_part = first_part_steps[g]
            truth = _all_rows(ds)
            keys = {}
            for r in range(ds.num_agent_steps):
                keys.setdefault(truth["observations"][r].tobytes(), set()).add(r)
            sides = set()
            for i in range(30):
                x, _ = source.batch(i)
                for obs in x["frames"][x["game_id"] == g]:
                    rows = keys[obs.tobytes()]
                    if all(r < first_part for r in rows):
                        sides.add(0)
                    elif all(r >= first_part for r in rows):
                        sides.add(1)
            assert sides == {0, 1}, games[g]
    finally:
        source.close()
