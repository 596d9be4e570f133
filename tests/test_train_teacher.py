"""The teacher trainer's command line: a tiny real run, resume, bad input."""

import json

from conftest import SPEC_KW, run_cli

from multidistill import environments, teachers

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
    card = t.card
    assert card["training"]["algorithm"] == "ppo"
    assert card["training"]["num_env_frames"] == 4096
    assert card["evaluation"]["episodes"] == 1 and "mean" in card["evaluation"]
    assert (tmp_path / "ck" / "learning_curve.png").exists()
    # The same command with a larger budget continues the counters.
    rc, out = run_cli(_args(tmp_path)[:-6] + ["--num_env_frames=8192"] + _args(tmp_path)[-5:])
    assert rc == 0, out
    assert "resuming" in out and "4,096 frames" in out
    rows = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().split("\n")
            if x]
    assert max(r["step"] for r in rows) == 8192

    # A checkpoint of another game or preprocessing is refused.
    rc, out = run_cli(_args(tmp_path, "freeway"))
    assert rc == 2 and "is for game='pong', this run asks for 'freeway'" in out, out
    rc, out = run_cli(_args(tmp_path)[:-1] + ["--max_episode_frames=2400"])
    assert rc == 2 and "another preprocessing" in out and "max_episode_frames" in out, out
    assert "Traceback" not in out


def test_unknown_game_and_unwritable_output(tmp_path):
    rc, out = run_cli(_args(tmp_path, "pongg"))
    assert rc == 2 and "--game: unknown game 'pongg'" in out, out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, out = run_cli(["-m", "multidistill.train_teacher", "--game=pong",
                       f"--teachers_dir={blocker / 'teachers'}"])
    assert rc == 2 and "is not writable" in out and "Traceback" not in out, out


def test_behaviour_epsilon_out_of_range_is_refused(tmp_path):
    rc, out = run_cli(_args(tmp_path, "pong", "--behaviour_epsilon=1.5"))
    assert rc == 2 and "--behaviour_epsilon must be in [0, 1), found 1.5" in out, out
    assert not (tmp_path / "ck").exists()


def test_ez_mu_out_of_range_is_refused(tmp_path):
    args = [a.replace("--algo=ppo", "--algo=dqn") for a in _args(tmp_path)]
    rc, out = run_cli(args + ["--ez_mu=0.5"])
    assert rc == 2 and "--ez_mu must be 0 (plain epsilon-greedy) or > 1, found 0.5" in out, out


def test_epsilon_end_reaches_the_dqn_config_and_bad_values_are_refused(tmp_path):
    args = [a.replace("--algo=ppo", "--algo=dqn") for a in _args(tmp_path)]
    rc, out = run_cli(args + ["--epsilon_end=1.5"])
    assert rc == 2 and "--epsilon_end must be in [0, 1], found 1.5" in out, out
    assert not (tmp_path / "ck").exists()
    rc, out = run_cli(args + ["--num_env_frames=512", "--epsilon_end=0.2"])
    assert rc == 0, out
    card = json.loads((tmp_path / "teachers" / "pong.json").read_text())
    assert card["kind"] == "q_values"
    assert card["training"]["config"]["epsilon_end"] == 0.2
