"""The student size sweep: the rows' numbers against hand counts, the table and
plot, resume (a finished size is not trained or evaluated again, every size
on the same data), and messages for bad flags."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import (
    constant_report,
    flag_parser,
    new_writer,
    run_cli,
    synthetic_episode,
    use_fake_atari,
)

from multidistill import (
    distiller,
    evaluation,
    networks,
    objectives,
    pipeline,
    stages,
    students,
    sweep,
)

GAMES = ("pong", "freeway")  # 6 and 3 actions.

# Hand counts (weights + biases), frames 4x84x84. The trunk of `tiny`:
# conv 8x8/4 4->8: 4*64*8+8 = 2,056; conv 4x4/2 8->8: 8*16*8+8 = 1,032;
# conv 3x3/1 8->8: 8*9*8+8 = 584; flatten 7*7*8 = 392; hidden 392*64+64 = 25,152.
TINY_TRUNK = 2_056 + 1_032 + 584 + 25_152  # 28,824
# The Nature DQN of an A-action game: convs 8,224 + 32,832 + 36,928, hidden
# 3,136*512+512 = 1,606,144, outputs 512*A+A.
DQN_6 = 8_224 + 32_832 + 36_928 + 1_606_144 + 512 * 6 + 6  # 1,687,206
DQN_3 = 8_224 + 32_832 + 36_928 + 1_606_144 + 512 * 3 + 3  # 1,685,667
# The trained tiny student of the tests: trunk, per game a 16-unit head
# layer (64*16+16 = 1,040) and its outputs (pong 16*6+6 = 102, freeway 16*3+3 = 51).
TINY_STUDENT = TINY_TRUNK + 2 * 1_040 + 102 + 51  # 31,057
TINY_ONE_GAME = TINY_TRUNK + 64 * 6 + 6  # 29,214, no head layer


def _write_dataset(path, spec, game, num_actions, episodes, session_seed=0):
    with new_writer(path, spec, game=game, num_actions=num_actions, feature_dim=16,
                    seed=session_seed) as w:
        for k in range(episodes):
            w.append_episode(synthetic_episode(24, num_actions, 16, seed=10 * session_seed + k))


@pytest.fixture()
def data(tmp_path, spec):
    """Tiny synthetic datasets of pong and freeway (4 episodes of 24 steps each)."""
    d = tmp_path / "data"
    d.mkdir()
    for game, actions in zip(GAMES, (6, 3)):
        _write_dataset(d / f"{game}.h5", spec, game, actions, 4)
    return [str(d / f"{g}.h5") for g in GAMES]


def _config():
    return distiller.DistillConfig(
        games=GAMES, objective=objectives.Distillation(temperatures=(0.01, 1.0)),
        head_units=16, num_grad_steps=3, checkpoint_every_steps=3, eval_every_steps=3,
        learning_rate=1e-3,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=4, block_rows=32,
                                         blocks_in_memory=2))


def _run_sweep(out_dir, sizes, paths, spec, teachers_dir):
    return sweep.run_sweep(
        out_dir, sweep.SweepConfig(sizes=sizes, latency_calls=3, latency_warmup_calls=1),
        _config(), paths, spec, ["q_values", "logits"],
        evaluation.EvalProtocol(num_episodes=2, num_envs=2), teachers_dir,
        extra={"command": "test"}, progress=False)


def test_sweep_rows_resume_and_table(tmp_path, data, spec, teachers_dir, monkeypatch, capsys):
    use_fake_atari(monkeypatch, length=4)
    out = tmp_path / "sweep"
    (tiny,) = _run_sweep(out, ("tiny",), data, spec, teachers_dir)
    report = json.loads((out / "tiny" / "report.json").read_text())

    # Parameters against the hand counts, and their shares of the teachers.
    assert tiny["parameters"] == TINY_STUDENT == report["student_parameters"]
    assert tiny["teacher_parameters"] == {"pong": DQN_6, "freeway": DQN_3}
    assert tiny["percent_of_teachers"] == pytest.approx(100 * 31_057 / (DQN_6 + DQN_3))
    assert (tiny["one_game_parameters"], tiny["one_game_teacher_parameters"]) == (
        TINY_ONE_GAME, DQN_6)
    assert tiny["one_game_percent_of_teacher"] == pytest.approx(100 * 29_214 / 1_687_206)
    assert round(tiny["one_game_percent_of_teacher"], 2) == 1.73
    # Bytes: the file's size; throughput: the run's samples over its training time,
    # which for a run trained in one call is train()'s own figure.
    assert tiny["student_file_bytes"] == (out / "tiny" / "student.keras").stat().st_size
    training = report["training"]
    assert (tiny["grad_steps"], tiny["batch_size"]) == (3, 8)
    assert tiny["samples_per_s"] == pytest.approx(3 * 8 / training["run_train_seconds"])
    assert tiny["samples_per_s"] == pytest.approx(training["samples_per_s"], rel=1e-3)
    assert list(tiny["latency_ms"]) == ["1", "32"] and tiny["latency_game"] == "pong"
    # Every size's report carries the diagnostics of its own student file.
    diag = json.loads((out / "tiny" / "diagnostics.json").read_text())
    assert set(report["diagnostics"]["games"]) == {"pong", "freeway"}
    assert report["diagnostics"]["games"] == diag["games"]
    assert "## Diagnostics" in (out / "tiny" / "report.md").read_text()
    for b, lat in tiny["latency_ms"].items():
        assert (lat["batch_size"], lat["calls"], lat["warmup_calls"]) == (int(b), 3, 1)
        assert lat["median_ms"] > 0
    # Scores: the report's.
    for g in GAMES:
        r = report["games"][g]
        assert tiny["games"][g] == {"percent_of_teacher": r["student_percent_of_teacher"],
                                    "ci": r.get("student_percent_of_teacher_ci"),
                                    "episodes": 2}
    assert tiny["geometric_mean_percent_of_teacher"] == \
        report["geometric_mean_percent_of_teacher"]
    assert report["sweep"] == {"output_dir": str(out), "size": "tiny"}
    assert report["command"] == "test" and report["config"]["student_size"] == "tiny"
    cached = json.loads((out / "tiny" / sweep.ROW_FILE).read_text())
    assert cached == json.loads(json.dumps(tiny))

    # The datasets grow; the sweep resumes with one more size: tiny is neither
    # trained nor evaluated again, net3 trains on the data tiny trained on.
    with new_writer(data[0], spec, game="pong", num_actions=6, feature_dim=16,
                    seed=1) as w:
        w.append_episode(synthetic_episode(24, 6, 16, seed=99))
    calls = []

    def spy(name, run_dir_arg):
        real = getattr(stages, name)

        def stage(*args, **kwargs):
            calls.append((name, str(args[run_dir_arg])))
            return real(*args, **kwargs)

        monkeypatch.setattr(stages, name, stage)

    spy("distil", 0)
    spy("evaluate_student", 1)
    played = []
    real_evaluate = evaluation.evaluate

    def evaluate(game, predict, kind, *args, label="", **kwargs):
        played.append(label)
        return real_evaluate(game, predict, kind, *args, label=label, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    capsys.readouterr()
    rows = _run_sweep(out, ("net3", "tiny"), data, spec, teachers_dir)
    printed = capsys.readouterr().out
    # The teachers played once for the whole sweep: net3 meets tiny's teacher
    # episodes from the sweep's cache, still paired with its own on the same seeds.
    assert played == ["pong student", "freeway student"]
    net3_report = json.loads((out / "net3" / "report.json").read_text())
    for g in GAMES:
        assert net3_report["games"][g]["teacher"]["returns"] == \
            report["games"][g]["teacher"]["returns"]
    cache = json.loads((out / sweep.TEACHER_CACHE_FILE).read_text())
    assert sorted(json.loads(k)["game"] for k in cache) == sorted(GAMES)
    assert [r["size"] for r in rows] == ["net3", "tiny"]
    assert calls == [("distil", str(out / "net3")), ("evaluate_student", str(out / "net3"))]
    assert f"tiny: already evaluated ({out / 'tiny' / sweep.ROW_FILE})" in printed
    assert "pong 4 of 5" in printed  # The note on the data left out.
    assert rows[1] == cached
    assert distiller.data_prefix(out / "net3") == distiller.data_prefix(out / "tiny") == [4, 4]
    assert rows[0]["data"] == rows[1]["data"]
    assert rows[0]["parameters"] > rows[1]["parameters"]

    # The table, the JSON and the plot.
    summary = sweep.sweep_summary(rows, GAMES, out, "python -m multidistill.sweep --x", "abc")
    md_path, json_path, png, table = sweep.write_sweep(summary, out)
    lines = table.splitlines()
    assert lines[0].startswith("| size | trunk (conv filters, hidden units) | parameters | "
                               "% of its 2 teachers | one-game parameters (6 actions) | "
                               "% of one teacher | student.keras (bytes) | latency, batch 1 "
                               "(ms) | latency, batch 32 (ms) | training samples/s | pong % "
                               "of teacher | freeway % of teacher | geometric mean")
    bytes_ = tiny["student_file_bytes"]
    assert lines[3].startswith(f"| tiny | 8/8/8, 64 | 31,057 | 0.92 | 29,214 | 1.73 | "
                               f"{bytes_:,} | ")
    assert lines[2].startswith("| net3 | 16/16/16, 64 | ")
    assert "`python -m multidistill.sweep --x` (commit `abc`)" in table
    assert "median of 3 timed calls, after 1 warm-up calls, of the pong policy network" in table
    assert "pong 96 agent steps in 4 episodes" in table  # The prefix, not the 5th episode.
    assert json.loads(json_path.read_text())["rows"] == json.loads(json.dumps(rows))
    assert md_path.read_text().endswith(table + (
        "\n![student % of teacher against parameters](sweep.png)\n" if png else ""))
    has_ratio = any(r["geometric_mean_percent_of_teacher"] is not None
                    or any(x["percent_of_teacher"] is not None for x in r["games"].values())
                    for r in rows)
    assert (png is not None) is has_ratio

    # A row whose data differ from the others' is refused.
    row = json.loads((out / "net3" / sweep.ROW_FILE).read_text())
    row["data"][0]["num_episodes"] = 5
    (out / "net3" / sweep.ROW_FILE).write_text(json.dumps(row))
    with pytest.raises(ValueError, match="the sizes trained on different data: net3 on pong "
                                         "96 agent steps in 5 episodes.*\\['tiny'\\]"):
        _run_sweep(out, ("net3", "tiny"), data, spec, teachers_dir)


def _report(student_returns):
    """An evaluation report of constant returns against teachers scoring 10."""
    return constant_report(student_returns)


def test_row_and_table_from_a_report(tmp_path):
    student = networks.MultiTaskStudent(list(GAMES), [6, 3], conv_filters=(8, 8, 8),
                                        fc_units=64, head_units=16).build_for_inputs()
    path = students.save_student(student, tmp_path / "student.keras")
    report = _report({"pong": [5.0, 5.0], "freeway": [10.0, 10.0]})
    latency = [{"batch_size": 1, "median_ms": 0.5, "calls": 7, "warmup_calls": 2}]
    row = sweep.size_row("tiny", student, path, report,
                         {"grad_steps": 100, "run_train_seconds": 4.0, "seconds": 4.0},
                         _config(), latency)
    assert row["parameters"] == TINY_STUDENT
    assert row["samples_per_s"] == 100 * 8 / 4.0
    assert row["student_file_bytes"] == path.stat().st_size
    # pong 50 %, freeway 100 % (constant returns: zero-width intervals),
    # geometric mean sqrt(50 * 100) = 70.7.
    assert row["games"]["pong"] == {"percent_of_teacher": 50.0, "ci": [50.0, 50.0],
                                    "episodes": 2}
    assert row["geometric_mean_percent_of_teacher"] == pytest.approx(70.71, abs=0.01)
    row.update(latency_game="pong", data=[{"game": "pong", "num_agent_steps": 96,
                                           "num_episodes": 4}])
    summary = sweep.sweep_summary([row], GAMES, tmp_path, "cmd")
    md_path, _, png, table = sweep.write_sweep(summary, tmp_path)
    assert table.splitlines()[2] == (
        f"| tiny | 8/8/8, 64 | 31,057 | 0.92 | 29,214 | 1.73 | {row['student_file_bytes']:,} "
        "| 0.50 | 200 | 50.0 [50.0, 50.0] | 100.0 [100.0, 100.0] | 70.7 [70.7, 70.7] |")
    assert png.exists() and png.stat().st_size > 1000
    assert "![student % of teacher against parameters](sweep.png)" in md_path.read_text()
    # No step trained: no throughput.
    row = sweep.size_row("tiny", student, path, report,
                         {"grad_steps": 0, "run_train_seconds": 0.0}, _config(), latency)
    assert row["samples_per_s"] is None


def test_latency_is_the_median_of_the_timed_calls_after_the_warmup():
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])  # Calls of 3, 1 and 2 ms.
    made = []
    seconds = sweep.time_calls(lambda: made.append(1), calls=3, warmup_calls=2,
                               clock=lambda: next(ticks))
    assert len(made) == 5 and seconds == pytest.approx([0.003, 0.001, 0.002])

    student = networks.MultiTaskStudent(list(GAMES), [6, 3], conv_filters=(8, 8, 8),
                                        fc_units=64, head_units=0).build_for_inputs()
    ticks = iter(np.cumsum([0, 0.004, 1, 0.001, 1, 0.002]))
    lat = sweep.inference_latency(student, "freeway", 2, calls=3, warmup_calls=1,
                                  clock=lambda: float(next(ticks)))
    assert lat == {"batch_size": 2, "median_ms": pytest.approx(2.0), "calls": 3,
                   "warmup_calls": 1}


def test_a_cached_row_is_reused_only_with_its_settings(tmp_path):
    config = _config()
    key = sweep.row_key(config, evaluation.EvalProtocol(), sweep.SweepConfig(), True)
    assert sweep.cached_row(tmp_path, key) is None  # None yet.
    (tmp_path / sweep.ROW_FILE).write_text(json.dumps({"size": "dqn", "key": key}))
    assert sweep.cached_row(tmp_path, key) == {"size": "dqn", "key": key}
    for other in (sweep.row_key(config, evaluation.EvalProtocol(num_episodes=3),
                                sweep.SweepConfig(), True),
                  sweep.row_key(config, evaluation.EvalProtocol(),
                                sweep.SweepConfig(latency_calls=7), True),
                  sweep.row_key(config, evaluation.EvalProtocol(), sweep.SweepConfig(), False),
                  sweep.row_key(distiller.DistillConfig(
                      games=GAMES, objective=config.objective, num_grad_steps=4),
                      evaluation.EvalProtocol(), sweep.SweepConfig(), True),
                  # Another engine times the training differently.
                  sweep.row_key(dataclasses.replace(config, distribution="data_parallel"),
                                evaluation.EvalProtocol(), sweep.SweepConfig(), True)):
        assert sweep.cached_row(tmp_path, other) is None
    # Rows made before the engine was a setting (one device) are still reused.
    assert "distribution" not in key["config"]
    (tmp_path / sweep.ROW_FILE).write_text('{"size": "dq')  # Cut by a crash: made again.
    assert sweep.cached_row(tmp_path, key) is None


# -- flags --------------------------------------------------------------------------


@pytest.fixture()
def parse():
    """Parses argv into the sweep's flags (defined once per process)."""
    yield from flag_parser(("sizes", sweep.define_flags))


def test_flags_map_to_the_config(parse):
    parse()
    assert sweep.config_from_flags() == sweep.SweepConfig()
    assert sweep.SweepConfig().sizes == tuple(networks.STUDENT_SIZES)
    parse("--sizes= Tiny,dqn", "--latency_calls=9", "--latency_warmup_calls=0",
          "--latency_batch_sizes=4")
    assert sweep.config_from_flags() == sweep.SweepConfig(
        sizes=("tiny", "dqn"), latency_calls=9, latency_warmup_calls=0,
        latency_batch_sizes=(4,))


KNOWN = ", ".join(networks.STUDENT_SIZES)


@pytest.mark.parametrize("argv, message", [
    (["--sizes=dqn,huge"], f"--sizes: unknown student size 'huge': expected one of {KNOWN}"),
    (["--sizes=tiny,net3,tiny"],
     "--sizes names the size 'tiny' twice (found tiny,net3,tiny): expected each size once"),
    (["--sizes=,"], f"--sizes is empty: expected a comma-separated list of student sizes "
                    f"among {KNOWN}"),
    (["--latency_calls=0"], "--latency_calls must be >= 1, found 0"),
    (["--latency_warmup_calls=-1"], "--latency_warmup_calls must be >= 0, found -1"),
    (["--latency_batch_sizes=1,x"],
     "--latency_batch_sizes: expected whole numbers, e.g. 1,32, found 1,x"),
    (["--latency_batch_sizes=32,32"],
     "--latency_batch_sizes must be distinct whole numbers >= 1, found 32,32"),
    (["--student_size=net3"],
     "--student_size does not apply to the sweep (give the sizes with --sizes), found "
     "--student_size=net3"),
    (["--run_dir=runs/x"], "--run_dir does not apply to the sweep (each size runs in "
                           "<output_dir>/<size>; give --output_dir), found --run_dir=runs/x"),
    (["--codistill=2"], "--codistill does not apply to the sweep (one student per size; run "
                        "the main job with --codistill instead), found --codistill=2"),
])
def test_bad_flags_name_the_flag(parse, argv, message):
    cli = parse(*argv)
    with pytest.raises(cli.UsageError) as e:
        sweep.config_from_flags()
    assert message in str(e.value), str(e.value)


def test_the_entry_point_refuses_an_unknown_size_before_any_work(tmp_path):
    rc, out = run_cli(["-m", "multidistill.sweep", "--sizes=dqn,huge",
                       f"--teachers_dir={tmp_path / 'none'}"])
    assert rc == 2, out
    assert f"error: --sizes: unknown student size 'huge': expected one of {KNOWN}" in out
    assert "Traceback" not in out
