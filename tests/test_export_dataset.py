"""Minari export (multidistill.export_dataset): a tiny dataset made here is
exported, loaded back with minari and compared value by value with what the
dataset reader gives; bad input stops with one message and exit code 2.

Tests that need minari skip without it (`pip install "multidistill[minari]"`);
the message for a missing minari is tested either way.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import new_writer, run_cli, synthetic_episode

from multidistill import datasets, export_dataset

LENGTHS = (5, 2, 7)  # Episodes of the tiny dataset; the second shorter than a stack.


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    """Minari's default root points into the test's folder: nothing goes to ~."""
    root = tmp_path / "minari_root"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _make_dataset(path, spec):
    """Three episodes in two sessions: the teacher acts, then a mixture."""
    with new_writer(path, spec, feature_dim=5) as w:
        w.append_episode(synthetic_episode(LENGTHS[0], seed=1))
        w.append_episode(synthetic_episode(LENGTHS[1], seed=2))
        w.start_session(datasets.Session(seed=7, behaviour="mixture", beta=0.5, epsilon=0.05,
                                         behaviour_sha256="b" * 64, labeller_sha256="a" * 64))
        episode = synthetic_episode(LENGTHS[2], seed=3)
        episode["terminated"][-1], episode["truncated"][-1] = False, True  # Cut by the cap.
        w.append_episode(episode)
    return path


@pytest.fixture
def tiny(tmp_path, spec):
    return _make_dataset(tmp_path / "pong.h5", spec)


def test_round_trip_gives_the_readers_values(tiny, tmp_path, minari_root, monkeypatch):
    minari = pytest.importorskip("minari")
    out_dir = tmp_path / "exported"
    target = export_dataset.export_minari(tiny, "multidistill/pong-test-v0", out_dir)
    assert target == out_dir / "multidistill" / "pong-test-v0"
    assert not minari_root.exists()  # Only the output folder was written to.
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []  # No staging.

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(out_dir))
    loaded = minari.load_dataset("multidistill/pong-test-v0")
    assert loaded.total_episodes == len(LENGTHS)
    assert loaded.total_steps == sum(LENGTHS)
    assert loaded.observation_space.shape == (4, 84, 84)
    assert loaded.observation_space.dtype == np.uint8
    assert loaded.action_space.n == 3
    assert "multidistill/pong-test-v0" in minari.list_local_datasets()

    with datasets.Dataset(tiny) as ds:
        for e, episode in enumerate(loaded.iterate_episodes()):
            start, n = int(ds.episode_starts[e]), LENGTHS[e]
            block = ds.read_block(start, start + n)
            assert len(episode) == n
            # N + 1 observations: the reader's stacks, then the last one repeated.
            assert episode.observations.shape == (n + 1, 4, 84, 84)
            assert episode.observations.dtype == np.uint8
            np.testing.assert_array_equal(episode.observations[:n], block["observations"])
            np.testing.assert_array_equal(episode.observations[n], block["observations"][-1])
            np.testing.assert_array_equal(episode.actions, block["actions"])
            np.testing.assert_array_equal(episode.rewards, block["rewards"])
            np.testing.assert_array_equal(episode.terminations, block["terminated"])
            np.testing.assert_array_equal(episode.truncations, block["truncated"])
            infos = episode.infos
            assert set(infos) == {"teacher_outputs", "teacher_values", "teacher_features",
                                  "behaviour_log_probs", "observation_recorded"}
            np.testing.assert_array_equal(infos["teacher_outputs"][:n], block["teacher_outputs"])
            np.testing.assert_array_equal(infos["teacher_outputs"][n],
                                          block["teacher_outputs"][-1])
            np.testing.assert_array_equal(infos["teacher_values"][:n], block["teacher_values"])
            assert infos["teacher_features"].dtype == np.float16
            np.testing.assert_array_equal(infos["teacher_features"][:n],
                                          block["teacher_features"])
            np.testing.assert_array_equal(infos["behaviour_log_probs"][:n],
                                          block["behaviour_log_probs"])
            assert np.isnan(infos["behaviour_log_probs"][n])
            assert infos["observation_recorded"].tolist() == [True] * n + [False]
        # The stack never reaches into the previous episode: the second episode's
        # first observation is three zero frames and its own first frame.
        second = loaded[1].observations[0]
        assert not second[:3].any()
        np.testing.assert_array_equal(second[3], ds.read_rows(LENGTHS[0], LENGTHS[0] + 1)
                                      ["frames"][-1])
        sessions = [s.to_dict() for s in ds.sessions]

    meta = loaded.storage.metadata
    md = meta[export_dataset.METADATA_KEY]
    assert md["game"] == "pong" and md["teacher"]["sha256"] == "a" * 64
    assert md["teacher"]["kind"] == "q_values" and md["teacher"]["value_source"] == "max_q"
    assert md["sessions"] == sessions
    assert [s["behaviour"] for s in md["sessions"]] == ["teacher", "mixture"]
    assert md["preprocessing"]["frame_stack"] == 4 and md["preprocessing"]["noop_max"] == 30
    assert md["source"]["num_agent_steps"] == sum(LENGTHS)
    assert md["final_observation"].startswith("repeat_last")
    assert "teacher_outputs" in md["infos"]
    assert meta["jpeg_encoding"] is False  # Frames stored losslessly.
    episode_meta = list(loaded.storage.get_episode_metadata(range(len(LENGTHS))))
    assert [int(m["session"]) for m in episode_meta] == [0, 0, 1]
    assert [int(m["source_first_step"]) for m in episode_meta] == [0, 5, 7]

    # Loading by path (no environment variable) gives the same dataset.
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    by_path = minari.MinariDataset(target / "data")
    np.testing.assert_array_equal(by_path[2].actions, loaded[2].actions)


def test_teacher_without_value_or_features_exports_outputs_only(tmp_path, spec):
    minari = pytest.importorskip("minari")
    path = tmp_path / "freeway.h5"
    with datasets.DatasetWriter(
            path, game="freeway", rom_md5="0" * 32, num_actions=3, feature_dim=0,
            preprocessing=spec, teacher_sha256="c" * 64, teacher_kind="logits",
            teacher_path="t.keras", teacher_value_source="none", seed=0) as w:
        w.start_session(datasets.Session(seed=0, behaviour="random", beta=0.0, epsilon=1.0,
                                         behaviour_sha256="", labeller_sha256="c" * 64))
        w.append_episode(synthetic_episode(4, feature_dim=0))
    target = export_dataset.export_minari(path, output_dir=tmp_path / "out")
    assert target == tmp_path / "out" / "multidistill" / "freeway-random-v0"  # The default id.
    loaded = minari.MinariDataset(target / "data")
    episode = loaded[0]
    assert loaded.storage.metadata["multidistill"]["action_meanings"] == ["NOOP", "UP", "DOWN"]
    assert set(episode.infos) == {"teacher_outputs", "behaviour_log_probs",
                                  "observation_recorded"}


def test_the_default_root_is_minaris(tiny, minari_root):
    minari = pytest.importorskip("minari")
    target = export_dataset.export_minari(tiny)
    assert target == minari_root / "multidistill" / "pong-mixed-v0"
    assert minari.load_dataset("multidistill/pong-mixed-v0").total_steps == sum(LENGTHS)


def test_an_existing_id_or_a_malformed_one_is_refused(tiny, tmp_path):
    pytest.importorskip("minari")
    out = tmp_path / "out"
    target = export_dataset.export_minari(tiny, "ns/pong-v1", out)
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(export_dataset.ExportError, match="exists already"):
        export_dataset.export_minari(tiny, "ns/pong-v1", out)
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert target.is_dir()
    for bad in ("pong", "../escape-v0", "with space-v0", "ns/pong-v0x"):
        with pytest.raises(export_dataset.ExportError, match="not a Minari dataset id"):
            export_dataset.export_minari(tiny, bad, out)


def test_a_dataset_without_episodes_is_refused(tmp_path, spec):
    pytest.importorskip("minari")
    path = tmp_path / "empty.h5"
    new_writer(path, spec).close()
    with pytest.raises(export_dataset.ExportError, match="holds no episodes"):
        export_dataset.export_minari(path, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_minari_the_message_says_what_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` fails.
    with pytest.raises(export_dataset.ExportError, match=r'pip install "multidistill\[minari\]"'):
        export_dataset.export_minari(tiny)


# -- the command ------------------------------------------------------------------------


def _export(args, env):
    return run_cli(["-m", "multidistill.export_dataset", "--to=minari", *args], env=env)


@pytest.mark.slow
def test_the_command_and_the_subcommand_export(tiny, tmp_path, minari_root):
    minari = pytest.importorskip("minari")
    env = {"MINARI_DATASETS_PATH": str(minari_root)}
    rc, out = _export([f"--dataset={tiny}", "--dataset_id=multidistill/pong-teacher-v0",
                       f"--output_dir={tmp_path / 'out'}"], env)
    assert rc == 0, out
    assert "multidistill/pong-teacher-v0" in out
    loaded = minari.MinariDataset(tmp_path / "out" / "multidistill" / "pong-teacher-v0" / "data")
    assert loaded.total_steps == sum(LENGTHS)
    rc, out = run_cli(["-m", "multidistill", "export-dataset", "--to=minari",
                       f"--dataset={tiny}"], env=env)
    assert rc == 0, out
    assert (minari_root / "multidistill" / "pong-mixed-v0" / "data").is_dir()


@pytest.mark.slow
def test_bad_input_exits_2_with_one_message(tiny, tmp_path, minari_root):
    pytest.importorskip("minari")
    env = {"MINARI_DATASETS_PATH": str(minari_root)}
    text = tmp_path / "notes.h5"
    text.write_text("not a dataset")
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    cases = {
        "does not exist": [f"--dataset={tmp_path / 'missing.h5'}"],
        "is not an HDF5 file": [f"--dataset={text}"],
        "not a multidistill dataset": [f"--dataset={other}"],
        "--dataset is required": [],
        "not a Minari dataset id": [f"--dataset={tiny}", "--dataset_id=pong"],
    }
    for expected, args in cases.items():
        rc, out = _export(args, env)
        assert rc == 2 and expected in out and "Traceback" not in out, (args, out)
    rc, out = _export(["--to=parquet", f"--dataset={tiny}"], env)
    assert rc != 0 and "minari" in out, out
    assert not minari_root.exists() or not any(minari_root.rglob("data"))


@pytest.mark.slow
def test_the_command_without_minari_exits_2_saying_what_to_install(tiny, minari_root):
    code = ("import runpy, sys; sys.modules['minari'] = None; "
            f"sys.argv = ['export_dataset', '--to=minari', '--dataset={tiny}']; "
            "runpy.run_module('multidistill.export_dataset', run_name='__main__', "
            "alter_sys=True)")
    rc, out = run_cli(["-c", code], env={"MINARI_DATASETS_PATH": str(minari_root)})
    assert rc == 2, out
    assert 'pip install "multidistill[minari]"' in out and "Traceback" not in out, out


def test_provenance_is_json(tiny):
    with datasets.Dataset(tiny) as ds:
        md = export_dataset.provenance(ds)
    assert json.loads(json.dumps(md)) == md
    assert md["action_meanings"] is None  # 3 actions: not Pong's 6, so no meanings.
