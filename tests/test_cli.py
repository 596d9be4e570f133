"""The command-line entry points, end to end, and their messages for bad input."""

import json
import shutil

import pytest
from conftest import SPEC_KW, make_teacher, run_cli

TINY = [f"--max_episode_frames={SPEC_KW['max_episode_frames']}", "--num_agent_steps=300",
        "--num_envs=2", "--num_grad_steps=12", "--batch_size_per_game=4",
        "--student_size=net3", "--eval_episodes=1", "--eval_num_envs=1",
        "--checkpoint_every_steps=6", "--eval_every_steps=6"]


def test_train_build_and_evaluate_end_to_end(tmp_path, teachers_dir):
    run = tmp_path / "run"
    rc, out = run_cli(["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
                       f"--datasets_dir={tmp_path / 'data'}", f"--run_dir={run}"] + TINY)
    assert rc == 0, out
    report = json.loads((run / "report.json").read_text())
    assert set(report["games"]) == {"pong", "freeway"}
    for g in ("pong", "freeway"):
        row = report["games"][g]
        assert row["student"]["episodes"] == 1 and row["teacher"]["episodes"] == 1
        assert row["student_human_normalized"] == pytest.approx(
            (row["student"]["mean"] - row["random_score"])
            / (row["human_score"] - row["random_score"]))
    assert "| pong |" in (run / "report.md").read_text()
    assert report["training"]["grad_steps"] == 12

    # Rerunning resumes: nothing left to train, datasets already big enough.
    rc, out = run_cli(["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
                       f"--datasets_dir={tmp_path / 'data'}", f"--run_dir={run}"] + TINY
                      + ["--num_grad_steps=14", "--eval_episodes=1"])
    assert rc == 0, out
    assert "(+0)" in out
    assert json.loads((run / "report.json").read_text())["training"]["trained_steps"] == 2

    # The student loads in a fresh process with one head per game.
    code = ("import keras, multidistill; m = keras.saving.load_model("
            f"'{run / 'student.keras'}'); print(m.games, m.num_actions)")
    rc, out = run_cli(["-c", code])
    assert rc == 0 and "['pong', 'freeway'] [6, 3]" in out, out

    # Evaluation on its own, with the teachers' card scores.
    rc, out = run_cli(["-m", "multidistill.evaluate", f"--student={run / 'student.keras'}",
                       "--games=freeway", f"--teachers_dir={teachers_dir}",
                       "--eval_episodes=1", "--evaluate_teachers=false",
                       f"--output_dir={tmp_path / 'eval'}"])
    assert rc == 0, out
    assert list(json.loads((tmp_path / "eval" / "report.json").read_text())["games"]) == [
        "freeway"]
    rc, out = run_cli(["-m", "multidistill.evaluate", f"--student={run / 'student.keras'}",
                       "--games=qbert", f"--teachers_dir={teachers_dir}"])
    assert rc == 2, out
    assert "names ['qbert'], which the student has no head for" in out, out
    assert "Traceback" not in out


def test_build_datasets_entry_point(tmp_path, teachers_dir):
    rc, out = run_cli(["-m", "multidistill.build_datasets", "--games=freeway",
                       f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}",
                       "--num_agent_steps=100", "--num_envs=1",
                       f"--max_episode_frames={SPEC_KW['max_episode_frames']}"])
    assert rc == 0, out
    assert (tmp_path / "freeway.h5").exists() and "freeway:" in out


@pytest.mark.parametrize("flags, message", [
    (["--games=pong,nope"], "--games: unknown game 'nope': expected one of"),
    (["--games=pong,Pong"], "--games names the game 'pong' twice"),
    (["--games="], "--games is empty"),
    (["--games=qbert"], "no teacher for 'qbert': looked for"),
    (["--games=pong", "--temperatures=pong:0"], "--temperatures: tau must be > 0, found 0.0"),
    (["--games=pong", "--batch_size_per_game=0"], "--batch_size_per_game must be >= 1, found 0"),
    (["--games=pong", "--max_episode_frames=4000"],
     "another preprocessing than asked for: max_episode_frames: 1200"),
])
def test_bad_flags(tmp_path, teachers_dir, flags, message):
    args = ["train.py", f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}"] + flags
    rc, out = run_cli(args)
    assert rc == 2, out
    assert message in out, out
    assert "Traceback" not in out


def test_dataset_of_another_teacher_or_not_hdf5(tmp_path, spec, datasets_dir, teachers_dir):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(datasets_dir / "pong.h5", data / "pong.h5")
    other = tmp_path / "other_teachers"
    make_teacher(other, "pong", "q_values", spec, seed=99)
    args = ["train.py", "--games=pong", f"--teachers_dir={other}", f"--datasets_dir={data}",
            f"--run_dir={tmp_path / 'run'}"] + TINY
    rc, out = run_cli(args)
    assert rc == 2 and "recorded from another teacher" in out and "--rebuild_datasets" in out, out
    before = (data / "pong.h5").read_bytes()
    assert before == (datasets_dir / "pong.h5").read_bytes()  # Left untouched.

    (data / "pong.h5").write_text("not hdf5")
    rc, out = run_cli(args)
    assert rc == 2 and "pong.h5 is not an HDF5 file" in out, out


def test_verbose_shows_the_traceback(tmp_path):
    rc, out = run_cli(["train.py", "--games=nope", "--verbose"])
    assert rc == 2 and "Traceback" in out and "unknown game 'nope'" in out, out


def test_help_lists_every_flag_with_text():
    _, out = run_cli(["train.py", "--help"])  # absl exits 1 after printing help.
    for flag in ("--games", "--teachers_dir", "--num_agent_steps", "--num_grad_steps",
                 "--temperatures", "--sticky_action_prob", "--verbose", "--preset"):
        assert f"  {flag}:" in out or f"  --[no]{flag[2:]}:" in out, flag
