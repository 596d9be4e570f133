"""Real-time distillation (`multidistill.realtime`): students that distil while
the teacher trains, on fake environments and evaluations."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from test_agents_loop import FakeAtari

from multidistill import checkpoints, environments, evaluation, realtime, students
from multidistill.agents import dqn, loop, ppo, runner

SPEC = environments.Preprocessing()
TINY = dict(conv_filters=(4, 8, 8), fc_units=16)
# Iterations of 16 vector steps of 2 environments: 32 agent steps, 128 frames;
# learning from agent step 40, one gradient step per 4 agent steps.
CONFIG = runner.RunConfig(num_env_frames=768, eval_every_frames=256, eval_episodes=1,
                          checkpoint_every_s=3600)


def _agent(seed=0):
    return dqn.DQN("pong", 6, SPEC, dqn.DQNConfig(
        num_envs=2, rollout_length=16, replay_capacity=4_000, learning_starts=40, **TINY),
        total_agent_steps=192, seed=seed)


# The students of the tests start at once, on all the replay, on the live
# teacher (the defaults wait for 500,000 frames and average the teacher).
LIVE = dict(start_frames=0, recent_steps=0, label_horizon=0)


def _students(agent, directory, **kw):
    config = realtime.RealtimeConfig(**dict(dict(sizes=("tiny", "net3"), **LIVE), **kw))
    rt = realtime.RealtimeDistillation(config, "pong", 6, agent.kind, SPEC, directory)
    rt.build(agent.teacher_model)
    return rt


@pytest.fixture
def fakes(monkeypatch):
    """Fake environments; evaluations scoring each policy by its call count."""
    scored = []

    def make_vector_envs(game, spec, num_envs, num_threads=0, num_groups=0):
        return [FakeAtari(lengths=(5, 7)[:num_envs])]

    def evaluate(game, predict, kind, spec, protocol, progress=True, label=""):
        assert predict(np.zeros((1,) + SPEC.observation_shape, np.uint8)).shape == (1, 6)
        scored.append(float(len(scored) + 1))
        return evaluation.Scores(returns=[scored[-1], scored[-1] + 2], lengths=[10, 10],
                                 seconds=0.1)

    monkeypatch.setattr(environments, "make_vector_envs", make_vector_envs)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    return scored


def _weights(rt):
    return {size: [np.asarray(w) for w in s.get_weights()] for size, (s, _) in
            rt.students.items()}


def test_students_step_with_the_teacher_are_evaluated_and_resume_with_it(tmp_path, fakes):
    agent = _agent()
    observe = agent.observe

    def observe_then_signal(step):
        if agent.agent_steps == 72:  # Within the third iteration.
            os.kill(os.getpid(), signal.SIGTERM)
        return observe(step)

    agent.observe = observe_then_signal
    rt = _students(agent, tmp_path / "ck" / "realtime")
    initial = _weights(rt)
    run = runner.Runner(agent, "dqn", "pong", SPEC, CONFIG, tmp_path / "t", tmp_path / "ck",
                        companions=[rt])
    assert run.train(progress=False) == "SIGTERM"
    # One student step per teacher gradient step, on the teacher's replay.
    assert agent.agent_steps == 96 and agent.gradient_steps == (96 - 40) // 4
    assert rt.counters["grad_steps"] == agent.gradient_steps
    for size, weights in _weights(rt).items():
        assert any(not np.array_equal(a, b) for a, b in zip(weights, initial[size])), size
    saved = _weights(rt)
    state = checkpoints.read_state(tmp_path / "ck" / "realtime" / "tiny" / "checkpoint.npz")
    assert state["counters"]["grad_steps"] == agent.gradient_steps and state["size"] == "tiny"
    on_disk = students.load_student(tmp_path / "ck" / "realtime" / "net3" / "student.keras")
    assert on_disk.games == ["pong"] and on_disk.head_units == 0
    for a, b in zip(on_disk.get_weights(), saved["net3"]):
        np.testing.assert_array_equal(a, b)
    # The evaluation at 256 frames: the teacher, then each student.
    entries = realtime.read_evaluations(tmp_path / "ck" / "realtime" / "evaluations.jsonl")
    assert [e["frames"] for e in entries] == [256]
    assert entries[0]["teacher"]["mean"] == 2.0
    assert {s: v["mean"] for s, v in entries[0]["students"].items()} == {"tiny": 3.0,
                                                                         "net3": 4.0}
    # Each student's agreement with the teacher on states of its replay.
    assert set(entries[0]["agreement"]) == {"tiny", "net3"}
    assert all(0.0 <= a <= 1.0 for a in entries[0]["agreement"].values())

    # A new process: the same command resumes the students with their teacher.
    agent2 = _agent()
    rt2 = _students(agent2, tmp_path / "ck" / "realtime")
    resumed = runner.Runner(agent2, "dqn", "pong", SPEC, CONFIG, tmp_path / "t",
                            tmp_path / "ck", companions=[rt2])
    assert resumed.restore() and agent2.agent_steps == 96
    assert rt2.counters["grad_steps"] == agent.gradient_steps
    for size, weights in _weights(rt2).items():
        for a, b in zip(weights, saved[size]):
            np.testing.assert_array_equal(a, b)
    assert resumed.train(progress=False) == ""
    # The replay memory is not checkpointed: learning starts again 40 agent steps in.
    assert agent2.agent_steps == 192
    assert rt2.counters["grad_steps"] == agent2.gradient_steps > 14
    entries = realtime.read_evaluations(tmp_path / "ck" / "realtime" / "evaluations.jsonl")
    assert [e["frames"] for e in entries] == [256, 512, 768]
    assert entries[1]["teacher"]["mean"] == 5.0 and entries[1]["students"]["net3"]["mean"] == 7.0
    report = (tmp_path / "ck" / "realtime" / "report.md").read_text()
    assert "| 768 |" in report and "10.0 (125 %)" in report
    assert "| tiny: top-1 agreement | net3: top-1 agreement |" in report
    assert (tmp_path / "ck" / "realtime" / "curves.png").exists()
    rows = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "realtime/tiny/mean_return" in r]
    assert [(r["step"], r["realtime/tiny/mean_return"], r["realtime/tiny/percent_of_teacher"])
            for r in evals] == [(256, 3.0, 150.0), (512, 6.0, 120.0), (768, 9.0, 112.5)]
    assert evals[0]["realtime/tiny/mean_return_ci_low"] == 2.0


def test_credit_carries_fractions_and_is_dropped_without_experience(tmp_path):
    agent = _agent()
    rt = _students(agent, tmp_path, sizes=("tiny",), steps_per_update=0.5, batch_size=4)
    record = loop.Record(agent_steps=0, num_env_frames=0, iteration_agent_steps=0, loss=0.0,
                         num_gradient_steps=3, episodes=[], act_seconds=0, learn_seconds=0)
    # An empty replay memory: nothing to distil on, the credit is not hoarded.
    assert rt.on_record(agent, record) == 0 and rt.counters["credit"] == 0.0
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(4,) + SPEC.observation_shape).astype(np.uint8)
    sampled = []

    def experience(batch_size, generator, recent=0):
        sampled.append(batch_size)
        return frames

    agent.experience = experience
    assert rt.on_record(agent, record) == 1 and rt.counters["credit"] == 0.5
    assert rt.on_record(agent, record._replace(num_gradient_steps=1)) == 1
    assert rt.counters["credit"] == 0.0 and rt.counters["grad_steps"] == 2
    assert sampled == [4, 4]


def test_students_start_at_start_frames_on_the_latest_experience(tmp_path):
    agent = _agent()
    rt = _students(agent, tmp_path, sizes=("tiny",), batch_size=4, start_frames=1000,
                   recent_steps=64)
    frames = np.zeros((4,) + SPEC.observation_shape, np.uint8)
    asked = []

    def experience(batch_size, generator, recent=0):
        asked.append((batch_size, recent))
        return frames

    agent.experience = experience
    record = loop.Record(agent_steps=0, num_env_frames=896, iteration_agent_steps=0,
                         loss=0.0, num_gradient_steps=3, episodes=[], act_seconds=0,
                         learn_seconds=0)
    # Before the teacher has played 1,000 frames its updates pay for nothing.
    assert rt.on_record(agent, record) == 0 and rt.counters["credit"] == 0.0
    assert asked == []
    assert rt.on_record(agent, record._replace(num_env_frames=1024)) == 3
    assert asked == [(4, 64)] * 3 and rt.counters["grad_steps"] == 3


def test_agreement_is_the_share_of_equal_top_actions(tmp_path, monkeypatch):
    agent = _agent()
    rt = _students(agent, tmp_path, sizes=("tiny",))
    teacher = np.eye(6, dtype=np.float32)[[0, 1, 2, 3]]  # Top actions 0, 1, 2, 3.

    class Labeller:
        def predict_on_batch(self, frames):
            return teacher, np.zeros((len(frames), 16), np.float32)

    rt._labeller = Labeller()
    monkeypatch.setattr(evaluation, "predict_fn", lambda network: lambda frames: np.eye(
        6, dtype=np.float32)[[0, 1, 5, 5]])
    frames = np.zeros((4,) + SPEC.observation_shape, np.uint8)
    assert rt.agreement(frames) == {"tiny": 0.5}
    # Without a record yet there is no experience to check on.
    assert rt.experience_agreement(0) == {}


def test_labels_are_the_current_teachers_outputs_and_features(tmp_path):
    agent = _agent()
    rt = _students(agent, tmp_path, sizes=("tiny",), feature_beta=0.01)
    frames = np.random.default_rng(1).integers(0, 255, size=(3,) + SPEC.observation_shape
                                               ).astype(np.uint8)
    x, y = rt.labelled_batch(frames)
    np.testing.assert_allclose(y["teacher_outputs"], agent.net.predict_on_batch(frames),
                               rtol=1e-5)
    features = agent.net.get_layer("features")
    import keras

    expected = keras.Model(agent.net.inputs, features.output).predict_on_batch(frames)
    np.testing.assert_allclose(y["teacher_features"], expected, rtol=1e-5)
    assert list(x["game_id"]) == [0, 0, 0]
    # The teacher moves on: so do the labels.
    agent.net.get_layer("outputs").set_weights(
        [w + 1.0 for w in agent.net.get_layer("outputs").get_weights()])
    moved = rt.labelled_batch(frames)[1]["teacher_outputs"]
    assert not np.allclose(moved, y["teacher_outputs"])
    # Q-value teachers are sharpened with tau 0.01, as offline.
    assert rt.objective.temperatures == (0.01,)


def test_labels_from_a_moving_average_of_the_teacher(tmp_path):
    agent = _agent()
    rt = _students(agent, tmp_path, sizes=("tiny",), label_horizon=4)
    outputs = agent.net.get_layer("outputs")
    before = [np.asarray(w) for w in outputs.get_weights()]
    # The teacher moves before the first record: the average starts from it.
    outputs.set_weights([w + 1.0 for w in before])
    rt.update_average(0)
    average = rt._average.get_layer("outputs")
    for a, w in zip(average.get_weights(), before):
        np.testing.assert_allclose(a, w + 1.0, rtol=1e-6)
    # Two teacher steps later the average has moved 1 - (3/4)^2 = 7/16 of the way.
    outputs.set_weights([w + 2.0 for w in before])
    rt.update_average(2)
    for a, w in zip(average.get_weights(), before):
        np.testing.assert_allclose(a, w + 1.0 + 7 / 16, rtol=1e-5)
    frames = np.random.default_rng(2).integers(0, 255, size=(3,) + SPEC.observation_shape
                                               ).astype(np.uint8)
    np.testing.assert_allclose(rt.labelled_batch(frames)[1]["teacher_outputs"],
                               rt._average.predict_on_batch(frames), rtol=1e-5)
    assert not np.allclose(rt._average.predict_on_batch(frames),
                           agent.net.predict_on_batch(frames))
    # The average is checkpointed with the students and resumed with them.
    rt.save()
    rt2 = _students(agent, tmp_path, sizes=("tiny",), label_horizon=4)
    assert rt2.restore() == ["tiny"]
    rt2.update_average(0)
    for a, b in zip(rt2._average.get_weights(), rt._average.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_student_of_other_settings_is_refused(tmp_path):
    agent = _agent()
    _students(agent, tmp_path, sizes=("tiny",)).save()
    with pytest.raises(checkpoints.CheckpointError, match="distilled with other settings"):
        _students(agent, tmp_path, sizes=("tiny",), batch_size=8).restore()
    # A size added later starts afresh; the saved one resumes.
    assert _students(agent, tmp_path, sizes=("tiny", "net3")).restore() == ["tiny"]
    # A checkpoint written before a setting existed: the students then had
    # no start, the whole replay and the live teacher's labels.
    legacy = dict(start_frames=0, recent_steps=0, label_horizon=0)
    old = realtime.RealtimeConfig(sizes=("tiny",), **legacy).identity()
    del old["start_frames"], old["recent_steps"], old["label_horizon"]
    assert realtime.RealtimeConfig.saved_identity(old) == realtime.RealtimeConfig(
        sizes=("net3",), **legacy).identity()
    assert realtime.RealtimeConfig.saved_identity(old) != realtime.RealtimeConfig(
        sizes=("tiny",), **dict(legacy, start_frames=10)).identity()


@pytest.mark.parametrize("kw, message", [
    (dict(sizes=()), "sizes must name at least one student size"),
    (dict(sizes=("huge",)), "sizes must be among"),
    (dict(sizes=("tiny", "tiny")), "sizes must not repeat"),
    (dict(steps_per_update=0), "steps_per_update must be > 0, found 0"),
    (dict(batch_size=0), "batch_size must be >= 1, found 0"),
    (dict(start_frames=-1), "start_frames must be >= 0, found -1"),
    (dict(recent_steps=-5), "recent_steps must be >= 0, found -5"),
    (dict(label_horizon=0.5), "label_horizon must be 0 .* or >= 1 gradient step, found 0.5"),
    (dict(policy_loss="hinge"), "policy_loss must be one of"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        realtime.RealtimeConfig(**dict(dict(sizes=("tiny",)), **kw))


def test_experience_of_each_agent():
    agent = _agent()
    rng = np.random.default_rng(0)
    assert agent.experience(4, rng) is None  # Before the warm-up ends.
    p = ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(num_envs=2, rollout_length=4, **TINY),
                total_agent_steps=100, seed=0)
    assert p.experience(4, rng) is None
    p._buffers["observations"][1, 0] = 7
    p._buffers["valid"][1, 0] = True
    out = p.experience(5, rng)
    assert out.shape == (5,) + SPEC.observation_shape and (out == 7).all()


def test_transfer_copies_the_trunk_only(tmp_path):
    from multidistill import networks

    student = networks.MultiTaskStudent(["qbert", "pong"], [6, 6], conv_filters=(4, 8, 8),
                                        fc_units=16).build_for_inputs()
    agent = _agent()
    outputs = [np.asarray(w) for w in agent.net.get_layer("outputs").get_weights()]
    run = runner.Runner(agent, "dqn", "boxing", SPEC, CONFIG, tmp_path, tmp_path / "ck")
    assert run.start_from_trunk(student, "runs/x/student.keras") == 4
    for name, theirs in zip(["conv0", "conv1", "conv2", "features"],
                            students.trunk_layers(student)):
        for a, b in zip(agent.net.get_layer(name).get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b)
    # The target network too (DQN bootstraps from it), the outputs stay fresh.
    for a, b in zip(agent.learner.target_net.get_weights(), agent.net.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(agent.net.get_layer("outputs").get_weights(), outputs):
        np.testing.assert_array_equal(a, b)
    assert agent.agent_steps == 0
    assert run.training_card()["init_trunk_from"] == "runs/x/student.keras"
    other = networks.MultiTaskStudent(["pong"], [6], conv_filters=(8, 8, 8),
                                      fc_units=16).build_for_inputs()
    with pytest.raises(ValueError, match="cannot copy the trunk"):
        run.start_from_trunk(other)


def test_realtime_comparison_against_hand_computed_times(tmp_path):
    from benchmarks import realtime_compare

    ck, teachers_dir = tmp_path / "ck", tmp_path / "teachers"
    (ck / "realtime").mkdir(parents=True)
    teachers_dir.mkdir()
    buf = json.dumps({"run": {"wall_clock_s": 3000.0}, "algo_state": {"agent_steps": 250_000}})
    np.savez(ck / "checkpoint.npz", __state__=np.frombuffer(buf.encode(), np.uint8))
    (teachers_dir / "pong.json").write_text(json.dumps(
        {"evaluation": {"mean": 10.0, "ci": [9.0, 11.0], "episodes": 30}}))

    def entry(frames, seconds, teacher, tiny):
        return {"frames": frames, "wall_clock_s": seconds, "teacher": {"mean": teacher},
                "students": {"tiny": {"mean": tiny}, "net3": {"mean": -21.0}},
                "student_grad_steps": 100,
                "distill_seconds": 400.0, "student_eval_seconds": 100.0}

    (ck / "realtime" / "evaluations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        entry(250_000, 1000.0, 5.0, 2.0), entry(500_000, 2000.0, 10.0, 9.5),
        entry(1_000_000, 3000.0, 10.0, 10.0)]))
    def ttd_run(name, build_seconds, distill_seconds):
        run = tmp_path / name
        run.mkdir()
        game = {"student": {"mean": 9.8, "ci": [9.0, 10.5]}, "student_percent_of_teacher": 98.0,
                "student_percent_of_teacher_ci": [90.0, 105.0]}
        (run / "report.json").write_text(json.dumps({
            "games": {"pong": game},
            "datasets": {"pong": {"path": "d/pong.h5", "num_agent_steps": 100_000}},
            "timing": {"build_seconds": build_seconds, "distill_seconds": distill_seconds}}))
        return str(run)

    # net3 reused the dataset tiny's run recorded: it is charged tiny's 200 s.
    result = realtime_compare.compare(
        ck, teachers_dir, "pong",
        {"tiny": ttd_run("ttd", 200.0, 300.0), "net3": ttd_run("ttd3", 0.4, 350.0)}, {})
    net3 = result["sizes"]["net3"]
    assert net3["train_then_distill"]["wall_clock_s"] == 2500 + 200 + 350
    assert net3["realtime"] is None and "ratio_wall_clock" not in net3
    row = result["sizes"]["tiny"]
    # 90 % of the way from random (-20.7) to 10: 6.93; 9.5 first at 500,000 frames.
    assert result["target"] == pytest.approx(-20.7 + 0.9 * 30.7)
    assert row["realtime"] == {"frames": 500_000, "wall_clock_s": 2000.0, "mean_return": 9.5}
    # The teacher alone: 3,000 s less the students' 500 s; then 200 s + 300 s.
    ttd = row["train_then_distill"]
    assert ttd["wall_clock_s"] == 2500.0 + 200.0 + 300.0
    assert ttd["frames"] == 1_000_000 + 400_000 and ttd["reached"]
    assert row["ratio_wall_clock"] == 2000.0 / 3000.0
    assert row["ratio_frames"] == 500_000 / 1_400_000
    text = realtime_compare.markdown(result, "cmd")
    assert "| tiny | 500,000 | 33.3 | 1,400,000 | 50.0 | 0.67 | 0.36 |" in text
    # (9.8 + 20.7) / 30.7 = 99.3 % of the way from random to the teacher.
    assert "9.8 [9.0, 10.5] (98.0 [90.0, 105.0] % of teacher; 99 % from random)" in text
    assert result["settings"] is None and "Students:" not in text
    # The students' settings, from a student checkpoint of the run.
    (ck / "realtime" / "tiny").mkdir()
    state = {"realtime": realtime.RealtimeConfig(
        sizes=("tiny",), learning_rate=2.5e-4, start_frames=750_000,
        recent_steps=100_000, label_horizon=2000).identity()}
    np.savez(ck / "realtime" / "tiny" / "checkpoint.npz",
             __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
    text = realtime_compare.markdown(realtime_compare.compare(ck, teachers_dir, "pong", {}, {}),
                                     "cmd")
    assert ("Students: Adam at 0.00025, 1 step(s) of 32 states per teacher step from the "
            "teacher's 750,000th frame, the states drawn from the latest 100,000 agent "
            "steps of its replay, labelled by a moving average of the teacher's weights "
            "over 2,000 of its gradient steps.") in text
    assert realtime_compare.plot(result, tmp_path / "c.png").exists()

    # A teacher below 0 has no plain %: the table still comes, with the
    # share of the way from random alone; a student never at 90 % has no ratio.
    (teachers_dir / "pong.json").write_text(json.dumps(
        {"evaluation": {"mean": -14.6, "ci": [-16.0, -13.1], "episodes": 30}}))
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "report.json").write_text(json.dumps({"games": {"pong": {
        "student": {"mean": -20.0, "ci": [-20.3, -19.7]}, "student_percent_of_teacher": None,
        "student_percent_of_teacher_ci": None}}}))
    entries = [entry(250_000, 1000.0, -20.0, -21.0), entry(500_000, 2000.0, -15.0, -20.4)]
    (ck / "realtime" / "evaluations.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in entries))
    result = realtime_compare.compare(ck, teachers_dir, "pong", {}, {"tiny": str(rt)})
    text = realtime_compare.markdown(result, "cmd")
    # (-20.0 + 20.7) / (-14.6 + 20.7) = 11.5 %.
    assert ("| tiny | not reached | - | - | - | - | - "
            "| -20.0 [-20.3, -19.7] (11 % from random) | - |") in text


def test_transfer_comparison_frames_to_threshold(tmp_path):
    from benchmarks import transfer_compare

    def run(name, values):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 250_000 * (i + 1), "eval/mean_return": v}) + "\n"
            for i, v in enumerate(values)) + json.dumps({"step": 1, "losses/loss": 0.1}) + "\n")
        return str(d)

    scratch = [run("s0", [0.0, 4.0, 8.0]), run("s1", [1.0, 2.0, 10.0])]
    trunk = [run("t0", [6.0, 9.0, 12.0])]
    result = transfer_compare.compare(scratch, trunk)
    assert result["threshold"] == 5.0  # Half the best from scratch (10).
    frames = {r["run"][-2:]: r["frames_to_threshold"] for rows in result["groups"].values()
              for r in rows}
    assert frames == {"s0": 750_000, "s1": 750_000, "t0": 250_000}
    assert result["groups"]["trunk"][0]["mean_of_evaluations"] == 9.0
    assert transfer_compare.compare(scratch, trunk, threshold=11.0)["groups"]["scratch"][0][
        "frames_to_threshold"] is None
    text = transfer_compare.markdown(result, "boxing", "cmd")
    assert "| trunk | `t0` | 250,000 | 12.0 | 9.0 | 750,000 |" in text
    assert transfer_compare.plot(result, "boxing", tmp_path / "t.png").exists()
