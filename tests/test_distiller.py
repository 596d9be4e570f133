"""Training the student: learning, checkpoints, resume, refusals."""

import dataclasses
import json

import numpy as np
import pytest

from multidistill import checkpoints, distiller, pipeline


def _config(**kw):
    base = dict(games=("pong", "freeway"), temperatures=(0.01, 1.0), student_size="net3",
                head_units=16, num_grad_steps=20, checkpoint_every_steps=10,
                eval_every_steps=10, learning_rate=1e-3,
                pipeline=pipeline.PipelineConfig(batch_size_per_game=8, block_rows=64,
                                                 blocks_in_memory=4))
    base.update(kw)
    return distiller.DistillConfig(**base)


def _distiller(run_dir, datasets_dir, spec, config):
    paths = [str(datasets_dir / f"{g}.h5") for g in config.games]
    return distiller.Distiller(run_dir, config, paths, spec,
                               teacher_kinds=["q_values", "logits"])


def _metric(run_dir, tag):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[tag]) for r in rows if tag in r]


def test_training_lowers_heldout_kl_and_writes_outputs(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=60))
    summary = d.train(progress=False)
    d.close()
    assert summary["grad_steps"] == 60
    kl = _metric(tmp_path / "run", "heldout/kl/freeway")
    assert kl[0][0] == 0 and kl[-1][0] == 60
    assert kl[-1][1] < kl[0][1]
    for name in ("student.keras", "checkpoint.npz", "metrics.jsonl", "curves.png"):
        assert (tmp_path / "run" / name).exists()
    student = distiller.load_student(tmp_path / "run" / "student.keras")
    assert student.games == ["pong", "freeway"] and student.num_actions == [6, 3]
    assert student.training_config["teacher_kinds"] == ["q_values", "logits"]


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


def test_resume_with_game_weights(tmp_path, datasets_dir, spec):
    cfg = dict(pipeline=pipeline.PipelineConfig(batch_size_per_game=4, game_weights=(2.0, 1.0),
                                                block_rows=64, blocks_in_memory=4))
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=3, **cfg))
    d.train(progress=False)
    d.close()
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=5, **cfg))
    assert d.grad_step == 3
    d.close()


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


def test_run_dir_of_another_run_is_refused(tmp_path, datasets_dir, spec):
    d = _distiller(tmp_path / "run", datasets_dir, spec, _config(num_grad_steps=1))
    d.close()
    with pytest.raises(distiller.TrainingError, match="other settings.*use another --run_dir"):
        _distiller(tmp_path / "run", datasets_dir, spec, _config(loss="nll"))


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
    with pytest.raises(ValueError, match="student_size must be one of"):
        _config(student_size="huge")
    with pytest.raises(ValueError, match="precision must be one of .* found 'half'"):
        _config(precision="half")
    assert dataclasses.asdict(_config())["loss"] == "kl"
