"""An evaluation split over workers plays the single machine's episodes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import flag_parser, make_teacher

from multidistill import distiller, evaluation, objectives, parallel_eval, pipeline, students
from multidistill import teachers as teachers_lib
from multidistill.cli import UsageError

GAMES = ("pong", "freeway")


def test_shares_split_the_environments_evenly_and_contiguously():
    assert parallel_eval.shares(16, 3) == [(0, 6), (6, 11), (11, 16)]
    assert parallel_eval.shares(16, 1) == [(0, 16)]
    # More workers than environments: one environment each.
    assert parallel_eval.shares(3, 8) == [(0, 1), (1, 2), (2, 3)]
    # The tasks of a game follow its quotas (5 episodes on 4 environments).
    protocol = evaluation.EvalProtocol(num_episodes=5, num_envs=4)
    source = parallel_eval.PolicySource("teacher", "t", "pong", {})
    tasks = parallel_eval.tasks_for(source, protocol, 2)
    assert [t.env_range for t in tasks] == [(0, 2), (2, 4)]
    assert tasks[1].label == "pong teacher environments 2-3"


def test_merge_puts_shares_back_in_environment_order():
    def share(a, b, returns, startup):
        return {"env_range": [a, b], "returns": returns, "lengths": [10] * len(returns),
                "startup_seconds": startup}

    s = parallel_eval.merge([share(3, 4, [5.0], 0.5), share(0, 3, [1.0, 2.0, 3.0], 0.2)],
                            seconds=7.0)
    assert s.returns == [1.0, 2.0, 3.0, 5.0] and s.lengths == [10] * 4
    assert (s.seconds, s.startup_seconds) == (7.0, 0.5)
    with pytest.raises(ValueError, match=r"shares \[0, 2\] and \[3, 4\] do not meet"):
        parallel_eval.merge([share(0, 2, [1.0], 0.0), share(3, 4, [1.0], 0.0)], 1.0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_workers must be >= 1, found 0"):
        parallel_eval.EvalWorkers(num_workers=0)
    with pytest.raises(ValueError, match=r"executor must be one of \['local', 'ray'\], "
                                         "found 'slurm'"):
        parallel_eval.EvalWorkers(executor="slurm")
    with pytest.raises(ValueError, match="role must be 'student' or 'teacher', found 'x'"):
        parallel_eval.PolicySource("x", "p", "pong", {})
    assert not parallel_eval.EvalWorkers().split
    assert parallel_eval.EvalWorkers(num_workers=2).split
    assert parallel_eval.EvalWorkers(executor="ray").split


def _student(tmp_path, spec):
    config = distiller.DistillConfig(
        games=GAMES, objective=objectives.Distillation(temperatures=(0.01, 1.0)),
        student_size="net3", head_units=8, num_grad_steps=1,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=8))
    # Pong acts as its Q-value teacher (argmax), Freeway as its logits one (a sample).
    student, _ = distiller.build_student(config, [6, 3], [16, 16], spec,
                                         {"teacher_kinds": ["q_values", "logits"]})
    _favour_up(student.get_layer("freeway_logits"))
    path = tmp_path / "student.keras"
    students.save_student(student, path)
    return students.load_student(path), path


def _favour_up(layer):
    """Freeway's UP made likely: the chicken crosses, and episodes differ."""
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.array([0.0, 1.2, 0.0], bias.dtype)])


def _teachers(directory, spec):
    make_teacher(directory, "pong", "q_values", spec, seed=1)
    model = make_teacher(directory, "freeway", "logits", spec, seed=2)
    _favour_up(model.layers[-1])
    teachers_lib.save_teacher(model, "freeway", "logits", spec, directory)
    return directory


def _without_timings(x):
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items()
                if "second" not in k and "per_s" not in k and k != "evaluation_workers"}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def _scores(report):
    return {g: (r["student"]["returns"], r["student"]["lengths_agent_steps"],
                r["teacher"]["returns"], r["teacher"]["lengths_agent_steps"])
            for g, r in report["games"].items()}


@pytest.mark.slow
def test_a_split_evaluation_gives_the_same_report(tmp_path, spec):
    """Students and teachers of both acting rules, 4 episodes on 3
    environments with exploration: split in 2 (local shares) or as Ray tasks
    on a local cluster, the same episodes in the same order."""
    student, path = _student(tmp_path, spec)
    teachers_dir = _teachers(tmp_path / "teachers", spec)
    protocol = evaluation.EvalProtocol(num_episodes=4, num_envs=3, epsilon=0.2)

    def run(workers, out):
        return evaluation.evaluate_run(student, list(GAMES), teachers_dir, spec, protocol,
                                       out_dir=tmp_path / out, progress=False,
                                       workers=workers, student_path=path)

    whole = run(None, "whole")
    scores = _scores(whole)
    assert all(len(s[0]) == 4 and len(s[2]) == 4 for s in scores.values())
    # The episodes differ (else any order would match).
    assert len(set(scores["freeway"][0])) > 1 and len(set(scores["freeway"][2])) > 1
    split = run(parallel_eval.EvalWorkers(num_workers=2), "split")
    assert _scores(split) == scores
    assert split["evaluation_workers"] == {"num_workers": 2, "executor": "local"}
    # The whole report (intervals, ratios, aggregates) is the same but for
    # timings and the note of how it ran.
    assert _without_timings(split) == _without_timings(whole)

    if os.environ.get("CI"):
        import ray
    else:
        ray = pytest.importorskip("ray")
    # As Ray tasks (one game: each task loads TensorFlow and its network).
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        on_ray = evaluation.evaluate_run(
            student, ["freeway"], teachers_dir, spec, protocol, progress=False,
            workers=parallel_eval.EvalWorkers(num_workers=2, executor="ray"),
            student_path=path)
    finally:
        ray.shutdown()
    assert _scores(on_ray)["freeway"] == scores["freeway"]
    assert (_without_timings(on_ray["games"]["freeway"])
            == _without_timings(whole["games"]["freeway"]))
    assert on_ray["evaluation_workers"] == {"num_workers": 2, "executor": "ray"}


@pytest.mark.slow
def test_a_teacher_cache_plays_each_teacher_once_with_the_same_report(tmp_path, spec,
                                                                       monkeypatch):
    """--teacher_cache: a second run against the same teachers plays only its
    student, and its report equals the first's (the same seeds, the same
    episodes: the ratios stay paired)."""
    student, _ = _student(tmp_path, spec)
    teachers_dir = _teachers(tmp_path / "teachers", spec)
    protocol = evaluation.EvalProtocol(num_episodes=2, num_envs=2, epsilon=0.2)
    cache = tmp_path / "teacher_episodes.json"

    def run(out):
        return evaluation.evaluate_run(student, list(GAMES), teachers_dir, spec, protocol,
                                       out_dir=tmp_path / out, progress=False,
                                       teacher_cache=cache)

    first = run("first")
    assert len(json.loads(cache.read_text())) == 2  # One entry per teacher.
    played = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: played.append(k["label"]) or real(*a, **k))
    second = run("second")
    assert played == ["pong student", "freeway student"]
    for game in GAMES:
        assert second["games"][game]["teacher"].pop("cached_from") == str(cache)
    assert _without_timings(second) == _without_timings(first)
    # Without the cache, the teacher is played again.
    played.clear()
    evaluation.evaluate_run(student, ["pong"], teachers_dir, spec, protocol, progress=False)
    assert played == ["pong teacher", "pong student"]


def test_a_split_evaluation_needs_the_student_file(tmp_path, spec, teachers_dir):
    student, _ = _student(tmp_path, spec)
    with pytest.raises(ValueError, match="loads the student from its file: give student_path"):
        evaluation.evaluate_run(student, ["pong"], teachers_dir, spec,
                                evaluation.EvalProtocol(num_episodes=1, num_envs=1),
                                progress=False, evaluate_teachers=False,
                                workers=parallel_eval.EvalWorkers(num_workers=2))


@pytest.fixture
def parse():
    yield from flag_parser()


def test_the_eval_worker_flags(parse, monkeypatch):
    import sys

    assert parse("--eval_workers=3").eval_workers_from_flags() == parallel_eval.EvalWorkers(3)
    with pytest.raises(UsageError, match="--eval_workers must be >= 1, found 0"):
        parse("--eval_workers=0").eval_workers_from_flags()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError.
    with pytest.raises(UsageError, match=r'the ray executor needs the ray package.*'
                                         r'pip install -e "\.\[ray\]"'):
        parse("--eval_workers=2", "--eval_executor=ray").eval_workers_from_flags()


def test_same_episodes_tells_identical_reports_from_different_ones(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO))  # `benchmarks` is not an installed package.
    from benchmarks import same_episodes

    def report(returns):
        policy = {"returns": returns, "lengths_agent_steps": [5] * len(returns),
                  "mean": sum(returns) / len(returns), "seconds": 1.0}
        return {"games": {"pong": {"teacher": dict(policy), "student": dict(policy)}},
                "geometric_mean_percent_of_teacher": 100.0,
                "geometric_mean_percent_of_teacher_ci": [90.0, 110.0]}

    rows, same = same_episodes.compare(report([1.0, 2.0]), report([1.0, 2.0]))
    assert same and rows[0] == "| pong | teacher | 2 | identical | 1.50 / 1.50 | 1 / 1 |"
    assert rows[-1] == ("| geometric mean % of teacher | | | identical | 100.00 [90.00, 110.00] "
                        "/ 100.00 [90.00, 110.00] | |")
    rows, same = same_episodes.compare(report([1.0, 2.0]), report([2.0, 1.0]))  # Reordered.
    assert not same and "DIFFERENT" in rows[0]
