"""Training the student: learning, checkpoints, resume, refusals."""

import json
import shutil

import numpy as np
import pytest
from conftest import use_fake_atari

from multidistill import checkpoints, collect, distiller, objectives, pipeline, students, teachers


def _config(loss="kl", temperatures=(0.01, 1.0), feature_beta=0.0, **kw):
    base = dict(games=("pong", "freeway"),
                objective=objectives.Distillation(policy_loss=loss, temperatures=temperatures,
                                                  feature_beta=feature_beta),
                student_size="net3", head_units=16, num_grad_steps=20,
                checkpoint_every_steps=10, eval_every_steps=10, learning_rate=1e-3,
                pipeline=pipeline.PipelineConfig(batch_size_per_game=8, block_rows=64,
                                                 blocks_in_memory=4))
    base.update(kw)
    return distiller.DistillConfig(**base)


def _source(run_dir, datasets_dir, config, prefix=True):
    """The HDF5 source of a run: on the data prefix the run started from."""
    paths = [str(datasets_dir / f"{g}.h5") for g in config.games]
    return pipeline.HDF5Source(paths, config.pipeline, fields=config.objective.fields,
                               max_episodes=distiller.data_prefix(run_dir) if prefix else None)


def _distiller(run_dir, datasets_dir, spec, config, prefix=True):
    source = _source(run_dir, datasets_dir, config, prefix)
    try:
        return distiller.Distiller(run_dir, config, source, spec,
                                   teacher_kinds=["q_values", "logits"])
    except BaseException:
        source.close()
        raise


def _metric(run_dir, tag):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[tag]) for r in rows if tag in r]


@pytest.mark.slow
def test_training_lowers_heldout_kl_and_writes_outputs(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=60))
    assert d.student.objective == d.config.objective  # What compute_loss uses.
    summary = d.train(progress=False)
    x, _ = d.source.holdout(1)
    trained = np.asarray(d.student.predict_on_batch(x)["logits"])
    d.close()
    assert summary["grad_steps"] == 60 and summary["trained_steps"] == 60
    kl = _metric(tmp_path / "run", "heldout/kl/freeway")
    assert kl[0][0] == 0 and kl[-1][0] == 60
    assert kl[-1][1] < kl[0][1]
    for name in ("student.keras", "checkpoint.npz", "metrics.jsonl", "curves.png"):
        assert (tmp_path / "run" / name).exists()
    student = students.load_student(tmp_path / "run" / "student.keras")
    assert student.games == ["pong", "freeway"] and student.num_actions == [6, 3]
    assert student.training_config["teacher_kinds"] == ["q_values", "logits"]
    assert student.training_config["objective"]["temperatures"] == [0.01, 1.0]
    # The saved student is the trained one.
    np.testing.assert_allclose(np.asarray(student.predict_on_batch(x)["logits"]), trained,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path, datasets_dir, spec):
    straight = _distiller(tmp_path / "a", datasets_dir, spec, _config())
    straight.train(progress=False)
    w_straight = [np.asarray(v) for v in straight.student.weights]
    straight.close()

    first = _distiller(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=10))
    first.train(progress=False)
    first.close()
    assert checkpoints.read_state(tmp_path / "b" / "checkpoint.npz")["grad_step"] == 10
    resumed = _distiller(tmp_path / "b", datasets_dir, spec, _config(num_grad_steps=20))
    assert resumed.grad_step == 10
    resumed.train(progress=False)
    assert resumed.grad_step == 20
    for a, b in zip(w_straight, resumed.student.weights):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
    resumed.close()


@pytest.mark.slow
def test_resume_with_game_weights(tmp_path, datasets_dir, spec):
    cfg = dict(pipeline=pipeline.PipelineConfig(batch_size_per_game=4, game_weights=(2.0, 1.0),
                                                block_rows=64, blocks_in_memory=4))
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=3, **cfg))
    d.train(progress=False)
    d.close()
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=5, **cfg))
    assert d.grad_step == 3
    d.close()


@pytest.mark.slow
def test_a_run_resumes_in_the_other_precision(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec,
                   _config(num_grad_steps=10, precision="mixed_bfloat16"))
    assert d.student.trunk[2].compute_dtype == "bfloat16"
    d.train(progress=False)
    d.close()
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=12))
    assert d.grad_step == 10 and d.student.trunk[2].compute_dtype == "float32"
    d.train(progress=False)
    assert d.grad_step == 12
    d.close()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["precision"] == "float32"
    assert "precision" not in saved["identity"]["config"]


@pytest.mark.slow
def test_run_dir_of_another_run_is_refused(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=1))
    d.close()
    with pytest.raises(distiller.TrainingError,
                       match=r"other settings.*differs in: config\).*use another --run_dir"):
        _distiller(tmp_path / "run", datasets_dir, spec, _config(loss="nll"))
    with pytest.raises(distiller.TrainingError, match=r"differs in: config\)"):
        _distiller(tmp_path / "run", datasets_dir, spec, _config(temperatures=(0.01, 0.5)))
    swapped = _config(games=("freeway", "pong"), temperatures=(1.0, 0.01))
    source = _source(tmp_path / "other", datasets_dir, _config())
    with pytest.raises(distiller.TrainingError, match="the batch source serves the games "
                                                      r"\['pong', 'freeway'\], the run trains"):
        distiller.Distiller(tmp_path / "other", swapped, source, spec, ["logits", "q_values"])
    source.close()


@pytest.mark.slow
def test_a_shared18_run_trains_saves_and_refuses_the_other_head(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec,
                   _config(num_grad_steps=10, student_head="shared18"))
    kernel0 = d.student.shared_head.get_weights()[0]
    d.train(progress=False)
    x, _ = d.source.holdout(1)
    trained = np.asarray(d.student.predict_on_batch(x)["logits"])
    kernel1 = d.student.shared_head.get_weights()[0]
    d.close()
    # Only the actions Pong or Freeway have were trained.
    unused = [6, 7, 8, 9, 10, 13, 14, 15, 16, 17]
    np.testing.assert_array_equal(kernel1[:, unused], kernel0[:, unused])
    assert not np.array_equal(kernel1, kernel0)
    student = students.load_student(tmp_path / "run" / "student.keras")
    assert student.head == "shared18"
    np.testing.assert_allclose(np.asarray(student.predict_on_batch(x)["logits"]), trained,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(distiller.TrainingError, match=r"differs in: config\)"):
        _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=12))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=10))
    d.train(progress=False)
    d.close()
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=20))
    calls = []

    def poisoned(x, y):
        calls.append(1)
        return float("nan") if len(calls) == 3 else 0.5

    d.student.train_on_batch = poisoned
    with pytest.raises(distiller.TrainingError, match="became nan at gradient step 13"):
        d.train(progress=False)
    d.close()
    assert checkpoints.read_state(tmp_path / "run" / "checkpoint.npz")["grad_step"] == 10


def test_config_validation():
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        _config(temperatures=(0.01, -1.0))
    with pytest.raises(ValueError, match="temperatures has 1 values for 2 games"):
        _config(temperatures=(0.01,))
    with pytest.raises(ValueError, match="student_size must be one of"):
        _config(student_size="huge")
    with pytest.raises(ValueError, match="precision must be one of .* found 'half'"):
        _config(precision="half")
    # The objective given is the one recorded (not a default).
    d = _config(loss="nll", feature_beta=0.5).to_dict()
    assert d["objective"] == {"name": "distillation", "policy_loss": "nll",
                              "temperatures": [0.01, 1.0], "feature_beta": 0.5,
                              "policy_weight": 1.0}
    assert _config().to_dict()["objective"]["policy_loss"] == "kl"
    identity = _config(num_grad_steps=5, precision="mixed_bfloat16").identity()
    assert identity == _config(num_grad_steps=7).identity()  # Budget and precision aside.
    assert identity != _config(loss="mse").identity()
    with pytest.raises(ValueError, match=r"student_head must be one of \['per_game', "
                                         r"'shared18'\], found 'shared'"):
        _config(student_head="shared")


def test_the_student_head_is_part_of_a_runs_identity():
    per_game, shared18 = _config().identity(), _config(student_head="shared18").identity()
    assert shared18["student_head"] == "shared18" and shared18 != per_game
    # Runs from before the choice (a head per game) resume unchanged.
    assert "student_head" not in per_game
    assert _config().to_dict()["student_head"] == "per_game"


def test_build_student_with_a_shared_18_way_head(spec):
    config = _config(student_head="shared18", feature_beta=0.01)
    student, _ = distiller.build_student(config, [6, 3], [16, 8], spec)
    assert student.head == "shared18" and student.game_heads == []
    # From ALE's action sets, recorded in the student (it loads without ALE).
    assert student.ale_action_indices == [[0, 1, 3, 4, 11, 12], [0, 2, 5]]
    assert student.get_config()["ale_action_indices"] == student.ale_action_indices
    assert student.training_config["student_head"] == "shared18"
    assert student.feature_projections_enabled
    assert distiller.build_student(_config(), [6, 3], [16, 8], spec)[0].head == "per_game"


@pytest.mark.slow
def test_the_run_records_its_objective_and_data(tmp_path, datasets_dir, spec):
    config = _config(loss="nll", feature_beta=0.01, num_grad_steps=2)
    d = _distiller(tmp_path / "run", datasets_dir, spec, config)
    assert d.source.fields == ("teacher_outputs", "teacher_features")
    assert d.student.objective == config.objective
    assert d.student.feature_projections_enabled  # feature_beta > 0 needs them.
    d.train(progress=False)
    d.close()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["objective"]["policy_loss"] == "nll"
    assert saved["identity"]["config"]["objective"]["feature_beta"] == 0.01
    data = saved["identity"]["data"]["datasets"]
    assert [x["game"] for x in data] == ["pong", "freeway"]
    assert distiller.data_prefix(tmp_path / "run") == [x["num_episodes"] for x in data]
    assert distiller.data_prefix(tmp_path / "nothing") is None
    loaded = students.load_student(tmp_path / "run" / "student.keras")
    assert loaded.training_config["objective"]["policy_loss"] == "nll"


@pytest.mark.slow
def test_a_run_resumes_on_the_prefix_it_started_from(tmp_path, datasets_dir, teachers_dir,
                                                      spec, monkeypatch):
    """The dataset grows (a top-up) between the start and the resume: the
    resumed run sees exactly the batches of the data it started from."""
    data = tmp_path / "data"
    shutil.copytree(datasets_dir, data)
    straight = _distiller(tmp_path / "a", data, spec, _config())
    straight.train(progress=False)
    w_straight = [np.asarray(v) for v in straight.student.weights]
    straight_batches = [straight.source.batch(i) for i in range(10, 20)]
    straight.close()

    first = _distiller(tmp_path / "b", data, spec, _config(num_grad_steps=10))
    first.train(progress=False)
    first.close()
    prefix = distiller.data_prefix(tmp_path / "b")

    # The pong dataset grows by a second session.
    use_fake_atari(monkeypatch, length=50)
    teacher = teachers.load_teacher("pong", teachers_dir, spec)
    grown = collect.build_dataset(
        teacher, data / "pong.h5",
        collect.CollectConfig(num_agent_steps=prefix_steps(data / "pong.h5") + 200,
                              num_envs=2), spec, progress=False)
    assert grown["num_episodes"] > prefix[0]

    # Opened on the whole file, the run is refused: its data differ.
    with pytest.raises(distiller.TrainingError, match=r"differs in: data\)"):
        _distiller(tmp_path / "b", data, spec, _config(), prefix=False)
    resumed = _distiller(tmp_path / "b", data, spec, _config())
    assert resumed.grad_step == 10
    assert [x["num_episodes"] for x in resumed.source.identity()["datasets"]] == prefix
    for i, (x, y) in enumerate(straight_batches, start=10):
        rx, ry = resumed.source.batch(i)
        np.testing.assert_array_equal(rx["frames"], x["frames"])
        np.testing.assert_array_equal(ry["teacher_outputs"], y["teacher_outputs"])
    resumed.train(progress=False)
    assert resumed.grad_step == 20
    for a, b in zip(w_straight, resumed.student.weights):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
    resumed.close()


def prefix_steps(path):
    from multidistill import datasets

    with datasets.Dataset(path) as ds:
        return ds.num_agent_steps


def test_a_source_without_the_objectives_fields_is_refused(tmp_path, spec):
    from conftest import new_writer, synthetic_episode

    path = tmp_path / "pong.h5"
    with new_writer(path, spec, game="pong", num_actions=6) as w:
        for e in range(3):
            w.append_episode(synthetic_episode(20, 6, seed=e))
    config = _config(games=("pong",), temperatures=(0.01,), feature_beta=0.1)
    source = pipeline.HDF5Source([str(path)], config.pipeline)  # Outputs only.
    with pytest.raises(distiller.TrainingError,
                       match=r"loads the fields \['teacher_outputs'\], the objective also "
                             r"needs \['teacher_features'\]"):
        distiller.Distiller(tmp_path / "run", config, source, spec, ["q_values"])
    source.close()
    assert not (tmp_path / "run").exists()  # Refused before writing anything.


@pytest.mark.slow
def test_training_in_several_calls_counts_every_call(tmp_path, datasets_dir, spec):
    """A run trained in parts (collection rounds: set the step count, swap the
    source, train again) resumes where it was and adds each call's time."""
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=6))
    first = d.train(progress=False)
    d.set_num_grad_steps(10)
    d.use_source(_source(tmp_path / "run", datasets_dir, d.config))
    second = d.train(progress=False)
    d.close()
    assert (first["grad_steps"], second["grad_steps"], second["trained_steps"]) == (6, 10, 4)
    assert second["run_train_seconds"] == pytest.approx(
        first["seconds"] + second["seconds"], rel=0.05)
    # Saved at the last checkpoint, a moment before the call ended.
    saved = checkpoints.read_state(tmp_path / "run" / "checkpoint.npz")["train_seconds"]
    assert first["seconds"] < saved <= second["run_train_seconds"]
