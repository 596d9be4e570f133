"""Evaluation: any policy (student head or teacher) under one protocol, and reports.

Protocol (the same for teachers and students, stated in every report):
  * environments from the run's preprocessing spec: up to `noop_max` no-op
    starts, sticky actions as set (0 by default), episodes capped at
    `max_episode_frames` emulator frames (108,000 by default);
  * the policy acts by its game's rule (argmax for Q-value teachers and
    their students, a sample of the softmax for logit teachers and theirs),
    with a uniformly random action with probability `epsilon` (0.05);
  * a number of episodes per game (`EvalProtocol.episodes`: by default the
    game's entry in `EPISODES_BY_GAME`, chosen from the measured spread of
    its returns), spread over `num_envs` environments with a fixed quota
    each (so short episodes are not favoured), environment i seeded with
    `seed + i`; the same seeds for every policy evaluated, so that episode
    k of the student and episode k of its teacher start alike;
  * the random draws of the acting rule (exploration, sampling) come from
    one generator per environment (`[seed, 7, i]`), three uniforms per
    step, so what environment i plays depends on nothing else: the
    environments can be split over workers (`evaluate`'s `env_range`,
    `multidistill.parallel_eval`) and give the same episodes.

Reports state every score with a 95 % bootstrap interval
(`multidistill.statistics`): per policy its mean, per game student/teacher
paired by episode, and over games the geometric mean of student/teacher and
the human-normalised aggregates (stratified by game).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multidistill import acting, environments, files, statistics
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib

# Default evaluation episodes per game and policy, where the variance is:
# chosen so that the main job's geometric mean of student/teacher (Pong,
# Q*bert, Freeway) has a 95 % interval of about +-5 points at the least
# evaluation time. In the main job of 2026-11-29 (32/128/16 episodes) the
# coefficients of variation of the returns were, student/teacher, Pong
# 0.24/0.24, Q*bert 0.46/0.51 (bimodal returns: about 4,100 or about 550),
# Freeway 0.04/0.05, with no correlation between the paired episodes, and
# episodes lasted 2,370, 670 and 2,040 agent steps; its interval was
# -5.4/+5.9 points. The variance of game g's log ratio is about
# (cv_S^2 + cv_T^2) / n_g; minimising the steps played, sum n_g L_g, for a
# given variance of the mean of the three log ratios gives n_g proportional
# to sqrt((cv_S^2 + cv_T^2) / L_g): Pong 45, Q*bert 169, Freeway 9 for
# +-5 points, rounded up here to multiples of the 16 default environments.
# Other games get DEFAULT_EPISODES.
EPISODES_BY_GAME = {"pong": 48, "qbert": 176, "freeway": 16}
DEFAULT_EPISODES = 32
RANDOM_DRAWS = "per environment"  # See the module doc and `EvalProtocol.to_dict`.


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How episodes are played for a score.

    Attributes:
      num_episodes: episodes per game and policy for every game; 0 takes
        each game's default (`EPISODES_BY_GAME`, else `DEFAULT_EPISODES`).
      episodes_per_game: (game, episodes) pairs that override the above.
      epsilon: probability of a uniformly random action.
      num_envs: environments stepped together.
      seed: environment i of the evaluation is reset with seed + i, and
        draws its acting randomness from `np.random.default_rng([seed, 7, i])`.
      num_threads: emulator threads (0: one per core).
      num_env_groups: groups the environments are split into
        (`acting.play`; 0 picks by core count, `environments.env_groups`).
      overlap_env_groups: overlap the groups' emulation with inference
        (True) or step them in lockstep (False); None picks by core count.
        Like `num_threads`, these two are execution settings: they change
        which random draw lands where, not what is measured.
    """

    num_episodes: int = 0
    episodes_per_game: tuple[tuple[str, int], ...] = ()
    epsilon: float = 0.05
    num_envs: int = 16
    seed: int = 1_000_000
    num_threads: int = 0
    num_env_groups: int = 0
    overlap_env_groups: bool | None = None

    def __post_init__(self):
        if self.num_episodes < 0:
            raise ValueError(f"num_episodes must be >= 0 (0: per game), found "
                             f"{self.num_episodes}")
        for game, n in self.episodes_per_game:
            if int(n) < 1:
                raise ValueError(f"episodes for {game} must be >= 1, found {n}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], found {self.epsilon}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, found {self.num_envs}")

    def episodes(self, game: str) -> int:
        """Episodes per policy on `game`."""
        given = dict(self.episodes_per_game)
        if game in given:
            return int(given[game])
        if self.num_episodes > 0:
            return self.num_episodes
        return EPISODES_BY_GAME.get(game, DEFAULT_EPISODES)

    def to_dict(self, games: list[str] | None = None) -> dict:
        """The settings that change what is measured; with `games`, the episodes
        each gets (`episodes_per_game`)."""
        d = dataclasses.asdict(self)
        d.pop("num_threads")
        d.pop("num_env_groups")
        d.pop("overlap_env_groups")
        d["episodes_per_game"] = {g: n for g, n in self.episodes_per_game}
        if games is not None:
            d["episodes_per_game"] = {g: self.episodes(g) for g in games}
        # Since 2026-11-30 (before: one generator for all environments);
        # also keeps teachers' episodes cached under the old draws apart.
        d["random_draws"] = RANDOM_DRAWS
        return d

    def environment_quotas(self, game: str) -> np.ndarray:
        """Episodes played by each environment on `game`: the episodes split
        as evenly as they go, the first environments taking one more."""
        num_episodes = self.episodes(game)
        n_envs = min(self.num_envs, num_episodes)
        quota = np.full(n_envs, num_episodes // n_envs)
        quota[: num_episodes % n_envs] += 1
        return quota


@dataclasses.dataclass
class Scores:
    """Episode returns of one policy on one game."""

    returns: list[float]
    lengths: list[int]
    seconds: float
    startup_seconds: float = 0.0  # Of `seconds`: resets and first inference.

    @property
    def agent_steps_per_s(self) -> float:
        """Steady-state rate: the episodes' steps over the time after start-up."""
        return float(sum(self.lengths)) / max(self.seconds - self.startup_seconds, 1e-9)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def interval(self, boot: statistics.Bootstrap = statistics.Bootstrap()
                 ) -> list[float] | None:
        """The bootstrap interval of the mean return (95 % by default); None for one
        episode."""
        ci = statistics.mean_interval(self.returns, boot)
        return None if ci is None else list(ci)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "ci": self.interval(),
            "confidence": statistics.Bootstrap().confidence,
            "std": self.std,
            "episodes": len(self.returns),
            "returns": [float(r) for r in self.returns],
            "lengths_agent_steps": [int(n) for n in self.lengths],
            "seconds": self.seconds,
            "startup_seconds": self.startup_seconds,
        }


def network_policy(predict: Callable[[np.ndarray], np.ndarray], kind: str, epsilon: float,
                   rng: np.random.Generator) -> acting.Policy:
    """A batched policy from a network's predict function and its acting rule."""

    def policy(observations):
        outputs = np.asarray(predict(observations))
        return teachers_lib.act(outputs, kind, epsilon, rng), {}

    return policy


class EnvironmentPolicy:
    """A network's acting rule with one random generator per environment.

    Called by `acting.play` with the rows' environment indices (`per_env`);
    each row takes three uniforms from its environment's generator
    (`teachers.act_from_uniforms`), so environment i's actions are a function
    of its own observations and generator only.
    """

    per_env = True

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], kind: str,
                 epsilon: float, rngs: list[np.random.Generator]):
        self.predict, self.kind, self.epsilon, self.rngs = predict, kind, epsilon, rngs

    def __call__(self, observations: np.ndarray, env_indices: np.ndarray):
        outputs = np.asarray(self.predict(observations))
        u = np.stack([self.rngs[int(i)].random(3) for i in env_indices])
        return teachers_lib.act_from_uniforms(outputs, self.kind, self.epsilon, u), {}


def evaluate(
    game: str,
    predict: Callable[[np.ndarray], np.ndarray],
    kind: str,
    preprocessing: environments.Preprocessing,
    protocol: EvalProtocol,
    progress: bool = True,
    label: str = "",
    env_range: tuple[int, int] | None = None,
) -> Scores:
    """Plays `protocol.episodes(game)` episodes of `game` with a network.

    Args:
      game: ROM id.
      predict: observations (B, S, H, W) uint8 -> outputs (B, A).
      kind: acting rule, "q_values" (argmax) or "logits" (sample).
      preprocessing: environment spec.
      protocol: episodes, epsilon, seeds.
      progress: show a progress bar counting episodes.
      label: shown in the progress bar.
      env_range: (start, stop): play only the protocol's environments
        start..stop-1, each with its own seed, quota and random draws (a
        worker's share; see `multidistill.parallel_eval`); None: all.

    Returns:
      The episode returns and lengths, in the order of (environment, episode).
    """
    all_quotas = protocol.environment_quotas(game)
    start, stop = (0, len(all_quotas)) if env_range is None else env_range
    if not 0 <= start < stop <= len(all_quotas):
        raise ValueError(f"env_range must be within [0, {len(all_quotas)}] and not "
                         f"empty, found {env_range}")
    quota = all_quotas[start:stop]
    n_envs = stop - start
    num_episodes = int(quota.sum())
    rngs = [np.random.default_rng([protocol.seed, 7, i]) for i in range(start, stop)]
    num_groups, overlap = environments.env_groups(protocol.num_env_groups,
                                                  protocol.overlap_env_groups)
    env = environments.make_vector_envs(game, preprocessing, n_envs,
                                        num_threads=protocol.num_threads,
                                        num_groups=num_groups)
    policy = EnvironmentPolicy(predict, kind, protocol.epsilon, rngs)
    done = np.zeros(n_envs, dtype=int)
    tracker = acting.EpisodeTracker(n_envs)
    results: list[list[tuple[float, int]]] = [[] for _ in range(n_envs)]
    bar = None
    if progress:
        from multidistill import progress as progress_lib

        bar = progress_lib.bar(num_episodes, f"eval {label or game}", "episode")
    t0 = time.perf_counter()
    try:
        # Environments that met their quota stop stepping (`active`).
        active = np.ones(n_envs, dtype=bool)
        startup = None
        for step in acting.play(env, policy, protocol.seed + start, active=active,
                                overlap=overlap):
            if startup is None:  # Resets and the first inference calls.
                startup = time.perf_counter() - t0
            for i, episode_return, length in tracker.update(step):
                if done[i] < quota[i]:
                    results[i].append((episode_return, length))
                    done[i] += 1
                    active[i] = done[i] < quota[i]
                    if bar is not None:
                        bar.update(1)
                        all_returns = [r for rs in results for r, _ in rs]
                        bar.set_postfix(mean_return=f"{np.mean(all_returns):.1f}")
            if (done >= quota).all():
                break
    finally:
        environments.close_all(env)
        if bar is not None:
            bar.close()
    flat = [x for rs in results for x in rs]
    return Scores(returns=[r for r, _ in flat], lengths=[n for _, n in flat],
                  seconds=time.perf_counter() - t0, startup_seconds=startup or 0.0)


def predict_fn(model, jit_compile: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """Batched inference for evaluation: Keras' predict path, XLA-compiled by default.

    With `jit_compile`, predict runs through XLA (on TensorFlow; JAX always
    compiles) in float32, in a functional model of its own
    (`_float32_runner`), so that `model` itself (e.g. a network still
    training) keeps its settings. At evaluation's batch of 8 on 2 cores XLA
    made a forward pass 1.25-1.28x faster and an evaluation 1.01-1.09x
    (benchmarks/README.md; with one thread it was slower); it gained nothing
    at the builder's batch of 32, which keeps the plain path.

    XLA compiles once per input shape: a batch narrower than the widest one
    so far is padded to it (repeating its last row) and the padding is
    dropped from the outputs, so the end of an evaluation, when fewer
    environments still act, reuses the one compiled program.

    Args:
      model: a Keras model, frames (B, S, H, W) uint8 -> outputs (B, A).
      jit_compile: compile with XLA (functional models only; others run as
        they are).

    Returns:
      observations (B, S, H, W) uint8 -> outputs (B, A), numpy.
    """
    runner = model
    if jit_compile and _is_functional(model):
        runner = _float32_runner(model)
        runner.jit_compile = True
    widest = 0

    def predict(observations: np.ndarray) -> np.ndarray:
        nonlocal widest
        n = len(observations)
        widest = max(widest, n)
        padded = acting.pad_rows(observations, widest)
        return np.asarray(runner.predict_on_batch(padded))[:n]

    return predict


def _is_functional(model) -> bool:
    try:
        return bool(model.inputs and model.outputs)
    except AttributeError:  # Subclassed models have no symbolic inputs.
        return False


def _float32_runner(model):
    """A functional model for `model`'s inference, computing in float32.

    A float32 model gets a new functional model over the same layers
    (weights shared). A model with mixed-precision layers (a student
    trained in mixed bfloat16) gets a float32 copy holding its current
    weights: on CPU, XLA runs bfloat16 convolutions slower than float32
    (at batch 8, 1,844-2,567 vs 2,302-3,632 samples/s), and the weights are
    float32 anyway.
    """
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return keras.Model(model.inputs, model.outputs, name=f"{model.name}_xla")

    def float32_layer(layer):
        config = layer.get_config()
        # Layers take a dtype policy; plain operations in the graph (e.g. the
        # `ops.take` of an 18-way student head) take none.
        if isinstance(layer, keras.layers.Layer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy


def teacher_kinds_of(student) -> dict[str, str]:
    """Per game, the kind of teacher the student learned from (its acting rule)."""
    kinds = student.training_config.get("teacher_kinds") or ["q_values"] * len(student.games)
    return dict(zip(student.games, kinds))


def evaluate_run(student, games, teachers_dir, preprocessing: environments.Preprocessing,
                 protocol: EvalProtocol, evaluate_teachers: bool = True,
                 out_dir: str | os.PathLike | None = None, progress: bool = True,
                 extra: dict | None = None, allow_unsafe_teacher: bool = False,
                 video_seconds: float = 0.0,
                 teacher_cache: str | os.PathLike | None = None,
                 workers=None, student_path: str | os.PathLike | None = None) -> dict:
    """Evaluates the student on `games` (and their teachers), writes the report.

    Teachers are played under the same protocol and seeds as the student
    when `evaluate_teachers` (the per-game ratio is then paired by episode);
    otherwise the score on their card is used (its episodes, when the card
    lists them, resampled independently).

    Args:
      video_seconds: with `out_dir`, also record per game a side-by-side
        video of the student and its teacher playing the evaluation's first
        seed (`videos/<game>.gif`), at most this long in game time; 0: none.
      teacher_cache: with `evaluate_teachers`, a JSON file of teachers'
        episodes (`TeacherScoreCache`): a teacher whose file, game, protocol
        and preprocessing are there is not played again (the same seeds give
        the same episodes, so the ratio stays paired); others are played and
        added. For several students against the same teachers (a sweep).
      workers: a `parallel_eval.EvalWorkers`: each evaluation's environments
        split over workers (local shares or Ray tasks), the same episodes;
        None: played here in one piece.
      student_path: the student's file, which split evaluations load
        (required with `workers` that split).

    Returns:
      The report (see `make_report`), also written to `out_dir` if given,
      with `report.md`, the videos and the plot `percent_of_teacher.png`.
    """
    missing = [g for g in games if g not in student.games]
    if missing:
        raise ValueError(
            f"--games names {missing}, which the student has no head for: it was "
            f"trained on {student.games}")
    kinds = teacher_kinds_of(student)
    cache = TeacherScoreCache(teacher_cache) if teacher_cache is not None else None
    split = workers is not None and workers.split
    if split:
        from multidistill import parallel_eval

        if student_path is None:
            raise ValueError("an evaluation split over workers loads the student from its "
                             "file: give student_path")
    def play(game, role, predict, kind):
        """One policy's evaluation: here, or split over `workers` (each loads
        the policy from its file)."""
        if not split:
            return evaluate(game, predict, kind, preprocessing, protocol, progress,
                            label=f"{game} {role}")
        source = (parallel_eval.student_source(student_path, game, preprocessing)
                  if role == "student" else
                  parallel_eval.teacher_source(teachers_dir, game, preprocessing,
                                               allow_unsafe_teacher))
        return parallel_eval.evaluate(source, protocol, workers, progress)

    student_scores, teacher_scores, teacher_params, videos = {}, {}, {}, {}
    # One Ray connection for every policy and game (a split over Ray).
    with parallel_eval.session(workers) if split else contextlib.nullcontext():
        for game in games:
            teacher = teacher_predict = None
            if evaluate_teachers or (video_seconds > 0 and out_dir is not None):
                teacher = teachers_lib.load_teacher(game, teachers_dir, preprocessing,
                                                    allow_unsafe=allow_unsafe_teacher)
                teacher_params[game] = int(teacher.policy_model.count_params())
                teacher_predict = predict_fn(teacher.policy_model)
            if evaluate_teachers:
                key = cache and cache.key(teacher.sha256, game, protocol, preprocessing)
                cached = cache and cache.get(key)
                if cached is not None:
                    if progress:
                        print(f"{game} teacher: its episodes on these seeds from {cache.path}")
                    teacher_scores[game] = dict(cached, source="evaluated with the student",
                                                cached_from=str(cache.path))
                else:
                    s = play(game, "teacher", teacher_predict, teacher.kind)
                    teacher_scores[game] = dict(s.to_dict(), source="evaluated with the student")
                    if cache:
                        cache.put(key, s.to_dict())
            else:
                _, card_path = teachers_lib.teacher_paths(game, teachers_dir)
                card = teachers_lib.read_card(card_path, game, Path(teachers_dir))
                ev = card.get("evaluation") or {}
                if "mean" not in ev:
                    raise ValueError(f"teacher card {card_path} holds no evaluation score: "
                                     "evaluate the teachers (--evaluate_teachers)")
                teacher_scores[game] = dict(ev, source=f"card ({ev.get('episodes')} episodes)")
                if ev.get("returns") and "ci" not in ev:
                    ci = statistics.mean_interval(ev["returns"])
                    teacher_scores[game]["ci"] = None if ci is None else list(ci)
            net = student.policy_network(game)
            student_predict = predict_fn(net)
            student_scores[game] = play(game, "student", student_predict, kinds[game])
            if video_seconds > 0 and out_dir is not None:
                from multidistill import videos as videos_lib

                v = videos_lib.record_side_by_side(
                    game, [("student", student_predict, kinds[game]),
                           ("teacher", teacher_predict, teacher.kind)],
                    preprocessing, seed=protocol.seed, epsilon=protocol.epsilon,
                    out_path=Path(out_dir) / "videos" / f"{game}.gif", max_seconds=video_seconds)
                if v["path"] is not None:  # None: the twin screen never matched (see videos).
                    v["path"] = os.path.relpath(v["path"], out_dir)
                videos[game] = v
    from multidistill import students as students_lib

    acting = students_lib.acting_parameters(student)
    sizes = {"student_parameters": acting, "teacher_parameters": teacher_params}
    if int(student.count_params()) != acting:  # Layers only training uses.
        sizes["student_training_parameters"] = int(student.count_params())
    if split:  # How it ran (the scores are those of one machine).
        sizes["evaluation_workers"] = {"num_workers": workers.num_workers,
                                       "executor": workers.executor}
    report = make_report(student_scores, teacher_scores, protocol, preprocessing,
                         dict(sizes, **(extra or {})), videos=videos)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


class TeacherScoreCache:
    """Teachers' evaluation episodes in one JSON file, by teacher file
    (sha256), game, protocol and preprocessing, so that students evaluated
    against the same teachers on the same seeds play each teacher once.

    The file maps `key(...)` strings to `Scores.to_dict()` dicts; it is
    rewritten atomically on every `put`, and an unreadable file is treated as
    empty (its teachers are played again) rather than trusted.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @staticmethod
    def key(teacher_sha256: str, game: str, protocol: EvalProtocol,
            preprocessing: environments.Preprocessing) -> str:
        return json.dumps({"teacher_sha256": teacher_sha256, "game": game,
                           "protocol": protocol.to_dict([game]),
                           "preprocessing": preprocessing.to_dict()}, sort_keys=True)

    def check(self) -> None:
        """Raises ValueError, naming the file, unless it is absent or such a
        cache (so that `put` never overwrites another file)."""
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a directory, expected a JSON file of teachers' "
                             "episodes")
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path} is not a JSON file of teachers' episodes ({e})") \
                from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} holds a JSON {type(data).__name__}, expected an "
                             "object of teachers' episodes")
        for k in data:
            try:
                fields = json.loads(k)
            except ValueError:
                fields = None
            if not isinstance(fields, dict) or "teacher_sha256" not in fields:
                raise ValueError(f"{self.path} is not a file of teachers' episodes: its key "
                                 f"{k[:40]!r} names no teacher, game and protocol")

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, scores: dict) -> None:
        data = self._read()
        data[key] = scores
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")


# -- reports ---------------------------------------------------------------


def make_report(student_scores: dict[str, Scores], teacher_scores: dict[str, dict],
                protocol: EvalProtocol, preprocessing: environments.Preprocessing,
                extra: dict | None = None, videos: dict | None = None,
                boot: statistics.Bootstrap = statistics.Bootstrap()) -> dict:
    """Builds the report: per game teacher and student scores and ratios, with intervals.

    Args:
      student_scores: per game, the student's episodes.
      teacher_scores: per game, {"mean", "std", "episodes", "source"} and,
        where known, "returns" (with as many episodes as the student's and
        the source "evaluated with the student", they are paired).
      protocol: the evaluation protocol.
      preprocessing: the environment spec.
      extra: more fields for the report (run name, training summary).
      videos: per game, what `videos.record_side_by_side` returned.
      boot: how intervals are computed (`multidistill.statistics`).

    Returns:
      The report as a JSON-ready dict: every score with its interval
      ("ci": [low, high] at `statistics.confidence`).
    """
    samples, norms = {}, {}
    for game, s in student_scores.items():
        t = teacher_scores[game]
        t_returns = t.get("returns")
        paired = (t.get("source") == "evaluated with the student" and t_returns is not None
                  and len(t_returns) == len(s.returns))
        samples[game] = statistics.GameSample(
            s.returns, t_returns if t_returns else None, teacher_mean=t["mean"],
            paired=paired)
        info = games_lib.get_game(game)
        norms[game] = None if info.human_score is None else (
            lambda x, info=info: (np.asarray(x) - info.random_score)
            / (info.human_score - info.random_score))
    intervals = statistics.game_intervals(samples, norms, boot)

    rows = {}
    ratios_above_random = []
    for game, s in student_scores.items():
        info = games_lib.get_game(game)
        t = teacher_scores[game]
        pct = intervals["games"][game]["percent_of_teacher"]
        rnd = info.random_score
        above = None
        if rnd is not None and t["mean"] != rnd:
            above = (s.mean - rnd) / (t["mean"] - rnd)
        rows[game] = {
            "student": s.to_dict(),
            "teacher": t,
            "student_percent_of_teacher": pct["value"],
            "student_percent_of_teacher_ci": pct["ci"],
            "paired": intervals["games"][game]["paired"],
            "student_percent_of_teacher_above_random": None if above is None else 100 * above,
            "student_human_normalized": info.human_normalized(s.mean),
            "teacher_human_normalized": info.human_normalized(t["mean"]),
            "random_score": rnd,
            "human_score": info.human_score,
        }
        if above is not None:
            ratios_above_random.append(above)
    gm_above = (_geometric_mean(ratios_above_random)
                if len(ratios_above_random) == len(rows) else None)
    gm = intervals["geometric_mean_percent_of_teacher"]
    report = {
        "games": rows,
        "geometric_mean_percent_of_teacher": gm["value"],
        "geometric_mean_percent_of_teacher_ci": gm["ci"],
        "geometric_mean_percent_of_teacher_note": (
            "Rusu et al.'s metric: geometric mean over games of student/teacher "
            "mean score; undefined (null) when a teacher's score is <= 0 (e.g. "
            "negative Pong scores) or a ratio is <= 0. The 'above random' variant uses "
            "(student - random) / (teacher - random) and is null when a student is "
            "at or below random."),
        "geometric_mean_percent_of_teacher_above_random": (
            None if gm_above is None else 100 * gm_above),
        "human_normalized": intervals["human_normalized"],
        "statistics": boot.to_dict(),
        "protocol": protocol.to_dict(list(student_scores)),
        "preprocessing": preprocessing.to_dict(),
        **(extra or {}),
    }
    if videos:
        report["videos"] = videos
    return report


def _geometric_mean(values: list[float]) -> float | None:
    if not values or any(v <= 0 for v in values):
        return None
    return float(math.exp(np.mean(np.log(values))))


def _fmt(x, digits=1):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def _fmt_ci(value, ci, digits=1) -> str:
    """"12.3 [10.1, 14.5]", or the value alone when there is no interval."""
    if value is None:
        return "n/a"
    if not ci:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def report_markdown(report: dict, links: bool = True) -> str:
    """The report as Markdown: tables with intervals, links to videos and plots.

    Args:
      report: what `make_report` returned.
      links: include the links to files beside the report (videos, plots).
    """
    conf = report.get("statistics", {}).get("confidence", 0.95)
    lines = [
        f"Every score: mean [{100 * conf:.0f} % bootstrap interval]; episodes per game and "
        "policy in brackets after the game.",
        "",
        "| game | teacher | student | student % of teacher | % of teacher (above random) "
        "| student human-norm. |",
        "|---|---|---|---|---|---|",
    ]
    for game, r in report["games"].items():
        t, s = r["teacher"], r["student"]
        lines.append(
            f"| {game} ({s['episodes']}) | {_fmt_ci(t['mean'], t.get('ci'))} | "
            f"{_fmt_ci(s['mean'], s.get('ci'))} | "
            f"{_fmt_ci(r['student_percent_of_teacher'], r.get('student_percent_of_teacher_ci'))}"
            f" | {_fmt(r['student_percent_of_teacher_above_random'])} | "
            f"{_fmt(r['student_human_normalized'], 2)} |"
        )
    p = report["protocol"]
    pre = report["preprocessing"]
    gm = _fmt_ci(report["geometric_mean_percent_of_teacher"],
                 report.get("geometric_mean_percent_of_teacher_ci"))
    lines += [
        "",
        f"**Geometric mean of student/teacher: {gm} %** (above random: "
        f"{_fmt(report['geometric_mean_percent_of_teacher_above_random'])} %)",
    ]
    human = report.get("human_normalized") or {}
    if human.get("student"):
        parts = []
        for name in ("mean", "median", "iqm"):
            s_est, t_est = human["student"].get(name), (human.get("teacher") or {}).get(name)
            if s_est:
                parts.append(f"{name.upper() if name == 'iqm' else name} "
                             f"{_fmt_ci(s_est['value'], s_est['ci'], 2)}"
                             + (f" (teachers {_fmt_ci(t_est['value'], t_est['ci'], 2)})"
                                if t_est else ""))
        note = ("" if human["student"].get("median") else
                f"; median and IQM need >= {statistics.MIN_GAMES_FOR_MEDIAN_AND_IQM} games")
        lines += ["", "Human-normalised score over games, student: " + "; ".join(parts)
                  + note + "."]
    sizes = report.get("student_parameters")
    if sizes:
        tp = report.get("teacher_parameters") or {}
        share = (f" ({100 * sizes / np.mean(list(tp.values())):.1f} % of one teacher's "
                 f"{int(np.mean(list(tp.values()))):,})" if tp else "")
        training = report.get("student_training_parameters")
        more = (f"; {training - sizes:,} more serve training only (feature projections or "
                "factor encoders)" if training else "")
        lines += ["", f"Student: {sizes:,} parameters for all its games{share}{more}."]
    if links:
        extras = []
        if report.get("videos"):
            extras.append("Videos (student left, teacher right, the same seed): " + ", ".join(
                f"[{g}]({v['path']})" + (f" (stopped at step {v['desynced_at_step']}: "
                                         f"{v['desync']})" if v.get("desync") else "")
                for g, v in report["videos"].items() if v.get("path")))
        for name, path in (report.get("plots") or {}).items():
            extras.append(f"![{name}]({path})")
        for e in extras:
            lines += ["", e]
    episodes = p.get("episodes_per_game") or {}
    lines += [
        "",
        "Protocol: episodes per game and policy "
        + ", ".join(f"{g} {n}" for g, n in episodes.items())
        + f"; epsilon {p['epsilon']}, up to {pre['noop_max']} no-op starts, sticky actions "
        f"{pre['sticky_action_prob']}, episodes capped at {pre['max_episode_frames']:,} "
        f"frames, {p['num_envs']} environments, environment i seeded {p['seed']} + i"
        + (" with its own random draws" if p.get("random_draws") == RANDOM_DRAWS else "")
        + ". "
        "Teacher scores: "
        + ", ".join(f"{g}: {r['teacher'].get('source', 'evaluated')}"
                    + (", paired by episode" if r.get("paired") else "")
                    for g, r in report["games"].items()) + ".",
    ]
    if report.get("statistics"):
        st = report["statistics"]
        lines += ["", f"Intervals: {st['method']}, {st['resamples']:,} resamples, seed "
                      f"{st['seed']} (`multidistill.statistics`)."]
    if report.get("diagnostics"):
        lines += [""] + diagnostics_markdown(report["diagnostics"], links=links)
    return "\n".join(lines) + "\n"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def diagnostics_markdown(diagnostics: dict, links: bool = True) -> list[str]:
    """The report's "Diagnostics" section (`multidistill.diagnostics`), as lines:
    per game held-out KL, agreement, entropies, the teacher's median action
    gap and the agreement in its least and most confident fifth of states."""
    lines = [
        "## Diagnostics",
        "",
        "| game | held-out states | held-out KL, nats | top-1 agreement "
        "| student entropy, nats | teacher entropy at tau, nats | teacher's median action gap "
        "| agreement, least confident fifth | agreement, most confident fifth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for game, d in diagnostics.get("games", {}).items():
        if not d.get("num_states"):
            lines.append(f"| {game} | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        bins = [b for b in d["agreement_by_confidence"] if b["num_states"]]
        gap = d["action_gap"]
        units = "logits" if d["teacher_kind"] == "logits" else "Q"
        lines.append(
            f"| {game} ({d['teacher_kind']}, tau {d['temperature']:g}) | {d['num_states']:,} "
            f"| {d['heldout_kl']:.4f} | {_pct(d['agreement'])} "
            f"| {d['student_entropy']:.3f} (max {d['max_entropy']:.2f}) "
            f"| {d['teacher_entropy']:.3f} | {gap['quantiles']['50']:.3g} {units} "
            f"| {_pct(bins[0]['agreement'])} | {_pct(bins[-1]['agreement'])} |")
    sha = (diagnostics.get("identity") or {}).get("student_sha256")
    lines += [
        "",
        f"On up to {diagnostics.get('max_states_per_game', 0):,} states per game, evenly "
        "spread over the held-out episodes (never trained on)"
        + (f", of the student file with sha256 {sha[:12]}..." if sha else "") + ". "
        "Held-out KL: KL(teacher_tau || student), the distiller's `heldout/kl`, with "
        "teacher_tau = softmax(teacher outputs / tau). Entropies: of softmax(student logits) "
        "and of teacher_tau (at most ln of the action count). Action gap: the teacher's best "
        "output minus its second best (Q-value or logit units). Fifths: the states ranked "
        "by that gap. Quantiles, histograms and every fifth per game: `diagnostics.json`.",
    ]
    if links and diagnostics.get("plot"):
        lines += ["", f"![diagnostics]({diagnostics['plot']})"]
    return lines


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes report.json, the plot percent_of_teacher.png and report.md into `out_dir`."""
    from multidistill import summaries

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = dict(report.get("plots") or {})
    png = summaries.plot_percent_of_teacher({"": report}, out_dir / "percent_of_teacher.png")
    if png is not None:
        plots["student % of teacher"] = png.name
    if (out_dir / "curves.png").exists():
        plots["distillation curves"] = "curves.png"
    if plots:
        report["plots"] = plots
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    files.atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    files.atomic_write_text(md_path, "# multidistill report\n\n" + report_markdown(report))
    return json_path, md_path
