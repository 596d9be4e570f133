"""The teacher trainer's command line: tiny real runs, resume, SIGTERM, bad input.

Every test here starts `python -m multidistill.train_teacher` (seconds to
a minute each): all are marked slow.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, SPEC_KW, run_cli, run_cli_cases

from multidistill import checkpoints, environments, teachers

pytestmark = pytest.mark.slow

FRAMES = f"--max_episode_frames={SPEC_KW['max_episode_frames']}"


def _args(tmp_path, game="pong", *extra):
    return ["-m", "multidistill.train_teacher", f"--game={game}", "--algo=ppo",
            f"--teachers_dir={tmp_path / 'teachers'}", f"--checkpoint_dir={tmp_path / 'ck'}",
            "--num_env_frames=4096", "--eval_every_frames=1000000", "--eval_episodes=1",
            "--final_eval_episodes=1", "--num_envs=8", FRAMES, *extra]


def test_tiny_run_writes_a_loadable_teacher_and_resumes(tmp_path):
    rc, out = run_cli(_args(tmp_path))
    assert rc == 0, out
    spec = environments.Preprocessing(**SPEC_KW)
    t = teachers.load_teacher("pong", tmp_path / "teachers", spec)
    assert t.kind == "logits" and t.num_actions == 6
    assert len(t.model.outputs) == 2 and t.card["value"] == "output"  # With its critic.
    card = t.card
    assert card["training"]["algorithm"] == "ppo"
    # PPO's first iteration: a rollout of 128 vector steps of 8 environments
    # and the step that closes it, 129 * 8 * 4 = 4,128 frames.
    assert card["training"]["num_env_frames"] == 4128
    assert card["training"]["algo_state"] == {"agent_steps": 1032, "gradient_steps": 16}
    assert card["training"]["config"]["behaviour_epsilon"] == 0.05
    assert card["evaluation"]["episodes"] == 1 and "mean" in card["evaluation"]
    assert (tmp_path / "ck" / "learning_curve.png").exists()
    # The same command with a larger budget continues the counters; a resumed
    # run may take smaller minibatches (8 of 128 states: 32 updates per rollout).
    rc, out = run_cli(_args(tmp_path)[:-6] + ["--num_env_frames=8192"] + _args(tmp_path)[-5:]
                      + ["--num_minibatches=8"])
    assert rc == 0, out
    assert "resuming" in out and "4,128 frames" in out
    state = checkpoints.read_state(tmp_path / "ck" / "checkpoint.npz")
    assert state["algo_state"] == {"agent_steps": 2064, "gradient_steps": 16 + 32}
    rows = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().split("\n")
            if x]
    # A resumed PPO run's first rollout also takes the step that closes it.
    assert max(r["step"] for r in rows) == 4128 + 4128

    # A checkpoint of another game or preprocessing is refused.
    rc, out = run_cli(_args(tmp_path, "freeway"))
    assert rc == 2 and "is for game='pong', this run asks for 'freeway'" in out, out
    rc, out = run_cli(_args(tmp_path)[:-1] + ["--max_episode_frames=2400"])
    assert rc == 2 and "another preprocessing" in out and "max_episode_frames" in out, out
    assert "Traceback" not in out


def test_bad_flags_are_refused_by_name(tmp_path):
    """Unknown game, unwritable output, out-of-range values: one message each,
    exit 2, nothing written (in one interpreter, `run_cli_cases`)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (_args(tmp_path, "pongg")[2:], "--game: unknown game 'pongg'"),
        (["--game=pong", f"--teachers_dir={blocker / 'teachers'}"], "is not writable"),
        (_args(tmp_path, "pong", "--behaviour_epsilon=1.5")[2:],
         "--behaviour_epsilon must be in [0, 1), found 1.5"),
        (_args(tmp_path, "pong", "--epsilon_end=1.5")[2:],
         "--epsilon_end must be in [0, 1], found 1.5"),
        (_args(tmp_path, "pong", "--num_env_frames=0")[2:],
         "--num_env_frames must be >= 1, found 0"),
        (_args(tmp_path, "pong", "--num_threads=-1")[2:],
         "--num_threads must be >= 0, found -1"),
        (_args(tmp_path, "pong", "--num_minibatches=0")[2:],
         "--num_minibatches must be >= 1, found 0"),
        (_args(tmp_path, "pong", "--learning_rate=0")[2:],
         "--learning_rate must be > 0, found 0.0")]
    runs = run_cli_cases("multidistill.train_teacher", "cli.define_teacher_training_flags",
                         [argv for argv, _ in cases])
    for (argv, message), (rc, out) in zip(cases, runs):
        assert rc == 2 and message in out and "Traceback" not in out, (argv, out)
    assert not (tmp_path / "ck").exists()
    # And by the real command line.
    rc, out = run_cli(_args(tmp_path, "pongg"))
    assert rc == 2 and "--game: unknown game 'pongg'" in out and "Traceback" not in out, out


def test_epsilon_end_reaches_the_dqn_config(tmp_path):
    args = [a.replace("--algo=ppo", "--algo=dqn") for a in _args(tmp_path)]
    rc, out = run_cli(args + ["--num_env_frames=512", "--epsilon_end=0.2"])
    assert rc == 0, out
    card = json.loads((tmp_path / "teachers" / "pong.json").read_text())
    assert card["kind"] == "q_values" and card["value"] == "max_q"
    assert card["training"]["config"]["epsilon_end"] == 0.2
    assert card["training"]["config"]["learning_rate"] == 1e-4  # DQN's default.
    # One iteration of 128 vector steps of 8 environments, all warm-up.
    assert card["training"]["algo_state"] == {"agent_steps": 1024, "gradient_steps": 0,
                                              "update_credit": 0.0, "epsilon_final": False}
    assert card["training"]["config"]["teacher_start_epsilon"] == "final"


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    """DQN in its warm-up (random actions, no network calls): iterations of
    1,024 agent steps, a second or two each."""
    args = [a.replace("--algo=ppo", "--algo=dqn") for a in _args(tmp_path)]
    args = [a for a in args if not a.startswith("--num_env_frames")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable] + args + ["--num_env_frames=100000000"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "ck" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().strip()):  # An iteration is done.
        assert p.poll() is None and time.time() - t0 < 180, p.communicate()[0]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    steps = checkpoints.read_state(tmp_path / "ck" / "checkpoint.npz")["algo_state"][
        "agent_steps"]
    assert steps > 0 and steps % 1024 == 0  # At the end of an iteration.
    assert (f"SIGTERM: checkpoint saved at {steps * 4:,} frames in {tmp_path / 'ck'}"
            in out), out
    assert "run the same command to resume" in out
    rc, out = run_cli(args + [f"--num_env_frames={steps * 4 + 4096}",
                              "--final_eval_episodes=0"])
    assert rc == 0, out
    assert f"resuming {tmp_path / 'ck' / 'checkpoint.npz'} at {steps * 4:,} frames" in out
    state = checkpoints.read_state(tmp_path / "ck" / "checkpoint.npz")
    assert state["algo_state"]["agent_steps"] == steps + 1024


def test_realtime_students_ride_along_from_the_command_line(tmp_path):
    rc, out = run_cli(_args(tmp_path, "pong", "--distill_into=tiny",
                            "--distill_steps_per_update=0.25", "--distill_start_frames=0"))
    assert rc == 0, out
    assert f"real-time students tiny in {tmp_path / 'ck' / 'realtime'}" in out
    from multidistill import realtime, students

    student = students.load_student(tmp_path / "ck" / "realtime" / "tiny" / "student.keras")
    assert student.games == ["pong"] and student.conv_filters == [8, 8, 8]
    # PPO's one update of 16 minibatches pays for 4 student steps.
    state = checkpoints.read_state(tmp_path / "ck" / "realtime" / "tiny" / "checkpoint.npz")
    assert state["counters"]["grad_steps"] == 4
    entries = realtime.read_evaluations(tmp_path / "ck" / "realtime" / "evaluations.jsonl")
    assert [e["frames"] for e in entries] == [4128] and "tiny" in entries[0]["students"]
    assert set(entries[0]["agreement"]) == {"tiny"}  # On PPO's latest rollout.
    for extra, message in [
            ("--distill_into=huge", "--distill_into must be among"),
            ("--distill_start_frames=-1", "--distill_start_frames must be >= 0"),
            ("--distill_steps_per_update=0", "--distill_steps_per_update must be > 0")]:
        args = _args(tmp_path / "bad", "pong", extra)
        if "huge" not in extra:
            args.append("--distill_into=tiny")
        rc, out = run_cli(args)
        assert rc == 2 and message in out and "Traceback" not in out, (extra, out)


def test_init_trunk_from_a_student(tmp_path):
    from multidistill import networks, students

    spec = environments.Preprocessing(**SPEC_KW)
    student = networks.MultiTaskStudent(["pong", "qbert"], [6, 6],
                                        observation_shape=spec.observation_shape,
                                        preprocessing=spec.to_dict()).build_for_inputs()
    path = students.save_student(student, tmp_path / "student.keras")
    args = [a.replace("--algo=ppo", "--algo=dqn") for a in _args(tmp_path, "freeway")]
    rc, out = run_cli(args + ["--num_env_frames=512", f"--init_trunk_from={path}"])
    assert rc == 0, out
    assert f"initialised the trunk (4 layers) from {path}" in out
    t = teachers.load_teacher("freeway", tmp_path / "teachers", spec)
    np.testing.assert_array_equal(t.model.get_layer("conv1").get_weights()[0],
                                  student.get_layer("shared_conv1").get_weights()[0])
    assert t.card["training"]["init_trunk_from"] == str(path)
    small = networks.MultiTaskStudent(["pong"], [6], conv_filters=(8, 8, 8), fc_units=64)
    small_path = students.save_student(small.build_for_inputs(), tmp_path / "small.keras")
    for extra, message in [
            (f"--init_trunk_from={small_path}", "cannot copy the trunk"),
            (f"--init_trunk_from={tmp_path / 'none.keras'}", "--init_trunk_from: student file"),
            ("--init_from_teacher", "--init_from_teacher and --init_trunk_from exclude")]:
        more = [extra] if "trunk" in extra else [extra, f"--init_trunk_from={path}"]
        rc, out = run_cli(_args(tmp_path / "other", "freeway") + more)
        assert rc == 2 and message in out and "Traceback" not in out, (extra, out)
