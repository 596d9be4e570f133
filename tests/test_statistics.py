"""The bootstrap intervals, checked against exhaustive enumeration and hand computations."""

import itertools
import math

import numpy as np
import pytest

from multidistill import statistics


def exact_bootstrap_means(sample):
    """Every one of the n**n equally likely resamples' means (exhaustive)."""
    n = len(sample)
    return np.array([np.mean(c) for c in itertools.product(sample, repeat=n)])


def test_percentile_interval_by_hand():
    # 1..100: numpy's linear 2.5th percentile is 1 + 0.025 * 99 = 3.475.
    lo, hi = statistics.percentile_interval(np.arange(1, 101), 0.95)
    assert lo == pytest.approx(3.475)
    assert hi == pytest.approx(97.525)
    # Undefined draws beyond the tail share: no interval; within it: ignored.
    draws = np.r_[np.full(97, 1.0), np.full(3, np.nan)]
    assert statistics.percentile_interval(draws, 0.95) is None
    draws = np.r_[np.arange(98.0), np.full(2, np.nan)]
    assert statistics.percentile_interval(draws, 0.95) == pytest.approx(
        tuple(np.percentile(np.arange(98.0), [2.5, 97.5])))


def test_mean_interval_small_sample_by_hand():
    # Sample {0, 1, 5}: P(resample mean = 0) = P(mean = 5) = 1/27 = 3.7 % > 2.5 %,
    # so the exact 95 % percentile interval is [0, 5].
    lo, hi = statistics.mean_interval([0.0, 1.0, 5.0], statistics.Bootstrap(resamples=20_000))
    assert (lo, hi) == (0.0, 5.0)


def test_mean_interval_matches_exhaustive_enumeration():
    sample = [1.0, 2.0, 4.0, 8.0, 9.0]  # 5**5 = 3,125 equally likely resamples.
    exact = np.percentile(exact_bootstrap_means(sample), [2.5, 97.5])
    lo, hi = statistics.mean_interval(sample, statistics.Bootstrap(resamples=200_000, seed=3))
    # The resample means lie on a grid of 1/5: Monte Carlo percentiles land
    # within one grid step of the exact ones.
    assert lo == pytest.approx(exact[0], abs=0.2)
    assert hi == pytest.approx(exact[1], abs=0.2)
    # A constant sample has a zero-width interval; one episode has none.
    assert statistics.mean_interval([3.0] * 7) == (3.0, 3.0)
    assert statistics.mean_interval([3.0]) is None
    one = statistics.game_intervals({"g": statistics.GameSample([1.0], [2.0], paired=True)},
                                    {"g": None})
    assert one["games"]["g"]["percent_of_teacher"] == {"value": 50.0, "ci": None}
    assert one["geometric_mean_percent_of_teacher"] == {"value": 50.0, "ci": None}


def test_paired_ratio_uses_the_same_episodes():
    # Student = teacher / 2 episode by episode: every paired resample gives 50 %.
    teacher = [10.0, 20.0, 40.0, 80.0, 160.0]
    student = [t / 2 for t in teacher]
    s = statistics.GameSample(student, teacher, paired=True)
    out = statistics.game_intervals({"g": s}, {"g": None})
    pct = out["games"]["g"]["percent_of_teacher"]
    assert pct["value"] == pytest.approx(50.0)
    assert pct["ci"] == pytest.approx([50.0, 50.0])
    # Unpaired, the same episodes give a wide interval around 50 %.
    u = statistics.game_intervals(
        {"g": statistics.GameSample(student, teacher, paired=False)}, {"g": None})
    lo, hi = u["games"]["g"]["percent_of_teacher"]["ci"]
    assert lo < 30 and hi > 90


def test_paired_ratio_interval_matches_exhaustive_enumeration():
    student = [3.0, 5.0, 4.0, 9.0]
    teacher = [4.0, 4.0, 6.0, 8.0]
    ratios = []
    for idx in itertools.product(range(4), repeat=4):  # 256 paired resamples.
        ratios.append(100 * np.mean([student[i] for i in idx]) / np.mean([teacher[i] for i in idx]))
    exact = np.percentile(ratios, [2.5, 97.5])
    out = statistics.game_intervals({"g": statistics.GameSample(student, teacher, paired=True)},
                                    {"g": None}, statistics.Bootstrap(resamples=200_000))
    pct = out["games"]["g"]["percent_of_teacher"]
    assert pct["value"] == pytest.approx(100 * 21 / 22)
    assert pct["ci"] == pytest.approx(list(exact), abs=1.5)


def test_geometric_mean_over_games_by_hand():
    samples = {"a": statistics.GameSample([5.0, 5.0], [10.0, 10.0], paired=True),
               "b": statistics.GameSample([8.0, 8.0, 8.0], [4.0, 4.0, 4.0], paired=True)}
    out = statistics.game_intervals(samples, {"a": None, "b": None})
    gm = out["geometric_mean_percent_of_teacher"]
    assert gm["value"] == pytest.approx(100 * math.sqrt(0.5 * 2.0))
    assert gm["ci"] == pytest.approx([100.0, 100.0])
    # Game-level resampling is stratified: a game's draws come only from it.
    # With a teacher mean <= 0 the ratio, and so the geometric mean, is undefined.
    samples["b"] = statistics.GameSample([1.0], [-2.0], paired=True)
    out = statistics.game_intervals(samples, {"a": None, "b": None})
    assert out["games"]["b"]["percent_of_teacher"] == {"value": None, "ci": None}
    assert out["geometric_mean_percent_of_teacher"] == {"value": None, "ci": None}


def test_teacher_known_only_by_its_mean():
    s = statistics.GameSample([2.0, 4.0], teacher_mean=4.0)
    out = statistics.game_intervals({"g": s}, {"g": None},
                                    statistics.Bootstrap(resamples=20_000))
    # Resample means of {2, 4}: 2 (1/4), 3 (1/2), 4 (1/4) -> [50 %, 100 %].
    assert out["games"]["g"]["percent_of_teacher"]["ci"] == pytest.approx([50.0, 100.0])
    assert out["games"]["g"]["paired"] is False


def test_iqm_is_the_25_percent_trimmed_mean():
    assert statistics.iqm(np.array([1.0, 2.0, 3.0, 100.0])) == pytest.approx(2.5)
    assert statistics.iqm(np.array([4.0, 1.0, 7.0])) == pytest.approx(4.0)  # no cut at n=3
    x = np.arange(10.0)  # floor(2.5) = 2 cut each end -> mean of 2..7.
    assert statistics.iqm(x) == pytest.approx(4.5)
    rows = np.array([[1.0, 2.0, 3.0, 100.0], [0.0, 0.0, 1.0, 1.0]])
    assert statistics.iqm(rows, axis=1) == pytest.approx([2.5, 0.5])


def test_human_normalized_aggregates_need_enough_games():
    norm = {g: (lambda x: np.asarray(x) / 10.0) for g in "abcd"}
    samples = {g: statistics.GameSample([float(v)] * 3, [10.0] * 3, paired=True)
               for g, v in zip("abcd", [1, 2, 3, 40])}
    out = statistics.game_intervals(samples, norm)
    h = out["human_normalized"]["student"]
    assert h["mean"]["value"] == pytest.approx((0.1 + 0.2 + 0.3 + 4.0) / 4)
    assert h["median"]["value"] == pytest.approx(0.25)
    assert h["iqm"]["value"] == pytest.approx(0.25)
    assert h["iqm"]["ci"] == pytest.approx([0.25, 0.25])  # constant episodes
    assert out["human_normalized"]["teacher"]["mean"]["value"] == pytest.approx(1.0)
    three = {g: samples[g] for g in "abc"}
    out3 = statistics.game_intervals(three, norm)
    assert out3["human_normalized"]["student"]["median"] is None
    # A game without reference scores: no human-normalised aggregate at all.
    out_none = statistics.game_intervals(samples, dict(norm, d=None))
    assert out_none["human_normalized"]["student"] is None


def test_deterministic_for_a_seed_and_bad_settings_refused():
    x = list(np.random.default_rng(0).normal(size=20))
    assert statistics.mean_interval(x) == statistics.mean_interval(x)
    assert statistics.mean_interval(x) != statistics.mean_interval(
        x, statistics.Bootstrap(seed=1))
    with pytest.raises(ValueError, match="resamples must be >= 1, found 0"):
        statistics.Bootstrap(resamples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), found 1.5"):
        statistics.Bootstrap(confidence=1.5)
    with pytest.raises(ValueError, match="paired samples need as many"):
        statistics.GameSample([1.0, 2.0], [1.0], paired=True)
