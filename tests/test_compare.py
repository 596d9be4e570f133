"""Run comparison: the table from two reports, the plot, and messages for bad input."""

import json

import pytest
from conftest import constant_report, run_cli

from multidistill import compare, evaluation


def _run(tmp_path, name, student_returns, commit, timing=None):
    report = constant_report(
        student_returns,
        extra={"timing": timing or {"total_seconds": 600, "build_seconds": 60,
                                    "run_distill_seconds": 480, "eval_seconds": 60},
               "student_parameters": 1000, "teacher_parameters": {"pong": 4000},
               "commit": commit, "command": f"python train.py --run_dir=runs/{name}"})
    run = tmp_path / name
    evaluation.write_report(report, run)
    return run


def test_compare_two_runs(tmp_path):
    a = _run(tmp_path, "a", {"pong": [5.0, 5.0], "freeway": [10.0, 10.0]}, "abc1234")
    b = _run(tmp_path, "b", {"pong": [10.0, 12.0]}, None)
    md_path, png, table = compare.compare([str(a), str(b / "report.json")], tmp_path / "cmp")
    lines = table.splitlines()
    assert lines[0] == ("| run | pong % of teacher | freeway % of teacher | geometric mean % of "
                        "teacher | wall-clock (build / distil / eval) | student parameters "
                        "| commit |")
    # a: pong 50 %, freeway 100 % (constant episodes: zero-width intervals),
    # geometric mean sqrt(50 * 100) = 70.7.
    assert lines[2] == ("| a | 50.0 [50.0, 50.0] | 100.0 [100.0, 100.0] | 70.7 [70.7, 70.7] "
                        "| 10.0 min (1.0 min / 8.0 min / 1.0 min) | 1,000 (25.0 % of a "
                        "teacher) | `abc1234` |")
    # b: pong 110 %, paired resamples of (10, 10) and (12, 10): [100, 120]; no freeway.
    assert lines[3].startswith("| b | 110.0 [100.0, 120.0] | — | 110.0 [100.0, 120.0] |")
    assert "`python train.py --run_dir=runs/a`" in table
    assert md_path.read_text().startswith("# multidistill: run comparison")
    assert png.exists() and png.stat().st_size > 1000
    # Each run's own report shows its plot too.
    assert (a / "percent_of_teacher.png").exists()
    assert "![student % of teacher](percent_of_teacher.png)" in (a / "report.md").read_text()


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no report found"):
        compare.load_report(tmp_path)
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=f"{bad}: not a JSON report"):
        compare.load_report(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a multidistill report .*found a JSON list"):
        compare.load_report(bad)


@pytest.mark.slow
def test_compare_command_line(tmp_path):
    a = _run(tmp_path, "a", {"pong": [5.0, 5.0]}, "abc1234")
    out_dir = tmp_path / "out"
    rc, out = run_cli(["-m", "multidistill.compare", str(a), str(a), f"--output_dir={out_dir}",
                       "--labels=first,second"])
    assert rc == 0, out
    assert "| first | 50.0 [50.0, 50.0] |" in out and "| second |" in out
    assert (out_dir / "comparison.md").exists() and (out_dir / "comparison.png").exists()
    rc, out = run_cli(["-m", "multidistill.compare", str(tmp_path / "nope")])
    assert rc == 2 and "nope: no report found" in out and "Traceback" not in out, out
    rc, out = run_cli(["-m", "multidistill.compare"])
    assert rc == 2 and "give one or more run directories" in out, out


def test_the_distil_time_is_the_longer_of_the_stage_and_the_run_total(tmp_path):
    """A resumed run shows its total over sessions; a run whose stage also
    collected rounds (not in an old report's total) shows the stage. The
    resumed run's total (its last session) is replaced by the sum of its
    stages, a lower bound of its time over sessions."""
    rounds = _run(tmp_path, "r", {"pong": [10.0]}, None,
                  {"total_seconds": 1200, "build_seconds": 60, "distill_seconds": 900,
                   "run_distill_seconds": 200, "eval_seconds": 240})
    resumed = _run(tmp_path, "s", {"pong": [10.0]}, None,
                   {"total_seconds": 300, "build_seconds": 0, "distill_seconds": 60,
                    "run_distill_seconds": 720, "eval_seconds": 240})
    _, _, table = compare.compare([str(rounds), str(resumed)], tmp_path / "cmp")
    assert "| 20.0 min (1.0 min / 15.0 min / 4.0 min) |" in table
    assert "| ≥16.0 min (0.0 min / 12.0 min / 4.0 min) |" in table
