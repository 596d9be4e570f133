"""Batch sources (HDF5Source): shares, determinism, held-out split, stacks,
requested fields, data prefixes."""

import numpy as np
import pytest
from conftest import new_writer, synthetic_episode

from multidistill import datasets, pipeline


@pytest.fixture()
def two_games(tmp_path, spec):
    paths = []
    for gi, (game, n_actions, n_feat) in enumerate([("pong", 6, 5), ("freeway", 3, 2)]):
        path = tmp_path / f"{game}.h5"
        with new_writer(path, spec, game=game, num_actions=n_actions,
                        feature_dim=n_feat) as w:
            for e in range(10):
                w.append_episode(synthetic_episode(50 + 7 * e, n_actions, n_feat,
                                                   seed=100 * gi + e))
        paths.append(str(path))
    return paths


def test_equal_shares_padding_and_labels(two_games):
    cfg = pipeline.PipelineConfig(batch_size_per_game=5, block_rows=32, blocks_in_memory=4)
    s = pipeline.HDF5Source(two_games, cfg, fields=("teacher_outputs", "teacher_features"))
    assert s.games == ("pong", "freeway") and s.batch_size == 10
    assert s.num_actions == [6, 3] and s.feature_dims == [5, 2]
    x, y = s.batch(0)
    assert set(x) == {"frames", "game_id"} and set(y) == {"teacher_outputs", "teacher_features"}
    assert x["frames"].shape == (10, 4, 84, 84) and x["frames"].dtype == np.uint8
    assert x["game_id"].dtype == np.int32
    assert y["teacher_features"].shape == (10, 5) and y["teacher_features"].dtype == np.float32
    np.testing.assert_array_equal(np.bincount(x["game_id"]), [5, 5])
    assert y["teacher_outputs"].shape == (10, 6)
    # Freeway rows (3 actions, 2 features) are zero-padded.
    fw = x["game_id"] == 1
    assert (y["teacher_outputs"][fw, 3:] == 0).all() and (y["teacher_features"][fw, 2:] == 0).all()
    # Each sample's label belongs to its observation: find the row by its frame.
    for k in range(10):
        ds = s.datasets[x["game_id"][k]]
        blk = ds.read_block(0, ds.num_agent_steps)
        matches = [r for r in range(ds.num_agent_steps)
                   if np.array_equal(blk["observations"][r], x["frames"][k])]
        assert matches, "observation not found in its dataset"
        a = ds.num_actions
        assert any(np.allclose(blk["teacher_outputs"][r], y["teacher_outputs"][k, :a])
                   for r in matches)
    s.close()


def test_every_sampled_stack_is_the_datasets_own(two_games):
    """Many batches (blocks at the file's start included, episode starts
    zero-filled): each sample equals the reader's stack of its row."""
    cfg = pipeline.PipelineConfig(batch_size_per_game=16, block_rows=16, blocks_in_memory=3)
    s = pipeline.HDF5Source(two_games, cfg, fields=("teacher_outputs", "actions"))
    truth = []
    for ds in s.datasets:
        blk = ds.read_block(0, ds.num_agent_steps)
        rows = {}  # Stack -> labels of the rows showing it (synthetic frames repeat).
        for r, o in enumerate(blk["observations"]):
            rows.setdefault(o.tobytes(), []).append(
                (int(blk["actions"][r]), blk["teacher_outputs"][r].tobytes()))
        truth.append(rows)
    seen_episode_start = False
    for i in range(0, 60, 3):
        x, y = s.batch(i)
        for k in range(len(x["game_id"])):
            g = int(x["game_id"][k])
            labels = truth[g][x["frames"][k].tobytes()]  # KeyError: not a real stack.
            a = s.datasets[g].num_actions
            assert (int(y["actions"][k]), y["teacher_outputs"][k, :a].tobytes()) in labels
            seen_episode_start |= bool((x["frames"][k, 0] == 0).all())
    assert seen_episode_start
    s.close()


def test_batches_are_a_function_of_seed_and_index(two_games):
    cfg = pipeline.PipelineConfig(batch_size_per_game=4, block_rows=16, blocks_in_memory=3)
    a = pipeline.HDF5Source(two_games, cfg)
    b = pipeline.HDF5Source(two_games, cfg)
    seq_a = [a.batch(i)[1]["teacher_outputs"] for i in range(12)]
    # b starts at batch 7, as a resumed run would.
    for i in range(7, 12):
        np.testing.assert_array_equal(b.batch(i)[1]["teacher_outputs"], seq_a[i])
    # The background iterator yields the same batches in order.
    it = a.iterate(5)
    for i in range(5, 9):
        idx, _, y = next(it)
        assert idx == i
        np.testing.assert_array_equal(y["teacher_outputs"], seq_a[i])
    it.close()
    # So does the iterator `keras.Model.fit` takes.
    fit = pipeline.fit_batches(a, 10)
    for i in (10, 11):
        x, y = next(fit)
        assert set(x) == {"frames", "game_id"} and set(y) == {"teacher_outputs"}
        np.testing.assert_array_equal(y["teacher_outputs"], seq_a[i])
    fit.close()
    c = pipeline.HDF5Source(two_games, pipeline.PipelineConfig(
        batch_size_per_game=4, block_rows=16, blocks_in_memory=3, seed=1))
    assert not np.array_equal(c.batch(0)[1]["teacher_outputs"], seq_a[0])


def test_heldout_episodes_never_trained_on(two_games):
    cfg = pipeline.PipelineConfig(batch_size_per_game=8, block_rows=16, blocks_in_memory=4,
                                  holdout_fraction=0.2)
    s = pipeline.HDF5Source(two_games, cfg)
    w = s.windows[0]
    ds = s.datasets[0]
    assert w.train_rows == ds.episode_starts[8]  # 2 of 10 episodes held out.
    held = ds.read_block(w.train_rows, ds.num_agent_steps)["teacher_outputs"]
    held_rows = {tuple(r) for r in held}
    for i in range(40):
        x, y = s.batch(i)
        for r in y["teacher_outputs"][x["game_id"] == 0]:
            assert tuple(r) not in held_rows
    hx, hy = s.holdout(0)
    assert (hx["game_id"] == 0).all()
    assert all(tuple(r) in held_rows for r in hy["teacher_outputs"])


def test_game_weights_and_bad_config(two_games):
    cfg = pipeline.PipelineConfig(batch_size_per_game=6, game_weights=(2.0, 1.0),
                                  block_rows=16, blocks_in_memory=2)
    s = pipeline.HDF5Source(two_games, cfg)
    x, _ = s.batch(3)
    np.testing.assert_array_equal(np.bincount(x["game_id"]), [8, 4])
    with pytest.raises(ValueError, match="batch_size_per_game must be >= 1, found 0"):
        pipeline.PipelineConfig(batch_size_per_game=0)
    with pytest.raises(ValueError, match="game_weights has 3 entries for 2 games"):
        pipeline.HDF5Source(two_games, pipeline.PipelineConfig(game_weights=(1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"unknown batch fields \['q_values'\]"):
        pipeline.HDF5Source(two_games, cfg, fields=("teacher_outputs", "q_values"))
    with pytest.raises(ValueError, match="max_episodes has 1 entries for 2 datasets"):
        pipeline.HDF5Source(two_games, cfg, max_episodes=[3])


def test_window_memory_is_bounded(two_games):
    cfg = pipeline.PipelineConfig(batch_size_per_game=4, block_rows=16, blocks_in_memory=3)
    s = pipeline.HDF5Source(two_games, cfg, fields=("teacher_outputs", "teacher_features"))
    for i in range(50):
        s.batch(i)
    for w in s.windows:  # 3 blocks of 16 rows (+ 3 frames of history), whatever the size.
        assert w._frames.shape == (3, 16 + 3, 84, 84)
        assert set(w._fields) == {"teacher_outputs", "teacher_features"}  # Only those asked.
        assert all(v.shape[:2] == (3, 16) for v in w._fields.values())


def test_damaged_dataset_named_on_read(two_games):
    import h5py

    # Flip bytes inside a frames chunk: fletcher32 must catch it.
    path = two_games[0]
    with h5py.File(path, "r") as f:
        offset = f["frames"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        b = fh.read(8)
        fh.seek(offset + 100)
        fh.write(bytes(x ^ 0xFF for x in b))
    with datasets.Dataset(path) as ds:
        with pytest.raises(datasets.DatasetError, match="pong.h5: reading frames.*damaged"):
            ds.read_block(0, 10)


def test_every_field_comes_with_its_row(two_games):
    """Each requested field, 1-D ones too, belongs to the sample's row."""
    fields = ("teacher_outputs", "teacher_values", "behaviour_log_probs", "rewards",
              "terminated", "actions")
    cfg = pipeline.PipelineConfig(batch_size_per_game=12, block_rows=16, blocks_in_memory=3)
    s = pipeline.HDF5Source(two_games, cfg, fields=fields)
    full = [ds.read_block(0, ds.num_agent_steps) for ds in s.datasets]
    for i in range(5):
        x, y = s.batch(i)
        assert set(y) == set(fields)
        for k in range(len(x["game_id"])):
            g = int(x["game_id"][k])
            a = s.num_actions[g]
            rows = np.flatnonzero((full[g]["teacher_outputs"] == y["teacher_outputs"][k, :a])
                                  .all(1))
            assert len(rows) == 1  # Random outputs: one row.
            r = rows[0]
            np.testing.assert_array_equal(x["frames"][k], full[g]["observations"][r])
            for name in fields[1:]:
                assert y[name][k] == full[g][name][r], name
    hx, hy = s.holdout(1)
    assert set(hy) == set(fields) and hy["teacher_values"].shape == hx["game_id"].shape
    s.close()


def test_a_source_on_a_prefix_ignores_later_episodes(two_games, spec):
    cfg = pipeline.PipelineConfig(batch_size_per_game=6, block_rows=16, blocks_in_memory=3,
                                  holdout_fraction=0.2)
    before = pipeline.HDF5Source(two_games, cfg)
    identity = before.identity()
    batches = [before.batch(i) for i in range(6)]
    holdout = before.holdout(0)
    before.close()
    assert [d["num_episodes"] for d in identity["datasets"]] == [10, 10]
    assert identity["datasets"][0]["game"] == "pong"
    assert identity["datasets"][0]["teacher_sha256"] == "a" * 64
    assert identity["datasets"][1]["sessions"][0]["behaviour"] == "teacher"
    # The files grow (a top-up: a new session of longer episodes).
    for gi, (path, n_actions, n_feat) in enumerate(zip(two_games, (6, 3), (5, 2))):
        with new_writer(path, spec, game=["pong", "freeway"][gi], num_actions=n_actions,
                        feature_dim=n_feat, seed=9) as w:
            for e in range(4):
                w.append_episode(synthetic_episode(90, n_actions, n_feat, seed=500 + e))
    grown = pipeline.HDF5Source(two_games, cfg)
    assert [d["num_episodes"] for d in grown.identity()["datasets"]] == [14, 14]
    assert not np.array_equal(grown.batch(0)[1]["teacher_outputs"],
                              batches[0][1]["teacher_outputs"])
    grown.close()
    prefix = pipeline.HDF5Source(two_games, cfg, max_episodes=[10, 10])
    assert prefix.identity() == identity
    for i, (x, y) in enumerate(batches):
        px, py = prefix.batch(i)
        np.testing.assert_array_equal(px["frames"], x["frames"])
        np.testing.assert_array_equal(py["teacher_outputs"], y["teacher_outputs"])
    np.testing.assert_array_equal(prefix.holdout(0)[1]["teacher_outputs"],
                                  holdout[1]["teacher_outputs"])
    prefix.close()



def _episodes_file(path, spec, lengths, seed0, game="pong", num_actions=6, feature_dim=5):
    with new_writer(path, spec, game=game, num_actions=num_actions,
                    feature_dim=feature_dim) as w:
        for e, t in enumerate(lengths):
            w.append_episode(synthetic_episode(t, num_actions, feature_dim, seed=seed0 + e))
    return str(path)


def test_a_dataset_set_reads_its_files_as_one(tmp_path, spec):
    """Rows numbered across the files, reads spanning a file boundary, stacks
    that never reach into the previous file, sessions shifted."""
    a = _episodes_file(tmp_path / "a.h5", spec, [30, 20], seed0=0)
    b = _episodes_file(tmp_path / "b.h5", spec, [25], seed0=10)
    with datasets.DatasetSet([a, b]) as s, datasets.Dataset(a) as da, \
            datasets.Dataset(b) as db:
        assert s.num_agent_steps == 75 and s.num_episodes == 3
        np.testing.assert_array_equal(s.episode_starts, [0, 30, 50])
        assert [(x.step_start, x.step_stop) for x in s.sessions] == [(0, 50), (50, 75)]
        block = s.read_rows(45, 60, ("teacher_outputs", "actions"), history=3)
        assert block["prefix"] == 3
        np.testing.assert_array_equal(block["offsets"], list(range(15, 20)) + list(range(10)))
        want = np.concatenate([da.read_rows(45, 50, ("actions",))["actions"],
                               db.read_rows(0, 10, ("actions",))["actions"]])
        np.testing.assert_array_equal(block["actions"], want)
        # The stack of b's first row is its own frame and zeros, not a's last frames.
        obs = datasets.stack_rows(block, np.array([5]), 4)[0]
        np.testing.assert_array_equal(obs[-1], db.read_block(0, 1)["observations"][0, -1])
        assert (obs[:3] == 0).all()
        # A prefix per file.
        with datasets.DatasetSet([a, b], max_episodes=[1, 1]) as p:
            assert p.num_agent_steps == 55 and p.num_episodes == 2


def test_a_dataset_set_refuses_files_of_another_teacher(tmp_path, spec):
    a = _episodes_file(tmp_path / "a.h5", spec, [30], seed0=0)
    path = tmp_path / "b.h5"
    with new_writer(path, spec, teacher_sha="b" * 64) as w:
        w.append_episode(synthetic_episode(20, seed=1))
    with pytest.raises(datasets.DatasetError, match="teacher_sha256 differs"):
        datasets.DatasetSet([a, str(path)])


def test_next_step_fields_are_the_following_row_of_the_episode(tmp_path, spec):
    """next_* of a sampled row t: the observation and labels of row t+1 when
    step t did not end the episode, zeros and next_valid 0 where it did."""
    paths = [_episodes_file(tmp_path / "a.h5", spec, [9, 13, 6], seed0=0),
             _episodes_file(tmp_path / "b.h5", spec, [11, 7], seed0=5)]
    cfg = pipeline.PipelineConfig(batch_size_per_game=32, block_rows=8, blocks_in_memory=2,
                                  holdout_fraction=0.0)
    fields = ("teacher_outputs", "next_frames", "next_teacher_outputs",
              "next_teacher_values", "next_valid")
    s = pipeline.HDF5Source([paths], cfg, fields=fields)
    ds = s.datasets[0]
    truth = ds.read_block(0, ds.num_agent_steps)
    ends = truth["terminated"] | truth["truncated"]
    seen_end = seen_inner = False
    for i in range(6):
        x, y = s.batch(i)
        for k in range(len(x["game_id"])):
            rows = [r for r in range(ds.num_agent_steps)
                    if np.array_equal(truth["observations"][r], x["frames"][k])
                    and np.allclose(truth["teacher_outputs"][r], y["teacher_outputs"][k])]
            assert len(rows) == 1
            r = rows[0]
            if ends[r]:
                seen_end = True
                assert y["next_valid"][k] == 0 and not y["next_frames"][k].any()
                assert not y["next_teacher_outputs"][k].any()
            else:
                seen_inner = True
                assert y["next_valid"][k] == 1
                np.testing.assert_array_equal(y["next_frames"][k], truth["observations"][r + 1])
                np.testing.assert_allclose(y["next_teacher_outputs"][k],
                                           truth["teacher_outputs"][r + 1])
                assert y["next_teacher_values"][k] == truth["teacher_values"][r + 1]
    assert seen_end and seen_inner
    s.close()
