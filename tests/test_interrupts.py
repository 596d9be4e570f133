"""SIGTERM stops the builder and the trainer cleanly; the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SPEC_KW, run_cli

from multidistill import datasets

# Entry points in subprocesses, on real games.
pytestmark = pytest.mark.slow


def _start(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable] + args, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_builder_sigterm_keeps_whole_episodes_and_resumes(tmp_path, teachers_dir):
    args = ["-m", "multidistill.build_datasets", "--games=pong",
            f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}",
            "--num_agent_steps=30000", "--num_envs=1",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}"]
    p = _start(args)
    # The first episode (300 agent steps) is written within seconds.
    path = tmp_path / "pong.h5"
    assert _wait_for(lambda: path.exists() and path.stat().st_size > 200_000, 120)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "SIGTERM: stopped after whole episodes" in out
    with datasets.Dataset(path) as ds:
        n = ds.num_agent_steps
        assert 0 < n < 30000 and n % 300 == 0  # Whole 300-step episodes only.
    rc, out = run_cli(args[:5] + [f"--num_agent_steps={n + 300}"] + args[6:])
    assert rc == 0, out
    with datasets.Dataset(path) as ds:
        assert ds.num_agent_steps == n + 300
        sessions = ds.sessions
        assert [(s.step_start, s.step_stop) for s in sessions] == [(0, n), (n, n + 300)]
        assert len({s.seed for s in sessions}) == 2


def test_trainer_sigterm_saves_checkpoint_and_resumes(tmp_path, teachers_dir, datasets_dir):
    run = tmp_path / "run"
    args = ["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
            f"--datasets_dir={datasets_dir}", f"--run_dir={run}",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}", "--num_agent_steps=1",
            "--student_size=net3", "--batch_size_per_game=4", "--checkpoint_every_steps=100000",
            "--eval_every_steps=100000", "--eval_episodes=1", "--eval_num_envs=1"]
    p = _start(args + ["--num_grad_steps=100000"])
    assert _wait_for(lambda: (run / "metrics.jsonl").exists()
                     and "losses/train_loss" in (run / "metrics.jsonl").read_text(), 180)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "checkpoint saved" in out
    from multidistill import checkpoints

    step = checkpoints.read_state(run / "checkpoint.npz")["grad_step"]
    assert 50 <= step < 100000
    rc, out = run_cli(args + [f"--num_grad_steps={step + 5}"])
    assert rc == 0, out
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["grad_steps"] == step + 5
    assert report["training"]["trained_steps"] == 5


def test_trainer_sigkill_at_random_points_then_rerun_completes(tmp_path, teachers_dir,
                                                                datasets_dir):
    import numpy as np

    from multidistill import checkpoints, students

    rng = np.random.default_rng(7)
    run = tmp_path / "run"
    args = ["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
            f"--datasets_dir={datasets_dir}", f"--run_dir={run}",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}", "--num_agent_steps=1",
            "--student_size=net3", "--batch_size_per_game=4", "--checkpoint_every_steps=7",
            "--eval_every_steps=100000", "--eval_episodes=1", "--eval_num_envs=1",
            "--num_grad_steps=100000"]
    steps_seen = []
    for _ in range(3):
        p = _start(args)
        assert _wait_for(lambda: (run / "checkpoint.npz").exists(), 180)
        time.sleep(float(rng.uniform(0.0, 3.0)))
        p.kill()
        p.wait()
        # Whatever moment the kill hit, the checkpoint in place is whole.
        steps_seen.append(checkpoints.read_state(run / "checkpoint.npz")["grad_step"])
        assert steps_seen[-1] % 7 == 0
        students.load_student(run / "student.keras")
    assert steps_seen == sorted(steps_seen)
    final = steps_seen[-1] + 10
    rc, out = run_cli(args[:-1] + [f"--num_grad_steps={final}"])
    assert rc == 0, out
    assert checkpoints.read_state(run / "checkpoint.npz")["grad_step"] == final


def test_builder_sigkill_at_random_points_then_rerun_completes(tmp_path, teachers_dir):
    import numpy as np

    rng = np.random.default_rng(11)
    path = tmp_path / "pong.h5"
    args = ["-m", "multidistill.build_datasets", "--games=pong",
            f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}",
            "--num_agent_steps=30000", "--num_envs=2",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}"]
    for _ in range(3):
        p = _start(args)
        _wait_for(lambda: path.exists(), 120)
        time.sleep(float(rng.uniform(0.5, 6.0)))
        p.kill()
        p.wait()
        with datasets.Dataset(path) as ds:  # Readable; whole 300-step episodes only.
            assert ds.num_agent_steps % 300 == 0
            ds.read_block(0, ds.num_agent_steps)
    with datasets.Dataset(path) as ds:
        before, seeds = ds.num_agent_steps, [s.seed for s in ds.sessions]
    target = before + 1200
    rc, out = run_cli(args[:5] + [f"--num_agent_steps={target}"] + args[6:])
    assert rc == 0, out
    with datasets.Dataset(path) as ds:
        assert target <= ds.num_agent_steps <= target + 300  # + an episode under way
        new_seeds = [s.seed for s in ds.sessions]
        assert len(new_seeds) == len(seeds) + 1 and len(set(new_seeds)) == len(new_seeds)
        assert ds.sessions[-1].step_start == before
        assert ds.sessions[-1].step_stop == ds.num_agent_steps
        # No episode recorded twice. Frames alone do not tell episodes apart:
        # this tiny teacher pins Pong's paddle, so two episodes with the same
        # no-op start can render the same frames (41 episodes of one build
        # gave 30 distinct frame sequences); their exploration actions differ.
        block = ds.read_block(0, ds.num_agent_steps)
        frames, actions = block["observations"][:, -1], block["actions"]
        digests = {(frames[s:s + t].tobytes() + actions[s:s + t].tobytes()).__hash__()
                   for s, t in zip(ds.episode_starts, ds.episode_lengths)}
        assert len(digests) == ds.num_episodes
