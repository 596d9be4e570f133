"""Real-time policy distillation: students learn while their teacher trains.

Sun & Fazli (2019): instead of training the teacher and distilling it
afterwards, one or more students take gradient steps alongside the teacher's
own, on states of the teacher's experience (DQN's replay memory, PPO's
latest rollout) labelled by the teacher as it is at that moment. The
student follows the teacher's latest policy, and is ready when the teacher
is. By default the labels come from a moving average of the teacher's
weights over its last few thousand updates rather than from the live
network, whose greedy action churns from update to update so that students
chasing it collapse (`RealtimeConfig.label_horizon`).

    python -m multidistill.train_teacher --game=pong --algo=dqn \\
        --distill_into=net3,tiny

`RealtimeDistillation` is a companion of the teacher-training runner
(`agents.runner.Runner(..., companions=[...])`): after each training
iteration it takes `steps_per_update` student steps per teacher gradient step
of the iteration; at each of the runner's evaluations it evaluates every
student under the same protocol; it checkpoints with the teacher and
resumes with it. The students' loss is offline distillation's
(`objectives.Distillation`: temperature-sharpened KL with the temperature
of the teacher's kind, or another policy loss), their networks are
`networks.MultiTaskStudent`s of one game built by `distiller.build_student`,
so a real-time student is a student file like any other
(`students.load_student`, `python -m multidistill.evaluate`).

Files, under `<checkpoint_dir>/realtime/`:

    <size>/checkpoint.npz   weights, optimizer state, counters (atomic)
    <size>/student.keras    the student as of the last checkpoint
    evaluations.jsonl       one line per evaluation: frames, wall-clock,
                            the teacher's and every student's scores
    curves.png              teacher and students' evaluation returns
    report.md               the evaluations as a table

Scalars go to the runner's TensorBoard log as `realtime/<size>/...`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multidistill import (
    checkpoints,
    distiller,
    environments,
    evaluation,
    files,
    networks,
    objectives,
    pipeline,
    students,
    summaries,
)

# What students written before these settings existed were trained with.
LEGACY_SETTINGS = {"start_frames": 0, "recent_steps": 0, "label_horizon": 0.0}


@dataclasses.dataclass(frozen=True)
class RealtimeConfig:
    """How students distil alongside a training teacher.

    Attributes:
      sizes: the students, by size name (`networks.STUDENT_SIZES`), one each.
      steps_per_update: student gradient steps per teacher gradient step
        (the paper: one, on the teacher's replay batches).
      batch_size: states per student gradient step.
      learning_rate: the students' Adam step size: offline distillation's.
        (At 2.5e-4 students on the live teacher's labels died; the cause was
        the labels' churn, not the step size: see label_horizon.)
      policy_loss: `objectives.Distillation.policy_loss` ("kl", "nll", "mse").
      temperature: tau of the KL; None: that of the teacher's kind (0.01 for
        Q-values, 1 for logits: `objectives.default_temperature`).
      feature_beta: weight of Actor-Mimic's feature regression (0: off).
      head_units: units of the student's head layer (0: none, so that a
        student is the teacher's network at its size).
      start_frames: the students take their first step once the teacher has
        played this many emulator frames; the teacher's gradient steps before
        then pay for none (0: from its first update). A DQN's first 500,000
        frames teach it little worth distilling; the students' time is better
        spent later.
      recent_steps: > 0: states come from the teacher's latest this many
        agent steps of replay, close to its current policy's distribution
        (what offline distillation records); 0: from the whole replay memory,
        as the teacher's own batches (PPO's rollouts are always its latest).
      label_horizon: > 0: the labels come from an exponential moving average
        of the teacher's weights over about this many of its gradient steps
        (each step mixes in 1 / label_horizon of the live weights); 0: from
        the live teacher. A DQN's greedy action churns: on Pong, 1,024
        updates of a teacher at -13.5 change it on about half of the states, and a
        student chasing those labels outputs the same logits for every state
        within about 6,000 steps, where one on the frozen teacher's labels
        of the same states learns (benchmarks/realtime/churn_probe.md).
      seed: seeds the students' initial weights and the sampling of states.
    """

    sizes: tuple[str, ...]
    steps_per_update: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2.5e-4
    policy_loss: str = "kl"
    temperature: float | None = None
    feature_beta: float = 0.0
    head_units: int = 0
    start_frames: int = 500_000
    recent_steps: int = 100_000
    label_horizon: float = 5_000.0
    seed: int = 0

    def __post_init__(self):
        if not self.sizes:
            raise ValueError("sizes must name at least one student size")
        unknown = [s for s in self.sizes if s not in networks.STUDENT_SIZES]
        if unknown:
            raise ValueError(f"sizes must be among {sorted(networks.STUDENT_SIZES)}, "
                             f"found {unknown}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must not repeat, found {list(self.sizes)}")
        if not self.steps_per_update > 0:
            raise ValueError(f"steps_per_update must be > 0, found {self.steps_per_update}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, found {self.learning_rate}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, found {self.temperature}")
        if self.head_units < 0:
            raise ValueError(f"head_units must be >= 0, found {self.head_units}")
        if self.start_frames < 0:
            raise ValueError(f"start_frames must be >= 0, found {self.start_frames}")
        if self.recent_steps < 0:
            raise ValueError(f"recent_steps must be >= 0, found {self.recent_steps}")
        if not (self.label_horizon == 0 or self.label_horizon >= 1):
            raise ValueError("label_horizon must be 0 (the live teacher) or >= 1 gradient "
                             f"step, found {self.label_horizon}")
        objectives.Distillation(policy_loss=self.policy_loss, feature_beta=self.feature_beta)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), sizes=list(self.sizes))

    def identity(self) -> dict:
        """The settings a resumed student must share (the sizes may change)."""
        d = self.to_dict()
        d.pop("sizes")
        return d

    @staticmethod
    def saved_identity(saved: dict) -> dict:
        """A checkpoint's `identity()`, with the settings added since it was
        written at the values students had before they existed."""
        return {**LEGACY_SETTINGS, **saved}


def labeller(teacher_model):
    """frames -> (outputs, features) of a teacher-layout network (see
    `networks.build_teacher_network`), sharing its weights: always the
    teacher as it is now."""
    import keras

    outputs = teacher_model.outputs[0]
    features = teacher_model.get_layer("features").output
    return keras.Model(teacher_model.inputs, [outputs, features],
                       name=f"{teacher_model.name}_labeller")


class RealtimeDistillation:
    """Students distilling from a teacher as it trains (a runner companion).

    Args:
      config: the settings.
      game: the teacher's game.
      num_actions: its action count.
      kind: the teacher's kind ("q_values" or "logits"): the students'
        acting rule and default temperature.
      spec: the preprocessing.
      directory: where the students live (`<checkpoint_dir>/realtime`).
    """

    def __init__(self, config: RealtimeConfig, game: str, num_actions: int, kind: str,
                 spec: environments.Preprocessing, directory: str | os.PathLike):
        self.config = config
        self.game = game
        self.kind = kind
        self.spec = spec
        self.directory = Path(directory)
        tau = config.temperature or objectives.default_temperature(kind)
        self.objective = objectives.Distillation(
            policy_loss=config.policy_loss, temperatures=(tau,),
            feature_beta=config.feature_beta)
        self._labeller = None
        self._agent = None  # The teacher's agent, once a record was seen.
        self._teacher = None  # The live teacher network.
        self._average = None  # Its moving average (with label_horizon).
        self._average_ready = False  # Whether the average holds the teacher's weights.
        self.students: dict[str, tuple] = {}
        self._num_actions = int(num_actions)
        self.counters = {"grad_steps": 0, "credit": 0.0, "distill_seconds": 0.0,
                         "eval_seconds": 0.0}
        self.rng = np.random.default_rng(config.seed)

    # -- building, saving, resuming -----------------------------------------

    def _distill_config(self, size: str) -> distiller.DistillConfig:
        c = self.config
        return distiller.DistillConfig(
            games=(self.game,), objective=self.objective, student_size=size,
            head_units=c.head_units, learning_rate=c.learning_rate,
            pipeline=pipeline.PipelineConfig(batch_size_per_game=c.batch_size, seed=c.seed))

    def build(self, teacher_model) -> None:
        """Builds the students for `teacher_model` (the agent's network)."""
        self._teacher = teacher_model
        if self.config.label_horizon:
            import keras

            self._average = keras.models.clone_model(teacher_model)
            self._average.set_weights(teacher_model.get_weights())
            self._labeller = labeller(self._average)
        else:
            self._labeller = labeller(teacher_model)
        feature_dim = int(self._labeller.outputs[1].shape[-1])
        for size in self.config.sizes:
            student, optimizer = distiller.build_student(
                self._distill_config(size), [self._num_actions], [feature_dim], self.spec,
                extra_config={"teacher_kinds": [self.kind],
                              "realtime": self.config.to_dict()})
            self.students[size] = (student, optimizer)

    def _paths(self, size: str) -> tuple[Path, Path]:
        return self.directory / size / "checkpoint.npz", self.directory / size / "student.keras"

    @property
    def _average_path(self) -> Path:
        return self.directory / "label_average.npz"

    def save(self) -> None:
        """Checkpoints every student (atomic files) with the shared counters,
        and the teacher's moving average that labels them."""
        if self._average is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            checkpoints.save(self._average_path, self._average, None,
                             {"label_horizon": self.config.label_horizon})
        for size, (student, optimizer) in self.students.items():
            ckpt, keras_path = self._paths(size)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            checkpoints.save(ckpt, student, optimizer,
                             {"realtime": self.config.identity(), "size": size,
                              "counters": self.counters})
            students.save_student(student, keras_path)

    def restore(self) -> list[str]:
        """Resumes the students that have a checkpoint (call after `build`,
        when the teacher resumed from its own).

        Returns:
          The sizes resumed; the others start afresh.

        Raises:
          checkpoints.CheckpointError: a student was trained with other settings.
        """
        resumed = []
        for size, (student, optimizer) in self.students.items():
            ckpt, _ = self._paths(size)
            if not ckpt.exists():
                continue
            saved = checkpoints.read_state(ckpt)
            settings = RealtimeConfig.saved_identity(saved.get("realtime") or {})
            if settings != json.loads(json.dumps(self.config.identity())):
                raise checkpoints.CheckpointError(
                    f"real-time student {ckpt} was distilled with other settings "
                    f"({settings}, asked {self.config.identity()}): use "
                    "the same --distill_* flags, or delete that folder")
            saved = checkpoints.restore(ckpt, student, optimizer)
            self.counters = dict(self.counters, **saved["counters"])
            resumed.append(size)
        if self._average is not None and self._average_path.exists():
            checkpoints.restore(self._average_path, self._average, None)
            self._average_ready = True
        return resumed

    def update_average(self, gradient_steps: int) -> None:
        """Moves the labelling average toward the live teacher by the
        teacher's `gradient_steps` since the last call: w += (1 - (1 - 1/H)^n)
        (w_live - w). The first call starts it from the live teacher, unless it
        was restored."""
        if self._average is None:
            return
        if not self._average_ready:  # The teacher as it starts (or resumed).
            self._average.set_weights(self._teacher.get_weights())
            self._average_ready = True
        if gradient_steps < 1:
            return
        mix = 1.0 - (1.0 - 1.0 / self.config.label_horizon) ** gradient_steps
        self._average.set_weights([
            a + mix * (w - a) for a, w in zip(self._average.get_weights(),
                                              self._teacher.get_weights())])

    # -- training ------------------------------------------------------------

    def labelled_batch(self, frames: np.ndarray) -> tuple[dict, dict]:
        """The students' (x, y) for `frames`, labelled by the teacher now."""
        outputs, features = self._labeller.predict_on_batch(frames)
        x = {"frames": frames, "game_id": np.zeros(len(frames), np.int32)}
        y = {"teacher_outputs": np.asarray(outputs, np.float32)}
        if "teacher_features" in self.objective.fields:
            y["teacher_features"] = np.asarray(features, np.float32)
        return x, y

    def on_record(self, agent, record, writer=None) -> int:
        """After a teacher iteration: the student steps its gradient steps pay for.

        Returns:
          The gradient steps each student took.
        """
        c = self.config
        self._agent = agent
        self.update_average(record.num_gradient_steps)
        if record.num_env_frames < c.start_frames:
            return 0
        self.counters["credit"] += record.num_gradient_steps * c.steps_per_update
        n = int(math.floor(self.counters["credit"]))
        if n < 1:
            return 0
        t0 = time.perf_counter()
        done, losses = 0, {size: [] for size in self.students}
        for _ in range(n):
            frames = agent.experience(c.batch_size, self.rng, c.recent_steps)
            if frames is None:  # Nothing to sample yet: the credit is dropped.
                break
            x, y = self.labelled_batch(frames)
            for size, (student, _) in self.students.items():
                loss = float(np.asarray(student.train_on_batch(x, y)).reshape(-1)[0])
                if not math.isfinite(loss):
                    raise distiller.TrainingError(
                        f"the real-time {size} student's loss became {loss}: try a lower "
                        "--distill_learning_rate")
                losses[size].append(loss)
            done += 1
        self.counters["credit"] = 0.0 if done < n else self.counters["credit"] - n
        self.counters["grad_steps"] += done
        self.counters["distill_seconds"] += time.perf_counter() - t0
        if writer is not None and done:
            writer.scalars(record.num_env_frames, {
                **{f"realtime/{size}/loss": float(np.mean(v)) for size, v in losses.items()},
                "realtime/student_grad_steps": self.counters["grad_steps"],
                "realtime/distill_seconds": self.counters["distill_seconds"]})
        return done

    # -- evaluation ----------------------------------------------------------

    def agreement(self, frames: np.ndarray) -> dict[str, float]:
        """Each student's top-1 agreement with its labels (the live teacher or
        its average) on `frames`: the share of states where both pick the
        same action."""
        teacher = np.argmax(np.asarray(self._labeller.predict_on_batch(frames)[0]), axis=1)
        out = {}
        for size, (student, _) in self.students.items():
            predict = evaluation.predict_fn(student.policy_network(self.game))
            out[size] = float(np.mean(np.argmax(np.asarray(predict(frames)), axis=1)
                                      == teacher))
        return out

    def experience_agreement(self, frames: int) -> dict[str, float]:
        """`agreement` on AGREEMENT_STATES states of the teacher's experience
        (from where the students sample), drawn with a generator of their own
        (so the students' batches do not depend on it); empty before any."""
        if self._agent is None:
            return {}
        rng = np.random.default_rng([self.config.seed, int(frames)])
        states = self._agent.experience(AGREEMENT_STATES, rng, self.config.recent_steps)
        return {} if states is None else self.agreement(states)

    def evaluate(self, protocol: evaluation.EvalProtocol) -> dict[str, evaluation.Scores]:
        """Every student's scores under `protocol`, acting by the teacher's rule."""
        t0 = time.perf_counter()
        out = {}
        for size, (student, _) in self.students.items():
            out[size] = evaluation.evaluate(
                self.game, evaluation.predict_fn(student.policy_network(self.game)),
                self.kind, self.spec, protocol, progress=False)
        self.counters["eval_seconds"] += time.perf_counter() - t0
        return out

    def on_evaluation(self, frames: int, teacher_scores: evaluation.Scores,
                      protocol: evaluation.EvalProtocol, wall_clock_s: float,
                      writer=None) -> str:
        """At a runner evaluation: evaluates the students, logs and reports.

        Returns:
          A one-line summary for the console.
        """
        scores = self.evaluate(protocol)
        agreement = self.experience_agreement(frames)
        entry = {"frames": int(frames), "wall_clock_s": round(float(wall_clock_s), 1),
                 "teacher": teacher_scores.to_dict(),
                 "students": {size: s.to_dict() for size, s in scores.items()},
                 "agreement": agreement,
                 "student_grad_steps": self.counters["grad_steps"],
                 "distill_seconds": round(self.counters["distill_seconds"], 1),
                 "student_eval_seconds": round(self.counters["eval_seconds"], 1)}
        log = self.directory / "evaluations.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        entries = [e for e in read_evaluations(log) if e["frames"] < frames] + [entry]
        files.atomic_write_text(log, "".join(json.dumps(e) + "\n" for e in entries))
        if writer is not None:
            scalars = {}
            for size, s in scores.items():
                scalars[f"realtime/{size}/mean_return"] = s.mean
                ci = s.interval()
                if ci:
                    (scalars[f"realtime/{size}/mean_return_ci_low"],
                     scalars[f"realtime/{size}/mean_return_ci_high"]) = ci
                pct = percent_of(s.mean, teacher_scores.mean)
                if pct is not None:
                    scalars[f"realtime/{size}/percent_of_teacher"] = pct
                if size in agreement:
                    scalars[f"realtime/{size}/agreement"] = agreement[size]
            writer.scalars(frames, scalars)
        self.write_report(entries)
        return "students " + ", ".join(
            f"{size} {s.mean:.1f}" + (f" ({100 * agreement[size]:.0f} % agree)"
                                      if size in agreement else "")
            for size, s in scores.items())

    def write_report(self, entries: list[dict]) -> None:
        """`report.md` and `curves.png` from the evaluations so far."""
        sizes = list(self.config.sizes)
        files.atomic_write_text(self.directory / "report.md",
                                report_markdown(entries, sizes, self.game))
        plot_curves(self.directory.parent / "metrics.jsonl", sizes,
                    self.directory / "curves.png")


AGREEMENT_STATES = 1024  # States of the teacher's experience per agreement check.


def percent_of(student: float, teacher: float) -> float | None:
    """100 * student / teacher, or None where the teacher's score is not positive."""
    return 100.0 * student / teacher if teacher > 0 else None


def read_evaluations(path: str | os.PathLike) -> list[dict]:
    """The entries of an `evaluations.jsonl` (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_reaching(entries: Sequence[dict], size: str, threshold: float) -> dict | None:
    """The first evaluation at which student `size`'s mean return was at least
    `threshold` (e.g. 90 % of the final teacher's score), or None."""
    for e in entries:
        s = e["students"].get(size)
        if s is not None and s["mean"] >= threshold:
            return e
    return None


def report_markdown(entries: Sequence[dict], sizes: Sequence[str], game: str) -> str:
    agree = any(e.get("agreement") for e in entries)
    columns = (["frames", "wall-clock (min)", "teacher"]
               + [f"{size} (% of teacher)" for size in sizes]
               + [f"{size}: top-1 agreement" for size in sizes if agree])
    head = "| " + " | ".join(columns) + " |"
    lines = [f"# Real-time distillation on {game}", "",
             "Each row is an evaluation under the project's protocol (mean return over "
             "its episodes); the % is of the teacher evaluated at the same moment."
             + (f" Agreement: the share of {AGREEMENT_STATES:,} states of the teacher's "
                "experience (where the students sample) on which a student picks the "
                "teacher's action." if agree else ""), "",
             head, "|" + "---|" * len(columns)]
    for e in entries:
        t = e["teacher"]["mean"]
        cells = []
        for size in sizes:
            s = e["students"].get(size)
            if s is None:
                cells.append("-")
                continue
            pct = percent_of(s["mean"], t)
            cells.append(f"{s['mean']:.1f}" + (f" ({pct:.0f} %)" if pct is not None else ""))
        if agree:
            a = e.get("agreement") or {}
            cells += [f"{100 * a[size]:.0f} %" if size in a else "-" for size in sizes]
        lines.append(f"| {e['frames']:,} | {e['wall_clock_s'] / 60:.1f} | {t:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(metrics_path: str | os.PathLike, sizes: Sequence[str],
                path: str | os.PathLike) -> Path | None:
    """The teacher's and the students' evaluation returns (students with their
    95 % intervals) and the students' losses, against the teacher's frames."""
    returns = ["eval/mean_return"] + [f"realtime/{s}/mean_return" for s in sizes]
    return summaries.plot_curves(
        metrics_path, path,
        [("evaluation mean return", returns),
         ("student loss", [f"realtime/{s}/loss" for s in sizes])],
        "teacher's emulator frames", smoothing=0.6,
        labels={"eval/mean_return": "teacher",
                **{f"realtime/{s}/mean_return": f"student {s}" for s in sizes},
                **{f"realtime/{s}/loss": s for s in sizes}},
        intervals={f"realtime/{s}/mean_return": (f"realtime/{s}/mean_return_ci_low",
                                                  f"realtime/{s}/mean_return_ci_high")
                   for s in sizes})
