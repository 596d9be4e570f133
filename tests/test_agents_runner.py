"""The teacher-training runner (`agents.runner`) with fake environments and evaluations."""

from __future__ import annotations

import json
import os
import platform
import signal

import keras
import numpy as np
import pytest
from test_agents_loop import FakeAtari

from multidistill import checkpoints, environments, evaluation, teachers
from multidistill.agents import dqn, ppo, runner

SPEC = environments.Preprocessing()
TINY = dict(conv_filters=(4, 8, 8), fc_units=16)
# Iterations of 16 vector steps of 2 environments: 32 agent steps, 128 frames.
CONFIG = runner.RunConfig(num_env_frames=384, eval_every_frames=256, eval_episodes=1,
                          checkpoint_every_s=3600)


def _agent(seed=0):
    return dqn.DQN("pong", 6, SPEC, dqn.DQNConfig(
        num_envs=2, rollout_length=16, replay_capacity=4_000, learning_starts=10**9, **TINY),
        total_agent_steps=96, seed=seed)


@pytest.fixture
def fakes(monkeypatch):
    """Fake environments; evaluations that score 1, 2, 3, ... in turn; the
    emulator threads each was asked for."""
    made, scored = [], []
    threads = {"envs": [], "evaluations": []}

    def make_vector_envs(game, spec, num_envs, num_threads=0, num_groups=0):
        assert num_groups == 1
        threads["envs"].append(num_threads)
        made.append(FakeAtari(lengths=(5, 7)[:num_envs]))
        return [made[-1]]

    def evaluate(game, predict, kind, spec, protocol, progress=True, label=""):
        threads["evaluations"].append(protocol.num_threads)
        out = predict(np.zeros((1,) + SPEC.observation_shape, np.uint8))
        assert out.shape == (1, 6)  # The policy only, even for a teacher with a value.
        scored.append(float(len(scored) + 1))
        return evaluation.Scores(returns=[scored[-1]], lengths=[10], seconds=0.1)

    monkeypatch.setattr(environments, "make_vector_envs", make_vector_envs)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    return made, scored, threads


def test_num_threads_reaches_envs_and_evaluations(tmp_path, fakes):
    """Trainers sharing a machine set their emulator threads: the training
    environments and the periodic evaluations both get them."""
    config = runner.RunConfig(num_env_frames=256, eval_every_frames=256, eval_episodes=1,
                              checkpoint_every_s=3600, num_threads=3)
    run = runner.Runner(_agent(), "dqn", "pong", SPEC, config, tmp_path / "teachers",
                        tmp_path / "ck")
    assert run.train(progress=False) == ""
    assert fakes[2] == {"envs": [3], "evaluations": [3]}


def test_train_evaluates_exports_and_checkpoints(tmp_path, fakes):
    made, scored, _ = fakes
    agent = _agent()
    run = runner.Runner(agent, "dqn", "pong", SPEC, CONFIG, tmp_path / "teachers",
                        tmp_path / "ck", command="python -m multidistill.train_teacher x")
    assert not run.restore()
    assert run.train(progress=False) == ""
    # 3 iterations (384 frames); an evaluation at 256 frames and one at the end.
    assert agent.agent_steps == 96 and scored == [1.0, 2.0]
    assert made[0].closed
    state = checkpoints.read_state(run.checkpoint_path)
    assert state["algo_state"]["agent_steps"] == 96
    assert state["run"]["best_eval"] == 2.0 and state["run"]["last_eval_frames"] == 384
    card = json.loads((tmp_path / "teachers" / "pong.json").read_text())
    assert card["evaluation"]["mean"] == 2.0
    assert card["training"]["num_env_frames"] == 384
    assert card["training"]["algo_state"] == agent.state()
    assert card["training"]["command"] == "python -m multidistill.train_teacher x"
    rows = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "charts/SPS" in r] == [128, 256, 384]
    assert [(r["step"], r["eval/mean_return"]) for r in rows if "eval/mean_return" in r] == [
        (256, 1.0), (384, 2.0)]
    # Rerun at the end: nothing to train, nothing evaluated again.
    again = runner.Runner(_agent(), "dqn", "pong", SPEC, CONFIG, tmp_path / "teachers",
                          tmp_path / "ck")
    assert again.restore() and again.train(progress=False) == ""
    assert scored == [1.0, 2.0] and len(made) == 1


def test_sigterm_checkpoints_at_the_end_of_the_iteration_and_the_run_resumes(tmp_path, fakes):
    made, scored, _ = fakes
    agent = _agent()
    observe = agent.observe

    def observe_then_signal(step):
        if agent.agent_steps == 40:  # Within the second iteration.
            os.kill(os.getpid(), signal.SIGTERM)
        return observe(step)

    agent.observe = observe_then_signal
    run = runner.Runner(agent, "dqn", "pong", SPEC, CONFIG, tmp_path / "teachers",
                        tmp_path / "ck")
    before = signal.getsignal(signal.SIGTERM)
    assert run.train(progress=False) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # The handler it found is back.
    assert checkpoints.read_state(run.checkpoint_path)["algo_state"]["agent_steps"] == 64
    assert made[0].closed and scored == [1.0]  # Evaluated at 256 frames, before stopping.

    resumed = runner.Runner(_agent(), "dqn", "pong", SPEC, CONFIG, tmp_path / "teachers",
                            tmp_path / "ck")
    assert resumed.restore() and resumed.agent.agent_steps == 64
    assert resumed.run["best_eval"] == 1.0
    assert resumed.train(progress=False) == ""
    assert made[1].seed == 64  # Episode starts move on with the agent steps.
    assert resumed.agent.agent_steps == 96 and scored == [1.0, 2.0]


def test_restore_refuses_checkpoints_of_another_run_and_reads_old_ones(tmp_path):
    agent = _agent()
    agent.agent_steps = 64
    run = runner.Runner(agent, "dqn", "pong", SPEC, CONFIG, tmp_path, tmp_path / "ck")
    run.run["best_eval"] = 4.0
    run.save_checkpoint()
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"is for game='pong', this run asks for 'freeway': use another "
                             r"--checkpoint_dir"):
        runner.Runner(_agent(), "dqn", "freeway", SPEC, CONFIG, tmp_path, tmp_path / "ck"
                      ).restore()
    with pytest.raises(checkpoints.CheckpointError, match=r"is for algo='dqn', this run asks "
                                                          r"for 'ppo'"):
        runner.Runner(_agent(), "ppo", "pong", SPEC, CONFIG, tmp_path, tmp_path / "ck"
                      ).restore()
    other = environments.Preprocessing(max_episode_frames=2400)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"another preprocessing: max_episode_frames: 108000 checkpoint vs "
                             r"asked 2400"):
        runner.Runner(_agent(), "dqn", "pong", other, CONFIG, tmp_path, tmp_path / "ck"
                      ).restore()
    # A checkpoint of the 0.1.0 dev runs kept the counters under "algo".
    old_agent = _agent()
    old_agent.agent_steps = 32
    checkpoints.save(tmp_path / "old" / "checkpoint.npz", old_agent.learner,
                     old_agent.optimizer,
                     {"game": "pong", "algo": old_agent.state(),
                      "preprocessing": SPEC.to_dict(),
                      "run": {"wall_clock_s": 5.0, "best_eval": None, "last_eval_frames": 0}})
    fresh = runner.Runner(_agent(), "dqn", "pong", SPEC, CONFIG, tmp_path, tmp_path / "old")
    assert fresh.restore() and fresh.agent.agent_steps == 32
    assert fresh.run["wall_clock_s"] == 5.0


def test_make_agent_and_run_config_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown algorithm 'a2c': expected one of "
                                         r"\['dqn', 'ppo'\]"):
        runner.make_agent("a2c", "pong", 6, SPEC, dqn.DQNConfig(), 10, 0)
    with pytest.raises(ValueError, match="algorithm 'ppo' takes a PPOConfig, found DQNConfig"):
        runner.make_agent("ppo", "pong", 6, SPEC, dqn.DQNConfig(), 10, 0)
    with pytest.raises(ValueError, match=r"RunConfig.num_env_frames must be >= 1, found 0"):
        runner.RunConfig(num_env_frames=0)
    agent = runner.make_agent("ppo", "pong", 6, SPEC, ppo.PPOConfig(num_envs=2, **TINY), 10, 0)
    assert isinstance(agent, ppo.PPO) and agent.kind == "logits"


def test_a_teacher_of_another_algorithm_gives_weights_only(tmp_path):
    exporter = ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(num_envs=2, **TINY), 100, 0)
    exporter.agent_steps = 50
    run = runner.Runner(exporter, "ppo", "pong", SPEC, CONFIG, tmp_path, tmp_path)
    teachers.save_teacher(exporter.teacher_model, "pong", "logits", SPEC, tmp_path,
                          training=run.training_card())
    agent = _agent()
    run = runner.Runner(agent, "dqn", "pong", SPEC, CONFIG, tmp_path, tmp_path / "ck")
    assert run.start_from_teacher(teachers.load_teacher("pong", tmp_path, SPEC)) == 5
    assert agent.agent_steps == 0 and run.run["best_eval"] is None
    # The card it exports names the stage it started from.
    stages = run.training_card()["earlier_stages"]
    assert [(s["algorithm"], s["num_env_frames"]) for s in stages] == [("ppo", 50 * 4)]
    np.testing.assert_array_equal(agent.net.get_layer("conv0").get_weights()[0],
                                  exporter.net.get_layer("conv0").get_weights()[0])


def test_a_ppo_run_exports_its_teacher_with_the_critic(tmp_path, fakes):
    made, scored, _ = fakes
    agent = ppo.PPO("pong", 6, SPEC, ppo.PPOConfig(num_envs=2, rollout_length=4, num_epochs=1,
                                                    num_minibatches=1, **TINY),
                    total_agent_steps=10, seed=0)
    config = runner.RunConfig(num_env_frames=40, eval_every_frames=10**6, eval_episodes=1)
    run = runner.Runner(agent, "ppo", "pong", SPEC, config, tmp_path, tmp_path / "ck")
    assert run.train(progress=False) == ""
    # The first iteration is a rollout of 4 vector steps and the step that
    # closes it: 10 agent steps, 40 frames; evaluated (on the logits) at the end.
    assert agent.agent_steps == 10 and agent.gradient_steps == 1 and scored == [1.0]
    teacher = teachers.load_teacher("pong", tmp_path, SPEC)
    assert len(teacher.model.outputs) == 2 and teacher.card["value"] == "output"
    assert teacher.card["training"]["algo_state"] == {"agent_steps": 10, "gradient_steps": 1}
    assert teacher.card["training"]["config"]["behaviour_epsilon"] == 0.05


def test_hardware_names_the_accelerators(monkeypatch):
    """Each backend's own device list, faked: the GPUs are named, CPUs not."""
    import jax
    import tensorflow as tf

    class Device:
        def __init__(self, platform, kind):
            self.platform, self.device_kind, self.name = platform, kind, kind

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax, "devices", lambda: [Device("gpu", "NVIDIA H200")] * 2)
    assert runner.accelerators() == ["NVIDIA H200", "NVIDIA H200"]
    assert runner.hardware() == (f"{platform.machine()} {os.cpu_count()} cores, "
                                 f"{platform.system()}, keras backend jax, 2 x NVIDIA H200")
    monkeypatch.setattr(jax, "devices", lambda: [Device("cpu", "cpu")])
    assert runner.accelerators() == []
    assert runner.hardware().endswith("keras backend jax")

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind: [Device("gpu", "/physical_device:GPU:0")])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda d: {"device_name": "NVIDIA A100"})
    assert runner.accelerators() == ["NVIDIA A100"]

    def broken():
        raise RuntimeError("no driver")

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax, "devices", broken)
    assert runner.accelerators() == []  # A card's wording never fails a run.


def test_a_run_from_a_teacher_keeps_its_stages_through_a_checkpoint(tmp_path):
    exporter = _agent()
    exporter.agent_steps = 64
    first = runner.Runner(exporter, "dqn", "pong", SPEC, CONFIG, tmp_path / "t", tmp_path / "a",
                          command="first")
    teachers.save_teacher(exporter.teacher_model, "pong", "q_values", SPEC, tmp_path / "t",
                          training=first.training_card())
    run = runner.Runner(_agent(), "dqn", "pong", SPEC, CONFIG, tmp_path / "t", tmp_path / "b",
                        command="second")
    run.start_from_teacher(teachers.load_teacher("pong", tmp_path / "t", SPEC))
    run.save_checkpoint()
    resumed = runner.Runner(_agent(), "dqn", "pong", SPEC, CONFIG, tmp_path / "t",
                            tmp_path / "b", command="second")
    assert resumed.restore()
    card = resumed.training_card()
    assert [(s["command"], s["num_env_frames"]) for s in card["earlier_stages"]] == [
        ("first", 64 * 4)]
    assert card["command"] == "second" and card["num_env_frames"] == 64 * 4


def test_stages_of_a_card_lists_earlier_stages_then_its_own_run():
    first = {"algorithm": "dqn", "num_env_frames": 100, "wall_clock_s": 5.0,
             "hardware": "cpu", "command": "a", "history": "h", "config": {"x": 1},
             "imported_from": {"format": "sb3"}}
    second = dict(first, num_env_frames=300, hardware="gpu", command="b",
                  earlier_stages=runner.stages_of(first))
    del second["history"], second["imported_from"]
    assert runner.stages_of({}) == []
    assert runner.stages_of(second) == [
        {"algorithm": "dqn", "num_env_frames": 100, "wall_clock_s": 5.0, "hardware": "cpu",
         "command": "a", "history": "h", "imported_from": {"format": "sb3"}},
        {"algorithm": "dqn", "num_env_frames": 300, "wall_clock_s": 5.0, "hardware": "gpu",
         "command": "b"}]
