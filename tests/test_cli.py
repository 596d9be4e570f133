"""The command-line entry points, end to end, and their messages for bad input;
the flag definitions and their mapping to configs (in process)."""

import hashlib
import json
import shutil

import pytest
from conftest import SPEC_KW, flag_parser, make_teacher, run_cli, run_cli_cases

from multidistill import datasets, teachers

TINY = [f"--max_episode_frames={SPEC_KW['max_episode_frames']}", "--num_agent_steps=300",
        "--num_envs=2", "--num_grad_steps=12", "--batch_size_per_game=4",
        "--student_size=net3", "--eval_episodes=1", "--eval_num_envs=1",
        "--checkpoint_every_steps=6", "--eval_every_steps=6"]


@pytest.mark.slow
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
    md = (run / "report.md").read_text()
    assert "| pong (1) |" in md
    # The videos decode, one frame per agent step up to the cap, and are linked.
    from PIL import Image

    for g in ("pong", "freeway"):
        video = report["videos"][g]
        with Image.open(run / video["path"]) as gif:
            assert gif.n_frames == video["frames"] >= 2
        assert f"[{g}](videos/{g}.gif)" in md
    assert report["plots"]["distillation curves"] == "curves.png"
    # The tiny teachers may score <= 0, where a ratio (and so its plot) is undefined.
    ratios = [r["student_percent_of_teacher"] for r in report["games"].values()]
    has_plot = any(x is not None for x in ratios)
    assert (report["plots"].get("student % of teacher") == "percent_of_teacher.png") is has_plot
    assert (run / "percent_of_teacher.png").exists() is has_plot
    assert report["timing"]["total_seconds"] >= report["timing"]["eval_seconds"] > 0
    metrics = (run / "metrics.jsonl").read_text()
    assert '"charts/student_return/pong"' in metrics
    assert report["training"]["grad_steps"] == 12
    # The student's held-out diagnostics, in the report and beside it.
    diag = report["diagnostics"]
    assert set(diag["games"]) == {"pong", "freeway"} and not diag["reused"]
    assert all(g["num_states"] > 0 for g in diag["games"].values())
    assert "\n## Diagnostics\n" in md and "![diagnostics](diagnostics.png)" in md
    assert (run / "diagnostics.png").exists()
    assert diag["identity"]["student_sha256"] == teachers.sha256_of(run / "student.keras")

    # Rerunning resumes: nothing left to train, datasets already big enough.
    rc, out = run_cli(["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
                       f"--datasets_dir={tmp_path / 'data'}", f"--run_dir={run}"] + TINY
                      + ["--num_grad_steps=14", "--eval_episodes=1"])
    assert rc == 0, out
    assert "(+0)" in out
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["trained_steps"] == 2
    # Another student now: its diagnostics are computed anew, never the old ones.
    assert not report["diagnostics"]["reused"]
    assert report["diagnostics"]["identity"]["student_sha256"] == teachers.sha256_of(
        run / "student.keras") != diag["identity"]["student_sha256"]

    # The student loads in a fresh process with one head per game (importing
    # multidistill.networks registers the class with Keras).
    code = ("import keras, multidistill.networks; m = keras.saving.load_model("
            f"'{run / 'student.keras'}'); print(m.games, m.num_actions)")
    rc, out = run_cli(["-c", code])
    assert rc == 0 and "['pong', 'freeway'] [6, 3]" in out, out

    # The student acts in a top-up: a mixture session of the freeway dataset.
    data = tmp_path / "data"
    with datasets.Dataset(data / "freeway.h5") as ds:
        n = ds.num_agent_steps
    rc, out = run_cli(["-m", "multidistill.build_datasets", "--games=freeway",
                       f"--teachers_dir={teachers_dir}", f"--datasets_dir={data}",
                       f"--num_agent_steps={n + 1}", "--num_envs=1", "--behaviour=mixture",
                       "--beta=0.5", f"--student={run / 'student.keras'}",
                       f"--max_episode_frames={SPEC_KW['max_episode_frames']}"])
    assert rc == 0, out
    student_sha = teachers.sha256_of(run / "student.keras")
    teacher_sha = teachers.sha256_of(teachers_dir / "freeway.keras")
    with datasets.Dataset(data / "freeway.h5") as ds:
        first, last = ds.sessions[0], ds.sessions[-1]
        assert (first.behaviour, first.step_stop) == ("teacher", n)
        assert (last.behaviour, last.beta, last.epsilon, last.step_start) == (
            "mixture", 0.5, 0.05, n)
        assert last.step_stop == ds.num_agent_steps > n
        assert last.behaviour_sha256 == hashlib.sha256(
            (teacher_sha + student_sha).encode()).hexdigest()
        assert last.labeller_sha256 == teacher_sha

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


@pytest.mark.slow
def test_build_datasets_entry_point(tmp_path, teachers_dir):
    args = ["-m", "multidistill.build_datasets", "--games=freeway",
            f"--teachers_dir={teachers_dir}", f"--datasets_dir={tmp_path}",
            "--num_agent_steps=100", "--num_envs=1",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}"]
    rc, out = run_cli(args)
    assert rc == 0, out
    assert f"freeway: {tmp_path / 'freeway.h5'} holds 300 steps in 1 episodes" in out, out
    with datasets.Dataset(tmp_path / "freeway.h5") as ds:
        assert [s.behaviour for s in ds.sessions] == ["teacher"]
    rc, out = run_cli(args + ["--num_agent_steps=400", "--behaviour=student"])
    assert rc == 2, out
    assert "--behaviour=student needs --student=RUN/student.keras" in out, out
    rc, out = run_cli(args + ["--num_agent_steps=400", "--behaviour=random"])
    assert rc == 0, out
    with datasets.Dataset(tmp_path / "freeway.h5") as ds:
        assert [s.behaviour for s in ds.sessions] == ["teacher", "random"]


BAD_FLAGS = [
    (["--games=pong,nope"], "--games: unknown game 'nope': expected one of"),
    (["--games=pong,Pong"], "--games names the game 'pong' twice"),
    (["--games="], "--games is empty"),
    (["--games=qbert"], "no teacher for 'qbert': looked for"),
    (["--games=pong", "--temperatures=pong:0"], "--temperatures: tau must be > 0, found 0.0"),
    (["--games=pong", "--batch_size_per_game=0"], "--batch_size_per_game must be >= 1, found 0"),
    (["--games=pong", "--max_episode_frames=4000"],
     "another preprocessing than asked for: max_episode_frames: 1200"),
    (["--games=pong", "--beta=1.5"], "--beta must be in [0, 1], found 1.5"),
    (["--games=pong", "--eval_episodes=0"], "--eval_episodes must be >= 1, found 0"),
    (["--games=pong", "--control=student", "--num_grad_steps=0"],
     "--control=student needs a trained student to act in round 1: --num_grad_steps"),
    (["--games=pong", "--control=student", "--num_agent_steps=1000",
      "--agent_steps_per_round=500", "--max_agent_steps_per_game=1200"],
     "--max_agent_steps_per_game must hold the 1,000 teacher-driven steps plus one round's "
     "500 steps (>= 1,500), found 1,200"),
    (["--games=freeway", "--update_rule=teacher_value_reward"],
     "--update_rule=teacher_value_reward needs each teacher's state value; the teachers of "
     "['freeway'] have none"),
    (["--games=pong", "--rounds=-2"], "--rounds must be >= 0, found -2"),
    (["--games=pong", "--noevaluate_teachers", "--teacher_cache=t.json"],
     "--teacher_cache=t.json keeps teachers' evaluation episodes, but --noevaluate_teachers"),
    (["--games=pong", "--teacher_cache=pyproject.toml"],
     "--teacher_cache: pyproject.toml is not a JSON file of teachers' episodes"),
]


@pytest.fixture(scope="module")
def bad_flag_runs(tmp_path_factory, teachers_dir):
    """Every BAD_FLAGS case through train.py's entry point, in one interpreter."""
    data = tmp_path_factory.mktemp("bad_flags")
    base = [f"--teachers_dir={teachers_dir}", f"--datasets_dir={data}",
            f"--max_episode_frames={SPEC_KW['max_episode_frames']}"]
    return run_cli_cases("multidistill.main_job", "define_flags",
                         [base + flags for flags, _ in BAD_FLAGS])


@pytest.mark.parametrize("case", range(len(BAD_FLAGS)),
                         ids=[m[:40] for _, m in BAD_FLAGS])
@pytest.mark.slow
def test_bad_flags(bad_flag_runs, case):
    rc, out = bad_flag_runs[case]
    assert rc == 2, out
    assert BAD_FLAGS[case][1] in out, out
    assert "Traceback" not in out


def test_bad_flags_fail_the_same_from_train_py(tmp_path, teachers_dir):
    """One case by the real command line (the others run in one interpreter)."""
    rc, out = run_cli(["train.py", f"--teachers_dir={teachers_dir}",
                       f"--datasets_dir={tmp_path}", "--games=pong", "--beta=1.5"])
    assert rc == 2 and "--beta must be in [0, 1], found 1.5" in out and "Traceback" not in out


@pytest.mark.slow
def test_student_driven_rounds_end_to_end(tmp_path, teachers_dir):
    """--control=student: round 0 on the teacher's data, one round collected by
    the student (its session says so), the report carries the rounds; trained
    by an update rule that reads the next-step fields."""
    run = tmp_path / "run"
    rc, out = run_cli(["train.py", "--games=pong,freeway", f"--teachers_dir={teachers_dir}",
                       f"--datasets_dir={tmp_path / 'data'}", f"--run_dir={run}",
                       "--control=student", "--rounds=1", "--agent_steps_per_round=100",
                       "--grad_steps_per_round=4", "--novideos",
                       "--update_rule=expected_entropy_regularised"] + TINY)
    assert rc == 0, out
    report = json.loads((run / "report.json").read_text())
    assert report["config"]["objective"]["rule"] == "expected_entropy_regularised"
    assert report["training"]["grad_steps"] == 12 + 4
    assert report["rounds"]["sampler"] == {"rounds": [1], "teacher_data": True}
    for game in ("pong", "freeway"):
        with datasets.Dataset(run / "rounds" / game / "round_001.h5") as ds:
            assert [s.behaviour for s in ds.sessions] == ["student"]
    assert "[round 1/1] collecting 100 steps per game, student acting" in out


@pytest.mark.slow
def test_dataset_of_another_teacher_or_not_hdf5(tmp_path, spec, datasets_dir, teachers_dir):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(datasets_dir / "pong.h5", data / "pong.h5")
    other = tmp_path / "other_teachers"
    make_teacher(other, "pong", "q_values", spec, seed=99)
    args = ["train.py", "--games=pong", f"--teachers_dir={other}", f"--datasets_dir={data}",
            f"--run_dir={tmp_path / 'run'}"] + TINY
    rc, out = run_cli(args)
    assert rc == 2 and "labelled by another teacher" in out and "--rebuild_datasets" in out, out
    before = (data / "pong.h5").read_bytes()
    assert before == (datasets_dir / "pong.h5").read_bytes()  # Left untouched.

    (data / "pong.h5").write_text("not hdf5")
    rc, out = run_cli(args)
    assert rc == 2 and "pong.h5 is not an HDF5 file" in out, out


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path):
    rc, out = run_cli(["train.py", "--games=nope", "--verbose"])
    assert rc == 2 and "Traceback" in out and "unknown game 'nope'" in out, out


@pytest.mark.slow
def test_help_lists_every_flag_with_text():
    _, out = run_cli(["train.py", "--help"])  # absl exits 1 after printing help.
    for flag in ("--games", "--teachers_dir", "--num_agent_steps", "--num_grad_steps",
                 "--temperatures", "--sticky_action_prob", "--verbose", "--preset",
                 "--behaviour", "--beta", "--student", "--eval_episodes"):
        assert f"  {flag}:" in out or f"  --[no]{flag[2:]}:" in out, flag
    # Defaults are the configs' (cli defines each flag once, from them).
    assert "--num_grad_steps: Gradient steps of the whole run.\n    (default: '25000')" in out
    assert "(default: 'auto')" in out.split("--eval_episodes:")[1].split("--")[0]


# -- flags to configs, in process ------------------------------------------------


@pytest.fixture()
def parse():
    """Parses argv into the entry points' flags (defined once per process)."""
    from multidistill import cli

    yield from flag_parser(("control", cli.define_rounds_flags))


def test_flag_defaults_are_the_configs_defaults(parse):
    from multidistill import (
        collect,
        distiller,
        environments,
        evaluation,
        networks,
        objectives,
        pipeline,
    )

    cli = parse()
    assert cli.collect_config_from_flags() == collect.CollectConfig()
    assert cli.eval_protocol_from_flags() == evaluation.EvalProtocol()
    assert cli.eval_protocol_from_flags().num_episodes == 0  # auto: per game
    assert cli.FLAGS.videos is True and cli.FLAGS.video_seconds == 30.0
    assert cli.preprocessing_from_flags() == environments.Preprocessing()
    assert cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"]) == (
        distiller.DistillConfig(
            games=("pong", "freeway"),
            objective=objectives.Distillation(temperatures=(0.01, 1.0)),
            precision=networks.default_precision(), pipeline=pipeline.PipelineConfig()))
    assert cli.FLAGS.num_grad_steps == 25_000 == distiller.DistillConfig(()).num_grad_steps


def test_flags_map_to_configs(parse):
    cli = parse("--num_agent_steps=123", "--behaviour=mixture", "--beta=0.3",
                "--epsilon=0.2", "--num_envs=3", "--seed=7", "--loss=nll",
                "--feature_beta=0.01", "--temperatures=freeway:0.5",
                "--game_weights=pong:2", "--student_size=net2", "--precision=float32",
                "--num_grad_steps=9", "--batch_size_per_game=5", "--learning_rate=0.01",
                "--eval_episodes=3", "--eval_epsilon=0.0", "--eval_num_envs=2",
                "--eval_seed=11", "--sticky_action_prob=0.25")
    c = cli.collect_config_from_flags()
    assert (c.num_agent_steps, c.behaviour, c.beta, c.epsilon, c.num_envs, c.seed) == (
        123, "mixture", 0.3, 0.2, 3, 7)
    d = cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"])
    assert d.objective.policy_loss == "nll" and d.objective.feature_beta == 0.01
    assert d.objective.temperatures == (0.01, 0.5)
    assert d.pipeline.game_weights == (2.0, 1.0) and d.pipeline.seed == 7
    assert (d.student_size, d.precision, d.num_grad_steps, d.learning_rate) == (
        "net2", "float32", 9, 0.01)
    assert d.pipeline.batch_size_per_game == 5
    e = cli.eval_protocol_from_flags()
    assert (e.num_episodes, e.epsilon, e.num_envs, e.seed) == (3, 0.0, 2, 11)
    assert cli.preprocessing_from_flags().sticky_action_prob == 0.25
    e = parse("--eval_episodes=Q*bert:200,pong:48").eval_protocol_from_flags()
    assert [e.episodes(g) for g in ("qbert", "pong", "freeway")] == [200, 48, 16]


def test_rounds_and_update_rule_flags_map_to_configs(parse):
    from multidistill import rounds, update_rules

    assert cli_names_match(update_rules)
    cli = parse()
    assert cli.rounds_config_from_flags(0) == rounds.RoundsConfig()
    cli = parse("--control=mixture", "--agent_steps_per_round=10", "--grad_steps_per_round=3",
                "--student_epsilon=0.2", "--beta=0.8", "--beta_decay=0.25",
                "--max_agent_steps_per_game=99", "--nokeep_teacher_data")
    assert cli.rounds_config_from_flags(5) == rounds.RoundsConfig(
        control="mixture", rounds=5, agent_steps_per_round=10, grad_steps_per_round=3,
        epsilon=0.2, beta=0.8, beta_decay=0.25, max_agent_steps_per_game=99,
        keep_teacher_data=False)
    cli = parse("--update_rule=n_distill", "--rule_gamma=0.9")
    d = cli.distill_config_from_flags(["pong", "freeway"], ["q_values", "logits"])
    assert d.objective == update_rules.UpdateRule(
        rule="n_distill", temperatures=(0.01, 1.0), gamma=0.9,
        teacher_kinds=("q_values", "logits"))
    assert cli.FLAGS["rule_divergence"].default == update_rules.UpdateRule().divergence
    cli = parse("--update_rule=n_distill", "--rule_divergence=cross_entropy")
    assert cli.distill_config_from_flags(["pong"], ["q_values"]).objective.divergence == \
        "cross_entropy"


def test_student_head_flag_maps_to_the_config(parse):
    from absl import flags

    from multidistill import distiller

    cli = parse()
    assert cli.FLAGS.student_head == "per_game" == distiller.DistillConfig(()).student_head
    cli = parse("--student_head=shared18")
    assert cli.distill_config_from_flags(["pong"], ["q_values"]).student_head == "shared18"
    assert "shared18" in cli.FLAGS["student_head"].help
    assert "per_game (the default)" in cli.FLAGS["student_head"].help
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"student_head.*should be one of <per_game\|shared18>"):
        parse("--student_head=shared")


def cli_names_match(update_rules):
    from multidistill import cli

    return cli._RULE_NAMES == update_rules.RULE_NAMES


@pytest.mark.parametrize("argv, build, message", [
    (["--beta=1.5"], "collect", r"--beta must be in [0, 1], found 1.5"),
    (["--rounds=-1"], "rounds", "--rounds must be >= 0, found -1"),
    (["--beta_decay=2"], "rounds", r"--beta_decay must be in [0, 1], found 2.0"),
    (["--student_epsilon=-1"], "rounds", r"--student_epsilon must be in [0, 1], found -1.0"),
    (["--agent_steps_per_round=0"], "rounds", "--agent_steps_per_round must be >= 1, found 0"),
    (["--max_agent_steps_per_game=-1"], "rounds", "--max_agent_steps_per_game must be >= 0"),
    (["--update_rule=n_distill", "--feature_beta=0.01"], "distill",
     "--feature_beta applies to --loss, not to --update_rule=n_distill"),
    (["--update_rule=value_gated_distill"], "distill_logits",
     "every teacher must be of kind q_values, the teachers of ['pong'] give logits"),
    (["--update_rule=n_distill", "--rule_gamma=1.5"], "distill",
     r"--rule_gamma must be in [0, 1], found 1.5"),
    (["--epsilon=-0.5"], "collect", r"--epsilon must be in [0, 1], found -0.5"),
    (["--num_agent_steps=0"], "collect", "--num_agent_steps must be >= 1, found 0"),
    (["--num_envs=0"], "collect", "--num_envs must be >= 1, found 0"),
    (["--eval_episodes=0"], "eval", "--eval_episodes must be >= 1, found 0"),
    (["--eval_episodes=pong:x"], "eval", "--eval_episodes: 'x' for pong is not a number"),
    (["--eval_episodes=pong:1.5"], "eval",
     "--eval_episodes: episodes must be whole numbers >= 1, found {'pong': 1.5}"),
    (["--eval_episodes=many"], "eval", "--eval_episodes: expected game:value pairs"),
    (["--eval_epsilon=2"], "eval", r"--eval_epsilon must be in [0, 1], found 2.0"),
    (["--eval_num_envs=0"], "eval", "--eval_num_envs must be >= 1, found 0"),
    (["--learning_rate=0"], "distill", "--learning_rate must be > 0, found 0.0"),
    (["--batch_size_per_game=0"], "distill", "--batch_size_per_game must be >= 1, found 0"),
    (["--num_grad_steps=-1"], "distill", "--num_grad_steps must be >= 0, found -1"),
    (["--checkpoint_every_steps=0"], "distill", "--checkpoint_every_steps must be >= 1, found 0"),
    (["--eval_every_steps=0"], "distill", "--eval_every_steps must be >= 1, found 0"),
    (["--feature_beta=-1"], "distill", "--feature_beta must be >= 0, found -1.0"),
    (["--game_weights=pong:0"], "distill", "--game_weights must be >= 0 with a positive sum"),
    (["--temperatures=qbert:1"], "distill", "--temperatures: 'qbert' is not in --games"),
    (["--temperatures=pong:0"], "distill", "--temperatures: tau must be > 0, found 0.0"),
    (["--game_weights=pong"], "distill", "--game_weights: expected game:value pairs"),
    (["--noop_max=-1"], "preprocessing", "noop_max must be >= 0, found -1"),
])
def test_bad_values_are_reported_by_their_flag(parse, argv, build, message):
    cli = parse(*argv)
    builders = {
        "collect": cli.collect_config_from_flags,
        "eval": cli.eval_protocol_from_flags,
        "distill": lambda: cli.distill_config_from_flags(["pong"], ["q_values"]),
        "distill_logits": lambda: cli.distill_config_from_flags(["pong"], ["logits"]),
        "rounds": lambda: cli.rounds_config_from_flags(
            cli.FLAGS.rounds if cli.FLAGS.rounds is not None else 2),
        "preprocessing": cli.preprocessing_from_flags,
    }
    with pytest.raises(cli.UsageError) as e:
        builders[build]()
    assert message in str(e.value)
