"""Evaluation protocol and report numbers against hand computations."""

import json
import math
import re

import numpy as np
import pytest

from multidistill import environments, evaluation


def _scores(returns):
    return evaluation.Scores(returns=list(returns), lengths=[1] * len(returns), seconds=0.0)


def test_report_ratios_human_normalised_and_geometric_mean():
    student = {"freeway": _scores([20.0, 22.0]), "qbert": _scores([4163.9, 4163.9])}
    teacher = {"freeway": {"mean": 25.0, "std": 0.0, "episodes": 2},
               "qbert": {"mean": 8163.9, "std": 0.0, "episodes": 2}}
    r = evaluation.make_report(student, teacher, evaluation.EvalProtocol(num_episodes=2),
                               environments.Preprocessing())
    fw, qb = r["games"]["freeway"], r["games"]["qbert"]
    assert fw["student_percent_of_teacher"] == pytest.approx(84.0)        # 21 / 25
    assert fw["student_human_normalized"] == pytest.approx(21.0 / 29.6)  # random 0
    assert qb["student_percent_of_teacher_above_random"] == pytest.approx(50.0)
    assert r["geometric_mean_percent_of_teacher"] == pytest.approx(
        100 * math.sqrt(0.84 * (4163.9 / 8163.9)))
    # Student {20, 22}: resample means 20 (1/4), 21 (1/2), 22 (1/4) -> [20, 22];
    # the teacher known by its mean only -> % of teacher [80, 88].
    assert fw["student"]["ci"] == pytest.approx([20.0, 22.0])
    assert fw["student_percent_of_teacher_ci"] == pytest.approx([80.0, 88.0])
    assert fw["paired"] is False
    assert qb["student_percent_of_teacher_ci"] == pytest.approx(
        [100 * 4163.9 / 8163.9] * 2)
    md = evaluation.report_markdown(r)
    assert "| freeway (2) | 25.0 | 21.0 [20.0, 22.0] | 84.0 [80.0, 88.0] |" in md
    gm = 100 * math.sqrt(0.84 * (4163.9 / 8163.9))
    lo, hi = r["geometric_mean_percent_of_teacher_ci"]
    assert lo == pytest.approx(100 * math.sqrt(0.80 * (4163.9 / 8163.9)))
    assert hi == pytest.approx(100 * math.sqrt(0.88 * (4163.9 / 8163.9)))
    assert f"**Geometric mean of student/teacher: {gm:.1f} [{lo:.1f}, {hi:.1f}] %**" in md


def test_report_pairs_a_teacher_evaluated_on_the_same_seeds():
    student = {"pong": _scores([10.0, 20.0, 5.0])}
    teacher = {"pong": dict(_scores([20.0, 40.0, 10.0]).to_dict(),
                            source="evaluated with the student")}
    r = evaluation.make_report(student, teacher, evaluation.EvalProtocol(num_episodes=3),
                               environments.Preprocessing())
    row = r["games"]["pong"]
    assert row["paired"] is True
    # Episode by episode the student scores half: every paired resample says 50 %.
    assert row["student_percent_of_teacher_ci"] == pytest.approx([50.0, 50.0])
    assert r["protocol"]["episodes_per_game"] == {"pong": 3}
    assert "pong: evaluated with the student, paired by episode" in \
        evaluation.report_markdown(r)


def test_ratio_undefined_for_a_non_positive_teacher_score():
    student = {"pong": _scores([-20.0])}
    teacher = {"pong": {"mean": -15.0, "std": 0.0, "episodes": 1}}
    r = evaluation.make_report(student, teacher, evaluation.EvalProtocol(num_episodes=1),
                               environments.Preprocessing())
    row = r["games"]["pong"]
    assert row["student_percent_of_teacher"] is None
    assert r["geometric_mean_percent_of_teacher"] is None
    # Above random (-20.7): (-20 + 20.7) / (-15 + 20.7).
    assert row["student_percent_of_teacher_above_random"] == pytest.approx(100 * 0.7 / 5.7)


def test_protocol_defaults_and_validation():
    p = evaluation.EvalProtocol()
    assert (p.num_episodes, p.epsilon, p.num_envs, p.seed) == (0, 0.05, 16, 1_000_000)
    # Episodes go where the variance is: per game defaults, then overrides.
    assert [p.episodes(g) for g in ("pong", "qbert", "freeway", "breakout")] == [
        48, 176, 16, evaluation.DEFAULT_EPISODES]
    q = evaluation.EvalProtocol(num_episodes=5, episodes_per_game=(("qbert", 7),))
    assert (q.episodes("pong"), q.episodes("qbert")) == (5, 7)
    # Execution settings are not part of what a report states.
    assert p.to_dict(["pong", "qbert"]) == {
        "num_episodes": 0, "episodes_per_game": {"pong": 48, "qbert": 176},
        "epsilon": 0.05, "num_envs": 16, "seed": 1_000_000,
        "random_draws": "per environment"}
    # Episodes split over environments, the first ones taking the remainder.
    assert q.environment_quotas("pong").tolist() == [1] * 5
    assert evaluation.EvalProtocol(num_episodes=7, num_envs=3).environment_quotas(
        "pong").tolist() == [3, 2, 2]
    with pytest.raises(ValueError, match=r"num_episodes must be >= 0 \(0: per game\), "
                                         "found -1"):
        evaluation.EvalProtocol(num_episodes=-1)
    with pytest.raises(ValueError, match="episodes for qbert must be >= 1, found 0"):
        evaluation.EvalProtocol(episodes_per_game=(("qbert", 0),))
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\], found 2"):
        evaluation.EvalProtocol(epsilon=2)


@pytest.mark.slow
def test_episode_quota_spreads_episodes_over_envs(spec):
    calls = []

    def predict(obs):
        calls.append(len(obs))
        return np.tile([0.0, 1.0, 0.0], (len(obs), 1))  # Always UP.

    s = evaluation.evaluate("freeway", predict, "q_values", spec,
                            evaluation.EvalProtocol(num_episodes=3, num_envs=2, epsilon=0.0,
                                                    num_env_groups=2, overlap_env_groups=True),
                            progress=False)
    # Episodes are capped at 1200 frames = 300 agent steps; 3 episodes, 2 envs.
    assert len(s.returns) == 3 and s.lengths == [300, 300, 300]
    assert set(calls) == {1}  # Two groups of one environment (overlapped).
    # Same seeds, same policy: the same scores.
    s2 = evaluation.evaluate("freeway", predict, "q_values", spec,
                             evaluation.EvalProtocol(num_episodes=3, num_envs=2, epsilon=0.0),
                             progress=False)
    assert s2.returns == s.returns and s.mean > 0


@pytest.mark.slow
def test_env_groups_and_env_ranges_do_not_change_an_evaluation(spec):
    """Splitting environments into overlapped groups, or over workers
    (`env_range`), is transparent even for a stochastic policy: each
    environment has its own seed and its own random draws."""
    calls = []

    def predict(obs):
        calls.append(len(obs))
        # Logits favouring UP except where a frame's pixel sum is odd.
        up = (obs.reshape(len(obs), -1).sum(1) % 2 == 0).astype(np.float32)
        return np.stack([1 - up, 1 + 3 * up, np.zeros_like(up)], axis=1)

    def protocol(**kw):
        return evaluation.EvalProtocol(num_episodes=5, num_envs=4, epsilon=0.3, **kw)

    runs = {}
    for groups, overlap in ((1, False), (2, True), (4, True), (4, False)):
        calls.clear()
        runs[groups, overlap] = evaluation.evaluate(
            "freeway", predict, "logits", spec,
            protocol(num_env_groups=groups, overlap_env_groups=overlap), progress=False)
        # Overlapped: one call per group; lockstep: one call for all (while
        # all four play: environment 0 plays the fifth episode alone).
        assert max(calls) == (4 // groups if overlap else 4) and min(calls) == 1
    first = runs[1, False]
    assert len(first.returns) == 5
    assert len(set(first.returns)) > 1  # The episodes differ from each other.
    for run in runs.values():
        assert run.returns == first.returns and run.lengths == first.lengths
    # Environments 0-1 (3 episodes: environment 0 takes the fifth) and 2-3,
    # played apart, are the whole evaluation's episodes in its order.
    parts = [evaluation.evaluate("freeway", predict, "logits", spec, protocol(),
                                 progress=False, env_range=r) for r in ((0, 2), (2, 4))]
    assert [len(p.returns) for p in parts] == [3, 2]
    assert parts[0].returns + parts[1].returns == first.returns
    assert parts[0].lengths + parts[1].lengths == first.lengths
    with pytest.raises(ValueError, match=r"env_range must be within \[0, 4\] and not "
                                         r"empty, found \(2, 2\)"):
        evaluation.evaluate("freeway", predict, "logits", spec, protocol(),
                            progress=False, env_range=(2, 2))


def test_predict_fn_pads_narrow_batches_and_leaves_the_model_alone():
    from multidistill import networks

    model = networks.build_teacher_network(3, conv_filters=(4, 4, 4), fc_units=16)
    model.jit_compile = False
    widths = []
    predict = evaluation.predict_fn(model)
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 84, 84), dtype=np.uint8)
    expected = np.asarray(model(x))
    full = predict(x)
    narrow = predict(x[:2])
    np.testing.assert_allclose(full, expected, atol=1e-5)
    np.testing.assert_allclose(narrow, expected[:2], atol=1e-5)
    assert narrow.shape == (2, 3)
    assert model.jit_compile is False  # Its own settings are untouched.
    # Every call reached the network at the widest batch so far (5).
    plain = evaluation.predict_fn(model, jit_compile=False)
    original = model.predict_on_batch
    model.predict_on_batch = lambda obs: (widths.append(len(obs)), original(obs))[1]
    plain(x[:3]), plain(x), plain(x[:1])
    assert widths == [3, 5, 5]


def test_predict_fn_runs_a_mixed_precision_student_in_float32():
    from multidistill import networks

    student = networks.MultiTaskStudent(["pong"], [6], conv_filters=(4, 4, 4), fc_units=16,
                                        head_units=8, precision="mixed_bfloat16")
    student.build_for_inputs()
    net = student.policy_network("pong")
    x = np.random.default_rng(1).integers(0, 256, (4, 4, 84, 84), dtype=np.uint8)
    f32 = networks.MultiTaskStudent(["pong"], [6], conv_filters=(4, 4, 4), fc_units=16,
                                    head_units=8)
    f32.build_for_inputs()
    f32.set_weights(student.get_weights())
    got = evaluation.predict_fn(net)(x)
    np.testing.assert_allclose(got, np.asarray(f32.policy_network("pong")(x)), atol=1e-5)
    assert student.trunk[2].compute_dtype == "bfloat16"  # The student is unchanged.


def test_predict_fn_runs_a_mixed_precision_shared18_student_in_float32():
    # Its policy network gathers the game's actions with an operation (no dtype).
    from multidistill import networks

    kw = dict(conv_filters=(4, 4, 4), fc_units=16, head_units=8, head="shared18",
              ale_action_indices=[[0, 1, 3, 4, 11, 12]])
    student = networks.MultiTaskStudent(["pong"], [6], precision="mixed_bfloat16", **kw)
    student.build_for_inputs()
    f32 = networks.MultiTaskStudent(["pong"], [6], **kw)
    f32.build_for_inputs()
    f32.set_weights(student.get_weights())
    x = np.random.default_rng(2).integers(0, 256, (4, 4, 84, 84), dtype=np.uint8)
    got = evaluation.predict_fn(student.policy_network("pong"))(x)
    np.testing.assert_allclose(got, np.asarray(f32.policy_network("pong")(x)), atol=1e-5)


def test_teacher_score_cache_keys_on_teacher_game_protocol_and_preprocessing(tmp_path):
    cache = evaluation.TeacherScoreCache(tmp_path / "sub" / "teachers.json")
    spec = environments.Preprocessing()
    protocol = evaluation.EvalProtocol(num_episodes=4)
    key = cache.key("abc", "pong", protocol, spec)
    assert cache.get(key) is None  # No file yet.
    cache.put(key, {"mean": 1.5, "returns": [1.0, 2.0]})
    assert cache.get(key) == {"mean": 1.5, "returns": [1.0, 2.0]}
    # Another teacher file, game, episode count, seed or preprocessing misses.
    for other in (cache.key("abd", "pong", protocol, spec),
                  cache.key("abc", "qbert", protocol, spec),
                  cache.key("abc", "pong", evaluation.EvalProtocol(num_episodes=5), spec),
                  cache.key("abc", "pong", evaluation.EvalProtocol(num_episodes=4, seed=7), spec),
                  cache.key("abc", "pong", protocol,
                            environments.Preprocessing(sticky_action_prob=0.25))):
        assert other != key and cache.get(other) is None
    # Threads do not change what is measured, so they share the entry.
    assert cache.key("abc", "pong", evaluation.EvalProtocol(num_episodes=4, num_threads=1),
                     spec) == key
    # A file cut by a crash is not trusted: its teachers are played again.
    cache.path.write_text('{"x": ')
    assert cache.get(key) is None
    cache.put(key, {"mean": 2.0})
    assert json.loads(cache.path.read_text()) == {key: {"mean": 2.0}}


def test_teacher_score_cache_check_refuses_files_it_would_overwrite(tmp_path):
    """`check` passes an absent file and one `put` wrote; any other file
    (which `put` would replace) is refused by name."""
    cache = evaluation.TeacherScoreCache(tmp_path / "teachers.json")
    cache.check()  # Absent: a new cache.
    cache.put(cache.key("abc", "pong", evaluation.EvalProtocol(), environments.Preprocessing()),
              {"mean": 1.0})
    cache.check()
    for name, text, says in [("list.json", "[1, 2]", "holds a JSON list, expected an object"),
                             ("cut.json", '{"x": ', "is not a JSON file of teachers' episodes"),
                             ("card.json", '{"game": "pong", "evaluation": {}}',
                              "its key 'game' names no teacher")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(says)) as e:
            evaluation.TeacherScoreCache(path).check()
        assert str(path) in str(e.value)
        assert path.read_text() == text  # Untouched.
    with pytest.raises(ValueError, match="is a directory"):
        evaluation.TeacherScoreCache(tmp_path).check()
