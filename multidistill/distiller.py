"""Training the multi-task student: a batch source feeds it, an objective says
what it minimises.

The distiller owns the loop and the run directory and nothing else: where
batches come from is the `pipeline.BatchSource` it is given, what the loss
is the `objectives` config in `DistillConfig.objective` (attached to the
student, whose `compute_loss` delegates to it). A new method is a new source
or objective, not a branch here.

A run lives in one directory:

    config.json      the run's settings and the data it started from (a
                     rerun must ask for the same; datasets may have grown)
    checkpoint.npz   weights, optimizer state, gradient-step counter (atomic)
    student.keras    the student as of the last checkpoint, without optimizer
                     state (atomic; `students.load_student`)
    metrics.jsonl    every scalar logged; tb/ the same for TensorBoard
    curves.png       held-out loss, KL and agreement per game
    iekd_teacher_factors.npz, .json   with the IE-KD objective only: the
                     teachers' auto-encoders it fitted before training
                     (`objectives.prepare`), reused on resume

Rerunning with the same directory resumes from the checkpoint and stops at
`num_grad_steps`; the source is a pure function of the batch index and of
the data prefix recorded in config.json (`data_prefix`), so the resumed run
sees the batches the uninterrupted run would have seen. SIGINT
and SIGTERM save a checkpoint before exiting. A NaN or infinite loss stops
the run and keeps the last good checkpoint.

Devices. `DistillConfig.distribution` names the engine that trains the
student (`multidistill.distribution`: one device, every device of the
machine, or several machines): the student and its optimizer are built in
the engine's scope and each batch goes through `engine.train_on_batch`; the
loop is the same for all. The source's batch is the global batch whatever
the engine, so a run may resume on another engine or device count. With
several workers, only the chief (worker 0) writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from multidistill import (
    acting,
    checkpoints,
    environments,
    files,
    interrupts,
    losses,
    networks,
    objectives,
    pipeline,
    students,
    summaries,
)
from multidistill import distribution as distribution_lib


class TrainingError(ValueError):
    """Training cannot go on (NaN loss, run directory of another run)."""


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation run.

    Attributes:
      games: ROM ids, in head order.
      objective: what the student minimises (`objectives.Distillation`:
        policy loss, per-game temperatures, feature regression weight; or
        `update_rules.UpdateRule`, or `iekd.IEKD`).
      student_size: named trunk size, see `networks.STUDENT_SIZES`.
      head_units: hidden units of each game's head (of the shared head with
        `student_head="shared18"`); 0: none.
      learning_rate: Adam step size.
      num_grad_steps: gradient steps of the whole run.
      checkpoint_every_steps: gradient steps between checkpoints.
      eval_every_steps: gradient steps between held-out metrics.
      pipeline: minibatch sampling settings.
      precision: the student's numeric precision, "float32" or
        "mixed_bfloat16" (`networks.PRECISIONS`; train.py picks
        `networks.default_precision()`). Like the prefetch depth, an
        execution setting: a run may resume in the other precision (the
        weights and optimizer state are float32 in both).
      student_head: the student's outputs (`networks.STUDENT_HEADS`):
        "per_game", a head per game sized to its minimal action set, or
        "shared18", Actor-Mimic's one 18-way head over ALE's full action
        set with each game's other actions masked.
      distribution: the engine that trains the student
        (`distribution_lib.DISTRIBUTIONS`): "none" (one device),
        "data_parallel" (every device of this machine) or "multi_worker".
        An execution setting like the precision: the global batch
        (`global_batch_size`) and the learning rate are the user's whatever
        the device count, so the same settings give the same updates and a
        run may resume on another engine. Each device computes on global
        batch / devices samples, which must divide evenly.
    """

    games: tuple[str, ...]
    objective: objectives.Distillation = objectives.Distillation()
    student_size: str = "dqn"
    head_units: int = 128
    learning_rate: float = 2.5e-4
    num_grad_steps: int = 25_000
    checkpoint_every_steps: int = 1_000
    eval_every_steps: int = 500
    pipeline: pipeline.PipelineConfig = pipeline.PipelineConfig()
    precision: str = "float32"
    student_head: str = "per_game"
    distribution: str = "none"

    def __post_init__(self):
        if self.distribution not in distribution_lib.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of "
                             f"{list(distribution_lib.DISTRIBUTIONS)}, found {self.distribution!r}")
        if self.precision not in networks.PRECISIONS:
            raise ValueError(f"precision must be one of {list(networks.PRECISIONS)}, "
                             f"found {self.precision!r}")
        if self.student_head not in networks.STUDENT_HEADS:
            raise ValueError(f"student_head must be one of {list(networks.STUDENT_HEADS)}, "
                             f"found {self.student_head!r}")
        if len(self.objective.temperatures) != len(self.games):
            raise ValueError(f"temperatures has {len(self.objective.temperatures)} values "
                             f"for {len(self.games)} games")
        if self.student_size not in networks.STUDENT_SIZES:
            raise ValueError(f"student_size must be one of {sorted(networks.STUDENT_SIZES)}, "
                             f"found {self.student_size!r}")
        # One message per field, starting with its name (cli names the flag).
        if self.num_grad_steps < 0:
            raise ValueError(f"num_grad_steps must be >= 0, found {self.num_grad_steps}")
        for name in ("checkpoint_every_steps", "eval_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, found {self.learning_rate}")

    @property
    def global_batch_size(self) -> int:
        """Samples per gradient step over all devices and workers."""
        return self.pipeline.batch_size_per_game * len(self.games)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["games"] = list(self.games)
        d["objective"] = self.objective.to_dict()
        return d

    def identity(self) -> dict:
        """The settings a resumed run must share (the step budget may grow)."""
        d = self.to_dict()
        for k in ("num_grad_steps", "checkpoint_every_steps", "eval_every_steps", "precision",
                  "distribution"):
            d.pop(k)
        d["pipeline"].pop("prefetch_batches")
        # Runs from before the choice had a head per game: they stay resumable.
        if d["student_head"] == "per_game":
            d.pop("student_head")
        return d


def build_student(config: DistillConfig, num_actions: Sequence[int],
                  feature_dims: Sequence[int], spec: environments.Preprocessing,
                  extra_config: dict | None = None):
    """The student and its Adam optimizer, built and compiled in the scope of
    the engine `config.distribution` (where their variables must be made)."""
    with distribution_lib.get_engine(config.distribution).scope():
        return _build_student(config, num_actions, feature_dims, spec, extra_config)


def _build_student(config, num_actions, feature_dims, spec, extra_config):
    import keras

    from multidistill import games as games_lib

    filters, fc = networks.STUDENT_SIZES[config.student_size]
    # IE-KD's split of the shared hidden layer (`iekd.IEKD.factor_dims`); none otherwise.
    factor_dims = getattr(config.objective, "factor_dims", None)
    ale_action_indices = None
    if config.student_head == "shared18":  # Recorded in the student: it loads without ALE.
        ale_action_indices = [
            games_lib.get_game(g, spec.full_action_space).ale_action_indices
            for g in config.games]
    keras.utils.set_random_seed(config.pipeline.seed)  # Same initial weights per seed.
    student = networks.MultiTaskStudent(
        games=config.games, num_actions=num_actions, feature_dims=feature_dims,
        conv_filters=filters, fc_units=fc, head_units=config.head_units,
        observation_shape=spec.observation_shape,
        feature_projections=config.objective.needs_feature_projections,
        preprocessing=spec.to_dict(),
        training_config=dict(config.to_dict(), **(extra_config or {})),
        precision=config.precision,
        objective=config.objective,
        head=config.student_head,
        ale_action_indices=ale_action_indices,
        split_factor_dims=factor_dims(feature_dims) if factor_dims else None,
        name="multidistill_student",
    )
    student.build_for_inputs()
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    student.compile(optimizer=optimizer)
    optimizer.build(student.trainable_variables)
    return student, optimizer


@dataclasses.dataclass
class StepResult:
    grad_step: int
    loss: float
    samples: int


def data_prefix(run_dir: str | os.PathLike) -> list[int] | None:
    """Per dataset, the episodes a run in `run_dir` started from (None: a new
    run, or one from before data prefixes were recorded). Open the batch
    source on this prefix to resume on the data the run started with."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())["identity"]["data"]["datasets"]
        return [int(d["num_episodes"]) for d in data]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None


def plot_run_curves(run_dir: str | os.PathLike, games) -> Path | None:
    """`curves.png`: held-out KL and agreement and the training loss (smoothed), and
    the evaluations' % of teacher with intervals, on one axis of gradient steps."""
    run_dir = Path(run_dir)
    pct = {f"eval/percent_of_teacher/{g}": (f"eval/percent_of_teacher_ci_low/{g}",
                                            f"eval/percent_of_teacher_ci_high/{g}")
           for g in games}
    tag = "eval/geometric_mean_percent_of_teacher"
    pct[tag] = (tag + "_ci_low", tag + "_ci_high")
    return summaries.plot_curves(
        run_dir / "metrics.jsonl", run_dir / "curves.png",
        [("held-out KL", [f"heldout/kl/{g}" for g in games]),
         ("held-out top-1 agreement", [f"heldout/agreement/{g}" for g in games]),
         ("training loss", ["losses/train_loss"]),
         ("evaluation: student % of teacher", list(pct))],
        "gradient steps", smoothing=0.6, intervals=pct,
        labels={tag: "geometric mean", **{f"eval/percent_of_teacher/{g}": g for g in games}})


def evaluation_scalars(report: dict) -> dict[str, float]:
    """An evaluation report as scalars: per game returns and % of teacher with intervals."""
    out = {}

    def put(name, suffix, value, ci=None):
        """`name` + `suffix` -> value; `name`_ci_low/_ci_high + `suffix` -> the interval."""
        if value is None:
            return
        out[name + suffix] = value
        if ci:
            out[f"{name}_ci_low{suffix}"], out[f"{name}_ci_high{suffix}"] = ci

    for game, r in report["games"].items():
        out[f"charts/student_return/{game}"] = r["student"]["mean"]
        out[f"charts/teacher_return/{game}"] = r["teacher"]["mean"]
        put("eval/percent_of_teacher", f"/{game}", r["student_percent_of_teacher"],
            r.get("student_percent_of_teacher_ci"))
    put("eval/geometric_mean_percent_of_teacher", "", report["geometric_mean_percent_of_teacher"],
        report.get("geometric_mean_percent_of_teacher_ci"))
    return out


def record_evaluation(run_dir: str | os.PathLike, config: DistillConfig, report: dict,
                      grad_step: int) -> None:
    """Logs an evaluation of the run's student at `grad_step`: scalars (metrics.jsonl,
    TensorBoard), the run's hyperparameters for the HParams dashboard, the curves."""
    writer = summaries.ScalarWriter(run_dir)
    try:
        writer.scalars(grad_step, evaluation_scalars(report))
        writer.hparams(config.to_dict(), run_name=Path(run_dir).name)
    finally:
        writer.close()
    plot_run_curves(run_dir, config.games)


class _NoWriter:
    """The scalar writer of a worker other than the chief: writes nothing."""

    def scalars(self, step, values):
        pass

    def close(self):
        pass


class Distiller:
    """Owns a run directory: builds or resumes the student, trains, checkpoints."""

    def __init__(self, run_dir: str | os.PathLike, config: DistillConfig,
                 source: pipeline.BatchSource, spec: environments.Preprocessing,
                 teacher_kinds: Sequence[str], data_identity: dict | None = None):
        """Builds the student, or resumes the run in `run_dir`.

        Args:
          run_dir: the run directory (created if needed).
          config: the run's settings.
          source: where batches come from; it must load the fields
            `config.objective.fields`. A resumed run's source must serve the
            data the run started from (open it on `data_prefix(run_dir)`).
          spec: the preprocessing.
          teacher_kinds: per game, the teacher's kind (the student's acting
            rule in evaluation).
          data_identity: what data the run is bound to (default:
            `source.identity()`); a run whose sources change as it goes
            (collection rounds, `multidistill.rounds`) passes what fixes them.

        Raises:
          TrainingError: the source's games differ from the config's, or
            `run_dir` holds a run with other settings or data.
        """
        self.run_dir = Path(run_dir)
        self.config = config
        self.spec = spec
        self.source = source
        self._check_source(source)
        self.engine = distribution_lib.get_engine(config.distribution)
        try:
            self.engine.check_batch_size(source.batch_size)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        # Compared as JSON (tuples and lists alike), as config.json stores it.
        run_identity = json.loads(json.dumps(
            {"config": config.identity(), "teacher_kinds": list(teacher_kinds),
             "data": source.identity() if data_identity is None else data_identity,
             "preprocessing": spec.to_dict()}))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "config.json"
        if config_path.exists():
            previous = json.loads(config_path.read_text())
            if previous.get("identity") != run_identity:
                diff = [k for k in run_identity
                        if previous.get("identity", {}).get(k) != run_identity[k]]
                raise TrainingError(
                    f"run directory {self.run_dir} holds a run with other settings or "
                    f"other datasets (differs in: {', '.join(diff)}): a resumed run must "
                    "see the data it started with; use another --run_dir, or delete it")
        if self.engine.is_chief:
            files.atomic_write_text(config_path, json.dumps(
                {"identity": run_identity, "config": config.to_dict(),
                 "engine": self.engine.describe()}, indent=2))
        # What the objective fits to the data first (IE-KD's teacher
        # auto-encoders), read back from the run directory when resumed.
        objective = objectives.prepare(config.objective, self.run_dir, source,
                                       seed=config.pipeline.seed, write=self.engine.is_chief)
        if objective is not config.objective:
            self.config = config = dataclasses.replace(config, objective=objective)
        self.student, self.optimizer = build_student(
            config, source.num_actions, source.feature_dims, spec,
            extra_config={"teacher_kinds": list(teacher_kinds)})
        self.grad_step = 0
        self._seconds_before = 0.0  # Training wall-clock of earlier sessions and calls.
        self._t0 = None  # Start of the `train` call under way.
        self._samples = 0
        self.ckpt_path = self.run_dir / "checkpoint.npz"
        if self.ckpt_path.exists():
            state = checkpoints.restore(self.ckpt_path, self.student, self.optimizer)
            self.grad_step = int(state["grad_step"])
            self._seconds_before = float(state.get("train_seconds", 0.0))
        self.writer = summaries.ScalarWriter(self.run_dir) if self.engine.is_chief \
            else _NoWriter()
        self._holdout = [source.holdout(g) for g in range(len(config.games))]

    def _check_source(self, source: pipeline.BatchSource) -> None:
        config = self.config
        if tuple(source.games) != tuple(config.games):
            raise TrainingError(f"the batch source serves the games {list(source.games)}, "
                                f"the run trains {list(config.games)}")
        served = tuple(source.fields)
        missing = [f for f in config.objective.fields if f not in served]
        if missing:
            raise TrainingError(f"the batch source loads the fields {list(served)}, the "
                                f"objective also needs {missing}: open it with "
                                "fields=config.objective.fields")

    def use_source(self, source: pipeline.BatchSource) -> None:
        """Trains on `source` from now on (the old one is closed); held-out
        data are taken from it anew."""
        try:
            self._check_source(source)
        except TrainingError:
            source.close()
            raise
        self.source.close()
        self.source = source
        self._holdout = [source.holdout(g) for g in range(len(self.config.games))]

    def set_num_grad_steps(self, num_grad_steps: int) -> None:
        """Moves the step count `train` stops at (e.g. one round further)."""
        self.config = dataclasses.replace(self.config, num_grad_steps=int(num_grad_steps))

    @property
    def train_seconds(self) -> float:
        """Wall-clock spent training this run, over all its sessions (resumes)."""
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self._seconds_before + running

    @property
    def student_path(self) -> Path:
        return self.run_dir / "student.keras"

    def save_checkpoint(self) -> None:
        """Checkpoint, student and curves (by the chief; other workers write nothing)."""
        if not self.engine.is_chief:
            return
        checkpoints.save(self.ckpt_path, self.student, self.optimizer,
                         {"grad_step": self.grad_step, "train_seconds": self.train_seconds})
        students.save_student(self.student, self.student_path)
        plot_run_curves(self.run_dir, self.config.games)

    def heldout_metrics(self) -> dict[str, float]:
        """Per game: loss, KL (tau of the game) and top-1 agreement on held-out data."""
        from keras import ops

        out = {}
        for g, (game, batch) in enumerate(zip(self.config.games, self._holdout)):
            if batch is None:
                continue
            x, y = batch
            preds = []
            n = len(x["game_id"])
            for k in range(0, n, 256):
                # Fixed-size chunks (the last one padded): one compiled shape.
                xs = {name: acting.pad_rows(v[k:k + 256], 256) for name, v in x.items()}
                preds.append(np.asarray(
                    self.engine.predict_on_batch(self.student, xs)["logits"]))
            logits = np.concatenate(preds)[:n]
            a = self.student.num_actions[g]
            t_out, s_out = y["teacher_outputs"][:, :a], logits[:, :a]
            objective = self.config.objective
            tau = objective.temperatures[g]
            out[f"heldout/kl/{game}"] = float(ops.convert_to_numpy(
                losses.kl(t_out, s_out, temperature=tau)))
            out[f"heldout/loss/{game}"] = float(ops.convert_to_numpy(
                losses.policy_loss(objective.policy_loss, t_out, s_out, temperature=tau)))
            out[f"heldout/agreement/{game}"] = float(ops.convert_to_numpy(
                losses.top1_agreement(t_out, s_out)))
        return out

    def steps(self) -> Iterator[StepResult]:
        """Trains from the current step to `num_grad_steps`, one result per step."""
        if self.grad_step >= self.config.num_grad_steps:
            return
        for index, x, y in self.source.iterate(self.grad_step):
            loss = self.engine.train_on_batch(self.student, x, y)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss} at gradient step {index + 1}: "
                    f"stopped; the last good checkpoint ({self.ckpt_path}, step "
                    f"{self.grad_step}) is kept. Try a lower --learning_rate")
            self.grad_step = index + 1
            yield StepResult(self.grad_step, loss, len(x["game_id"]))
            if self.grad_step >= self.config.num_grad_steps:
                return

    def train(self, progress: bool = True) -> dict:
        """Runs `steps()` with logging, checkpoints and signal handling."""
        c = self.config
        start_step = self.grad_step
        bar = None
        if progress:
            from multidistill import progress as progress_lib

            bar = progress_lib.bar(c.num_grad_steps, "distill", "step",
                                   initial=self.grad_step, smoothing=0.05)
        with interrupts.deferred_interrupts() as stop:
            try:
                self._train_loop(c, bar, stop)
            finally:
                if bar is not None:
                    bar.close()
        if self.grad_step != start_step or not self.student_path.exists():
            if self.grad_step % c.eval_every_steps:
                self.writer.scalars(self.grad_step, self.heldout_metrics())
            self.save_checkpoint()
        seconds = time.perf_counter() - self._t0
        # Folded into the run's total: a later call (the next round) adds its own.
        self._seconds_before, self._t0 = self.train_seconds, None
        return {"grad_steps": self.grad_step, "trained_steps": self.grad_step - start_step,
                "seconds": seconds, "samples_per_s": self._samples / max(seconds, 1e-9),
                "run_train_seconds": self._seconds_before}

    def _train_loop(self, c, bar, stop):
        """The loop of `train`: logs, held-out metrics, checkpoints, stops."""
        self._t0 = time.perf_counter()
        self._samples = 0
        recent_loss = []
        if self.grad_step == 0:
            self.writer.scalars(0, self.heldout_metrics())
        for r in self.steps():
            self._samples += r.samples
            rate = self._samples / (time.perf_counter() - self._t0)
            recent_loss = (recent_loss + [r.loss])[-50:]
            if bar is not None:
                bar.update(1)
                if r.grad_step % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean(recent_loss):.4f}",
                                    samples_per_s=f"{rate:.0f}")
            if r.grad_step % 50 == 0:
                self.writer.scalars(r.grad_step, {
                    "losses/train_loss": float(np.mean(recent_loss)),
                    "charts/samples_per_s": rate})
            if r.grad_step % c.eval_every_steps == 0:
                self.writer.scalars(r.grad_step, self.heldout_metrics())
            if r.grad_step % c.checkpoint_every_steps == 0:
                self.save_checkpoint()
            if stop.requested:
                self.save_checkpoint()
                raise KeyboardInterrupt

    def close(self):
        self.writer.close()
        self.source.close()
