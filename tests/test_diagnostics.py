"""Distillation diagnostics: the numbers against hand computations, the report's
section, and a run's held-out data end to end (tiny datasets and student)."""

import json
import math

import numpy as np
import pytest
from conftest import constant_report, new_writer, synthetic_episode

from multidistill import diagnostics, distiller, evaluation, objectives, pipeline, stages, students

# Ten states of a logits teacher (3 actions), best action 0 by the gaps below,
# shuffled so that ranking matters; the student agrees (argmax 0) where
# AGREE says so. By rank the fifths are gaps {0.1, 0.2}, {0.3, 0.4},
# {0.5, 0.6}, {0.7, 0.8}, {0.9, 1.0}, where the student agrees on 1, 0, 2, 1
# and 2 states.
GAPS = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6]
AGREE = {0.2, 0.5, 0.6, 0.7, 0.9, 1.0}


def _ten_states():
    teacher = np.array([[g, 0.0, -1.0] for g in GAPS], np.float32)
    student = np.array([[2.0, 0.0, 0.0] if g in AGREE else [0.0, 2.0, 0.0] for g in GAPS],
                       np.float32)
    return teacher, student


def _assert_close(a, b, rel=1e-6):
    """Nested dicts and lists of numbers equal to `rel` (pytest.approx is flat only)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for k in a:
            _assert_close(a[k], b[k], rel)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            _assert_close(x, y, rel)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12)
    else:
        assert a == b


def _softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def _hand_entropy(row):
    return -sum(p * math.log(p) for p in _softmax(row))


def _hand_kl(teacher_row, student_row, tau):
    p = _softmax([v / tau for v in teacher_row])
    q = _softmax(student_row)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_entropy_and_action_gap_by_hand():
    h = diagnostics.entropy(np.array([[0.0, 0.0], [0.0, math.log(3.0)]]))
    np.testing.assert_allclose(
        h, [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))], atol=1e-12)
    # Uniform over 4: ln 4; a peaked row (a Q-value / 0.01) is 0, not NaN.
    h = diagnostics.entropy(np.array([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(h, [math.log(4), 0.0], atol=1e-12)
    gap = diagnostics.action_gap(np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0], [-1.0, -4.0, -2.0]]))
    np.testing.assert_allclose(gap, [1.0, 0.0, 1.0])


def test_a_logits_teacher_by_hand():
    teacher, student = _ten_states()
    d = diagnostics.game_diagnostics(teacher, student, "logits")
    assert d["temperature"] == 1.0  # The default for logits.
    assert (d["num_states"], d["num_actions"]) == (10, 3)
    kl = np.mean([_hand_kl(t, s, 1.0) for t, s in zip(teacher.tolist(), student.tolist())])
    assert d["heldout_kl"] == pytest.approx(kl, rel=1e-5)
    assert d["agreement"] == pytest.approx(0.6)
    assert d["student_entropy"] == pytest.approx(_hand_entropy([2.0, 0.0, 0.0]), rel=1e-9)
    assert d["teacher_entropy"] == pytest.approx(
        np.mean([_hand_entropy([g, 0.0, -1.0]) for g in GAPS]), rel=1e-6)
    assert d["max_entropy"] == pytest.approx(math.log(3))
    gap = d["action_gap"]
    assert gap["units"] == "logit units"
    assert gap["mean"] == pytest.approx(0.55, rel=1e-6)
    # np.percentile's linear rule on 0.1, ..., 1.0: position q/100 * 9.
    expected = {"10": 0.19, "25": 0.325, "50": 0.55, "75": 0.775, "90": 0.91}
    assert gap["quantiles"] == pytest.approx(expected, rel=1e-5)
    hist = gap["histogram"]
    assert len(hist["edges"]) == diagnostics.NUM_HISTOGRAM_BINS + 1
    assert (hist["edges"][0], hist["edges"][-1]) == (0.0, pytest.approx(1.0))
    assert sum(hist["counts"]) == 10 and hist["counts"][-1] == 1  # 1.0 in the closed last bin.
    bins = d["agreement_by_confidence"]
    assert [b["bin"] for b in bins] == [1, 2, 3, 4, 5]
    assert [b["num_states"] for b in bins] == [2] * 5
    assert [x for b in bins for x in (b["gap_low"], b["gap_high"])] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert [b["agreement"] for b in bins] == pytest.approx([0.5, 0.0, 1.0, 0.5, 1.0])
    json.dumps(d)  # JSON-able as it is.


def test_a_q_value_teacher_is_sharpened_by_its_temperature():
    """Q-values 0.01 apart at tau 0.01 are logits 1 apart: p_T = softmax([100, 101, 50])."""
    teacher = np.array([[1.00, 1.01, 0.5], [0.2, 0.0, 0.3]], np.float32)
    student = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]], np.float32)
    d = diagnostics.game_diagnostics(teacher, student, "q_values")
    assert d["temperature"] == 0.01  # The default for Q-values.
    kl = np.mean([_hand_kl(t, s, 0.01) for t, s in zip(teacher.tolist(), student.tolist())])
    assert d["heldout_kl"] == pytest.approx(kl, rel=1e-4)
    assert d["agreement"] == 1.0
    p = 1 / (1 + math.e)  # Row 1 is nearly a coin of p and 1 - p; row 2 nearly one-hot.
    binary = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert d["teacher_entropy"] == pytest.approx(
        (binary + _hand_entropy([20.0, 0.0, 30.0])) / 2, rel=1e-4)
    assert d["student_entropy"] == pytest.approx(
        (_hand_entropy([0.0, 1.0, 0.0]) + _hand_entropy([0.0, 0.0, 0.5])) / 2, rel=1e-6)
    assert d["action_gap"]["units"] == "Q-value (return) units"
    assert d["action_gap"]["quantiles"]["50"] == pytest.approx((0.01 + 0.1) / 2, rel=1e-4)
    # Another tau is the caller's: the same states at tau 1 are a flatter target.
    flat = diagnostics.game_diagnostics(teacher, student, "q_values", temperature=1.0)
    assert flat["teacher_entropy"] > d["teacher_entropy"]
    assert flat["heldout_kl"] == pytest.approx(
        np.mean([_hand_kl(t, s, 1.0) for t, s in zip(teacher.tolist(), student.tolist())]),
        rel=1e-5)


def test_confidence_bins_are_equal_counts_even_when_gaps_tie():
    teacher = np.zeros((7, 3), np.float32)  # Every gap is 0.
    student = np.zeros((7, 3), np.float32)
    student[[1, 4], 1] = 1.0  # States 1 and 4 disagree (the teacher's argmax is action 0).
    bins = diagnostics.confidence_bins(teacher, student)
    # Ties keep state order: states 0-1, 2-3, 4, 5, 6.
    assert [b["num_states"] for b in bins] == [2, 2, 1, 1, 1]
    assert [b["agreement"] for b in bins] == [0.5, 1.0, 0.0, 1.0, 1.0]
    assert all(b["gap_low"] == b["gap_high"] == 0.0 for b in bins)
    few = diagnostics.confidence_bins(teacher[:3], student[:3])
    assert [b["num_states"] for b in few] == [1, 1, 1, 0, 0]
    assert few[3] == {"bin": 4, "gap_low": None, "gap_high": None, "num_states": 0,
                      "agreement": None}


@pytest.mark.parametrize("args, message", [
    ((np.zeros((4, 3)), np.zeros((4, 2)), "logits"), r"one shape, found \(4, 3\) and \(4, 2\)"),
    ((np.zeros((4, 1)), np.zeros((4, 1)), "logits"), "at least 1 state and 2 actions, found 4 "
                                                     "states of 1 actions"),
    ((np.zeros((4, 3)), np.zeros((4, 3)), "values"), "teacher kind must be one of"),
    ((np.zeros((4, 3)), np.zeros((4, 3)), "logits", 0.0), "temperature must be > 0, found 0.0"),
    ((np.full((4, 3), np.nan), np.zeros((4, 3)), "logits"), "teacher outputs hold 12 non-finite"),
])
def test_bad_input_is_refused_with_what_was_found(args, message):
    with pytest.raises(ValueError, match=message):
        diagnostics.game_diagnostics(*args)


# -- the report's section ------------------------------------------------------


def _report_diagnostics():
    teacher, student = _ten_states()
    return {"format": diagnostics.FORMAT, "max_states_per_game": 4096, "plot": "diagnostics.png",
            "identity": {"student_sha256": "ab" * 32},
            "games": {"pong": diagnostics.game_diagnostics(teacher, student, "logits"),
                      "freeway": {"teacher_kind": "q_values", "temperature": 0.01,
                                  "num_states": 0, "note": "no held-out episodes"}}}


def test_the_report_has_a_diagnostics_section_only_when_it_carries_them():
    plain = constant_report({"pong": [5.0, 7.0], "freeway": [9.0, 11.0]})
    md_plain = evaluation.report_markdown(plain)
    assert "Diagnostics" not in md_plain
    diag = _report_diagnostics()
    md = evaluation.report_markdown(
        constant_report({"pong": [5.0, 7.0], "freeway": [9.0, 11.0]},
                        extra={"diagnostics": diag}))
    assert md.startswith(md_plain)  # Everything before it is as it was.
    section = md[len(md_plain):]
    assert "\n## Diagnostics\n" in section
    pong = diag["games"]["pong"]
    row = (f"| pong (logits, tau 1) | 10 | {pong['heldout_kl']:.4f} | 60.0 % "
           f"| {pong['student_entropy']:.3f} (max 1.10) | {pong['teacher_entropy']:.3f} "
           "| 0.55 logits | 50.0 % | 100.0 % |")
    assert row in section
    assert "| freeway | 0 | n/a |" in section
    assert "sha256 abababababab..." in section
    assert "![diagnostics](diagnostics.png)" in section
    no_links = evaluation.report_markdown(constant_report(
        {"pong": [5.0, 7.0], "freeway": [9.0, 11.0]}, extra={"diagnostics": diag}), links=False)
    assert "## Diagnostics" in no_links and "diagnostics.png" not in no_links


# -- a run's held-out data -------------------------------------------------------

GAMES, KINDS, ACTIONS = ("pong", "freeway"), ["q_values", "logits"], (6, 3)


def _datasets(directory, spec):
    """Per game 10 episodes of 12 steps; a holdout fraction of 0.2 keeps the
    last 2 (24 states) apart."""
    paths = []
    for g, (game, a) in enumerate(zip(GAMES, ACTIONS)):
        path = directory / f"{game}.h5"
        with new_writer(path, spec, game=game, num_actions=a) as w:
            for e in range(10):
                w.append_episode(synthetic_episode(12, a, seed=10 * g + e))
        paths.append(str(path))
    return paths


def _config():
    return distiller.DistillConfig(
        games=GAMES, objective=objectives.Distillation(temperatures=(0.01, 1.0)),
        student_size="tiny", head_units=8, num_grad_steps=0,
        pipeline=pipeline.PipelineConfig(batch_size_per_game=4, block_rows=16,
                                         blocks_in_memory=2, holdout_fraction=0.2))


def test_a_runs_diagnostics_match_the_distillers_heldout_metrics(tmp_path, spec, monkeypatch,
                                                                   capsys):
    paths = _datasets(tmp_path, spec)
    config, run = _config(), tmp_path / "run"
    source = pipeline.HDF5Source(paths, config.pipeline, fields=config.objective.fields)
    d = distiller.Distiller(run, config, source, spec, teacher_kinds=KINDS)
    try:
        expected = d.heldout_metrics()
        student_path = students.save_student(d.student, d.student_path)
        direct = diagnostics.heldout_diagnostics(d.student, paths, config.pipeline,
                                                 (0.01, 1.0), KINDS)
    finally:
        d.close()
    for game in GAMES:
        g = direct["games"][game]
        assert g["num_states"] == g["heldout_agent_steps"] == 24
        assert g["heldout_kl"] == pytest.approx(expected[f"heldout/kl/{game}"], rel=1e-5)
        assert g["agreement"] == pytest.approx(expected[f"heldout/agreement/{game}"])
        assert sum(b["num_states"] for b in g["agreement_by_confidence"]) == 24
    assert direct["games"]["pong"]["num_actions"] == 6
    assert direct["games"]["freeway"]["action_gap"]["units"] == "logit units"

    # The stage writes both files from the student file, with the same numbers.
    first = stages.diagnose(run, student_path, config, paths, KINDS)
    assert not first["reused"]
    assert "diagnostics written to" in capsys.readouterr().out
    saved = json.loads((run / "diagnostics.json").read_text())
    _assert_close(saved["games"], direct["games"])
    assert saved["plot"] == "diagnostics.png" and (run / "diagnostics.png").stat().st_size > 0
    assert saved["identity"]["student_sha256"] == diagnostics.teachers_lib.sha256_of(student_path)

    # A finished run resumed: read back, the student not even loaded; the plot redrawn if gone.
    def no_loading(path):
        raise AssertionError("diagnostics recomputed for the same student")

    monkeypatch.setattr(students, "load_student", no_loading)
    (run / "diagnostics.png").unlink()
    again = stages.diagnose(run, student_path, config, paths, KINDS)
    assert again["reused"] and again["games"] == saved["games"]
    assert (run / "diagnostics.png").exists()
    monkeypatch.undo()

    # Another student in the same file: computed anew, never the old numbers.
    student = students.load_student(student_path)
    last = student.game_heads[1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel, bias + np.array([0.0, 5.0, 0.0], np.float32)])
    students.save_student(student, student_path)
    changed = stages.diagnose(run, student_path, config, paths, KINDS)
    assert not changed["reused"]
    assert changed["identity"]["student_sha256"] != saved["identity"]["student_sha256"]
    assert changed["games"]["freeway"]["heldout_kl"] != pytest.approx(
        saved["games"]["freeway"]["heldout_kl"])
    _assert_close(changed["games"]["pong"], saved["games"]["pong"])

    # Into the report, with its plot.
    md = evaluation.report_markdown(constant_report({g: [1.0] for g in GAMES},
                                                    extra={"diagnostics": changed}))
    assert "| pong (q_values, tau 0.01) | 24 |" in md and "![diagnostics](diagnostics.png)" in md


def test_a_student_of_other_games_is_refused(tmp_path, spec):
    paths = _datasets(tmp_path, spec)
    config = _config()
    student, _ = distiller.build_student(config, list(ACTIONS), [5, 5], spec)
    with pytest.raises(ValueError, match=r"the student's heads are \['pong', 'freeway'\] of "
                                         r"\[6, 3\] actions, the held-out data are of "
                                         r"\['freeway'\] with \[3\]"):
        diagnostics.heldout_diagnostics(student, paths[1:], config.pipeline, (1.0,), ["logits"])
    with pytest.raises(ValueError, match=r"1 temperatures given for the 2 games"):
        diagnostics.heldout_diagnostics(student, paths, config.pipeline, (1.0,), KINDS)
