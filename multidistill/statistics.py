"""Interval estimates for evaluation scores: the percentile bootstrap, stratified by game.

What the reports state, following Agarwal et al. 2021 (*Deep RL at the Edge
of the Statistical Precipice*, the `rliable` library):

  * a policy's mean return on a game, with a 95 % bootstrap interval over its
    episodes;
  * the student's mean over its teacher's mean on a game, with a *paired*
    interval: student and teacher play the same seeds, so episode k of the
    one and episode k of the other are resampled together;
  * aggregates over games (the geometric mean of student/teacher, the mean,
    median and interquartile mean of human-normalised scores) with a
    *stratified* bootstrap: each game's episodes are resampled within the
    game, independently of the other games, and the aggregate is computed on
    every resample, as `rliable.library.get_interval_estimates` does with
    its `StratifiedBootstrap`;
  * intervals are the percentile method's (the 2.5th and 97.5th percentiles
    of the resampled statistic; rliable's default method too).

Why numpy and not rliable: rliable 1.2 (the registry's latest) brings `arch`,
`pandas`, `seaborn` and `statsmodels` (about 150 MB) for what is here a few
lines, and it treats a score matrix of independent *runs* by tasks; the
paired student/teacher ratio over shared seeds is not one of its
estimators. The definitions match its (percentile intervals, IQM as the 25 %
trimmed mean, stratified resampling), and the tests check this code against
exhaustive enumeration of a small bootstrap.

Every function is deterministic for a given `Bootstrap.seed`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

# Aggregates over games that need several games to mean anything: with 3
# games the IQM (25 % trimmed mean) is the plain mean and the median is one
# game's score.
MIN_GAMES_FOR_MEDIAN_AND_IQM = 4
# A sample of one episode resamples to itself: no interval below this.
MIN_EPISODES = 2


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed.

    Attributes:
      resamples: bootstrap resamples (10,000: the percentiles of a 95 %
        interval then move by well under 1 % of its width between seeds).
      confidence: coverage of the intervals, in (0, 1).
      seed: seeds the resampling (reports are reproducible).
    """

    resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, found {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), found {self.confidence}")

    def to_dict(self) -> dict:
        return {"method": "percentile bootstrap (stratified by game; student and teacher "
                          "paired by episode where they played the same seeds)",
                **dataclasses.asdict(self)}

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])


def percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile interval of resampled estimates (numpy's linear percentiles).

    Returns None when more than the interval's tail share of the estimates
    is undefined (NaN): the statistic is then unbounded on that side.
    """
    estimates = np.asarray(estimates, np.float64)
    alpha = (1.0 - confidence) / 2.0
    if np.isnan(estimates).mean() > alpha:
        return None
    finite = estimates[~np.isnan(estimates)]
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) indices drawn uniformly with replacement from range(n)."""
    if n < 1:
        raise ValueError("cannot resample an empty sample")
    return rng.integers(0, n, size=(resamples, n))


def resampled_means(values: Sequence[float], indices: np.ndarray) -> np.ndarray:
    """The mean of each resample: (resamples,)."""
    return np.asarray(values, np.float64)[indices].mean(axis=1)


def mean_interval(values: Sequence[float], boot: Bootstrap = Bootstrap(),
                  stream: int = 0) -> tuple[float, float] | None:
    """Interval of the mean of `values` (e.g. one policy's episode returns); None for
    fewer than MIN_EPISODES values, where resampling says nothing."""
    if len(values) < MIN_EPISODES:
        return None
    idx = resample_indices(len(values), boot.resamples, boot.rng(1, stream))
    return percentile_interval(resampled_means(values, idx), boot.confidence)


def block_resampled_means(values: Sequence[float], num_blocks: int, resamples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Means of `values` (a sequence in time order) over resamples of its
    contiguous blocks: (resamples,).

    The sequence is cut into `num_blocks` contiguous blocks (numpy's
    `array_split`; fewer when there are fewer values); each resample draws
    that many blocks with replacement and takes the mean of all their values.
    Neighbouring states of an episode are alike, so resampling single states
    would treat them as independent and give too narrow an interval.
    """
    values = np.asarray(values, np.float64)
    blocks = np.array_split(values, max(1, min(int(num_blocks), len(values))))
    sums = np.array([b.sum() for b in blocks])
    counts = np.array([len(b) for b in blocks], np.float64)
    idx = resample_indices(len(blocks), resamples, rng)
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den > 0, NaN elsewhere (a ratio to a score <= 0 means nothing)."""
    out = np.full(np.shape(num), np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


@dataclasses.dataclass
class GameSample:
    """One game's episodes for the resampling: a student and its reference.

    Attributes:
      student: the student's episode returns.
      teacher: the teacher's episode returns (or None when only the
        teacher's mean is known, e.g. a card without returns: it is then a
        constant).
      teacher_mean: used when `teacher` is None.
      paired: student and teacher episodes were played on the same seeds
        in the same order (same length), so they are resampled together.
    """

    student: Sequence[float]
    teacher: Sequence[float] | None = None
    teacher_mean: float | None = None
    paired: bool = False

    def __post_init__(self):
        if self.paired and (self.teacher is None or len(self.teacher) != len(self.student)):
            raise ValueError("paired samples need as many teacher as student episodes")
        if self.teacher is None and self.teacher_mean is None:
            raise ValueError("give the teacher's returns or its mean")

    def resampled(self, resamples: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(student means, teacher means), each (resamples,)."""
        si = resample_indices(len(self.student), resamples, rng)
        s = resampled_means(self.student, si)
        if self.teacher is None:
            return s, np.full(resamples, float(self.teacher_mean))
        ti = si if self.paired else resample_indices(len(self.teacher), resamples, rng)
        return s, resampled_means(self.teacher, ti)

    def point(self) -> tuple[float, float]:
        t = float(np.mean(self.teacher)) if self.teacher is not None else float(self.teacher_mean)
        return float(np.mean(self.student)), t


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean after dropping floor(25 %) of the values at
    each end (scipy.stats.trim_mean(values, 0.25), rliable's IQM)."""
    values = np.sort(np.asarray(values, np.float64), axis=axis)
    n = values.shape[axis]
    cut = int(math.floor(0.25 * n))
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _estimate(point: float | None, resampled: np.ndarray, confidence: float,
              enough: bool = True) -> dict:
    ci = None if point is None or not np.isfinite(point) or not enough else \
        percentile_interval(resampled, confidence)
    return {"value": None if point is None or not np.isfinite(point) else float(point),
            "ci": None if ci is None else list(ci)}


def game_intervals(samples: dict[str, GameSample],
                   human_normalize: dict[str, Callable[[np.ndarray], np.ndarray] | None],
                   boot: Bootstrap = Bootstrap()) -> dict:
    """Per game ratios and the aggregates over games, with intervals.

    Args:
      samples: per game, the student's and teacher's episodes.
      human_normalize: per game, score -> human-normalised score (vectorised),
        or None for a game without reference scores.
      boot: resamples, confidence, seed.

    Returns:
      {"games": {game: {"percent_of_teacher": {"value", "ci"}, "paired"}},
       "geometric_mean_percent_of_teacher": {"value", "ci"},
       "human_normalized": {"student"/"teacher": {"mean"/"median"/"iqm":
                            {"value", "ci"} or None} or None}},
      where "ci" is [low, high] at `boot.confidence`, or None.
      A value is None where it is undefined (a teacher mean <= 0 for a
      ratio; a game without reference scores for human-normalised
      aggregates; fewer than MIN_GAMES_FOR_MEDIAN_AND_IQM games for the
      median and IQM).
    """
    games = list(samples)
    r = boot.resamples
    per_game, ratio_draws, ratio_points = {}, [], []
    s_draws, t_draws, s_points, t_points = {}, {}, {}, {}
    for k, g in enumerate(games):
        sample = samples[g]
        s, t = sample.resampled(r, boot.rng(2, k))
        sp, tp = sample.point()
        s_draws[g], t_draws[g], s_points[g], t_points[g] = s, t, sp, tp
        ratio = _ratio(s, t)
        point = sp / tp if tp > 0 else None
        ratio_draws.append(ratio)
        ratio_points.append(point)
        per_game[g] = {
            "percent_of_teacher": _estimate(None if point is None else 100 * point,
                                            100 * ratio, boot.confidence,
                                            len(sample.student) >= MIN_EPISODES),
            "paired": sample.paired,
        }
    # Geometric mean of the ratios: defined when every ratio is > 0.
    gm_point = None
    if games and all(p is not None and p > 0 for p in ratio_points):
        gm_point = 100 * math.exp(np.mean(np.log(ratio_points)))
    gm_draws = np.zeros(r)
    if games:
        ratios = np.stack(ratio_draws)  # (G, R); NaN where a ratio is undefined.
        with np.errstate(invalid="ignore", divide="ignore"):
            gm_draws = 100 * np.exp(np.log(np.where(ratios > 0, ratios, np.nan)).mean(axis=0))
    enough = all(len(samples[g].student) >= MIN_EPISODES for g in games)
    out = {"games": per_game,
           "geometric_mean_percent_of_teacher": _estimate(gm_point, gm_draws, boot.confidence,
                                                          enough)}

    # Human-normalised aggregates (only over games with reference scores).
    hn_games = [g for g in games if human_normalize.get(g) is not None]
    human = {}
    for who, draws, points in (("student", s_draws, s_points), ("teacher", t_draws, t_points)):
        if not hn_games or len(hn_games) < len(games):
            human[who] = None
            continue
        d = np.stack([human_normalize[g](draws[g]) for g in hn_games])  # (G, R)
        p = np.array([float(human_normalize[g](np.array(points[g]))) for g in hn_games])
        agg = {"mean": _estimate(float(p.mean()), d.mean(axis=0), boot.confidence, enough)}
        if len(hn_games) >= MIN_GAMES_FOR_MEDIAN_AND_IQM:
            agg["median"] = _estimate(float(np.median(p)), np.median(d, axis=0),
                                      boot.confidence, enough)
            agg["iqm"] = _estimate(float(iqm(p)), iqm(d, axis=0), boot.confidence, enough)
        else:
            agg["median"] = agg["iqm"] = None
        human[who] = agg
    out["human_normalized"] = human
    return out
