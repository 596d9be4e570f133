"""Evaluation: any policy (student head or teacher) under one protocol, and reports.

Protocol (the same for teachers and students, stated in every report):
  * environments from the run's preprocessing spec: up to `noop_max` no-op
    starts, sticky actions as set (0 by default), episodes capped at
    `max_episode_frames` emulator frames (108,000 by default);
  * the policy acts by its game's rule (argmax for Q-value teachers and
    their students, a sample of the softmax for logit teachers and theirs),
    with a uniformly random action with probability `epsilon` (0.05);
  * `num_episodes` episodes, spread over `num_envs` environments with a
    fixed quota each (so short episodes are not favoured), environment i
    seeded with `seed + i`; the same seeds for every policy evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multidistill import acting, environments, files
from multidistill import games as games_lib
from multidistill import teachers as teachers_lib


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How episodes are played for a score.

    Attributes:
      num_episodes: episodes per game and policy.
      epsilon: probability of a uniformly random action.
      num_envs: environments stepped together.
      seed: environment i of the evaluation is reset with seed + i.
      num_threads: emulator threads (0: one per core).
      num_env_groups: groups the environments are split into
        (`acting.play`; 0 picks by core count, `environments.env_groups`).
      overlap_env_groups: overlap the groups' emulation with inference
        (True) or step them in lockstep (False); None picks by core count.
        Like `num_threads`, these two are execution settings: they change
        which random draw lands where, not what is measured.
    """

    num_episodes: int = 8
    epsilon: float = 0.05
    num_envs: int = 8
    seed: int = 1_000_000
    num_threads: int = 0
    num_env_groups: int = 0
    overlap_env_groups: bool | None = None

    def __post_init__(self):
        if self.num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, found {self.num_episodes}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], found {self.epsilon}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, found {self.num_envs}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("num_threads")
        d.pop("num_env_groups")
        d.pop("overlap_env_groups")
        return d


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

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
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


def evaluate(
    game: str,
    predict: Callable[[np.ndarray], np.ndarray],
    kind: str,
    preprocessing: environments.Preprocessing,
    protocol: EvalProtocol,
    progress: bool = True,
    label: str = "",
) -> Scores:
    """Plays `protocol.num_episodes` episodes of `game` with a network.

    Args:
      game: ROM id.
      predict: observations (B, S, H, W) uint8 -> outputs (B, A).
      kind: acting rule, "q_values" (argmax) or "logits" (sample).
      preprocessing: environment spec.
      protocol: episodes, epsilon, seeds.
      progress: show a progress bar counting episodes.
      label: shown in the progress bar.

    Returns:
      The episode returns and lengths, in the order of (environment, episode).
    """
    n_envs = min(protocol.num_envs, protocol.num_episodes)
    quota = np.full(n_envs, protocol.num_episodes // n_envs)
    quota[: protocol.num_episodes % n_envs] += 1
    rng = np.random.default_rng([protocol.seed, 7])
    num_groups, overlap = environments.env_groups(protocol.num_env_groups,
                                                  protocol.overlap_env_groups)
    env = environments.make_vector_envs(game, preprocessing, n_envs,
                                        num_threads=protocol.num_threads,
                                        num_groups=num_groups)
    policy = network_policy(predict, kind, protocol.epsilon, rng)
    done = np.zeros(n_envs, dtype=int)
    tracker = acting.EpisodeTracker(n_envs)
    results: list[list[tuple[float, int]]] = [[] for _ in range(n_envs)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=protocol.num_episodes, desc=f"eval {label or game}",
                   unit="episode", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        # Environments that met their quota stop stepping (`active`).
        active = np.ones(n_envs, dtype=bool)
        startup = None
        for step in acting.play(env, policy, protocol.seed, active=active,
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
                 extra: dict | None = None, allow_unsafe_teacher: bool = False) -> dict:
    """Evaluates the student on `games` (and their teachers), writes the report.

    Teachers are played under the same protocol and seeds as the student
    when `evaluate_teachers`; otherwise the score on their card is used.

    Returns:
      The report (see `make_report`), also written to `out_dir` if given.
    """
    missing = [g for g in games if g not in student.games]
    if missing:
        raise ValueError(
            f"--games names {missing}, which the student has no head for: it was "
            f"trained on {student.games}")
    kinds = teacher_kinds_of(student)
    student_scores, teacher_scores = {}, {}
    for game in games:
        if evaluate_teachers:
            teacher = teachers_lib.load_teacher(game, teachers_dir, preprocessing,
                                                allow_unsafe=allow_unsafe_teacher)
            s = evaluate(game, predict_fn(teacher.policy_model), teacher.kind, preprocessing,
                         protocol, progress, label=f"{game} teacher")
            teacher_scores[game] = dict(s.to_dict(), source="evaluated with the student")
        else:
            _, card_path = teachers_lib.teacher_paths(game, teachers_dir)
            card = teachers_lib.read_card(card_path, game, Path(teachers_dir))
            ev = card.get("evaluation") or {}
            if "mean" not in ev:
                raise ValueError(f"teacher card {card_path} holds no evaluation score: "
                                 "evaluate the teachers (--evaluate_teachers)")
            teacher_scores[game] = dict(ev, source=f"card ({ev.get('episodes')} episodes)")
        net = student.policy_network(game)
        student_scores[game] = evaluate(game, predict_fn(net), kinds[game], preprocessing,
                                        protocol, progress, label=f"{game} student")
    report = make_report(student_scores, teacher_scores, protocol, preprocessing, extra)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


# -- reports ---------------------------------------------------------------


def _geometric_mean(values: list[float]) -> float | None:
    if not values or any(v <= 0 for v in values):
        return None
    return float(math.exp(np.mean(np.log(values))))


def make_report(student_scores: dict[str, Scores], teacher_scores: dict[str, dict],
                protocol: EvalProtocol, preprocessing: environments.Preprocessing,
                extra: dict | None = None) -> dict:
    """Builds the report: per game teacher and student scores and ratios.

    Args:
      student_scores: per game, the student's episodes.
      teacher_scores: per game, {"mean", "std", "episodes", "source"}.
      protocol: the evaluation protocol.
      preprocessing: the environment spec.
      extra: more fields for the report (run name, training summary).

    Returns:
      The report as a JSON-ready dict.
    """
    rows = {}
    ratios, ratios_above_random = [], []
    for game, s in student_scores.items():
        info = games_lib.get_game(game)
        t = teacher_scores[game]
        # A ratio of scores means something only for a positive teacher score.
        ratio = s.mean / t["mean"] if t["mean"] > 0 else None
        rnd = info.random_score
        above = None
        if rnd is not None and t["mean"] != rnd:
            above = (s.mean - rnd) / (t["mean"] - rnd)
        rows[game] = {
            "student": s.to_dict(),
            "teacher": t,
            "student_percent_of_teacher": None if ratio is None else 100 * ratio,
            "student_percent_of_teacher_above_random": None if above is None else 100 * above,
            "student_human_normalized": info.human_normalized(s.mean),
            "teacher_human_normalized": info.human_normalized(t["mean"]),
            "random_score": rnd,
            "human_score": info.human_score,
        }
        if ratio is not None:
            ratios.append(ratio)
        if above is not None:
            ratios_above_random.append(above)
    gm = _geometric_mean(ratios) if len(ratios) == len(rows) else None
    gm_above = (_geometric_mean(ratios_above_random)
                if len(ratios_above_random) == len(rows) else None)
    return {
        "games": rows,
        "geometric_mean_percent_of_teacher": None if gm is None else 100 * gm,
        "geometric_mean_percent_of_teacher_note": (
            "Rusu et al.'s metric: geometric mean over games of student/teacher "
            "mean score; undefined (null) when a teacher's score is <= 0 (e.g. "
            "negative Pong scores) or a ratio is <= 0. The 'above random' variant uses "
            "(student - random) / (teacher - random) and is null when a student is "
            "at or below random."),
        "geometric_mean_percent_of_teacher_above_random": (
            None if gm_above is None else 100 * gm_above),
        "protocol": protocol.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        **(extra or {}),
    }


def _fmt(x, digits=1):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def report_markdown(report: dict) -> str:
    lines = [
        "| game | teacher | student | % of teacher | % of teacher (above random) "
        "| student human-norm. |",
        "|---|---|---|---|---|---|",
    ]
    for game, r in report["games"].items():
        t, s = r["teacher"], r["student"]
        lines.append(
            f"| {game} | {_fmt(t['mean'])} ± {_fmt(t['std'])} | {_fmt(s['mean'])} ± "
            f"{_fmt(s['std'])} | {_fmt(r['student_percent_of_teacher'])} | "
            f"{_fmt(r['student_percent_of_teacher_above_random'])} | "
            f"{_fmt(r['student_human_normalized'], 2)} |"
        )
    p = report["protocol"]
    pre = report["preprocessing"]
    lines += [
        "",
        f"Geometric mean of student/teacher: "
        f"{_fmt(report['geometric_mean_percent_of_teacher'])} % "
        f"(above random: {_fmt(report['geometric_mean_percent_of_teacher_above_random'])} %)",
        "",
        f"Protocol: {p['num_episodes']} episodes per game and policy, epsilon "
        f"{p['epsilon']}, up to {pre['noop_max']} no-op starts, sticky actions "
        f"{pre['sticky_action_prob']}, episodes capped at {pre['max_episode_frames']:,} "
        f"frames, seeds {p['seed']}..{p['seed'] + p['num_envs'] - 1}. Teacher scores: "
        + ", ".join(f"{g}: {r['teacher'].get('source', 'evaluated')}"
                    for g, r in report["games"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    files.atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    files.atomic_write_text(md_path, "# multidistill report\n\n" + report_markdown(report))
    return json_path, md_path
