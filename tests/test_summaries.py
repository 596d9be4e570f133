"""What a run logs for people: evaluation scalars, hyperparameters, smoothed curves."""

import json

import pytest

from multidistill import distiller, environments, evaluation, objectives, summaries


def _report():
    s = {"pong": evaluation.Scores(returns=[5.0, 7.0], lengths=[1, 1], seconds=0.0)}
    t = {"pong": dict(evaluation.Scores(returns=[10.0, 10.0], lengths=[1, 1],
                                        seconds=0.0).to_dict(),
                      source="evaluated with the student")}
    return evaluation.make_report(s, t, evaluation.EvalProtocol(), environments.Preprocessing())


def test_smoothing_is_tensorboards_debiased_ema():
    assert summaries.smooth([1.0, 1.0, 1.0], 0.6) == pytest.approx([1.0, 1.0, 1.0])
    # 0.5: avg 1 -> 0.5 (/0.5 = 1), then 0.25 + 1.5 = 1.75 (/0.75 = 2.333).
    assert summaries.smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])
    assert summaries.smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_evaluation_scalars_carry_the_intervals():
    out = distiller.evaluation_scalars(_report())
    # Paired (5, 10) and (7, 10): resamples give 50, 60 or 70 % -> [50, 70].
    assert out["eval/percent_of_teacher/pong"] == pytest.approx(60.0)
    assert out["eval/percent_of_teacher_ci_low/pong"] == pytest.approx(50.0)
    assert out["eval/percent_of_teacher_ci_high/pong"] == pytest.approx(70.0)
    assert out["eval/geometric_mean_percent_of_teacher"] == pytest.approx(60.0)
    assert out["eval/geometric_mean_percent_of_teacher_ci_low"] == pytest.approx(50.0)
    assert out["charts/student_return/pong"] == 6.0
    assert out["charts/teacher_return/pong"] == 10.0


def test_record_evaluation_logs_scalars_hparams_and_plots(tmp_path):
    config = distiller.DistillConfig(
        games=("pong",), objective=objectives.Distillation(temperatures=(0.01,)))
    distiller.record_evaluation(tmp_path, config, _report(), grad_step=120)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 120 and rows[-1]["eval/percent_of_teacher/pong"] == 60.0
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp["games"] == '["pong"]' and hp["num_grad_steps"] == config.num_grad_steps
    assert hp["objective.policy_loss"] == "kl"
    assert (tmp_path / "curves.png").stat().st_size > 1000
    pytest.importorskip("tensorflow")
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "eval/percent_of_teacher/pong" in acc.Tags()["tensors"]
    # The HParams plugin's session record is there for the dashboard.
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_flatten_params():
    assert summaries.flatten_params({"a": {"b": 1, "c": None}, "d": [1, 2], "e": True}) == {
        "a.b": 1, "a.c": "none", "d": "[1, 2]", "e": True}
